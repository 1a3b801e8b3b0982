/*
 * The guardian's core (groups, admission, joining, routing, replication,
 * failover) against three real keyhold-hsm daemons on loopback, copies of
 * one data dir provisioned here (same major keys, an EC CA, the Guardian
 * role and identity, an application role "App" with identity app1), and a
 * client that talks Excrypt to the group's endpoint as to an HSM.
 */
#include "kh_testutil.h"
#include "hsm/hsm_core.h"
#include "hsm/majorkey.h"
#include "hsm/pki.h"
#include "common/kh_buf.h"
#include "common/kh_client.h"
#include "common/kh_frame.h"
#include "common/kh_mem.h"
#include "guardian/guardian.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/pem.h>

#define GUARDIAN_PW "guardian-secret-1"
#define APP_PW "app-secret-1"
#define APP_CMDS "ECHO,GECC,GPGS,ASYS,ASYV,GPKD,GPKR,GPKS,GPKM,GPSE,GPSD"

static struct {
	char root[64], src[256], gdir[300];
	char ca[300], cert[300], key[300], srv_ca[300], srv_cert[300], srv_key[300];
	struct kh_test_daemon hsm[4];
	int ncopies;
	struct kg_core *core;
	int64_t group, dev[3];
	unsigned port;
} G;

static void provision(void)
{
	void *st = NULL;
	assert_int_equal(kh_test_fx_setup_keys(&st), 0);
	struct kh_test_fx *x = st;
	char *pw = kh_test_hexs(GUARDIAN_PW), *apw = kh_test_hexs(APP_PW);
	if (KH_CALL(x, &x->admin,
	            "[AORLAD;RNGuardian;LQ1;PMreplication;PTprod;"
	            "CMECHO,PRMD,STAT,HASH,KTEX,KTIM,KTCK,CFEX,CFIM;]") != KH_OK)
		fail_msg("RLAD: %s", x->out);
	if (KH_CALLF(x, &x->admin, "[AOIDAD;IDguardian;RNGuardian;PW%s;]", pw) != KH_OK)
		fail_msg("IDAD: %s", x->out);
	if (KH_CALL(x, &x->admin, "[AORLAD;RNApp;LQ1;PMkeys;PTprod;KRM:100-999;CM" APP_CMDS ";]") !=
	    KH_OK)
		fail_msg("RLAD App: %s", x->out);
	if (KH_CALLF(x, &x->admin, "[AOIDAD;IDapp1;RNApp;PW%s;]", apw) != KH_OK)
		fail_msg("IDAD app1: %s", x->out);
	free(pw);
	free(apw);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNAnonymous;CMECHO,PRMD,STAT,HASH;]"), KH_OK);

	kh_test_tls_ca(x, false, "Guardian Test CA", G.ca);
	/* the guardian's certificate: client toward the HSMs */
	EVP_PKEY *key = kh_test_tls_client(x, "guardian", "DNS:localhost,IP:127.0.0.1", G.cert);
	kh_test_write_key(G.key, key);
	EVP_PKEY_free(key);
	kh_hsm_close(&x->hsm);
	snprintf(G.src, sizeof(G.src), "%s", x->dir);
	free(x);

	/* the guardian's server certificate for its endpoints, from a CA of
	 * its own that the applications trust */
	struct kh_pki_keyspec spec = {KH_PKI_EC, 256};
	uint8_t *pem = NULL;
	size_t len = 0;
	const char *why = NULL;
	FILE *fp;
	EVP_PKEY *cak = NULL, *sk = NULL;
	X509 *ca = NULL, *sc = NULL;
	assert_int_equal(kh_pki_keygen(&spec, &cak), KH_OK);
	assert_int_equal(kh_pki_keygen(&spec, &sk), KH_OK);
	assert_int_equal(kh_pki_ca_new(cak, "Guardian Server CA", 30, time(NULL), &ca), KH_OK);
	assert_int_equal(kh_pki_server_cert(ca, cak, sk, "guardian", "IP:127.0.0.1,DNS:localhost", 30,
	                                    time(NULL), &sc, &why),
	                 KH_OK);
	assert_int_equal(kh_pki_cert_pem(ca, &pem, &len), KH_OK);
	kh_test_write_file(G.srv_ca, pem, len);
	free(pem);
	assert_int_equal(kh_pki_cert_pem(sc, &pem, &len), KH_OK);
	kh_test_write_file(G.srv_cert, pem, len);
	free(pem);
	fp = fopen(G.srv_key, "w");
	assert_non_null(fp);
	assert_int_equal(PEM_write_PrivateKey(fp, sk, NULL, NULL, 0, NULL, NULL), 1);
	fclose(fp);
	X509_free(ca);
	X509_free(sc);
	EVP_PKEY_free(cak);
	EVP_PKEY_free(sk);
}

static void start(struct kh_test_daemon *d)
{
	char dir[300];
	snprintf(dir, sizeof(dir), "%s/hsm%d", G.root, G.ncopies++);
	kh_test_daemon_init(d, G.src, dir, NULL, true);
	kh_test_daemon_start(d);
}

static void core_start(void)
{
	char why[KG_WHY_MAX] = "";
	struct kg_core_cfg cfg = {.datadir = G.gdir,
	                          .ca_file = G.ca,
	                          .cert_file = G.cert,
	                          .key_file = G.key,
	                          .server_cert_file = G.srv_cert,
	                          .server_key_file = G.srv_key,
	                          .identity = "guardian",
	                          .password = GUARDIAN_PW,
	                          .password_len = strlen(GUARDIAN_PW),
	                          .ping_interval_ms = 200,
	                          .request_timeout_ms = 10000};
	if (kg_core_start(&cfg, &G.core, why, sizeof(why)) != KH_OK)
		fail_msg("kg_core_start: %s", why);
}

static int setup(void **state)
{
	(void)state;
	snprintf(G.root, sizeof(G.root), "/tmp/kh-gcore-XXXXXX");
	assert_non_null(mkdtemp(G.root));
	snprintf(G.ca, sizeof(G.ca), "%s/ca.pem", G.root);
	snprintf(G.cert, sizeof(G.cert), "%s/guardian.pem", G.root);
	snprintf(G.key, sizeof(G.key), "%s/guardian.key", G.root);
	snprintf(G.gdir, sizeof(G.gdir), "%s/guardian", G.root);
	snprintf(G.srv_ca, sizeof(G.srv_ca), "%s/guardian-ca.pem", G.root);
	snprintf(G.srv_cert, sizeof(G.srv_cert), "%s/guardian-server.pem", G.root);
	snprintf(G.srv_key, sizeof(G.srv_key), "%s/guardian-server.key", G.root);
	provision();
	for (int i = 0; i < 3; i++)
		start(&G.hsm[i]);
	core_start();
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	char cmd[700];
	kg_core_stop(G.core);
	kh_test_daemon_kill_all();
	if (getenv("KH_KEEP")) {
		print_message("kept %s\n", G.root);
		return 0;
	}
	snprintf(cmd, sizeof(cmd), "rm -rf '%s' '%s'", G.root, G.src);
	return system(cmd) == 0 ? 0 : -1;
}

/* ---- a client of the group endpoint ---- */

struct app {
	struct kh_client *c;
	struct kh_buf *req, *resp;
	struct kh_frame f;
	char out[8192];
};

static int app_call(struct app *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int app_call(struct app *a, const char *fmt, ...)
{
	char line[4096];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	kh_buf_reset(a->req);
	kh_buf_reset(a->resp);
	assert_int_equal(kh_buf_put_str(a->req, line), KH_OK);
	int r = kh_client_call(a->c, a->req, a->resp, &a->f);
	size_t n = kh_buf_len(a->resp) < sizeof(a->out) - 1 ? kh_buf_len(a->resp) : sizeof(a->out) - 1;
	memcpy(a->out, kh_buf_ptr(a->resp), n);
	a->out[n] = '\0';
	return r;
}

static void app_open(struct app *a, unsigned port, bool login)
{
	struct kh_client_opts o;
	kh_client_opts_init(&o);
	o.host = "127.0.0.1";
	o.port = port;
	o.ca_file = port == G.port ? G.srv_ca : G.ca;
	o.cert_file = G.cert;
	o.key_file = G.key;
	memset(a, 0, sizeof(*a));
	assert_non_null(a->c = kh_client_new(&o));
	a->req = kh_buf_new(1 << 20);
	a->resp = kh_buf_new(1 << 20);
	if (kh_client_connect(a->c) != KH_OK)
		fail_msg("connect to port %u: %s", port, kh_client_error(a->c));
	if (login) {
		char *pw = kh_test_hexs(APP_PW);
		if (app_call(a, "[AOLOGN;IDapp1;PW%s;]", pw) != KH_OK)
			fail_msg("LOGN through the guardian: %s", a->out);
		free(pw);
	}
}

static void app_close(struct app *a)
{
	kh_client_free(a->c);
	a->c = NULL;
	kh_buf_free(a->req);
	kh_buf_free(a->resp);
}

static const char *field(struct app *a, const char *tag)
{
	return kh_test_field(a->out, tag);
}

/* ---- helpers ---- */

static void sleep_ms(int ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

static struct kg_live live(int64_t id)
{
	struct kg_live l;
	assert_int_equal(kg_core_device_live(G.core, id, &l), KH_OK);
	return l;
}

/* Wait until device id's state is s (and, for up, it serves or is synced). */
static void wait_state(int64_t id, enum kh_gstore_state s, int ms)
{
	for (int t = 0; t < ms; t += 50) {
		struct kg_live l = live(id);
		if (l.state == s && (s != KH_GSTATE_UP || l.synced))
			return;
		sleep_ms(50);
	}
	struct kg_live l = live(id);
	fail_msg("device %lld: state %s (pending %lld), not %s", (long long)id,
	         kh_gstore_state_name(l.state), (long long)l.pending, kh_gstore_state_name(s));
}

static int64_t add_device(struct kh_test_daemon *h, enum kh_gstore_role role, enum kg_admit *adm,
                          int *err, char *why, size_t whysz)
{
	struct kh_gstore_device d;
	int64_t id = 0;
	kh_gstore_device_defaults(&d);
	d.group_id = G.group;
	snprintf(d.host, sizeof(d.host), "127.0.0.1");
	d.port = (uint16_t)h->port;
	d.admin_port = (uint16_t)h->admin_port;
	d.role = role;
	d.ping_timeout_ms = 1000;
	*err = kg_core_device_add(G.core, &d, &id, adm, why, whysz);
	return id;
}

static void assert_tables_agree(void)
{
	struct kg_check ck;
	char why[KG_WHY_MAX];
	for (int t = 0; t < 100; t++) {
		assert_int_equal(kg_core_group_check(G.core, G.group, &ck, why, sizeof(why)), KH_OK);
		if (ck.all_agree)
			return;
		sleep_ms(100);
	}
	for (size_t i = 0; i < ck.n; i++)
		print_message("device %lld: %s %s\n", (long long)ck.m[i].device_id, ck.m[i].ck,
		              ck.m[i].msg);
	fail_msg("the members' key tables differ");
}

/* ---- tests, in order (they share the group) ---- */

static void test_group_and_admission(void **state)
{
	(void)state;
	struct kh_gstore_group g;
	char why[KG_WHY_MAX] = "";
	enum kg_admit adm;
	int err;

	kh_gstore_group_defaults(&g);
	snprintf(g.name, sizeof(g.name), "Payments");
	snprintf(g.owner, sizeof(g.owner), "test");
	G.port = kh_test_free_port();
	g.port = (uint16_t)G.port;
	assert_int_equal(kg_core_group_add(G.core, &g, &G.group, why, sizeof(why)), KH_OK);
	assert_true(kh_test_port_open("127.0.0.1", G.port));

	/* the first device must be the Primary */
	add_device(&G.hsm[0], KH_GROLE_PRODUCTION, &adm, &err, why, sizeof(why));
	assert_int_equal(adm, KG_ADMIT_NO_PRIMARY);
	G.dev[0] = add_device(&G.hsm[0], KH_GROLE_PRIMARY, &adm, &err, why, sizeof(why));
	if (err != KH_OK)
		fail_msg("Primary: %s", why);
	/* a second Primary */
	add_device(&G.hsm[1], KH_GROLE_PRIMARY, &adm, &err, why, sizeof(why));
	assert_int_equal(adm, KG_ADMIT_SECOND_PRIMARY);
	/* a closed port */
	struct kh_test_daemon closed = {.port = kh_test_free_port(), .admin_port = 1};
	add_device(&closed, KH_GROLE_PRODUCTION, &adm, &err, why, sizeof(why));
	assert_int_equal(adm, KG_ADMIT_UNREACHABLE);
	assert_non_null(strstr(why, "port"));

	G.dev[1] = add_device(&G.hsm[1], KH_GROLE_PRODUCTION, &adm, &err, why, sizeof(why));
	if (err != KH_OK)
		fail_msg("Production: %s", why);
	G.dev[2] = add_device(&G.hsm[2], KH_GROLE_BACKUP, &adm, &err, why, sizeof(why));
	if (err != KH_OK)
		fail_msg("Backup: %s", why);
	for (int i = 0; i < 3; i++)
		wait_state(G.dev[i], KH_GSTATE_UP, 5000);
	assert_true(live(G.dev[0]).serving);
	assert_true(live(G.dev[1]).serving);
	assert_false(live(G.dev[2]).serving);
	assert_tables_agree();
}

static void test_keys_replicate(void **state)
{
	(void)state;
	struct app a;
	app_open(&a, G.port, true);
	if (app_call(&a, "[AOGECC;RA2;SL*;PS*;LB%s;]", "6B31") != KH_OK)
		fail_msg("GECC through the group: %s", a.out);
	unsigned slot = (unsigned)strtoul(field(&a, "SL"), NULL, 10);
	assert_true(slot >= 100);
	assert_tables_agree();
	/* the key signs on every member, reached straight */
	for (int i = 0; i < 3; i++) {
		struct app d;
		app_open(&d, G.hsm[i].port, true);
		if (app_call(&d, "[AOASYS;SL%u;DT00;]", slot) != KH_OK)
			fail_msg("ASYS on member %d: %s", i, d.out);
		app_close(&d);
	}
	/* balanced: the Primary and the Production device take requests, the
	 * Backup none */
	unsigned long before[3];
	for (int i = 0; i < 3; i++)
		before[i] = live(G.dev[i]).requests;
	for (int k = 0; k < 200; k++)
		assert_int_equal(app_call(&a, "[AOASYS;SL%u;DT00;]", slot), KH_OK);
	/* one sequential client: nothing in flight, so the two take turns */
	assert_true(live(G.dev[0]).requests - before[0] >= 80);
	assert_true(live(G.dev[1]).requests - before[1] >= 80);
	assert_int_equal(live(G.dev[2]).requests, before[2]);
	/* a delete replicates too */
	assert_int_equal(app_call(&a, "[AOGPKD;SL%u;]", slot), KH_OK);
	assert_tables_agree();
	/* replication commands are the guardian's */
	assert_int_equal(app_call(&a, "[AOKTIM;DL1:00;]"), KH_ERR_COMMAND_NOT_ALLOWED);
	app_close(&a);
}

static void test_failover(void **state)
{
	(void)state;
	struct app a;
	app_open(&a, G.port, true);
	assert_int_equal(app_call(&a, "[AOGECC;RA2;SL*;]"), KH_OK);
	unsigned slot = (unsigned)strtoul(field(&a, "SL"), NULL, 10);
	/* kill -9 the Production device under load: no request fails */
	for (int k = 0; k < 300; k++) {
		if (k == 50)
			kh_test_daemon_stop(&G.hsm[1], SIGKILL);
		if (app_call(&a, "[AOASYS;SL%u;DT00;]", slot) != KH_OK)
			fail_msg("request %d failed: %s", k, a.out);
	}
	wait_state(G.dev[1], KH_GSTATE_DOWN, 5000);
	assert_true(live(G.dev[2]).serving);
	unsigned long b = live(G.dev[2]).requests;
	for (int k = 0; k < 100; k++)
		assert_int_equal(app_call(&a, "[AOASYS;SL%u;DT00;]", slot), KH_OK);
	assert_true(live(G.dev[2]).requests > b);

	/* a key made while Production is down reaches it when it returns */
	assert_int_equal(app_call(&a, "[AOGECC;RA2;SL*;]"), KH_OK);
	assert_true(live(G.dev[1]).pending > 0);
	kh_test_daemon_start(&G.hsm[1]);
	wait_state(G.dev[1], KH_GSTATE_UP, 8000);
	assert_int_equal(live(G.dev[1]).pending, 0);
	assert_tables_agree();
	/* the Backup steps back */
	assert_true(live(G.dev[1]).serving);
	assert_false(live(G.dev[2]).serving);
	app_close(&a);
}

static void test_primary_down(void **state)
{
	(void)state;
	struct app a;
	app_open(&a, G.port, true);
	kh_test_daemon_stop(&G.hsm[0], SIGKILL);
	wait_state(G.dev[0], KH_GSTATE_DOWN, 5000);
	/* key-changing commands fail with the reason; the rest is served */
	assert_int_equal(app_call(&a, "[AOGECC;RA2;SL*;]"), KH_ERR_STATE);
	assert_non_null(strstr(a.out, "promote"));
	assert_int_equal(app_call(&a, "[AOGECC;RA2;]"), KH_OK); /* a cryptogram: any member */
	kh_test_daemon_start(&G.hsm[0]);
	wait_state(G.dev[0], KH_GSTATE_UP, 8000);
	assert_int_equal(app_call(&a, "[AOGECC;RA2;SL*;]"), KH_OK);
	assert_tables_agree();
	app_close(&a);
}

/* A password change through the group runs on the Primary and reaches
 * every member before the answer: new connections log in anywhere. */
static void test_password_change(void **state)
{
	(void)state;
	struct app a;
	char *old = kh_test_hexs(APP_PW), *nw = kh_test_hexs("app-secret-2");
	app_open(&a, G.port, true);
	if (app_call(&a, "[AOCHPW;IDapp1;PW%s;NP%s;]", old, nw) != KH_OK)
		fail_msg("CHPW through the group: %s", a.out);
	/* this client's own login is replayed with the new password */
	assert_int_equal(app_call(&a, "[AOGECC;RA2;]"), KH_OK);
	app_close(&a);
	for (int i = 0; i < 3; i++) {
		struct app d;
		app_open(&d, G.hsm[i].port, false);
		if (app_call(&d, "[AOLOGN;IDapp1;PW%s;]", nw) != KH_OK)
			fail_msg("new password on member %d: %s", i, d.out);
		app_close(&d);
	}
	/* and back, for the tests after this one */
	app_open(&a, G.port, false);
	assert_int_equal(app_call(&a, "[AOLOGN;IDapp1;PW%s;NP%s;]", nw, old), KH_OK);
	app_close(&a);
	free(old);
	free(nw);
}

/* Bad input at the group endpoint: a clear error, and the guardian and
 * other clients carry on. */
static void raw(struct app *a, const char *bytes, size_t n)
{
	kh_buf_reset(a->req);
	assert_int_equal(kh_buf_put(a->req, bytes, n), KH_OK);
	assert_int_equal(kh_client_send(a->c, a->req), KH_OK);
}

static void test_bad_input(void **state)
{
	(void)state;
	struct app a;
	app_open(&a, G.port, false);
	/* a frame that does not parse: MALFORMED, and the connection goes on */
	raw(&a, "[AOe!;]", 7);
	assert_int_equal(kh_client_recv(a.c, a.resp, &a.f), KH_ERR_MALFORMED);
	raw(&a, "[AOECHO;AGx;]", 13);
	assert_int_equal(kh_client_recv(a.c, a.resp, &a.f), KH_OK);
	/* a frame above the pre-login limit: TOO_LARGE, then the connection ends */
	char *big = malloc(5001);
	assert_non_null(big);
	memcpy(big, "[AOECHO;AG", 10);
	memset(big + 10, 'A', 5001 - 10);
	raw(&a, big, 5001);
	free(big);
	assert_int_equal(kh_client_recv(a.c, a.resp, &a.f), KH_ERR_TOO_LARGE);
	app_close(&a);
	/* bytes that are no frame at all: refused and closed */
	app_open(&a, G.port, false);
	raw(&a, "GET / HTTP/1.1\r\n\r\n", 18);
	assert_int_equal(kh_client_recv(a.c, a.resp, &a.f), KH_ERR_MALFORMED);
	app_close(&a);
	/* a replication command from a client is the guardian's own */
	app_open(&a, G.port, true);
	assert_int_equal(app_call(&a, "[AOCFIM;CF00;]"), KH_ERR_COMMAND_NOT_ALLOWED);
	assert_int_equal(app_call(&a, "[AOECHO;AGstill-here;]"), KH_OK);
	app_close(&a);
}

/* A removed group frees its place: more groups than the table holds can be
 * made and removed one after another, and the group at work is untouched. */
static void test_group_slots_reused(void **state)
{
	(void)state;
	char why[KG_WHY_MAX] = "";
	for (int i = 0; i < 70; i++) { /* the guardian holds 64 groups at once */
		struct kh_gstore_group g;
		int64_t id = 0;
		kh_gstore_group_defaults(&g);
		snprintf(g.name, sizeof(g.name), "Short-lived %d", i);
		snprintf(g.owner, sizeof(g.owner), "test");
		g.port = (uint16_t)kh_test_free_port();
		if (kg_core_group_add(G.core, &g, &id, why, sizeof(why)) != KH_OK)
			fail_msg("group %d: %s", i, why);
		assert_true(kh_test_port_open("127.0.0.1", g.port));
		assert_int_equal(kg_core_group_remove(G.core, id, why, sizeof(why)), KH_OK);
		assert_false(kh_test_port_open("127.0.0.1", g.port));
		assert_int_equal(kg_core_group_remove(G.core, id, why, sizeof(why)),
		                 KH_ERR_NOT_FOUND);
	}
	struct app a;
	app_open(&a, G.port, true);
	assert_int_equal(app_call(&a, "[AOECHO;AGstill-here;]"), KH_OK);
	app_close(&a);
}

static void test_restart_keeps_state(void **state)
{
	(void)state;
	kg_core_stop(G.core);
	G.core = NULL;
	core_start();
	for (int i = 0; i < 3; i++)
		wait_state(G.dev[i], KH_GSTATE_UP, 5000);
	struct app a;
	app_open(&a, G.port, true);
	assert_int_equal(app_call(&a, "[AOGECC;RA2;SL*;]"), KH_OK);
	app_close(&a);
	assert_tables_agree();
}

int main(void)
{
	/* as keyhold-guardian's main: a client that closes during the TLS
	 * handshake (kh_test_port_open) must not end the process */
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_group_and_admission),
	    cmocka_unit_test(test_keys_replicate),
	    cmocka_unit_test(test_failover),
	    cmocka_unit_test(test_primary_down),
	    cmocka_unit_test(test_password_change),
	    cmocka_unit_test(test_bad_input),
	    cmocka_unit_test(test_group_slots_reused),
	    cmocka_unit_test(test_restart_keeps_state),
	};
	kh_mem_init(1u << 20);
	return cmocka_run_group_tests(tests, setup, teardown);
}

/*
 * The guardian's member checks (probe, admission, diagnose, ping) against
 * real keyhold-hsm daemons on loopback, each on a copy of a data dir
 * provisioned here at test time: device A (EC CA, the fixed test PMK and
 * FTK, a Guardian role), a clear-Excrypt copy of A, and device B (RSA CA,
 * another FTK, trusting A's CA for the guardian's client certificate).
 */
#include "kh_testutil.h"
#include "hsm/hsm_core.h"
#include "hsm/majorkey.h"
#include "hsm/pki.h"
#include "common/kh_buf.h"
#include "common/kh_client.h"
#include "common/kh_frame.h"
#include "common/kh_mem.h"
#include "guardian/member.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/pem.h>

#define GUARDIAN_ID "guardian"
#define GUARDIAN_PW "guardian-secret-1"

static struct {
	char root[64];
	char dev_a[256], dev_b[256], clear[300];
	char ca_a[300], ca_b[300], ca_both[300], other_ca[300], cert[300], key[300];
	int ncopies;
} G;

static const uint8_t other_ftk[32] = {0x55, 0x44, 0x33, 0x22, 0x11, 0x10, 0x20, 0x30,
                                      0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xA0, 0xB0};




/* A device with the fixed PMK, the FTK ftk, its CA (RSA or EC) and server
 * certificate for 127.0.0.1, the Guardian role and identity, and the
 * Transaction Processing role cut to the communication commands. For A
 * (sign_client) also the guardian's client certificate; B trusts A's CA
 * (TCAI) so that the same client certificate works there. */
static void provision(char *dir, size_t dirsz, bool rsa, const uint8_t ftk[32], const char *ca_out,
                      bool sign_client)
{
	void *st = NULL;
	assert_int_equal(kh_test_fx_setup_pmk(&st), 0);
	struct kh_test_fx *x = st;
	assert_int_equal(kh_mk_load(&x->hsm, KH_MK_FTK, ftk, 32, "unit", "mk.load", "test", NULL),
	                 KH_OK);

	char *pw = kh_test_hexs(GUARDIAN_PW);
	if (KH_CALL(x, &x->admin,
	            "[AORLAD;RNGuardian;LQ1;PMreplication;PTprod;"
	            "CMECHO,PRMD,STAT,HASH;]") != KH_OK)
		fail_msg("RLAD: %s", x->out);
	if (KH_CALLF(x, &x->admin, "[AOIDAD;ID" GUARDIAN_ID ";RNGuardian;PW%s;]", pw) != KH_OK)
		fail_msg("IDAD: %s", x->out);
	free(pw);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNAnonymous;CMECHO,PRMD,STAT,HASH;]"),
	                 KH_OK);

	kh_test_tls_ca(x, rsa, rsa ? "Member Test RSA CA" : "Member Test EC CA", ca_out);

	if (sign_client) {
		EVP_PKEY *key = kh_test_tls_client(x, "guardian", "DNS:guardian", G.cert);
		kh_test_write_key(G.key, key);
		EVP_PKEY_free(key);
	} else {
		/* trust the guardian's client certificate, issued by A's CA */
		FILE *fp = fopen(G.ca_a, "rb");
		uint8_t buf[8192];
		assert_non_null(fp);
		size_t n = fread(buf, 1, sizeof(buf), fp);
		fclose(fp);
		char *h = kh_test_hex(buf, n);
		if (KH_CALLF(x, &x->admin, "[AOTCAI;CE%s;]", h) != KH_OK)
			fail_msg("TCAI: %s", x->out);
		free(h);
	}
	kh_hsm_close(&x->hsm);
	snprintf(dir, dirsz, "%s", x->dir);
	free(x);
}

static int group_setup(void **state)
{
	(void)state;
	char cmd[1200];
	snprintf(G.root, sizeof(G.root), "/tmp/kh-gmember-XXXXXX");
	assert_non_null(mkdtemp(G.root));
	snprintf(G.ca_a, sizeof(G.ca_a), "%s/ca-a.pem", G.root);
	snprintf(G.ca_b, sizeof(G.ca_b), "%s/ca-b.pem", G.root);
	snprintf(G.ca_both, sizeof(G.ca_both), "%s/ca-both.pem", G.root);
	snprintf(G.other_ca, sizeof(G.other_ca), "%s/other-ca.pem", G.root);
	snprintf(G.cert, sizeof(G.cert), "%s/guardian.pem", G.root);
	snprintf(G.key, sizeof(G.key), "%s/guardian.key", G.root);

	provision(G.dev_a, sizeof(G.dev_a), false, kh_test_ftk, G.ca_a, true);
	provision(G.dev_b, sizeof(G.dev_b), true, other_ftk, G.ca_b, false);
	snprintf(cmd, sizeof(cmd), "cat '%s' '%s' > '%s'", G.ca_a, G.ca_b, G.ca_both);
	assert_int_equal(system(cmd), 0);

	/* A with its Excrypt port in clear */
	snprintf(G.clear, sizeof(G.clear), "%s/clear", G.root);
	snprintf(cmd, sizeof(cmd), "cp -a '%s' '%s'", G.dev_a, G.clear);
	assert_int_equal(system(cmd), 0);
	struct kh_hsm *h = calloc(1, sizeof(*h));
	struct kh_session adm;
	char out[4096];
	assert_non_null(h);
	assert_int_equal(kh_hsm_open(h, G.clear, false), KH_OK);
	kh_test_admin_session(h, &adm);
	assert_int_equal(kh_test_call(h, &adm, "[AOTPRT;PTexcrypt;MOclear;]", out, sizeof(out)),
	                 KH_OK);
	kh_hsm_close(h);
	free(h);

	/* an EC CA of nobody's */
	struct kh_pki_keyspec spec = {KH_PKI_EC, 256};
	EVP_PKEY *k = NULL;
	X509 *ca = NULL;
	uint8_t *pem = NULL;
	size_t len = 0;
	assert_int_equal(kh_pki_keygen(&spec, &k), KH_OK);
	assert_int_equal(kh_pki_ca_new(k, "Other CA", 30, time(NULL), &ca), KH_OK);
	assert_int_equal(kh_pki_cert_pem(ca, &pem, &len), KH_OK);
	kh_test_write_file(G.other_ca, pem, len);
	free(pem);
	X509_free(ca);
	EVP_PKEY_free(k);
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	char cmd[1200];
	kh_test_daemon_kill_all();
	if (getenv("KH_KEEP")) {
		print_message("kept %s, %s, %s\n", G.root, G.dev_a, G.dev_b);
		return 0;
	}
	snprintf(cmd, sizeof(cmd), "rm -rf '%s' '%s' '%s'", G.root, G.dev_a, G.dev_b);
	return system(cmd) == 0 ? 0 : -1;
}

/* ---- helpers ---- */

static void start(struct kh_test_daemon *d, const char *src, bool admin)
{
	char dir[300];
	snprintf(dir, sizeof(dir), "%s/hsm%d", G.root, G.ncopies++);
	kh_test_daemon_init(d, src, dir, NULL, admin);
	kh_test_daemon_start(d);
}

static struct kg_member_dev dev_of(const struct kh_test_daemon *d, enum kg_member_conn conn)
{
	return (struct kg_member_dev){.host = "127.0.0.1",
	                              .excrypt_port = d->port,
	                              .admin_port = d->admin_port,
	                              .conn = conn,
	                              .timeout_ms = 5000};
}

static struct kg_member_tls tls_with(const char *ca)
{
	return (struct kg_member_tls){.ca_file = ca, .cert_file = G.cert, .key_file = G.key};
}

static const struct kg_member_login guardian_login = {GUARDIAN_ID, GUARDIAN_PW,
                                                      sizeof(GUARDIAN_PW) - 1};

static void probe_ok(const struct kh_test_daemon *d, const char *ca, struct kg_member_facts *f)
{
	struct kg_member_dev dev = dev_of(d, KG_CONN_TLS);
	struct kg_member_tls tls = tls_with(ca);
	char msg[KG_MEMBER_MSG_MAX];
	int r = kg_member_probe(&dev, &tls, &guardian_login, f, msg, sizeof(msg));
	if (r != KH_OK)
		fail_msg("probe of port %u: %s: %s", d->port, kh_errname(r), msg);
}

static void assert_contains(const char *hay, const char *needle)
{
	if (strstr(hay, needle) == NULL)
		fail_msg("\"%s\" lacks \"%s\"", hay, needle);
}

/* One request on a fresh mutual-TLS connection to d's Excrypt port, not
 * through the code under test; the answer's text in out. */
static void direct_call(const struct kh_test_daemon *d, const char *cmd, char *out, size_t outsz)
{
	struct kh_client_opts o;
	struct kh_buf *req = kh_buf_new(64), *resp = kh_buf_new(65536);
	struct kh_frame *f = malloc(sizeof(*f));
	kh_client_opts_init(&o);
	o.host = "127.0.0.1";
	o.port = d->port;
	o.ca_file = G.ca_a;
	o.cert_file = G.cert;
	o.key_file = G.key;
	struct kh_client *c = kh_client_new(&o);
	assert_non_null(c);
	if (kh_client_connect(c) != KH_OK)
		fail_msg("direct connect: %s", kh_client_error(c));
	assert_int_equal(kh_msg_begin(req, cmd), KH_OK);
	assert_int_equal(kh_msg_end(req), KH_OK);
	assert_int_equal(kh_client_call(c, req, resp, f), KH_OK);
	size_t n = kh_buf_len(resp) < outsz - 1 ? kh_buf_len(resp) : outsz - 1;
	memcpy(out, kh_buf_ptr(resp), n);
	out[n] = '\0';
	kh_client_free(c);
	kh_buf_free(req);
	kh_buf_free(resp);
	free(f);
}

/* ---- probe ---- */

static void test_probe_facts(void **state)
{
	(void)state;
	struct kh_test_daemon a;
	struct kg_member_facts f, anon;
	char stat[4096], prmd[4096], hash[1024], msg[KG_MEMBER_MSG_MAX];

	start(&a, G.dev_a, false);
	probe_ok(&a, G.ca_a, &f);
	direct_call(&a, "STAT", stat, sizeof(stat));
	direct_call(&a, "PRMD", prmd, sizeof(prmd));
	direct_call(&a, "HASH", hash, sizeof(hash));

	assert_string_equal(f.model, kh_test_field(prmd, "MD"));
	assert_string_equal(f.model, KH_MODEL);
	assert_string_equal(f.version, kh_test_field(prmd, "VN"));
	assert_string_equal(f.serial, kh_test_field(hash, "SN"));
	assert_string_equal(f.features, kh_test_field(stat, "FS"));
	assert_string_equal(f.features, "FIPS=N,PKCS11=Y,FTK=Y,PMK=Y,BEK=N");
	assert_string_equal(f.kcv[KG_MK_FTK], kh_test_field(stat, "FT"));
	assert_string_equal(f.kcv[KG_MK_PMK], kh_test_field(stat, "PM"));
	assert_string_equal(f.kcv[KG_MK_BEK], ""); /* STAT BK is N */
	assert_string_equal(kh_test_field(stat, "BK"), "N");
	assert_true(strlen(f.kcv[KG_MK_FTK]) >= 4);
	assert_false(f.fips);
	assert_true(f.pkcs11);
	assert_true(f.state_ok);

	/* before the guardian has an identity: the same facts, under
	 * Transaction Processing */
	struct kg_member_dev dev = dev_of(&a, KG_CONN_TLS);
	struct kg_member_tls tls = tls_with(G.ca_a);
	assert_int_equal(kg_member_probe(&dev, &tls, NULL, &anon, msg, sizeof(msg)), KH_OK);
	assert_memory_equal(&anon, &f, sizeof(f));

	/* a wrong password: the login step, named, and no password in the text */
	struct kg_member_login bad = {GUARDIAN_ID, "not-the-password", 16};
	int r = kg_member_probe(&dev, &tls, &bad, &anon, msg, sizeof(msg));
	assert_int_equal(r, KH_ERR_AUTH_FAILED);
	assert_contains(msg, "login as " GUARDIAN_ID);
	assert_contains(msg, "(Excrypt)");
	assert_null(strstr(msg, "not-the-password"));
	assert_string_equal(anon.model, ""); /* cleared on failure */

	kh_test_daemon_stop(&a, SIGTERM);
}

/* ---- admission ---- */

static void test_admission(void **state)
{
	(void)state;
	struct kh_test_daemon a, a2, b;
	struct kg_member_facts fa, fa2, fb, fake;
	char why[KG_MEMBER_MSG_MAX], msg[KG_MEMBER_MSG_MAX], want[200];

	start(&a, G.dev_a, false);
	start(&a2, G.dev_a, false); /* same major keys */
	start(&b, G.dev_b, false);  /* another FTK */
	probe_ok(&a, G.ca_a, &fa);
	probe_ok(&a2, G.ca_a, &fa2);
	probe_ok(&b, G.ca_both, &fb);
	struct kg_member_probed pa = {KH_OK, NULL, &fa}, pa2 = {KH_OK, NULL, &fa2},
	                        pb = {KH_OK, NULL, &fb};

	/* roles */
	assert_int_equal(kg_member_admit(NULL, KG_ROLE_PRODUCTION, &pa, why, sizeof(why)),
	                 KG_ADMIT_NO_PRIMARY);
	assert_contains(why, "first device must be the Primary");
	assert_int_equal(kg_member_admit(NULL, KG_ROLE_BACKUP, &pa, why, sizeof(why)),
	                 KG_ADMIT_NO_PRIMARY);
	assert_int_equal(kg_member_admit(NULL, KG_ROLE_PRIMARY, &pa, why, sizeof(why)),
	                 KG_ADMIT_OK);
	assert_string_equal(why, "");
	assert_int_equal(kg_member_admit(&fa, KG_ROLE_PRIMARY, &pa2, why, sizeof(why)),
	                 KG_ADMIT_SECOND_PRIMARY);
	assert_contains(why, "has a Primary already");
	assert_int_equal(kg_member_admit(&fa, KG_ROLE_PRODUCTION, &pa2, why, sizeof(why)),
	                 KG_ADMIT_OK);
	assert_int_equal(kg_member_admit(&fa, KG_ROLE_BACKUP, &pa2, why, sizeof(why)), KG_ADMIT_OK);

	/* model, version, feature set: the Primary's facts faked */
	fake = fa;
	snprintf(fake.model, sizeof(fake.model), "Keyhold KH-0");
	assert_int_equal(kg_member_admit(&fake, KG_ROLE_PRODUCTION, &pa2, why, sizeof(why)),
	                 KG_ADMIT_MODEL);
	snprintf(want, sizeof(want), "model differs: Primary \"Keyhold KH-0\", device \"%s\"",
	         fa2.model);
	assert_string_equal(why, want);
	fake = fa;
	snprintf(fake.version, sizeof(fake.version), "0.0.1");
	assert_int_equal(kg_member_admit(&fake, KG_ROLE_PRODUCTION, &pa2, why, sizeof(why)),
	                 KG_ADMIT_VERSION);
	snprintf(want, sizeof(want), "version differs: Primary 0.0.1, device %s", fa2.version);
	assert_string_equal(why, want);
	fake = fa;
	snprintf(fake.features, sizeof(fake.features), "FIPS=Y,PKCS11=Y,FTK=Y,PMK=Y,BEK=N");
	assert_int_equal(kg_member_admit(&fake, KG_ROLE_PRODUCTION, &pa2, why, sizeof(why)),
	                 KG_ADMIT_FEATURES);
	assert_string_equal(why, "feature set differs: Primary FIPS=Y,PKCS11=Y,FTK=Y,PMK=Y,BEK=N, "
	                         "device FIPS=N,PKCS11=Y,FTK=Y,PMK=Y,BEK=N");

	/* major keys: a real device with another FTK, the same PMK */
	assert_string_equal(fb.kcv[KG_MK_PMK], fa.kcv[KG_MK_PMK]);
	assert_string_not_equal(fb.kcv[KG_MK_FTK], fa.kcv[KG_MK_FTK]);
	assert_int_equal(kg_member_admit(&fa, KG_ROLE_PRODUCTION, &pb, why, sizeof(why)),
	                 KG_ADMIT_MAJOR_KEY);
	snprintf(want, sizeof(want), "FTK check value differs: Primary %s, device %s",
	         fa.kcv[KG_MK_FTK], fb.kcv[KG_MK_FTK]);
	assert_contains(why, want);
	/* a key loaded on one side only is named as such */
	fake = fa;
	fake.kcv[KG_MK_BEK][0] = '\0';
	snprintf(fake.kcv[KG_MK_BEK], sizeof(fake.kcv[KG_MK_BEK]), "ABCDEF");
	assert_int_equal(kg_member_admit(&fake, KG_ROLE_BACKUP, &pa2, why, sizeof(why)),
	                 KG_ADMIT_MAJOR_KEY);
	assert_contains(why, "BEK check value differs: Primary ABCDEF, device (not loaded)");

	/* a device in its error state */
	fake = fa2;
	fake.state_ok = false;
	struct kg_member_probed perr = {KH_OK, NULL, &fake};
	assert_int_equal(kg_member_admit(&fa, KG_ROLE_PRODUCTION, &perr, why, sizeof(why)),
	                 KG_ADMIT_DEVICE_ERROR);

	/* port closed: the probe's error, naming port and step */
	kh_test_daemon_stop(&a2, SIGTERM);
	struct kg_member_dev dev = dev_of(&a2, KG_CONN_TLS);
	struct kg_member_tls tls = tls_with(G.ca_a);
	int r = kg_member_probe(&dev, &tls, &guardian_login, &fa2, msg, sizeof(msg));
	assert_int_equal(r, KH_ERR_CONNECT);
	struct kg_member_probed pdown = {r, msg, NULL};
	assert_int_equal(kg_member_admit(&fa, KG_ROLE_PRODUCTION, &pdown, why, sizeof(why)),
	                 KG_ADMIT_UNREACHABLE);
	snprintf(want, sizeof(want), "127.0.0.1 port %u (Excrypt): TCP connect:", a2.port);
	assert_contains(why, want);
	/* TLS failing: B's certificate is from a CA the guardian does not trust */
	dev = dev_of(&b, KG_CONN_TLS);
	r = kg_member_probe(&dev, &tls, &guardian_login, &fb, msg, sizeof(msg));
	assert_int_equal(r, KH_ERR_TLS_CERT_UNKNOWN_CA);
	struct kg_member_probed ptls = {r, msg, NULL};
	assert_int_equal(kg_member_admit(&fa, KG_ROLE_PRODUCTION, &ptls, why, sizeof(why)),
	                 KG_ADMIT_UNREACHABLE);
	snprintf(want, sizeof(want),
	         "port %u (Excrypt): TLS handshake: server certificate not trusted", b.port);
	assert_contains(why, want);
	if (getenv("KH_SHOW"))
		print_message("  %s\n", why);
	/* the role is checked before the probe */
	assert_int_equal(kg_member_admit(&fa, KG_ROLE_PRIMARY, &pdown, why, sizeof(why)),
	                 KG_ADMIT_SECOND_PRIMARY);

	kh_test_daemon_stop(&a, SIGTERM);
	kh_test_daemon_stop(&b, SIGTERM);
}

/* ---- diagnose ---- */

static void assert_steps(const struct kg_diag *d, int failed)
{
	if (getenv("KH_SHOW")) /* the texts an operator would read */
		for (int i = 0; i < KG_DIAG_NSTEPS; i++)
			print_message("  %-20s %-8s %s\n", kg_diag_step_name((enum kg_diag_step)i),
			              kg_diag_state_name(d->step[i].state), d->step[i].msg);
	for (int i = 0; i < KG_DIAG_NSTEPS; i++) {
		enum kg_diag_state want = failed < 0 || i < failed ? KG_DIAG_OK
		                          : i == failed            ? KG_DIAG_FAILED
		                                                   : KG_DIAG_NOT_RUN;
		if (d->step[i].state != want)
			fail_msg("step %d (%s) is %s, not %s: %s", i,
			         kg_diag_step_name((enum kg_diag_step)i),
			         kg_diag_state_name(d->step[i].state), kg_diag_state_name(want),
			         d->step[i].msg);
	}
	assert_int_equal(d->failed, failed);
}

static void test_diagnose(void **state)
{
	(void)state;
	struct kh_test_daemon a, c, b, noadm;
	struct kg_diag *d = calloc(1, sizeof(*d));
	char want[200];
	assert_non_null(d);

	start(&a, G.dev_a, true);
	struct kg_member_dev dev = dev_of(&a, KG_CONN_TLS);
	struct kg_member_tls tls = tls_with(G.ca_a);

	/* everything fine */
	int r = kg_member_diagnose(&dev, &tls, true, true, d);
	if (r != KH_OK)
		fail_msg("diagnose: %s: %s", kh_errname(r),
		         d->failed >= 0 ? d->step[d->failed].msg : "");
	assert_steps(d, -1);
	assert_contains(d->step[KG_DIAG_ADMIN_TLS].msg,
	                "(Admin): mutual TLS handshake and ECHO: ok");
	assert_contains(d->step[KG_DIAG_CA_TREE].msg, "a CA the guardian trusts");

	/* group and device disabled: nothing else is tried */
	assert_int_equal(kg_member_diagnose(&dev, &tls, false, true, d), KH_ERR_STATE);
	assert_steps(d, KG_DIAG_GROUP_ENABLED);
	assert_string_equal(d->step[KG_DIAG_ADMIN_TCP].msg, "not run");
	assert_int_equal(kg_member_diagnose(&dev, &tls, true, false, d), KH_ERR_STATE);
	assert_steps(d, KG_DIAG_DEVICE_ENABLED);

	/* a server certificate from another CA: the Admin port's TLS fails
	 * first, and says so */
	struct kg_member_tls other = tls_with(G.other_ca);
	r = kg_member_diagnose(&dev, &other, true, true, d);
	assert_int_equal(r, KH_ERR_TLS_CERT_UNKNOWN_CA);
	assert_steps(d, KG_DIAG_ADMIN_TLS);
	snprintf(want, sizeof(want),
	         "127.0.0.1 port %u (Admin): TLS handshake: server certificate not trusted",
	         a.admin_port);
	assert_contains(d->step[KG_DIAG_ADMIN_TLS].msg, want);
	assert_contains(d->step[KG_DIAG_ADMIN_TLS].msg,
	                "issued by \"/CN=Member Test EC CA\" (ECC)");
	assert_contains(d->step[KG_DIAG_ADMIN_TLS].msg, "it trusts \"/CN=Other CA\" (ECC)");
	assert_contains(d->step[KG_DIAG_ADMIN_TLS].msg, "not the same CA tree");
	assert_null(strstr(d->step[KG_DIAG_ADMIN_TLS].msg, "one side RSA"));
	assert_string_equal(d->step[KG_DIAG_EXCRYPT_TCP].msg, "not run");

	/* RSA against ECC: B's CA is RSA, the guardian trusts only A's EC CA */
	start(&b, G.dev_b, true);
	dev = dev_of(&b, KG_CONN_TLS);
	r = kg_member_diagnose(&dev, &tls, true, true, d);
	assert_int_equal(r, KH_ERR_TLS_CERT_UNKNOWN_CA);
	assert_steps(d, KG_DIAG_ADMIN_TLS);
	assert_contains(d->step[KG_DIAG_ADMIN_TLS].msg, "(RSA)");
	assert_contains(d->step[KG_DIAG_ADMIN_TLS].msg, "one side RSA, the other ECC");
	/* with both CAs trusted B passes */
	struct kg_member_tls both = tls_with(G.ca_both);
	assert_int_equal(kg_member_diagnose(&dev, &both, true, true, d), KH_OK);
	assert_steps(d, -1);
	kh_test_daemon_stop(&b, SIGTERM);

	/* the Admin port closed (not listening) */
	start(&noadm, G.dev_a, false);
	dev = dev_of(&noadm, KG_CONN_TLS);
	dev.admin_port = kh_test_free_port();
	r = kg_member_diagnose(&dev, &tls, true, true, d);
	assert_int_equal(r, KH_ERR_CONNECT);
	assert_steps(d, KG_DIAG_ADMIN_TCP);
	snprintf(want, sizeof(want), "127.0.0.1 port %u (Admin): TCP connect: Connection refused",
	         dev.admin_port);
	assert_contains(d->step[KG_DIAG_ADMIN_TCP].msg, want);
	kh_test_daemon_stop(&noadm, SIGTERM);

	/* a clear Excrypt port where the group expects TLS */
	start(&c, G.clear, true);
	dev = dev_of(&c, KG_CONN_TLS);
	r = kg_member_diagnose(&dev, &tls, true, true, d);
	assert_int_not_equal(r, KH_OK);
	assert_steps(d, KG_DIAG_EXCRYPT_TLS);
	snprintf(want, sizeof(want), "127.0.0.1 port %u (Excrypt): TLS handshake", c.port);
	assert_contains(d->step[KG_DIAG_EXCRYPT_TLS].msg, want);
	assert_contains(d->step[KG_DIAG_EXCRYPT_TLS].msg, "the port answers in clear");
	assert_string_equal(d->step[KG_DIAG_CA_TREE].msg, "not run");
	/* ... and the same device in a group whose Excrypt pair is Clear */
	dev.conn = KG_CONN_CLEAR;
	assert_int_equal(kg_member_diagnose(&dev, &tls, true, true, d), KH_OK);
	assert_steps(d, -1);
	assert_contains(d->step[KG_DIAG_EXCRYPT_TLS].msg, "clear (no TLS, as configured): ok");
	kh_test_daemon_stop(&c, SIGTERM);

	kh_test_daemon_stop(&a, SIGTERM);
	free(d);
}

/* ---- ping ---- */

static void test_ping(void **state)
{
	(void)state;
	struct kh_test_daemon a;
	char msg[KG_MEMBER_MSG_MAX], want[200];
	double ms = -1;

	start(&a, G.dev_a, false);
	struct kg_member_dev dev = dev_of(&a, KG_CONN_TLS);
	struct kg_member_tls tls = tls_with(G.ca_a);
	int r = kg_member_ping(&dev, &tls, &guardian_login, &ms, msg, sizeof(msg));
	if (r != KH_OK)
		fail_msg("ping: %s: %s", kh_errname(r), msg);
	assert_true(ms > 0 && ms < 5000);
	assert_string_equal(msg, "");
	/* before login too */
	assert_int_equal(kg_member_ping(&dev, &tls, NULL, &ms, msg, sizeof(msg)), KH_OK);

	/* down */
	kh_test_daemon_stop(&a, SIGTERM);
	r = kg_member_ping(&dev, &tls, &guardian_login, &ms, msg, sizeof(msg));
	assert_int_equal(r, KH_ERR_CONNECT);
	assert_true(ms == 0);
	snprintf(want, sizeof(want), "127.0.0.1 port %u (Excrypt): TCP connect: Connection refused",
	         a.port);
	assert_string_equal(msg, want);

	/* a device that accepts but never answers: the ping timeout */
	int s = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sin;
	socklen_t l = sizeof(sin);
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(s, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(listen(s, 4), 0);
	assert_int_equal(getsockname(s, (struct sockaddr *)&sin, &l), 0);
	dev.excrypt_port = ntohs(sin.sin_port);
	dev.timeout_ms = 300;
	r = kg_member_ping(&dev, &tls, &guardian_login, &ms, msg, sizeof(msg));
	assert_int_equal(r, KH_ERR_TIMEOUT);
	snprintf(want, sizeof(want), "127.0.0.1 port %u (Excrypt): ", dev.excrypt_port);
	assert_contains(msg, want);
	close(s);
}

static void test_names(void **state)
{
	(void)state;
	assert_string_equal(kg_member_role_name(KG_ROLE_BACKUP), "Backup");
	assert_string_equal(kg_mk_name(KG_MK_PMK), "PMK");
	assert_string_equal(kg_admit_name(KG_ADMIT_SECOND_PRIMARY), "SECOND_PRIMARY");
	assert_string_equal(kg_admit_name(KG_ADMIT_FEATURES), "FEATURES");
	assert_string_equal(kg_diag_step_name(KG_DIAG_CA_TREE), "same CA tree");
	assert_string_equal(kg_diag_state_name(KG_DIAG_NOT_RUN), "not run");
	/* admission without a probe result */
	char why[KG_MEMBER_MSG_MAX];
	assert_int_equal(kg_member_admit(NULL, KG_ROLE_PRIMARY, NULL, why, sizeof(why)),
	                 KG_ADMIT_UNREACHABLE);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_names),     cmocka_unit_test(test_probe_facts),
	    cmocka_unit_test(test_admission), cmocka_unit_test(test_diagnose),
	    cmocka_unit_test(test_ping),
	};
	signal(SIGPIPE, SIG_IGN);
	kh_mem_init(1u << 20);
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}

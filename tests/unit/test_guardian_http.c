/* The REST API: JSON bodies into groups and devices (partial updates,
 * every bad field), answers rendered, the router's pre-checks (routes,
 * 404/405/413, sessions, dual login, CSRF, permissions) and handlers, and
 * the listener end to end over loopback, in clear and over TLS, with the
 * Remote Manage relay. The core's actions come from a table (the seam
 * http.c fills with kg_core_*); here they are done on a real store. */
#include "kh_testutil.h"
#include "guardian/guardian.h"
#include "guardian/http_json.h"
#include "guardian/http_router.h"
#include "guardian/http_server.h"
#include "guardian/http_static.h"
#include "guardian/users.h"
#include "common/kh_client.h"
#include "common/kh_err.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/ssl.h>

#define HAS(text, s)                                                                 \
	do {                                                                         \
		if (strstr((text), (s)) == NULL)                                     \
			fail_msg("\"%s\" lacks \"%s\"", (text), (s));                \
	} while (0)

/* ---- JSON bodies -------------------------------------------------------- */

static json_t *J(const char *text)
{
	json_error_t e;
	json_t *o = json_loads(text, 0, &e);
	if (o == NULL)
		fail_msg("test JSON: %s", e.text);
	return o;
}

static int group_from(const char *text, bool add, struct kh_gstore_group *g, char *why)
{
	json_t *o = J(text);
	int r = kg_json_group(o, add, g, why, KG_WHY_MAX);
	json_decref(o);
	return r;
}

static void test_json_group(void **state)
{
	struct kh_gstore_group g;
	char why[KG_WHY_MAX];
	(void)state;

	kh_gstore_group_defaults(&g);
	assert_int_equal(group_from("{\"name\":\"Payments\",\"port\":9200,\"type\":\"Hardware "
				    "Security Module\",\"description\":\"d\",\"owner\":\"o\","
				    "\"options\":{\"balancing\":false},\"pairs\":{\"http\":"
				    "{\"allow\":true,\"conn\":\"anonymous tls\"}},\"enabled\":false}",
				    true, &g, why),
			 KH_OK);
	assert_string_equal(g.name, "Payments");
	assert_int_equal(g.port, 9200);
	assert_string_equal(g.type, "HSM");
	assert_false(g.opt_balancing);
	assert_true(g.opt_configuration); /* untouched */
	assert_true(g.pairs[KH_GPAIR_HTTP].allow);
	assert_int_equal(g.pairs[KH_GPAIR_HTTP].conn, KH_GCONN_ANON_TLS);
	assert_true(g.pairs[KH_GPAIR_EXCRYPT].allow);
	assert_false(g.enabled);

	/* partial: only what is given changes */
	assert_int_equal(group_from("{\"description\":\"new\"}", false, &g, why), KH_OK);
	assert_string_equal(g.description, "new");
	assert_string_equal(g.name, "Payments");
	assert_int_equal(g.port, 9200);
	assert_int_equal(group_from("{}", false, &g, why), KH_OK);

	static const struct {
		const char *body;
		bool add;
		const char *reason;
	} bad[] = {
		{"{\"port\":9200}", true, "name: required"},
		{"{\"name\":\"x\"}", true, "port: required"},
		{"{\"name\":\"x\",\"port\":0}", true, "port: an integer from 1 to 65535"},
		{"{\"port\":65536}", false, "port"},
		{"{\"port\":\"9200\"}", false, "port"},
		{"{\"port\":9200.0}", false, "port"},
		{"{\"name\":7}", false, "name: must be a string"},
		{"{\"bogus\":1}", false, "unknown field \"bogus\""},
		{"{\"id\":1}", false, "id: read only"},
		{"{\"journal_head\":1}", false, "journal_head: read only"},
		{"{\"type\":\"KMS\"}", false, "type"},
		{"{\"enabled\":1}", false, "enabled: must be true or false"},
		{"{\"options\":[]}", false, "options: must be an object"},
		{"{\"options\":{\"speed\":true}}", false, "options: unknown field \"speed\""},
		{"{\"options\":{\"monitoring\":\"yes\"}}", false, "options.monitoring"},
		{"{\"pairs\":{\"ftp\":{}}}", false, "pairs: unknown field \"ftp\""},
		{"{\"pairs\":{\"excrypt\":true}}", false, "pairs.excrypt: must be an object"},
		{"{\"pairs\":{\"excrypt\":{\"conn\":\"TLS\"}}}", false, "pairs.excrypt.conn"},
		{"{\"pairs\":{\"excrypt\":{\"allow\":null}}}", false, "pairs.excrypt.allow"},
		{"{\"pairs\":{\"excrypt\":{\"x\":1}}}", false, "pairs.excrypt: unknown field"},
		{"{\"owner\":\"0123456789012345678901234567890123456789012345678901234567890123"
		 "4\"}",
		 false, "owner: at most 64 bytes"},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct kh_gstore_group h = g;
		why[0] = '\0';
		if (group_from(bad[i].body, bad[i].add, &h, why) != KH_ERR_BAD_FIELD)
			fail_msg("%s: accepted", bad[i].body);
		HAS(why, bad[i].reason);
	}
}

static int device_from(const char *text, bool add, struct kh_gstore_device *d, bool *role,
		       char *why)
{
	json_t *o = J(text);
	int r = kg_json_device(o, add, d, role, why, KG_WHY_MAX);
	json_decref(o);
	return r;
}

static void test_json_device(void **state)
{
	struct kh_gstore_device d;
	enum kh_gstore_role old;
	char why[KG_WHY_MAX];
	bool role;
	json_t *o;
	(void)state;

	kh_gstore_device_defaults(&d);
	assert_int_equal(device_from("{\"host\":\"10.0.0.1\"}", true, &d, &role, why), KH_OK);
	assert_false(role);
	assert_string_equal(d.host, "10.0.0.1");
	assert_int_equal(d.port, 9100);
	assert_int_equal(d.admin_port, 9009);
	assert_int_equal(device_from("{\"port\":9101,\"admin_port\":9010,\"role\":\"backup\","
				     "\"balancing\":false,\"ping_timeout_ms\":100,\"enabled\":false}",
				     false, &d, &role, why),
			 KH_OK);
	assert_true(role);
	assert_int_equal(d.role, KH_GROLE_BACKUP);
	assert_int_equal(d.port, 9101);
	assert_int_equal(d.admin_port, 9010);
	assert_int_equal(d.ping_timeout_ms, 100);
	assert_false(d.balancing);
	assert_false(d.enabled);
	assert_string_equal(d.host, "10.0.0.1");

	static const struct {
		const char *body;
		bool add;
		const char *reason;
	} bad[] = {
		{"{}", true, "host: required"},
		{"{\"host\":1}", false, "host: must be a string"},
		{"{\"port\":-1}", false, "port: an integer from 1 to 65535"},
		{"{\"admin_port\":70000}", false, "admin_port"},
		{"{\"ping_timeout_ms\":99}", false, "ping_timeout_ms: an integer from 100 to 60000"},
		{"{\"ping_timeout_ms\":60001}", false, "ping_timeout_ms"},
		{"{\"role\":\"Leader\"}", false, "role:"},
		{"{\"balancing\":\"on\"}", false, "balancing"},
		{"{\"state\":\"up\"}", false, "state: read only"},
		{"{\"facts\":{}}", false, "facts: read only"},
		{"{\"group_id\":2}", false, "group_id: read only"},
		{"{\"colour\":\"red\"}", false, "unknown field \"colour\""},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct kh_gstore_device e = d;
		why[0] = '\0';
		if (device_from(bad[i].body, bad[i].add, &e, &role, why) != KH_ERR_BAD_FIELD)
			fail_msg("%s: accepted", bad[i].body);
		HAS(why, bad[i].reason);
	}

	o = J("{}");
	assert_int_equal(kg_json_promote(o, &old, why, sizeof(why)), KH_OK);
	assert_int_equal(old, KH_GROLE_PRODUCTION);
	json_decref(o);
	o = J("{\"old_primary_role\":\"Backup\"}");
	assert_int_equal(kg_json_promote(o, &old, why, sizeof(why)), KH_OK);
	assert_int_equal(old, KH_GROLE_BACKUP);
	json_decref(o);
	o = J("{\"old_primary_role\":\"Primary\"}");
	assert_int_equal(kg_json_promote(o, &old, why, sizeof(why)), KH_ERR_BAD_FIELD);
	json_decref(o);
	o = J("{\"x\":1}");
	assert_int_equal(kg_json_promote(o, &old, why, sizeof(why)), KH_ERR_BAD_FIELD);
	json_decref(o);
}

static void test_json_body(void **state)
{
	char why[KG_WHY_MAX];
	json_t *o = NULL;
	(void)state;
	assert_int_equal(kg_json_body("", 0, &o, why, sizeof(why)), KH_OK);
	assert_true(json_is_object(o) && json_object_size(o) == 0);
	json_decref(o);
	assert_int_equal(kg_json_body("{\"a\":1}", 7, &o, why, sizeof(why)), KH_OK);
	json_decref(o);
	assert_int_equal(kg_json_body("[1]", 3, &o, why, sizeof(why)), KH_ERR_BAD_FIELD);
	HAS(why, "JSON object");
	assert_int_equal(kg_json_body("{\"a\":", 5, &o, why, sizeof(why)), KH_ERR_BAD_FIELD);
	HAS(why, "malformed JSON");
	assert_int_equal(kg_json_body("{\"a\":1,\"a\":2}", 13, &o, why, sizeof(why)),
			 KH_ERR_BAD_FIELD);
	assert_int_equal(kg_json_body("{\"a\":\"\\u0000\"}", 14, &o, why, sizeof(why)),
			 KH_ERR_BAD_FIELD);
	assert_int_equal(kg_json_body("{\"a\":1} x", 9, &o, why, sizeof(why)), KH_ERR_BAD_FIELD);
	assert_int_equal(kg_json_body("{}", KG_BODY_MAX + 1, &o, why, sizeof(why)),
			 KH_ERR_TOO_LARGE);
	assert_null(o);
}

/* Text in a plain malloc'd buffer, whatever allocator jansson has. */
static char *dump(const json_t *o, size_t flags)
{
	json_free_t jfree = NULL;
	char *s = json_dumps(o, JSON_COMPACT | flags), *c = strdup(s);
	json_get_alloc_funcs(NULL, &jfree);
	jfree(s);
	return c;
}

static void test_json_out(void **state)
{
	struct kh_gstore_group g;
	struct kh_gstore_device d;
	struct kg_live live;
	struct kg_diag dg;
	json_t *o;
	char *s;
	(void)state;

	kh_gstore_group_defaults(&g);
	g.id = 4;
	snprintf(g.name, sizeof(g.name), "Payments");
	g.port = 9200;
	o = kg_json_group_out(&g);
	s = dump(o, JSON_SORT_KEYS);
	HAS(s, "\"type\":\"Hardware Security Module\"");
	HAS(s, "\"pairs\":{\"excrypt\":{\"allow\":true,\"conn\":\"SSL\"},\"http\":{\"allow\":"
	       "false,\"conn\":\"SSL\"}");
	HAS(s, "\"options\":{\"balancing\":true,\"configuration\":true,\"monitoring\":true}");
	HAS(s, "\"id\":4");
	free(s);
	json_decref(o);

	kh_gstore_device_defaults(&d);
	d.id = 3;
	d.group_id = 4;
	snprintf(d.host, sizeof(d.host), "127.0.0.1");
	snprintf(d.facts.kcv_ftk, sizeof(d.facts.kcv_ftk), "1A2B3C");
	o = kg_json_device_out(&d, NULL);
	s = dump(o, JSON_SORT_KEYS);
	HAS(s, "\"latency_ms\":null");
	HAS(s, "\"state\":\"down\"");
	HAS(s, "\"serving\":false");
	HAS(s, "\"kcv\":{\"bek\":\"\",\"ftk\":\"1A2B3C\",\"pmk\":\"\"}");
	free(s);
	json_decref(o);
	memset(&live, 0, sizeof(live));
	live.state = KH_GSTATE_UP;
	live.serving = true;
	live.latency_ms = 0.5;
	live.requests = 12;
	o = kg_json_device_out(&d, &live);
	s = dump(o, JSON_SORT_KEYS);
	HAS(s, "\"latency_ms\":0.5");
	HAS(s, "\"state\":\"up\"");
	HAS(s, "\"requests\":12");
	free(s);
	json_decref(o);
	d.enabled = false; /* whatever the monitor says */
	o = kg_json_device_out(&d, &live);
	s = dump(o, 0);
	HAS(s, "\"state\":\"disabled\"");
	free(s);
	json_decref(o);

	memset(&dg, 0, sizeof(dg));
	dg.failed = KG_DIAG_ADMIN_TLS;
	dg.step[KG_DIAG_ADMIN_TLS].state = KG_DIAG_FAILED;
	for (int i = KG_DIAG_ADMIN_TLS + 1; i < KG_DIAG_NSTEPS; i++)
		dg.step[i].state = KG_DIAG_NOT_RUN;
	o = kg_json_diag_out(&dg);
	s = dump(o, 0);
	HAS(s, "\"ok\":false,\"failed\":\"Admin port TLS\"");
	HAS(s, "\"state\":\"not run\"");
	free(s);
	json_decref(o);
	o = kg_json_error(KH_ERR_IN_USE, "still has devices");
	s = dump(o, 0);
	assert_string_equal(s, "{\"error\":\"IN_USE\",\"reason\":\"still has devices\"}");
	free(s);
	json_decref(o);

	assert_int_equal(kg_http_status(KH_ERR_BAD_FIELD), 400);
	assert_int_equal(kg_http_status(KH_ERR_NOT_LOGGED_IN), 401);
	assert_int_equal(kg_http_status(KH_ERR_AUTH_FAILED), 401);
	assert_int_equal(kg_http_status(KH_ERR_PERMISSION_DENIED), 403);
	assert_int_equal(kg_http_status(KH_ERR_NOT_FOUND), 404);
	assert_int_equal(kg_http_status(KH_ERR_EXISTS), 409);
	assert_int_equal(kg_http_status(KH_ERR_IN_USE), 409);
	assert_int_equal(kg_http_status(KH_ERR_STATE), 409);
	assert_int_equal(kg_http_status(KH_ERR_TOO_LARGE), 413);
	assert_int_equal(kg_http_status(KH_ERR_LOCKED), 423);
	assert_int_equal(kg_http_status(KH_ERR_CONNECT), 502);
	assert_int_equal(kg_http_status(KH_ERR_TLS_HANDSHAKE), 502);
	assert_int_equal(kg_http_status(KH_ERR_INTERNAL), 500);
	assert_int_equal(kg_http_status(KH_ERR_STORAGE), 500);
}

/* ---- the core's actions, done on a real store ---------------------------- */

static unsigned relay_port;

#define ST(c) ((struct kh_gstore *)(void *)(c))

static int why_of(int r, const struct kh_gstore_why *w, char *why, size_t whysz)
{
	snprintf(why, whysz, "%s", r == KH_OK ? "" : w->text);
	return r;
}

static struct kh_gstore *t_store(struct kg_core *c)
{
	return ST(c);
}
static int t_group_add(struct kg_core *c, const struct kh_gstore_group *g, int64_t *id, char *why,
		       size_t n)
{
	struct kh_gstore_why w;
	return why_of(kh_gstore_group_add(ST(c), g, id, &w), &w, why, n);
}
static int t_group_modify(struct kg_core *c, int64_t id, const struct kh_gstore_group *g,
			  char *why, size_t n)
{
	struct kh_gstore_why w;
	return why_of(kh_gstore_group_modify(ST(c), id, g, &w), &w, why, n);
}
static int t_group_remove(struct kg_core *c, int64_t id, char *why, size_t n)
{
	struct kh_gstore_why w;
	return why_of(kh_gstore_group_remove(ST(c), id, &w), &w, why, n);
}
static int t_group_check(struct kg_core *c, int64_t id, struct kg_check *out, char *why, size_t n)
{
	(void)c;
	(void)id;
	memset(out, 0, sizeof(*out));
	out->n = 1;
	out->m[0].device_id = 1;
	out->m[0].reached = out->m[0].agrees = true;
	out->m[0].rows = 5;
	snprintf(out->m[0].ck, sizeof(out->m[0].ck), "ABCD");
	out->all_agree = true;
	snprintf(why, n, "%s", "");
	return KH_OK;
}
static int t_device_add(struct kg_core *c, const struct kh_gstore_device *d, int64_t *id,
			enum kg_admit *admit, char *why, size_t n)
{
	struct kh_gstore_why w;
	*admit = KG_ADMIT_OK;
	if (strcmp(d->host, "refused.example") == 0) {
		*admit = KG_ADMIT_MODEL;
		snprintf(why, n, "model differs: Primary Keyhold KH-1, device Other");
		return KH_ERR_STATE;
	}
	if (strcmp(d->host, "down.example") == 0) {
		*admit = KG_ADMIT_UNREACHABLE;
		snprintf(why, n, "down.example port 9100 (Excrypt): TCP connect: refused");
		return KH_ERR_CONNECT;
	}
	return why_of(kh_gstore_device_add(ST(c), d, id, &w), &w, why, n);
}
static int t_device_modify(struct kg_core *c, int64_t id, const struct kh_gstore_device *d,
			   char *why, size_t n)
{
	struct kh_gstore_why w;
	return why_of(kh_gstore_device_modify(ST(c), id, d, &w), &w, why, n);
}
static int t_device_remove(struct kg_core *c, int64_t id, char *why, size_t n)
{
	struct kh_gstore_why w;
	return why_of(kh_gstore_device_remove(ST(c), id, &w), &w, why, n);
}
static int t_device_promote(struct kg_core *c, int64_t id, enum kh_gstore_role old, char *why,
			    size_t n)
{
	struct kh_gstore_why w;
	return why_of(kh_gstore_device_promote(ST(c), id, old, &w), &w, why, n);
}
static int t_device_sync(struct kg_core *c, int64_t id, char *why, size_t n)
{
	struct kh_gstore_device d;
	struct kh_gstore_why w;
	return why_of(kh_gstore_device_get(ST(c), id, &d, &w), &w, why, n);
}
static int t_device_diagnose(struct kg_core *c, int64_t id, struct kg_diag *out, char *why,
			     size_t n)
{
	struct kh_gstore_device d;
	struct kh_gstore_why w;
	int r = kh_gstore_device_get(ST(c), id, &d, &w);
	if (r != KH_OK)
		return why_of(r, &w, why, n);
	memset(out, 0, sizeof(*out));
	out->failed = KG_DIAG_ADMIN_TLS;
	out->step[KG_DIAG_ADMIN_TLS].state = KG_DIAG_FAILED;
	snprintf(out->step[KG_DIAG_ADMIN_TLS].msg, sizeof(out->step[0].msg),
		 "127.0.0.1 port 9009 (Admin): TLS handshake: not the same CA tree");
	for (int i = KG_DIAG_ADMIN_TLS + 1; i < KG_DIAG_NSTEPS; i++)
		out->step[i].state = KG_DIAG_NOT_RUN;
	snprintf(why, n, "%s", out->step[KG_DIAG_ADMIN_TLS].msg);
	return KH_ERR_TLS_HANDSHAKE;
}
static int t_device_live(struct kg_core *c, int64_t id, struct kg_live *out)
{
	(void)c;
	memset(out, 0, sizeof(*out));
	out->state = KH_GSTATE_UP;
	out->serving = out->synced = true;
	out->latency_ms = 0.41;
	return id % 2 ? KH_OK : KH_ERR_NOT_FOUND;
}
static int t_device_admin_addr(struct kg_core *c, int64_t id, char *host, size_t hostsz,
			       unsigned *port)
{
	struct kh_gstore_device d;
	if (kh_gstore_device_get(ST(c), id, &d, NULL) != KH_OK)
		return KH_ERR_NOT_FOUND;
	snprintf(host, hostsz, "127.0.0.1");
	*port = relay_port;
	return KH_OK;
}

/* The console's relay: each connection is one end of a socketpair, and a
 * thread on the other end plays the HSM's Admin port. It answers every
 * frame "[AO<cmd>;BBY;CN<connection>;RQ<request on it>;]", an RMSG whose CT
 * is BAD with the ERRO an HSM gives, and counts the connections it saw
 * close. */
static atomic_int admin_opened, admin_closed;
static atomic_bool admin_down;

static void *fake_admin_port(void *arg)
{
	int fd = (int)(intptr_t)arg, cn = atomic_fetch_add(&admin_opened, 1) + 1, rq = 0;
	char buf[70000];
	size_t len = 0;
	for (;;) {
		ssize_t k = read(fd, buf + len, sizeof(buf) - 1 - len);
		if (k <= 0)
			break;
		len += (size_t)k;
		buf[len] = '\0';
		char *end;
		while ((end = strchr(buf, ']')) != NULL) {
			char ans[200], cmd[5] = "";
			size_t flen = (size_t)(end - buf) + 1;
			if (flen >= 8)
				memcpy(cmd, buf + 3, 4);
			rq++;
			if (strstr(buf, "CTBAD;") && strstr(buf, "CTBAD;") < end)
				snprintf(ans, sizeof(ans), "[AOERRO;CMRMSG;EC%d;ETdecrypt failed;]",
					 kh_err_to_wire(KH_ERR_DECRYPT_FAILED));
			else
				snprintf(ans, sizeof(ans), "[AO%s;BBY;CN%d;RQ%d;]", cmd, cn, rq);
			if (write(fd, ans, strlen(ans)) < 0)
				break;
			memmove(buf, end + 1, len - flen + 1);
			len -= flen;
		}
	}
	close(fd);
	atomic_fetch_add(&admin_closed, 1);
	return NULL;
}

static int t_device_admin_client(struct kg_core *c, int64_t id, struct kh_client **out, char *why,
				 size_t n)
{
	struct kh_gstore_device d;
	int sv[2];
	pthread_t th;
	*out = NULL;
	if (kh_gstore_device_get(ST(c), id, &d, NULL) != KH_OK) {
		snprintf(why, n, "no such device");
		return KH_ERR_NOT_FOUND;
	}
	if (atomic_load(&admin_down)) {
		snprintf(why, n, "127.0.0.1 port 9009 (Admin): TCP connect: Connection refused");
		return KH_ERR_CONNECT;
	}
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	assert_int_equal(pthread_create(&th, NULL, fake_admin_port, (void *)(intptr_t)sv[1]), 0);
	pthread_detach(th);
	struct kh_client_opts o;
	kh_client_opts_init(&o);
	o.tls = false;
	*out = kh_client_new(&o);
	assert_non_null(*out);
	assert_int_equal(kh_client_attach_fd(*out, sv[0]), KH_OK);
	return KH_OK;
}

static const struct kg_http_ops test_ops = {
	.store = t_store,
	.group_add = t_group_add,
	.group_modify = t_group_modify,
	.group_remove = t_group_remove,
	.group_check = t_group_check,
	.device_add = t_device_add,
	.device_modify = t_device_modify,
	.device_remove = t_device_remove,
	.device_promote = t_device_promote,
	.device_sync = t_device_sync,
	.device_diagnose = t_device_diagnose,
	.device_live = t_device_live,
	.device_admin_addr = t_device_admin_addr,
	.device_admin_client = t_device_admin_client,
};

/* ---- the router --------------------------------------------------------- */

struct fx {
	char root[64], dir[128];
	struct kh_gstore *st;
	struct kg_router *rt;
	struct kg_resp resp;
	json_t *j;
	char admin_tok[65], op_tok[65], aud_tok[65];
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	char why[KG_WHY_MAX];
	struct kh_gstore_why w;
	snprintf(f->root, sizeof(f->root), "/tmp/kh-ghttp-XXXXXX");
	assert_non_null(mkdtemp(f->root));
	snprintf(f->dir, sizeof(f->dir), "%s/data", f->root);
	assert_int_equal(kh_gstore_open(f->dir, &f->st, &w), KH_OK);
	assert_int_equal(kg_users_bootstrap(f->st, "admin", "admin-secret", 12, why, sizeof(why)),
			 KH_OK);
	assert_int_equal(kg_users_add(f->st, "op", "Operator", (const uint8_t *)"op-secret-1", 11,
				      false, why, sizeof(why)),
			 KH_OK);
	assert_int_equal(kg_users_add(f->st, "aud", "Auditor", (const uint8_t *)"aud-secret-1", 12,
				      false, why, sizeof(why)),
			 KH_OK);
	assert_int_equal(kg_router_new(&test_ops, (struct kg_core *)(void *)f->st, 900, true,
				       &f->rt),
			 KH_OK);
	f->resp.relay_fd = -1;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	char cmd[128];
	kg_resp_clear(&f->resp);
	json_decref(f->j);
	kg_router_free(f->rt);
	kh_gstore_close(f->st);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->root);
	assert_int_equal(system(cmd), 0);
	free(f);
	return 0;
}

struct q {
	const char *k[4], *v[4];
};
static const char *qget(void *qctx, const char *key)
{
	struct q *q = qctx;
	for (int i = 0; i < 4 && q && q->k[i]; i++)
		if (strcmp(q->k[i], key) == 0)
			return q->v[i];
	return NULL;
}

/* One request; the answer's status, body in f->j. */
static int req_full(struct fx *f, const char *method, const char *path, const char *tok,
		    bool cookie, const char *csrf, struct q *q, const char *body)
{
	struct kg_req r;
	char auth[100];
	memset(&r, 0, sizeof(r));
	r.method = method;
	r.path = path;
	r.query = qget;
	r.qctx = q;
	if (tok && !cookie) {
		snprintf(auth, sizeof(auth), "Bearer %s", tok);
		r.authorization = auth;
	} else if (tok) {
		r.cookie = tok;
	}
	r.csrf = csrf;
	r.body = body;
	r.body_len = body ? strlen(body) : 0;
	kg_resp_clear(&f->resp);
	json_decref(f->j);
	f->j = NULL;
	kg_router_handle(f->rt, &r, &f->resp);
	if (f->resp.body)
		f->j = json_loadb(f->resp.body, f->resp.body_len, 0, NULL);
	return f->resp.status;
}

static int req(struct fx *f, const char *method, const char *path, const char *tok,
	       const char *body)
{
	return req_full(f, method, path, tok, false, NULL, NULL, body);
}

static const char *js(struct fx *f, const char *key)
{
	json_t *v = f->j ? json_object_get(f->j, key) : NULL;
	return v && json_is_string(v) ? json_string_value(v) : "";
}

static json_int_t ji(struct fx *f, const char *key)
{
	return json_integer_value(json_object_get(f->j, key));
}

static void login(struct fx *f, const char *user, const char *pw, char tok[65])
{
	char body[200];
	snprintf(body, sizeof(body), "{\"user\":\"%s\",\"password\":\"%s\"}", user, pw);
	assert_int_equal(req(f, "POST", "/api/login", NULL, body), 200);
	snprintf(tok, 65, "%s", js(f, "session"));
	assert_int_equal(strlen(tok), 64);
}

/* The web console: the files compiled in, no login needed, only names in
 * the table, ETag revalidation; never an API route's session checks. */
static void test_router_console(void **state)
{
	struct fx *f = *state;
	struct kg_req r;
	const char *names[] = {"index.html", "app.js", "style.css", "chart.js"};

	assert_int_equal(req(f, "GET", "/", NULL, NULL), 200);
	assert_non_null(f->resp.asset);
	assert_string_equal(f->resp.asset->name, "index.html");
	assert_string_equal(kg_static_type(f->resp.asset), "text/html; charset=utf-8");
	assert_non_null(strstr((const char *)f->resp.asset->data, "/console/app.js"));
	assert_null(f->resp.body); /* the server sends the asset's bytes */
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		char path[64];
		snprintf(path, sizeof(path), "/console/%s", names[i]);
		assert_int_equal(req(f, "GET", path, NULL, NULL), 200);
		assert_string_equal(f->resp.asset->name, names[i]);
		assert_true(f->resp.asset->len > 100);
		assert_int_equal(strlen(f->resp.asset->etag), 18); /* quotes + 16 hex */
	}
	assert_string_equal(kg_static_type(kg_static_find("app.js")), "text/javascript; charset=utf-8");
	assert_string_equal(kg_static_type(kg_static_find("style.css")), "text/css; charset=utf-8");
	/* Chart.js is Debian's, compiled in */
	assert_non_null(strstr((const char *)kg_static_find("chart.js")->data, "Chart.js v"));

	/* unknown names, traversal, directories: 404 as JSON, no asset */
	static const char *const bad[] = {"/console/nope.js", "/console/../store.c", "/console/",
					  "/console", "/console/app.js/x", "/index.html",
					  "/console/%2e%2e"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(req(f, "GET", bad[i], NULL, NULL), 404);
		assert_null(f->resp.asset);
		HAS(js(f, "error"), "NOT_FOUND");
	}
	/* GET only */
	assert_int_equal(req(f, "POST", "/", NULL, NULL), 405);
	assert_string_equal(f->resp.allow, "GET");
	assert_int_equal(req(f, "DELETE", "/console/app.js", NULL, NULL), 405);
	assert_null(f->resp.asset);

	/* the browser's copy is still good: 304 */
	memset(&r, 0, sizeof(r));
	r.method = "GET";
	r.path = "/console/app.js";
	r.if_none_match = kg_static_find("app.js")->etag;
	kg_resp_clear(&f->resp);
	kg_router_handle(f->rt, &r, &f->resp);
	assert_int_equal(f->resp.status, 304);
	assert_ptr_equal(f->resp.asset, kg_static_find("app.js"));
	r.if_none_match = "\"0000000000000000\"";
	kg_resp_clear(&f->resp);
	kg_router_handle(f->rt, &r, &f->resp);
	assert_int_equal(f->resp.status, 200);
}

static void test_router_sessions(void **state)
{
	struct fx *f = *state;
	char tok[65], csrf[65], tok2[65];

	/* routes: 404, 405 with Allow */
	assert_int_equal(req(f, "GET", "/api/nothing", NULL, NULL), 404);
	assert_string_equal(js(f, "error"), "NOT_FOUND");
	assert_int_equal(req(f, "GET", "/api/groups/abc", NULL, NULL), 404);
	assert_int_equal(req(f, "GET", "/api/groups/0", NULL, NULL), 404);
	assert_int_equal(req(f, "GET", "/api/groups/", NULL, NULL), 404);
	assert_int_equal(req(f, "PATCH", "/api/groups/1", NULL, NULL), 405);
	assert_string_equal(f->resp.allow, "GET, PUT, DELETE");
	assert_int_equal(req(f, "GET", "/api/login", NULL, NULL), 405);

	/* no session */
	assert_int_equal(req(f, "GET", "/api/groups", NULL, NULL), 401);
	assert_string_equal(js(f, "error"), "NOT_LOGGED_IN");
	assert_int_equal(req(f, "GET", "/api/groups", "00", NULL), 401);

	/* login */
	assert_int_equal(req(f, "POST", "/api/login", NULL, "{\"user\":\"admin\"}"), 400);
	HAS(js(f, "reason"), "password: required");
	assert_int_equal(req(f, "POST", "/api/login", NULL,
			     "{\"user\":\"admin\",\"password\":\"x\",\"otp\":1}"),
			 400);
	HAS(js(f, "reason"), "unknown field \"otp\"");
	assert_int_equal(req(f, "POST", "/api/login", NULL, "{\"user\":"), 400);
	assert_string_equal(js(f, "error"), "BAD_FIELD");
	assert_int_equal(req(f, "POST", "/api/login", NULL,
			     "{\"user\":\"admin\",\"password\":\"wrong-secret\"}"),
			 401);
	assert_string_equal(js(f, "error"), "AUTH_FAILED");
	assert_null(strstr(f->resp.body, "wrong-secret"));
	login(f, "admin", "admin-secret", tok);
	snprintf(csrf, sizeof(csrf), "%s", js(f, "csrf"));
	assert_string_equal(js(f, "role"), "Administrator");
	assert_true(json_is_true(json_object_get(f->j, "authorized")));
	assert_int_equal(ji(f, "needed"), 1);
	assert_int_equal(ji(f, "expires_s"), 900);
	HAS(f->resp.set_cookie, "kh_session=");
	HAS(f->resp.set_cookie, "Secure; HttpOnly; SameSite=Strict; Path=/");

	assert_int_equal(req(f, "GET", "/api/session", tok, NULL), 200);
	assert_string_equal(js(f, "session"), "");
	assert_string_equal(js(f, "csrf"), "");
	assert_string_equal(json_string_value(json_array_get(json_object_get(f->j, "logins"), 0)),
			    "admin");

	/* the cookie: reads freely, changes only with X-CSRF-Token */
	assert_int_equal(req_full(f, "GET", "/api/groups", tok, true, NULL, NULL, NULL), 200);
	assert_int_equal(req_full(f, "POST", "/api/groups", tok, true, NULL, NULL,
				  "{\"name\":\"a\",\"port\":9300}"),
			 403);
	HAS(js(f, "reason"), "X-CSRF-Token");
	assert_int_equal(req_full(f, "POST", "/api/groups", tok, true, tok, NULL,
				  "{\"name\":\"a\",\"port\":9300}"),
			 403);
	assert_int_equal(req_full(f, "POST", "/api/groups", tok, true, csrf, NULL,
				  "{\"name\":\"a\",\"port\":9300}"),
			 201);
	/* the header needs no CSRF token */
	assert_int_equal(req(f, "DELETE", "/api/groups/1", tok, NULL), 204);

	/* permissions */
	login(f, "aud", "aud-secret-1", f->aud_tok);
	login(f, "op", "op-secret-1", f->op_tok);
	assert_int_equal(req(f, "GET", "/api/groups", f->aud_tok, NULL), 200);
	assert_int_equal(req(f, "POST", "/api/groups", f->aud_tok, "{\"name\":\"a\",\"port\":1}"),
			 403);
	assert_string_equal(js(f, "error"), "PERMISSION_DENIED");
	HAS(js(f, "reason"), "role Auditor lacks the permission groups.manage");
	assert_int_equal(req(f, "POST", "/api/users", f->op_tok,
			     "{\"name\":\"x\",\"role\":\"Auditor\",\"password\":\"12345678\"}"),
			 403);
	/* own password: any role; another's: users.manage */
	assert_int_equal(req(f, "POST", "/api/users/admin/password", f->op_tok,
			     "{\"password\":\"hijacked-pw\"}"),
			 403);
	assert_int_equal(req(f, "POST", "/api/users/op/password", f->op_tok,
			     "{\"password\":\"short\"}"),
			 400);
	HAS(js(f, "reason"), "password: 8-256 bytes");
	assert_int_equal(req(f, "POST", "/api/users/op/password", f->op_tok,
			     "{\"password\":\"op-secret-2\"}"),
			 204);

	/* logout */
	assert_int_equal(req(f, "POST", "/api/logout", f->aud_tok, NULL), 204);
	HAS(f->resp.set_cookie, "Max-Age=0");
	assert_int_equal(req(f, "GET", "/api/groups", f->aud_tok, NULL), 401);

	/* users and roles */
	assert_int_equal(req(f, "POST", "/api/users", tok,
			     "{\"name\":\"admin2\",\"role\":\"Administrator\",\"password\":"
			     "\"admin2-secret\"}"),
			 201);
	assert_true(json_is_true(json_object_get(f->j, "must_change")));
	assert_int_equal(req(f, "POST", "/api/users", tok,
			     "{\"name\":\"admin2\",\"role\":\"Administrator\",\"password\":"
			     "\"admin2-secret\"}"),
			 409);
	assert_int_equal(req(f, "POST", "/api/users", tok,
			     "{\"name\":\"x y\",\"role\":\"Auditor\",\"password\":\"12345678\"}"),
			 400);
	assert_int_equal(req(f, "GET", "/api/users", tok, NULL), 200);
	assert_int_equal(json_array_size(json_object_get(f->j, "users")), 4);
	assert_int_equal(req(f, "GET", "/api/roles", tok, NULL), 200);
	HAS(f->resp.body, "{\"name\":\"Operator\",\"permissions\":[\"view\",\"devices.operate\","
			  "\"remote\"],\"logins_required\":1}");
	assert_int_equal(req(f, "PUT", "/api/roles/Administrator", tok, "{\"logins_required\":3}"),
			 400);
	assert_int_equal(req(f, "PUT", "/api/roles/Nobody", tok, "{\"logins_required\":1}"), 404);
	assert_int_equal(req(f, "PUT", "/api/roles/Administrator", tok, "{\"logins_required\":2}"),
			 200);
	assert_int_equal(ji(f, "logins_required"), 2);

	/* dual login */
	assert_int_equal(req(f, "POST", "/api/login", NULL,
			     "{\"user\":\"admin\",\"password\":\"admin-secret\"}"),
			 200);
	snprintf(tok2, sizeof(tok2), "%s", js(f, "session"));
	assert_false(json_is_true(json_object_get(f->j, "authorized")));
	assert_int_equal(ji(f, "needed"), 2);
	assert_int_equal(req(f, "GET", "/api/groups", tok2, NULL), 401);
	HAS(js(f, "reason"), "needs 1 more login");
	assert_int_equal(req(f, "GET", "/api/session", tok2, NULL), 200);
	assert_int_equal(req(f, "POST", "/api/login", tok2,
			     "{\"user\":\"op\",\"password\":\"op-secret-2\"}"),
			 403);
	assert_string_equal(js(f, "error"), "ROLE_MISMATCH");
	assert_int_equal(req(f, "POST", "/api/login", tok2,
			     "{\"user\":\"admin\",\"password\":\"admin-secret\"}"),
			 409);
	assert_int_equal(req(f, "POST", "/api/login", tok2,
			     "{\"user\":\"admin2\",\"password\":\"admin2-secret\"}"),
			 200);
	assert_true(json_is_true(json_object_get(f->j, "authorized")));
	assert_string_equal(js(f, "session"), tok2);
	assert_int_equal(json_array_size(json_object_get(f->j, "logins")), 2);
	assert_int_equal(req(f, "GET", "/api/groups", tok2, NULL), 200);
	/* a two-login role keeps two users */
	assert_int_equal(req(f, "DELETE", "/api/users/admin2", tok2, NULL), 409);
	assert_int_equal(req(f, "PUT", "/api/roles/administrator", tok2, "{\"logins_required\":1}"),
			 200);
	assert_int_equal(req(f, "DELETE", "/api/users/admin2", tok2, NULL), 204);
	/* removing a user ends their sessions */
	assert_int_equal(req(f, "GET", "/api/groups", tok2, NULL), 401);
	assert_int_equal(req(f, "DELETE", "/api/users/ghost", tok, NULL), 404);

	/* lockout through the API: 423 */
	for (int i = 0; i < 4; i++)
		assert_int_equal(req(f, "POST", "/api/login", NULL,
				     "{\"user\":\"aud\",\"password\":\"bad-password\"}"),
				 401);
	assert_int_equal(req(f, "POST", "/api/login", NULL,
			     "{\"user\":\"aud\",\"password\":\"bad-password\"}"),
			 423);
	assert_string_equal(js(f, "error"), "LOCKED");
	assert_int_equal(req(f, "POST", "/api/login", NULL,
			     "{\"user\":\"aud\",\"password\":\"aud-secret-1\"}"),
			 423);
	assert_int_equal(req(f, "GET", "/api/users", tok, NULL), 200);
	HAS(f->resp.body, "{\"name\":\"aud\",\"role\":\"Auditor\",\"locked\":true");

	/* a body over the limit */
	struct kg_req big;
	memset(&big, 0, sizeof(big));
	big.method = "POST";
	big.path = "/api/groups";
	big.body_too_large = true;
	kg_resp_clear(&f->resp);
	kg_router_handle(f->rt, &big, &f->resp);
	assert_int_equal(f->resp.status, 413);
}

static void test_router_groups_devices(void **state)
{
	struct fx *f = *state;
	char tok[65];
	json_t *d;

	login(f, "admin", "admin-secret", tok);
	login(f, "op", "op-secret-1", f->op_tok);
	assert_int_equal(req(f, "POST", "/api/groups", tok, "{\"name\":\"Payments\"}"), 400);
	HAS(js(f, "reason"), "port: required");
	assert_int_equal(req(f, "POST", "/api/groups", tok,
			     "{\"name\":\"Payments\",\"port\":9200,\"pairs\":{\"http\":"
			     "{\"allow\":true}}}"),
			 201);
	assert_int_equal(ji(f, "id"), 1);
	assert_string_equal(js(f, "owner"), "admin");
	assert_string_equal(js(f, "type"), "Hardware Security Module");
	HAS(f->resp.body, "\"warnings\":[\"keyhold-hsm has no HTTP service");
	assert_int_equal(req(f, "POST", "/api/groups", tok, "{\"name\":\"payments\",\"port\":9201}"),
			 409);
	assert_string_equal(js(f, "error"), "EXISTS");
	assert_int_equal(req(f, "POST", "/api/groups", tok, "{\"name\":\"  \",\"port\":9201}"), 400);
	HAS(js(f, "reason"), "group name");
	assert_int_equal(req(f, "PUT", "/api/groups/1", tok,
			     "{\"description\":\"cards\",\"pairs\":{\"http\":{\"allow\":false}}}"),
			 200);
	assert_string_equal(js(f, "description"), "cards");
	assert_string_equal(js(f, "name"), "Payments");
	assert_null(json_object_get(f->j, "warnings"));
	assert_int_equal(req(f, "PUT", "/api/groups/9", tok, "{}"), 404);
	assert_int_equal(req(f, "GET", "/api/groups", f->op_tok, NULL), 200);
	assert_int_equal(json_array_size(json_object_get(f->j, "groups")), 1);

	/* devices: the first is the Primary when no role is given */
	assert_int_equal(req(f, "POST", "/api/groups/1/devices", f->op_tok,
			     "{\"host\":\"127.0.0.1\"}"),
			 403);
	assert_int_equal(req(f, "POST", "/api/groups/1/devices", tok, "{\"port\":1}"), 400);
	assert_int_equal(req(f, "POST", "/api/groups/9/devices", tok, "{\"host\":\"h\"}"), 404);
	assert_int_equal(req(f, "POST", "/api/groups/1/devices", tok, "{\"host\":\"127.0.0.1\"}"),
			 201);
	assert_string_equal(js(f, "role"), "Primary");
	assert_string_equal(js(f, "state"), "up"); /* device 1: live from the core */
	assert_true(json_is_real(json_object_get(f->j, "latency_ms")));
	assert_int_equal(req(f, "POST", "/api/groups/1/devices", tok,
			     "{\"host\":\"127.0.0.2\",\"role\":\"Primary\"}"),
			 409);
	HAS(js(f, "reason"), "already has a Primary");
	assert_int_equal(req(f, "POST", "/api/groups/1/devices", tok, "{\"host\":\"127.0.0.2\"}"),
			 201);
	assert_string_equal(js(f, "role"), "Production");
	assert_string_equal(js(f, "state"), "down"); /* device 2: not live */
	assert_true(json_is_null(json_object_get(f->j, "latency_ms")));
	/* refusals */
	assert_int_equal(req(f, "POST", "/api/groups/1/devices", tok,
			     "{\"host\":\"refused.example\"}"),
			 422);
	assert_string_equal(js(f, "error"), "REFUSED");
	assert_string_equal(js(f, "admit"), "MODEL");
	HAS(js(f, "reason"), "model differs");
	assert_int_equal(req(f, "POST", "/api/groups/1/devices", tok,
			     "{\"host\":\"down.example\"}"),
			 502);
	assert_string_equal(js(f, "error"), "CONNECT");
	assert_string_equal(js(f, "admit"), "UNREACHABLE");

	assert_int_equal(req(f, "GET", "/api/groups/1", tok, NULL), 200);
	assert_int_equal(json_array_size(json_object_get(f->j, "devices")), 2);
	assert_int_equal(req(f, "GET", "/api/groups/1/devices", tok, NULL), 200);
	assert_int_equal(json_array_size(json_object_get(f->j, "devices")), 2);
	assert_int_equal(req(f, "GET", "/api/devices", tok, NULL), 200);
	assert_int_equal(json_array_size(json_object_get(f->j, "devices")), 2);
	assert_int_equal(req(f, "GET", "/api/devices/2", tok, NULL), 200);
	assert_int_equal(req(f, "GET", "/api/devices/7", tok, NULL), 404);

	/* partial modify */
	assert_int_equal(req(f, "PUT", "/api/devices/2", tok,
			     "{\"role\":\"Backup\",\"ping_timeout_ms\":250}"),
			 200);
	assert_string_equal(js(f, "role"), "Backup");
	assert_int_equal(ji(f, "ping_timeout_ms"), 250);
	assert_string_equal(js(f, "host"), "127.0.0.2");
	assert_int_equal(req(f, "PUT", "/api/devices/2", tok, "{\"role\":\"Primary\"}"), 409);
	assert_int_equal(req(f, "PUT", "/api/devices/2", tok, "{\"port\":9009}"), 400);
	HAS(js(f, "reason"), "admin port must differ");
	/* enable / disable (operator) */
	assert_int_equal(req(f, "POST", "/api/devices/2/disable", f->op_tok, NULL), 200);
	assert_false(json_is_true(json_object_get(f->j, "enabled")));
	assert_string_equal(js(f, "state"), "disabled");
	assert_int_equal(req(f, "POST", "/api/devices/2/enable", f->op_tok, "{}"), 200);
	assert_true(json_is_true(json_object_get(f->j, "enabled")));
	assert_int_equal(req(f, "POST", "/api/devices/2/enable", f->op_tok, "{\"x\":1}"), 400);
	/* promote (devices.manage) */
	assert_int_equal(req(f, "POST", "/api/devices/2/promote", f->op_tok, NULL), 403);
	assert_int_equal(req(f, "POST", "/api/devices/2/promote", tok,
			     "{\"old_primary_role\":\"Backup\"}"),
			 200);
	assert_string_equal(js(f, "role"), "Primary");
	assert_int_equal(req(f, "GET", "/api/devices/1", tok, NULL), 200);
	assert_string_equal(js(f, "role"), "Backup");
	/* sync, diagnose, check */
	assert_int_equal(req(f, "POST", "/api/devices/1/sync", f->op_tok, NULL), 200);
	assert_int_equal(req(f, "POST", "/api/devices/1/diagnose", f->op_tok, NULL), 200);
	assert_false(json_is_true(json_object_get(f->j, "ok")));
	assert_string_equal(js(f, "failed"), "Admin port TLS");
	assert_int_equal(json_array_size(json_object_get(f->j, "steps")), KG_DIAG_NSTEPS);
	assert_int_equal(req(f, "POST", "/api/devices/9/diagnose", f->op_tok, NULL), 404);
	assert_int_equal(req(f, "POST", "/api/groups/1/check", f->op_tok, NULL), 200);
	assert_true(json_is_true(json_object_get(f->j, "all_agree")));
	d = json_array_get(json_object_get(f->j, "members"), 0);
	assert_string_equal(json_string_value(json_object_get(d, "ck")), "ABCD");
	/* replication */
	uint8_t payload[3] = {1, 2, 3};
	assert_int_equal(kh_gstore_journal_append(f->st, 1, KH_GJ_KEY_ROW, payload, 3, 2, NULL,
						  NULL),
			 KH_OK);
	assert_int_equal(req(f, "GET", "/api/groups/1/replication", tok, NULL), 200);
	assert_int_equal(ji(f, "journal_head"), 1);
	HAS(f->resp.body, "{\"device_id\":1,\"role\":\"Backup\",\"repl_version\":0,\"pending\":1,"
			  "\"synced\":false}");
	HAS(f->resp.body, "{\"device_id\":2,\"role\":\"Primary\",\"repl_version\":1,\"pending\":0,"
			  "\"synced\":true}");

	/* metrics and events */
	struct kh_gstore_metric m = {1, 1700000005000LL, 10, 1, 5000, 900};
	assert_int_equal(kh_gstore_metric_add(f->st, &m, 1, NULL), KH_OK);
	struct q q = {{"res", "from", "to", NULL}, {"10s", "1700000000000", "1700000100000", NULL}};
	assert_int_equal(req_full(f, "GET", "/api/devices/1/metrics", tok, false, NULL, &q, NULL),
			 200);
	HAS(f->resp.body, "\"res\":\"10s\"");
	HAS(f->resp.body, "{\"t_ms\":1700000000000,\"requests\":10,\"errors\":1,\"lat_avg_ms\":0.5,"
			  "\"lat_max_ms\":0.9");
	struct q bq = {{"res", NULL}, {"1h", NULL}};
	assert_int_equal(req_full(f, "GET", "/api/devices/1/metrics", tok, false, NULL, &bq, NULL),
			 400);
	struct q bq2 = {{"from", NULL}, {"12x", NULL}};
	assert_int_equal(req_full(f, "GET", "/api/devices/1/metrics", tok, false, NULL, &bq2, NULL),
			 400);
	HAS(js(f, "reason"), "from:");
	assert_int_equal(kh_gstore_event_add(f->st, 5, 1, 2, KH_GEV_STATE, "device 2 up", NULL),
			 KH_OK);
	struct q eq = {{"group", "max", NULL}, {"1", "1", NULL}};
	assert_int_equal(req_full(f, "GET", "/api/events", tok, false, NULL, &eq, NULL), 200);
	HAS(f->resp.body, "\"kind\":\"state\",\"text\":\"device 2 up\"");
	struct q eq2 = {{"max", NULL}, {"1001", NULL}};
	assert_int_equal(req_full(f, "GET", "/api/events", tok, false, NULL, &eq2, NULL), 400);

	/* removal: the group is in use while devices remain */
	assert_int_equal(req(f, "DELETE", "/api/groups/1", tok, NULL), 409);
	assert_string_equal(js(f, "error"), "IN_USE");
	assert_int_equal(req(f, "DELETE", "/api/devices/2", tok, NULL), 409);
	assert_int_equal(req(f, "DELETE", "/api/devices/1", tok, NULL), 204);
	assert_int_equal(req(f, "DELETE", "/api/devices/2", tok, NULL), 204);
	assert_int_equal(req(f, "DELETE", "/api/groups/1", tok, NULL), 204);
	assert_int_equal(req(f, "GET", "/api/groups/1", tok, NULL), 404);
}

/* ---- end to end over loopback ------------------------------------------- */

struct echo {
	int lfd;
	pthread_t t;
};

/* Accepts one connection and echoes until it closes. */
static void *echo_main(void *arg)
{
	struct echo *e = arg;
	char buf[4096];
	int fd = accept(e->lfd, NULL, NULL);
	ssize_t n;
	if (fd < 0)
		return NULL;
	/* "bye" ends it from the device's side, as an HSM ending its session */
	while ((n = recv(fd, buf, sizeof(buf), 0)) > 0 && !(n == 3 && memcmp(buf, "bye", 3) == 0))
		if (send(fd, buf, (size_t)n, MSG_NOSIGNAL) != n)
			break;
	close(fd);
	return NULL;
}

static void echo_start(struct echo *e)
{
	struct sockaddr_in a;
	socklen_t len = sizeof(a);
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	e->lfd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(e->lfd >= 0);
	assert_int_equal(bind(e->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(e->lfd, 1), 0);
	assert_int_equal(getsockname(e->lfd, (struct sockaddr *)&a, &len), 0);
	relay_port = ntohs(a.sin_port);
	assert_int_equal(pthread_create(&e->t, NULL, echo_main, e), 0);
}

struct conn {
	int fd;
	SSL_CTX *ctx;
	SSL *ssl;
};

static void conn_open(struct conn *c, unsigned port, bool tls)
{
	struct sockaddr_in a;
	memset(c, 0, sizeof(*c));
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	a.sin_port = htons((uint16_t)port);
	c->fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_int_equal(connect(c->fd, (struct sockaddr *)&a, sizeof(a)), 0);
	if (!tls)
		return;
	c->ctx = SSL_CTX_new(TLS_client_method());
	SSL_CTX_set_verify(c->ctx, SSL_VERIFY_NONE, NULL); /* self-signed test cert */
	c->ssl = SSL_new(c->ctx);
	SSL_set_fd(c->ssl, c->fd);
	assert_int_equal(SSL_connect(c->ssl), 1);
}

static void conn_close(struct conn *c)
{
	if (c->ssl) {
		SSL_shutdown(c->ssl);
		SSL_free(c->ssl);
		SSL_CTX_free(c->ctx);
	}
	close(c->fd);
}

static void conn_write(struct conn *c, const char *s, size_t n)
{
	if (c->ssl)
		assert_int_equal(SSL_write(c->ssl, s, (int)n), (int)n);
	else
		assert_int_equal(send(c->fd, s, n, MSG_NOSIGNAL), (ssize_t)n);
}

/* For a body the server may refuse (and close on) before it is all sent. */
static void conn_write_lenient(struct conn *c, const char *s, size_t n)
{
	if (c->ssl)
		KH_IGNORE(SSL_write(c->ssl, s, (int)n) <= 0);
	else
		KH_IGNORE(send(c->fd, s, n, MSG_NOSIGNAL) < 0);
}

static ssize_t conn_read(struct conn *c, char *buf, size_t n)
{
	if (c->ssl) {
		int k = SSL_read(c->ssl, buf, (int)n);
		return k > 0 ? k : 0;
	}
	return recv(c->fd, buf, n, 0);
}

/* Reads until the headers end (and, with close, the connection). */
static size_t read_answer(struct conn *c, char *buf, size_t n, bool until_close)
{
	size_t got = 0;
	ssize_t k;
	while (got < n - 1 && (k = conn_read(c, buf + got, n - 1 - got)) > 0) {
		const char *end, *cl;
		got += (size_t)k;
		buf[got] = '\0';
		if ((end = strstr(buf, "\r\n\r\n")) == NULL)
			continue;
		if (!until_close)
			break;
		/* a kept-alive answer ends with its body */
		cl = strstr(buf, "Content-Length: ");
		if (cl && cl < end && got >= (size_t)(end + 4 - buf) + strtoul(cl + 16, NULL, 10))
			break;
	}
	buf[got] = '\0';
	return got;
}

/* One request on a new connection; the whole answer in buf. */
static int http(unsigned port, bool tls, const char *method, const char *path, const char *hdrs,
		const char *body, char *buf, size_t n)
{
	struct conn c;
	char head[1024];
	int status = 0;
	conn_open(&c, port, tls);
	snprintf(head, sizeof(head),
		 "%s %s HTTP/1.1\r\nHost: localhost\r\n%s%sContent-Length: %zu\r\n\r\n",
		 method, path,
		 hdrs && strstr(hdrs, "Connection:") ? "" : "Connection: close\r\n",
		 hdrs ? hdrs : "", body ? strlen(body) : 0);
	conn_write(&c, head, strlen(head));
	if (body && *body)
		conn_write_lenient(&c, body, strlen(body));
	read_answer(&c, buf, n, true);
	conn_close(&c);
	sscanf(buf, "HTTP/1.1 %d", &status);
	return status;
}

static void token_of(const char *answer, char tok[65])
{
	const char *p = strstr(answer, "\"session\":\"");
	assert_non_null(p);
	memcpy(tok, p + 11, 64);
	tok[64] = '\0';
}

static void end_to_end(struct fx *f, bool tls)
{
	struct kg_http *h = NULL;
	struct kg_http_cfg cfg;
	char why[KG_WHY_MAX], *buf = malloc(1 << 17), hdr[200], tok[65];
	struct echo e;
	unsigned port;
	struct conn c;

	memset(&cfg, 0, sizeof(cfg));
	cfg.listen = "127.0.0.1";
	cfg.tls = tls;
	if (tls) {
		char cmd[600];
		static char cert[128], key[128];
		snprintf(cert, sizeof(cert), "%s/http.pem", f->root);
		snprintf(key, sizeof(key), "%s/http.key", f->root);
		snprintf(cmd, sizeof(cmd),
			 "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
			 "-subj /CN=127.0.0.1 -days 1 -keyout '%s' -out '%s' 2>/dev/null",
			 key, cert);
		assert_int_equal(system(cmd), 0);
		cfg.cert_file = cert;
		cfg.key_file = key;
		/* a missing key is refused with its name */
		cfg.key_file = "/nonexistent/key.pem";
		assert_int_equal(kg_httpd_start(&test_ops, (struct kg_core *)(void *)f->st, &cfg, &h,
						why, sizeof(why)),
				 KH_ERR_LOCAL_FILE);
		HAS(why, "/nonexistent/key.pem");
		cfg.key_file = key;
	}
	assert_int_equal(kg_httpd_start(&test_ops, (struct kg_core *)(void *)f->st, &cfg, &h, why,
					sizeof(why)),
			 KH_OK);
	port = kg_httpd_port(h);
	assert_true(port > 0);

	assert_int_equal(http(port, tls, "GET", "/api/groups", NULL, NULL, buf, 1 << 17), 401);
	HAS(buf, "Content-Type: application/json");
	HAS(buf, "{\"error\":\"NOT_LOGGED_IN\"");

	/* the web console, with its security headers; revalidated by ETag */
	assert_int_equal(http(port, tls, "GET", "/", NULL, NULL, buf, 1 << 17), 200);
	HAS(buf, "Content-Type: text/html; charset=utf-8");
	HAS(buf, "Content-Security-Policy: default-src 'self'; img-src 'self' data:; "
		 "style-src 'self'; script-src 'self';");
	HAS(buf, "frame-ancestors 'none'");
	HAS(buf, "X-Content-Type-Options: nosniff");
	HAS(buf, "Referrer-Policy: no-referrer");
	HAS(buf, "Cache-Control: no-cache");
	HAS(buf, "<script type=\"module\" src=\"/console/app.js\">");
	snprintf(hdr, sizeof(hdr), "If-None-Match: %s\r\n", kg_static_find("style.css")->etag);
	assert_int_equal(http(port, tls, "GET", "/console/style.css", hdr, NULL, buf, 1 << 17), 304);
	assert_int_equal(http(port, tls, "GET", "/console/style.css", NULL, NULL, buf, 1 << 17), 200);
	HAS(buf, "Content-Type: text/css; charset=utf-8");
	HAS(buf, kg_static_find("style.css")->etag);
	assert_int_equal(http(port, tls, "POST", "/api/login", NULL,
			      "{\"user\":\"admin\",\"password\":\"admin-secret\"}", buf, 1 << 17),
			 200);
	HAS(buf, "Set-Cookie: kh_session=");
	HAS(buf, "Cache-Control: no-store");
	token_of(buf, tok);
	snprintf(hdr, sizeof(hdr), "Authorization: Bearer %s\r\n", tok);
	assert_int_equal(http(port, tls, "POST", "/api/groups", hdr,
			      "{\"name\":\"Payments\",\"port\":9200}", buf, 1 << 17),
			 201);
	HAS(buf, "\"name\":\"Payments\"");
	/* the cookie, with and without the CSRF token; the query string */
	snprintf(hdr, sizeof(hdr), "Cookie: kh_session=%s\r\n", tok);
	assert_int_equal(http(port, tls, "GET", "/api/events?max=2&skip=0", hdr, NULL, buf,
			      1 << 17),
			 200);
	assert_int_equal(http(port, tls, "GET", "/api/events?max=0", hdr, NULL, buf, 1 << 17), 400);
	assert_int_equal(http(port, tls, "DELETE", "/api/groups/1", hdr, NULL, buf, 1 << 17), 403);
	assert_int_equal(http(port, tls, "PATCH", "/api/groups/1", hdr, NULL, buf, 1 << 17), 405);
	HAS(buf, "Allow: GET, PUT, DELETE");

	/* bodies over 64 KiB: declared, and sent chunked */
	char *big = malloc(KG_BODY_MAX + 100);
	memset(big, ' ', KG_BODY_MAX + 99);
	big[0] = '{';
	big[KG_BODY_MAX + 98] = '}';
	big[KG_BODY_MAX + 99] = '\0';
	snprintf(hdr, sizeof(hdr), "Authorization: Bearer %s\r\n", tok);
	assert_int_equal(http(port, tls, "POST", "/api/groups", hdr, big, buf, 1 << 17), 413);
	HAS(buf, "\"error\":\"TOO_LARGE\"");
	conn_open(&c, port, tls);
	char head[600];
	snprintf(head, sizeof(head),
		 "POST /api/groups HTTP/1.1\r\nHost: x\r\nConnection: close\r\n%s"
		 "Transfer-Encoding: chunked\r\n\r\n",
		 hdr);
	conn_write(&c, head, strlen(head));
	for (int i = 0; i < 3; i++) {
		char chunk[40];
		snprintf(chunk, sizeof(chunk), "%x\r\n", 30000);
		conn_write(&c, chunk, strlen(chunk));
		conn_write(&c, big, 30000);
		conn_write(&c, "\r\n", 2);
	}
	conn_write(&c, "0\r\n\r\n", 5);
	read_answer(&c, buf, 1 << 17, true);
	conn_close(&c);
	HAS(buf, "HTTP/1.1 413");
	free(big);

	/* the relay: 101, then bytes both ways to the Admin port */
	assert_int_equal(http(port, tls, "POST", "/api/groups/1/devices", hdr,
			      "{\"host\":\"127.0.0.1\"}", buf, 1 << 17),
			 201);
	assert_int_equal(http(port, tls, "POST", "/api/devices/1/relay", hdr, NULL, buf, 1 << 17),
			 400);
	HAS(buf, "Upgrade: keyhold-relay");
	echo_start(&e);
	conn_open(&c, port, tls);
	snprintf(head, sizeof(head),
		 "POST /api/devices/1/relay HTTP/1.1\r\nHost: x\r\n%sConnection: Upgrade\r\n"
		 "Upgrade: keyhold-relay\r\nContent-Length: 0\r\n\r\n",
		 hdr);
	conn_write(&c, head, strlen(head));
	read_answer(&c, buf, 1 << 17, false);
	HAS(buf, "HTTP/1.1 101");
	HAS(buf, "Upgrade: keyhold-relay");
	for (int i = 0; i < 3; i++) {
		char msg[64], got[64];
		size_t have = 0;
		ssize_t k;
		snprintf(msg, sizeof(msg), "ciphertext %d to the HSM", i);
		conn_write(&c, msg, strlen(msg));
		while (have < strlen(msg) && (k = conn_read(&c, got + have, sizeof(got) - have)) > 0)
			have += (size_t)k;
		assert_int_equal(have, strlen(msg));
		assert_memory_equal(got, msg, have);
	}
	/* the device closes: so does the relay */
	conn_write(&c, "bye", 3);
	assert_int_equal(conn_read(&c, buf, 16), 0);
	conn_close(&c);
	pthread_join(e.t, NULL);
	close(e.lfd);
	/* the Admin port closed: 502 */
	assert_int_equal(http(port, tls, "POST", "/api/devices/1/relay", hdr, NULL, buf, 1 << 17),
			 400);
	snprintf(head, sizeof(head), "%sConnection: Upgrade\r\nUpgrade: keyhold-relay\r\n", hdr);
	assert_int_equal(http(port, tls, "POST", "/api/devices/1/relay", head, NULL, buf, 1 << 17),
			 502);
	HAS(buf, "\"error\":\"CONNECT\"");
	/* the relay is audited */
	assert_int_equal(http(port, tls, "GET", "/api/events", hdr, NULL, buf, 1 << 17), 200);
	HAS(buf, "remote manage of device 1 by admin");

	/* a relay left open when the listener stops */
	echo_start(&e);
	conn_open(&c, port, tls);
	conn_write(&c, head, 0);
	snprintf(head, sizeof(head),
		 "POST /api/devices/1/relay HTTP/1.1\r\nHost: x\r\n%sConnection: Upgrade\r\n"
		 "Upgrade: keyhold-relay\r\n\r\n",
		 hdr);
	conn_write(&c, head, strlen(head));
	read_answer(&c, buf, 1 << 17, false);
	HAS(buf, "HTTP/1.1 101");
	kg_http_stop(h);
	conn_close(&c);
	pthread_join(e.t, NULL);
	close(e.lfd);
	free(buf);
}

/* ---- the console's sealed-channel relay ---------------------------------- */

static const char *frame_of(struct fx *f)
{
	return js(f, "frame");
}

static void admin_post(struct fx *f, const char *tok, const char *frame, int status)
{
	char body[512];
	snprintf(body, sizeof(body), "{\"frame\":\"%s\"}", frame);
	int got = req(f, "POST", "/api/devices/1/admin", tok, body);
	if (got != status)
		fail_msg("%s: %d, not %d (%s)", frame, got, status,
			 f->resp.body ? f->resp.body : "");
}

static bool event_seen(struct fx *f, const char *text)
{
	struct kh_gstore_event ev[32];
	struct kh_gstore_why w;
	size_t n = 0;
	assert_int_equal(kh_gstore_event_list(f->st, 0, 1, 0, ev, 32, &n, &w), KH_OK);
	for (size_t i = 0; i < n; i++)
		if (strstr(ev[i].text, text))
			return true;
	return false;
}

static int64_t now_wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void test_router_admin(void **state)
{
	struct fx *f = *state;
	char tok[65], csrf[65];
	int opened0 = atomic_load(&admin_opened), closed0 = atomic_load(&admin_closed);

	login(f, "admin", "admin-secret", tok);
	snprintf(csrf, sizeof(csrf), "%s", js(f, "csrf"));
	login(f, "op", "op-secret-1", f->op_tok);
	login(f, "aud", "aud-secret-1", f->aud_tok);
	assert_int_equal(req(f, "POST", "/api/groups", tok, "{\"name\":\"g\",\"port\":9300}"), 201);
	assert_int_equal(req(f, "POST", "/api/groups/1/devices", tok, "{\"host\":\"127.0.0.1\"}"),
			 201);

	/* permission, CSRF, the route's methods */
	admin_post(f, f->aud_tok, "[AORMKX;PK04;]", 403);
	HAS(js(f, "reason"), "remote");
	assert_int_equal(req(f, "DELETE", "/api/devices/1/admin", f->aud_tok, NULL), 403);
	assert_int_equal(req_full(f, "POST", "/api/devices/1/admin", tok, true, NULL, NULL,
				  "{\"frame\":\"[AORMKX;PK04;]\"}"),
			 403);
	HAS(js(f, "reason"), "X-CSRF-Token");
	assert_int_equal(req_full(f, "DELETE", "/api/devices/1/admin", tok, true, NULL, NULL, NULL),
			 403);
	assert_int_equal(req(f, "GET", "/api/devices/1/admin", tok, NULL), 405);
	assert_int_equal(atomic_load(&admin_opened), opened0);

	/* only RMKX and RMSG pass, as one whole frame */
	static const char *const refused[] = {
		"{\"frame\":\"[AOLOGN;IDAdmin1;PW00;]\"}", "{\"frame\":\"[AOECHO;]\"}",
		"{\"frame\":\"[AOMKLC;CM00;]\"}", "{\"frame\":\"RMKX\"}",
		"{\"frame\":\"[AORMKX;PK04;][AOECHO;]\"}", "{\"frame\":\"[AORMKX;PK04;\"}",
		"{\"frame\":\"[AORMKX;PK04;]x\"}",
	};
	for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
		if (req(f, "POST", "/api/devices/1/admin", tok, refused[i]) != 400)
			fail_msg("%s: not refused", refused[i]);
		assert_string_equal(js(f, "error"), "BAD_FIELD");
		HAS(js(f, "reason"), "only RMKX and RMSG pass through the console's relay");
	}
	assert_int_equal(req(f, "POST", "/api/devices/1/admin", tok, "{}"), 400);
	HAS(js(f, "reason"), "frame: required");
	assert_int_equal(req(f, "POST", "/api/devices/1/admin", tok,
			     "{\"frame\":\"[AORMKX;]\",\"x\":1}"),
			 400);
	assert_int_equal(req(f, "POST", "/api/devices/1/admin", tok, "{\"frame\":7}"), 400);
	assert_int_equal(atomic_load(&admin_opened), opened0);

	/* RMSG first: no connection to carry it */
	admin_post(f, tok, "[AORMSG;CT00;]", 409);
	assert_string_equal(js(f, "error"), "STATE");
	/* no such device */
	assert_int_equal(req(f, "POST", "/api/devices/9/admin", tok, "{\"frame\":\"[AORMKX;]\"}"),
			 404);
	assert_int_equal(kg_router_admin_count(f->rt), 0);

	/* RMKX opens the session's connection; RMSG and a new RMKX reuse it */
	assert_int_equal(req_full(f, "POST", "/api/devices/1/admin", tok, true, csrf, NULL,
				  "{\"frame\":\"[AORMKX;PK04;]\"}"),
			 200);
	int cn = atomic_load(&admin_opened);
	char want[64];
	snprintf(want, sizeof(want), "[AORMKX;BBY;CN%d;RQ1;]", cn);
	assert_string_equal(frame_of(f), want);
	assert_int_equal(kg_router_admin_count(f->rt), 1);
	assert_true(event_seen(f, "console remote manage of device 1 by admin"));
	admin_post(f, tok, "[AORMSG;CT0011;]", 200);
	snprintf(want, sizeof(want), "[AORMSG;BBY;CN%d;RQ2;]", cn);
	assert_string_equal(frame_of(f), want);
	/* the HSM's ERRO is its answer, passed on as it came */
	admin_post(f, tok, "[AORMSG;CTBAD;]", 200);
	HAS(frame_of(f), "[AOERRO;CMRMSG;");
	HAS(frame_of(f), "ETdecrypt failed;");
	admin_post(f, tok, "[AORMKX;PK04;]", 200);
	snprintf(want, sizeof(want), "[AORMKX;BBY;CN%d;RQ4;]", cn);
	assert_string_equal(frame_of(f), want);
	assert_int_equal(atomic_load(&admin_opened), cn);

	/* another session has a connection of its own */
	admin_post(f, f->op_tok, "[AORMKX;PK04;]", 200);
	assert_int_equal(atomic_load(&admin_opened), cn + 1);
	assert_int_equal(kg_router_admin_count(f->rt), 2);
	assert_true(event_seen(f, "console remote manage of device 1 by op"));

	/* DELETE closes this session's connection only */
	assert_int_equal(req_full(f, "DELETE", "/api/devices/1/admin", tok, true, csrf, NULL, NULL),
			 204);
	assert_int_equal(kg_router_admin_count(f->rt), 1);
	admin_post(f, tok, "[AORMSG;CT0011;]", 409);
	assert_int_equal(req(f, "DELETE", "/api/devices/1/admin", tok, NULL), 204); /* again: 204 */
	admin_post(f, f->op_tok, "[AORMSG;CT0011;]", 200);

	/* logout closes the session's connections */
	assert_int_equal(req(f, "POST", "/api/logout", f->op_tok, NULL), 204);
	assert_int_equal(kg_router_admin_count(f->rt), 0);

	/* ten idle minutes close one */
	admin_post(f, tok, "[AORMKX;PK04;]", 200);
	assert_int_equal(kg_router_admin_count(f->rt), 1);
	kg_router_sweep(f->rt, now_wall_ms() + 60 * 1000);
	assert_int_equal(kg_router_admin_count(f->rt), 1);
	kg_router_sweep(f->rt, now_wall_ms() + 10 * 60 * 1000 + 1000);
	assert_int_equal(kg_router_admin_count(f->rt), 0);

	/* a session that ends (its user removed) loses its connections */
	login(f, "op", "op-secret-1", f->op_tok);
	admin_post(f, f->op_tok, "[AORMKX;PK04;]", 200);
	assert_int_equal(kg_router_admin_count(f->rt), 1);
	assert_int_equal(req(f, "DELETE", "/api/users/op", tok, NULL), 204);
	kg_router_sweep(f->rt, now_wall_ms());
	assert_int_equal(kg_router_admin_count(f->rt), 0);

	/* an Admin port that does not answer */
	atomic_store(&admin_down, true);
	admin_post(f, tok, "[AORMKX;PK04;]", 502);
	assert_string_equal(js(f, "error"), "CONNECT");
	HAS(js(f, "reason"), "port 9009 (Admin)");
	atomic_store(&admin_down, false);
	assert_int_equal(kg_router_admin_count(f->rt), 0);

	/* every fake Admin port saw its connection close */
	for (int i = 0; i < 200 && atomic_load(&admin_closed) - closed0 <
				       atomic_load(&admin_opened) - opened0;
	     i++)
		usleep(10000);
	assert_int_equal(atomic_load(&admin_closed) - closed0, atomic_load(&admin_opened) - opened0);
}

static void test_http_clear(void **state)
{
	end_to_end(*state, false);
}

static void test_http_tls(void **state)
{
	end_to_end(*state, true);
}

int main(void)
{
	/* a server that answers 413 early closes while the client writes */
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_json_group),
		cmocka_unit_test(test_json_device),
		cmocka_unit_test(test_json_body),
		cmocka_unit_test(test_json_out),
		cmocka_unit_test_setup_teardown(test_router_console, setup, teardown),
		cmocka_unit_test_setup_teardown(test_router_sessions, setup, teardown),
		cmocka_unit_test_setup_teardown(test_router_groups_devices, setup, teardown),
		cmocka_unit_test_setup_teardown(test_router_admin, setup, teardown),
		cmocka_unit_test_setup_teardown(test_http_clear, setup, teardown),
		cmocka_unit_test_setup_teardown(test_http_tls, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

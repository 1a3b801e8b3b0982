/* The guardian's state store: every operation, every rule and refusal with
 * its reason, atomicity of refused changes, journal semantics (a member that
 * was down catching up in order, replication versions, pruning), events,
 * metrics, durability across reopen, and kill -9 / _exit() mid-write. */
#include "kh_testutil.h"
#include "guardian/store.h"
#include "common/kh_err.h"

#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct fx {
	char dir[256];
	struct kh_gstore *st;
	struct kh_gstore_why why;
};

static void fx_rm(const char *dir)
{
	const char *files[] = {"guardian.db", "guardian.db-wal", "guardian.db-shm"};
	char p[300];
	for (size_t i = 0; i < 3; i++) {
		snprintf(p, sizeof(p), "%s/%s", dir, files[i]);
		unlink(p);
	}
	rmdir(dir);
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	char tmpl[] = "/tmp/kh-gstore-XXXXXX";
	assert_non_null(mkdtemp(tmpl));
	snprintf(f->dir, sizeof(f->dir), "%s/data", tmpl);
	assert_int_equal(kh_gstore_open(f->dir, &f->st, &f->why), KH_OK);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	char parent[256];
	kh_gstore_close(f->st);
	fx_rm(f->dir);
	snprintf(parent, sizeof(parent), "%s", f->dir);
	*strrchr(parent, '/') = '\0';
	rmdir(parent);
	free(f);
	return 0;
}

static void reopen(struct fx *f)
{
	kh_gstore_close(f->st);
	f->st = NULL;
	assert_int_equal(kh_gstore_open(f->dir, &f->st, &f->why), KH_OK);
}

#define WHY_HAS(f, s)                                                         \
	do {                                                                  \
		if (strstr((f)->why.text, (s)) == NULL)                       \
			fail_msg("reason \"%s\" lacks \"%s\"", (f)->why.text, (s)); \
	} while (0)

static int64_t add_group(struct fx *f, const char *name, uint16_t port)
{
	struct kh_gstore_group g;
	int64_t id = 0;
	kh_gstore_group_defaults(&g);
	snprintf(g.name, sizeof(g.name), "%s", name);
	g.port = port;
	assert_int_equal(kh_gstore_group_add(f->st, &g, &id, &f->why), KH_OK);
	return id;
}

static int add_dev(struct fx *f, int64_t group, const char *host, uint16_t port,
		   enum kh_gstore_role role, int64_t *id)
{
	struct kh_gstore_device d;
	kh_gstore_device_defaults(&d);
	d.group_id = group;
	snprintf(d.host, sizeof(d.host), "%s", host);
	d.port = port;
	d.role = role;
	return kh_gstore_device_add(f->st, &d, id, &f->why);
}

static int64_t ndevices(struct fx *f, int64_t group)
{
	struct kh_gstore_device d[16];
	size_t n = 0;
	assert_int_equal(kh_gstore_device_list(f->st, group, d, 16, &n, &f->why), KH_OK);
	return (int64_t)n;
}

/* ---- open, permissions, durability ---------------------------------- */

static void test_open(void **state)
{
	struct fx *f = *state;
	struct stat sb;
	char p[300];
	struct kh_gstore *st2 = NULL;

	assert_int_equal(stat(f->dir, &sb), 0);
	assert_int_equal(sb.st_mode & 0777, 0700);
	snprintf(p, sizeof(p), "%s/guardian.db", f->dir);
	assert_int_equal(stat(p, &sb), 0);
	assert_int_equal(sb.st_mode & 0777, 0600);
	assert_int_equal(kh_gstore_schema_version(f->st), 2);

	/* a dir open to others is refused, not used */
	assert_int_equal(chmod(f->dir, 0755), 0);
	assert_int_equal(kh_gstore_open(f->dir, &st2, &f->why), KH_ERR_PERMISSION_DENIED);
	assert_null(st2);
	WHY_HAS(f, "data dir");
	assert_int_equal(chmod(f->dir, 0700), 0);
	assert_int_equal(chmod(p, 0644), 0);
	assert_int_equal(kh_gstore_open(f->dir, &st2, &f->why), KH_ERR_PERMISSION_DENIED);
	WHY_HAS(f, "database file");
	assert_int_equal(chmod(p, 0600), 0);

	/* durability: what was committed is there after close and reopen */
	int64_t g = add_group(f, "durable", 7001), d = 0, seq = 0;
	assert_int_equal(add_dev(f, g, "10.0.0.1", 9100, KH_GROLE_PRIMARY, &d), KH_OK);
	assert_int_equal(kh_gstore_journal_append(f->st, g, KH_GJ_KEY_ROW, "abc", 3, 0, &seq,
						  &f->why),
			 KH_OK);
	reopen(f);
	struct kh_gstore_group gg;
	assert_int_equal(kh_gstore_group_find(f->st, "DURABLE", &gg, &f->why), KH_OK);
	assert_int_equal(gg.id, g);
	assert_int_equal(gg.journal_head, seq);
	int64_t n = 0;
	assert_int_equal(kh_gstore_journal_count_pending(f->st, d, &n, &f->why), KH_OK);
	assert_int_equal(n, 1);
	assert_int_equal(kh_gstore_schema_version(f->st), 2);
}

static void test_enums(void **state)
{
	(void)state;
	enum kh_gstore_conn c;
	enum kh_gstore_role r;
	enum kh_gstore_state s;
	enum kh_gstore_jkind k;
	enum kh_gstore_ekind e;
	assert_int_equal(kh_gstore_conn_parse("anonymous tls", &c), KH_OK);
	assert_int_equal(c, KH_GCONN_ANON_TLS);
	assert_int_equal(kh_gstore_conn_parse("TLS", &c), KH_ERR_BAD_FIELD);
	assert_int_equal(kh_gstore_role_parse("backup", &r), KH_OK);
	assert_int_equal(r, KH_GROLE_BACKUP);
	assert_int_equal(kh_gstore_role_parse("Secondary", &r), KH_ERR_BAD_FIELD);
	assert_int_equal(kh_gstore_role_parse(NULL, &r), KH_ERR_BAD_FIELD);
	assert_int_equal(kh_gstore_state_parse("degraded", &s), KH_OK);
	assert_int_equal(kh_gstore_state_parse("", &s), KH_ERR_BAD_FIELD);
	assert_int_equal(kh_gstore_jkind_parse("key_delete", &k), KH_OK);
	assert_int_equal(k, KH_GJ_KEY_DELETE);
	assert_int_equal(kh_gstore_jkind_parse("key", &k), KH_ERR_BAD_FIELD);
	assert_int_equal(kh_gstore_ekind_parse("promotion", &e), KH_OK);
	assert_int_equal(kh_gstore_ekind_parse("x", &e), KH_ERR_BAD_FIELD);
	assert_string_equal(kh_gstore_conn_name(KH_GCONN_SSL), "SSL");
	assert_string_equal(kh_gstore_pair_name(KH_GPAIR_EXCRYPT), "Excrypt/Standard");
	assert_string_equal(kh_gstore_role_name(KH_GROLE_PRIMARY), "Primary");
	assert_string_equal(kh_gstore_jstate_name(KH_GJS_FAILED), "failed");
	assert_string_equal(kh_gstore_role_name((enum kh_gstore_role)42), "?");
}

/* ---- groups ---------------------------------------------------------- */

static void test_groups(void **state)
{
	struct fx *f = *state;
	struct kh_gstore_group g, got, list[4];
	int64_t id = 0, id2 = 0;
	size_t n = 0;

	kh_gstore_group_defaults(&g);
	assert_string_equal(g.type, "HSM");
	assert_true(g.opt_configuration && g.opt_monitoring && g.opt_balancing && g.enabled);
	assert_true(g.pairs[KH_GPAIR_EXCRYPT].allow);
	assert_false(g.pairs[KH_GPAIR_HTTP].allow);
	assert_false(g.pairs[KH_GPAIR_INTERNATIONAL].allow);
	for (int p = 0; p < KH_GPAIR_COUNT; p++)
		assert_int_equal(g.pairs[p].conn, KH_GCONN_SSL);

	strcpy(g.name, "Payments-1");
	strcpy(g.description, "card payments — PKCS #11");
	strcpy(g.owner, "ops team");
	g.port = 9200;
	g.opt_balancing = false;
	g.pairs[KH_GPAIR_HTTP].allow = true;
	g.pairs[KH_GPAIR_HTTP].conn = KH_GCONN_CLEAR;
	assert_int_equal(kh_gstore_group_add(f->st, &g, &id, &f->why), KH_OK);
	assert_int_equal(kh_gstore_group_get(f->st, id, &got, &f->why), KH_OK);
	assert_string_equal(got.name, "Payments-1");
	assert_string_equal(got.description, "card payments — PKCS #11");
	assert_string_equal(got.owner, "ops team");
	assert_false(got.opt_balancing);
	assert_true(got.opt_monitoring);
	assert_true(got.pairs[KH_GPAIR_HTTP].allow);
	assert_int_equal(got.pairs[KH_GPAIR_HTTP].conn, KH_GCONN_CLEAR);
	assert_int_equal(got.port, 9200);
	assert_int_equal(got.journal_head, 0);
	assert_true(got.created_ms > 0);

	/* uniqueness: name (any case) and endpoint port */
	g.port = 9201;
	strcpy(g.name, "PAYMENTS-1");
	assert_int_equal(kh_gstore_group_add(f->st, &g, NULL, &f->why), KH_ERR_EXISTS);
	WHY_HAS(f, "exists");
	strcpy(g.name, "other");
	g.port = 9200;
	assert_int_equal(kh_gstore_group_add(f->st, &g, NULL, &f->why), KH_ERR_EXISTS);
	WHY_HAS(f, "port 9200");

	/* validation */
	struct {
		const char *name, *why;
		uint16_t port;
		const char *type;
	} bad[] = {
		{"", "group name", 9300, "HSM"},
		{" lead", "group name", 9300, "HSM"},
		{"trail ", "group name", 9300, "HSM"},
		{"semi;colon", "group name", 9300, "HSM"},
		{"0123456789012345678901234567890123456789012345678901234567890123x", "group name",
		 9300, "HSM"},
		{"ok", "port", 0, "HSM"},
		{"ok", "group type", 9300, "KMS"},
		{"ok", "group type", 9300, "hsm"},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		kh_gstore_group_defaults(&g);
		snprintf(g.name, sizeof(g.name), "%s", bad[i].name);
		if (strlen(bad[i].name) > KH_GSTORE_NAME_MAX) /* no NUL inside the array */
			memset(g.name, 'a', sizeof(g.name));
		g.port = bad[i].port;
		snprintf(g.type, sizeof(g.type), "%s", bad[i].type);
		assert_int_equal(kh_gstore_group_add(f->st, &g, NULL, &f->why), KH_ERR_BAD_FIELD);
		WHY_HAS(f, bad[i].why);
	}
	kh_gstore_group_defaults(&g);
	strcpy(g.name, "ok");
	g.port = 9300;
	g.pairs[KH_GPAIR_INTERNATIONAL].conn = (enum kh_gstore_conn)7;
	assert_int_equal(kh_gstore_group_add(f->st, &g, NULL, &f->why), KH_ERR_BAD_FIELD);
	WHY_HAS(f, "International connection type");
	g.pairs[KH_GPAIR_INTERNATIONAL].conn = KH_GCONN_SSL;
	strcpy(g.description, "line\nbreak");
	assert_int_equal(kh_gstore_group_add(f->st, &g, NULL, &f->why), KH_ERR_BAD_FIELD);
	WHY_HAS(f, "description");
	strcpy(g.description, "bad \xff utf8");
	assert_int_equal(kh_gstore_group_add(f->st, &g, NULL, &f->why), KH_ERR_BAD_FIELD);
	g.description[0] = '\0';
	strcpy(g.owner, "x/y");
	assert_int_equal(kh_gstore_group_add(f->st, &g, NULL, &f->why), KH_ERR_BAD_FIELD);
	WHY_HAS(f, "owner");
	g.owner[0] = '\0';
	assert_int_equal(kh_gstore_group_add(f->st, &g, &id2, &f->why), KH_OK);

	/* list by name; TOO_LARGE when the array is short */
	assert_int_equal(kh_gstore_group_list(f->st, list, 4, &n, &f->why), KH_OK);
	assert_int_equal(n, 2);
	assert_string_equal(list[0].name, "ok");
	assert_string_equal(list[1].name, "Payments-1");
	assert_int_equal(kh_gstore_group_list(f->st, list, 1, &n, &f->why), KH_ERR_TOO_LARGE);
	assert_int_equal(n, 1);

	/* modify: rename and port; conflicts refused and nothing changes */
	assert_int_equal(kh_gstore_group_get(f->st, id, &g, &f->why), KH_OK);
	strcpy(g.name, "Payments");
	g.port = 9250;
	g.enabled = false;
	assert_int_equal(kh_gstore_group_modify(f->st, id, &g, &f->why), KH_OK);
	assert_int_equal(kh_gstore_group_get(f->st, id, &got, &f->why), KH_OK);
	assert_string_equal(got.name, "Payments");
	assert_int_equal(got.port, 9250);
	assert_false(got.enabled);
	strcpy(g.name, "OK");
	assert_int_equal(kh_gstore_group_modify(f->st, id, &g, &f->why), KH_ERR_EXISTS);
	strcpy(g.name, "Payments");
	g.port = 9300;
	assert_int_equal(kh_gstore_group_modify(f->st, id, &g, &f->why), KH_ERR_EXISTS);
	g.port = 0;
	assert_int_equal(kh_gstore_group_modify(f->st, id, &g, &f->why), KH_ERR_BAD_FIELD);
	g.port = 9251;
	assert_int_equal(kh_gstore_group_modify(f->st, 999, &g, &f->why), KH_ERR_NOT_FOUND);
	assert_int_equal(kh_gstore_group_get(f->st, id, &got, &f->why), KH_OK);
	assert_int_equal(got.port, 9250);
	assert_int_equal(kh_gstore_group_get(f->st, 999, &got, &f->why), KH_ERR_NOT_FOUND);
	assert_int_equal(kh_gstore_group_find(f->st, "nope", &got, &f->why), KH_ERR_NOT_FOUND);
	assert_int_equal(kh_gstore_group_find(f->st, "", &got, &f->why), KH_ERR_BAD_FIELD);

	/* remove: refused while devices remain */
	int64_t p = 0, b = 0;
	assert_int_equal(add_dev(f, id, "hsm1.example", 9100, KH_GROLE_PRIMARY, &p), KH_OK);
	assert_int_equal(add_dev(f, id, "hsm2.example", 9100, KH_GROLE_BACKUP, &b), KH_OK);
	assert_int_equal(kh_gstore_group_remove(f->st, id, &f->why), KH_ERR_IN_USE);
	WHY_HAS(f, "2 device");
	assert_int_equal(kh_gstore_device_remove(f->st, b, &f->why), KH_OK);
	assert_int_equal(kh_gstore_device_remove(f->st, p, &f->why), KH_OK);
	assert_int_equal(kh_gstore_group_remove(f->st, id, &f->why), KH_OK);
	assert_int_equal(kh_gstore_group_remove(f->st, id, &f->why), KH_ERR_NOT_FOUND);
	assert_int_equal(kh_gstore_group_list(f->st, list, 4, &n, &f->why), KH_OK);
	assert_int_equal(n, 1);
}

/* ---- devices --------------------------------------------------------- */

static void test_devices(void **state)
{
	struct fx *f = *state;
	struct kh_gstore_device d, got;
	int64_t g1 = add_group(f, "g1", 7001), g2 = add_group(f, "g2", 7002);
	int64_t p = 0, q = 0, b = 0, x = 0;

	kh_gstore_device_defaults(&d);
	assert_int_equal(d.port, 9100);
	assert_int_equal(d.admin_port, 9009);
	assert_int_equal(d.role, KH_GROLE_PRODUCTION);
	assert_true(d.balancing && d.enabled);
	assert_int_equal(d.ping_timeout_ms, KH_GSTORE_PING_DEFAULT_MS);

	/* the first device must be the Primary; the refusal leaves nothing */
	assert_int_equal(add_dev(f, g1, "10.1.0.1", 9100, KH_GROLE_PRODUCTION, &x), KH_ERR_STATE);
	WHY_HAS(f, "first device");
	assert_int_equal(add_dev(f, g1, "10.1.0.1", 9100, KH_GROLE_BACKUP, &x), KH_ERR_STATE);
	assert_int_equal(ndevices(f, g1), 0);
	assert_int_equal(add_dev(f, 999, "10.1.0.1", 9100, KH_GROLE_PRIMARY, &x), KH_ERR_NOT_FOUND);
	WHY_HAS(f, "no group");
	assert_int_equal(add_dev(f, g1, "10.1.0.1", 9100, KH_GROLE_PRIMARY, &p), KH_OK);
	/* at most one Primary */
	assert_int_equal(add_dev(f, g1, "10.1.0.2", 9100, KH_GROLE_PRIMARY, &x), KH_ERR_STATE);
	WHY_HAS(f, "already has a Primary");
	assert_int_equal(add_dev(f, g1, "10.1.0.2", 9100, KH_GROLE_PRODUCTION, &q), KH_OK);
	assert_int_equal(add_dev(f, g1, "hsm-3.Example.COM", 9100, KH_GROLE_BACKUP, &b), KH_OK);
	/* host:port in one group only, case-insensitive, IPv6 by its canonical form */
	assert_int_equal(add_dev(f, g2, "10.1.0.2", 9100, KH_GROLE_PRIMARY, &x), KH_ERR_EXISTS);
	WHY_HAS(f, "10.1.0.2:9100 is already device");
	assert_int_equal(add_dev(f, g1, "HSM-3.example.com", 9100, KH_GROLE_BACKUP, &x),
			 KH_ERR_EXISTS);
	assert_int_equal(add_dev(f, g2, "10.1.0.2", 9101, KH_GROLE_PRIMARY, &x), KH_OK);
	assert_int_equal(add_dev(f, g2, "fd00:0:0::7", 9100, KH_GROLE_PRODUCTION, &x), KH_OK);
	assert_int_equal(kh_gstore_device_get(f->st, x, &got, &f->why), KH_OK);
	assert_string_equal(got.host, "fd00::7");
	assert_int_equal(add_dev(f, g2, "fd00::0:7", 9100, KH_GROLE_PRODUCTION, NULL),
			 KH_ERR_EXISTS);

	/* validation */
	const char *badhosts[] = {"", "-a.example", "a-.example", "a..b", "a_b.example",
				  "[::1]", "1.2.3.4:99", "fd00::zz", "host name"};
	for (size_t i = 0; i < sizeof(badhosts) / sizeof(badhosts[0]); i++) {
		assert_int_equal(add_dev(f, g1, badhosts[i], 9100, KH_GROLE_BACKUP, NULL),
				 KH_ERR_BAD_FIELD);
		WHY_HAS(f, "host");
	}
	char longlabel[80];
	memset(longlabel, 'a', 64);
	longlabel[64] = '\0';
	assert_int_equal(add_dev(f, g1, longlabel, 9100, KH_GROLE_BACKUP, NULL), KH_ERR_BAD_FIELD);
	assert_int_equal(add_dev(f, g1, "10.9.9.9", 0, KH_GROLE_BACKUP, NULL), KH_ERR_BAD_FIELD);
	WHY_HAS(f, "port");
	kh_gstore_device_defaults(&d);
	d.group_id = g1;
	strcpy(d.host, "10.9.9.9");
	d.role = KH_GROLE_BACKUP;
	d.admin_port = 0;
	assert_int_equal(kh_gstore_device_add(f->st, &d, NULL, &f->why), KH_ERR_BAD_FIELD);
	WHY_HAS(f, "admin port");
	d.admin_port = 9100;
	assert_int_equal(kh_gstore_device_add(f->st, &d, NULL, &f->why), KH_ERR_BAD_FIELD);
	d.admin_port = 9009;
	d.ping_timeout_ms = 99;
	assert_int_equal(kh_gstore_device_add(f->st, &d, NULL, &f->why), KH_ERR_BAD_FIELD);
	WHY_HAS(f, "ping timeout");
	d.ping_timeout_ms = 60001;
	assert_int_equal(kh_gstore_device_add(f->st, &d, NULL, &f->why), KH_ERR_BAD_FIELD);
	d.ping_timeout_ms = 60000;
	d.role = (enum kh_gstore_role)3;
	assert_int_equal(kh_gstore_device_add(f->st, &d, NULL, &f->why), KH_ERR_BAD_FIELD);
	WHY_HAS(f, "role");
	assert_int_equal(ndevices(f, g1), 3);

	/* get and list */
	assert_int_equal(kh_gstore_device_get(f->st, p, &got, &f->why), KH_OK);
	assert_int_equal(got.role, KH_GROLE_PRIMARY);
	assert_int_equal(got.state, KH_GSTATE_DOWN);
	assert_int_equal(got.group_id, g1);
	assert_int_equal(kh_gstore_device_get(f->st, 999, &got, &f->why), KH_ERR_NOT_FOUND);
	struct kh_gstore_device all[8];
	size_t n = 0;
	assert_int_equal(kh_gstore_device_list(f->st, 0, all, 8, &n, &f->why), KH_OK);
	assert_int_equal(n, 5);
	assert_int_equal(kh_gstore_device_list(f->st, 0, all, 2, &n, &f->why), KH_ERR_TOO_LARGE);

	/* modify: Production <-> Backup; to/from Primary only by promote */
	assert_int_equal(kh_gstore_device_get(f->st, q, &d, &f->why), KH_OK);
	d.role = KH_GROLE_BACKUP;
	d.ping_timeout_ms = 250;
	d.admin_port = 9010;
	d.balancing = false;
	assert_int_equal(kh_gstore_device_modify(f->st, q, &d, &f->why), KH_OK);
	assert_int_equal(kh_gstore_device_get(f->st, q, &got, &f->why), KH_OK);
	assert_int_equal(got.role, KH_GROLE_BACKUP);
	assert_int_equal(got.ping_timeout_ms, 250);
	assert_int_equal(got.admin_port, 9010);
	assert_false(got.balancing);
	d.role = KH_GROLE_PRIMARY;
	assert_int_equal(kh_gstore_device_modify(f->st, q, &d, &f->why), KH_ERR_STATE);
	WHY_HAS(f, "promot");
	assert_int_equal(kh_gstore_device_get(f->st, p, &d, &f->why), KH_OK);
	d.role = KH_GROLE_PRODUCTION;
	assert_int_equal(kh_gstore_device_modify(f->st, p, &d, &f->why), KH_ERR_STATE);
	d.role = KH_GROLE_PRIMARY;
	d.group_id = g2;
	assert_int_equal(kh_gstore_device_modify(f->st, p, &d, &f->why), KH_ERR_BAD_FIELD);
	WHY_HAS(f, "between groups");
	d.group_id = g1;
	strcpy(d.host, "10.1.0.2"); /* q's address */
	assert_int_equal(kh_gstore_device_modify(f->st, p, &d, &f->why), KH_ERR_EXISTS);
	assert_int_equal(kh_gstore_device_get(f->st, p, &got, &f->why), KH_OK);
	assert_string_equal(got.host, "10.1.0.1");
	assert_int_equal(kh_gstore_device_modify(f->st, 999, &got, &f->why), KH_ERR_NOT_FOUND);

	/* enabled and state */
	assert_int_equal(kh_gstore_device_set_state(f->st, b, KH_GSTATE_UP, &f->why), KH_OK);
	assert_int_equal(kh_gstore_device_get(f->st, b, &d, &f->why), KH_OK);
	assert_int_equal(d.state, KH_GSTATE_UP);
	assert_int_equal(kh_gstore_device_set_state(f->st, b, KH_GSTATE_DISABLED, &f->why),
			 KH_ERR_STATE);
	assert_int_equal(kh_gstore_device_set_state(f->st, b, (enum kh_gstore_state)9, &f->why),
			 KH_ERR_BAD_FIELD);
	d.enabled = false;
	assert_int_equal(kh_gstore_device_modify(f->st, b, &d, &f->why), KH_OK);
	assert_int_equal(kh_gstore_device_get(f->st, b, &d, &f->why), KH_OK);
	assert_int_equal(d.state, KH_GSTATE_DISABLED);
	assert_int_equal(kh_gstore_device_set_state(f->st, b, KH_GSTATE_UP, &f->why), KH_ERR_STATE);
	WHY_HAS(f, "disabled");
	d.enabled = true;
	assert_int_equal(kh_gstore_device_modify(f->st, b, &d, &f->why), KH_OK);
	assert_int_equal(kh_gstore_device_get(f->st, b, &d, &f->why), KH_OK);
	assert_int_equal(d.state, KH_GSTATE_DOWN);
	assert_int_equal(kh_gstore_device_set_state(f->st, 999, KH_GSTATE_UP, &f->why),
			 KH_ERR_NOT_FOUND);

	/* facts */
	struct kh_gstore_facts fa = {.model = "keyhold-hsm", .version = "0.9.1",
				     .features = "FS:RSA,EC,AES", .kcv_ftk = "A1B2C3",
				     .kcv_pmk = "", .kcv_bek = "0000FFFF"};
	assert_int_equal(kh_gstore_device_set_facts(f->st, p, &fa, &f->why), KH_OK);
	assert_int_equal(kh_gstore_device_get(f->st, p, &got, &f->why), KH_OK);
	assert_string_equal(got.facts.model, "keyhold-hsm");
	assert_string_equal(got.facts.kcv_ftk, "A1B2C3");
	assert_string_equal(got.facts.kcv_bek, "0000FFFF");
	struct kh_gstore_facts bf = fa;
	strcpy(bf.kcv_pmk, "a1b2");
	assert_int_equal(kh_gstore_device_set_facts(f->st, p, &bf, &f->why), KH_ERR_BAD_FIELD);
	WHY_HAS(f, "PMK");
	bf = fa;
	strcpy(bf.kcv_ftk, "ABC");
	assert_int_equal(kh_gstore_device_set_facts(f->st, p, &bf, &f->why), KH_ERR_BAD_FIELD);
	bf = fa;
	bf.model[3] = '\t';
	assert_int_equal(kh_gstore_device_set_facts(f->st, p, &bf, &f->why), KH_ERR_BAD_FIELD);
	WHY_HAS(f, "model");
	assert_int_equal(kh_gstore_device_set_facts(f->st, 999, &fa, &f->why), KH_ERR_NOT_FOUND);

	/* promote: an atomic swap */
	assert_int_equal(kh_gstore_device_promote(f->st, p, KH_GROLE_BACKUP, &f->why), KH_ERR_STATE);
	WHY_HAS(f, "already the Primary");
	assert_int_equal(kh_gstore_device_promote(f->st, q, KH_GROLE_PRIMARY, &f->why),
			 KH_ERR_BAD_FIELD);
	assert_int_equal(kh_gstore_device_promote(f->st, 999, KH_GROLE_BACKUP, &f->why),
			 KH_ERR_NOT_FOUND);
	assert_int_equal(kh_gstore_device_promote(f->st, q, KH_GROLE_BACKUP, &f->why), KH_OK);
	assert_int_equal(kh_gstore_device_get(f->st, q, &got, &f->why), KH_OK);
	assert_int_equal(got.role, KH_GROLE_PRIMARY);
	assert_int_equal(kh_gstore_device_get(f->st, p, &got, &f->why), KH_OK);
	assert_int_equal(got.role, KH_GROLE_BACKUP);

	/* remove: the Primary last */
	assert_int_equal(kh_gstore_device_remove(f->st, q, &f->why), KH_ERR_STATE);
	WHY_HAS(f, "promote another");
	assert_int_equal(ndevices(f, g1), 3);
	assert_int_equal(kh_gstore_device_remove(f->st, p, &f->why), KH_OK);
	assert_int_equal(kh_gstore_device_remove(f->st, b, &f->why), KH_OK);
	assert_int_equal(kh_gstore_device_remove(f->st, q, &f->why), KH_OK);
	assert_int_equal(kh_gstore_device_remove(f->st, q, &f->why), KH_ERR_NOT_FOUND);
	/* an empty group takes a Primary first again; the address is free again */
	assert_int_equal(add_dev(f, g1, "10.1.0.2", 9100, KH_GROLE_BACKUP, NULL), KH_ERR_STATE);
	assert_int_equal(add_dev(f, g1, "10.1.0.2", 9100, KH_GROLE_PRIMARY, NULL), KH_OK);
}

/* ---- journal --------------------------------------------------------- */

struct seen {
	int64_t seq[64];
	char payload[64][16];
	enum kh_gstore_jstate state[64];
	int tries[64];
	char err[64][32];
	size_t n;
};

static int collect(const struct kh_gstore_jentry *e, void *arg)
{
	struct seen *s = arg;
	assert_true(s->n < 64);
	s->seq[s->n] = e->seq;
	snprintf(s->payload[s->n], 16, "%.*s", (int)e->payload_len, (const char *)e->payload);
	s->state[s->n] = e->state;
	s->tries[s->n] = e->tries;
	snprintf(s->err[s->n], 32, "%.31s", e->last_error);
	s->n++;
	return 0;
}

static struct seen pending(struct fx *f, int64_t dev)
{
	struct seen s;
	memset(&s, 0, sizeof(s));
	assert_int_equal(kh_gstore_journal_pending(f->st, dev, 0, collect, &s, &f->why), KH_OK);
	return s;
}

static int64_t version(struct fx *f, int64_t dev)
{
	struct kh_gstore_device d;
	assert_int_equal(kh_gstore_device_get(f->st, dev, &d, &f->why), KH_OK);
	return d.repl_version;
}

static int stop_at_two(const struct kh_gstore_jentry *e, void *arg)
{
	(void)e;
	return ++*(int *)arg == 2 ? 77 : 0;
}

static void test_journal(void **state)
{
	struct fx *f = *state;
	int64_t g = add_group(f, "j", 7100), other = add_group(f, "other", 7101);
	int64_t p = 0, a = 0, down = 0, seq[6], s = 0, n = 0;
	char pl[8];

	assert_int_equal(add_dev(f, g, "10.2.0.1", 9100, KH_GROLE_PRIMARY, &p), KH_OK);
	assert_int_equal(add_dev(f, g, "10.2.0.2", 9100, KH_GROLE_PRODUCTION, &a), KH_OK);
	assert_int_equal(add_dev(f, g, "10.2.0.3", 9100, KH_GROLE_BACKUP, &down), KH_OK);

	/* refusals leave nothing */
	assert_int_equal(kh_gstore_journal_append(f->st, g, KH_GJ_KEY_ROW, "", 0, 0, &s, &f->why),
			 KH_ERR_BAD_FIELD);
	assert_int_equal(kh_gstore_journal_append(f->st, g, (enum kh_gstore_jkind)5, "x", 1, 0, &s,
						  &f->why),
			 KH_ERR_BAD_FIELD);
	assert_int_equal(kh_gstore_journal_append(f->st, 999, KH_GJ_KEY_ROW, "x", 1, 0, &s, &f->why),
			 KH_ERR_NOT_FOUND);
	assert_int_equal(kh_gstore_journal_append(f->st, g, KH_GJ_KEY_ROW, "x",
						  KH_GSTORE_PAYLOAD_MAX + 1, 0, &s, &f->why),
			 KH_ERR_TOO_LARGE);
	int64_t op = 0;
	assert_int_equal(add_dev(f, other, "10.2.1.1", 9100, KH_GROLE_PRIMARY, &op), KH_OK);
	assert_int_equal(kh_gstore_journal_append(f->st, g, KH_GJ_KEY_ROW, "x", 1, op, &s, &f->why),
			 KH_ERR_NOT_FOUND);
	WHY_HAS(f, "not in group");
	assert_int_equal(pending(f, a).n, 0);

	/* six entries run on the Primary (origin): applied there at once */
	for (int i = 0; i < 6; i++) {
		snprintf(pl, sizeof(pl), "e%d", i);
		enum kh_gstore_jkind k = i == 2 ? KH_GJ_KEY_DELETE : i == 4 ? KH_GJ_CONFIG
									  : KH_GJ_KEY_ROW;
		assert_int_equal(kh_gstore_journal_append(f->st, g, k, pl, strlen(pl), p, &seq[i],
							  &f->why),
				 KH_OK);
		if (i)
			assert_true(seq[i] > seq[i - 1]);
	}
	assert_int_equal(pending(f, p).n, 0);
	assert_int_equal(version(f, p), seq[5]);
	struct kh_gstore_group gg;
	assert_int_equal(kh_gstore_group_get(f->st, g, &gg, &f->why), KH_OK);
	assert_int_equal(gg.journal_head, seq[5]);

	/* the member that is up applies them as they come */
	struct seen sa = pending(f, a);
	assert_int_equal(sa.n, 6);
	for (int i = 0; i < 6; i++) {
		assert_int_equal(sa.seq[i], seq[i]);
		assert_int_equal(sa.state[i], KH_GJS_PENDING);
		assert_int_equal(kh_gstore_journal_applied(f->st, seq[i], a, &f->why), KH_OK);
		assert_int_equal(version(f, a), seq[i]);
	}
	assert_int_equal(kh_gstore_journal_applied(f->st, seq[0], a, &f->why), KH_OK); /* again */
	assert_int_equal(version(f, a), seq[5]);
	assert_int_equal(kh_gstore_journal_failed(f->st, seq[1], a, "late", &f->why), KH_ERR_STATE);

	/* the member that was down: all six pending, kinds and payloads intact */
	struct seen sd = pending(f, down);
	assert_int_equal(sd.n, 6);
	assert_string_equal(sd.payload[2], "e2");
	assert_int_equal(kh_gstore_journal_count_pending(f->st, down, &n, &f->why), KH_OK);
	assert_int_equal(n, 6);
	assert_int_equal(version(f, down), 0);
	int stopped = 0;
	assert_int_equal(kh_gstore_journal_pending(f->st, down, 0, stop_at_two, &stopped, &f->why),
			 77);
	struct seen lim;
	memset(&lim, 0, sizeof(lim));
	assert_int_equal(kh_gstore_journal_pending(f->st, down, 3, collect, &lim, &f->why), KH_OK);
	assert_int_equal(lim.n, 3);

	/* nothing prunable while it lags */
	int64_t removed = -1;
	assert_int_equal(kh_gstore_journal_prune(f->st, &removed, &f->why), KH_OK);
	assert_int_equal(removed, 0);

	/* it returns: the first try fails, then it catches up in order; the
	 * version moves only over contiguous applied entries */
	assert_int_equal(kh_gstore_journal_failed(f->st, seq[0], down, "KTIM: timeout", &f->why),
			 KH_OK);
	assert_int_equal(kh_gstore_journal_applied(f->st, seq[1], down, &f->why), KH_OK);
	assert_int_equal(version(f, down), 0);
	sd = pending(f, down);
	assert_int_equal(sd.n, 5);
	assert_int_equal(sd.seq[0], seq[0]);
	assert_int_equal(sd.state[0], KH_GJS_FAILED);
	assert_int_equal(sd.tries[0], 1);
	assert_string_equal(sd.err[0], "KTIM: timeout");
	assert_int_equal(sd.seq[1], seq[2]);
	assert_int_equal(kh_gstore_journal_applied(f->st, seq[0], down, &f->why), KH_OK);
	assert_int_equal(version(f, down), seq[1]);
	assert_int_equal(kh_gstore_journal_prune(f->st, &removed, &f->why), KH_OK);
	assert_int_equal(removed, 2);
	for (int i = 2; i < 6; i++) {
		sd = pending(f, down);
		assert_int_equal(sd.seq[0], seq[i]); /* always the oldest first */
		assert_int_equal(kh_gstore_journal_applied(f->st, seq[i], down, &f->why), KH_OK);
	}
	assert_int_equal(version(f, down), seq[5]);
	assert_int_equal(kh_gstore_journal_prune(f->st, &removed, &f->why), KH_OK);
	assert_int_equal(removed, 4);
	assert_int_equal(kh_gstore_journal_applied(f->st, seq[5], down, &f->why), KH_ERR_NOT_FOUND);

	/* bad inputs */
	assert_int_equal(kh_gstore_journal_failed(f->st, seq[5], down, "x\ny", &f->why),
			 KH_ERR_BAD_FIELD);
	assert_int_equal(kh_gstore_journal_failed(f->st, 12345, down, "x", &f->why),
			 KH_ERR_NOT_FOUND);

	/* seqs are never reused after pruning; a new member starts at the head */
	int64_t s7 = 0, late = 0;
	assert_int_equal(kh_gstore_journal_append(f->st, g, KH_GJ_KEY_ROW, "e6", 2, 0, &s7, &f->why),
			 KH_OK);
	assert_true(s7 > seq[5]);
	assert_int_equal(add_dev(f, g, "10.2.0.4", 9100, KH_GROLE_BACKUP, &late), KH_OK);
	assert_int_equal(version(f, late), s7);
	assert_int_equal(pending(f, late).n, 0);
	/* the Primary has s7 pending (no origin given) */
	assert_int_equal(version(f, p), seq[5]);
	assert_int_equal(kh_gstore_journal_applied(f->st, s7, p, &f->why), KH_OK);
	assert_int_equal(version(f, p), s7);

	/* synchronize again: everything up to a seq counts as applied */
	int64_t s8 = 0, s9 = 0;
	assert_int_equal(kh_gstore_journal_append(f->st, g, KH_GJ_CONFIG, "c1", 2, p, &s8, &f->why),
			 KH_OK);
	assert_int_equal(kh_gstore_journal_append(f->st, g, KH_GJ_CONFIG, "c2", 2, p, &s9, &f->why),
			 KH_OK);
	assert_int_equal(pending(f, down).n, 3);
	assert_int_equal(kh_gstore_journal_synced(f->st, down, s8, &f->why), KH_OK);
	sd = pending(f, down);
	assert_int_equal(sd.n, 1);
	assert_int_equal(sd.seq[0], s9);
	assert_int_equal(version(f, down), s8);
	assert_int_equal(kh_gstore_journal_synced(f->st, 999, s8, &f->why), KH_ERR_NOT_FOUND);

	/* removing a member drops its states: what only it lacked is prunable */
	assert_int_equal(kh_gstore_journal_applied(f->st, s9, a, &f->why), KH_OK);
	assert_int_equal(kh_gstore_journal_applied(f->st, s9, late, &f->why), KH_OK);
	assert_int_equal(kh_gstore_journal_applied(f->st, s7, a, &f->why), KH_OK);
	assert_int_equal(kh_gstore_journal_applied(f->st, s8, a, &f->why), KH_OK);
	assert_int_equal(kh_gstore_journal_applied(f->st, s8, late, &f->why), KH_OK);
	assert_int_equal(kh_gstore_device_remove(f->st, down, &f->why), KH_OK);
	assert_int_equal(kh_gstore_journal_prune(f->st, &removed, &f->why), KH_OK);
	assert_int_equal(removed, 3);
}

/* ---- events and metrics ---------------------------------------------- */

static void test_events(void **state)
{
	struct fx *f = *state;
	struct kh_gstore_event ev[8];
	size_t n = 0;
	char txt[600];

	for (int i = 0; i < 5; i++) {
		snprintf(txt, sizeof(txt), "event %d", i);
		assert_int_equal(kh_gstore_event_add(f->st, 1000 + i, i % 2 ? 7 : 8, i, KH_GEV_STATE,
						     txt, &f->why),
				 KH_OK);
	}
	assert_int_equal(kh_gstore_event_add(f->st, 1000, 7, 0, KH_GEV_PROMOTION, "same time",
					     &f->why),
			 KH_OK);
	assert_int_equal(kh_gstore_event_list(f->st, 0, 0, 0, ev, 8, &n, &f->why), KH_OK);
	assert_int_equal(n, 6);
	assert_string_equal(ev[0].text, "event 4");
	assert_int_equal(ev[0].t_ms, 1004);
	assert_string_equal(ev[4].text, "same time"); /* same time: newest row first */
	assert_int_equal(ev[4].kind, KH_GEV_PROMOTION);
	/* paging */
	assert_int_equal(kh_gstore_event_list(f->st, 0, 0, 2, ev, 2, &n, &f->why), KH_OK);
	assert_int_equal(n, 2);
	assert_string_equal(ev[0].text, "event 2");
	assert_string_equal(ev[1].text, "event 1");
	assert_int_equal(kh_gstore_event_list(f->st, 0, 0, 6, ev, 2, &n, &f->why), KH_OK);
	assert_int_equal(n, 0);
	/* filters */
	assert_int_equal(kh_gstore_event_list(f->st, 7, 0, 0, ev, 8, &n, &f->why), KH_OK);
	assert_int_equal(n, 3);
	assert_int_equal(kh_gstore_event_list(f->st, 7, 3, 0, ev, 8, &n, &f->why), KH_OK);
	assert_int_equal(n, 1);
	assert_string_equal(ev[0].text, "event 3");
	/* validation */
	assert_int_equal(kh_gstore_event_add(f->st, 1, 0, 0, KH_GEV_STATE, "", &f->why),
			 KH_ERR_BAD_FIELD);
	assert_int_equal(kh_gstore_event_add(f->st, 1, 0, 0, KH_GEV_STATE, "a\x01", &f->why),
			 KH_ERR_BAD_FIELD);
	memset(txt, 'a', 513);
	txt[513] = '\0';
	assert_int_equal(kh_gstore_event_add(f->st, 1, 0, 0, KH_GEV_STATE, txt, &f->why),
			 KH_ERR_BAD_FIELD);
	txt[512] = '\0';
	assert_int_equal(kh_gstore_event_add(f->st, 1, 0, 0, KH_GEV_STATE, txt, &f->why), KH_OK);
	assert_int_equal(kh_gstore_event_add(f->st, 1, 0, 0, (enum kh_gstore_ekind)99, "x", &f->why),
			 KH_ERR_BAD_FIELD);
	assert_int_equal(kh_gstore_event_add(f->st, -1, 0, 0, KH_GEV_STATE, "x", &f->why),
			 KH_ERR_BAD_FIELD);
	/* prune */
	assert_int_equal(kh_gstore_event_prune(f->st, 1003, &f->why), KH_OK);
	assert_int_equal(kh_gstore_event_list(f->st, 0, 0, 0, ev, 8, &n, &f->why), KH_OK);
	assert_int_equal(n, 2);
}

static void test_metrics(void **state)
{
	struct fx *f = *state;
	int64_t g = add_group(f, "m", 7200), d = 0;
	const int64_t t0 = 1700000000000LL - 1700000000000LL % 60000; /* a minute boundary */
	struct kh_gstore_metric out[16], sum;
	size_t n = 0;

	assert_int_equal(add_dev(f, g, "10.3.0.1", 9100, KH_GROLE_PRIMARY, &d), KH_OK);
	struct kh_gstore_metric m[] = {
		{d, t0 + 1000, 10, 1, 5000, 900},   /* bucket t0 */
		{d, t0 + 9999, 5, 0, 1000, 1200},   /* bucket t0 */
		{d, t0 + 10000, 7, 2, 700, 100},    /* bucket t0+10s */
		{d, t0 + 61000, 3, 0, 300, 150},    /* next minute */
	};
	assert_int_equal(kh_gstore_metric_add(f->st, m, 4, &f->why), KH_OK);
	assert_int_equal(kh_gstore_metric_list(f->st, d, KH_GRES_10S, t0, t0 + 120000, out, 16, &n,
					       &f->why),
			 KH_OK);
	assert_int_equal(n, 3);
	assert_int_equal(out[0].t_ms, t0);
	assert_int_equal(out[0].requests, 15);
	assert_int_equal(out[0].errors, 1);
	assert_int_equal(out[0].lat_sum_us, 6000);
	assert_int_equal(out[0].lat_max_us, 1200);
	assert_int_equal(out[1].t_ms, t0 + 10000);
	assert_int_equal(out[2].t_ms, t0 + 60000);
	assert_int_equal(kh_gstore_metric_list(f->st, d, KH_GRES_1M, t0, t0 + 120000, out, 16, &n,
					       &f->why),
			 KH_OK);
	assert_int_equal(n, 2);
	assert_int_equal(out[0].requests, 22);
	assert_int_equal(out[0].errors, 3);
	assert_int_equal(out[0].lat_max_us, 1200);
	assert_int_equal(out[1].requests, 3);
	/* aggregate over a range */
	assert_int_equal(kh_gstore_metric_sum(f->st, d, KH_GRES_10S, t0, t0 + 20000, &sum, &f->why),
			 KH_OK);
	assert_int_equal(sum.requests, 22);
	assert_int_equal(sum.lat_sum_us, 6700);
	assert_int_equal(sum.lat_max_us, 1200);
	assert_int_equal(kh_gstore_metric_sum(f->st, d, KH_GRES_1M, 0, 1, &sum, &f->why), KH_OK);
	assert_int_equal(sum.requests, 0);
	/* refusals leave nothing: the batch is one transaction */
	struct kh_gstore_metric bad[] = {{d, t0, 1, 0, 0, 0}, {d, t0, -1, 0, 0, 0}};
	assert_int_equal(kh_gstore_metric_add(f->st, bad, 2, &f->why), KH_ERR_BAD_FIELD);
	WHY_HAS(f, "metric 1");
	bad[1].requests = 1;
	bad[1].device_id = 999;
	assert_int_equal(kh_gstore_metric_add(f->st, bad, 2, &f->why), KH_ERR_NOT_FOUND);
	assert_int_equal(kh_gstore_metric_sum(f->st, d, KH_GRES_10S, t0, t0 + 10000, &sum, &f->why),
			 KH_OK);
	assert_int_equal(sum.requests, 15);
	assert_int_equal(kh_gstore_metric_list(f->st, d, (enum kh_gstore_res)4, 0, 1, out, 16, &n,
					       &f->why),
			 KH_ERR_BAD_FIELD);
	/* retention: an hour of 10 s buckets, a day of minutes */
	assert_int_equal(kh_gstore_metric_prune(f->st, t0 + KH_GSTORE_KEEP_10S_MS + 30000, &f->why),
			 KH_OK);
	assert_int_equal(kh_gstore_metric_list(f->st, d, KH_GRES_10S, 0, INT64_MAX, out, 16, &n,
					       &f->why),
			 KH_OK);
	assert_int_equal(n, 1); /* t0+60s is within the hour */
	assert_int_equal(kh_gstore_metric_list(f->st, d, KH_GRES_1M, 0, INT64_MAX, out, 16, &n,
					       &f->why),
			 KH_OK);
	assert_int_equal(n, 2);
	assert_int_equal(kh_gstore_metric_prune(f->st, t0 + KH_GSTORE_KEEP_1M_MS + 1, &f->why),
			 KH_OK);
	assert_int_equal(kh_gstore_metric_list(f->st, d, KH_GRES_1M, 0, INT64_MAX, out, 16, &n,
					       &f->why),
			 KH_OK);
	assert_int_equal(n, 1);
	/* a removed device's metrics go with it */
	assert_int_equal(kh_gstore_device_remove(f->st, d, &f->why), KH_OK);
	assert_int_equal(kh_gstore_metric_list(f->st, d, KH_GRES_1M, 0, INT64_MAX, out, 16, &n,
					       &f->why),
			 KH_OK);
	assert_int_equal(n, 0);
}

/* ---- crashes ---------------------------------------------------------- */

/* Payload i: "entry-<i>" padded with i's low byte to 200 + i % 300 bytes, so
 * a torn write shows as a wrong length or byte. */
static size_t crash_payload(int i, unsigned char *buf)
{
	size_t n = 200 + (size_t)(i % 300);
	memset(buf, i & 0xff, n);
	int k = snprintf((char *)buf, n, "entry-%d;", i);
	buf[k] = (unsigned char)(i & 0xff);
	return n;
}

struct crash_check {
	int64_t last;
	size_t n;
};

static int check_whole(const struct kh_gstore_jentry *e, void *arg)
{
	struct crash_check *c = arg;
	unsigned char want[600];
	int i = 0;
	assert_true(e->seq > c->last);
	c->last = e->seq;
	assert_int_equal(sscanf((const char *)e->payload, "entry-%d", &i), 1);
	assert_int_equal(e->payload_len, crash_payload(i, want));
	assert_memory_equal(e->payload, want, e->payload_len);
	assert_int_equal(i, (int)c->n); /* no entry lost before a later one */
	c->n++;
	return 0;
}

static void test_crash(void **state)
{
	struct fx *f = *state;
	int64_t g = add_group(f, "crash", 7300), p = 0, a = 0, b = 0;
	assert_int_equal(add_dev(f, g, "10.4.0.1", 9100, KH_GROLE_PRIMARY, &p), KH_OK);
	assert_int_equal(add_dev(f, g, "10.4.0.2", 9100, KH_GROLE_PRODUCTION, &a), KH_OK);
	assert_int_equal(add_dev(f, g, "10.4.0.3", 9100, KH_GROLE_BACKUP, &b), KH_OK);
	kh_gstore_close(f->st); /* no connection crosses a fork */
	f->st = NULL;

	/* 1: kill -9 at a random point of a stream of appends */
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct kh_gstore *st = NULL;
		unsigned char buf[600];
		if (kh_gstore_open(f->dir, &st, NULL) != KH_OK)
			_exit(2);
		for (int i = 0;; i++) {
			size_t n = crash_payload(i, buf);
			if (kh_gstore_journal_append(st, g, KH_GJ_KEY_ROW, buf, n, 0, NULL, NULL) !=
			    KH_OK)
				_exit(3);
		}
	}
	struct timespec ts = {0, 300 * 1000 * 1000};
	nanosleep(&ts, NULL);
	int status = 0;
	kill(pid, SIGKILL);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFSIGNALED(status));

	reopen(f);
	struct crash_check ca = {0, 0}, cb = {0, 0}, cp = {0, 0};
	assert_int_equal(kh_gstore_journal_pending(f->st, a, 0, check_whole, &ca, &f->why), KH_OK);
	assert_int_equal(kh_gstore_journal_pending(f->st, b, 0, check_whole, &cb, &f->why), KH_OK);
	assert_int_equal(kh_gstore_journal_pending(f->st, p, 0, check_whole, &cp, &f->why), KH_OK);
	assert_true(ca.n > 0);
	/* every whole entry has its state on every member, and the head agrees */
	assert_int_equal(ca.n, cb.n);
	assert_int_equal(ca.n, cp.n);
	struct kh_gstore_group gg;
	assert_int_equal(kh_gstore_group_get(f->st, g, &gg, &f->why), KH_OK);
	assert_int_equal(gg.journal_head, ca.last);
	kh_gstore_close(f->st);
	f->st = NULL;

	/* 2: _exit() inside a transaction after the entry row, before its
	 * member states and the commit: nothing of it survives */
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		char path[300];
		sqlite3 *h = NULL;
		sqlite3_stmt *s = NULL;
		snprintf(path, sizeof(path), "%s/guardian.db", f->dir);
		if (sqlite3_open(path, &h) != SQLITE_OK ||
		    sqlite3_exec(h, "PRAGMA synchronous=FULL; BEGIN IMMEDIATE", NULL, NULL, NULL) !=
			    SQLITE_OK ||
		    sqlite3_prepare_v2(h,
				       "INSERT INTO journal (group_id, kind, payload, created)"
				       " VALUES (?, 'key_row', x'00', 0)",
				       -1, &s, NULL) != SQLITE_OK)
			_exit(2);
		sqlite3_bind_int64(s, 1, g);
		if (sqlite3_step(s) != SQLITE_DONE)
			_exit(3);
		_exit(0);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	reopen(f);
	struct crash_check c2 = {0, 0};
	assert_int_equal(kh_gstore_journal_pending(f->st, a, 0, check_whole, &c2, &f->why), KH_OK);
	assert_int_equal(c2.n, ca.n);
	/* and the store still takes work after both crashes */
	int64_t s = 0;
	assert_int_equal(kh_gstore_journal_append(f->st, g, KH_GJ_CONFIG, "after", 5, p, &s,
						  &f->why),
			 KH_OK);
	assert_true(s > ca.last);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_enums),
		cmocka_unit_test_setup_teardown(test_open, setup, teardown),
		cmocka_unit_test_setup_teardown(test_groups, setup, teardown),
		cmocka_unit_test_setup_teardown(test_devices, setup, teardown),
		cmocka_unit_test_setup_teardown(test_journal, setup, teardown),
		cmocka_unit_test_setup_teardown(test_events, setup, teardown),
		cmocka_unit_test_setup_teardown(test_metrics, setup, teardown),
		cmocka_unit_test_setup_teardown(test_crash, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

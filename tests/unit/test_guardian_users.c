/* The guardian's own users: the store's users and roles tables (schema 2,
 * built-in roles, every refusal), scrypt verifiers, login with lockout,
 * the first Administrator, and the REST API's sessions (idle and absolute
 * expiry, dual login, the CSRF rule). */
#include "kh_testutil.h"
#include "guardian/guardian.h"
#include "guardian/http_session.h"
#include "guardian/store.h"
#include "guardian/users.h"
#include "common/kh_err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct fx {
	char dir[256];
	struct kh_gstore *st;
	struct kh_gstore_why why;
	char w[KG_WHY_MAX];
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	char tmpl[] = "/tmp/kh-gusers-XXXXXX";
	assert_non_null(mkdtemp(tmpl));
	snprintf(f->dir, sizeof(f->dir), "%s/data", tmpl);
	assert_int_equal(kh_gstore_open(f->dir, &f->st, &f->why), KH_OK);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	const char *files[] = {"guardian.db", "guardian.db-wal", "guardian.db-shm"};
	char p[300];
	kh_gstore_close(f->st);
	for (size_t i = 0; i < 3; i++) {
		snprintf(p, sizeof(p), "%s/%s", f->dir, files[i]);
		unlink(p);
	}
	rmdir(f->dir);
	*strrchr(f->dir, '/') = '\0';
	rmdir(f->dir);
	free(f);
	return 0;
}

#define HAS(text, s)                                                                 \
	do {                                                                         \
		if (strstr((text), (s)) == NULL)                                     \
			fail_msg("reason \"%s\" lacks \"%s\"", (text), (s));         \
	} while (0)

#define PW(s) (const uint8_t *)(s), strlen(s)

/* A cheap verifier for store tests (the store never hashes). */
static void fake_hash(struct kh_gstore_pwhash *h, uint8_t fill)
{
	memset(h, 0, sizeof(*h));
	memset(h->hash, fill, sizeof(h->hash));
	memset(h->salt, fill, sizeof(h->salt));
	snprintf(h->params, sizeof(h->params), "scrypt:1024:8:1");
}

static int add(struct fx *f, const char *name, const char *role)
{
	struct kh_gstore_user u;
	struct kh_gstore_pwhash h;
	memset(&u, 0, sizeof(u));
	snprintf(u.name, sizeof(u.name), "%s", name);
	snprintf(u.role, sizeof(u.role), "%s", role);
	fake_hash(&h, 7);
	return kh_gstore_user_add(f->st, &u, &h, false, NULL, &f->why);
}

static void test_roles(void **state)
{
	struct fx *f = *state;
	struct kh_gstore_role_rec r[8];
	size_t n = 0;

	assert_int_equal(kh_gstore_schema_version(f->st), 2);
	assert_int_equal(kh_gstore_role_list(f->st, r, 8, &n, &f->why), KH_OK);
	assert_int_equal(n, 3);
	assert_int_equal(kh_gstore_role_get(f->st, "administrator", &r[0], &f->why), KH_OK);
	assert_string_equal(r[0].name, "Administrator");
	assert_int_equal(r[0].perms, KH_GPERM_ALL);
	assert_int_equal(r[0].logins_required, 1);
	assert_true(r[0].builtin);
	assert_int_equal(kh_gstore_role_get(f->st, "Operator", &r[0], &f->why), KH_OK);
	assert_int_equal(r[0].perms,
			 KH_GPERM_VIEW | KH_GPERM_DEVICES_OPERATE | KH_GPERM_REMOTE);
	assert_int_equal(kh_gstore_role_get(f->st, "Auditor", &r[0], &f->why), KH_OK);
	assert_int_equal(r[0].perms, KH_GPERM_VIEW);
	assert_int_equal(kh_gstore_role_get(f->st, "Nobody", &r[0], &f->why), KH_ERR_NOT_FOUND);
	assert_string_equal(kh_gstore_perm_name(0), "view");
	assert_string_equal(kh_gstore_perm_name(5), "users.manage");
	assert_string_equal(kh_gstore_perm_name(6), "?");

	/* two logins need two users in the role */
	assert_int_equal(kh_gstore_role_set_logins(f->st, "Administrator", 3, &f->why),
			 KH_ERR_BAD_FIELD);
	assert_int_equal(kh_gstore_role_set_logins(f->st, "Administrator", 2, &f->why),
			 KH_ERR_STATE);
	HAS(f->why.text, "add a second");
	assert_int_equal(add(f, "admin", "Administrator"), KH_OK);
	assert_int_equal(add(f, "admin2", "Administrator"), KH_OK);
	assert_int_equal(kh_gstore_role_set_logins(f->st, "Administrator", 2, &f->why), KH_OK);
	assert_int_equal(kh_gstore_role_get(f->st, "Administrator", &r[0], &f->why), KH_OK);
	assert_int_equal(r[0].logins_required, 2);
	assert_int_equal(kh_gstore_role_set_logins(f->st, "Ghost", 1, &f->why), KH_ERR_NOT_FOUND);
	/* and a two-login role keeps two users */
	assert_int_equal(kh_gstore_user_remove(f->st, "admin2", &f->why), KH_ERR_STATE);
	HAS(f->why.text, "needs 2 logins");
	assert_int_equal(kh_gstore_role_set_logins(f->st, "Administrator", 1, &f->why), KH_OK);
	assert_int_equal(kh_gstore_user_remove(f->st, "admin2", &f->why), KH_OK);
}

static void test_users_store(void **state)
{
	struct fx *f = *state;
	struct kh_gstore_user u, list[4];
	struct kh_gstore_pwhash h, got;
	int64_t n = -1;
	size_t k = 0;
	bool locked = true;

	assert_int_equal(kh_gstore_user_count(f->st, &n, &f->why), KH_OK);
	assert_int_equal(n, 0);
	/* names, roles, verifiers */
	assert_int_equal(add(f, "", "Administrator"), KH_ERR_BAD_FIELD);
	assert_int_equal(add(f, "-dash", "Administrator"), KH_ERR_BAD_FIELD);
	assert_int_equal(add(f, "a b", "Administrator"), KH_ERR_BAD_FIELD);
	HAS(f->why.text, "user name");
	assert_int_equal(add(f, "ok", "Ghost"), KH_ERR_BAD_FIELD);
	HAS(f->why.text, "no role");
	memset(&u, 0, sizeof(u));
	snprintf(u.name, sizeof(u.name), "x");
	snprintf(u.role, sizeof(u.role), "Auditor");
	fake_hash(&h, 1);
	snprintf(h.params, sizeof(h.params), "argon2:1");
	assert_int_equal(kh_gstore_user_add(f->st, &u, &h, false, NULL, &f->why), KH_ERR_BAD_FIELD);

	assert_int_equal(add(f, "Alice", "administrator"), KH_OK);
	assert_int_equal(add(f, "alice", "Auditor"), KH_ERR_EXISTS);
	assert_int_equal(add(f, "bob", "Operator"), KH_OK);
	assert_int_equal(kh_gstore_user_get(f->st, "ALICE", &u, &f->why), KH_OK);
	assert_string_equal(u.name, "Alice");
	assert_string_equal(u.role, "Administrator"); /* the role's own spelling */
	assert_int_equal(kh_gstore_user_get(f->st, "carol", &u, &f->why), KH_ERR_NOT_FOUND);
	assert_int_equal(kh_gstore_user_list(f->st, list, 4, &k, &f->why), KH_OK);
	assert_int_equal(k, 2);
	assert_int_equal(kh_gstore_user_list(f->st, list, 1, &k, &f->why), KH_ERR_TOO_LARGE);
	assert_int_equal(kh_gstore_user_verifier(f->st, "alice", &got, &f->why), KH_OK);
	fake_hash(&h, 7);
	assert_memory_equal(&got, &h, sizeof(h));

	/* only_first: the bootstrap's rule, decided in the transaction */
	snprintf(u.name, sizeof(u.name), "third");
	assert_int_equal(kh_gstore_user_add(f->st, &u, &h, true, NULL, &f->why), KH_ERR_EXISTS);

	/* lockout bookkeeping: threshold 3, 1000 ms */
	for (int i = 0; i < 2; i++) {
		assert_int_equal(kh_gstore_user_login_failed(f->st, "bob", 5000, 3, 1000, &locked,
							     &f->why),
				 KH_OK);
		assert_false(locked);
	}
	assert_int_equal(kh_gstore_user_get(f->st, "bob", &u, &f->why), KH_OK);
	assert_int_equal(u.failures, 2);
	assert_int_equal(kh_gstore_user_login_failed(f->st, "bob", 5000, 3, 1000, &locked, &f->why),
			 KH_OK);
	assert_true(locked);
	assert_int_equal(kh_gstore_user_get(f->st, "bob", &u, &f->why), KH_OK);
	assert_int_equal(u.locked_until_ms, 6000);
	assert_int_equal(u.failures, 0);
	/* while locked nothing counts and the lock does not move */
	assert_int_equal(kh_gstore_user_login_failed(f->st, "bob", 5500, 3, 1000, &locked, &f->why),
			 KH_ERR_LOCKED);
	assert_int_equal(kh_gstore_user_login_ok(f->st, "bob", 5500, &f->why), KH_ERR_LOCKED);
	assert_int_equal(kh_gstore_user_get(f->st, "bob", &u, &f->why), KH_OK);
	assert_int_equal(u.locked_until_ms, 6000);
	assert_int_equal(kh_gstore_user_login_ok(f->st, "bob", 6000, &f->why), KH_OK);
	assert_int_equal(kh_gstore_user_login_failed(f->st, "nobody", 1, 3, 1000, NULL, &f->why),
			 KH_ERR_NOT_FOUND);
	assert_int_equal(kh_gstore_user_login_ok(f->st, "nobody", 1, &f->why), KH_ERR_NOT_FOUND);

	/* a new password clears failures and lock */
	assert_int_equal(kh_gstore_user_login_failed(f->st, "bob", 7000, 1, 1000, &locked, &f->why),
			 KH_OK);
	assert_true(locked);
	fake_hash(&h, 9);
	assert_int_equal(kh_gstore_user_set_password(f->st, "bob", &h, true, &f->why), KH_OK);
	assert_int_equal(kh_gstore_user_get(f->st, "bob", &u, &f->why), KH_OK);
	assert_int_equal(u.locked_until_ms, 0);
	assert_true(u.must_change);
	assert_int_equal(kh_gstore_user_set_password(f->st, "ghost", &h, false, &f->why),
			 KH_ERR_NOT_FOUND);

	/* the last Administrator stays */
	assert_int_equal(kh_gstore_user_remove(f->st, "alice", &f->why), KH_ERR_STATE);
	HAS(f->why.text, "last Administrator");
	assert_int_equal(kh_gstore_user_remove(f->st, "bob", &f->why), KH_OK);
	assert_int_equal(kh_gstore_user_remove(f->st, "bob", &f->why), KH_ERR_NOT_FOUND);
}

static void test_passwords(void **state)
{
	struct fx *f = *state;
	struct kh_gstore_pwhash h, h2;
	struct kh_gstore_user u;
	struct kh_gstore_role_rec role;
	bool locked;
	int64_t t = 1000000;

	assert_int_equal(kg_users_password_ok(7, f->w, sizeof(f->w)), KH_ERR_BAD_FIELD);
	HAS(f->w, "8-256");
	assert_int_equal(kg_users_password_ok(257, f->w, sizeof(f->w)), KH_ERR_BAD_FIELD);
	assert_int_equal(kg_users_password_ok(8, f->w, sizeof(f->w)), KH_OK);

	assert_int_equal(kg_users_hash(PW("correct horse"), &h), KH_OK);
	assert_string_equal(h.params, "scrypt:32768:8:1");
	assert_int_equal(kg_users_hash(PW("correct horse"), &h2), KH_OK);
	assert_memory_not_equal(h.salt, h2.salt, sizeof(h.salt)); /* salted */
	assert_memory_not_equal(h.hash, h2.hash, sizeof(h.hash));
	assert_int_equal(kg_users_verify(PW("correct horse"), &h), KH_OK);
	assert_int_equal(kg_users_verify(PW("correct horsE"), &h), KH_ERR_AUTH_FAILED);
	snprintf(h2.params, sizeof(h2.params), "scrypt:1073741824:8:1"); /* a gigabyte: no */
	assert_int_equal(kg_users_verify(PW("correct horse"), &h2), KH_ERR_STORAGE);

	/* the first Administrator, once */
	assert_int_equal(kg_users_bootstrap(f->st, "admin", "short", 5, f->w, sizeof(f->w)),
			 KH_ERR_BAD_FIELD);
	assert_int_equal(kg_users_bootstrap(f->st, "admin", "first-secret", 12, f->w, sizeof(f->w)),
			 KH_OK);
	assert_int_equal(kg_users_bootstrap(f->st, "other", "first-secret", 12, f->w, sizeof(f->w)),
			 KH_ERR_EXISTS);
	assert_int_equal(kg_users_add(f->st, "op", "Operator", PW("op-secret-1"), false, f->w,
				      sizeof(f->w)),
			 KH_OK);
	assert_int_equal(kg_users_add(f->st, "op2", "Operator", PW("short"), false, f->w,
				      sizeof(f->w)),
			 KH_ERR_BAD_FIELD);

	assert_int_equal(kg_users_authenticate(f->st, "admin", PW("first-secret"), t, &u, &role,
					       &locked, f->w, sizeof(f->w)),
			 KH_OK);
	assert_string_equal(role.name, "Administrator");
	assert_false(locked);
	/* unknown user and wrong password: the same answer */
	assert_int_equal(kg_users_authenticate(f->st, "ghost", PW("first-secret"), t, &u, &role,
					       &locked, f->w, sizeof(f->w)),
			 KH_ERR_AUTH_FAILED);
	char unknown[KG_WHY_MAX];
	snprintf(unknown, sizeof(unknown), "%s", f->w);
	assert_int_equal(kg_users_authenticate(f->st, "op", PW("wrong-pass"), t, &u, &role,
					       &locked, f->w, sizeof(f->w)),
			 KH_ERR_AUTH_FAILED);
	assert_string_equal(unknown, f->w);
	assert_null(strstr(f->w, "wrong-pass"));
	/* four more: the fifth failure locks for 60 s */
	for (int i = 0; i < 3; i++)
		assert_int_equal(kg_users_authenticate(f->st, "op", PW("wrong-pass"), t, &u, &role,
						       &locked, f->w, sizeof(f->w)),
				 KH_ERR_AUTH_FAILED);
	assert_int_equal(kg_users_authenticate(f->st, "op", PW("wrong-pass"), t, &u, &role,
					       &locked, f->w, sizeof(f->w)),
			 KH_ERR_LOCKED);
	assert_true(locked);
	/* locked: even the right password, until the minute is over */
	assert_int_equal(kg_users_authenticate(f->st, "op", PW("op-secret-1"), t + 59000, &u,
					       &role, &locked, f->w, sizeof(f->w)),
			 KH_ERR_LOCKED);
	HAS(f->w, "try again in 1 s");
	assert_int_equal(kg_users_authenticate(f->st, "op", PW("op-secret-1"), t + 60000, &u,
					       &role, &locked, f->w, sizeof(f->w)),
			 KH_OK);
	assert_string_equal(role.name, "Operator");
	/* the lock is an event */
	struct kh_gstore_event ev[4];
	size_t n = 0;
	assert_int_equal(kh_gstore_event_list(f->st, 0, 0, 0, ev, 4, &n, &f->why), KH_OK);
	bool seen = false;
	for (size_t i = 0; i < n; i++)
		seen |= strstr(ev[i].text, "user op locked for 60 s") != NULL;
	assert_true(seen);

	/* a password change */
	assert_int_equal(kg_users_set_password(f->st, "op", PW("op-secret-2"), false, f->w,
					       sizeof(f->w)),
			 KH_OK);
	assert_int_equal(kg_users_authenticate(f->st, "op", PW("op-secret-1"), t + 61000, &u,
					       &role, &locked, f->w, sizeof(f->w)),
			 KH_ERR_AUTH_FAILED);
	assert_int_equal(kg_users_authenticate(f->st, "op", PW("op-secret-2"), t + 61000, &u,
					       &role, &locked, f->w, sizeof(f->w)),
			 KH_OK);
	assert_int_equal(kg_users_set_password(f->st, "op", PW("1234567"), false, f->w,
					       sizeof(f->w)),
			 KH_ERR_BAD_FIELD);
}

static void role_rec(struct kh_gstore_role_rec *r, const char *name, unsigned perms, int logins)
{
	memset(r, 0, sizeof(*r));
	snprintf(r->name, sizeof(r->name), "%s", name);
	r->perms = perms;
	r->logins_required = logins;
}

static void test_sessions(void **state)
{
	struct kg_sessions *t = NULL;
	struct kh_gstore_role_rec admin, op;
	struct kg_sess s, s2, got;
	char why[KG_WHY_MAX];
	int64_t t0 = 1000000;
	(void)state;

	role_rec(&admin, "Administrator", KH_GPERM_ALL, 2);
	role_rec(&op, "Operator", KH_GPERM_VIEW, 1);
	assert_int_equal(kg_sess_table_new(0, &t), KH_OK);
	assert_int_equal(kg_sess_idle_s(t), 900);
	kg_sess_table_free(t);
	assert_int_equal(kg_sess_table_new(60, &t), KH_OK);

	assert_int_equal(kg_sess_new(t, "op", &op, t0, &s), KH_OK);
	assert_int_equal(strlen(s.token), 64);
	assert_int_equal(strlen(s.csrf), 64);
	assert_string_not_equal(s.token, s.csrf);
	assert_true(kg_sess_authorized(&s));
	assert_int_equal(kg_sess_expires_s(t, &s, t0), 60);
	/* idle expiry, restarted by each use */
	assert_int_equal(kg_sess_find(t, s.token, t0 + 59000, &got), KH_OK);
	assert_int_equal(kg_sess_find(t, s.token, t0 + 118000, &got), KH_OK);
	assert_int_equal(kg_sess_find(t, s.token, t0 + 178000, &got), KH_ERR_NOT_LOGGED_IN);
	assert_int_equal(kg_sess_find(t, s.token, t0 + 118001, &got), KH_ERR_NOT_LOGGED_IN);
	/* unknown, short, long tokens */
	assert_int_equal(kg_sess_find(t, "abc", t0, &got), KH_ERR_NOT_LOGGED_IN);
	assert_int_equal(kg_sess_find(t, NULL, t0, &got), KH_ERR_NOT_LOGGED_IN);
	assert_int_equal(kg_sess_new(t, "op", &op, t0, &s), KH_OK);
	char longer[80];
	snprintf(longer, sizeof(longer), "%s0", s.token);
	assert_int_equal(kg_sess_find(t, longer, t0, &got), KH_ERR_NOT_LOGGED_IN);
	s.token[0] = s.token[0] == 'a' ? 'b' : 'a';
	assert_int_equal(kg_sess_find(t, s.token, t0, &got), KH_ERR_NOT_LOGGED_IN);
	kg_sess_table_free(t);

	/* absolute expiry: 8 h however busy */
	assert_int_equal(kg_sess_table_new(900, &t), KH_OK);
	assert_int_equal(kg_sess_new(t, "op", &op, t0, &s), KH_OK);
	for (int64_t x = t0; x < t0 + KG_SESS_ABSOLUTE_MS; x += 600000)
		assert_int_equal(kg_sess_find(t, s.token, x, &got), KH_OK);
	assert_int_equal(kg_sess_find(t, s.token, t0 + KG_SESS_ABSOLUTE_MS, &got),
			 KH_ERR_NOT_LOGGED_IN);

	/* dual login */
	assert_int_equal(kg_sess_new(t, "admin", &admin, t0, &s), KH_OK);
	assert_false(kg_sess_authorized(&s));
	assert_int_equal(s.needed, 2);
	assert_int_equal(kg_sess_add_login(t, s.token, "ADMIN", "Administrator", t0, &s2, why,
					   sizeof(why)),
			 KH_ERR_STATE);
	HAS(why, "another user");
	assert_int_equal(kg_sess_add_login(t, s.token, "op", "Operator", t0, &s2, why, sizeof(why)),
			 KH_ERR_ROLE_MISMATCH);
	HAS(why, "role Administrator");
	assert_int_equal(kg_sess_add_login(t, "f00", "admin2", "Administrator", t0, &s2, why,
					   sizeof(why)),
			 KH_ERR_NOT_LOGGED_IN);
	assert_int_equal(kg_sess_add_login(t, s.token, "admin2", "Administrator", t0, &s2, why,
					   sizeof(why)),
			 KH_OK);
	assert_true(kg_sess_authorized(&s2));
	assert_int_equal(s2.nlogins, 2);
	assert_string_equal(s2.logins[1], "admin2");
	assert_int_equal(kg_sess_add_login(t, s.token, "admin3", "Administrator", t0, &s2, why,
					   sizeof(why)),
			 KH_ERR_STATE);
	/* a user's sessions end with them */
	assert_int_equal(kg_sess_new(t, "admin2", &op, t0, &got), KH_OK);
	kg_sess_end_user(t, "Admin2");
	assert_int_equal(kg_sess_find(t, s.token, t0, &s2), KH_ERR_NOT_LOGGED_IN);
	assert_int_equal(kg_sess_find(t, got.token, t0, &s2), KH_ERR_NOT_LOGGED_IN);
	/* logout */
	assert_int_equal(kg_sess_new(t, "op", &op, t0, &s), KH_OK);
	kg_sess_end(t, s.token);
	assert_int_equal(kg_sess_find(t, s.token, t0, &s2), KH_ERR_NOT_LOGGED_IN);

	/* the CSRF rule: cookie + state change needs the token */
	assert_int_equal(kg_sess_new(t, "op", &op, t0, &s), KH_OK);
	assert_true(kg_sess_csrf_ok(&s, "GET", true, NULL));
	assert_true(kg_sess_csrf_ok(&s, "POST", false, NULL));
	assert_false(kg_sess_csrf_ok(&s, "POST", true, NULL));
	assert_false(kg_sess_csrf_ok(&s, "DELETE", true, s.token));
	assert_false(kg_sess_csrf_ok(&s, "PUT", true, "00"));
	assert_true(kg_sess_csrf_ok(&s, "PUT", true, s.csrf));
	assert_true(kg_sess_csrf_ok(&s, "DELETE", true, s.csrf));

	/* the table is bounded; expired sessions make room */
	kg_sess_table_free(t);
	assert_int_equal(kg_sess_table_new(60, &t), KH_OK);
	for (int i = 0; i < KG_SESS_MAX; i++)
		assert_int_equal(kg_sess_new(t, "op", &op, t0, &s), KH_OK);
	assert_int_equal(kg_sess_new(t, "op", &op, t0, &s), KH_ERR_BUSY);
	assert_int_equal(kg_sess_new(t, "op", &op, t0 + 60000, &s), KH_OK);
	kg_sess_table_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_roles, setup, teardown),
		cmocka_unit_test_setup_teardown(test_users_store, setup, teardown),
		cmocka_unit_test_setup_teardown(test_passwords, setup, teardown),
		cmocka_unit_test(test_sessions),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

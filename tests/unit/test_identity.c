/* Identities: IDAD/IDMD/IDDL/IDLS through the real dispatcher, the password
 * policy and hashing, the Administrator quorum rule, and that no password
 * ever reaches the database files. */
#include "kh_testutil.h"
#include "hsm/dispatch.h"
#include "hsm/identity.h"
#include "hsm/roles.h"
#include "hsm/db.h"
#include "common/kh_mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int idad(struct kh_test_fx *x, const char *id, const char *role, const char *pw,
                const char *extra)
{
	char req[1200], hp[520];
	kh_test_hexstr(pw, hp);
	snprintf(req, sizeof(req), "[AOIDAD;ID%s;RN%s;PW%s;%s]", id, role, hp, extra ? extra : "");
	return KH_CALL(x, &x->admin, req);
}

static void test_policy_and_hash(void **state)
{
	struct kh_pwhash a, b;
	(void)state;
	assert_int_equal(kh_ident_password_policy((const uint8_t *)"1234567", 7, NULL, 0),
			 KH_ERR_WEAK_PASSWORD);
	assert_int_equal(kh_ident_password_policy((const uint8_t *)"12345678", 8, NULL, 0), KH_OK);
	assert_int_equal(kh_ident_password_policy((const uint8_t *)"12345678", 8,
						  (const uint8_t *)"12345678", 8),
			 KH_ERR_WEAK_PASSWORD);
	assert_int_equal(kh_ident_password_policy((const uint8_t *)"12345678", 8,
						  (const uint8_t *)"12345679", 8),
			 KH_OK);
	uint8_t big[KH_PASSWORD_MAX + 1];
	memset(big, 'a', sizeof(big));
	assert_int_equal(kh_ident_password_policy(big, KH_PASSWORD_MAX, NULL, 0), KH_OK);
	assert_int_equal(kh_ident_password_policy(big, sizeof(big), NULL, 0), KH_ERR_WEAK_PASSWORD);

	/* the same password hashes differently under two salts */
	assert_int_equal(kh_ident_hash_password((const uint8_t *)"password", 8, &a), KH_OK);
	assert_int_equal(kh_ident_hash_password((const uint8_t *)"password", 8, &b), KH_OK);
	assert_string_equal(a.params, "scrypt:16384:8:1");
	assert_memory_not_equal(a.salt, b.salt, sizeof(a.salt));
	assert_memory_not_equal(a.hash, b.hash, sizeof(a.hash));

	assert_true(kh_ident_name_valid("Admin_1.x-y"));
	assert_false(kh_ident_name_valid("has space"));
	assert_false(kh_ident_name_valid(""));
	char longname[KH_NAME_MAX + 1];
	memset(longname, 'a', KH_NAME_MAX);
	longname[KH_NAME_MAX] = '\0';
	assert_false(kh_ident_name_valid(longname));
	longname[KH_NAME_MAX - 1] = '\0';
	assert_true(kh_ident_name_valid(longname));
}

static void test_add_list(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session s;
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLAD;RNApp Role;PMkeys;PTprod;]"), KH_OK);
	assert_int_equal(idad(x, "App1", "App Role", "app-password-1", "MCY;"), KH_OK);
	assert_int_equal(idad(x, "App2", "app role", "app-password-2", NULL), KH_OK);
	assert_int_equal(KH_CALL(x, &x->admin, "[AOIDLS;]"), KH_OK);
	assert_non_null(strstr(x->out, "[AOIDLS;ILAdmin1:Administrator:ok,Admin2:Administrator:ok,"
				       "App1:App_Role:change,App2:App_Role:ok;]"));

	/* errors */
	assert_int_equal(idad(x, "app1", "App Role", "app-password-1", NULL), KH_ERR_EXISTS);
	assert_int_equal(idad(x, "App3", "No Role", "app-password-1", NULL), KH_ERR_NOT_FOUND);
	assert_int_equal(idad(x, "App3", "Anonymous", "app-password-1", NULL), KH_ERR_STATE);
	assert_int_equal(idad(x, "App3", "Transaction Processing", "app-password-1", NULL),
			 KH_ERR_STATE);
	assert_int_equal(idad(x, "App3", "App Role", "short", NULL), KH_ERR_WEAK_PASSWORD);
	assert_int_equal(idad(x, "App 3", "App Role", "app-password-1", NULL), KH_ERR_BAD_FIELD);
	assert_int_equal(idad(x, "App3", "App Role", "app-password-1", "MCX;"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &x->admin, "[AOIDAD;IDApp3;RNApp Role;]"),
	                 KH_ERR_MISSING_FIELD);
	assert_int_equal(KH_CALL(x, &x->admin, "[AOIDAD;IDApp3;RNApp Role;PWXYZ;]"),
	                 KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &x->admin, "[AOIDLS;]"), KH_OK);
	assert_null(strstr(x->out, "App3"));

	/* MC=Y: first login needs NP */
	kh_test_session(&s, KH_PORT_PROD);
	assert_int_equal(KH_LOGN(x, &s, "App1", "app-password-1", NULL),
	                 KH_ERR_PASSWORD_CHANGE_REQUIRED);
	assert_int_equal(KH_LOGN(x, &s, "App1", "app-password-1", "app-password-1b"), KH_OK);
	assert_int_equal(KH_LOGN(x, &s, "App2", "app-password-2", NULL), KH_OK);
	assert_true(s.active);
}

static void test_modify(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session s;
	struct kh_ident id;
	char req[600], hp[200];

	assert_int_equal(KH_CALL(x, &x->admin, "[AORLAD;RNR1;PTadmin;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLAD;RNR2;PTadmin;]"), KH_OK);
	assert_int_equal(idad(x, "U1", "R1", "user-password-1", NULL), KH_OK);

	/* new role */
	assert_int_equal(KH_CALL(x, &x->admin, "[AOIDMD;IDU1;RNR2;]"), KH_OK);
	kh_test_session(&s, KH_PORT_ADMIN);
	assert_int_equal(KH_LOGN(x, &s, "U1", "user-password-1", NULL), KH_OK);
	assert_string_equal(s.role.name, "R2");
	assert_int_equal(KH_CALL(x, &x->admin, "[AOIDMD;IDU1;RNAnonymous;]"), KH_ERR_STATE);
	assert_int_equal(KH_CALL(x, &x->admin, "[AOIDMD;IDU1;RNNope;]"), KH_ERR_NOT_FOUND);
	assert_int_equal(KH_CALL(x, &x->admin, "[AOIDMD;IDNobody;MCY;]"), KH_ERR_NOT_FOUND);

	/* password reset: a one-time password by default */
	kh_test_hexstr("reset-password-1", hp);
	snprintf(req, sizeof(req), "[AOIDMD;IDU1;PW%s;]", hp);
	assert_int_equal(KH_CALL(x, &x->admin, req), KH_OK);
	kh_test_session(&s, KH_PORT_ADMIN);
	assert_int_equal(KH_LOGN(x, &s, "U1", "user-password-1", NULL), KH_ERR_AUTH_FAILED);
	assert_int_equal(KH_LOGN(x, &s, "U1", "reset-password-1", NULL),
	                 KH_ERR_PASSWORD_CHANGE_REQUIRED);
	/* with MC=N it is not */
	snprintf(req, sizeof(req), "[AOIDMD;IDU1;PW%s;MCN;]", hp);
	assert_int_equal(KH_CALL(x, &x->admin, req), KH_OK);
	assert_int_equal(KH_LOGN(x, &s, "U1", "reset-password-1", NULL), KH_OK);
	/* MC alone */
	assert_int_equal(KH_CALL(x, &x->admin, "[AOIDMD;IDU1;MCY;]"), KH_OK);
	assert_int_equal(kh_ident_load(&x->hsm, "U1", &id), KH_OK);
	assert_true(id.must_change);
	/* a bad field changes nothing, not even the good fields beside it */
	snprintf(req, sizeof(req), "[AOIDMD;IDU1;RNR1;PW%s;MCN;ULQ;]", hp);
	assert_int_equal(KH_CALL(x, &x->admin, req), KH_ERR_BAD_FIELD);
	assert_int_equal(kh_ident_load(&x->hsm, "U1", &id), KH_OK);
	assert_true(id.must_change);
	struct kh_role r2;
	assert_int_equal(kh_role_load(&x->hsm, "R2", &r2), KH_OK);
	assert_int_equal(id.role_id, r2.id);
	snprintf(req, sizeof(req), "[AOIDMD;IDU1;RNR1;PW%s;]", "41");
	assert_int_equal(KH_CALL(x, &x->admin, req), KH_ERR_WEAK_PASSWORD);
	assert_int_equal(kh_ident_load(&x->hsm, "U1", &id), KH_OK);
	assert_int_equal(id.role_id, r2.id);
}

static void test_delete(void **state)
{
	struct kh_test_fx *x = *state;
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLAD;RNR1;PTadmin;]"), KH_OK);
	assert_int_equal(idad(x, "U1", "R1", "user-password-1", NULL), KH_OK);
	assert_int_equal(KH_CALL(x, &x->admin, "[AOIDDL;IDU1;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &x->admin, "[AOIDDL;IDU1;]"), KH_ERR_NOT_FOUND);
	struct kh_session s;
	kh_test_session(&s, KH_PORT_ADMIN);
	assert_int_equal(KH_LOGN(x, &s, "U1", "user-password-1", NULL), KH_ERR_AUTH_FAILED);

	/* logged in on this connection */
	assert_int_equal(KH_CALL(x, &x->admin, "[AOIDDL;IDadmin1;]"), KH_ERR_STATE);
	/* Administrator keeps at least Logins Required identities */
	assert_int_equal(idad(x, "Admin3", "Administrator", "admin-password-3", NULL), KH_OK);
	struct kh_session other;
	kh_test_session(&other, KH_PORT_ADMIN);
	assert_int_equal(KH_LOGN(x, &other, "Admin3", "admin-password-3", NULL), KH_OK);
	assert_int_equal(KH_LOGN(x, &other, "Admin2", KH_TEST_ADMIN2_PW, NULL), KH_OK);
	assert_true(other.active);
	assert_int_equal(KH_CALL(x, &other, "[AOIDDL;IDAdmin1;]"), KH_OK);
	/* the session that had Admin1 logged in loses that login */
	assert_int_equal(KH_CALL(x, &x->admin, "[AOIDLS;]"), KH_ERR_NOT_LOGGED_IN);
	assert_int_equal(x->admin.nident, 1);
	x->admin = other;
	assert_int_equal(KH_CALL(x, &x->admin, "[AOIDLS;]"), KH_OK);
	assert_int_equal(idad(x, "Admin4", "Administrator", "admin-password-4", NULL), KH_OK);
	assert_int_equal(KH_CALL(x, &other, "[AOIDMD;IDAdmin4;RNR1;]"), KH_OK);
	/* now exactly two remain: neither may go, nor be moved away */
	assert_int_equal(KH_CALL(x, &x->admin, "[AOIDDL;IDAdmin3;]"), KH_ERR_STATE);
	assert_int_equal(KH_CALL(x, &x->admin, "[AOIDMD;IDAdmin3;RNR1;]"), KH_ERR_STATE);
}

/* ---- C1: identity.add / identity.modify / identity.delete reach only
 * roles whose permissions the caller's role holds (or role.assign_all) ---- */

/* A Helpdesk role (identity.add, identity.modify, identity.delete plus
 * extra), one login on the admin port, and a session logged in as it. */
static void helpdesk_session(struct kh_test_fx *x, struct kh_session *s, const char *extra)
{
	char req[512];
	snprintf(req, sizeof(req),
	         "[AORLAD;RNHelpdesk;PMidentity.add,identity.modify,identity.delete%s%s;"
	         "LQ1;PTadmin;CSethernet;]",
	         extra ? "," : "", extra ? extra : "");
	assert_int_equal(KH_CALL(x, &x->admin, req), KH_OK);
	assert_int_equal(idad(x, "Help1", "Helpdesk", "helpdesk-password-1", NULL), KH_OK);
	kh_test_session(s, KH_PORT_ADMIN);
	assert_int_equal(KH_LOGN(x, s, "Help1", "helpdesk-password-1", NULL), KH_OK);
	assert_true(s->active);
}

/* The request tmpl with its "@" replaced by the hex of pw. */
static int call_pw(struct kh_test_fx *x, struct kh_session *s, const char *tmpl, const char *pw)
{
	char req[1200], hp[520];
	const char *at = strchr(tmpl, '@');
	assert_non_null(at);
	kh_test_hexstr(pw, hp);
	snprintf(req, sizeof(req), "%.*s%s%s", (int)(at - tmpl), tmpl, hp, at + 1);
	return KH_CALL(x, s, req);
}

static void test_helpdesk_cannot_escalate(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session h, s;
	struct kh_ident id;
	struct kh_role adm;
	helpdesk_session(x, &h, NULL);
	assert_int_equal(kh_role_load(&x->hsm, KH_ROLE_ADMIN, &adm), KH_OK);

	/* no identity in Administrator, with or without MC */
	assert_int_equal(call_pw(x, &h, "[AOIDAD;IDEvil1;RNAdministrator;PW@;MCN;]",
	                         "evil-password-1"),
	                 KH_ERR_PERMISSION_DENIED);
	assert_non_null(strstr(x->out, "role Administrator holds permissions yours lacks"));
	assert_int_equal(kh_ident_load(&x->hsm, "Evil1", &id), KH_ERR_NOT_FOUND);

	/* an identity of its own level cannot be moved into Administrator */
	assert_int_equal(idad(x, "Pawn", "Helpdesk", "pawn-password-1", NULL), KH_OK);
	assert_int_equal(KH_CALL(x, &h, "[AOIDMD;IDPawn;RNAdministrator;]"),
	                 KH_ERR_PERMISSION_DENIED);
	assert_int_equal(kh_ident_load(&x->hsm, "Pawn", &id), KH_OK);
	assert_int_not_equal(id.role_id, adm.id);
	/* nor its own login */
	assert_int_equal(KH_CALL(x, &h, "[AOIDMD;IDHelp1;RNAdministrator;]"),
	                 KH_ERR_PERMISSION_DENIED);

	/* Admin1's password cannot be reset (takeover), nor its MC or lock changed */
	assert_int_equal(call_pw(x, &h, "[AOIDMD;IDAdmin1;PW@;MCN;]", "taken-over-1"),
	                 KH_ERR_PERMISSION_DENIED);
	assert_non_null(strstr(x->out, "holds permissions yours lacks"));
	kh_test_session(&s, KH_PORT_ADMIN);
	assert_int_equal(KH_LOGN(x, &s, "Admin1", "taken-over-1", NULL), KH_ERR_AUTH_FAILED);
	assert_int_equal(KH_LOGN(x, &s, "Admin1", KH_TEST_ADMIN1_PW, NULL), KH_OK);
	assert_int_equal(KH_CALL(x, &h, "[AOIDMD;IDAdmin1;MCY;]"), KH_ERR_PERMISSION_DENIED);
	assert_int_equal(KH_CALL(x, &h, "[AOIDMD;IDAdmin1;ULY;]"), KH_ERR_PERMISSION_DENIED);
	/* an Administrator identity cannot be moved out (and then reset) either */
	assert_int_equal(KH_CALL(x, &h, "[AOIDMD;IDAdmin2;RNHelpdesk;]"),
	                 KH_ERR_PERMISSION_DENIED);
	assert_int_equal(KH_CALL(x, &h, "[AOIDDL;IDAdmin2;]"), KH_ERR_PERMISSION_DENIED);
	assert_int_equal(kh_ident_load(&x->hsm, "Admin2", &id), KH_OK);
	assert_int_equal(id.role_id, adm.id);
	assert_false(id.must_change);

	/* nor a role with just one permission more */
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLAD;RNAuditors;PMaudit.view;PTadmin;]"), KH_OK);
	assert_int_equal(call_pw(x, &h, "[AOIDAD;IDAud1;RNAuditors;PW@;]", "auditor-pass-1"),
	                 KH_ERR_PERMISSION_DENIED);
	assert_non_null(strstr(x->out, "role Auditors holds permissions yours lacks"));
}

static void test_helpdesk_within_its_reach(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session h, s;
	struct kh_ident id;
	struct kh_role app;
	helpdesk_session(x, &h, "keys");
	/* roles whose permissions are a subset of Helpdesk's */
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLAD;RNApp;PMkeys;PTadmin;LQ1;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLAD;RNApp2;PTadmin;LQ1;]"), KH_OK);
	assert_int_equal(call_pw(x, &h, "[AOIDAD;IDU1;RNApp;PW@;MCN;]", "user-password-1"), KH_OK);
	assert_int_equal(KH_CALL(x, &h, "[AOIDMD;IDU1;RNApp2;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &h, "[AOIDMD;IDU1;RNApp;]"), KH_OK);
	assert_int_equal(call_pw(x, &h, "[AOIDMD;IDU1;PW@;MCN;]", "user-password-2"), KH_OK);
	assert_int_equal(KH_CALL(x, &h, "[AOIDMD;IDU1;MCY;ULY;]"), KH_OK);
	assert_int_equal(kh_ident_load(&x->hsm, "U1", &id), KH_OK);
	assert_int_equal(kh_role_load(&x->hsm, "App", &app), KH_OK);
	assert_int_equal(id.role_id, app.id);
	assert_true(id.must_change);
	kh_test_session(&s, KH_PORT_ADMIN);
	assert_int_equal(KH_LOGN(x, &s, "U1", "user-password-2", "user-password-3"), KH_OK);
	/* its own role's identities too */
	assert_int_equal(call_pw(x, &h, "[AOIDAD;IDHelp2;RNHelpdesk;PW@;]", "helpdesk-pass-2"),
	                 KH_OK);
	assert_int_equal(KH_CALL(x, &h, "[AOIDDL;IDHelp2;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &h, "[AOIDDL;IDU1;]"), KH_OK);
	assert_int_equal(kh_ident_load(&x->hsm, "U1", &id), KH_ERR_NOT_FOUND);

	/* role.assign_all lifts the rule: the quorum rules still apply */
	assert_int_equal(KH_CALL(x, &x->admin,
	                         "[AORLMD;RNHelpdesk;PMidentity.add,identity.modify,"
	                         "identity.delete,keys,role.assign_all;]"),
	                 KH_OK);
	assert_int_equal(call_pw(x, &h, "[AOIDAD;IDAdmin3;RNAdministrator;PW@;]",
	                         "admin-password-3"),
	                 KH_OK);
	assert_int_equal(KH_CALL(x, &h, "[AOIDMD;IDAdmin3;RNApp;]"), KH_OK);
}

/* The Administrator role holds every permission: administrators reach every
 * role. */
static void test_admin_reaches_all(void **state)
{
	struct kh_test_fx *x = *state;
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLAD;RNAny;PMkeys,role.assign_all;PTadmin;]"),
	                 KH_OK);
	assert_int_equal(idad(x, "A1", "Any", "user-password-1", NULL), KH_OK);
	assert_int_equal(idad(x, "Admin3", "Administrator", "admin-password-3", NULL), KH_OK);
	assert_int_equal(call_pw(x, &x->admin, "[AOIDMD;IDAdmin3;PW@;]", "admin-password-4"),
	                 KH_OK);
	assert_int_equal(KH_CALL(x, &x->admin, "[AOIDMD;IDA1;RNAdministrator;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &x->admin, "[AOIDDL;IDA1;]"), KH_OK);
}

/* True if needle occurs in the file's bytes. */
static bool file_contains(const char *path, const void *needle, size_t n)
{
	FILE *f = fopen(path, "rb");
	if (f == NULL)
		return false;
	fseek(f, 0, SEEK_END);
	long len = ftell(f);
	fseek(f, 0, SEEK_SET);
	uint8_t *buf = malloc((size_t)len + 1);
	assert_non_null(buf);
	assert_int_equal(fread(buf, 1, (size_t)len, f), (size_t)len);
	fclose(f);
	bool found = memmem(buf, (size_t)len, needle, n) != NULL;
	free(buf);
	return found;
}

static void test_no_password_in_database(void **state)
{
	struct kh_test_fx *x = *state;
	const char *secrets[] = {"safest", KH_TEST_ADMIN1_PW, KH_TEST_ADMIN2_PW,
	                         "Correct-Horse-Battery-9", "Reset-Staple-77"};
	char req[600], hp[200], path[600];
	struct kh_session s;

	assert_int_equal(KH_CALL(x, &x->admin, "[AORLAD;RNR1;PTadmin;]"), KH_OK);
	assert_int_equal(idad(x, "U1", "R1", "Correct-Horse-Battery-9", NULL), KH_OK);
	kh_test_hexstr("Reset-Staple-77", hp);
	snprintf(req, sizeof(req), "[AOIDMD;IDU1;PW%s;]", hp);
	assert_int_equal(KH_CALL(x, &x->admin, req), KH_OK);
	kh_test_session(&s, KH_PORT_ADMIN);
	assert_int_equal(KH_LOGN(x, &s, "U1", "wrong-Horse-Battery", NULL), KH_ERR_AUTH_FAILED);
	/* a password typed as the identity name is not recorded either */
	assert_int_equal(KH_LOGN(x, &s, "Reset-Staple-77", "x-x-x-x-x", NULL), KH_ERR_AUTH_FAILED);

	/* push the WAL into the main file too, then scan every file */
	assert_int_equal(sqlite3_wal_checkpoint_v2(kh_db_sqlite(x->hsm.db), NULL,
						   SQLITE_CHECKPOINT_FULL, NULL, NULL),
			 SQLITE_OK);
	const char *files[] = {"keyhold.db", "keyhold.db-wal", "keyhold.db-shm"};
	for (size_t f = 0; f < 3; f++) {
		snprintf(path, sizeof(path), "%s/%s", x->dir, files[f]);
		for (size_t i = 0; i < sizeof(secrets) / sizeof(secrets[0]); i++) {
			char hex[200];
			assert_false(file_contains(path, secrets[i], strlen(secrets[i])));
			kh_test_hexstr(secrets[i], hex);
			assert_false(file_contains(path, hex, strlen(hex)));
		}
	}
	/* the scan does find what is there */
	snprintf(path, sizeof(path), "%s/keyhold.db", x->dir);
	assert_true(file_contains(path, "scrypt:16384:8:1", 16));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_policy_and_hash),
	    cmocka_unit_test_setup_teardown(test_add_list, kh_test_fx_setup_admin,
	                                    kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_modify, kh_test_fx_setup_admin,
	                                    kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_delete, kh_test_fx_setup_admin,
	                                    kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_no_password_in_database, kh_test_fx_setup_admin,
	                                    kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_helpdesk_cannot_escalate, kh_test_fx_setup_admin,
	                                    kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_helpdesk_within_its_reach, kh_test_fx_setup_admin,
	                                    kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_admin_reaches_all, kh_test_fx_setup_admin,
	                                    kh_test_fx_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

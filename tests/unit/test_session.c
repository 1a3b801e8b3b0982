/* LOGN, LOGO and CHPW through the real dispatcher and database: first login
 * with the default password, two-identity activation, same identity twice,
 * wrong password and unknown identity alike, lockout and unlock, role
 * mismatch, port and source rules, password policy, logout. */
#include "kh_testutil.h"
#include "hsm/dispatch.h"
#include "hsm/identity.h"
#include "hsm/db.h"
#include "common/kh_mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void test_first_login_and_activation(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session s;
	kh_test_session(&s, KH_PORT_ADMIN);

	/* the default password is right but must be changed */
	assert_int_equal(KH_LOGN(x, &s, "Admin1", "safest", NULL), KH_ERR_PASSWORD_CHANGE_REQUIRED);
	assert_non_null(strstr(x->out, "EC14;"));
	assert_int_equal(s.nident, 0);
	/* a too short or unchanged new password is refused */
	assert_int_equal(KH_LOGN(x, &s, "Admin1", "safest", "short"), KH_ERR_WEAK_PASSWORD);
	assert_int_equal(KH_LOGN(x, &s, "Admin1", "safest", "safest"), KH_ERR_WEAK_PASSWORD);
	assert_int_equal(s.nident, 0);

	assert_int_equal(KH_LOGN(x, &s, "Admin1", "safest", KH_TEST_ADMIN1_PW), KH_OK);
	assert_non_null(strstr(x->out, "[AOLOGN;BBY;ROAdministrator;LC1;LQ2;ACN;MCY;]"));
	assert_false(s.active);
	/* the same identity again counts once */
	assert_int_equal(KH_LOGN(x, &s, "admin1", KH_TEST_ADMIN1_PW, NULL), KH_OK);
	assert_non_null(strstr(x->out, "LC1;LQ2;ACN;MCN;"));
	assert_int_equal(s.nident, 1);
	assert_false(s.active);
	/* not yet active: admin commands are refused */
	assert_int_equal(KH_CALL(x, &s, "[AORLLS;]"), KH_ERR_NOT_LOGGED_IN);

	assert_int_equal(KH_LOGN(x, &s, "Admin2", "safest", KH_TEST_ADMIN2_PW), KH_OK);
	assert_non_null(strstr(x->out, "LC2;LQ2;ACY;MCY;"));
	assert_true(s.active);
	assert_int_equal(KH_CALL(x, &s, "[AORLLS;]"), KH_OK);
	assert_non_null(strstr(x->out, "RLAdministrator,Transaction Processing;"));

	/* the old default no longer works, the new one does (no change needed) */
	struct kh_session t;
	kh_test_session(&t, KH_PORT_ADMIN);
	assert_int_equal(KH_LOGN(x, &t, "Admin1", "safest", NULL), KH_ERR_AUTH_FAILED);
	assert_int_equal(KH_LOGN(x, &t, "Admin1", KH_TEST_ADMIN1_PW, NULL), KH_OK);
}

static void test_wrong_and_unknown_look_alike(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session s;
	char wrong[256], unknown[256];
	kh_test_session(&s, KH_PORT_ADMIN);

	assert_int_equal(KH_LOGN(x, &s, "Admin1", "not-the-password", NULL), KH_ERR_AUTH_FAILED);
	strncpy(wrong, x->out, sizeof(wrong) - 1);
	wrong[sizeof(wrong) - 1] = '\0';
	assert_int_equal(KH_LOGN(x, &s, "Nobody", "not-the-password", NULL), KH_ERR_AUTH_FAILED);
	strncpy(unknown, x->out, sizeof(unknown) - 1);
	unknown[sizeof(unknown) - 1] = '\0';
	assert_string_equal(wrong, unknown);
	assert_non_null(strstr(wrong, "[AOERRO;CMLOGN;EC12;"));
	assert_int_equal(s.nident, 0);
	/* bad syntax is a field error, not an authentication answer */
	assert_int_equal(KH_CALL(x, &s, "[AOLOGN;IDAdmin1;PWzz;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &s, "[AOLOGN;IDAdmin1;]"), KH_ERR_MISSING_FIELD);
	assert_int_equal(KH_CALL(x, &s, "[AOLOGN;IDbad name;PW00;]"), KH_ERR_BAD_FIELD);
}

static void test_lockout_and_unlock(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session adm, s;
	struct kh_ident id;
	int threshold = x->hsm.lockout_threshold;

	kh_test_admin_login(&x->hsm, &adm);
	assert_true(threshold >= 2);
	kh_test_session(&s, KH_PORT_ADMIN);
	/* a wrong new-password attempt with the right old one is not a failure */
	assert_int_equal(
	    KH_CALL(x, &adm, "[AOIDAD;IDOp1;RNAdministrator;PW6F702D70617373776F7264;MCY;]"),
	    KH_OK);
	assert_int_equal(KH_LOGN(x, &s, "Op1", "op-password", NULL),
	                 KH_ERR_PASSWORD_CHANGE_REQUIRED);
	assert_int_equal(kh_ident_load(&x->hsm, "Op1", &id), KH_OK);
	assert_int_equal(id.failures, 0);

	for (int i = 1; i < threshold; i++)
		assert_int_equal(KH_LOGN(x, &s, "Op1", "wrong-password", NULL), KH_ERR_AUTH_FAILED);
	assert_int_equal(kh_ident_load(&x->hsm, "Op1", &id), KH_OK);
	assert_int_equal(id.failures, threshold - 1);
	assert_int_equal(KH_LOGN(x, &s, "Op1", "wrong-password", NULL), KH_ERR_LOCKED);
	/* locked: even the right password answers LOCKED */
	assert_int_equal(KH_LOGN(x, &s, "Op1", "op-password", "op-password-2"), KH_ERR_LOCKED);
	assert_non_null(strstr(x->out, "EC13;"));
	assert_int_equal(KH_CALL(x, &adm, "[AOIDLS;]"), KH_OK);
	assert_non_null(strstr(x->out, "Op1:Administrator:locked"));

	/* IDMD UL=N changes nothing; UL=Y unlocks */
	assert_int_equal(KH_CALL(x, &adm, "[AOIDMD;IDOp1;ULN;]"), KH_OK);
	assert_int_equal(KH_LOGN(x, &s, "Op1", "op-password", "op-password-2"), KH_ERR_LOCKED);
	assert_int_equal(KH_CALL(x, &adm, "[AOIDMD;IDOp1;ULY;]"), KH_OK);
	assert_int_equal(KH_LOGN(x, &s, "Op1", "op-password", "op-password-2"), KH_OK);
	assert_int_equal(kh_ident_load(&x->hsm, "Op1", &id), KH_OK);
	assert_int_equal(id.failures, 0);
	assert_int_equal(id.locked_until, 0);

	/* success resets the count */
	assert_int_equal(KH_LOGN(x, &s, "Op1", "wrong-password", NULL), KH_ERR_AUTH_FAILED);
	assert_int_equal(KH_LOGN(x, &s, "Op1", "op-password-2", NULL), KH_OK);
	assert_int_equal(kh_ident_load(&x->hsm, "Op1", &id), KH_OK);
	assert_int_equal(id.failures, 0);
}

static void test_lock_expires(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session adm, s;
	kh_test_admin_login(&x->hsm, &adm);
	kh_test_session(&s, KH_PORT_ADMIN);
	assert_int_equal(
	    KH_CALL(x, &adm, "[AOIDAD;IDOp2;RNAdministrator;PW6F702D70617373776F7264;]"), KH_OK);
	pthread_mutex_lock(&x->hsm.mu);
	x->hsm.lockout_threshold = 1;
	x->hsm.lockout_seconds = 60;
	pthread_mutex_unlock(&x->hsm.mu);
	assert_int_equal(KH_LOGN(x, &s, "Op2", "wrong-password", NULL), KH_ERR_LOCKED);
	assert_int_equal(KH_LOGN(x, &s, "Op2", "op-password", NULL), KH_ERR_LOCKED);
	/* the lock runs on the HSM clock: move it past the lock rather than
	 * sleep, so a slow machine cannot outlast a short lock mid-test */
	pthread_mutex_lock(&x->hsm.mu);
	x->hsm.clock_offset += 61;
	pthread_mutex_unlock(&x->hsm.mu);
	assert_int_equal(KH_LOGN(x, &s, "Op2", "op-password", NULL), KH_OK);
}

static void test_role_mismatch_and_limits(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session adm, s;
	kh_test_admin_login(&x->hsm, &adm);
	assert_int_equal(KH_CALL(x, &adm, "[AORLAD;RNOps;PMaudit.view;PTadmin;CSethernet;LQ1;]"),
	                 KH_OK);
	assert_int_equal(KH_CALL(x, &adm, "[AOIDAD;IDAud1;RNOps;PW6F702D70617373776F7264;]"),
	                 KH_OK);

	kh_test_session(&s, KH_PORT_ADMIN);
	assert_int_equal(KH_LOGN(x, &s, "Admin1", KH_TEST_ADMIN1_PW, NULL), KH_OK);
	assert_int_equal(KH_LOGN(x, &s, "Aud1", "op-password", NULL), KH_ERR_ROLE_MISMATCH);
	assert_non_null(strstr(x->out, "EC16;"));
	assert_int_equal(s.nident, 1);
	assert_string_equal(s.role.name, "Administrator");

	/* a one-login role is active at once */
	struct kh_session t;
	kh_test_session(&t, KH_PORT_ADMIN);
	assert_int_equal(KH_LOGN(x, &t, "Aud1", "op-password", NULL), KH_OK);
	assert_non_null(strstr(x->out, "ROOps;LC1;LQ1;ACY;"));
	assert_true(t.active);
}

static void test_port_and_source(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session adm, prod, usb;
	kh_test_admin_login(&x->hsm, &adm);
	/* Administrator is an admin-port role */
	kh_test_session(&prod, KH_PORT_PROD);
	/* from a port its role may not use, the password is not checked: the
	 * right one and a wrong one get the same AUTH_FAILED answer */
	char right[256];
	assert_int_equal(KH_LOGN(x, &prod, "Admin1", KH_TEST_ADMIN1_PW, NULL), KH_ERR_AUTH_FAILED);
	strncpy(right, x->out, sizeof(right) - 1);
	right[sizeof(right) - 1] = '\0';
	assert_int_equal(prod.nident, 0);
	assert_int_equal(KH_LOGN(x, &prod, "Admin1", "wrong-password", NULL), KH_ERR_AUTH_FAILED);
	assert_string_equal(right, x->out);

	/* a prod role, ethernet only: refused on the admin port and on the console */
	assert_int_equal(KH_CALL(x, &adm, "[AORLAD;RNApp;PMkeys;KRS:1000-1999;PTprod;CSethernet;]"),
	                 KH_OK);
	assert_int_equal(KH_CALL(x, &adm, "[AOIDAD;IDApp1;RNApp;PW6F702D70617373776F7264;]"),
	                 KH_OK);
	struct kh_session a2;
	kh_test_session(&a2, KH_PORT_ADMIN);
	assert_int_equal(KH_LOGN(x, &a2, "App1", "op-password", NULL), KH_ERR_AUTH_FAILED);
	kh_test_session(&usb, KH_PORT_ADMIN);
	usb.source = KH_SRC_USB;
	assert_int_equal(KH_LOGN(x, &usb, "App1", "op-password", NULL), KH_ERR_AUTH_FAILED);
	assert_int_equal(KH_LOGN(x, &prod, "App1", "op-password", NULL), KH_OK);
	assert_true(prod.active);
	/* Administrator allows USB (the console) */
	assert_int_equal(KH_LOGN(x, &usb, "Admin1", KH_TEST_ADMIN1_PW, NULL), KH_OK);
	/* a role allowing only USB refuses ethernet */
	assert_int_equal(KH_CALL(x, &adm, "[AORLMD;RNApp;CSusb;PTprod,admin;]"), KH_OK);
	struct kh_session p2;
	kh_test_session(&p2, KH_PORT_PROD);
	assert_int_equal(KH_LOGN(x, &p2, "App1", "op-password", NULL), KH_ERR_AUTH_FAILED);
}

static void test_max_logins(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session adm, s;
	char req[200];
	kh_test_admin_login(&x->hsm, &adm);
	for (int i = 0; i <= KH_MAX_LOGINS; i++) {
		snprintf(req, sizeof(req), "[AOIDAD;IDM%d;RNAdministrator;PW6F702D70617373776F7264;]", i);
		assert_int_equal(KH_CALL(x, &adm, req), KH_OK);
	}
	kh_test_session(&s, KH_PORT_ADMIN);
	for (int i = 0; i < KH_MAX_LOGINS; i++) {
		snprintf(req, sizeof(req), "M%d", i);
		assert_int_equal(KH_LOGN(x, &s, req, "op-password", NULL), KH_OK);
	}
	snprintf(req, sizeof(req), "M%d", KH_MAX_LOGINS);
	assert_int_equal(KH_LOGN(x, &s, req, "op-password", NULL), KH_ERR_TOO_LARGE);
	assert_int_equal(s.nident, KH_MAX_LOGINS);
	/* the same identity again is still fine */
	assert_int_equal(KH_LOGN(x, &s, "M0", "op-password", NULL), KH_OK);
}

static void test_logout(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session s;
	kh_test_admin_login(&x->hsm, &s);
	assert_int_equal(KH_CALL(x, &s, "[AOLOGO;IDNobody;]"), KH_ERR_NOT_FOUND);
	assert_int_equal(KH_CALL(x, &s, "[AOLOGO;IDadmin1;]"), KH_OK);
	assert_non_null(strstr(x->out, "[AOLOGO;BBY;LC1;]"));
	assert_int_equal(s.nident, 1);
	assert_string_equal(s.ident[0], "Admin2");
	assert_false(s.active);
	assert_int_equal(KH_CALL(x, &s, "[AORLLS;]"), KH_ERR_NOT_LOGGED_IN);
	assert_int_equal(KH_CALL(x, &s, "[AOLOGO;]"), KH_OK);
	assert_non_null(strstr(x->out, "LC0;"));
	assert_int_equal(s.nident, 0);
	assert_int_equal(s.role.name[0], '\0');
	/* logged out: another role may log in on the connection */
	assert_int_equal(KH_LOGN(x, &s, "Admin1", KH_TEST_ADMIN1_PW, NULL), KH_OK);
}

static void test_chpw(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session s;
	char req[600], a[200], b[200];
	kh_test_admin_login(&x->hsm, &s);

	kh_test_hexstr(KH_TEST_ADMIN1_PW, a);
	kh_test_hexstr("third-secret-3", b);
	snprintf(req, sizeof(req), "[AOCHPW;IDAdmin1;PW%s;NP%s;]", b, a);
	assert_int_equal(KH_CALL(x, &s, req), KH_ERR_AUTH_FAILED);
	snprintf(req, sizeof(req), "[AOCHPW;IDAdmin1;PW%s;NP%s;]", a, a);
	assert_int_equal(KH_CALL(x, &s, req), KH_ERR_WEAK_PASSWORD);
	snprintf(req, sizeof(req), "[AOCHPW;IDAdmin1;PW%s;]", a);
	assert_int_equal(KH_CALL(x, &s, req), KH_ERR_MISSING_FIELD);
	snprintf(req, sizeof(req), "[AOCHPW;IDAdmin1;PW%s;NP%s;]", a, b);
	assert_int_equal(KH_CALL(x, &s, req), KH_OK);
	assert_non_null(strstr(x->out, "[AOCHPW;BBY;]"));

	struct kh_session t;
	kh_test_session(&t, KH_PORT_ADMIN);
	assert_int_equal(KH_LOGN(x, &t, "Admin1", KH_TEST_ADMIN1_PW, NULL), KH_ERR_AUTH_FAILED);
	assert_int_equal(KH_LOGN(x, &t, "Admin1", "third-secret-3", NULL), KH_OK);
	/* too long a new password */
	char longpw[300];
	memset(longpw, 'x', 257);
	longpw[257] = '\0';
	assert_int_equal(KH_LOGN(x, &t, "Admin2", KH_TEST_ADMIN2_PW, longpw), KH_ERR_WEAK_PASSWORD);
}

static void test_role_change_refreshes_session(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session s;
	kh_test_admin_login(&x->hsm, &s);
	/* a third identity, so that the role can meet Logins Required 3 */
	assert_int_equal(
	    KH_CALL(x, &s, "[AOIDAD;IDAdmin3;RNAdministrator;PW6F702D70617373776F7264;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &s, "[AORLMD;RNAdministrator;LQ3;]"), KH_OK);
	/* the dispatcher re-reads the role: two identities no longer suffice */
	assert_int_equal(KH_CALL(x, &s, "[AORLLS;]"), KH_ERR_NOT_LOGGED_IN);
	assert_false(s.active);
}

/* ---- H2, M1, M2: the login path against unauthenticated peers and races ---- */

/* A session on port with a peer text of its own: attempts are audited at
 * most once per connection, and connections are told apart by the session
 * and its peer. */
static void race_session(struct kh_session *s, enum kh_port port, const char *tag)
{
	static unsigned n;
	kh_test_session(s, port);
	snprintf(s->peer, sizeof(s->peer), "10.0.0.%u:%s", ++n, tag);
}

static int64_t sql_int(struct kh_test_fx *x, const char *sql)
{
	int64_t v = -1;
	assert_int_equal(kh_db_int(x->hsm.db, sql, NULL, 0, &v), KH_OK);
	return v;
}

static int64_t audit_rows(struct kh_test_fx *x)
{
	return sql_int(x, "SELECT count(*) FROM audit");
}

static void test_prod_port_cannot_guess_or_lock_admins(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session adm, prod, a;
	char wrong[256];
	kh_test_admin_login(&x->hsm, &adm);
	int threshold = x->hsm.lockout_threshold;
	assert_true(threshold >= 1);

	race_session(&prod, KH_PORT_PROD, "h2");
	int64_t before = audit_rows(x);
	for (int i = 0; i < threshold + 10; i++) {
		assert_int_equal(KH_LOGN(x, &prod, "Admin1", "wrong-password", NULL),
		                 KH_ERR_AUTH_FAILED);
		assert_null(strstr(x->out, "EC13;"));
	}
	strncpy(wrong, x->out, sizeof(wrong) - 1);
	wrong[sizeof(wrong) - 1] = '\0';
	/* nothing counted, nothing locked, one audit row for the connection */
	assert_int_equal(sql_int(x, "SELECT failures FROM identities WHERE name='Admin1'"), 0);
	assert_int_equal(sql_int(x, "SELECT locked_until FROM identities WHERE name='Admin1'"), 0);
	assert_int_equal(audit_rows(x) - before, 1);
	/* the right password on the wrong port: the same answer, no oracle */
	assert_int_equal(KH_LOGN(x, &prod, "Admin1", KH_TEST_ADMIN1_PW, NULL), KH_ERR_AUTH_FAILED);
	assert_string_equal(wrong, x->out);
	assert_int_equal(prod.nident, 0);
	/* an unknown identity on prod looks the same */
	assert_int_equal(KH_LOGN(x, &prod, "Nobody", "wrong-password", NULL), KH_ERR_AUTH_FAILED);
	assert_string_equal(wrong, x->out);
	/* CHPW from prod neither counts nor changes anything */
	char req[600], hp[200], hn[200];
	kh_test_hexstr("wrong-password", hp);
	kh_test_hexstr("new-password-99", hn);
	snprintf(req, sizeof(req), "[AOCHPW;IDAdmin1;PW%s;NP%s;]", hp, hn);
	for (int i = 0; i < threshold + 2; i++)
		assert_int_equal(KH_CALL(x, &prod, req), KH_ERR_AUTH_FAILED);
	kh_test_hexstr(KH_TEST_ADMIN1_PW, hp);
	snprintf(req, sizeof(req), "[AOCHPW;IDAdmin1;PW%s;NP%s;]", hp, hn);
	assert_int_equal(KH_CALL(x, &prod, req), KH_ERR_AUTH_FAILED);
	assert_int_equal(sql_int(x, "SELECT failures FROM identities WHERE name='Admin1'"), 0);
	/* a new connection is audited once more, not per attempt */
	struct kh_session prod2;
	race_session(&prod2, KH_PORT_PROD, "h2b");
	before = audit_rows(x);
	for (int i = 0; i < 3; i++)
		assert_int_equal(KH_LOGN(x, &prod2, "Admin2", "wrong-password", NULL),
		                 KH_ERR_AUTH_FAILED);
	assert_int_equal(audit_rows(x) - before, 1);

	/* the administrators are not locked out of their own port */
	race_session(&a, KH_PORT_ADMIN, "h2c");
	assert_int_equal(KH_LOGN(x, &a, "Admin1", KH_TEST_ADMIN1_PW, NULL), KH_OK);
	assert_int_equal(KH_LOGN(x, &a, "Admin2", KH_TEST_ADMIN2_PW, NULL), KH_OK);
	assert_true(a.active);
	/* and the console too */
	struct kh_session usb;
	race_session(&usb, KH_PORT_ADMIN, "h2d");
	usb.source = KH_SRC_USB;
	assert_int_equal(KH_LOGN(x, &usb, "Admin1", KH_TEST_ADMIN1_PW, NULL), KH_OK);
}

static void test_locked_attempts_audited_once(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session adm, s, t;
	kh_test_admin_login(&x->hsm, &adm);
	assert_int_equal(
	    KH_CALL(x, &adm, "[AOIDAD;IDOp5;RNAdministrator;PW6F702D70617373776F7264;]"), KH_OK);
	pthread_mutex_lock(&x->hsm.mu);
	x->hsm.lockout_threshold = 2;
	x->hsm.lockout_seconds = 600;
	pthread_mutex_unlock(&x->hsm.mu);

	race_session(&s, KH_PORT_ADMIN, "lk");
	int64_t before = audit_rows(x);
	assert_int_equal(KH_LOGN(x, &s, "Op5", "wrong-password", NULL), KH_ERR_AUTH_FAILED);
	assert_int_equal(KH_LOGN(x, &s, "Op5", "wrong-password", NULL), KH_ERR_LOCKED);
	/* one login.fail, one login.locked when the lock was set */
	assert_int_equal(audit_rows(x) - before, 2);
	assert_int_equal(sql_int(x, "SELECT count(*) FROM audit WHERE event='login.locked'"), 1);
	before = audit_rows(x);
	for (int i = 0; i < 6; i++) {
		assert_int_equal(KH_LOGN(x, &s, "Op5", "wrong-password", NULL), KH_ERR_LOCKED);
		assert_int_equal(KH_LOGN(x, &s, "Op5", "op-password", NULL), KH_ERR_LOCKED);
	}
	/* at most one row for this connection, and the count did not move */
	assert_true(audit_rows(x) - before <= 1);
	assert_int_equal(sql_int(x, "SELECT failures FROM identities WHERE name='Op5'"), 2);
	race_session(&t, KH_PORT_ADMIN, "lk2");
	before = audit_rows(x);
	for (int i = 0; i < 4; i++)
		assert_int_equal(KH_LOGN(x, &t, "Op5", "op-password", NULL), KH_ERR_LOCKED);
	assert_true(audit_rows(x) - before <= 1);
	assert_int_equal(s.nident, 0);
	assert_int_equal(t.nident, 0);
}

/* M2: a lock set after the password check (by parallel wrong guesses) is
 * honoured when the login commits, and not erased. */
static void test_lock_rechecked_at_commit(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session adm, s;
	struct kh_auth a;
	kh_test_admin_login(&x->hsm, &adm);
	assert_int_equal(
	    KH_CALL(x, &adm, "[AOIDAD;IDOp6;RNAdministrator;PW6F702D70617373776F7264;]"), KH_OK);

	/* locked in the database before a login with the right password */
	race_session(&s, KH_PORT_ADMIN, "m2");
	assert_int_equal(
	    kh_test_db_exec(&x->hsm, "UPDATE identities SET failures=9,locked_until=strftime('%s',"
	                             "'now')+600 WHERE name='Op6'"),
	    SQLITE_OK);
	assert_int_equal(KH_LOGN(x, &s, "Op6", "op-password", NULL), KH_ERR_LOCKED);
	assert_int_equal(s.nident, 0);
	assert_int_equal(kh_test_db_exec(&x->hsm, "UPDATE identities SET failures=0,locked_until=0 "
	                                          "WHERE name='Op6'"),
	                 SQLITE_OK);

	/* locked between the check and the commit */
	int64_t now = (int64_t)kh_hsm_now(&x->hsm);
	assert_int_equal(kh_ident_authenticate(&x->hsm, "Op6", (const uint8_t *)"op-password", 11,
	                                       KH_PORT_ADMIN, KH_SRC_ETHERNET, "unit", &a),
	                 KH_OK);
	assert_int_equal(
	    kh_test_db_exec(&x->hsm, "UPDATE identities SET failures=5,locked_until=strftime('%s',"
	                             "'now')+600 WHERE name='Op6'"),
	    SQLITE_OK);
	assert_int_equal(kh_db_begin(x->hsm.db), KH_OK);
	assert_int_equal(kh_ident_login_ok(&x->hsm, &a, NULL, now), KH_ERR_LOCKED);
	kh_db_rollback(x->hsm.db);
	/* the lock and the count are still there */
	assert_int_equal(sql_int(x, "SELECT failures FROM identities WHERE name='Op6'"), 5);
	assert_true(sql_int(x, "SELECT locked_until FROM identities WHERE name='Op6'") > now);

	/* a wrong guess against an identity locked meanwhile is not counted */
	assert_int_equal(kh_test_db_exec(&x->hsm, "UPDATE identities SET failures=0,locked_until=0 "
	                                          "WHERE name='Op6'"),
	                 SQLITE_OK);
	assert_int_equal(kh_ident_authenticate(&x->hsm, "Op6", (const uint8_t *)"op-password", 11,
	                                       KH_PORT_ADMIN, KH_SRC_ETHERNET, "unit", &a),
	                 KH_OK);
	assert_int_equal(kh_db_begin(x->hsm.db), KH_OK);
	assert_int_equal(kh_ident_login_ok(&x->hsm, &a, NULL, now), KH_OK);
	assert_int_equal(kh_db_commit(x->hsm.db), KH_OK);
}

/* M1: an identity moved to another role (or reset) between the password
 * check and the commit does not log in under what was read before.
 *
 * The LOGN handler cannot be interleaved deterministically from a test, so
 * the two halves are called directly. The other half of the fix is order:
 * kh_ident_authenticate reads hsm->role_gen before the identity and the role,
 * and IDMD/RLMD bump role_gen after their commit, so any change not seen by
 * those reads leaves the session with a stale generation and the dispatcher
 * re-checks it before the next command; checked below as a.gen. */
static void test_identity_change_rechecked_at_commit(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session adm, s;
	struct kh_auth a;
	char req[600], hp[200];
	kh_test_admin_login(&x->hsm, &adm);
	assert_int_equal(KH_CALL(x, &adm, "[AORLAD;RNOps;PMaudit.view;PTadmin;LQ1;]"), KH_OK);
	assert_int_equal(
	    KH_CALL(x, &adm, "[AOIDAD;IDAdmin3;RNAdministrator;PW6F702D70617373776F7264;]"), KH_OK);
	int64_t now = (int64_t)kh_hsm_now(&x->hsm);

	uint64_t gen = atomic_load(&x->hsm.role_gen);
	assert_int_equal(kh_ident_authenticate(&x->hsm, "Admin3", (const uint8_t *)"op-password",
	                                       11, KH_PORT_ADMIN, KH_SRC_ETHERNET, "unit", &a),
	                 KH_OK);
	assert_int_equal(a.gen, gen);
	assert_string_equal(a.role.name, "Administrator");
	/* T2: IDMD moves Admin3 to Ops (and bumps role_gen) */
	assert_int_equal(KH_CALL(x, &adm, "[AOIDMD;IDAdmin3;RNOps;]"), KH_OK);
	assert_true(atomic_load(&x->hsm.role_gen) != a.gen);
	/* T1 commits: refused, nothing written */
	assert_int_equal(kh_db_begin(x->hsm.db), KH_OK);
	assert_int_equal(kh_ident_login_ok(&x->hsm, &a, NULL, now), KH_ERR_AUTH_FAILED);
	kh_db_rollback(x->hsm.db);
	/* a fresh login gets the new role */
	race_session(&s, KH_PORT_ADMIN, "m1");
	assert_int_equal(KH_LOGN(x, &s, "Admin3", "op-password", NULL), KH_OK);
	assert_string_equal(s.role.name, "Ops");

	/* a password reset between check and commit: the old password does
	 * not log in (nor overwrite the reset with a new one) */
	assert_int_equal(kh_ident_authenticate(&x->hsm, "Admin3", (const uint8_t *)"op-password",
	                                       11, KH_PORT_ADMIN, KH_SRC_ETHERNET, "unit", &a),
	                 KH_OK);
	kh_test_hexstr("reset-password-3", hp);
	snprintf(req, sizeof(req), "[AOIDMD;IDAdmin3;PW%s;MCN;]", hp);
	assert_int_equal(KH_CALL(x, &adm, req), KH_OK);
	struct kh_pwhash nh;
	assert_int_equal(kh_ident_hash_password((const uint8_t *)"attacker-pw-1", 13, &nh), KH_OK);
	assert_int_equal(kh_db_begin(x->hsm.db), KH_OK);
	assert_int_equal(kh_ident_login_ok(&x->hsm, &a, &nh, now), KH_ERR_AUTH_FAILED);
	kh_db_rollback(x->hsm.db);
	kh_ident_pwhash_wipe(&nh);
	race_session(&s, KH_PORT_ADMIN, "m1b");
	assert_int_equal(KH_LOGN(x, &s, "Admin3", "reset-password-3", NULL), KH_OK);

	/* a role change (RLMD) after the check: the generation stored by the
	 * login is the one read before, so the dispatcher re-reads the role */
	race_session(&s, KH_PORT_ADMIN, "m1c");
	assert_int_equal(KH_LOGN(x, &s, "Admin3", "reset-password-3", NULL), KH_OK);
	assert_int_equal(s.role_gen, atomic_load(&x->hsm.role_gen));
}

/* The right password on a wrong port still counts nothing when repeated,
 * and an identity locked on its own port is reported as AUTH_FAILED (not
 * LOCKED) from a port its role may not use. */
static void test_locked_hidden_on_wrong_port(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session adm, prod;
	kh_test_admin_login(&x->hsm, &adm);
	assert_int_equal(kh_test_db_exec(&x->hsm, "UPDATE identities SET locked_until=strftime('%s',"
	                                          "'now')+600 WHERE name='Admin2'"),
	                 SQLITE_OK);
	race_session(&prod, KH_PORT_PROD, "hid");
	assert_int_equal(KH_LOGN(x, &prod, "Admin2", KH_TEST_ADMIN2_PW, NULL), KH_ERR_AUTH_FAILED);
	assert_int_equal(KH_LOGN(x, &prod, "Admin2", "wrong-password", NULL), KH_ERR_AUTH_FAILED);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_first_login_and_activation, kh_test_fx_setup,
	                                    kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_wrong_and_unknown_look_alike, kh_test_fx_setup,
	                                    kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_lockout_and_unlock, kh_test_fx_setup,
	                                    kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_lock_expires, kh_test_fx_setup,
	                                    kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_role_mismatch_and_limits, kh_test_fx_setup,
	                                    kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_port_and_source, kh_test_fx_setup,
	                                    kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_max_logins, kh_test_fx_setup, kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_logout, kh_test_fx_setup, kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_chpw, kh_test_fx_setup, kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_role_change_refreshes_session, kh_test_fx_setup,
	                                    kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_prod_port_cannot_guess_or_lock_admins,
	                                    kh_test_fx_setup, kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_locked_attempts_audited_once, kh_test_fx_setup,
	                                    kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_lock_rechecked_at_commit, kh_test_fx_setup,
	                                    kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_identity_change_rechecked_at_commit,
	                                    kh_test_fx_setup, kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_locked_hidden_on_wrong_port, kh_test_fx_setup,
	                                    kh_test_fx_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

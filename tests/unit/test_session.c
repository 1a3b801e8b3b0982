/* LOGN, LOGO and CHPW through the real dispatcher and database: first login
 * with the default password, two-identity activation, same identity twice,
 * wrong password and unknown identity alike, lockout and unlock, role
 * mismatch, port and source rules, password policy, logout. */
#include "kh_testutil.h"
#include "hsm/dispatch.h"
#include "hsm/identity.h"
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
	x->hsm.lockout_seconds = 1;
	pthread_mutex_unlock(&x->hsm.mu);
	assert_int_equal(KH_LOGN(x, &s, "Op2", "wrong-password", NULL), KH_ERR_LOCKED);
	assert_int_equal(KH_LOGN(x, &s, "Op2", "op-password", NULL), KH_ERR_LOCKED);
	sleep(2);
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
	assert_int_equal(KH_LOGN(x, &prod, "Admin1", KH_TEST_ADMIN1_PW, NULL),
	                 KH_ERR_PORT_NOT_ALLOWED);
	assert_non_null(strstr(x->out, "EC17;"));
	assert_int_equal(prod.nident, 0);
	/* a wrong password on the wrong port is still just AUTH_FAILED */
	assert_int_equal(KH_LOGN(x, &prod, "Admin1", "wrong-password", NULL), KH_ERR_AUTH_FAILED);

	/* a prod role, ethernet only: refused on the admin port and on the console */
	assert_int_equal(KH_CALL(x, &adm, "[AORLAD;RNApp;PMkeys;KRS:1000-1999;PTprod;CSethernet;]"),
	                 KH_OK);
	assert_int_equal(KH_CALL(x, &adm, "[AOIDAD;IDApp1;RNApp;PW6F702D70617373776F7264;]"),
	                 KH_OK);
	struct kh_session a2;
	kh_test_session(&a2, KH_PORT_ADMIN);
	assert_int_equal(KH_LOGN(x, &a2, "App1", "op-password", NULL), KH_ERR_PORT_NOT_ALLOWED);
	kh_test_session(&usb, KH_PORT_ADMIN);
	usb.source = KH_SRC_USB;
	assert_int_equal(KH_LOGN(x, &usb, "App1", "op-password", NULL), KH_ERR_PORT_NOT_ALLOWED);
	assert_int_equal(KH_LOGN(x, &prod, "App1", "op-password", NULL), KH_OK);
	assert_true(prod.active);
	/* Administrator allows USB (the console) */
	assert_int_equal(KH_LOGN(x, &usb, "Admin1", KH_TEST_ADMIN1_PW, NULL), KH_OK);
	/* a role allowing only USB refuses ethernet */
	assert_int_equal(KH_CALL(x, &adm, "[AORLMD;RNApp;CSusb;PTprod,admin;]"), KH_OK);
	struct kh_session p2;
	kh_test_session(&p2, KH_PORT_PROD);
	assert_int_equal(KH_LOGN(x, &p2, "App1", "op-password", NULL), KH_ERR_PORT_NOT_ALLOWED);
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
	assert_int_equal(KH_CALL(x, &s, "[AORLMD;RNAdministrator;LQ3;]"), KH_OK);
	/* the dispatcher re-reads the role: two identities no longer suffice */
	assert_int_equal(KH_CALL(x, &s, "[AORLLS;]"), KH_ERR_NOT_LOGGED_IN);
	assert_false(s.active);
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
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

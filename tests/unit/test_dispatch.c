/* The dispatcher's rules, each shown to refuse, through real roles in a
 * real database: unknown command, wrong port, not logged in, command not
 * enabled, permission missing, slot out of range; and the communication
 * commands' outputs. */
#include "kh_testutil.h"
#include "hsm/dispatch.h"
#include "common/kh_mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void test_unknown_and_port(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session prod;
	kh_test_session(&prod, KH_PORT_PROD);
	assert_int_equal(KH_CALL(x, &prod, "[AOZZZZ;]"), KH_ERR_UNKNOWN_COMMAND);
	assert_non_null(strstr(x->out, "[AOERRO;CMZZZZ;EC5;"));
	/* an admin command on the Excrypt port */
	assert_int_equal(KH_CALL(x, &prod, "[AORLLS;]"), KH_ERR_COMMAND_NOT_ALLOWED);
	/* an admin command before login on the admin port */
	struct kh_session adm;
	kh_test_session(&adm, KH_PORT_ADMIN);
	assert_int_equal(KH_CALL(x, &adm, "[AORLLS;]"), KH_ERR_NOT_LOGGED_IN);
	assert_int_equal(KH_CALL(x, &adm, "[AOSTAT;]"), KH_ERR_NOT_LOGGED_IN);
	assert_int_equal(KH_CALL(x, &adm, "[AOECHO;AGhi;]"), KH_OK);
	assert_non_null(strstr(x->out, "[AOECHO;AGhi;BC"));
}

static void test_transaction_processing_defaults(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session prod;
	kh_test_session(&prod, KH_PORT_PROD);
	assert_int_equal(KH_CALL(x, &prod, "[AOECHO;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &prod, "[AORAND;NB16;]"), KH_OK);
	assert_int_equal(strlen(strstr(x->out, "RN")), 2 + 32 + 2);
	assert_int_equal(KH_CALL(x, &prod, "[AOGPKM;]"), KH_OK);
	assert_non_null(strstr(x->out, "KC0;"));
	assert_int_equal(KH_CALL(x, &prod, "[AOHASH;]"), KH_OK);
	assert_non_null(strstr(x->out, "SNKH"));
	assert_int_equal(KH_CALL(x, &prod, "[AOSTAT;]"), KH_OK);
	assert_non_null(strstr(x->out, "FSFIPS=N,PKCS11=Y,FTK=N,PMK=N,BEK=N;"));
	assert_non_null(strstr(x->out, "MD" KH_MODEL ";"));
	assert_int_equal(KH_CALL(x, &prod, "[AOPRMD;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &prod, "[AOTIME;]"), KH_OK);
	/* TIME only reads the clock for a role without time.set */
	assert_int_equal(KH_CALL(x, &prod, "[AOTIME;TM20300101000000;]"), KH_ERR_PERMISSION_DENIED);
	/* bounds */
	assert_int_equal(KH_CALL(x, &prod, "[AORAND;NB0;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &prod, "[AORAND;NB4097;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &prod, "[AORAND;]"), KH_ERR_MISSING_FIELD);
	/* the slot exists in no table, but the range check comes first */
	assert_int_equal(KH_CALL(x, &prod, "[AOGPKR;SL5;]"), KH_ERR_NOT_FOUND);
	assert_int_equal(KH_CALL(x, &prod, "[AOGPKR;SL1000000;]"), KH_ERR_BAD_FIELD);
}

static void test_restricted_role(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session prod;
	/* the reference's restriction of the Transaction Processing role */
	assert_int_equal(
	    KH_CALL(x, &x->admin,
	            "[AORLMD;RNAnonymous;PM;KR;CMASYS,ECHO,GPKM,GPKR,GPKS,HASH,PRMD,RAND,"
	            "STAT,TIME;]"),
	    KH_OK);
	kh_test_session(&prod, KH_PORT_PROD);
	assert_int_equal(KH_CALL(x, &prod, "[AOECHO;]"), KH_OK);
	/* GPKM needs the Keys permission, which is gone */
	assert_int_equal(KH_CALL(x, &prod, "[AOGPKM;]"), KH_ERR_PERMISSION_DENIED);
	assert_non_null(strstr(x->out, "needs keys"));
	/* give Keys back: then the slot range refuses */
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNAnonymous;PMkeys;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &prod, "[AOGPKR;SL5;]"), KH_ERR_SLOT_OUT_OF_RANGE);
	assert_int_equal(KH_CALL(x, &prod, "[AOGPKM;]"), KH_OK);
	assert_non_null(strstr(x->out, "KC0;"));
	/* disable RAND: the command is refused */
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNAnonymous;CMECHO;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &prod, "[AORAND;NB8;]"), KH_ERR_COMMAND_NOT_ALLOWED);
	assert_non_null(strstr(x->out, "RAND not enabled for role"));
	assert_int_equal(KH_CALL(x, &prod, "[AOECHO;]"), KH_OK);
}

static void test_admin_settings_and_time(void **state)
{
	struct kh_test_fx *x = *state;
	assert_int_equal(KH_CALL(x, &x->admin, "[AOTIME;TM20300101000000;]"), KH_OK);
	assert_non_null(strstr(x->out, "TM203001010000"));
	assert_int_equal(KH_CALL(x, &x->admin, "[AOTIME;TM2030;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &x->admin, "[AOSETS;LT3;LS60;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &x->admin, "[AOSETG;]"), KH_OK);
	assert_non_null(strstr(x->out, "LT3;LS60;"));
	/* an invalid value changes nothing */
	assert_int_equal(KH_CALL(x, &x->admin, "[AOSETS;LT4;LS0;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &x->admin, "[AOSETG;]"), KH_OK);
	assert_non_null(strstr(x->out, "LT3;LS60;"));
	/* FIPS mode refused while a role has Logins Required 1 */
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLAD;RNapp;LQ1;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &x->admin, "[AOSETS;FIY;]"), KH_ERR_STATE);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNapp;LQ2;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &x->admin, "[AOSETS;FIY;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &x->admin, "[AOPRMD;]"), KH_OK);
	assert_non_null(strstr(x->out, "FIY;"));
}

/* A session whose identity is deleted (or moved to another role) loses that
 * login at its next command instead of keeping the old role's rights. */
static void test_deleted_identity_logged_out(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session app;
	char pw[64], req[256];
	kh_test_hexstr("app-password-1", pw);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLAD;RNapp;LQ1;PMkeys;KRS:10-20;CMECHO,GPKM;]"),
	                 KH_OK);
	snprintf(req, sizeof(req), "[AOIDAD;IDappuser;RNapp;PW%s;]", pw);
	assert_int_equal(KH_CALL(x, &x->admin, req), KH_OK);
	kh_test_session(&app, KH_PORT_PROD);
	snprintf(req, sizeof(req), "[AOLOGN;IDappuser;PW%s;]", pw);
	assert_int_equal(KH_CALL(x, &app, req), KH_OK);
	assert_true(app.active);
	assert_int_equal(KH_CALL(x, &app, "[AOGPKM;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &x->admin, "[AOIDDL;IDappuser;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &app, "[AOGPKM;]"), KH_ERR_NOT_LOGGED_IN);
	assert_int_equal(app.nident, 0);
	assert_false(app.active);
	/* back to the Transaction Processing role's rights */
	assert_int_equal(KH_CALL(x, &app, "[AOECHO;]"), KH_OK);
}

/* ---- M3: an open session follows changes to its role and identities ---- */

/* Role app (prod and admin ports, ethernet, LQ lq) with identities app1 and
 * app2; s is a prod session with app1 logged in. */
static void app_session(struct kh_test_fx *x, struct kh_session *s, int lq)
{
	char pw[64], req[256];
	snprintf(req, sizeof(req), "[AORLAD;RNapp;LQ%d;PMkeys;KRS:10-20;CMECHO,GPKM;PTprod,admin;]",
	         lq);
	assert_int_equal(KH_CALL(x, &x->admin, req), KH_OK);
	kh_test_hexstr("app-password-1", pw);
	snprintf(req, sizeof(req), "[AOIDAD;IDapp1;RNapp;PW%s;]", pw);
	assert_int_equal(KH_CALL(x, &x->admin, req), KH_OK);
	kh_test_hexstr("app-password-2", pw);
	snprintf(req, sizeof(req), "[AOIDAD;IDapp2;RNapp;PW%s;]", pw);
	assert_int_equal(KH_CALL(x, &x->admin, req), KH_OK);
	kh_test_session(s, KH_PORT_PROD);
	assert_int_equal(KH_LOGN(x, s, "app1", "app-password-1", NULL), KH_OK);
	assert_int_equal(s->active, lq == 1);
}

static void assert_dropped(struct kh_test_fx *x, struct kh_session *s)
{
	assert_int_equal(KH_CALL(x, s, "[AOGPKM;]"), KH_ERR_NOT_LOGGED_IN);
	assert_non_null(strstr(x->out, "log in again"));
	assert_int_equal(s->nident, 0);
	assert_false(s->active);
}

static void test_session_loses_port(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session app;
	app_session(x, &app, 1);
	assert_int_equal(KH_CALL(x, &app, "[AOGPKM;]"), KH_OK);
	/* an unrelated change keeps the session */
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLAD;RNother;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNapp;KRS:10-30;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &app, "[AOGPKM;]"), KH_OK);
	assert_true(app.active);
	/* the role leaves the prod port: the session's logins go */
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNapp;PTadmin;]"), KH_OK);
	assert_dropped(x, &app);
	/* and the connection is back under Transaction Processing */
	assert_int_equal(KH_CALL(x, &app, "[AOECHO;]"), KH_OK);
}

static void test_session_loses_source(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session app;
	app_session(x, &app, 1);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNapp;CSusb;]"), KH_OK);
	assert_dropped(x, &app);
}

static void test_session_password_reset(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session app;
	char pw[64], req[256];
	app_session(x, &app, 1);
	assert_int_equal(KH_CALL(x, &app, "[AOGPKM;]"), KH_OK);
	/* the administrator resets app1's password (a suspected compromise) */
	kh_test_hexstr("reset-password-1", pw);
	snprintf(req, sizeof(req), "[AOIDMD;IDapp1;PW%s;]", pw);
	assert_int_equal(KH_CALL(x, &x->admin, req), KH_OK);
	assert_dropped(x, &app);
	/* the old password no longer works; the new one must be changed */
	assert_int_equal(KH_LOGN(x, &app, "app1", "app-password-1", NULL), KH_ERR_AUTH_FAILED);
	assert_int_equal(KH_LOGN(x, &app, "app1", "reset-password-1", NULL),
	                 KH_ERR_PASSWORD_CHANGE_REQUIRED);
}

static void test_session_must_change(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session app;
	app_session(x, &app, 1);
	assert_int_equal(KH_CALL(x, &x->admin, "[AOIDMD;IDapp1;MCY;]"), KH_OK);
	assert_dropped(x, &app);
}

static void test_session_locked(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session app, attacker;
	app_session(x, &app, 1);
	assert_int_equal(KH_CALL(x, &x->admin, "[AOSETS;LT3;LS600;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &app, "[AOGPKM;]"), KH_OK);
	kh_test_session(&attacker, KH_PORT_PROD);
	assert_int_equal(KH_LOGN(x, &attacker, "app1", "wrong-password", NULL), KH_ERR_AUTH_FAILED);
	assert_int_equal(KH_LOGN(x, &attacker, "app1", "wrong-password", NULL), KH_ERR_AUTH_FAILED);
	/* failures below the threshold leave the session alone */
	assert_int_equal(KH_CALL(x, &app, "[AOGPKM;]"), KH_OK);
	assert_int_equal(KH_LOGN(x, &attacker, "app1", "wrong-password", NULL), KH_ERR_LOCKED);
	assert_dropped(x, &app);
	/* unlocked by an administrator, it may log in again */
	assert_int_equal(KH_CALL(x, &x->admin, "[AOIDMD;IDapp1;ULY;]"), KH_OK);
	assert_int_equal(KH_LOGN(x, &app, "app1", "app-password-1", NULL), KH_OK);
	assert_int_equal(KH_CALL(x, &app, "[AOGPKM;]"), KH_OK);
}

/* A second LOGN does not carry a login forward that lapsed meanwhile. */
static void test_logn_does_not_revive(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session app;
	app_session(x, &app, 2);
	assert_int_equal(KH_CALL(x, &x->admin, "[AOIDMD;IDapp1;MCY;]"), KH_OK);
	assert_int_equal(KH_LOGN(x, &app, "app2", "app-password-2", NULL), KH_OK);
	assert_int_equal(app.nident, 1);
	assert_string_equal(app.ident[0], "app2");
	assert_false(app.active);
	/* app1 logs in again with the password change it now needs */
	assert_int_equal(KH_LOGN(x, &app, "app1", "app-password-1", "app-password-1b"), KH_OK);
	assert_true(app.active);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_unknown_and_port, kh_test_fx_setup_admin,
	                                    kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_transaction_processing_defaults,
	                                    kh_test_fx_setup_admin, kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_restricted_role, kh_test_fx_setup_admin,
	                                    kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_admin_settings_and_time, kh_test_fx_setup_admin,
	                                    kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_deleted_identity_logged_out,
	                                    kh_test_fx_setup_admin, kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_session_loses_port, kh_test_fx_setup_admin,
	                                    kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_session_loses_source, kh_test_fx_setup_admin,
	                                    kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_session_password_reset, kh_test_fx_setup_admin,
	                                    kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_session_must_change, kh_test_fx_setup_admin,
	                                    kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_session_locked, kh_test_fx_setup_admin,
	                                    kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_logn_does_not_revive, kh_test_fx_setup_admin,
	                                    kh_test_fx_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

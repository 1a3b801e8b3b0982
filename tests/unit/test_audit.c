/* The audit chain: entries for logins, failures and changes, AUDS paging,
 * and AUDV detecting an edited row, a deleted middle row, two swapped rows,
 * a deleted last row and a forged head, each made with direct SQL. */
#include "kh_testutil.h"
#include "hsm/audit.h"
#include "hsm/db.h"
#include "hsm/dispatch.h"
#include "common/kh_mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void sql(struct kh_test_fx *x, const char *q)
{
	char *err = NULL;
	int rc = sqlite3_exec(kh_db_sqlite(x->hsm.db), q, NULL, NULL, &err);
	if (rc != SQLITE_OK)
		fail_msg("%s: %s", q, err ? err : "?");
	assert_int_equal(sqlite3_changes(kh_db_sqlite(x->hsm.db)) >= 0, 1);
}

static int setup(void **state)
{
	struct kh_session s;
	assert_int_equal(kh_test_fx_setup_admin(state), 0);
	struct kh_test_fx *x = *state;
	/* a few more entries of various kinds */
	kh_test_session(&s, KH_PORT_ADMIN);
	assert_int_equal(KH_LOGN(x, &s, "Admin1", "wrong-password", NULL), KH_ERR_AUTH_FAILED);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLAD;RNOps;PMaudit.view;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNOps;LQ2;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLDL;RNOps;]"), KH_OK);
	return 0;
}

static uint64_t count(struct kh_test_fx *x)
{
	uint64_t n = 0;
	assert_int_equal(kh_audit_count(&x->hsm, &n), KH_OK);
	return n;
}

static void test_entries_and_verify_ok(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_audit_result res;
	char hex[64];

	/* bootstrap, 2x (password.change + login), login.fail, role add/modify/delete */
	assert_int_equal(count(x), 9);
	assert_int_equal(kh_audit_verify(&x->hsm, &res), KH_OK);
	assert_true(res.ok);
	assert_int_equal(res.checked, 9);
	assert_int_equal(KH_CALL(x, &x->admin, "[AOAUDV;]"), KH_OK);
	assert_string_equal(x->out, "[AOAUDV;BBY;AN9;]");

	assert_int_equal(KH_CALL(x, &x->admin, "[AOAUDS;]"), KH_OK);
	assert_non_null(strstr(x->out, "[AOAUDS;AN9;AL1/"));
	assert_non_null(strstr(x->out, "/system/bootstrap/"));
	assert_non_null(strstr(x->out, "/Admin1/password.change/"));
	assert_non_null(strstr(x->out, "/Admin1/login/"));
	assert_non_null(strstr(x->out, "/Admin1/login.fail/"));
	assert_non_null(strstr(x->out, "/Admin1+Admin2/role.add/"));
	assert_non_null(strstr(x->out, "/Admin1+Admin2/role.delete/"));
	kh_test_hexstr("role Ops", hex);
	assert_non_null(strstr(x->out, hex));
	assert_null(strstr(x->out, "NX"));
	/* paging */
	assert_int_equal(KH_CALL(x, &x->admin, "[AOAUDS;SQ3;NM2;]"), KH_OK);
	assert_non_null(strstr(x->out, "AN9;AL3/"));
	assert_non_null(strstr(x->out, ",4/"));
	assert_null(strstr(x->out, ",5/"));
	assert_non_null(strstr(x->out, "NX5;]"));
	assert_int_equal(KH_CALL(x, &x->admin, "[AOAUDS;SQ100;]"), KH_OK);
	assert_string_equal(x->out, "[AOAUDS;AN9;AL;]");
	assert_int_equal(KH_CALL(x, &x->admin, "[AOAUDS;NM0;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &x->admin, "[AOAUDS;NM501;]"), KH_ERR_BAD_FIELD);

	/* more entries keep the chain intact; logout and other modules' appends */
	assert_int_equal(kh_audit_append(&x->hsm, "-", "mk.load", "PMK loaded, KCV 1A2B3C"), KH_OK);
	assert_int_equal(KH_CALL(x, &x->admin, "[AOLOGO;IDAdmin2;]"), KH_OK);
	assert_int_equal(kh_audit_verify(&x->hsm, &res), KH_OK);
	assert_true(res.ok);
	assert_int_equal(res.checked, 11);
}

static void expect_bad(struct kh_test_fx *x, uint64_t seq, const char *reason)
{
	struct kh_audit_result res;
	char want[128];
	assert_int_equal(kh_audit_verify(&x->hsm, &res), KH_OK);
	assert_false(res.ok);
	assert_int_equal(res.bad_seq, seq);
	assert_string_equal(res.reason, reason);
	/* and the same through AUDV */
	assert_int_equal(KH_CALL(x, &x->admin, "[AOAUDV;]"), KH_OK);
	snprintf(want, sizeof(want), "BBN;AN%llu;BS%llu;ET%s;]", (unsigned long long)res.checked,
		 (unsigned long long)seq, reason);
	assert_non_null(strstr(x->out, want));
}

static void test_edited(void **state)
{
	struct kh_test_fx *x = *state;
	sql(x, "UPDATE audit SET detail='nothing happened' WHERE seq=4");
	expect_bad(x, 4, "edited");
}

static void test_edited_actor_and_time(void **state)
{
	struct kh_test_fx *x = *state;
	sql(x, "UPDATE audit SET actor='Mallory' WHERE seq=2");
	expect_bad(x, 2, "edited");
}

static void test_edited_mac(void **state)
{
	struct kh_test_fx *x = *state;
	sql(x, "UPDATE audit SET mac=zeroblob(32) WHERE seq=6");
	expect_bad(x, 6, "edited");
}

static void test_deleted_middle(void **state)
{
	struct kh_test_fx *x = *state;
	sql(x, "DELETE FROM audit WHERE seq=5");
	expect_bad(x, 5, "missing");
}

static void test_deleted_first(void **state)
{
	struct kh_test_fx *x = *state;
	sql(x, "DELETE FROM audit WHERE seq=1");
	expect_bad(x, 1, "missing");
}

static void test_swapped(void **state)
{
	struct kh_test_fx *x = *state;
	sql(x, "UPDATE audit SET seq=-1 WHERE seq=3;"
	       "UPDATE audit SET seq=3 WHERE seq=4;"
	       "UPDATE audit SET seq=4 WHERE seq=-1;");
	expect_bad(x, 3, "reordered");
}

static void test_deleted_last(void **state)
{
	struct kh_test_fx *x = *state;
	uint64_t n = count(x);
	char q[80];
	snprintf(q, sizeof(q), "DELETE FROM audit WHERE seq=%llu", (unsigned long long)n);
	sql(x, q);
	expect_bad(x, n, "truncated");
	/* a later entry does not hide the hole */
	assert_int_equal(kh_audit_append(&x->hsm, "-", "test", "after truncation"), KH_OK);
	expect_bad(x, n, "missing");
}

static void test_head_tampering(void **state)
{
	struct kh_test_fx *x = *state;
	sql(x, "DELETE FROM settings WHERE key='audit_head'");
	expect_bad(x, count(x) + 1, "truncated");
	/* appending after that is flagged, not silently chained */
	assert_int_equal(kh_audit_append(&x->hsm, "-", "test", "after head loss"), KH_OK);
	expect_bad(x, count(x), "edited");
}

static void test_head_forged(void **state)
{
	struct kh_test_fx *x = *state;
	sql(x, "UPDATE settings SET value=zeroblob(72) WHERE key='audit_head'");
	expect_bad(x, count(x) + 1, "edited");
}

static void test_whole_log_deleted(void **state)
{
	struct kh_test_fx *x = *state;
	sql(x, "DELETE FROM audit; DELETE FROM settings WHERE key='audit_head'");
	expect_bad(x, 1, "truncated");
}

static void test_no_secrets_in_log(void **state)
{
	struct kh_test_fx *x = *state;
	sqlite3_stmt *st;
	assert_int_equal(sqlite3_prepare_v2(kh_db_sqlite(x->hsm.db),
					    "SELECT actor||event||detail FROM audit", -1, &st, NULL),
			 SQLITE_OK);
	int rows = 0;
	while (sqlite3_step(st) == SQLITE_ROW) {
		const char *t = (const char *)sqlite3_column_text(st, 0);
		assert_null(strstr(t, "safest"));
		assert_null(strstr(t, "secret"));
		assert_null(strstr(t, "wrong-password"));
		rows++;
	}
	sqlite3_finalize(st);
	assert_int_equal(rows, 9);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_entries_and_verify_ok, setup, kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_edited, setup, kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_edited_actor_and_time, setup, kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_edited_mac, setup, kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_deleted_middle, setup, kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_deleted_first, setup, kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_swapped, setup, kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_deleted_last, setup, kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_head_tampering, setup, kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_head_forged, setup, kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_whole_log_deleted, setup, kh_test_fx_teardown),
	    cmocka_unit_test_setup_teardown(test_no_secrets_in_log, setup, kh_test_fx_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

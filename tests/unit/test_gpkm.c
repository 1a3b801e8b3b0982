/* GPKM over a large key table: filters by class, type, label, CKA_ID and key
 * identifier, paging to the end, the role's ranges; and the queries behind
 * the filters use indexes (no full scan), which is what keeps them fast
 * with 100,000 keys (timings belong to bench/, not to a test). A slot the
 * HSM picks (`*`) after 100,000 keys in a row, and the query it uses. */
#include "kh_testutil.h"
#include "hsm/db.h"
#include "hsm/keystore.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NKEYS 100000

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* 100,000 rows (kh_test_fill_keys). */
static int setup(void **state)
{
	int r = kh_test_fx_setup_pmk(state);
	struct kh_test_fx *x = *state;
	if (r != 0)
		return r;
	return kh_test_fill_keys(&x->hsm, 0, NKEYS);
}

static void test_filters(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	char req[256], hex[64];
	kh_test_session(&p, KH_PORT_PROD);

	assert_int_equal(KH_CALL(x, &p, "[AOGPKM;NM5;]"), KH_OK);
	assert_string_equal(kh_test_field(x->out, "KC"), "100000");
	assert_string_equal(kh_test_field(x->out, "NX"), "5");
	/* by label: exactly one, with its key identifier */
	kh_test_hexstr("key-77778", hex);
	snprintf(req, sizeof(req), "[AOGPKM;LB%s;]", hex);
	double t0 = now_s();
	assert_int_equal(KH_CALL(x, &p, req), KH_OK);
	print_message("label lookup in %d keys: %.1f ms\n", NKEYS, (now_s() - t0) * 1e3);
	assert_string_equal(kh_test_field(x->out, "KC"), "1");
	const char *kl = kh_test_field(x->out, "KL");
	assert_int_equal(strncmp(kl, "77778:secret:AES:256:", 21), 0);
	char id[33];
	snprintf(id, sizeof(id), "%s", kl + 21);
	assert_int_equal(strlen(id), 32);
	assert_string_equal(kh_test_field(x->out, "NX"), "");
	/* by key identifier */
	snprintf(req, sizeof(req), "[AOGPKM;KD%s;]", id);
	assert_int_equal(KH_CALL(x, &p, req), KH_OK);
	assert_int_equal(strncmp(kh_test_field(x->out, "KL"), "77778:", 6), 0);
	/* by CKA_ID, and class with type */
	assert_int_equal(KH_CALL(x, &p, "[AOGPKM;KI00000007;]"), KH_OK);
	assert_int_equal(strncmp(kh_test_field(x->out, "KL"), "7:private:EC:256:", 17), 0);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKM;CLprivate;TYEC;NM2;SL1;]"), KH_OK);
	assert_string_equal(kh_test_field(x->out, "KC"), "14286");
	assert_int_equal(strncmp(kh_test_field(x->out, "KL"), "7:private:EC:256:", 17), 0);
	assert_string_equal(kh_test_field(x->out, "NX"), "21");
	/* an empty label matches keys without one: none here */
	assert_int_equal(KH_CALL(x, &p, "[AOGPKM;LB;]"), KH_OK);
	assert_string_equal(kh_test_field(x->out, "KC"), "0");
	/* bad filters */
	assert_int_equal(KH_CALL(x, &p, "[AOGPKM;KD00;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKM;LBZZ;]"), KH_ERR_BAD_FIELD);

	/* paging to the end visits every key once */
	uint64_t from = 0, seen = 0;
	t0 = now_s();
	for (;;) {
		snprintf(req, sizeof(req), "[AOGPKM;SL%llu;NM1000;]", (unsigned long long)from);
		assert_int_equal(KH_CALL(x, &p, req), KH_OK);
		const char *l = kh_test_field(x->out, "KL");
		seen += 1;
		for (const char *q = l; *q; q++)
			seen += *q == ',';
		const char *nx = kh_test_field(x->out, "NX");
		if (!*nx)
			break;
		from = strtoull(nx, NULL, 10);
	}
	print_message("paged through %d keys in %.2f s\n", NKEYS, now_s() - t0);
	assert_int_equal(seen, NKEYS);
}

/* The role's ranges limit the count and the list. */
static void test_role_ranges(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNAnonymous;PMkeys;KRS:10-19,A:500-509;]"),
	                 KH_OK);
	kh_test_session(&p, KH_PORT_PROD);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKM;]"), KH_OK);
	assert_string_equal(kh_test_field(x->out, "KC"), "20");
	assert_int_equal(KH_CALL(x, &p, "[AOGPKM;CLprivate;]"), KH_OK);
	assert_string_equal(kh_test_field(x->out, "KC"), "2"); /* slots 14 and 504 */
}

/* The plans SQLite picks for the filtered queries use an index. */
static void test_query_plans(void **state)
{
	struct kh_test_fx *x = *state;
	const char *q[] = {
	    "EXPLAIN QUERY PLAN SELECT slot FROM keys WHERE 1 AND label IS ? AND slot >= ? "
	    "ORDER BY slot LIMIT 10",
	    "EXPLAIN QUERY PLAN SELECT slot FROM keys WHERE 1 AND ckaid IS ? AND slot >= ? "
	    "ORDER BY slot LIMIT 10",
	    "EXPLAIN QUERY PLAN SELECT slot FROM keys WHERE 1 AND key_id = ? AND slot >= ? "
	    "ORDER BY slot LIMIT 10",
	    "EXPLAIN QUERY PLAN SELECT slot FROM keys WHERE (slot BETWEEN 5 AND 9) AND slot >= ? "
	    "ORDER BY slot LIMIT 10",
	    /* keystore.c lowest_free: the first gap after a taken slot */
	    "EXPLAIN QUERY PLAN SELECT k.slot + 1 FROM keys k WHERE k.slot >= ?1 AND k.slot < ?2 "
	    "AND NOT EXISTS (SELECT 1 FROM keys n WHERE n.slot = k.slot + 1) "
	    "ORDER BY k.slot LIMIT 1",
	};
	for (size_t i = 0; i < sizeof(q) / sizeof(q[0]); i++) {
		sqlite3_stmt *st = NULL;
		bool indexed = false;
		assert_int_equal(sqlite3_prepare_v2(kh_db_sqlite(x->hsm.db), q[i], -1, &st, NULL),
		                 SQLITE_OK);
		while (sqlite3_step(st) == SQLITE_ROW) {
			const char *d = (const char *)sqlite3_column_text(st, 3);
			if (d && (strstr(d, "USING INDEX") || strstr(d, "USING INTEGER PRIMARY KEY") ||
			          strstr(d, "USING COVERING INDEX")))
				indexed = true;
		}
		sqlite3_finalize(st);
		if (!indexed)
			fail_msg("query %zu scans the table", i);
	}
}

/* `*` after 100,000 keys in slots 0-99999: the first gap is past them all. */
static void test_auto_slot(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	kh_test_session(&p, KH_PORT_PROD);
	double t0 = now_s();
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;SL*;]"), KH_OK);
	print_message("slot picked after %d keys in %.1f ms\n", NKEYS, (now_s() - t0) * 1e3);
	assert_string_equal(kh_test_field(x->out, "SL"), "100000");
	t0 = now_s();
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;SL200000;]"), KH_OK);
	print_message("a named slot for comparison: %.1f ms\n", (now_s() - t0) * 1e3);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKD;SL200000;]"), KH_OK);
	/* a gap is found first */
	assert_int_equal(KH_CALL(x, &p, "[AOGPKD;SL77777;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;SL*;]"), KH_OK);
	assert_string_equal(kh_test_field(x->out, "SL"), "77777");
	assert_int_equal(KH_CALL(x, &p, "[AOGPKD;SL100000;]"), KH_OK);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_filters),
	    cmocka_unit_test(test_query_plans),
	    cmocka_unit_test(test_auto_slot),
	    cmocka_unit_test(test_role_ranges),
	};
	return cmocka_run_group_tests(tests, setup, kh_test_fx_teardown);
}

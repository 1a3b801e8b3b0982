/* Major-key rotation through the dispatcher: MKLB/MKLC and MKGN with RO=Y
 * re-wrap every key under the PMK (or FTK) in one transaction, slot keys
 * keep working (from the cache and from their rows), old cryptograms are
 * refused or accepted for a grace period, a row that does not open stops
 * the rotation with nothing changed, restarts keep the new and the
 * rotated-out key, and GPGC running beside a rotation never fails. */
#include "kh_testutil.h"
#include "hsm/db.h"
#include "hsm/hsm_core.h"
#include "hsm/keyobj.h"
#include "hsm/keystore.h"
#include "hsm/majorkey.h"
#include "common/kh_mem.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Two components for a rotation round: their XOR is the new key. */
static void components(unsigned round, uint8_t c[2][32], uint8_t key[32])
{
	for (int i = 0; i < 32; i++) {
		c[0][i] = (uint8_t)(0x40 + round * 7 + i);
		c[1][i] = (uint8_t)(0x93 ^ (round * 13 + 3 * i));
		key[i] = c[0][i] ^ c[1][i];
	}
}

/* MKLB RO=Y by two components; returns the last reply's result and leaves
 * it in x->out. */
static int rotate(struct kh_test_fx *x, struct kh_session *s, const char *kn, unsigned round,
                  const char *extra)
{
	uint8_t c[2][32], key[32];
	char req[256], h[65];
	int r;

	components(round, c, key);
	snprintf(req, sizeof(req), "[AOMKLB;KN%s;MOC;ALAES;KL256;NP2;ROY;%s]", kn, extra);
	if ((r = KH_CALL(x, s, req)) != KH_OK)
		return r;
	for (int i = 0; i < 2; i++) {
		kh_hex_encode(c[i], 32, h);
		snprintf(req, sizeof(req), "[AOMKLC;CM%s;]", h);
		if ((r = KH_CALL(x, s, req)) != KH_OK)
			return r;
	}
	return KH_OK;
}

static void kcv_of(unsigned round, char kcv[7])
{
	uint8_t c[2][32], key[32];
	components(round, c, key);
	assert_int_equal(kh_mk_kcv(key, 32, kcv), KH_OK);
}

/* Close and reopen the device on the same data dir; the administrators
 * log in again. */
static void restart(struct kh_test_fx *x)
{
	kh_hsm_close(&x->hsm);
	assert_int_equal(kh_hsm_open(&x->hsm, x->dir, false), KH_OK);
	kh_test_session(&x->admin, KH_PORT_ADMIN);
	assert_int_equal(KH_LOGN(x, &x->admin, "Admin1", KH_TEST_ADMIN1_PW, NULL), KH_OK);
	assert_int_equal(KH_LOGN(x, &x->admin, "Admin2", KH_TEST_ADMIN2_PW, NULL), KH_OK);
}

/* The single integer a query on x's database answers. */
static int64_t query_int(struct kh_test_fx *x, const char *sql)
{
	sqlite3_stmt *st;
	int64_t v;
	assert_int_equal(sqlite3_prepare_v2(kh_db_sqlite(x->hsm.db), sql, -1, &st, NULL),
	                 SQLITE_OK);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return v;
}

/* The stored wrapped form of slot (malloc'd copy). */
static uint8_t *wrapped_of(struct kh_test_fx *x, uint32_t slot, size_t *len)
{
	struct kh_key_row row;
	uint8_t *w;
	assert_int_equal(kh_keystore_get(&x->hsm, slot, &row), KH_OK);
	w = malloc(row.wrapped_len);
	assert_non_null(w);
	memcpy(w, row.wrapped, row.wrapped_len);
	*len = row.wrapped_len;
	kh_keystore_row_free(&row);
	return w;
}

/* Whether slot's row (read from x) unwraps on another device holding key as
 * its PMK: the row is portable, so this says which key it is under. */
static int opens_under(struct kh_test_fx *x, uint32_t slot, const uint8_t key[32])
{
	struct kh_hsm other;
	struct kh_key_row row;
	char dir[256];
	uint8_t *m = NULL;
	size_t mlen = 0;
	int r;

	kh_test_hsm_open(&other, dir);
	assert_int_equal(kh_mk_load(&other, KH_MK_PMK, key, 32, "unit", "mk.load", "t", NULL),
	                 KH_OK);
	assert_int_equal(kh_keystore_get(&x->hsm, slot, &row), KH_OK);
	row.mk_gen = 0; /* not this device's row */
	r = kh_keystore_unwrap(&other, &row, &m, &mlen);
	kh_secure_free(m, mlen);
	kh_keystore_row_free(&row);
	kh_test_hsm_close(&other, dir);
	return r;
}

static int use_cryptogram(struct kh_test_fx *x, struct kh_session *p, const char *cg)
{
	char *req = malloc(strlen(cg) + 64);
	int r;
	assert_non_null(req);
	sprintf(req, "[AOGPKA;CG%s;SL900;NIY;RPY;]", cg);
	r = KH_CALL(x, p, req);
	free(req);
	return r;
}

/* UTC YYYYMMDDhhmmss of the HSM clock plus secs. */
static void hsm_time(struct kh_test_fx *x, int64_t secs, char out[16])
{
	time_t t = kh_hsm_now(&x->hsm) + (time_t)secs;
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(out, 16, "%Y%m%d%H%M%S", &tm);
}

static void test_rotate_pmk_components(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	struct kh_mk_info info;
	char old_kcv[7], new_kcv[7], want[40];
	uint8_t c[2][32], newkey[32], *ftk_before, *ftk_after;
	size_t flen, flen2;
	kh_test_session(&p, KH_PORT_PROD);

	kh_mk_info(&x->hsm, KH_MK_PMK, &info);
	memcpy(old_kcv, info.kcv, 7);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;SL10;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT7;LN32;SL12;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;SL11;FSFTK;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;]"), KH_OK);
	char *cg_old = strdup(kh_test_field(x->out, "BG"));
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;FSFTK;]"), KH_OK);
	char *cg_ftk = strdup(kh_test_field(x->out, "BG"));
	/* used once: the parsed key sits in the cache */
	assert_int_equal(use_cryptogram(x, &p, cg_old), KH_OK);
	assert_int_equal(opens_under(x, 10, kh_test_pmk), KH_OK);
	ftk_before = wrapped_of(x, 11, &flen);

	assert_int_equal(rotate(x, &x->admin, "PMK", 1, "GP0;"), KH_OK);
	kcv_of(1, new_kcv);
	components(1, c, newkey);
	assert_string_equal(kh_test_field(x->out, "KV"), new_kcv);
	assert_string_equal(kh_test_field(x->out, "OV"), old_kcv);
	assert_string_equal(kh_test_field(x->out, "RW"), "3"); /* slots 10, 12 and 900 */
	assert_string_equal(kh_test_field(x->out, "GU"), "");
	assert_int_equal(KH_CALL(x, &x->admin, "[AOMKST;]"), KH_OK);
	snprintf(want, sizeof(want), "Y/AES-256/%s", new_kcv);
	assert_string_equal(kh_test_field(x->out, "PM"), want);
	assert_null(strstr(x->out, ";PR"));

	/* every slot key works, from the cache and from its re-wrapped row */
	assert_int_equal(KH_CALL(x, &p, "[AOGPGC;SL10;]"), KH_OK);
	kh_keycache_clear(&x->hsm);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGC;SL10;]"), KH_OK);
	char *cg_new = strdup(kh_test_field(x->out, "BG"));
	assert_int_equal(KH_CALL(x, &p, "[AOGPGC;SL12;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGC;SL11;]"), KH_OK);
	/* the rows are under the new key only */
	assert_int_equal(opens_under(x, 10, newkey), KH_OK);
	assert_int_equal(opens_under(x, 10, kh_test_pmk), KH_ERR_CRYPTO);
	assert_int_equal(opens_under(x, 12, kh_test_pmk), KH_ERR_CRYPTO);
	/* the FTK's rows are untouched */
	ftk_after = wrapped_of(x, 11, &flen2);
	assert_int_equal(flen, flen2);
	assert_memory_equal(ftk_before, ftk_after, flen);

	/* cryptograms: the old one is refused (cached or not), the FTK's and
	 * the new PMK's open */
	assert_int_equal(use_cryptogram(x, &p, cg_old), KH_ERR_CRYPTO);
	assert_non_null(strstr(x->out, "retired"));
	assert_int_equal(use_cryptogram(x, &p, cg_ftk), KH_OK);
	assert_int_equal(use_cryptogram(x, &p, cg_new), KH_OK);

	/* audited with both check values and the count */
	{
		char sql[200];
		snprintf(sql, sizeof(sql),
		         "SELECT count(*) FROM audit WHERE event='majorkey.rotate' AND "
		         "detail LIKE '%%KCV %s replaces KCV %s, 3 keys%%'",
		         new_kcv, old_kcv);
		assert_int_equal(query_int(x, sql), 1);
	}
	free(cg_old);
	free(cg_ftk);
	free(cg_new);
	free(ftk_before);
	free(ftk_after);
}

static void test_grace_period_and_restart(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	struct kh_mk_info info;
	char old_kcv[7], new_kcv[7], tm[16], req[64];
	kh_test_session(&p, KH_PORT_PROD);

	kh_mk_info(&x->hsm, KH_MK_PMK, &info);
	memcpy(old_kcv, info.kcv, 7);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;SL10;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;]"), KH_OK);
	char *cg_old = strdup(kh_test_field(x->out, "BG"));

	assert_int_equal(rotate(x, &x->admin, "PMK", 2, "GP3600;"), KH_OK);
	kcv_of(2, new_kcv);
	assert_string_equal(kh_test_field(x->out, "KV"), new_kcv);
	assert_string_equal(strlen(kh_test_field(x->out, "GU")) == 14 ? "ok" : x->out, "ok");
	/* within the grace period the old cryptogram opens */
	assert_int_equal(use_cryptogram(x, &p, cg_old), KH_OK);
	assert_int_equal(KH_CALL(x, &x->admin, "[AOMKST;]"), KH_OK);
	assert_int_equal(strncmp(kh_test_field(x->out, "PR"), old_kcv, 6), 0);
	kh_mk_info(&x->hsm, KH_MK_PMK, &info);
	assert_string_equal(info.prev_kcv, old_kcv);

	/* a restart keeps the new key and the rotated-out one */
	restart(x);
	kh_mk_info(&x->hsm, KH_MK_PMK, &info);
	assert_string_equal(info.kcv, new_kcv);
	assert_string_equal(info.prev_kcv, old_kcv);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGC;SL10;]"), KH_OK);
	assert_int_equal(use_cryptogram(x, &p, cg_old), KH_OK);

	/* past the deadline (HSM clock) it is refused, even from the cache,
	 * and the rotated-out key is erased */
	hsm_time(x, 3601, tm);
	snprintf(req, sizeof(req), "[AOTIME;TM%s;]", tm);
	assert_int_equal(KH_CALL(x, &x->admin, req), KH_OK);
	assert_int_equal(use_cryptogram(x, &p, cg_old), KH_ERR_CRYPTO);
	assert_int_equal(KH_CALL(x, &x->admin, "[AOMKST;]"), KH_OK);
	assert_null(strstr(x->out, ";PR"));
	assert_int_equal(query_int(x, "SELECT count(*) FROM major_keys WHERE name='PMK.prev'"), 0);
	assert_int_equal(query_int(x, "SELECT count(*) FROM audit WHERE event='majorkey.retire'"),
	                 1);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGC;SL10;]"), KH_OK);
	free(cg_old);
}

/* A stored rotated-out key's deadline is bound to its sealed row. */
static void test_prev_row_bound(void **state)
{
	struct kh_test_fx *x = *state;
	assert_int_equal(rotate(x, &x->admin, "PMK", 3, "GP600;"), KH_OK);
	assert_int_equal(query_int(x, "SELECT count(*) FROM major_keys WHERE name='PMK.prev'"), 1);
	assert_int_equal(
	    kh_test_db_exec(
	        &x->hsm, "UPDATE major_keys SET loaded_at=loaded_at+86400 WHERE name='PMK.prev'"),
	    SQLITE_OK);
	kh_hsm_close(&x->hsm);
	assert_int_equal(kh_hsm_open(&x->hsm, x->dir, false), KH_ERR_CRYPTO);
	kh_hsm_close(&x->hsm);
	assert_int_equal(kh_hsm_open(&x->hsm, x->dir, true), KH_OK); /* for the teardown */
}

static void test_bad_row_blocks_rotation(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	struct kh_mk_info info;
	char old_kcv[7];
	uint8_t *w20, *w20b, *w10b;
	size_t l20, l20b, l10b;
	kh_test_session(&p, KH_PORT_PROD);

	kh_mk_info(&x->hsm, KH_MK_PMK, &info);
	memcpy(old_kcv, info.kcv, 7);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;SL10;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;SL20;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;SL30;]"), KH_OK);
	w20 = wrapped_of(x, 20, &l20);
	/* slot 30's row no longer opens */
	assert_int_equal(kh_test_db_exec(&x->hsm,
	                                 "UPDATE keys SET wrapped=randomblob(length(wrapped))"
	                                 " WHERE slot=30"),
	                 SQLITE_OK);
	assert_int_equal(rotate(x, &x->admin, "PMK", 4, ""), KH_ERR_CRYPTO);
	assert_non_null(strstr(x->out, "slot 30 does not open"));
	/* nothing changed: the key, the other rows, the stored major key */
	kh_mk_info(&x->hsm, KH_MK_PMK, &info);
	assert_string_equal(info.kcv, old_kcv);
	w20b = wrapped_of(x, 20, &l20b);
	assert_int_equal(l20, l20b);
	assert_memory_equal(w20, w20b, l20);
	assert_int_equal(opens_under(x, 10, kh_test_pmk), KH_OK);
	kh_keycache_clear(&x->hsm);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGC;SL20;]"), KH_OK);
	assert_int_equal(query_int(x, "SELECT count(*) FROM audit WHERE event='majorkey.rotate'"),
	                 0);
	/* the ceremony is over */
	assert_int_equal(KH_CALL(x, &x->admin, "[AOMKLC;CM00;]"), KH_ERR_CEREMONY_STATE);
	restart(x);
	kh_mk_info(&x->hsm, KH_MK_PMK, &info);
	assert_string_equal(info.kcv, old_kcv);
	/* once the bad key is deleted the rotation goes through */
	assert_int_equal(KH_CALL(x, &p, "[AOGPKD;SL30;]"), KH_OK);
	w10b = wrapped_of(x, 10, &l10b);
	assert_int_equal(rotate(x, &x->admin, "PMK", 4, ""), KH_OK);
	assert_string_equal(kh_test_field(x->out, "RW"), "2");
	assert_int_equal(KH_CALL(x, &p, "[AOGPGC;SL10;]"), KH_OK);
	free(w20);
	free(w20b);
	free(w10b);
}

static void test_refusals_and_fragments(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	struct kh_mk_info info;
	char req[4096], p1[40], p2[40], kv[7];
	kh_test_session(&p, KH_PORT_PROD);
	kh_test_hexstr("custodian-one", p1);
	kh_test_hexstr("custodian-two", p2);

	/* the BEK is not rotated; a key that is not loaded cannot be */
	assert_int_equal(KH_CALL(x, &x->admin, "[AOMKLB;KNBEK;MOC;ALAES;KL256;NP2;ROY;]"),
	                 KH_ERR_UNSUPPORTED);
	assert_int_equal(KH_CALL(x, &x->admin, "[AOMKER;KNFTK;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &x->admin, "[AOMKLB;KNFTK;MOC;ALAES;KL256;NP2;ROY;]"),
	                 KH_ERR_NOT_FOUND);
	snprintf(req, sizeof(req), "[AOMKGN;KNFTK;ALAES;KL256;FM2;FN2;P1%s;P2%s;ROY;]", p1, p2);
	assert_int_equal(KH_CALL(x, &x->admin, req), KH_ERR_NOT_FOUND);
	/* a loaded key without RO: EXISTS, as before */
	assert_int_equal(KH_CALL(x, &x->admin, "[AOMKLB;KNPMK;MOC;ALAES;KL256;NP2;]"),
	                 KH_ERR_EXISTS);
	assert_non_null(strstr(x->out, "RO=Y"));
	/* GP: only with RO=Y, at most 30 days */
	assert_int_equal(KH_CALL(x, &x->admin, "[AOMKLB;KNPMK;MOC;ALAES;KL256;NP2;GP10;]"),
	                 KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &x->admin, "[AOMKLB;KNPMK;MOC;ALAES;KL256;NP2;ROY;GP2592001;]"),
	                 KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &x->admin, "[AOMKLB;KNPMK;MOC;ALAES;KL256;NP2;ROX;]"),
	                 KH_ERR_BAD_FIELD);
	/* production sessions have no major-key commands */
	assert_int_not_equal(KH_CALL(x, &p, "[AOMKLB;KNPMK;MOC;ALAES;KL256;NP2;ROY;]"), KH_OK);

	/* MKGN RO=Y: a generated PMK as fragments replaces the loaded one */
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;SL10;]"), KH_OK);
	snprintf(req, sizeof(req), "[AOMKGN;KNPMK;ALAES;KL256;FM2;FN2;P1%s;P2%s;ROY;GP60;]", p1,
	         p2);
	assert_int_equal(KH_CALL(x, &x->admin, req), KH_OK);
	snprintf(kv, sizeof(kv), "%s", kh_test_field(x->out, "KV"));
	assert_string_equal(kh_test_field(x->out, "RW"), "1");
	assert_string_equal(strlen(kh_test_field(x->out, "GU")) == 14 ? "ok" : x->out, "ok");
	char *f1 = strdup(kh_test_field(x->out, "F1")), *f2 = strdup(kh_test_field(x->out, "F2"));
	kh_mk_info(&x->hsm, KH_MK_PMK, &info);
	assert_string_equal(info.kcv, kv);
	assert_int_equal(opens_under(x, 10, kh_test_pmk), KH_ERR_CRYPTO);
	kh_keycache_clear(&x->hsm);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGC;SL10;]"), KH_OK);
	/* rotating to the key that is current is refused (fragments path) */
	assert_int_equal(KH_CALL(x, &x->admin, "[AOMKLB;KNPMK;MOF;ROY;]"), KH_OK);
	snprintf(req, sizeof(req), "[AOMKLC;FB%s;PP%s;]", f1, p1);
	assert_int_equal(KH_CALL(x, &x->admin, req), KH_OK);
	snprintf(req, sizeof(req), "[AOMKLC;FB%s;PP%s;]", f2, p2);
	assert_int_equal(KH_CALL(x, &x->admin, req), KH_ERR_BAD_KCV);
	assert_non_null(strstr(x->out, "is the current one"));
	kh_mk_info(&x->hsm, KH_MK_PMK, &info);
	assert_string_equal(info.kcv, kv);
	free(f1);
	free(f2);
}

/* Erasing the current key erases the rotated-out one with it. */
static void test_erase_takes_prev(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_mk_info info;
	assert_int_equal(rotate(x, &x->admin, "FTK", 5, "GP600;"), KH_OK);
	kh_mk_info(&x->hsm, KH_MK_FTK, &info);
	assert_true(info.prev_kcv[0] != '\0');
	assert_int_equal(KH_CALL(x, &x->admin, "[AOMKER;KNFTK;]"), KH_OK);
	kh_mk_info(&x->hsm, KH_MK_FTK, &info);
	assert_false(info.loaded);
	assert_string_equal(info.prev_kcv, "");
	assert_int_equal(query_int(x, "SELECT count(*) FROM major_keys WHERE name LIKE 'FTK%'"), 0);
	/* and a new load starts clean */
	assert_int_equal(
	    kh_mk_load(&x->hsm, KH_MK_FTK, kh_test_ftk, 32, "unit", "mk.load", "t", NULL), KH_OK);
	kh_mk_info(&x->hsm, KH_MK_FTK, &info);
	assert_string_equal(info.prev_kcv, "");
}

/* A row read before a rotation and opened after it: read again in its
 * re-wrapped form (the window a reader between kh_keystore_get and the
 * unwrap could meet). A row whose bound columns changed meanwhile is not
 * swapped for the new one. */
static void test_stale_row_retried(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	struct kh_key_row row, other;
	struct kh_mk_rotation rot;
	uint8_t c[2][32], key[32], *m = NULL, *m2 = NULL;
	size_t mlen = 0, m2len = 0;
	kh_test_session(&p, KH_PORT_PROD);

	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;SL10;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;SL11;]"), KH_OK);
	assert_int_equal(kh_keystore_get(&x->hsm, 10, &row), KH_OK);
	assert_int_equal(kh_keystore_unwrap(&x->hsm, &row, &m, &mlen), KH_OK);
	assert_int_equal(kh_keystore_get(&x->hsm, 11, &other), KH_OK);
	components(6, c, key);
	assert_int_equal(kh_mk_rotate(&x->hsm, KH_MK_PMK, key, 32, 0, "unit", "test", &rot), KH_OK);
	assert_int_equal(rot.rows, 2);
	assert_int_equal(kh_keystore_unwrap(&x->hsm, &row, &m2, &m2len), KH_OK);
	assert_int_equal(mlen, m2len);
	assert_memory_equal(m, m2, mlen);
	kh_secure_free(m2, m2len);
	m2 = NULL;
	/* slot 11's row under slot 10's name: refused, not re-read as slot 10 */
	other.slot = 10;
	assert_int_equal(kh_keystore_unwrap(&x->hsm, &other, &m2, &m2len), KH_ERR_CRYPTO);
	/* a row built by the caller is not re-read */
	row.mk_gen = 0;
	assert_int_equal(kh_keystore_unwrap(&x->hsm, &row, &m2, &m2len), KH_ERR_CRYPTO);
	kh_secure_free(m, mlen);
	kh_keystore_row_free(&row);
	kh_keystore_row_free(&other);
}

/* ---- concurrency --------------------------------------------------------- */

struct worker {
	struct kh_hsm *hsm;
	atomic_bool *stop;
	unsigned slot;
	unsigned calls, failures;
	int last_error;
};

static void *gpgc_loop(void *arg)
{
	struct worker *w = arg;
	struct kh_session s;
	char req[64], *out = malloc(65536);
	kh_test_session(&s, KH_PORT_PROD);
	snprintf(req, sizeof(req), "[AOGPGC;SL%u;]", w->slot);
	while (out != NULL && !atomic_load(w->stop)) {
		int r = kh_test_call(w->hsm, &s, req, out, 65536);
		w->calls++;
		if (r != KH_OK) {
			w->failures++;
			w->last_error = r;
		}
		/* every few calls from the row rather than the cache */
		if (w->calls % 8 == 0)
			kh_keycache_forget(w->hsm, w->slot);
	}
	free(out);
	return NULL;
}

static void test_concurrent_use(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	struct worker w[3];
	pthread_t t[3];
	atomic_bool stop = false;
	char kcv[7];
	struct kh_mk_info info;
	kh_test_session(&p, KH_PORT_PROD);

	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;SL10;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;SL11;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;SL12;FSFTK;]"), KH_OK);
	for (int i = 0; i < 200; i++) {
		char req[48];
		snprintf(req, sizeof(req), "[AOGPGS;CT4;SL%d;]", 100 + i);
		assert_int_equal(KH_CALL(x, &p, req), KH_OK);
	}
	for (int i = 0; i < 3; i++) {
		w[i] = (struct worker){.hsm = &x->hsm, .stop = &stop, .slot = 10u + (unsigned)i};
		assert_int_equal(pthread_create(&t[i], NULL, gpgc_loop, &w[i]), 0);
	}
	for (unsigned round = 10; round < 14; round++) {
		struct timespec ts = {0, 20 * 1000 * 1000};
		nanosleep(&ts, NULL);
		assert_int_equal(rotate(x, &x->admin, round % 2 ? "PMK" : "FTK", round, "GP60;"),
		                 KH_OK);
		assert_string_equal(kh_test_field(x->out, "RW"), round % 2 ? "202" : "1");
	}
	{
		struct timespec ts = {0, 20 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	atomic_store(&stop, true);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(pthread_join(t[i], NULL), 0);
		if (w[i].failures)
			fail_msg("slot %u: %u of %u GPGC failed (last %s)", w[i].slot,
			         w[i].failures, w[i].calls, kh_errname(w[i].last_error));
		assert_true(w[i].calls > 0);
	}
	kcv_of(13, kcv);
	kh_mk_info(&x->hsm, KH_MK_PMK, &info);
	assert_string_equal(info.kcv, kcv);
	kh_keycache_clear(&x->hsm);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGC;SL150;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGC;SL12;]"), KH_OK);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    KH_FX_TEST(test_rotate_pmk_components, kh_test_fx_setup_keys),
	    KH_FX_TEST(test_grace_period_and_restart, kh_test_fx_setup_keys),
	    KH_FX_TEST(test_prev_row_bound, kh_test_fx_setup_keys),
	    KH_FX_TEST(test_bad_row_blocks_rotation, kh_test_fx_setup_keys),
	    KH_FX_TEST(test_refusals_and_fragments, kh_test_fx_setup_keys),
	    KH_FX_TEST(test_erase_takes_prev, kh_test_fx_setup_keys),
	    KH_FX_TEST(test_stale_row_retried, kh_test_fx_setup_keys),
	    KH_FX_TEST(test_concurrent_use, kh_test_fx_setup_keys),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Unit tests for the key table's stored form: wrapping, retrieval,
 * replacement, tamper detection on every bound column, replication of the
 * wrapped form, listing and counting, storing into the lowest free slot
 * of a set of spans, and re-wrapping a row with new bound attributes. */
#include "kh_testutil.h"
#include "hsm/db.h"
#include "hsm/keystore.h"
#include "hsm/majorkey.h"
#include "common/kh_mem.h"

#include <stdio.h>
#include <string.h>

static uint8_t pmk[32], ftk[32];

static void load_majors(struct kh_hsm *hsm, const uint8_t *p, const uint8_t *f)
{
	if (p)
		assert_int_equal(
		    kh_mk_load(hsm, KH_MK_PMK, p, 32, "unit", "majorkey.load", "t", NULL), KH_OK);
	if (f)
		assert_int_equal(
		    kh_mk_load(hsm, KH_MK_FTK, f, 16, "unit", "majorkey.load", "t", NULL), KH_OK);
}

static void template(struct kh_key_row *r, uint32_t slot, enum kh_mk_id major)
{
	static uint8_t attrs[] = {0x01, 0x02, 0x03, 0x04, 0xAA};
	static uint8_t label[] = "my label";
	memset(r, 0, sizeof(*r));
	r->slot = slot;
	r->major = major;
	strcpy(r->cls, "secret");
	strcpy(r->ktype, "AES");
	r->bits = 256;
	r->attrs = attrs;
	r->attrs_len = sizeof(attrs);
	r->label = label;
	r->label_len = sizeof(label) - 1;
}

static void material(uint8_t m[32], uint8_t seed)
{
	for (int i = 0; i < 32; i++)
		m[i] = (uint8_t)(seed + i * 11);
}

static void test_put_get_unwrap(void **state)
{
	struct kh_hsm hsm;
	struct kh_key_row t, row;
	uint8_t m[32], zero[KH_KEY_ID_LEN] = {0}, id1[KH_KEY_ID_LEN];
	char dir[256];

	kh_test_hsm_open(&hsm, dir);
	material(m, 1);
	template(&t, 10, KH_MK_PMK);
	assert_int_equal(kh_keystore_put(&hsm, &t, m, 32, KH_KS_NEW_ID, "unit"),
	                 KH_ERR_MAJOR_KEY_NOT_LOADED);
	load_majors(&hsm, pmk, ftk);
	assert_int_equal(kh_keystore_put(&hsm, &t, m, 32, KH_KS_NEW_ID, "unit"), KH_OK);
	assert_memory_not_equal(t.key_id, zero, KH_KEY_ID_LEN);
	assert_true(t.created > 0);
	memcpy(id1, t.key_id, KH_KEY_ID_LEN);

	assert_int_equal(kh_keystore_get(&hsm, 10, &row), KH_OK);
	assert_int_equal(row.slot, 10);
	assert_memory_equal(row.key_id, id1, KH_KEY_ID_LEN);
	assert_int_equal(row.major, KH_MK_PMK);
	assert_string_equal(row.cls, "secret");
	assert_string_equal(row.ktype, "AES");
	assert_int_equal(row.bits, 256);
	assert_int_equal(row.attrs_len, 5);
	assert_int_equal(row.label_len, 8);
	assert_memory_equal(row.label, "my label", 8);
	assert_null(row.ckaid);
	assert_int_equal(row.wrapped_len, 32 + KH_MK_SEAL_OVERHEAD);
	assert_null(memmem(row.wrapped, row.wrapped_len, m, 8));
	kh_keystore_row_free(&row);
	kh_test_assert_key(&hsm, 10, m, 32);
	assert_int_equal(kh_keystore_get(&hsm, 11, &row), KH_ERR_NOT_FOUND);

	/* the slot is taken; replacing keeps nothing of the old key */
	material(m, 2);
	assert_int_equal(kh_keystore_put(&hsm, &t, m, 32, KH_KS_NEW_ID, "unit"), KH_ERR_EXISTS);
	assert_int_equal(kh_keystore_put(&hsm, &t, m, 32, KH_KS_NEW_ID | KH_KS_REPLACE, "unit"),
	                 KH_OK);
	assert_memory_not_equal(t.key_id, id1, KH_KEY_ID_LEN);
	kh_test_assert_key(&hsm, 10, m, 32);
	/* a key_id is unique across slots */
	t.slot = 12;
	assert_int_equal(kh_keystore_put(&hsm, &t, m, 32, 0, "unit"), KH_ERR_EXISTS);

	/* FTK-wrapped key */
	template(&t, 20, KH_MK_FTK);
	material(m, 3);
	assert_int_equal(kh_keystore_put(&hsm, &t, m, 17, KH_KS_NEW_ID, "unit"), KH_OK);
	kh_test_assert_key(&hsm, 20, m, 17);

	/* invalid rows */
	template(&t, 30, KH_MK_BEK);
	assert_int_equal(kh_keystore_put(&hsm, &t, m, 32, KH_KS_NEW_ID, "unit"), KH_ERR_BAD_FIELD);
	template(&t, KH_SLOT_MAX + 1, KH_MK_PMK);
	assert_int_equal(kh_keystore_put(&hsm, &t, m, 32, KH_KS_NEW_ID, "unit"), KH_ERR_BAD_FIELD);
	template(&t, 30, KH_MK_PMK);
	strcpy(t.cls, "se;cret");
	assert_int_equal(kh_keystore_put(&hsm, &t, m, 32, KH_KS_NEW_ID, "unit"), KH_ERR_BAD_FIELD);
	template(&t, 30, KH_MK_PMK);
	t.ktype[0] = '\0';
	assert_int_equal(kh_keystore_put(&hsm, &t, m, 32, KH_KS_NEW_ID, "unit"), KH_ERR_BAD_FIELD);
	template(&t, 30, KH_MK_PMK);
	assert_int_equal(kh_keystore_put(&hsm, &t, m, 0, KH_KS_NEW_ID, "unit"), KH_ERR_BAD_FIELD);
	t.attrs_len = KH_KS_ATTRS_MAX + 1;
	assert_int_equal(kh_keystore_put(&hsm, &t, m, 32, KH_KS_NEW_ID, "unit"), KH_ERR_BAD_FIELD);

	/* delete */
	assert_int_equal(kh_keystore_delete(&hsm, 20, "unit"), KH_OK);
	assert_int_equal(kh_keystore_get(&hsm, 20, &row), KH_ERR_NOT_FOUND);
	assert_int_equal(kh_keystore_delete(&hsm, 20, "unit"), KH_ERR_NOT_FOUND);

	/* without its major key a key cannot be used */
	assert_int_equal(kh_mk_erase(&hsm, KH_MK_PMK, "unit"), KH_OK);
	assert_int_equal(kh_keystore_get(&hsm, 10, &row), KH_OK);
	uint8_t *out = NULL;
	size_t olen = 0;
	assert_int_equal(kh_keystore_unwrap(&hsm, &row, &out, &olen), KH_ERR_MAJOR_KEY_NOT_LOADED);
	kh_keystore_row_free(&row);
	kh_test_hsm_close(&hsm, dir);
	(void)state;
}

/* Changes byte 21 of slot 100's wrapped form whatever its value was: writing
 * a fixed byte is a no-op one time in 256. */
#define FLIP_WRAPPED_BYTE                                                                          \
	"UPDATE keys SET wrapped = substr(wrapped, 1, 20) || CASE WHEN substr(wrapped, 21, 1) "    \
	"= x'00' THEN x'01' ELSE x'00' END || substr(wrapped, 22) WHERE slot = 100"

/* Editing any bound column makes the key unusable; descriptive ones do not. */
static void test_tamper(void **state)
{
	static const struct {
		const char *sql;
		uint32_t slot_after;
	} edits[] = {
	    {"UPDATE keys SET slot = 101 WHERE slot = 100", 101},
	    {"UPDATE keys SET key_id = zeroblob(16) WHERE slot = 100", 100},
	    {"UPDATE keys SET major = 'FTK' WHERE slot = 100", 100},
	    {"UPDATE keys SET class = 'public' WHERE slot = 100", 100},
	    {"UPDATE keys SET ktype = 'HMAC' WHERE slot = 100", 100},
	    {"UPDATE keys SET bits = 128 WHERE slot = 100", 100},
	    {"UPDATE keys SET attrs = x'0102030400' WHERE slot = 100", 100},
	    {"UPDATE keys SET attrs = x'01020304' WHERE slot = 100", 100},
	    {FLIP_WRAPPED_BYTE, 100},
	    {"UPDATE keys SET wrapped = substr(wrapped, 1, length(wrapped) - 1) WHERE slot = 100",
	     100},
	};
	struct kh_hsm hsm;
	struct kh_key_row t, row;
	uint8_t m[32], *out = NULL;
	size_t olen = 0;
	char dir[256];

	kh_test_hsm_open(&hsm, dir);
	load_majors(&hsm, pmk, ftk);
	material(m, 9);
	for (size_t e = 0; e < sizeof(edits) / sizeof(edits[0]); e++) {
		template(&t, 100, KH_MK_PMK);
		assert_int_equal(
		    kh_keystore_put(&hsm, &t, m, 32, KH_KS_NEW_ID | KH_KS_REPLACE, "unit"), KH_OK);
		kh_test_assert_key(&hsm, 100, m, 32);
		assert_int_equal(kh_test_db_exec(&hsm, edits[e].sql), SQLITE_OK);
		assert_int_equal(kh_keystore_get(&hsm, edits[e].slot_after, &row), KH_OK);
		assert_int_equal(kh_keystore_unwrap(&hsm, &row, &out, &olen), KH_ERR_CRYPTO);
		kh_keystore_row_free(&row);
		assert_int_equal(kh_test_db_exec(&hsm, "DELETE FROM keys"), SQLITE_OK);
	}
	/* descriptive columns change freely */
	template(&t, 100, KH_MK_PMK);
	assert_int_equal(kh_keystore_put(&hsm, &t, m, 32, KH_KS_NEW_ID, "unit"), KH_OK);
	assert_int_equal(kh_test_db_exec(&hsm, "UPDATE keys SET label = x'41', ckaid = x'0102', "
	                                       "extra = x'03' WHERE slot = 100"),
	                 SQLITE_OK);
	kh_test_assert_key(&hsm, 100, m, 32);
	assert_int_equal(
	    kh_keystore_set_desc(&hsm, 100, (const uint8_t *)"new", 3, NULL, 0, NULL, 0, "unit"),
	    KH_OK);
	assert_int_equal(kh_keystore_get(&hsm, 100, &row), KH_OK);
	assert_int_equal(row.label_len, 3);
	assert_memory_equal(row.label, "new", 3);
	assert_int_equal(row.ckaid_len, 2); /* untouched */
	kh_keystore_row_free(&row);
	assert_int_equal(
	    kh_keystore_set_desc(&hsm, 100, NULL, 0, (const uint8_t *)"", 0, NULL, 0, "unit"),
	    KH_OK);
	assert_int_equal(kh_keystore_get(&hsm, 100, &row), KH_OK);
	assert_int_equal(row.ckaid_len, 0);
	assert_int_equal(row.label_len, 3);
	kh_keystore_row_free(&row);
	assert_int_equal(kh_keystore_set_desc(&hsm, 7, NULL, 0, NULL, 0, NULL, 0, "unit"),
	                 KH_ERR_NOT_FOUND);
	kh_test_assert_key(&hsm, 100, m, 32);
	kh_test_hsm_close(&hsm, dir);
	(void)state;
}

/* A group member with the same major key stores the copied wrapped form;
 * one with another major key refuses it. */
static void test_replicate_wrapped(void **state)
{
	struct kh_hsm a, b, c;
	struct kh_key_row t, row;
	uint8_t m[32], other[32];
	char da[256], db[256], dc[256];

	kh_test_hsm_open(&a, da);
	kh_test_hsm_open(&b, db);
	kh_test_hsm_open(&c, dc);
	load_majors(&a, pmk, NULL);
	load_majors(&b, pmk, NULL);
	memset(other, 0x33, sizeof(other));
	load_majors(&c, other, NULL);
	material(m, 40);
	template(&t, 5, KH_MK_PMK);
	assert_int_equal(kh_keystore_put(&a, &t, m, 32, KH_KS_NEW_ID, "unit"), KH_OK);
	assert_int_equal(kh_keystore_get(&a, 5, &row), KH_OK);
	assert_int_equal(kh_keystore_put_wrapped(&b, &row, 0, "unit"), KH_OK);
	kh_test_assert_key(&b, 5, m, 32);
	{
		struct kh_key_row rb;
		assert_int_equal(kh_keystore_get(&b, 5, &rb), KH_OK);
		assert_memory_equal(rb.key_id, row.key_id, KH_KEY_ID_LEN);
		assert_int_equal(rb.wrapped_len, row.wrapped_len);
		assert_memory_equal(rb.wrapped, row.wrapped, row.wrapped_len);
		kh_keystore_row_free(&rb);
	}
	assert_int_equal(kh_keystore_put_wrapped(&c, &row, 0, "unit"), KH_ERR_CRYPTO);
	assert_int_equal(kh_keystore_get(&c, 5, &t), KH_ERR_NOT_FOUND);
	/* moving it to another slot on the way is refused too */
	row.slot = 6;
	assert_int_equal(kh_keystore_put_wrapped(&b, &row, 0, "unit"), KH_ERR_CRYPTO);
	kh_keystore_row_free(&row);
	kh_test_hsm_close(&c, dc);
	kh_test_hsm_close(&b, db);
	kh_test_hsm_close(&a, da);
	(void)state;
}

struct seen {
	uint32_t slots[64];
	size_t n;
};

static int visit(void *arg, const struct kh_key_row *row)
{
	struct seen *s = arg;
	if (s->n == 64)
		return KH_ERR_TOO_LARGE;
	s->slots[s->n++] = row->slot;
	return row->wrapped_len > KH_MK_SEAL_OVERHEAD ? KH_OK : KH_ERR_INTERNAL;
}

static void test_count_list(void **state)
{
	struct kh_hsm hsm;
	struct kh_key_row t;
	struct kh_key_summary sum[4];
	struct seen seen = {0};
	uint8_t m[32];
	uint64_t n = 0;
	size_t got = 0;
	bool more = false;
	char dir[256];

	kh_test_hsm_open(&hsm, dir);
	load_majors(&hsm, pmk, NULL);
	material(m, 7);
	assert_int_equal(kh_keystore_count(&hsm, 0, KH_SLOT_MAX, &n), KH_OK);
	assert_int_equal(n, 0);
	for (uint32_t slot = 1; slot <= 10; slot++) {
		template(&t, slot * 10, KH_MK_PMK);
		t.bits = slot;
		assert_int_equal(kh_keystore_put(&hsm, &t, m, 32, KH_KS_NEW_ID, "unit"), KH_OK);
	}
	assert_int_equal(kh_keystore_count(&hsm, 0, KH_SLOT_MAX, &n), KH_OK);
	assert_int_equal(n, 10);
	assert_int_equal(kh_keystore_count(&hsm, 25, 55, &n), KH_OK);
	assert_int_equal(n, 3);
	assert_int_equal(kh_keystore_list(&hsm, 0, sum, 4, &got, &more), KH_OK);
	assert_int_equal(got, 4);
	assert_true(more);
	assert_int_equal(sum[0].slot, 10);
	assert_int_equal(sum[3].slot, 40);
	assert_int_equal(sum[3].bits, 4);
	assert_string_equal(sum[3].ktype, "AES");
	assert_int_equal(kh_keystore_list(&hsm, 41, sum, 4, &got, &more), KH_OK);
	assert_int_equal(got, 4);
	assert_int_equal(sum[0].slot, 50);
	assert_true(more);
	assert_int_equal(kh_keystore_list(&hsm, 90, sum, 4, &got, &more), KH_OK);
	assert_int_equal(got, 2);
	assert_false(more);
	assert_int_equal(kh_keystore_foreach(&hsm, visit, &seen), KH_OK);
	assert_int_equal(seen.n, 10);
	for (size_t i = 0; i < 10; i++)
		assert_int_equal(seen.slots[i], (i + 1) * 10);
	kh_test_hsm_close(&hsm, dir);
	(void)state;
}

static uint32_t put_free(struct kh_hsm *hsm, const struct kh_ks_span *spans, size_t n,
                         const uint32_t *avoid, size_t navoid, int expect)
{
	struct kh_key_row t;
	uint8_t m[32];
	material(m, 3);
	template(&t, KH_SLOT_MAX + 1, KH_MK_PMK); /* the slot is chosen */
	assert_int_equal(
	    kh_keystore_put_free(hsm, &t, spans, n, avoid, navoid, m, 32, KH_KS_NEW_ID, "unit"),
	    expect);
	return t.slot;
}

/* The lowest free slot of the spans, gaps first, avoided slots skipped;
 * several picks in one transaction see each other. */
static void test_put_free(void **state)
{
	struct kh_hsm hsm;
	struct kh_key_row t, row;
	uint8_t m[32];
	char dir[256];
	static const struct kh_ks_span s10_20[] = {{10, 20}}, two[] = {{30, 31}, {5, 6}},
	                               taken[] = {{11, 11}}, bad[] = {{5, 4}},
	                               top[] = {{KH_SLOT_MAX - 1, KH_SLOT_MAX}};
	static const uint32_t avoid[] = {15, 16};

	kh_test_hsm_open(&hsm, dir);
	load_majors(&hsm, pmk, ftk);
	material(m, 1);
	for (uint32_t s = 10; s <= 14; s++) {
		if (s == 12)
			continue;
		template(&t, s, KH_MK_PMK);
		assert_int_equal(kh_keystore_put(&hsm, &t, m, 32, KH_KS_NEW_ID, "unit"), KH_OK);
	}
	assert_int_equal(put_free(&hsm, s10_20, 1, NULL, 0, KH_OK), 12);
	assert_int_equal(put_free(&hsm, s10_20, 1, avoid, 2, KH_OK), 17);
	assert_int_equal(put_free(&hsm, s10_20, 1, NULL, 0, KH_OK), 15);
	/* spans in any order: the lowest of all */
	assert_int_equal(put_free(&hsm, two, 2, NULL, 0, KH_OK), 5);
	assert_int_equal(put_free(&hsm, two, 2, NULL, 0, KH_OK), 6);
	assert_int_equal(put_free(&hsm, two, 2, NULL, 0, KH_OK), 30);
	assert_int_equal(put_free(&hsm, two, 2, NULL, 0, KH_OK), 31);
	put_free(&hsm, two, 2, NULL, 0, KH_ERR_SLOT_OUT_OF_RANGE);
	put_free(&hsm, taken, 1, NULL, 0, KH_ERR_SLOT_OUT_OF_RANGE);
	put_free(&hsm, s10_20, 0, NULL, 0, KH_ERR_SLOT_OUT_OF_RANGE);
	put_free(&hsm, bad, 1, NULL, 0, KH_ERR_INTERNAL);
	assert_int_equal(put_free(&hsm, top, 1, NULL, 0, KH_OK), KH_SLOT_MAX - 1);
	assert_int_equal(put_free(&hsm, top, 1, NULL, 0, KH_OK), KH_SLOT_MAX);
	put_free(&hsm, top, 1, NULL, 0, KH_ERR_SLOT_OUT_OF_RANGE);
	/* two picks in one transaction: distinct; rolled back, both gone */
	assert_int_equal(kh_db_begin(hsm.db), KH_OK);
	assert_int_equal(put_free(&hsm, s10_20, 1, NULL, 0, KH_OK), 16);
	assert_int_equal(put_free(&hsm, s10_20, 1, NULL, 0, KH_OK), 18);
	kh_db_rollback(hsm.db);
	assert_int_equal(kh_keystore_get(&hsm, 16, &row), KH_ERR_NOT_FOUND);
	assert_int_equal(kh_keystore_get(&hsm, 18, &row), KH_ERR_NOT_FOUND);
	/* the picked row is a row like any other */
	assert_int_equal(put_free(&hsm, s10_20, 1, NULL, 0, KH_OK), 16);
	material(m, 3);
	kh_test_assert_key(&hsm, 16, m, 32);
	uint64_t n = 0;
	assert_int_equal(kh_keystore_count(&hsm, 0, KH_SLOT_MAX, &n), KH_OK);
	assert_int_equal(n, 4 + 3 + 4 + 2 + 1);
	kh_test_hsm_close(&hsm, dir);
	(void)state;
}

/* New bound attributes for a row: same slot, identifier and material; the
 * row must still be the one the caller read, and must open. */
static void test_rewrite(void **state)
{
	static uint8_t attrs2[] = {0x01, 0x00, 0x01, 0x00, 0x02};
	struct kh_hsm hsm;
	struct kh_key_row t, was, now, row;
	uint8_t m[32], m2[40], *out = NULL;
	size_t olen = 0;
	char dir[256];

	kh_test_hsm_open(&hsm, dir);
	load_majors(&hsm, pmk, ftk);
	material(m, 5);
	template(&t, 100, KH_MK_PMK);
	assert_int_equal(kh_keystore_put(&hsm, &t, m, 32, KH_KS_NEW_ID, "unit"), KH_OK);
	assert_int_equal(kh_keystore_get(&hsm, 100, &was), KH_OK);
	now = was;
	now.attrs = attrs2;
	now.attrs_len = sizeof(attrs2);
	assert_int_equal(kh_keystore_rewrite(&hsm, &was, &now, NULL, 0, "unit", "usage"), KH_OK);
	assert_int_equal(kh_keystore_get(&hsm, 100, &row), KH_OK);
	assert_memory_equal(row.key_id, was.key_id, KH_KEY_ID_LEN);
	assert_int_equal(row.attrs_len, sizeof(attrs2));
	assert_memory_equal(row.attrs, attrs2, sizeof(attrs2));
	assert_int_equal(row.label_len, 8); /* descriptive columns stay */
	kh_keystore_row_free(&row);
	kh_test_assert_key(&hsm, 100, m, 32);
	/* the caller's view is stale now */
	assert_int_equal(kh_keystore_rewrite(&hsm, &was, &now, NULL, 0, "unit", "x"), KH_ERR_BUSY);
	/* a new value, and with it a new length */
	memset(m2, 0x77, sizeof(m2));
	struct kh_key_row was2 = now, now2 = now;
	now2.bits = 320;
	assert_int_equal(kh_keystore_rewrite(&hsm, &was2, &now2, m2, sizeof(m2), "unit", "value"),
	                 KH_OK);
	kh_test_assert_key(&hsm, 100, m2, sizeof(m2));
	/* what a rewrite may not change, and another key */
	struct kh_key_row other = now2;
	snprintf(other.cls, sizeof(other.cls), "private");
	assert_int_equal(kh_keystore_rewrite(&hsm, &now2, &other, NULL, 0, "unit", ""),
	                 KH_ERR_INTERNAL);
	other = now2;
	other.key_id[0] ^= 1;
	assert_int_equal(kh_keystore_rewrite(&hsm, &other, &other, NULL, 0, "unit", ""),
	                 KH_ERR_NOT_FOUND);
	other = now2;
	other.slot = 101;
	assert_int_equal(kh_keystore_rewrite(&hsm, &other, &other, NULL, 0, "unit", ""),
	                 KH_ERR_NOT_FOUND);
	/* an altered row is refused and left as it is */
	assert_int_equal(kh_test_db_exec(&hsm, FLIP_WRAPPED_BYTE), SQLITE_OK);
	struct kh_key_row back = now2;
	back.attrs = was.attrs;
	back.attrs_len = was.attrs_len;
	assert_int_equal(kh_keystore_rewrite(&hsm, &now2, &back, NULL, 0, "unit", ""),
	                 KH_ERR_CRYPTO);
	assert_int_equal(kh_keystore_get(&hsm, 100, &row), KH_OK);
	assert_memory_equal(row.attrs, attrs2, sizeof(attrs2));
	assert_int_equal(kh_keystore_unwrap(&hsm, &row, &out, &olen), KH_ERR_CRYPTO);
	kh_keystore_row_free(&row);
	kh_keystore_row_free(&was);
	kh_test_hsm_close(&hsm, dir);
	(void)state;
}

int main(void)
{
	memset(pmk, 0x5C, sizeof(pmk));
	memset(ftk, 0x3A, sizeof(ftk));
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_put_get_unwrap),    cmocka_unit_test(test_tamper),
	    cmocka_unit_test(test_replicate_wrapped), cmocka_unit_test(test_count_list),
	    cmocka_unit_test(test_put_free),          cmocka_unit_test(test_rewrite),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

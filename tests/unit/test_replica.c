/* Replication between group members (KTEX, KTIM, KTCK, CFEX, CFIM): two
 * devices made with the same test major keys, a guardian identity on each,
 * round trips and every refusal: altered rows, another major key, occupied
 * slots, a replayed older row, missing permission, paging edges, check
 * values equal and unequal, and a configuration that would lock out its
 * importer. */
#include "kh_testutil.h"
#include "hsm/backup.h"
#include "hsm/db.h"
#include "hsm/keystore.h"
#include "hsm/majorkey.h"
#include "hsm/replica.h"
#include "common/kh_err.h"
#include "common/kh_mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GUARD_CMDS "KTEX,KTIM,KTCK,CFEX,CFIM"

struct pair {
	struct kh_test_fx *a, *b;
	struct kh_session ga, gb; /* the guardian logged in on each */
};

/* The guardian's role and identity on x, logged in on g with password pw. */
static void guardian(struct kh_test_fx *x, struct kh_session *g, const char *pm, const char *cm,
                     const char *pw)
{
	char hex[128];
	kh_test_hexstr(pw, hex);
	assert_int_equal(KH_CALLF(x, &x->admin,
	                          "[AORLAD;RNGuardian;LQ1;PTprod;CSethernet;DFnever;PM%s;KR;CM%s;]", pm,
	                          cm),
	                 KH_OK);
	assert_int_equal(KH_CALLF(x, &x->admin, "[AOIDAD;IDguardian;RNGuardian;PW%s;]", hex), KH_OK);
	kh_test_session(g, KH_PORT_PROD);
	assert_int_equal(KH_LOGN(x, g, "guardian", pw, NULL), KH_OK);
}

static int setup(void **state)
{
	struct pair *p = calloc(1, sizeof(*p));
	void *s = NULL;
	assert_non_null(p);
	assert_int_equal(kh_test_fx_setup_keys(&s), 0);
	p->a = s;
	assert_int_equal(kh_test_fx_setup_keys(&s), 0);
	p->b = s;
	guardian(p->a, &p->ga, "replication", GUARD_CMDS, "guardian-pass-A");
	guardian(p->b, &p->gb, "replication", GUARD_CMDS, "guardian-pass-B");
	*state = p;
	return 0;
}

static int teardown(void **state)
{
	struct pair *p = *state;
	void *s = p->a;
	kh_test_fx_teardown(&s);
	s = p->b;
	kh_test_fx_teardown(&s);
	free(p);
	return 0;
}

/* KTEX of [lo, hi] on x in one page: the RW list (malloc'd). */
static char *export_range(struct kh_test_fx *x, struct kh_session *g, uint32_t lo, uint32_t hi)
{
	assert_int_equal(KH_CALLF(x, g, "[AOKTEX;SL%u;SH%u;NM1000;]", lo, hi), KH_OK);
	assert_string_equal(kh_test_field(x->out, "NX"), "");
	return kh_test_fx_field(x, "RW");
}

/* KTCK of [lo, hi] on x: "count/checkvalue" (malloc'd). */
static char *check(struct kh_test_fx *x, struct kh_session *g, uint32_t lo, uint32_t hi)
{
	char *s, *rn;
	assert_int_equal(KH_CALLF(x, g, "[AOKTCK;SL%u;SH%u;]", lo, hi), KH_OK);
	rn = kh_test_fx_field(x, "RN");
	assert_int_equal(asprintf(&s, "%s/%s", rn, kh_test_field(x->out, "CK")),
	                 (int)strlen(rn) + 1 + 64);
	free(rn);
	return s;
}

static void assert_same_table(struct pair *p, uint32_t lo, uint32_t hi, bool same)
{
	char *ca = check(p->a, &p->ga, lo, hi), *cb = check(p->b, &p->gb, lo, hi);
	if (same)
		assert_string_equal(ca, cb);
	else
		assert_string_not_equal(ca, cb);
	free(ca);
	free(cb);
}

/* The key in slot of x, unwrapped (the caller frees it securely). */
static uint8_t *material(struct kh_test_fx *x, uint32_t slot, size_t *n)
{
	struct kh_key_row row;
	uint8_t *m = NULL;
	assert_int_equal(kh_keystore_get(&x->hsm, slot, &row), KH_OK);
	assert_int_equal(kh_keystore_unwrap(&x->hsm, &row, &m, n), KH_OK);
	kh_keystore_row_free(&row);
	return m;
}

static void test_round_trip(void **state)
{
	struct pair *p = *state;
	assert_int_equal(kh_test_fill_keys(&p->a->hsm, 100, 20), 0);
	assert_same_table(p, 0, KH_SLOT_MAX, false);
	char *rw = export_range(p->a, &p->ga, 0, KH_SLOT_MAX);
	assert_string_equal(kh_test_field(p->a->out, "RN"), "20");

	assert_int_equal(KH_CALLF(p->b, &p->gb, "[AOKTIM;RW%s;]", rw), KH_OK);
	assert_string_equal(kh_test_field(p->b->out, "NA"), "20");
	assert_same_table(p, 0, KH_SLOT_MAX, true);
	/* the same key on both, in the same slot, under the same identifier */
	size_t na, nb;
	uint8_t *ma = material(p->a, 107, &na), *mb = material(p->b, 107, &nb);
	assert_int_equal(na, nb);
	assert_memory_equal(ma, mb, na);
	kh_secure_free(ma, na);
	kh_secure_free(mb, nb);
	/* the exports are byte for byte alike */
	char *rwb = export_range(p->b, &p->gb, 0, KH_SLOT_MAX);
	assert_string_equal(rw, rwb);
	free(rwb);

	/* re-applying is no change */
	assert_int_equal(KH_CALLF(p->b, &p->gb, "[AOKTIM;RW%s;]", rw), KH_OK);
	assert_string_equal(kh_test_field(p->b->out, "NS"), "20");
	assert_string_equal(kh_test_field(p->b->out, "NA"), "0");
	assert_same_table(p, 0, KH_SLOT_MAX, true);
	free(rw);

	/* every import and delete is audited */
	int64_t n = 0;
	assert_int_equal(kh_db_int(p->b->hsm.db,
	                           "SELECT COUNT(*) FROM audit WHERE event = 'key.replicate'", NULL, 0,
	                           &n),
	                 KH_OK);
	assert_int_equal(n, 20);
}

static void test_single_slot(void **state)
{
	struct pair *p = *state;
	struct kh_key_row row;
	assert_int_equal(kh_test_fill_keys(&p->a->hsm, 100, 3), 0);
	assert_int_equal(kh_keystore_get(&p->a->hsm, 101, &row), KH_OK);
	char *kd = kh_test_hex(row.key_id, KH_KEY_ID_LEN);

	assert_int_equal(KH_CALLF(p->a, &p->ga, "[AOKTEX;SL101;KD%s;]", kd), KH_OK);
	assert_string_equal(kh_test_field(p->a->out, "RN"), "1");
	/* the row decodes to the stored columns */
	size_t n = 0;
	uint8_t *bin = kh_test_unhex_dup(kh_test_field(p->a->out, "RW"), &n);
	struct kh_key_row got;
	assert_int_equal(kh_ktrow_decode(bin, n, &got), KH_OK);
	assert_int_equal(got.slot, 101);
	assert_memory_equal(got.key_id, row.key_id, KH_KEY_ID_LEN);
	assert_int_equal(got.wrapped_len, row.wrapped_len);
	assert_memory_equal(got.wrapped, row.wrapped, row.wrapped_len);
	assert_int_equal(got.label_len, row.label_len);
	assert_int_equal(kh_ktrow_len(&got), n);
	free(bin);

	assert_int_equal(KH_CALLF(p->a, &p->ga, "[AOKTEX;SL102;KD%s;]", kd), KH_ERR_NOT_FOUND);
	assert_non_null(strstr(p->a->out, "key identifier differs"));
	assert_int_equal(KH_CALL(p->a, &p->ga, "[AOKTEX;SL500;]"), KH_ERR_NOT_FOUND);
	assert_int_equal(KH_CALLF(p->a, &p->ga, "[AOKTEX;SL101;NM5;KD%s;]", kd), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(p->a, &p->ga, "[AOKTEX;]"), KH_ERR_MISSING_FIELD);
	free(kd);
	kh_keystore_row_free(&row);
}

static void test_paging(void **state)
{
	struct pair *p = *state;
	char sl[16] = "0";
	unsigned total = 0, pages = 0;
	assert_int_equal(kh_test_fill_keys(&p->a->hsm, 100, 25), 0);
	for (;;) {
		assert_int_equal(KH_CALLF(p->a, &p->ga, "[AOKTEX;SL%s;NM10;]", sl), KH_OK);
		total += (unsigned)atoi(kh_test_field(p->a->out, "RN"));
		pages++;
		const char *nx = kh_test_field(p->a->out, "NX");
		if (!*nx)
			break;
		snprintf(sl, sizeof(sl), "%s", nx);
		if (pages == 1)
			assert_string_equal(nx, "110");
	}
	assert_int_equal(total, 25);
	assert_int_equal(pages, 3);
	/* a page that ends exactly at the last row says no more */
	assert_int_equal(KH_CALL(p->a, &p->ga, "[AOKTEX;SL115;NM10;]"), KH_OK);
	assert_string_equal(kh_test_field(p->a->out, "RN"), "10");
	assert_string_equal(kh_test_field(p->a->out, "NX"), "");
	/* SH bounds the range; NX stays inside it */
	assert_int_equal(KH_CALL(p->a, &p->ga, "[AOKTEX;SL100;SH104;NM3;]"), KH_OK);
	assert_string_equal(kh_test_field(p->a->out, "RN"), "3");
	assert_string_equal(kh_test_field(p->a->out, "NX"), "103");
	assert_int_equal(KH_CALL(p->a, &p->ga, "[AOKTEX;SL103;SH104;NM3;]"), KH_OK);
	assert_string_equal(kh_test_field(p->a->out, "RN"), "2");
	assert_string_equal(kh_test_field(p->a->out, "NX"), "");
	/* an empty range: no rows */
	assert_int_equal(KH_CALL(p->a, &p->ga, "[AOKTEX;SL0;SH99;]"), KH_OK);
	assert_string_equal(kh_test_field(p->a->out, "RN"), "0");
	assert_string_equal(kh_test_field(p->a->out, "RW"), "");
	/* bounds */
	assert_int_equal(KH_CALL(p->a, &p->ga, "[AOKTEX;SL0;NM0;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(p->a, &p->ga, "[AOKTEX;SL0;NM1001;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(p->a, &p->ga, "[AOKTEX;SL10;SH9;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(p->a, &p->ga, "[AOKTEX;SL1000000;NM1;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(p->a, &p->ga, "[AOKTCK;SL10;SH9;]"), KH_ERR_BAD_FIELD);
}

/* Export slot's row from x, let edit change it, and return it as hex. */
static char *edited_row(struct kh_test_fx *x, struct kh_session *g, uint32_t slot,
                        void (*edit)(struct kh_key_row *row))
{
	size_t n = 0;
	struct kh_key_row row;
	assert_int_equal(KH_CALLF(x, g, "[AOKTEX;SL%u;]", slot), KH_OK);
	uint8_t *bin = kh_test_unhex_dup(kh_test_field(x->out, "RW"), &n);
	assert_int_equal(kh_ktrow_decode(bin, n, &row), KH_OK);
	edit(&row);
	size_t m = kh_ktrow_len(&row);
	assert_true(m > 0);
	uint8_t *enc = malloc(m);
	assert_non_null(enc);
	kh_ktrow_encode(&row, enc);
	char *hex = kh_test_hex(enc, m);
	free(enc);
	free(bin);
	return hex;
}

static void edit_bits(struct kh_key_row *row) { row->bits = 128; }
static void edit_wrapped(struct kh_key_row *row) { row->wrapped[row->wrapped_len - 1] ^= 1; }
static void edit_slot(struct kh_key_row *row) { row->slot = 150; }
static void edit_id(struct kh_key_row *row) { row->key_id[0] ^= 0x80; }
static void edit_label(struct kh_key_row *row)
{
	static uint8_t l[] = "renamed";
	row->label = l;
	row->label_len = sizeof(l) - 1;
}

static void test_tampered(void **state)
{
	struct pair *p = *state;
	void (*const edits[])(struct kh_key_row *) = {edit_bits, edit_wrapped, edit_slot, edit_id};
	assert_int_equal(kh_test_fill_keys(&p->a->hsm, 100, 2), 0);
	char *good = edited_row(p->a, &p->ga, 100, edit_label);
	for (size_t i = 0; i < sizeof(edits) / sizeof(edits[0]); i++) {
		char *bad = edited_row(p->a, &p->ga, 101, edits[i]);
		/* a good row first: nothing at all is written */
		assert_int_equal(KH_CALLF(p->b, &p->gb, "[AOKTIM;RW%s,%s;]", good, bad),
		                 KH_ERR_CRYPTO);
		assert_non_null(strstr(p->b->out, "does not open"));
		assert_int_equal(KH_CALL(p->b, &p->gb, "[AOKTCK;]"), KH_OK);
		assert_string_equal(kh_test_field(p->b->out, "RN"), "0");
		free(bad);
	}
	/* descriptive attributes are not bound: a changed label is a change */
	assert_int_equal(KH_CALLF(p->b, &p->gb, "[AOKTIM;RW%s;]", good), KH_OK);
	free(good);
	/* not a row at all */
	assert_int_equal(KH_CALL(p->b, &p->gb, "[AOKTIM;RW0100;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(p->b, &p->gb, "[AOKTIM;RWZZ;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(p->b, &p->gb, "[AOKTIM;RP;]"), KH_ERR_MISSING_FIELD);
}

static void test_foreign_major_key(void **state)
{
	struct pair *p = *state;
	void *s = NULL;
	struct kh_session gc;
	uint8_t other[32];
	memset(other, 0x5a, sizeof(other));
	assert_int_equal(kh_test_fx_setup_admin(&s), 0);
	struct kh_test_fx *c = s;
	assert_int_equal(kh_mk_load(&c->hsm, KH_MK_PMK, other, 32, "unit", "mk.load", "test", NULL),
	                 KH_OK);
	guardian(c, &gc, "replication", GUARD_CMDS, "guardian-pass-C");

	assert_int_equal(kh_test_fill_keys(&p->a->hsm, 100, 1), 0);
	char *rw = export_range(p->a, &p->ga, 0, KH_SLOT_MAX);
	assert_int_equal(KH_CALLF(c, &gc, "[AOKTIM;RW%s;]", rw), KH_ERR_CRYPTO);
	free(rw);
	/* and its configuration */
	assert_int_equal(KH_CALL(p->a, &p->ga, "[AOCFEX;]"), KH_OK);
	char *cf = kh_test_fx_field(p->a, "CF");
	assert_int_equal(KH_CALLF(c, &gc, "[AOCFIM;CF%s;]", cf), KH_ERR_BAD_KCV);
	free(cf);
	kh_test_fx_teardown(&s);
}

static void test_occupied_and_delete(void **state)
{
	struct pair *p = *state;
	struct kh_key_row row;
	assert_int_equal(kh_test_fill_keys(&p->a->hsm, 100, 2), 0);
	assert_int_equal(kh_test_fill_keys(&p->b->hsm, 101, 1), 0); /* another key in 101 */
	char *rw = export_range(p->a, &p->ga, 0, KH_SLOT_MAX);
	assert_int_equal(KH_CALLF(p->b, &p->gb, "[AOKTIM;RW%s;]", rw), KH_ERR_EXISTS);
	assert_non_null(strstr(p->b->out, "slot 101"));
	assert_int_equal(kh_keystore_get(&p->b->hsm, 100, &row), KH_ERR_NOT_FOUND);
	assert_int_equal(KH_CALLF(p->b, &p->gb, "[AOKTIM;RW%s;RPY;]", rw), KH_OK);
	assert_string_equal(kh_test_field(p->b->out, "NA"), "1");
	assert_string_equal(kh_test_field(p->b->out, "NR"), "1");
	assert_same_table(p, 0, KH_SLOT_MAX, true);
	free(rw);

	/* delete by slot and identifier; a replay, or another key, is left alone */
	assert_int_equal(kh_keystore_get(&p->b->hsm, 100, &row), KH_OK);
	char *kd = kh_test_hex(row.key_id, KH_KEY_ID_LEN);
	kh_keystore_row_free(&row);
	assert_int_equal(KH_CALLF(p->b, &p->gb, "[AOKTIM;DL101:%s;]", kd), KH_OK);
	assert_string_equal(kh_test_field(p->b->out, "NG"), "1");
	assert_int_equal(KH_CALLF(p->b, &p->gb, "[AOKTIM;DL100:%s;]", kd), KH_OK);
	assert_string_equal(kh_test_field(p->b->out, "ND"), "1");
	assert_int_equal(kh_keystore_get(&p->b->hsm, 100, &row), KH_ERR_NOT_FOUND);
	assert_int_equal(KH_CALLF(p->b, &p->gb, "[AOKTIM;DL100:%s;]", kd), KH_OK);
	assert_string_equal(kh_test_field(p->b->out, "NG"), "1");
	assert_int_equal(KH_CALL(p->b, &p->gb, "[AOKTIM;DL100;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(p->b, &p->gb, "[AOKTIM;DL1000000:%s;]", kd), KH_ERR_BAD_FIELD);
	free(kd);
}

static void test_replayed_older_row(void **state)
{
	struct pair *p = *state;
	struct kh_session app;
	kh_test_app_login(p->a, &app, "GPGS,GPKS");
	assert_int_equal(KH_CALL(p->a, &app, "[AOGPGS;CT6;SL100;KFXSM;]"), KH_OK);
	assert_int_equal(KH_CALL(p->a, &p->ga, "[AOKTEX;SL100;]"), KH_OK);
	char *older = kh_test_fx_field(p->a, "RW");
	assert_int_equal(KH_CALL(p->a, &app, "[AOGPKS;SL100;KFS;]"), KH_OK); /* X and M removed */
	assert_int_equal(KH_CALL(p->a, &p->ga, "[AOKTEX;SL100;]"), KH_OK);
	char *newer = kh_test_fx_field(p->a, "RW");

	assert_int_equal(KH_CALLF(p->b, &p->gb, "[AOKTIM;RW%s;]", older), KH_OK);
	assert_int_equal(KH_CALLF(p->b, &p->gb, "[AOKTIM;RW%s;]", newer), KH_OK);
	assert_string_equal(kh_test_field(p->b->out, "NU"), "1");
	assert_same_table(p, 0, KH_SLOT_MAX, true);
	/* the older row would make the key exportable again */
	assert_int_equal(KH_CALLF(p->b, &p->gb, "[AOKTIM;RW%s;]", older), KH_ERR_KEY_USAGE);
	assert_same_table(p, 0, KH_SLOT_MAX, true);
	free(older);
	free(newer);
}

static void test_permission(void **state)
{
	struct pair *p = *state;
	struct kh_session g2, g3;
	char hex[64];
	/* enabled commands, no replication permission */
	assert_int_equal(KH_CALL(p->a, &p->a->admin,
	                         "[AORLAD;RNNoRepl;LQ1;PTprod;CSethernet;DFnever;PMkeys;KR;CM" GUARD_CMDS
	                         ";]"),
	                 KH_OK);
	kh_test_hexstr("norepl-pass-1", hex);
	assert_int_equal(KH_CALLF(p->a, &p->a->admin, "[AOIDAD;IDnorepl;RNNoRepl;PW%s;]", hex), KH_OK);
	kh_test_session(&g2, KH_PORT_PROD);
	assert_int_equal(KH_LOGN(p->a, &g2, "norepl", "norepl-pass-1", NULL), KH_OK);
	const char *const reqs[] = {"[AOKTEX;SL0;NM1;]", "[AOKTIM;RW00;]", "[AOKTCK;]", "[AOCFEX;]",
	                            "[AOCFIM;CF00;]"};
	for (size_t i = 0; i < 5; i++) {
		assert_int_equal(KH_CALL(p->a, &g2, reqs[i]), KH_ERR_PERMISSION_DENIED);
		assert_non_null(strstr(p->a->out, "replication"));
	}
	/* the permission, but the commands not enabled */
	assert_int_equal(KH_CALL(p->a, &p->a->admin,
	                         "[AORLAD;RNReplNoCmd;LQ1;PTprod;CSethernet;DFnever;PMreplication;KR;"
	                         "CMECHO;]"),
	                 KH_OK);
	kh_test_hexstr("replnocmd-pass-1", hex);
	assert_int_equal(KH_CALLF(p->a, &p->a->admin, "[AOIDAD;IDreplnocmd;RNReplNoCmd;PW%s;]", hex),
	                 KH_OK);
	kh_test_session(&g3, KH_PORT_PROD);
	assert_int_equal(KH_LOGN(p->a, &g3, "replnocmd", "replnocmd-pass-1", NULL), KH_OK);
	for (size_t i = 0; i < 5; i++)
		assert_int_equal(KH_CALL(p->a, &g3, reqs[i]), KH_ERR_COMMAND_NOT_ALLOWED);
	/* Transaction Processing enables every Excrypt command, without the permission */
	struct kh_session tp;
	kh_test_session(&tp, KH_PORT_PROD);
	assert_int_equal(KH_CALL(p->a, &tp, "[AOKTCK;]"), KH_ERR_PERMISSION_DENIED);
	/* not on the Admin port */
	assert_int_equal(KH_CALL(p->a, &p->a->admin, "[AOKTCK;]"), KH_ERR_COMMAND_NOT_ALLOWED);
}

static void test_check_value(void **state)
{
	struct pair *p = *state;
	assert_int_equal(kh_test_fill_keys(&p->a->hsm, 100, 16), 0);
	char *rw = export_range(p->a, &p->ga, 0, KH_SLOT_MAX);
	assert_int_equal(KH_CALLF(p->b, &p->gb, "[AOKTIM;RW%s;]", rw), KH_OK);
	free(rw);
	assert_same_table(p, 0, KH_SLOT_MAX, true);
	/* empty ranges agree, and differ from non-empty ones */
	assert_same_table(p, 0, 99, true);
	char *e = check(p->a, &p->ga, 0, 99), *f = check(p->a, &p->ga, 100, 100);
	assert_string_not_equal(e, f);
	free(e);
	free(f);

	/* one label changes on b: the whole table and the halves holding it
	 * differ, the others agree: bisect to the slot */
	static const uint8_t l[] = "changed";
	assert_int_equal(kh_keystore_set_desc(&p->b->hsm, 109, l, sizeof(l) - 1, NULL, 0, NULL, 0,
	                                      "unit"),
	                 KH_OK);
	assert_same_table(p, 0, KH_SLOT_MAX, false);
	uint32_t lo = 100, hi = 115;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		char *ca = check(p->a, &p->ga, lo, mid), *cb = check(p->b, &p->gb, lo, mid);
		bool left = strcmp(ca, cb) != 0;
		free(ca);
		free(cb);
		if (left) {
			hi = mid;
		} else {
			assert_same_table(p, lo, mid, true);
			lo = mid + 1;
		}
	}
	assert_int_equal(lo, 109);
	/* a row missing on one side changes the count and the value */
	assert_int_equal(kh_keystore_delete(&p->b->hsm, 109, "unit"), KH_OK);
	char *ca = check(p->a, &p->ga, 100, 115), *cb = check(p->b, &p->gb, 100, 115);
	assert_true(strncmp(ca, "16/", 3) == 0);
	assert_true(strncmp(cb, "15/", 3) == 0);
	free(ca);
	free(cb);
	/* copying the row back makes them equal again */
	assert_int_equal(KH_CALL(p->a, &p->ga, "[AOKTEX;SL109;]"), KH_OK);
	char *one = kh_test_fx_field(p->a, "RW");
	assert_int_equal(KH_CALLF(p->b, &p->gb, "[AOKTIM;RW%s;]", one), KH_OK);
	free(one);
	assert_same_table(p, 0, KH_SLOT_MAX, true);
}

static int64_t count_of(struct kh_test_fx *x, const char *sql)
{
	int64_t n = -1;
	assert_int_equal(kh_db_int(x->hsm.db, sql, NULL, 0, &n), KH_OK);
	return n;
}

static void test_config(void **state)
{
	struct pair *p = *state;
	char hex[64];
	struct kh_session ops;
	kh_test_hexstr("operator-pass-1", hex);
	assert_int_equal(KH_CALL(p->a, &p->a->admin,
	                         "[AORLAD;RNOps;LQ1;PTprod;CSethernet;DFnever;PMkeys;KRS:5-9;CMECHO;]"),
	                 KH_OK);
	assert_int_equal(KH_CALLF(p->a, &p->a->admin, "[AOIDAD;IDoperator;RNOps;PW%s;]", hex), KH_OK);
	assert_int_equal(KH_CALL(p->a, &p->a->admin, "[AOSETS;LT7;]"), KH_OK);
	/* a failed login on a is not exported */
	kh_test_session(&ops, KH_PORT_PROD);
	assert_int_equal(KH_LOGN(p->a, &ops, "operator", "wrong-password", NULL), KH_ERR_AUTH_FAILED);
	assert_int_equal(count_of(p->a, "SELECT failures FROM identities WHERE name='operator'"), 1);

	assert_int_equal(KH_CALL(p->a, &p->ga, "[AOCFEX;]"), KH_OK);
	char *cf = kh_test_fx_field(p->a, "CF");
	assert_string_equal(kh_test_field(p->a->out, "IC"), "4");

	/* altered: refused, nothing changed */
	char *bad = strdup(cf);
	size_t n = strlen(bad);
	bad[n - 1] = bad[n - 1] == '0' ? '1' : '0';
	assert_int_equal(KH_CALLF(p->b, &p->gb, "[AOCFIM;CF%s;]", bad), KH_ERR_CRYPTO);
	bad[0] = '0';
	assert_int_equal(KH_CALLF(p->b, &p->gb, "[AOCFIM;CF%s;]", bad), KH_ERR_BAD_FIELD);
	free(bad);
	assert_int_equal(count_of(p->b, "SELECT COUNT(*) FROM roles WHERE name='Ops'"), 0);

	assert_int_equal(KH_CALLF(p->b, &p->gb, "[AOCFIM;CF%s;]", cf), KH_OK);
	assert_string_equal(kh_test_field(p->b->out, "RC"), "4");
	assert_int_equal(count_of(p->b, "SELECT COUNT(*) FROM roles WHERE name='Ops'"), 1);
	assert_int_equal(count_of(p->b, "SELECT failures FROM identities WHERE name='operator'"), 0);
	assert_int_equal(p->b->hsm.lockout_threshold, 7);
	/* the operator logs in on b with a's password */
	kh_test_session(&ops, KH_PORT_PROD);
	assert_int_equal(KH_LOGN(p->b, &ops, "operator", "operator-pass-1", NULL), KH_OK);
	/* the guardian keeps b's own password, not a's */
	struct kh_session g;
	kh_test_session(&g, KH_PORT_PROD);
	assert_int_equal(KH_LOGN(p->b, &g, "guardian", "guardian-pass-A", NULL), KH_ERR_AUTH_FAILED);
	assert_int_equal(KH_LOGN(p->b, &g, "guardian", "guardian-pass-B", NULL), KH_OK);
	/* applying it again is fine, from the surviving session too */
	assert_int_equal(KH_CALLF(p->b, &g, "[AOCFIM;CF%s;]", cf), KH_OK);
	assert_int_equal(count_of(p->b, "SELECT COUNT(*) FROM audit WHERE event='config.import'"), 2);
	free(cf);
}

/* KTCK CF: the configuration's digest moves with a change and not with a
 * failed login, and is not audited. */
static void test_config_digest(void **state)
{
	struct pair *p = *state;
	struct kh_session ops;
	char *d0, *d1;
	int64_t audits = count_of(p->a, "SELECT COUNT(*) FROM audit");
	assert_int_equal(KH_CALL(p->a, &p->ga, "[AOKTCK;CFY;]"), KH_OK);
	d0 = kh_test_fx_field(p->a, "CD");
	assert_int_equal(strlen(d0), 64);
	assert_int_equal(KH_CALL(p->a, &p->ga, "[AOKTCK;CFY;]"), KH_OK);
	assert_string_equal(kh_test_field(p->a->out, "CD"), d0);
	assert_int_equal(count_of(p->a, "SELECT COUNT(*) FROM audit"), audits);
	kh_test_session(&ops, KH_PORT_PROD);
	assert_int_equal(KH_LOGN(p->a, &ops, "guardian", "wrong-password", NULL), KH_ERR_AUTH_FAILED);
	assert_int_equal(KH_CALL(p->a, &p->ga, "[AOKTCK;CFY;]"), KH_OK);
	assert_string_equal(kh_test_field(p->a->out, "CD"), d0);
	assert_int_equal(KH_CALL(p->a, &p->a->admin, "[AOSETS;LT7;]"), KH_OK);
	assert_int_equal(KH_CALL(p->a, &p->ga, "[AOKTCK;CFY;]"), KH_OK);
	d1 = kh_test_fx_field(p->a, "CD");
	assert_string_not_equal(d0, d1);
	/* CF with a range, or not Y/N: refused */
	assert_int_equal(KH_CALL(p->a, &p->ga, "[AOKTCK;CFY;SL1;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(p->a, &p->ga, "[AOKTCK;CFX;]"), KH_ERR_BAD_FIELD);
	free(d0);
	free(d1);
}

static void test_config_lockout(void **state)
{
	struct pair *p = *state;
	/* a's Guardian role without CFIM: importing it would lock b's guardian out */
	assert_int_equal(KH_CALL(p->a, &p->a->admin, "[AORLMD;RNGuardian;CMKTEX,KTIM,KTCK,CFEX;]"),
	                 KH_OK);
	assert_int_equal(KH_CALL(p->a, &p->ga, "[AOCFEX;]"), KH_OK);
	char *cf = kh_test_fx_field(p->a, "CF");
	assert_int_equal(KH_CALLF(p->b, &p->gb, "[AOCFIM;CF%s;]", cf), KH_ERR_STATE);
	assert_non_null(strstr(p->b->out, "lock out"));
	free(cf);
	/* a's configuration without the guardian identity */
	assert_int_equal(KH_CALL(p->a, &p->a->admin, "[AORLMD;RNGuardian;CM" GUARD_CMDS ";]"), KH_OK);
	assert_int_equal(KH_CALL(p->a, &p->a->admin, "[AOIDDL;IDguardian;]"), KH_OK);
	char *cf2 = NULL;
	{
		uint8_t *blob = NULL;
		size_t len = 0;
		struct kh_backup_counts cnt;
		assert_int_equal(kh_config_export(&p->a->hsm, "unit", &blob, &len, &cnt), KH_OK);
		cf2 = kh_test_hex(blob, len);
		free(blob);
	}
	assert_int_equal(KH_CALLF(p->b, &p->gb, "[AOCFIM;CF%s;]", cf2), KH_ERR_STATE);
	assert_non_null(strstr(p->b->out, "lacks the importing identity"));
	free(cf2);
	/* nothing changed on b */
	assert_int_equal(count_of(p->b, "SELECT COUNT(*) FROM audit WHERE event='config.import'"), 0);
	assert_int_equal(KH_CALL(p->b, &p->gb, "[AOKTCK;]"), KH_OK);
	/* CFIM under Transaction Processing (no login) is refused before anything */
	assert_int_equal(KH_CALL(p->b, &p->b->admin,
	                         "[AORLMD;RNTransaction Processing;PMkeys,keys.all_slots,replication;]"),
	                 KH_OK);
	struct kh_session tp;
	kh_test_session(&tp, KH_PORT_PROD);
	assert_int_equal(KH_CALL(p->b, &tp, "[AOCFIM;CF00;]"), KH_ERR_NOT_LOGGED_IN);
}

/* The row decoder refuses every truncation and trailing byte. */
static void test_row_layout_edges(void **state)
{
	struct pair *p = *state;
	struct kh_key_row got;
	size_t n = 0;
	assert_int_equal(kh_test_fill_keys(&p->a->hsm, 100, 1), 0);
	assert_int_equal(KH_CALL(p->a, &p->ga, "[AOKTEX;SL100;]"), KH_OK);
	uint8_t *bin = kh_test_unhex_dup(kh_test_field(p->a->out, "RW"), &n);
	uint8_t *longer = malloc(n + 1);
	assert_non_null(longer);
	memcpy(longer, bin, n);
	longer[n] = 0;
	assert_int_equal(kh_ktrow_decode(bin, n, &got), KH_OK);
	for (size_t i = 0; i < n; i++)
		assert_int_equal(kh_ktrow_decode(bin, i, &got), KH_ERR_BAD_FIELD);
	assert_int_equal(kh_ktrow_decode(longer, n + 1, &got), KH_ERR_BAD_FIELD);
	bin[0] = 2; /* another version */
	assert_int_equal(kh_ktrow_decode(bin, n, &got), KH_ERR_BAD_FIELD);
	free(longer);
	free(bin);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_single_slot, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_paging, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_tampered, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_foreign_major_key, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_occupied_and_delete, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_replayed_older_row, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_permission, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_check_value, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_config, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_config_digest, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_config_lockout, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_row_layout_edges, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

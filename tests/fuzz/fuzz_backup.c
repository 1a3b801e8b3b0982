/*
 * libFuzzer target for the backup file header and plaintext body decoders
 * (hsm/backup.h). The first input byte is a mode: bits 0-1 the scope
 * handed to kh_backup_decode (0 must be refused), bits 2-7 an item number
 * at which a second visitor fails (0: never). The rest is both a header and
 * a body. Every item handed to a visitor must be within its documented
 * bounds and order, the counts must be what the visitor saw, and an
 * accepted body must re-encode, from the visited items alone, to its bytes.
 *
 * An input whose bytes 1-4 are "KHPG" instead drives the staging of a paged
 * restore (kh_backup_stage_*): u32 total (big-endian; top bit set: beyond
 * the limit, otherwise its low 16 bits), then pages { u32 offset, u16
 * length, bytes }, the first to kh_backup_stage_begin. The stage must
 * accept exactly the pages a model accepts (in order, never past total,
 * the header whole in the first), hold exactly their bytes, and leave
 * nothing behind on a refusal.
 */
#include "hsm/backup.h"
#include "hsm/keystore.h"
#include "hsm/majorkey.h"
#include "common/kh_err.h"

#include "fuzz_check.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* From backup.c: limits that backup.h does not name. */
#define SETTING_VALUE_MAX (1u << 20)
#define TEXT_MAX 4096
#define BLOB_MAX 1024
/* What the failing visitor returns: nothing in the decoder returns it. */
#define VISITOR_ERR KH_ERR_BUSY

/* ---- a growable buffer for the re-encoding ---- */

struct enc {
	uint8_t *p;
	size_t len, cap;
};

static void put(struct enc *e, const void *d, size_t n)
{
	if (n > e->cap - e->len) {
		size_t cap = e->cap ? e->cap : 256;
		while (n > cap - e->len)
			cap *= 2;
		e->p = realloc(e->p, cap);
		if (e->p == NULL)
			abort();
		e->cap = cap;
	}
	if (n)
		memcpy(e->p + e->len, d, n);
	e->len += n;
}

static void put_u8(struct enc *e, unsigned v)
{
	uint8_t x = (uint8_t)v;
	put(e, &x, 1);
}

static void put_u32(struct enc *e, uint32_t v)
{
	uint8_t x[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
	put(e, x, 4);
}

static void put_i64(struct enc *e, int64_t s)
{
	uint64_t v = (uint64_t)s;
	put_u32(e, (uint32_t)(v >> 32));
	put_u32(e, (uint32_t)v);
}

static void put_lp(struct enc *e, unsigned bits, const void *d, size_t n)
{
	if (bits == 8) {
		put_u8(e, (unsigned)n);
	} else if (bits == 16) {
		put_u8(e, (unsigned)(n >> 8));
		put_u8(e, (unsigned)n);
	} else {
		put_u32(e, (uint32_t)n);
	}
	put(e, d, n);
}

/* ---- the recording visitor ---- */

struct rec {
	const uint8_t *p; /* the body: every item must point into it */
	size_t n;
	struct enc set, role, ident, key;
	uint32_t nset, nrole, nident, nkey;
	uint32_t seen, fail_at; /* fail_at: 1-based item that fails, 0 never */
	const char *last_key;
	size_t last_key_len;
	int64_t last_role, last_ident, last_slot;
	bool needs[KH_MK_COUNT];
};

static void in_body(const struct rec *r, const void *q, size_t len)
{
	const uint8_t *b = q;
	CHECK(b != NULL || len == 0);
	if (b != NULL)
		CHECK(b >= r->p && len <= r->n && (size_t)(b - r->p) <= r->n - len);
}

static void text_ok(const struct rec *r, const char *s, size_t len, size_t min, size_t max)
{
	in_body(r, s, len);
	CHECK(len >= min && len <= max);
	for (size_t i = 0; i < len; i++)
		CHECK(s[i] >= 0x20 && s[i] <= 0x7e);
}

static void name_ok(const char *s)
{
	size_t len = strlen(s);
	CHECK(len >= 1 && len < KH_KS_NAME_MAX);
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		CHECK((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '-' || c == '.');
	}
}

static bool device_setting(const char *k, size_t n)
{
	static const char *const dev[] = {"serial", "audit_head", "clock_offset"};
	for (size_t i = 0; i < sizeof(dev) / sizeof(dev[0]); i++)
		if (strlen(dev[i]) == n && memcmp(dev[i], k, n) == 0)
			return true;
	return false;
}

static int next(struct rec *r)
{
	r->seen++;
	return r->fail_at && r->seen == r->fail_at ? VISITOR_ERR : KH_OK;
}

static int v_setting(void *arg, const struct kh_backup_setting *s)
{
	struct rec *r = arg;

	text_ok(r, s->key, s->key_len, 1, 255);
	in_body(r, s->val, s->val_len);
	CHECK(s->val_len <= SETTING_VALUE_MAX);
	CHECK(!device_setting(s->key, s->key_len));
	if (r->last_key) {
		size_t m = r->last_key_len < s->key_len ? r->last_key_len : s->key_len;
		int c = memcmp(r->last_key, s->key, m);
		CHECK(c < 0 || (c == 0 && r->last_key_len < s->key_len));
	}
	r->last_key = s->key;
	r->last_key_len = s->key_len;
	r->nset++;
	put_lp(&r->set, 16, s->key, s->key_len);
	put_lp(&r->set, 32, s->val, s->val_len);
	return next(r);
}

static int v_role(void *arg, const struct kh_backup_role *ro)
{
	struct rec *r = arg;

	CHECK(r->nrole == 0 || ro->id > r->last_role);
	r->last_role = ro->id;
	text_ok(r, ro->name, ro->name_len, 1, KH_NAME_MAX - 1);
	text_ok(r, ro->perms, ro->perms_len, 0, TEXT_MAX);
	text_ok(r, ro->ranges, ro->ranges_len, 0, TEXT_MAX);
	text_ok(r, ro->commands, ro->commands_len, 0, TEXT_MAX);
	CHECK(ro->logins_required <= 3);
	r->nrole++;
	put_i64(&r->role, ro->id);
	put_lp(&r->role, 16, ro->name, ro->name_len);
	put_lp(&r->role, 16, ro->perms, ro->perms_len);
	put_lp(&r->role, 16, ro->ranges, ro->ranges_len);
	put_lp(&r->role, 16, ro->commands, ro->commands_len);
	put_u32(&r->role, ro->logins_required);
	put_u32(&r->role, ro->ports);
	put_u32(&r->role, ro->sources);
	put_u8(&r->role, ro->dual_factor);
	put_u8(&r->role, ro->builtin);
	return next(r);
}

static int v_identity(void *arg, const struct kh_backup_identity *id)
{
	struct rec *r = arg;

	CHECK(r->nident == 0 || id->id > r->last_ident);
	r->last_ident = id->id;
	text_ok(r, id->name, id->name_len, 1, KH_NAME_MAX - 1);
	in_body(r, id->pw_hash, id->pw_hash_len);
	in_body(r, id->pw_salt, id->pw_salt_len);
	CHECK(id->pw_hash_len <= BLOB_MAX && id->pw_salt_len <= BLOB_MAX);
	text_ok(r, id->pw_params, id->pw_params_len, 0, TEXT_MAX);
	r->nident++;
	put_i64(&r->ident, id->id);
	put_lp(&r->ident, 16, id->name, id->name_len);
	put_i64(&r->ident, id->role_id);
	put_lp(&r->ident, 16, id->pw_hash, id->pw_hash_len);
	put_lp(&r->ident, 16, id->pw_salt, id->pw_salt_len);
	put_lp(&r->ident, 16, id->pw_params, id->pw_params_len);
	put_u8(&r->ident, id->must_change);
	put_u32(&r->ident, id->failures);
	put_i64(&r->ident, id->locked_until);
	put_u8(&r->ident, id->builtin);
	put_i64(&r->ident, id->created);
	put_i64(&r->ident, id->changed);
	return next(r);
}

static int v_key(void *arg, const struct kh_backup_key *k)
{
	struct rec *r = arg;
	const char *major;

	CHECK(k->slot <= KH_SLOT_MAX && (int64_t)k->slot > r->last_slot);
	r->last_slot = k->slot;
	in_body(r, k->key_id, KH_KEY_ID_LEN);
	CHECK(k->key_id != NULL);
	CHECK(k->major == KH_MK_FTK || k->major == KH_MK_PMK);
	r->needs[k->major] = true;
	name_ok(k->cls);
	name_ok(k->ktype);
	CHECK(k->bits <= KH_KS_BITS_MAX);
	in_body(r, k->attrs, k->attrs_len);
	in_body(r, k->material, k->material_len);
	in_body(r, k->label, k->label_len);
	in_body(r, k->ckaid, k->ckaid_len);
	in_body(r, k->extra, k->extra_len);
	CHECK(k->attrs_len <= KH_KS_ATTRS_MAX);
	CHECK(k->material_len >= 1 && k->material_len <= KH_KS_MATERIAL_MAX);
	CHECK(k->label_len <= KH_KS_DESC_MAX && k->ckaid_len <= KH_KS_DESC_MAX &&
	      k->extra_len <= KH_KS_DESC_MAX);
	major = kh_mk_name(k->major);
	CHECK(major != NULL);
	r->nkey++;
	put_u32(&r->key, k->slot);
	put(&r->key, k->key_id, KH_KEY_ID_LEN);
	put_lp(&r->key, 8, major, strlen(major));
	put_lp(&r->key, 8, k->cls, strlen(k->cls));
	put_lp(&r->key, 8, k->ktype, strlen(k->ktype));
	put_u32(&r->key, k->bits);
	put_lp(&r->key, 32, k->attrs, k->attrs_len);
	put_lp(&r->key, 32, k->material, k->material_len);
	put_lp(&r->key, 32, k->label, k->label_len);
	put_lp(&r->key, 32, k->ckaid, k->ckaid_len);
	put_lp(&r->key, 32, k->extra, k->extra_len);
	put_i64(&r->key, k->created);
	return next(r);
}

static const struct kh_backup_visitor visitor = {v_setting, v_role, v_identity, v_key};

static void rec_init(struct rec *r, const uint8_t *p, size_t n, uint32_t fail_at)
{
	memset(r, 0, sizeof(*r));
	r->p = p;
	r->n = n;
	r->fail_at = fail_at;
	r->last_slot = -1;
}

static void rec_free(struct rec *r)
{
	free(r->set.p);
	free(r->role.p);
	free(r->ident.p);
	free(r->key.p);
}

static bool counts_eq(const struct kh_backup_counts *a, const struct kh_backup_counts *b)
{
	for (int i = 0; i < KH_MK_COUNT; i++)
		if (a->needs[i] != b->needs[i])
			return false;
	return a->settings == b->settings && a->roles == b->roles &&
	       a->identities == b->identities && a->keys == b->keys;
}

static bool counts_zero(const struct kh_backup_counts *c)
{
	const struct kh_backup_counts z = {0};
	return counts_eq(c, &z);
}

static void check_header(const uint8_t *p, size_t n)
{
	struct kh_backup_hdr h;
	uint8_t enc[KH_BACKUP_HDR_LEN];
	uint64_t v;
	int r = kh_backup_parse_header(p, n, &h);

	CHECK(r == KH_OK || r == KH_ERR_BACKUP_INVALID);
	if (r != KH_OK)
		return;
	CHECK(n >= KH_BACKUP_HDR_LEN + KH_MK_SEAL_OVERHEAD && n <= KH_BACKUP_MAX);
	CHECK(h.version == KH_BACKUP_VERSION);
	CHECK(h.scope != 0 && (h.scope & ~(unsigned)KH_BACKUP_ALL) == 0);
	CHECK(strlen(h.kcv) == 6);
	for (size_t i = 0; i < 6; i++)
		CHECK((h.kcv[i] >= '0' && h.kcv[i] <= '9') || (h.kcv[i] >= 'A' && h.kcv[i] <= 'F'));
	memcpy(enc, "KHBK", 4);
	enc[4] = (uint8_t)h.version;
	enc[5] = (uint8_t)h.scope;
	memcpy(enc + 6, h.kcv, 6);
	v = (uint64_t)h.created;
	for (int i = 0; i < 8; i++)
		enc[12 + i] = (uint8_t)(v >> (56 - 8 * i));
	CHECK(memcmp(enc, p, KH_BACKUP_HDR_LEN) == 0);
}

/* The visited items, with their list counts, must be the body exactly. */
static void check_reencode(const struct rec *r, unsigned scope, const uint8_t *p, size_t n)
{
	struct enc e = {0};

	put(&e, "KHBP", 4);
	if (scope & KH_BACKUP_CONFIG) {
		put_u32(&e, r->nset);
		put(&e, r->set.p, r->set.len);
		put_u32(&e, r->nrole);
		put(&e, r->role.p, r->role.len);
		put_u32(&e, r->nident);
		put(&e, r->ident.p, r->ident.len);
	}
	if (scope & KH_BACKUP_KEYS) {
		put_u32(&e, r->nkey);
		put(&e, r->key.p, r->key.len);
	}
	CHECK(e.len == n && memcmp(e.p, p, n) == 0);
	free(e.p);
}

static void check_body(const uint8_t *p, size_t n, unsigned scope, uint32_t fail_at)
{
	struct kh_backup_counts c0, c1, c2;
	struct rec rec, rf;
	uint32_t total;
	int r0, r1, r2;

	memset(&c0, 0xff, sizeof(c0));
	r0 = kh_backup_decode(p, n, scope, NULL, NULL, &c0);
	CHECK(r0 == KH_OK || r0 == KH_ERR_BACKUP_INVALID);
	CHECK(kh_backup_decode(p, n, scope, NULL, NULL, NULL) == r0);
	if (scope == 0 || (scope & ~(unsigned)KH_BACKUP_ALL)) {
		CHECK(r0 == KH_ERR_BACKUP_INVALID && counts_zero(&c0));
		return;
	}
	if (!(scope & KH_BACKUP_CONFIG))
		CHECK(c0.settings == 0 && c0.roles == 0 && c0.identities == 0);
	if (!(scope & KH_BACKUP_KEYS))
		CHECK(c0.keys == 0 && !c0.needs[KH_MK_FTK] && !c0.needs[KH_MK_PMK]);
	CHECK(!c0.needs[KH_MK_BEK]);

	/* a visitor that accepts everything changes nothing, and sees what is counted */
	rec_init(&rec, p, n, 0);
	r1 = kh_backup_decode(p, n, scope, &visitor, &rec, &c1);
	CHECK(r1 == r0 && counts_eq(&c1, &c0));
	CHECK(rec.nset == c1.settings && rec.nrole == c1.roles && rec.nident == c1.identities &&
	      rec.nkey == c1.keys);
	for (int i = 0; i < KH_MK_COUNT; i++)
		CHECK(rec.needs[i] == c1.needs[i]);
	if (r1 == KH_OK)
		check_reencode(&rec, scope, p, n);
	total = rec.seen;
	rec_free(&rec);

	/* a visitor error stops the decoder at once and is what it returns */
	if (fail_at == 0)
		return;
	rec_init(&rf, p, n, fail_at);
	r2 = kh_backup_decode(p, n, scope, &visitor, &rf, &c2);
	if (total >= fail_at) {
		CHECK(r2 == VISITOR_ERR && rf.seen == fail_at);
		CHECK(c2.settings + c2.roles + c2.identities + c2.keys == fail_at);
	} else {
		CHECK(r2 == r0 && counts_eq(&c2, &c0) && rf.seen == total);
	}
	rec_free(&rf);
}

/* ---- staging of a paged restore ---- */

static uint32_t rd_be(const uint8_t *p, size_t n)
{
	uint32_t v = 0;
	for (size_t i = 0; i < n; i++)
		v = v << 8 | p[i];
	return v;
}

static void check_stage(const uint8_t *p, size_t n)
{
	struct kh_backup_stage st;
	struct kh_backup_hdr h;
	uint64_t total;
	uint8_t *model = NULL;
	size_t have = 0, at = 4;
	bool first = true;
	int r;

	if (n < 4)
		return;
	total = rd_be(p, 4);
	total = total & 0x80000000u ? (uint64_t)KH_BACKUP_MAX + (total & 0xff) : total & 0xffff;
	while (at + 6 <= n) {
		uint32_t off = rd_be(p + at, 4);
		size_t len = rd_be(p + at + 4, 2);
		const uint8_t *page = p + at + 6;
		at += 6;
		if (len > n - at)
			len = n - at;
		at += len;
		if (first) {
			first = false;
			bool ok = total <= KH_BACKUP_MAX && len >= KH_BACKUP_HDR_LEN &&
			          len <= total &&
			          kh_backup_parse_header(page, (size_t)total, &h) == KH_OK;
			r = kh_backup_stage_begin(&st, total, page, len);
			CHECK(r == KH_OK || r == KH_ERR_TOO_LARGE || r == KH_ERR_BAD_FIELD ||
			      r == KH_ERR_BACKUP_INVALID);
			CHECK((r == KH_OK) == ok);
			if (r != KH_OK) {
				CHECK(st.data == NULL && st.have == 0 && st.total == 0);
				return;
			}
			CHECK(memcmp(&st.hdr, &h, sizeof(h)) == 0);
			model = malloc((size_t)total);
			if (model == NULL)
				abort();
			memcpy(model, page, len);
			have = len;
			continue;
		}
		bool ok = off == have && len >= 1 && len <= total - have;
		r = kh_backup_stage_add(&st, off, len ? page : p, len);
		CHECK((r == KH_OK) == ok && (r == KH_OK || r == KH_ERR_BAD_FIELD));
		if (ok) {
			memcpy(model + have, page, len);
			have += len;
		}
		CHECK(st.have == have && st.total == total);
		CHECK(kh_backup_stage_done(&st) == (have == total));
	}
	if (first)
		return;
	CHECK(st.have == have && memcmp(st.data, model, have) == 0);
	/* the header of the staged file is the one the first page gave */
	CHECK(kh_backup_parse_header(st.data, st.total, &h) == KH_OK);
	CHECK(memcmp(&st.hdr, &h, sizeof(h)) == 0);
	kh_backup_stage_free(&st);
	CHECK(st.data == NULL && st.have == 0);
	free(model);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *p;
	size_t n;

	if (size == 0)
		return 0;
	/* an exact-size copy, so that a read past the end is reported */
	n = size - 1;
	p = malloc(n ? n : 1);
	if (p == NULL)
		abort();
	memcpy(p, data + 1, n);
	if (n >= 4 && memcmp(p, "KHPG", 4) == 0) {
		check_stage(p + 4, n - 4);
		free(p);
		return 0;
	}
	check_header(p, n);
	check_body(p, n, data[0] & 3u, data[0] >> 2);
	free(p);
	return 0;
}

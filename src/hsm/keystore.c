/*
 * Key-table rows: wrapping, storage and retrieval. Clear key material only
 * passes through kh_keystore_put (in) and kh_keystore_unwrap (out, secure
 * heap); it is never stored, logged or put in an audit entry.
 */
#include "hsm/keystore.h"
#include "hsm/audit.h"
#include "hsm/db.h"
#include "hsm/keyobj.h"
#include "common/kh_mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#define AAD_MAGIC "KHK1"
#define COLS "slot, key_id, major, class, ktype, bits, attrs, wrapped, label, ckaid, extra, created"

void kh_keystore_row_free(struct kh_key_row *row)
{
	if (row == NULL)
		return;
	free(row->attrs);
	free(row->wrapped);
	free(row->label);
	free(row->ckaid);
	free(row->extra);
	memset(row, 0, sizeof(*row));
}

static bool name_ok(const char *s)
{
	size_t n = strnlen(s, KH_KS_NAME_MAX);
	if (n == 0 || n >= KH_KS_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '-' || c == '.'))
			return false;
	}
	return true;
}

static int validate(const struct kh_key_row *row)
{
	if (row->slot > KH_SLOT_MAX || (row->major != KH_MK_FTK && row->major != KH_MK_PMK) ||
	    !name_ok(row->cls) || !name_ok(row->ktype) || row->bits > KH_KS_BITS_MAX ||
	    row->attrs_len > KH_KS_ATTRS_MAX || (row->attrs_len && row->attrs == NULL) ||
	    row->label_len > KH_KS_DESC_MAX || (row->label_len && row->label == NULL) ||
	    row->ckaid_len > KH_KS_DESC_MAX || (row->ckaid_len && row->ckaid == NULL) ||
	    row->extra_len > KH_KS_DESC_MAX || (row->extra_len && row->extra == NULL))
		return KH_ERR_BAD_FIELD;
	return KH_OK;
}

static void put_u32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static void put_lp8(uint8_t *p, size_t *off, const char *s)
{
	size_t l = strlen(s);
	p[(*off)++] = (uint8_t)l;
	memcpy(p + *off, s, l);
	*off += l;
}

/* The canonical associated data: every bound column, each length-prefixed
 * or fixed-width, so no two different rows encode alike. */
static int make_aad(const struct kh_key_row *row, uint8_t **out, size_t *outlen)
{
	const char *major = kh_mk_name(row->major);
	size_t cap = 4 + 4 + KH_KEY_ID_LEN + 3 * (1 + KH_KS_NAME_MAX) + 4 + 4 + row->attrs_len;
	size_t n = 0;
	uint8_t *p = malloc(cap);
	if (p == NULL)
		return KH_ERR_NOMEM;
	memcpy(p, AAD_MAGIC, 4);
	n = 4;
	put_u32(p + n, row->slot);
	n += 4;
	memcpy(p + n, row->key_id, KH_KEY_ID_LEN);
	n += KH_KEY_ID_LEN;
	put_lp8(p, &n, major);
	put_lp8(p, &n, row->cls);
	put_lp8(p, &n, row->ktype);
	put_u32(p + n, row->bits);
	n += 4;
	put_u32(p + n, (uint32_t)row->attrs_len);
	n += 4;
	if (row->attrs_len)
		memcpy(p + n, row->attrs, row->attrs_len);
	n += row->attrs_len;
	*out = p;
	*outlen = n;
	return KH_OK;
}

static void bind_opt(sqlite3_stmt *st, int col, const uint8_t *p, size_t n)
{
	if (n == 0)
		sqlite3_bind_null(st, col);
	else
		sqlite3_bind_blob(st, col, p, (int)n, SQLITE_STATIC);
}

/* Insert (or replace) one row with its wrapped form, in one transaction. */
static int store(struct kh_hsm *hsm, const struct kh_key_row *row, const uint8_t *wrapped,
                 size_t wlen, unsigned flags, const char *actor, int64_t *created)
{
	sqlite3 *h = kh_db_sqlite(hsm->db);
	sqlite3_stmt *st = NULL;
	/* kh_hsm_now takes hsm->mu only briefly and touches no database, so it
	 * is safe anywhere (lock order in hsm.h); a restore passes the backup's
	 * own creation times instead */
	int64_t now = row->created ? row->created : (int64_t)kh_hsm_now(hsm);
	char text[128];
	int r;

	if ((r = kh_db_begin(hsm->db)) != KH_OK)
		return r;
	if (flags & KH_KS_REPLACE) {
		if (sqlite3_prepare_v2(h, "DELETE FROM keys WHERE slot=?", -1, &st, NULL) !=
		    SQLITE_OK) {
			r = kh_db_err(hsm->db, sqlite3_errcode(h));
			goto out;
		}
		sqlite3_bind_int64(st, 1, row->slot);
		if ((r = sqlite3_step(st)) != SQLITE_DONE) {
			r = kh_db_err(hsm->db, r);
			goto out;
		}
		sqlite3_finalize(st);
		st = NULL;
	}
	if (sqlite3_prepare_v2(h, "INSERT INTO keys(" COLS ") VALUES(?,?,?,?,?,?,?,?,?,?,?,?)", -1,
	                       &st, NULL) != SQLITE_OK) {
		r = kh_db_err(hsm->db, sqlite3_errcode(h));
		goto out;
	}
	sqlite3_bind_int64(st, 1, row->slot);
	sqlite3_bind_blob(st, 2, row->key_id, KH_KEY_ID_LEN, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, kh_mk_name(row->major), -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 4, row->cls, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 5, row->ktype, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 6, row->bits);
	/* attrs is NOT NULL in the schema: an empty set is a zero-length blob */
	sqlite3_bind_blob(st, 7, row->attrs_len ? (const void *)row->attrs : (const void *)"",
	                  (int)row->attrs_len, SQLITE_STATIC);
	sqlite3_bind_blob(st, 8, wrapped, (int)wlen, SQLITE_STATIC);
	bind_opt(st, 9, row->label, row->label_len);
	bind_opt(st, 10, row->ckaid, row->ckaid_len);
	bind_opt(st, 11, row->extra, row->extra_len);
	sqlite3_bind_int64(st, 12, now);
	if ((r = sqlite3_step(st)) != SQLITE_DONE) {
		r = kh_db_err(hsm->db, r);
		goto out;
	}
	if (!(flags & KH_KS_QUIET)) {
		snprintf(text, sizeof(text), "slot %u %s %s-%u under %s", row->slot, row->cls,
		         row->ktype, row->bits, kh_mk_name(row->major));
		if ((r = kh_audit_append(hsm, actor, "key.put", text)) != KH_OK)
			goto out;
	}
	sqlite3_finalize(st);
	st = NULL;
	if ((r = kh_db_commit(hsm->db)) == KH_OK && created)
		*created = now;
	/* after the commit: a reader that loaded the old key before it cannot
	 * put it back (the cache's generation moved on) */
	kh_keycache_forget(hsm, row->slot);
	return r;
out:
	sqlite3_finalize(st);
	kh_db_rollback(hsm->db);
	return r;
}

/* Seal material under row's associated data and store it. The caller
 * holds the database lock: a rotation cannot come between the seal and
 * the write and leave a row under the key it replaced. */
static int put_locked(struct kh_hsm *hsm, struct kh_key_row *row, const uint8_t *material,
                      size_t mlen, unsigned flags, const char *actor)
{
	uint8_t *aad = NULL, *wrapped = NULL;
	size_t aadlen = 0, wlen = 0;
	int r;

	if ((r = validate(row)) != KH_OK)
		return r;
	if (mlen == 0 || mlen > KH_KS_MATERIAL_MAX || material == NULL)
		return KH_ERR_BAD_FIELD;
	if ((flags & KH_KS_NEW_ID) && RAND_bytes(row->key_id, KH_KEY_ID_LEN) != 1)
		return KH_ERR_CRYPTO;
	if ((r = make_aad(row, &aad, &aadlen)) != KH_OK)
		goto out;
	if ((wrapped = malloc(mlen + KH_MK_SEAL_OVERHEAD)) == NULL) {
		r = KH_ERR_NOMEM;
		goto out;
	}
	r = kh_mk_seal(hsm, row->major, aad, aadlen, material, mlen, wrapped, &wlen);
	if (r == KH_OK)
		r = store(hsm, row, wrapped, wlen, flags, actor, &row->created);
out:
	free(aad);
	free(wrapped);
	return r;
}

int kh_keystore_put(struct kh_hsm *hsm, struct kh_key_row *row, const uint8_t *material,
                    size_t mlen, unsigned flags, const char *actor)
{
	int r;
	kh_db_lock(hsm->db);
	r = put_locked(hsm, row, material, mlen, flags, actor);
	kh_db_unlock(hsm->db);
	return r;
}

/* Is slot taken? Under the caller's transaction. */
static int slot_taken(struct kh_hsm *hsm, uint32_t slot, bool *taken)
{
	sqlite3_stmt *q = NULL;
	int r = kh_db_prepare(hsm->db, "SELECT 1 FROM keys WHERE slot=?", &q);
	if (r != KH_OK)
		return r;
	sqlite3_bind_int64(q, 1, slot);
	r = sqlite3_step(q);
	*taken = r == SQLITE_ROW;
	r = (r == SQLITE_ROW || r == SQLITE_DONE) ? KH_OK : kh_db_err(hsm->db, r);
	sqlite3_finalize(q);
	return r;
}

/* The lowest free slot in [from, hi] (*found false when none). A taken
 * `from` sends the search to the first key, at or after it, whose next
 * slot is free: one walk along the primary key that stops at the first
 * gap. */
static int lowest_free(struct kh_hsm *hsm, uint32_t from, uint32_t hi, bool *found,
                       uint32_t *slot)
{
	sqlite3_stmt *q = NULL;
	bool taken;
	int r;

	*found = false;
	if (from > hi)
		return KH_OK;
	if ((r = slot_taken(hsm, from, &taken)) != KH_OK)
		return r;
	if (!taken) {
		*found = true;
		*slot = from;
		return KH_OK;
	}
	/* taken slots packed from `from` on (as `*` leaves them): the slot
	 * after the last, found by counting instead of probing every key */
	if ((r = kh_db_prepare(hsm->db,
	                       "SELECT count(*), max(slot) FROM keys WHERE slot BETWEEN ?1 AND ?2",
	                       &q)) != KH_OK)
		return r;
	sqlite3_bind_int64(q, 1, from);
	sqlite3_bind_int64(q, 2, hi);
	if ((r = sqlite3_step(q)) != SQLITE_ROW) {
		sqlite3_finalize(q);
		return kh_db_err(hsm->db, r);
	}
	sqlite3_int64 count = sqlite3_column_int64(q, 0), last = sqlite3_column_int64(q, 1);
	sqlite3_finalize(q);
	q = NULL;
	if (last - (sqlite3_int64)from + 1 == count) {
		*found = last < (sqlite3_int64)hi;
		*slot = (uint32_t)(last + 1);
		return KH_OK;
	}
	if ((r = kh_db_prepare(hsm->db,
	                       "SELECT k.slot + 1 FROM keys k WHERE k.slot >= ?1 AND k.slot < ?2 "
	                       "AND NOT EXISTS (SELECT 1 FROM keys n WHERE n.slot = k.slot + 1) "
	                       "ORDER BY k.slot LIMIT 1",
	                       &q)) != KH_OK)
		return r;
	sqlite3_bind_int64(q, 1, from);
	sqlite3_bind_int64(q, 2, hi);
	r = sqlite3_step(q);
	if (r == SQLITE_ROW) {
		sqlite3_int64 v = sqlite3_column_int64(q, 0);
		*found = v >= (sqlite3_int64)from && v <= (sqlite3_int64)hi;
		*slot = (uint32_t)v;
		r = KH_OK;
	} else {
		r = r == SQLITE_DONE ? KH_OK : kh_db_err(hsm->db, r);
	}
	sqlite3_finalize(q);
	return r;
}

static bool avoided(uint32_t slot, const uint32_t *avoid, size_t navoid)
{
	for (size_t i = 0; i < navoid; i++)
		if (avoid[i] == slot)
			return true;
	return false;
}

/* The lowest free slot of the spans that is not avoided. */
static int pick_free(struct kh_hsm *hsm, const struct kh_ks_span *spans, size_t nspans,
                     const uint32_t *avoid, size_t navoid, bool *found, uint32_t *slot)
{
	int r;

	*found = false;
	for (size_t i = 0; i < nspans; i++) {
		uint32_t from = spans[i].lo, s = 0;
		bool f = false;
		if (spans[i].lo > spans[i].hi || spans[i].hi > KH_SLOT_MAX)
			return KH_ERR_INTERNAL;
		/* only a slot below the best so far is of interest */
		if (*found && spans[i].lo >= *slot)
			continue;
		uint32_t hi = *found && *slot <= spans[i].hi ? *slot - 1 : spans[i].hi;
		for (;;) {
			if ((r = lowest_free(hsm, from, hi, &f, &s)) != KH_OK)
				return r;
			if (!f || !avoided(s, avoid, navoid))
				break;
			from = s + 1;
		}
		if (f && (!*found || s < *slot)) {
			*found = true;
			*slot = s;
		}
	}
	return KH_OK;
}

int kh_keystore_put_free(struct kh_hsm *hsm, struct kh_key_row *row,
                         const struct kh_ks_span *spans, size_t nspans, const uint32_t *avoid,
                         size_t navoid, const uint8_t *material, size_t mlen, unsigned flags,
                         const char *actor)
{
	bool found = false;
	uint32_t slot = 0;
	int r;

	/* the choice and the write in one transaction under the database lock:
	 * no other writer can take the slot in between (every write to the key
	 * table goes through this lock), and a request that stores two keys
	 * in its own transaction (GRSA) sees the first when picking the second */
	if ((r = kh_db_begin(hsm->db)) != KH_OK)
		return r;
	r = pick_free(hsm, spans, nspans, avoid, navoid, &found, &slot);
	if (r == KH_OK && !found)
		r = KH_ERR_SLOT_OUT_OF_RANGE;
	if (r == KH_OK) {
		row->slot = slot;
		r = put_locked(hsm, row, material, mlen, flags & ~(unsigned)KH_KS_REPLACE, actor);
	}
	if (r != KH_OK) {
		kh_db_rollback(hsm->db);
		return r;
	}
	return kh_db_commit(hsm->db);
}

/* A row read before a rotation of its major key did not open after it:
 * open the slot's row as it is now, if it is the same key (same bound
 * columns). */
static int unwrap_again(struct kh_hsm *hsm, const struct kh_key_row *row, const uint8_t *aad,
                        size_t aadlen, uint8_t **material, size_t *mlen)
{
	struct kh_key_row now;
	uint8_t *aad2 = NULL;
	size_t aad2len = 0;
	int r;

	if (kh_keystore_get(hsm, row->slot, &now) != KH_OK)
		return KH_ERR_CRYPTO;
	if (make_aad(&now, &aad2, &aad2len) != KH_OK || aad2len != aadlen ||
	    memcmp(aad2, aad, aadlen) != 0)
		r = KH_ERR_CRYPTO;
	else
		r = kh_keystore_unwrap(hsm, &now, material, mlen);
	free(aad2);
	kh_keystore_row_free(&now);
	return r;
}

int kh_keystore_unwrap(struct kh_hsm *hsm, const struct kh_key_row *row, uint8_t **material,
                       size_t *mlen)
{
	uint8_t *aad = NULL, *m = NULL;
	size_t aadlen = 0, n = 0, cap;
	int r;

	if (row->wrapped == NULL || row->wrapped_len <= KH_MK_SEAL_OVERHEAD ||
	    row->wrapped_len > KH_KS_MATERIAL_MAX + KH_MK_SEAL_OVERHEAD)
		return KH_ERR_CRYPTO;
	if (validate(row) != KH_OK)
		return KH_ERR_CRYPTO;
	cap = row->wrapped_len - KH_MK_SEAL_OVERHEAD;
	if ((r = make_aad(row, &aad, &aadlen)) != KH_OK)
		goto out;
	if ((m = kh_secure_alloc(cap)) == NULL) {
		r = KH_ERR_NOMEM;
		goto out;
	}
	r = kh_mk_open(hsm, row->major, aad, aadlen, row->wrapped, row->wrapped_len, m, &n);
	if (r == KH_ERR_CRYPTO && row->mk_gen != 0 &&
	    row->mk_gen != kh_mk_generation(hsm, row->major)) {
		r = unwrap_again(hsm, row, aad, aadlen, material, mlen);
		goto out;
	}
	if (r != KH_OK)
		goto out;
	*material = m;
	*mlen = n;
	m = NULL;
out:
	kh_secure_free(m, cap);
	free(aad);
	return r;
}

int kh_keystore_put_wrapped(struct kh_hsm *hsm, const struct kh_key_row *row, unsigned flags,
                            const char *actor)
{
	uint8_t *m = NULL;
	size_t mlen = 0;
	int r;

	if ((r = validate(row)) != KH_OK)
		return r;
	/* checked and stored under one hold of the database lock (see put) */
	kh_db_lock(hsm->db);
	if ((r = kh_keystore_unwrap(hsm, row, &m, &mlen)) == KH_OK) {
		kh_secure_free(m, mlen);
		r = store(hsm, row, row->wrapped, row->wrapped_len, flags & ~(unsigned)KH_KS_NEW_ID,
		          actor, NULL);
	}
	kh_db_unlock(hsm->db);
	return r;
}

/* Ends the transaction a change to one slot began: finalizes st, rolls back,
 * and returns r. */
static int slot_change_fail(struct kh_hsm *hsm, sqlite3_stmt *st, int r)
{
	sqlite3_finalize(st);
	kh_db_rollback(hsm->db);
	return r;
}

/* Runs st, the prepared change to the key in slot, inside the transaction
 * the caller began; a change that touches no row is KH_ERR_NOT_FOUND. On
 * success the change is audited as event and committed, otherwise rolled
 * back. Finalizes st. */
static int slot_change_finish(struct kh_hsm *hsm, sqlite3_stmt *st, uint32_t slot,
                              const char *actor, const char *event)
{
	char text[48];
	int r;

	if ((r = sqlite3_step(st)) != SQLITE_DONE)
		return slot_change_fail(hsm, st, kh_db_err(hsm->db, r));
	if (sqlite3_changes(kh_db_sqlite(hsm->db)) == 0)
		return slot_change_fail(hsm, st, KH_ERR_NOT_FOUND);
	snprintf(text, sizeof(text), "slot %u", slot);
	if ((r = kh_audit_append(hsm, actor, event, text)) != KH_OK)
		return slot_change_fail(hsm, st, r);
	sqlite3_finalize(st);
	return kh_db_commit(hsm->db);
}

int kh_keystore_delete(struct kh_hsm *hsm, uint32_t slot, const char *actor)
{
	sqlite3 *h = kh_db_sqlite(hsm->db);
	sqlite3_stmt *st = NULL;
	int r;

	if ((r = kh_db_begin(hsm->db)) != KH_OK)
		return r;
	if (sqlite3_prepare_v2(h, "DELETE FROM keys WHERE slot=?", -1, &st, NULL) != SQLITE_OK)
		return slot_change_fail(hsm, st, kh_db_err(hsm->db, sqlite3_errcode(h)));
	sqlite3_bind_int64(st, 1, slot);
	r = slot_change_finish(hsm, st, slot, actor, "key.delete");
	kh_keycache_forget(hsm, slot);
	return r;
}

static int dup_col(sqlite3_stmt *q, int col, size_t max, uint8_t **out, size_t *len)
{
	size_t n = (size_t)sqlite3_column_bytes(q, col);
	const void *v = sqlite3_column_blob(q, col);
	*out = NULL;
	*len = 0;
	if (n == 0 || v == NULL)
		return KH_OK;
	if (n > max)
		return KH_ERR_STORAGE;
	if ((*out = malloc(n)) == NULL)
		return KH_ERR_NOMEM;
	memcpy(*out, v, n);
	*len = n;
	return KH_OK;
}

static int text_col(sqlite3_stmt *q, int col, char out[static KH_KS_NAME_MAX])
{
	const unsigned char *t = sqlite3_column_text(q, col);
	size_t n = (size_t)sqlite3_column_bytes(q, col);
	if (t == NULL || n >= KH_KS_NAME_MAX)
		return KH_ERR_STORAGE;
	memcpy(out, t, n);
	out[n] = '\0';
	return KH_OK;
}

/* Columns in COLS order; the row is the database's word, but still bounded. */
static int row_from(sqlite3_stmt *q, struct kh_key_row *row, bool summary_only)
{
	sqlite3_int64 slot = sqlite3_column_int64(q, 0), bits = sqlite3_column_int64(q, 5);
	const char *major = (const char *)sqlite3_column_text(q, 2);
	int r;

	memset(row, 0, sizeof(*row));
	if (slot < 0 || slot > KH_SLOT_MAX || bits < 0 || bits > KH_KS_BITS_MAX ||
	    sqlite3_column_bytes(q, 1) != KH_KEY_ID_LEN || major == NULL ||
	    kh_mk_id_parse(major, &row->major) != KH_OK)
		return KH_ERR_STORAGE;
	row->slot = (uint32_t)slot;
	row->bits = (uint32_t)bits;
	memcpy(row->key_id, sqlite3_column_blob(q, 1), KH_KEY_ID_LEN);
	if ((r = text_col(q, 3, row->cls)) != KH_OK || (r = text_col(q, 4, row->ktype)) != KH_OK)
		return r;
	row->created = sqlite3_column_int64(q, 11);
	if (summary_only)
		return KH_OK;
	if ((r = dup_col(q, 6, KH_KS_ATTRS_MAX, &row->attrs, &row->attrs_len)) != KH_OK ||
	    (r = dup_col(q, 7, KH_KS_MATERIAL_MAX + KH_MK_SEAL_OVERHEAD, &row->wrapped,
	                 &row->wrapped_len)) != KH_OK ||
	    (r = dup_col(q, 8, KH_KS_DESC_MAX, &row->label, &row->label_len)) != KH_OK ||
	    (r = dup_col(q, 9, KH_KS_DESC_MAX, &row->ckaid, &row->ckaid_len)) != KH_OK ||
	    (r = dup_col(q, 10, KH_KS_DESC_MAX, &row->extra, &row->extra_len)) != KH_OK) {
		kh_keystore_row_free(row);
		return r;
	}
	return KH_OK;
}

int kh_keystore_get(struct kh_hsm *hsm, uint32_t slot, struct kh_key_row *out)
{
	sqlite3 *h = kh_db_sqlite(hsm->db);
	sqlite3_stmt *q = NULL;
	int r;

	memset(out, 0, sizeof(*out));
	kh_db_lock(hsm->db);
	if (sqlite3_prepare_v2(h, "SELECT " COLS " FROM keys WHERE slot=?", -1, &q, NULL) !=
	    SQLITE_OK) {
		r = kh_db_err(hsm->db, sqlite3_errcode(h));
		goto out;
	}
	sqlite3_bind_int64(q, 1, slot);
	r = sqlite3_step(q);
	if (r == SQLITE_ROW) {
		/* read under the database lock: a rotation is before or after */
		if ((r = row_from(q, out, false)) == KH_OK)
			out->mk_gen = kh_mk_generation(hsm, out->major);
	} else if (r == SQLITE_DONE)
		r = KH_ERR_NOT_FOUND;
	else
		r = kh_db_err(hsm->db, r);
out:
	sqlite3_finalize(q);
	kh_db_unlock(hsm->db);
	return r;
}

int kh_keystore_set_desc(struct kh_hsm *hsm, uint32_t slot, const uint8_t *label, size_t label_len,
                         const uint8_t *ckaid, size_t ckaid_len, const uint8_t *extra,
                         size_t extra_len, const char *actor)
{
	sqlite3 *h = kh_db_sqlite(hsm->db);
	sqlite3_stmt *st = NULL;
	int r;

	if ((label && label_len > KH_KS_DESC_MAX) || (ckaid && ckaid_len > KH_KS_DESC_MAX) ||
	    (extra && extra_len > KH_KS_DESC_MAX))
		return KH_ERR_BAD_FIELD;
	if ((r = kh_db_begin(hsm->db)) != KH_OK)
		return r;
	/* ?2/?4/?6 say whether to change the field; CASE keeps one statement */
	if (sqlite3_prepare_v2(h,
	                       "UPDATE keys SET label=CASE WHEN ?2 THEN ?1 ELSE label END, "
	                       "ckaid=CASE WHEN ?4 THEN ?3 ELSE ckaid END, "
	                       "extra=CASE WHEN ?6 THEN ?5 ELSE extra END WHERE slot=?7",
	                       -1, &st, NULL) != SQLITE_OK)
		return slot_change_fail(hsm, st, kh_db_err(hsm->db, sqlite3_errcode(h)));
	bind_opt(st, 1, label, label ? label_len : 0);
	sqlite3_bind_int(st, 2, label != NULL);
	bind_opt(st, 3, ckaid, ckaid ? ckaid_len : 0);
	sqlite3_bind_int(st, 4, ckaid != NULL);
	bind_opt(st, 5, extra, extra ? extra_len : 0);
	sqlite3_bind_int(st, 6, extra != NULL);
	sqlite3_bind_int64(st, 7, slot);
	return slot_change_finish(hsm, st, slot, actor, "key.settings");
}

static bool same_key_columns(const struct kh_key_row *a, const struct kh_key_row *b)
{
	return memcmp(a->key_id, b->key_id, KH_KEY_ID_LEN) == 0 && a->major == b->major &&
	       strcmp(a->cls, b->cls) == 0 && strcmp(a->ktype, b->ktype) == 0;
}

int kh_keystore_rewrite(struct kh_hsm *hsm, const struct kh_key_row *was,
                        const struct kh_key_row *now, const uint8_t *material, size_t mlen,
                        const char *actor, const char *detail)
{
	struct kh_key_row row = {0}, next;
	uint8_t *m = NULL, *aad = NULL, *wrapped = NULL;
	size_t n = 0, aadlen = 0, wlen = 0, slen;
	const uint8_t *src;
	sqlite3_stmt *st = NULL;
	char text[192];
	int r;

	if (now->slot != was->slot || !same_key_columns(was, now))
		return KH_ERR_INTERNAL;
	if ((r = validate(now)) != KH_OK)
		return r;
	if (material != NULL && (mlen == 0 || mlen > KH_KS_MATERIAL_MAX))
		return KH_ERR_BAD_FIELD;
	/* read, opened, sealed again and written under one hold of the
	 * database lock: neither a rotation nor another change comes between */
	if ((r = kh_db_begin(hsm->db)) != KH_OK)
		return r;
	if ((r = kh_keystore_get(hsm, was->slot, &row)) != KH_OK)
		goto fail;
	if (memcmp(row.key_id, was->key_id, KH_KEY_ID_LEN) != 0) {
		r = KH_ERR_NOT_FOUND;
		goto fail;
	}
	/* an altered row is refused before anything else is said about it */
	if ((r = kh_keystore_unwrap(hsm, &row, &m, &n)) != KH_OK)
		goto fail;
	if (!same_key_columns(&row, was) || row.bits != was->bits ||
	    row.attrs_len != was->attrs_len ||
	    (row.attrs_len && memcmp(row.attrs, was->attrs, row.attrs_len) != 0)) {
		r = KH_ERR_BUSY;
		goto fail;
	}
	next = row; /* borrows row's buffers: never freed on its own */
	next.bits = now->bits;
	next.attrs = now->attrs;
	next.attrs_len = now->attrs_len;
	src = material != NULL ? material : m;
	slen = material != NULL ? mlen : n;
	if ((r = make_aad(&next, &aad, &aadlen)) != KH_OK)
		goto fail;
	if ((wrapped = malloc(slen + KH_MK_SEAL_OVERHEAD)) == NULL) {
		r = KH_ERR_NOMEM;
		goto fail;
	}
	if ((r = kh_mk_seal(hsm, next.major, aad, aadlen, src, slen, wrapped, &wlen)) != KH_OK ||
	    (r = kh_db_prepare(hsm->db,
	                       "UPDATE keys SET bits=?, attrs=?, wrapped=? "
	                       "WHERE slot=? AND key_id=?",
	                       &st)) != KH_OK)
		goto fail;
	sqlite3_bind_int64(st, 1, next.bits);
	sqlite3_bind_blob(st, 2, next.attrs_len ? (const void *)next.attrs : (const void *)"",
	                  (int)next.attrs_len, SQLITE_STATIC);
	sqlite3_bind_blob(st, 3, wrapped, (int)wlen, SQLITE_STATIC);
	sqlite3_bind_int64(st, 4, next.slot);
	sqlite3_bind_blob(st, 5, next.key_id, KH_KEY_ID_LEN, SQLITE_STATIC);
	if ((r = sqlite3_step(st)) != SQLITE_DONE) {
		r = kh_db_err(hsm->db, r);
		goto fail;
	}
	if (sqlite3_changes(kh_db_sqlite(hsm->db)) != 1) {
		r = KH_ERR_NOT_FOUND;
		goto fail;
	}
	snprintf(text, sizeof(text), "slot %u %s", next.slot, detail ? detail : "");
	if ((r = kh_audit_append(hsm, actor, "key.attributes", text)) != KH_OK)
		goto fail;
	sqlite3_finalize(st);
	st = NULL;
	r = kh_db_commit(hsm->db);
	/* after the commit, as in store() */
	kh_keycache_forget(hsm, was->slot);
	goto out;
fail:
	sqlite3_finalize(st);
	kh_db_rollback(hsm->db);
out:
	kh_secure_free(m, n);
	free(aad);
	free(wrapped);
	kh_keystore_row_free(&row);
	return r;
}

int kh_keystore_count(struct kh_hsm *hsm, uint32_t lo, uint32_t hi, uint64_t *count)
{
	sqlite3 *h = kh_db_sqlite(hsm->db);
	sqlite3_stmt *q = NULL;
	int r;

	kh_db_lock(hsm->db);
	if (sqlite3_prepare_v2(h, "SELECT count(*) FROM keys WHERE slot BETWEEN ? AND ?", -1, &q,
	                       NULL) != SQLITE_OK) {
		r = kh_db_err(hsm->db, sqlite3_errcode(h));
		goto out;
	}
	sqlite3_bind_int64(q, 1, lo);
	sqlite3_bind_int64(q, 2, hi);
	if ((r = sqlite3_step(q)) == SQLITE_ROW) {
		*count = (uint64_t)sqlite3_column_int64(q, 0);
		r = KH_OK;
	} else {
		r = kh_db_err(hsm->db, r);
	}
out:
	sqlite3_finalize(q);
	kh_db_unlock(hsm->db);
	return r;
}

int kh_keystore_list(struct kh_hsm *hsm, uint32_t from, struct kh_key_summary *out, size_t max,
                     size_t *n, bool *more)
{
	sqlite3 *h = kh_db_sqlite(hsm->db);
	sqlite3_stmt *q = NULL;
	struct kh_key_row row;
	int r, rc;

	*n = 0;
	*more = false;
	kh_db_lock(hsm->db);
	if (sqlite3_prepare_v2(h, "SELECT " COLS " FROM keys WHERE slot >= ? ORDER BY slot LIMIT ?",
	                       -1, &q, NULL) != SQLITE_OK) {
		r = kh_db_err(hsm->db, sqlite3_errcode(h));
		goto out;
	}
	sqlite3_bind_int64(q, 1, from);
	sqlite3_bind_int64(q, 2, (sqlite3_int64)max + 1);
	r = KH_OK;
	while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
		if (*n == max) {
			*more = true;
			break;
		}
		if ((r = row_from(q, &row, true)) != KH_OK)
			goto out;
		out[*n].slot = row.slot;
		memcpy(out[*n].key_id, row.key_id, KH_KEY_ID_LEN);
		out[*n].major = row.major;
		memcpy(out[*n].cls, row.cls, sizeof(row.cls));
		memcpy(out[*n].ktype, row.ktype, sizeof(row.ktype));
		out[*n].bits = row.bits;
		(*n)++;
	}
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		r = kh_db_err(hsm->db, rc);
out:
	sqlite3_finalize(q);
	kh_db_unlock(hsm->db);
	return r;
}

int kh_keystore_walk(struct kh_hsm *hsm, uint32_t lo, uint32_t hi,
                     int (*fn)(void *arg, const struct kh_key_row *row), void *arg)
{
	sqlite3 *h = kh_db_sqlite(hsm->db);
	sqlite3_stmt *q = NULL;
	struct kh_key_row row;
	int r, rc;

	kh_db_lock(hsm->db);
	if (sqlite3_prepare_v2(h, "SELECT " COLS " FROM keys WHERE slot BETWEEN ? AND ? ORDER BY slot",
	                       -1, &q, NULL) != SQLITE_OK) {
		r = kh_db_err(hsm->db, sqlite3_errcode(h));
		goto out;
	}
	sqlite3_bind_int64(q, 1, lo);
	sqlite3_bind_int64(q, 2, hi);
	r = KH_OK;
	while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
		if ((r = row_from(q, &row, false)) != KH_OK)
			goto out;
		row.mk_gen = kh_mk_generation(hsm, row.major);
		r = fn(arg, &row);
		kh_keystore_row_free(&row);
		if (r == KH_KS_STOP) {
			r = KH_OK;
			goto out;
		}
		if (r != KH_OK)
			goto out;
	}
	if (rc != SQLITE_DONE)
		r = kh_db_err(hsm->db, rc);
out:
	sqlite3_finalize(q);
	kh_db_unlock(hsm->db);
	return r;
}

int kh_keystore_foreach(struct kh_hsm *hsm, int (*fn)(void *arg, const struct kh_key_row *row),
                        void *arg)
{
	return kh_keystore_walk(hsm, 0, KH_SLOT_MAX, fn, arg);
}

/* ---- replication ------------------------------------------------------------ */

static bool same_opt(const uint8_t *a, size_t an, const uint8_t *b, size_t bn)
{
	return an == bn && (an == 0 || memcmp(a, b, an) == 0);
}

/* Every stored column alike (created included): re-applying it is no change. */
static bool same_row(const struct kh_key_row *a, const struct kh_key_row *b)
{
	return a->slot == b->slot && same_key_columns(a, b) && a->bits == b->bits &&
	       same_opt(a->attrs, a->attrs_len, b->attrs, b->attrs_len) &&
	       same_opt(a->wrapped, a->wrapped_len, b->wrapped, b->wrapped_len) &&
	       same_opt(a->label, a->label_len, b->label, b->label_len) &&
	       same_opt(a->ckaid, a->ckaid_len, b->ckaid, b->ckaid_len) &&
	       same_opt(a->extra, a->extra_len, b->extra, b->extra_len) &&
	       a->created == b->created;
}

static int repl_delete(struct kh_hsm *hsm, const struct kh_ks_del *d, const char *actor,
                       struct kh_ks_repl_result *res)
{
	struct kh_key_row cur;
	sqlite3_stmt *st = NULL;
	char text[48];
	int r = kh_keystore_get(hsm, d->slot, &cur);

	if (r == KH_ERR_NOT_FOUND) {
		res->absent++;
		return KH_OK;
	}
	if (r != KH_OK)
		return r;
	bool mine = kh_ct_equal(cur.key_id, d->key_id, KH_KEY_ID_LEN);
	kh_keystore_row_free(&cur);
	if (!mine) {
		res->absent++;
		return KH_OK;
	}
	if ((r = kh_db_prepare(hsm->db, "DELETE FROM keys WHERE slot=?", &st)) != KH_OK)
		return r;
	sqlite3_bind_int64(st, 1, d->slot);
	r = sqlite3_step(st);
	sqlite3_finalize(st);
	if (r != SQLITE_DONE)
		return kh_db_err(hsm->db, r);
	snprintf(text, sizeof(text), "slot %u (replication)", d->slot);
	if ((r = kh_audit_append(hsm, actor, "key.delete", text)) != KH_OK)
		return r;
	res->deleted++;
	return KH_OK;
}

static int repl_row(struct kh_hsm *hsm, const struct kh_key_row *row, bool replace,
                    const char *actor, struct kh_ks_repl_result *res)
{
	struct kh_key_row cur;
	uint8_t *m = NULL;
	size_t mlen = 0;
	const char *how = "new";
	char text[160];
	int r;

	if ((r = validate(row)) != KH_OK)
		return r;
	/* a row made elsewhere is stored only if it opens here: same major
	 * key, and not one bound column altered on the way */
	if ((r = kh_keystore_unwrap(hsm, row, &m, &mlen)) != KH_OK)
		return r;
	kh_secure_free(m, mlen);
	r = kh_keystore_get(hsm, row->slot, &cur);
	if (r == KH_OK) {
		bool same_id = kh_ct_equal(cur.key_id, row->key_id, KH_KEY_ID_LEN);
		if (same_id && same_row(&cur, row)) {
			kh_keystore_row_free(&cur);
			res->unchanged++;
			return KH_OK;
		}
		if (same_id && !replace && !kh_key_row_change_allowed(&cur, row))
			r = KH_ERR_KEY_USAGE;
		else if (!same_id && !replace)
			r = KH_ERR_EXISTS;
		how = same_id ? "updated" : "replaced";
		kh_keystore_row_free(&cur);
		if (r != KH_OK)
			return r;
	} else if (r != KH_ERR_NOT_FOUND) {
		return r;
	}
	if ((r = store(hsm, row, row->wrapped, row->wrapped_len, KH_KS_REPLACE | KH_KS_QUIET, actor,
	               NULL)) != KH_OK)
		return r;
	snprintf(text, sizeof(text), "slot %u %s %s-%u under %s (%s)", row->slot, row->cls,
	         row->ktype, row->bits, kh_mk_name(row->major), how);
	if ((r = kh_audit_append(hsm, actor, "key.replicate", text)) != KH_OK)
		return r;
	if (how[0] == 'n')
		res->added++;
	else if (how[0] == 'u')
		res->updated++;
	else
		res->replaced++;
	return KH_OK;
}

int kh_keystore_replicate(struct kh_hsm *hsm, const struct kh_key_row *rows, size_t nrows,
                          const struct kh_ks_del *dels, size_t ndels, bool replace,
                          const char *actor, struct kh_ks_repl_result *res)
{
	int r;

	memset(res, 0, sizeof(*res));
	/* one transaction under the database lock: a rotation cannot come
	 * between a row's check and its write, and a failure leaves nothing */
	if ((r = kh_db_begin(hsm->db)) != KH_OK)
		return r;
	for (size_t i = 0; i < ndels; i++) {
		res->bad_slot = dels[i].slot;
		if (dels[i].slot > KH_SLOT_MAX) {
			r = KH_ERR_BAD_FIELD;
			goto fail;
		}
		if ((r = repl_delete(hsm, &dels[i], actor, res)) != KH_OK)
			goto fail;
	}
	for (size_t i = 0; i < nrows; i++) {
		res->bad_slot = rows[i].slot;
		if ((r = repl_row(hsm, &rows[i], replace, actor, res)) != KH_OK)
			goto fail;
	}
	res->bad_slot = 0;
	r = kh_db_commit(hsm->db);
	/* after the commit, as in store(); on failure too: nothing changed,
	 * and forgetting an entry only costs a re-read */
	goto forget;
fail:
	kh_db_rollback(hsm->db);
forget:
	for (size_t i = 0; i < ndels; i++)
		kh_keycache_forget(hsm, dels[i].slot);
	for (size_t i = 0; i < nrows; i++)
		kh_keycache_forget(hsm, rows[i].slot);
	return r;
}

int kh_keystore_rewrap(struct kh_hsm *hsm, enum kh_mk_id major, kh_keystore_rewrap_fn fn, void *arg,
                       uint64_t *count, uint32_t *bad_slot)
{
	sqlite3 *h = kh_db_sqlite(hsm->db);
	sqlite3_stmt *q = NULL, *u = NULL;
	struct kh_key_row row = {0};
	uint32_t *slots = NULL;
	size_t n = 0, cap = 0;
	uint8_t *aad = NULL, *out = NULL;
	size_t aadlen = 0;
	int r, rc;

	*count = 0;
	*bad_slot = 0;
	/* the slots first: the rows are updated after the walk, not under it */
	if (sqlite3_prepare_v2(h, "SELECT slot FROM keys WHERE major=? ORDER BY slot", -1, &q,
	                       NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(h, "UPDATE keys SET wrapped=? WHERE slot=?", -1, &u, NULL) !=
	        SQLITE_OK) {
		r = kh_db_err(hsm->db, sqlite3_errcode(h));
		goto out;
	}
	sqlite3_bind_text(q, 1, kh_mk_name(major), -1, SQLITE_STATIC);
	while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
		if (n == cap) {
			size_t ncap = cap ? 2 * cap : 256;
			uint32_t *p = realloc(slots, ncap * sizeof(*slots));
			if (p == NULL) {
				r = KH_ERR_NOMEM;
				goto out;
			}
			slots = p;
			cap = ncap;
		}
		slots[n++] = (uint32_t)sqlite3_column_int64(q, 0);
	}
	if (rc != SQLITE_DONE) {
		r = kh_db_err(hsm->db, rc);
		goto out;
	}
	r = KH_OK;
	for (size_t i = 0; i < n && r == KH_OK; i++) {
		*bad_slot = slots[i];
		if ((r = kh_keystore_get(hsm, slots[i], &row)) != KH_OK)
			break;
		if (row.wrapped_len <= KH_MK_SEAL_OVERHEAD || validate(&row) != KH_OK) {
			r = KH_ERR_CRYPTO;
			break;
		}
		if ((r = make_aad(&row, &aad, &aadlen)) != KH_OK)
			break;
		if ((out = malloc(row.wrapped_len)) == NULL) {
			r = KH_ERR_NOMEM;
			break;
		}
		if ((r = fn(arg, aad, aadlen, row.wrapped, row.wrapped_len, out)) != KH_OK)
			break;
		sqlite3_reset(u);
		sqlite3_bind_blob(u, 1, out, (int)row.wrapped_len, SQLITE_STATIC);
		sqlite3_bind_int64(u, 2, row.slot);
		if ((rc = sqlite3_step(u)) != SQLITE_DONE) {
			r = kh_db_err(hsm->db, rc);
			break;
		}
		(*count)++;
		free(aad);
		free(out);
		aad = out = NULL;
		kh_keystore_row_free(&row);
	}
out:
	sqlite3_finalize(q);
	sqlite3_finalize(u);
	kh_keystore_row_free(&row);
	free(aad);
	free(out);
	free(slots);
	return r;
}

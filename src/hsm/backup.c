/*
 * Backup and restore. The plaintext (which holds every key's material) only
 * exists in locked, never-dumped pages that are wiped before release; it is
 * never written anywhere except AES-256-GCM-encrypted under the BEK. A
 * restore validates everything before it changes anything, in one transaction.
 */
#include "hsm/backup.h"
#include "hsm/audit.h"
#include "hsm/db.h"
#include "hsm/dispatch.h"
#include "hsm/hsm_core.h"
#include "hsm/identity.h"
#include "hsm/keystore.h"
#include "hsm/keyobj.h"
#include "hsm/roles.h"
#include "common/kh_buf.h"
#include "common/kh_mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#define HDR_MAGIC "KHBK"
#define BODY_MAGIC "KHBP"
#define BACKUP_INFO "keyhold backup v1"
#define SETTING_VALUE_MAX (1u << 20)
#define TEXT_MAX 4096 /* role fields and pw_params */
#define BLOB_MAX 1024 /* pw_hash, pw_salt */

/* Settings that describe this device, not its configuration: never copied.
 * clock_offset corrects this device's own system clock, so another
 * device's value would set a wrong time. */
static const char *const device_settings[] = {"serial", "audit_head", "clock_offset"};

static bool device_setting(const char *k, size_t n)
{
	for (size_t i = 0; i < sizeof(device_settings) / sizeof(device_settings[0]); i++)
		if (strlen(device_settings[i]) == n && memcmp(device_settings[i], k, n) == 0)
			return true;
	return false;
}

/* ---- locked pages for the plaintext --------------------------------------- */

/* The plaintext can be hundreds of megabytes: too large for the secure heap
 * that keeps major keys and the key cache, so it gets its own undumpable
 * map. The map reserves cap bytes of address space; pages are locked as
 * they are first written (a backup's size is not known in advance, and
 * locking the whole reservation would pin a gigabyte), and only the pages
 * that may hold plaintext are wiped on release. */
#define LBUF_LOCK_STEP (1u << 20)

struct lbuf {
	uint8_t *p;
	size_t len, cap;
	size_t locked; /* bytes from p that were mlock'd (best effort) */
	size_t dirty;  /* bytes from p that may hold plaintext */
	int err;
};

static int lbuf_init(struct lbuf *b, size_t cap, bool whole)
{
	memset(b, 0, sizeof(*b));
	void *p = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
	               -1, 0);
	if (p == MAP_FAILED)
		return KH_ERR_NOMEM;
	(void)madvise(p, cap, MADV_DONTDUMP);
	b->p = p;
	b->cap = cap;
	if (whole) { /* the caller writes all of it at once (decryption) */
		(void)mlock(p, cap); /* best effort: RLIMIT_MEMLOCK may be small */
		b->locked = b->dirty = cap;
	}
	return KH_OK;
}

/* Lock (best effort) the pages up to end before plaintext goes there. */
static void lbuf_touch(struct lbuf *b, size_t end)
{
	if (end > b->dirty)
		b->dirty = end;
	if (end <= b->locked)
		return;
	size_t to = (end + LBUF_LOCK_STEP - 1) / LBUF_LOCK_STEP * LBUF_LOCK_STEP;
	if (to > b->cap)
		to = b->cap;
	(void)mlock(b->p + b->locked, to - b->locked);
	b->locked = to;
}

static void lbuf_free(struct lbuf *b)
{
	if (b->p == NULL)
		return;
	kh_wipe(b->p, b->dirty);
	(void)munlock(b->p, b->locked);
	(void)munmap(b->p, b->cap);
	memset(b, 0, sizeof(*b));
}

static void put(struct lbuf *b, const void *d, size_t n)
{
	if (b->err)
		return;
	if (n > b->cap - b->len) {
		b->err = KH_ERR_TOO_LARGE;
		return;
	}
	lbuf_touch(b, b->len + n);
	if (n)
		memcpy(b->p + b->len, d, n);
	b->len += n;
}

static void put_u8(struct lbuf *b, unsigned v)
{
	uint8_t x = (uint8_t)v;
	put(b, &x, 1);
}

static void put_u16(struct lbuf *b, unsigned v)
{
	uint8_t x[2] = {(uint8_t)(v >> 8), (uint8_t)v};
	put(b, x, 2);
}

static void put_u32(struct lbuf *b, uint32_t v)
{
	uint8_t x[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
	put(b, x, 4);
}

static void put_i64(struct lbuf *b, int64_t s)
{
	uint64_t v = (uint64_t)s;
	put_u32(b, (uint32_t)(v >> 32));
	put_u32(b, (uint32_t)v);
}

static void put_lp(struct lbuf *b, unsigned bits, const void *d, size_t n)
{
	size_t max = bits == 8 ? 0xff : bits == 16 ? 0xffff : 0xffffffffu;
	if (n > max) {
		if (!b->err)
			b->err = KH_ERR_TOO_LARGE;
		return;
	}
	if (bits == 8)
		put_u8(b, (unsigned)n);
	else if (bits == 16)
		put_u16(b, (unsigned)n);
	else
		put_u32(b, (uint32_t)n);
	put(b, d, n);
}

/* ---- decoding (pure) -------------------------------------------------------- */

static int64_t get_i64(struct kh_rd *r)
{
	uint64_t hi = kh_rd_u32(r), lo = kh_rd_u32(r);
	return (int64_t)((hi << 32) | lo);
}

static bool get_bool(struct kh_rd *r)
{
	unsigned v = kh_rd_u8(r);
	if (v > 1)
		r->bad = true;
	return v == 1;
}

/* Length-prefixed bytes, at most max. */
static const uint8_t *get_lp(struct kh_rd *r, unsigned bits, size_t max, size_t *len)
{
	size_t n;
	if (bits == 8) {
		n = kh_rd_u8(r);
	} else if (bits == 16) {
		n = kh_rd_u16(r);
	} else {
		n = kh_rd_u32(r);
	}
	*len = 0;
	if (r->bad)
		return NULL;
	if (n > max) {
		r->bad = true;
		return NULL;
	}
	*len = n;
	return kh_rd_take(r, n);
}

/* Printable text without the reserved bytes of the wire, min..max bytes. */
static const char *get_text(struct kh_rd *r, unsigned bits, size_t min, size_t max, size_t *len)
{
	const uint8_t *q = get_lp(r, bits, max, len);
	if (q == NULL)
		return NULL;
	if (*len < min)
		r->bad = true;
	for (size_t i = 0; i < *len; i++)
		if (q[i] < 0x20 || q[i] > 0x7e)
			r->bad = true;
	return (const char *)q;
}

static void get_name(struct kh_rd *r, char out[static 16])
{
	size_t n = 0;
	const char *s = get_text(r, 8, 1, 15, &n);
	out[0] = '\0';
	if (s == NULL || r->bad)
		return;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '-' || c == '.'))
			r->bad = true;
	}
	memcpy(out, s, n);
	out[n] = '\0';
}

/* Strictly increasing byte strings (the order SQLite's BINARY collation gives). */
static bool after(const char *prev, size_t plen, const char *cur, size_t clen)
{
	size_t m = plen < clen ? plen : clen;
	int c = memcmp(prev, cur, m);
	return c < 0 || (c == 0 && plen < clen);
}

static int decode_config(struct kh_rd *r, const struct kh_backup_visitor *v, void *arg,
                         struct kh_backup_counts *cnt)
{
	uint32_t n;
	int rv;

	n = kh_rd_u32(r);
	const char *prev = NULL;
	size_t prevlen = 0;
	for (uint32_t i = 0; i < n && !r->bad; i++) {
		struct kh_backup_setting s;
		s.key = get_text(r, 16, 1, 255, &s.key_len);
		s.val = get_lp(r, 32, SETTING_VALUE_MAX, &s.val_len);
		if (r->bad || (prev && !after(prev, prevlen, s.key, s.key_len)) ||
		    device_setting(s.key, s.key_len))
			return KH_ERR_BACKUP_INVALID;
		prev = s.key;
		prevlen = s.key_len;
		cnt->settings++;
		if (v && v->setting && (rv = v->setting(arg, &s)) != KH_OK)
			return rv;
	}
	n = kh_rd_u32(r);
	int64_t last = INT64_MIN;
	for (uint32_t i = 0; i < n && !r->bad; i++) {
		struct kh_backup_role ro;
		ro.id = get_i64(r);
		ro.name = get_text(r, 16, 1, KH_NAME_MAX - 1, &ro.name_len);
		ro.perms = get_text(r, 16, 0, TEXT_MAX, &ro.perms_len);
		ro.ranges = get_text(r, 16, 0, TEXT_MAX, &ro.ranges_len);
		ro.commands = get_text(r, 16, 0, TEXT_MAX, &ro.commands_len);
		ro.logins_required = kh_rd_u32(r);
		ro.ports = kh_rd_u32(r);
		ro.sources = kh_rd_u32(r);
		ro.dual_factor = get_bool(r);
		ro.builtin = get_bool(r);
		if (r->bad || ro.id <= last || ro.logins_required > 3)
			return KH_ERR_BACKUP_INVALID;
		last = ro.id;
		cnt->roles++;
		if (v && v->role && (rv = v->role(arg, &ro)) != KH_OK)
			return rv;
	}
	n = kh_rd_u32(r);
	last = INT64_MIN;
	for (uint32_t i = 0; i < n && !r->bad; i++) {
		struct kh_backup_identity id;
		id.id = get_i64(r);
		id.name = get_text(r, 16, 1, KH_NAME_MAX - 1, &id.name_len);
		id.role_id = get_i64(r);
		id.pw_hash = get_lp(r, 16, BLOB_MAX, &id.pw_hash_len);
		id.pw_salt = get_lp(r, 16, BLOB_MAX, &id.pw_salt_len);
		id.pw_params = get_text(r, 16, 0, TEXT_MAX, &id.pw_params_len);
		id.must_change = get_bool(r);
		id.failures = kh_rd_u32(r);
		id.locked_until = get_i64(r);
		id.builtin = get_bool(r);
		id.created = get_i64(r);
		id.changed = get_i64(r);
		if (r->bad || id.id <= last)
			return KH_ERR_BACKUP_INVALID;
		last = id.id;
		cnt->identities++;
		if (v && v->identity && (rv = v->identity(arg, &id)) != KH_OK)
			return rv;
	}
	return r->bad ? KH_ERR_BACKUP_INVALID : KH_OK;
}

static int decode_keys(struct kh_rd *r, const struct kh_backup_visitor *v, void *arg,
                       struct kh_backup_counts *cnt)
{
	uint32_t n = kh_rd_u32(r);
	int64_t last = -1;
	int rv;

	for (uint32_t i = 0; i < n && !r->bad; i++) {
		struct kh_backup_key k;
		char major[16];
		k.slot = kh_rd_u32(r);
		k.key_id = kh_rd_take(r, KH_KEY_ID_LEN);
		get_name(r, major);
		get_name(r, k.cls);
		get_name(r, k.ktype);
		k.bits = kh_rd_u32(r);
		k.attrs = get_lp(r, 32, KH_KS_ATTRS_MAX, &k.attrs_len);
		k.material = get_lp(r, 32, KH_KS_MATERIAL_MAX, &k.material_len);
		k.label = get_lp(r, 32, KH_KS_DESC_MAX, &k.label_len);
		k.ckaid = get_lp(r, 32, KH_KS_DESC_MAX, &k.ckaid_len);
		k.extra = get_lp(r, 32, KH_KS_DESC_MAX, &k.extra_len);
		k.created = get_i64(r);
		if (r->bad || k.slot > KH_SLOT_MAX || (int64_t)k.slot <= last ||
		    k.bits > KH_KS_BITS_MAX ||
		    k.material_len == 0 || kh_mk_id_parse(major, &k.major) != KH_OK ||
		    (k.major != KH_MK_FTK && k.major != KH_MK_PMK))
			return KH_ERR_BACKUP_INVALID;
		last = k.slot;
		cnt->keys++;
		cnt->needs[k.major] = true;
		if (v && v->key && (rv = v->key(arg, &k)) != KH_OK)
			return rv;
	}
	return r->bad ? KH_ERR_BACKUP_INVALID : KH_OK;
}

int kh_backup_decode(const uint8_t *p, size_t n, unsigned scope, const struct kh_backup_visitor *v,
                     void *arg, struct kh_backup_counts *counts)
{
	struct kh_rd r = {.p = p, .n = n};
	struct kh_backup_counts cnt = {0};
	const uint8_t *q;
	int rv = KH_OK;

	if (p == NULL || scope == 0 || (scope & ~(unsigned)KH_BACKUP_ALL)) {
		rv = KH_ERR_BACKUP_INVALID;
		goto out;
	}
	if ((q = kh_rd_take(&r, 4)) == NULL || memcmp(q, BODY_MAGIC, 4) != 0) {
		rv = KH_ERR_BACKUP_INVALID;
		goto out;
	}
	if ((scope & KH_BACKUP_CONFIG) && (rv = decode_config(&r, v, arg, &cnt)) != KH_OK)
		goto out;
	if ((scope & KH_BACKUP_KEYS) && (rv = decode_keys(&r, v, arg, &cnt)) != KH_OK)
		goto out;
	if (r.bad || r.off != r.n)
		rv = KH_ERR_BACKUP_INVALID;
out:
	if (counts)
		*counts = cnt;
	return rv;
}

static bool is_uhex(uint8_t c)
{
	return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F');
}

int kh_backup_parse_header(const uint8_t *p, size_t n, struct kh_backup_hdr *h)
{
	struct kh_rd r = {.p = p, .n = n};
	const uint8_t *q;

	memset(h, 0, sizeof(*h));
	if (p == NULL || n < KH_BACKUP_HDR_LEN + KH_MK_SEAL_OVERHEAD || n > KH_BACKUP_MAX)
		return KH_ERR_BACKUP_INVALID;
	if ((q = kh_rd_take(&r, 4)) == NULL || memcmp(q, HDR_MAGIC, 4) != 0)
		return KH_ERR_BACKUP_INVALID;
	h->version = kh_rd_u8(&r);
	h->scope = kh_rd_u8(&r);
	if ((q = kh_rd_take(&r, 6)) == NULL)
		return KH_ERR_BACKUP_INVALID;
	for (int i = 0; i < 6; i++) {
		if (!is_uhex(q[i]))
			return KH_ERR_BACKUP_INVALID;
		h->kcv[i] = (char)q[i];
	}
	h->created = get_i64(&r);
	if (r.bad || r.off != KH_BACKUP_HDR_LEN || h->version != KH_BACKUP_VERSION ||
	    h->scope == 0 || (h->scope & ~(unsigned)KH_BACKUP_ALL))
		return KH_ERR_BACKUP_INVALID;
	return KH_OK;
}

/* ---- create ------------------------------------------------------------------ */

struct keys_ctx {
	struct kh_hsm *hsm;
	struct lbuf *b;
	uint32_t count;
};

static int add_key(void *arg, const struct kh_key_row *row)
{
	struct keys_ctx *kc = arg;
	uint8_t *m = NULL;
	size_t mlen = 0;
	int r = kh_keystore_unwrap(kc->hsm, row, &m, &mlen);
	if (r != KH_OK)
		return r;
	put_u32(kc->b, row->slot);
	put(kc->b, row->key_id, KH_KEY_ID_LEN);
	put_lp(kc->b, 8, kh_mk_name(row->major), 3);
	put_lp(kc->b, 8, row->cls, strlen(row->cls));
	put_lp(kc->b, 8, row->ktype, strlen(row->ktype));
	put_u32(kc->b, row->bits);
	put_lp(kc->b, 32, row->attrs, row->attrs_len);
	put_lp(kc->b, 32, m, mlen);
	put_lp(kc->b, 32, row->label, row->label_len);
	put_lp(kc->b, 32, row->ckaid, row->ckaid_len);
	put_lp(kc->b, 32, row->extra, row->extra_len);
	put_i64(kc->b, row->created);
	kh_secure_free(m, mlen);
	kc->count++;
	return kc->b->err;
}

/* A count placeholder filled in once the rows are written. */
static void patch_u32(struct lbuf *b, size_t at, uint32_t v)
{
	if (b->err)
		return;
	b->p[at] = (uint8_t)(v >> 24);
	b->p[at + 1] = (uint8_t)(v >> 16);
	b->p[at + 2] = (uint8_t)(v >> 8);
	b->p[at + 3] = (uint8_t)v;
}

/* lockout: write each identity's failures and lock time (a backup), or
 * zeros (a configuration for another member: lockout is this device's). */
static int write_config(struct kh_hsm *hsm, struct lbuf *b, struct kh_backup_counts *cnt,
                        bool lockout)
{
	sqlite3 *h = kh_db_sqlite(hsm->db);
	sqlite3_stmt *q = NULL;
	size_t at;
	uint32_t n;
	int rc, r = KH_OK;

	/* settings */
	at = b->len;
	put_u32(b, 0);
	n = 0;
	if ((rc = sqlite3_prepare_v2(h, "SELECT key, value FROM settings ORDER BY key", -1, &q,
	                             NULL)) != SQLITE_OK)
		goto dberr;
	while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
		const char *k = (const char *)sqlite3_column_text(q, 0);
		size_t kl = (size_t)sqlite3_column_bytes(q, 0);
		if (k == NULL || device_setting(k, kl))
			continue;
		put_lp(b, 16, k, kl);
		put_lp(b, 32, sqlite3_column_blob(q, 1), (size_t)sqlite3_column_bytes(q, 1));
		n++;
	}
	if (rc != SQLITE_DONE)
		goto dberr;
	patch_u32(b, at, n);
	cnt->settings = n;
	sqlite3_finalize(q);
	q = NULL;

	/* roles */
	at = b->len;
	put_u32(b, 0);
	n = 0;
	if ((rc = sqlite3_prepare_v2(h,
	                             "SELECT id, name, perms, ranges, commands, logins_required, "
	                             "ports, sources, dual_factor, builtin FROM roles ORDER BY id",
	                             -1, &q, NULL)) != SQLITE_OK)
		goto dberr;
	while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
		put_i64(b, sqlite3_column_int64(q, 0));
		for (int c = 1; c <= 4; c++)
			put_lp(b, 16, sqlite3_column_text(q, c),
			       (size_t)sqlite3_column_bytes(q, c));
		for (int c = 5; c <= 7; c++)
			put_u32(b, (uint32_t)sqlite3_column_int64(q, c));
		put_u8(b, sqlite3_column_int(q, 8) != 0);
		put_u8(b, sqlite3_column_int(q, 9) != 0);
		n++;
	}
	if (rc != SQLITE_DONE)
		goto dberr;
	patch_u32(b, at, n);
	cnt->roles = n;
	sqlite3_finalize(q);
	q = NULL;

	/* identities */
	at = b->len;
	put_u32(b, 0);
	n = 0;
	if ((rc = sqlite3_prepare_v2(
	         h,
	         "SELECT id, name, role_id, pw_hash, pw_salt, pw_params, "
	         "must_change, failures, locked_until, builtin, created, changed "
	         "FROM identities ORDER BY id",
	         -1, &q, NULL)) != SQLITE_OK)
		goto dberr;
	while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
		put_i64(b, sqlite3_column_int64(q, 0));
		put_lp(b, 16, sqlite3_column_text(q, 1), (size_t)sqlite3_column_bytes(q, 1));
		put_i64(b, sqlite3_column_int64(q, 2));
		put_lp(b, 16, sqlite3_column_blob(q, 3), (size_t)sqlite3_column_bytes(q, 3));
		put_lp(b, 16, sqlite3_column_blob(q, 4), (size_t)sqlite3_column_bytes(q, 4));
		put_lp(b, 16, sqlite3_column_text(q, 5), (size_t)sqlite3_column_bytes(q, 5));
		put_u8(b, sqlite3_column_int(q, 6) != 0);
		put_u32(b, lockout ? (uint32_t)sqlite3_column_int64(q, 7) : 0);
		put_i64(b, lockout ? sqlite3_column_int64(q, 8) : 0);
		put_u8(b, sqlite3_column_int(q, 9) != 0);
		put_i64(b, sqlite3_column_int64(q, 10));
		put_i64(b, sqlite3_column_int64(q, 11));
		n++;
	}
	if (rc != SQLITE_DONE)
		goto dberr;
	patch_u32(b, at, n);
	cnt->identities = n;
	r = b->err;
	goto out;
dberr:
	r = kh_db_err(hsm->db, rc);
out:
	sqlite3_finalize(q);
	return r;
}

int kh_backup_create(struct kh_hsm *hsm, unsigned scope, const char *actor, uint8_t **out,
                     size_t *outlen, struct kh_backup_counts *counts)
{
	struct kh_backup_counts cnt = {0};
	struct kh_mk_info bek;
	struct lbuf b = {0};
	struct keys_ctx kc;
	uint8_t *file = NULL;
	size_t sealed = 0;
	char text[200];
	int r;

	if (scope == 0 || (scope & ~(unsigned)KH_BACKUP_ALL))
		return KH_ERR_BAD_FIELD;
	kh_mk_info(hsm, KH_MK_BEK, &bek);
	if (!bek.loaded)
		return KH_ERR_MAJOR_KEY_NOT_LOADED;
	if ((r = lbuf_init(&b, KH_BACKUP_MAX - KH_BACKUP_HDR_LEN - KH_MK_SEAL_OVERHEAD, false)) != KH_OK)
		return r;
	put(&b, BODY_MAGIC, 4);
	/* one consistent snapshot: every writer takes the database lock */
	kh_db_lock(hsm->db);
	if (scope & KH_BACKUP_CONFIG)
		r = write_config(hsm, &b, &cnt, true);
	if (r == KH_OK && (scope & KH_BACKUP_KEYS)) {
		size_t at = b.len;
		put_u32(&b, 0);
		kc.hsm = hsm;
		kc.b = &b;
		kc.count = 0;
		r = kh_keystore_foreach(hsm, add_key, &kc);
		patch_u32(&b, at, kc.count);
		cnt.keys = kc.count;
	}
	kh_db_unlock(hsm->db);
	if (r == KH_OK)
		r = b.err;
	if (r != KH_OK)
		goto out;

	if ((file = malloc(KH_BACKUP_HDR_LEN + b.len + KH_MK_SEAL_OVERHEAD)) == NULL) {
		r = KH_ERR_NOMEM;
		goto out;
	}
	{
		/* the header is not secret: never locked */
		struct lbuf hb = {.p = file, .cap = KH_BACKUP_HDR_LEN, .locked = KH_BACKUP_HDR_LEN};
		put(&hb, HDR_MAGIC, 4);
		put_u8(&hb, KH_BACKUP_VERSION);
		put_u8(&hb, scope);
		put(&hb, bek.kcv, 6);
		put_i64(&hb, (int64_t)kh_hsm_now(hsm));
		if (hb.err || hb.len != KH_BACKUP_HDR_LEN) {
			r = KH_ERR_INTERNAL;
			goto out;
		}
	}
	if ((r = kh_mk_seal_ex(hsm, KH_MK_BEK, BACKUP_INFO, file, KH_BACKUP_HDR_LEN, b.p, b.len,
	                       file + KH_BACKUP_HDR_LEN, &sealed)) != KH_OK)
		goto out;
	snprintf(text, sizeof(text),
	         "scope %s: %u settings, %u roles, %u identities, %u keys; BEK KCV %s",
	         scope == KH_BACKUP_ALL      ? "all"
	         : scope == KH_BACKUP_CONFIG ? "config"
	                                     : "keys",
	         cnt.settings, cnt.roles, cnt.identities, cnt.keys, bek.kcv);
	if ((r = kh_audit_append(hsm, actor, "backup.create", text)) != KH_OK)
		goto out;
	*out = file;
	*outlen = KH_BACKUP_HDR_LEN + sealed;
	file = NULL;
	if (counts)
		*counts = cnt;
out:
	free(file);
	lbuf_free(&b);
	return r;
}

/* ---- restore ----------------------------------------------------------------- */

struct restore_ctx {
	struct kh_hsm *hsm;
	int64_t when; /* the backup's time */
	const char *actor;
	char *detail;
	size_t detailsz;
};

static int run(struct kh_hsm *hsm, sqlite3_stmt *st)
{
	int rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc == SQLITE_DONE)
		return KH_OK;
	/* a constraint here means the backup contradicts itself (e.g. an
	 * identity of a role that is not in it) */
	return rc == SQLITE_CONSTRAINT ? KH_ERR_BACKUP_INVALID : kh_db_err(hsm->db, rc);
}

static int prep(struct kh_hsm *hsm, const char *sql, sqlite3_stmt **st)
{
	sqlite3 *h = kh_db_sqlite(hsm->db);
	if (sqlite3_prepare_v2(h, sql, -1, st, NULL) != SQLITE_OK)
		return kh_db_err(hsm->db, sqlite3_errcode(h));
	return KH_OK;
}

static int restore_setting(void *arg, const struct kh_backup_setting *s)
{
	struct restore_ctx *rc = arg;
	sqlite3_stmt *st;
	int r = prep(rc->hsm, "INSERT INTO settings(key, value) VALUES(?,?)", &st);
	if (r != KH_OK)
		return r;
	sqlite3_bind_text(st, 1, s->key, (int)s->key_len, SQLITE_STATIC);
	sqlite3_bind_blob(st, 2, s->val_len ? (const void *)s->val : (const void *)"",
	                  (int)s->val_len, SQLITE_STATIC);
	return run(rc->hsm, st);
}

/* A backup is authenticated under the BEK, but it may come from another
 * firmware version: a role or identity that this one could not load is
 * refused here, before anything is written, rather than stored and found
 * broken at the next login. */
static bool role_fields_ok(const struct kh_backup_role *ro)
{
	char name[KH_NAME_MAX];
	uint64_t perms;
	struct kh_range ranges[KH_MAX_RANGES];
	size_t nranges;
	uint8_t cmds[KH_MAX_COMMANDS / 8];

	if (ro->name_len == 0 || ro->name_len >= sizeof(name))
		return false;
	memcpy(name, ro->name, ro->name_len);
	name[ro->name_len] = '\0';
	return kh_role_name_valid(name) &&
	       kh_perms_parse(ro->perms, ro->perms_len, &perms) == KH_OK &&
	       kh_ranges_parse(ro->ranges, ro->ranges_len, ranges, &nranges) == KH_OK &&
	       kh_cmds_parse(ro->commands, ro->commands_len, cmds) == KH_OK &&
	       ro->logins_required <= 3 && (ro->ports & ~(unsigned)(KH_PORT_PROD | KH_PORT_ADMIN)) == 0 &&
	       (ro->sources & ~(unsigned)(KH_SRC_ETHERNET | KH_SRC_USB)) == 0;
}

static bool identity_fields_ok(const struct kh_backup_identity *id)
{
	char name[KH_NAME_MAX];
	if (id->name_len == 0 || id->name_len >= sizeof(name))
		return false;
	memcpy(name, id->name, id->name_len);
	name[id->name_len] = '\0';
	return kh_ident_name_valid(name) && id->pw_hash_len == KH_PW_HASH_LEN &&
	       id->pw_salt_len == KH_PW_SALT_LEN && id->pw_params_len > 0;
}

static int restore_role(void *arg, const struct kh_backup_role *ro)
{
	struct restore_ctx *rc = arg;
	sqlite3_stmt *st;
	if (!role_fields_ok(ro)) {
		snprintf(rc->detail, rc->detailsz, "role %lld has fields this HSM cannot use",
		         (long long)ro->id);
		return KH_ERR_BACKUP_INVALID;
	}
	int r = prep(rc->hsm,
	             "INSERT INTO roles(id, name, perms, ranges, commands, logins_required, ports, "
	             "sources, dual_factor, builtin) VALUES(?,?,?,?,?,?,?,?,?,?)",
	             &st);
	if (r != KH_OK)
		return r;
	sqlite3_bind_int64(st, 1, ro->id);
	sqlite3_bind_text(st, 2, ro->name, (int)ro->name_len, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, ro->perms, (int)ro->perms_len, SQLITE_STATIC);
	sqlite3_bind_text(st, 4, ro->ranges, (int)ro->ranges_len, SQLITE_STATIC);
	sqlite3_bind_text(st, 5, ro->commands, (int)ro->commands_len, SQLITE_STATIC);
	sqlite3_bind_int64(st, 6, ro->logins_required);
	sqlite3_bind_int64(st, 7, ro->ports);
	sqlite3_bind_int64(st, 8, ro->sources);
	sqlite3_bind_int(st, 9, ro->dual_factor);
	sqlite3_bind_int(st, 10, ro->builtin);
	if ((r = run(rc->hsm, st)) == KH_ERR_BACKUP_INVALID)
		snprintf(rc->detail, rc->detailsz, "role %lld conflicts with another",
		         (long long)ro->id);
	return r;
}

static int restore_identity(void *arg, const struct kh_backup_identity *id)
{
	struct restore_ctx *rc = arg;
	sqlite3_stmt *st;
	if (!identity_fields_ok(id)) {
		snprintf(rc->detail, rc->detailsz, "identity %lld has fields this HSM cannot use",
		         (long long)id->id);
		return KH_ERR_BACKUP_INVALID;
	}
	int r = prep(rc->hsm,
	             "INSERT INTO identities(id, name, role_id, pw_hash, pw_salt, pw_params, "
	             "must_change, failures, locked_until, builtin, created, changed) "
	             "VALUES(?,?,?,?,?,?,?,?,?,?,?,?)",
	             &st);
	if (r != KH_OK)
		return r;
	sqlite3_bind_int64(st, 1, id->id);
	sqlite3_bind_text(st, 2, id->name, (int)id->name_len, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, id->role_id);
	sqlite3_bind_blob(st, 4, id->pw_hash_len ? (const void *)id->pw_hash : (const void *)"",
	                  (int)id->pw_hash_len, SQLITE_STATIC);
	sqlite3_bind_blob(st, 5, id->pw_salt_len ? (const void *)id->pw_salt : (const void *)"",
	                  (int)id->pw_salt_len, SQLITE_STATIC);
	sqlite3_bind_text(st, 6, id->pw_params_len ? id->pw_params : "", (int)id->pw_params_len,
	                  SQLITE_STATIC);
	sqlite3_bind_int(st, 7, id->must_change);
	sqlite3_bind_int64(st, 8, id->failures);
	sqlite3_bind_int64(st, 9, id->locked_until);
	sqlite3_bind_int(st, 10, id->builtin);
	sqlite3_bind_int64(st, 11, id->created);
	sqlite3_bind_int64(st, 12, id->changed);
	if ((r = run(rc->hsm, st)) == KH_ERR_BACKUP_INVALID)
		snprintf(rc->detail, rc->detailsz,
		         "identity %lld conflicts with another or names a missing role",
		         (long long)id->id);
	return r;
}

/* The rules the role and identity commands enforce must hold after a
 * restore too: both built-in roles present and built-in, the Administrator
 * role reachable (enough identities for its Logins Required), and in FIPS
 * mode no role other than Transaction Processing with fewer than 2 logins.
 * Checked inside the restore's transaction, so a failure changes nothing. */
static int config_invariants(struct kh_hsm *hsm, char *detail, size_t detailsz)
{
	static const struct {
		const char *sql;
		const char *why;
	} rules[] = {
		{"SELECT COUNT(*) = 2 FROM roles WHERE builtin = 1 AND name IN "
		 "('" KH_ROLE_ADMIN "', '" KH_ROLE_TP "')",
		 "the built-in roles are missing"},
		{"SELECT (SELECT COUNT(*) FROM identities i JOIN roles r ON i.role_id = r.id "
		 "WHERE r.name = '" KH_ROLE_ADMIN "') >= (SELECT logins_required FROM roles "
		 "WHERE name = '" KH_ROLE_ADMIN "')",
		 "the Administrator role would have fewer identities than its Logins Required"},
		{"SELECT COALESCE((SELECT CAST(value AS INTEGER) FROM settings WHERE key = 'fips'), 0)"
		 " = 0 OR NOT EXISTS (SELECT 1 FROM roles WHERE logins_required < 2 AND name <> '" KH_ROLE_TP "')",
		 "FIPS mode with a role whose Logins Required is below 2"},
	};
	for (size_t i = 0; i < sizeof(rules) / sizeof(rules[0]); i++) {
		int64_t ok = 0;
		int r = kh_db_int(hsm->db, rules[i].sql, NULL, 0, &ok);
		if (r != KH_OK)
			return r;
		if (!ok) {
			snprintf(detail, detailsz, "%s", rules[i].why);
			return KH_ERR_BACKUP_INVALID;
		}
	}
	return KH_OK;
}

static int restore_key(void *arg, const struct kh_backup_key *k)
{
	struct restore_ctx *rc = arg;
	struct kh_key_row row;
	int r;

	/* the row only borrows the decoded bytes; put reads them */
	memset(&row, 0, sizeof(row));
	row.slot = k->slot;
	memcpy(row.key_id, k->key_id, KH_KEY_ID_LEN);
	row.major = k->major;
	memcpy(row.cls, k->cls, sizeof(row.cls));
	memcpy(row.ktype, k->ktype, sizeof(row.ktype));
	row.bits = k->bits;
	row.attrs = (uint8_t *)(uintptr_t)k->attrs;
	row.attrs_len = k->attrs_len;
	row.label = (uint8_t *)(uintptr_t)k->label;
	row.label_len = k->label_len;
	row.ckaid = (uint8_t *)(uintptr_t)k->ckaid;
	row.ckaid_len = k->ckaid_len;
	row.extra = (uint8_t *)(uintptr_t)k->extra;
	row.extra_len = k->extra_len;
	row.created = k->created ? k->created : rc->when; /* never 0: see keystore.h */
	r = kh_keystore_put(rc->hsm, &row, k->material, k->material_len, KH_KS_QUIET, rc->actor);
	if (r == KH_ERR_EXISTS) {
		snprintf(rc->detail, rc->detailsz, "key identifier of slot %u is used twice",
		         k->slot);
		r = KH_ERR_BACKUP_INVALID;
	} else if (r == KH_ERR_MAJOR_KEY_NOT_LOADED) {
		snprintf(rc->detail, rc->detailsz, "%s", kh_mk_name(k->major));
	} else if (r == KH_ERR_BAD_FIELD) {
		snprintf(rc->detail, rc->detailsz, "key in slot %u is invalid", k->slot);
		r = KH_ERR_BACKUP_INVALID;
	}
	return r;
}

static int exec_sql(struct kh_hsm *hsm, const char *sql)
{
	sqlite3_stmt *st;
	int r = prep(hsm, sql, &st);
	if (r != KH_OK)
		return r;
	int rc = sqlite3_step(st);
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? KH_OK : kh_db_err(hsm->db, rc);
}

static int clear_settings(struct kh_hsm *hsm)
{
	sqlite3_stmt *st;
	int r = prep(hsm, "DELETE FROM settings WHERE key NOT IN (?, ?, ?)", &st);
	if (r != KH_OK)
		return r;
	_Static_assert(sizeof(device_settings) / sizeof(device_settings[0]) == 3,
	               "clear_settings binds every device setting");
	for (int i = 0; i < 3; i++)
		sqlite3_bind_text(st, i + 1, device_settings[i], -1, SQLITE_STATIC);
	int rc = sqlite3_step(st);
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? KH_OK : kh_db_err(hsm->db, rc);
}

/* Open a blob sealed under major key mk (info: its derivation label): the
 * header (hdr_len bytes, the associated data) names the key's check value
 * kcv. The plaintext goes into pt (locked, kept out of core dumps).
 * MAJOR_KEY_NOT_LOADED, BAD_KCV (made under another key) or CRYPTO
 * (damaged or altered), with detail set; pt is left for the caller to free. */
static int open_sealed(struct kh_hsm *hsm, enum kh_mk_id mk, const char *info, const char *kcv,
                       const uint8_t *data, size_t len, size_t hdr_len, struct lbuf *pt,
                       size_t *ptlen, char *detail, size_t detailsz)
{
	struct kh_mk_info mi;
	int r;
	kh_mk_info(hsm, mk, &mi);
	if (!mi.loaded) {
		snprintf(detail, detailsz, "%s", kh_mk_name(mk));
		return KH_ERR_MAJOR_KEY_NOT_LOADED;
	}
	if (!kh_ct_equal(mi.kcv, kcv, 6)) {
		snprintf(detail, detailsz, "made under a %s with KCV %s; the loaded %s has KCV %s",
		         kh_mk_name(mk), kcv, kh_mk_name(mk), mi.kcv);
		return KH_ERR_BAD_KCV;
	}
	if ((r = lbuf_init(pt, len - hdr_len - KH_MK_SEAL_OVERHEAD + 1, true)) != KH_OK)
		return r;
	if (kh_mk_open_ex(hsm, mk, info, data, hdr_len, data + hdr_len, len - hdr_len, pt->p,
	                  ptlen) != KH_OK) {
		snprintf(detail, detailsz, "authentication failed: damaged or altered");
		return KH_ERR_CRYPTO;
	}
	return KH_OK;
}

int kh_backup_restore(struct kh_hsm *hsm, const uint8_t *data, size_t len, const char *actor,
                      struct kh_backup_counts *counts, char *detail, size_t detailsz)
{
	static const struct kh_backup_visitor visitor = {
	    .setting = restore_setting,
	    .role = restore_role,
	    .identity = restore_identity,
	    .key = restore_key,
	};
	struct kh_backup_hdr hdr;
	struct kh_backup_counts cnt = {0};
	struct restore_ctx rc;
	struct lbuf pt = {0};
	char dummy[8], text[200];
	size_t ptlen = 0;
	bool in_tx = false;
	int r;

	if (detail == NULL || detailsz == 0) {
		detail = dummy;
		detailsz = sizeof(dummy);
	}
	detail[0] = '\0';
	if (kh_backup_parse_header(data, len, &hdr) != KH_OK) {
		snprintf(detail, detailsz, "not a keyhold backup, or an unsupported version");
		return KH_ERR_BACKUP_INVALID;
	}
	if ((r = open_sealed(hsm, KH_MK_BEK, BACKUP_INFO, hdr.kcv, data, len, KH_BACKUP_HDR_LEN, &pt,
	                     &ptlen, detail, detailsz)) != KH_OK) {
		if (r == KH_ERR_BAD_KCV || r == KH_ERR_CRYPTO)
			r = KH_ERR_BACKUP_INVALID;
		goto out;
	}
	/* validate everything before touching anything */
	if (kh_backup_decode(pt.p, ptlen, hdr.scope, NULL, NULL, &cnt) != KH_OK) {
		snprintf(detail, detailsz, "contents are malformed");
		r = KH_ERR_BACKUP_INVALID;
		goto out;
	}
	for (int i = 0; i < KH_MK_COUNT; i++) {
		struct kh_mk_info mi;
		kh_mk_info(hsm, (enum kh_mk_id)i, &mi);
		if (cnt.needs[i] && !mi.loaded) {
			snprintf(detail, detailsz, "%s", kh_mk_name((enum kh_mk_id)i));
			r = KH_ERR_MAJOR_KEY_NOT_LOADED;
			goto out;
		}
	}

	rc.hsm = hsm;
	rc.when = hdr.created > 0 ? hdr.created : 1;
	rc.actor = actor;
	rc.detail = detail;
	rc.detailsz = detailsz;
	if ((r = kh_db_begin(hsm->db)) != KH_OK)
		goto out;
	in_tx = true;
	if (hdr.scope & KH_BACKUP_CONFIG) {
		if ((r = exec_sql(hsm, "DELETE FROM identities")) != KH_OK ||
		    (r = exec_sql(hsm, "DELETE FROM roles")) != KH_OK ||
		    (r = clear_settings(hsm)) != KH_OK)
			goto out;
	}
	if ((hdr.scope & KH_BACKUP_KEYS) && (r = exec_sql(hsm, "DELETE FROM keys")) != KH_OK)
		goto out;
	if ((r = kh_backup_decode(pt.p, ptlen, hdr.scope, &visitor, &rc, &cnt)) != KH_OK)
		goto out;
	if ((hdr.scope & KH_BACKUP_CONFIG) && (r = config_invariants(hsm, detail, detailsz)) != KH_OK)
		goto out;
	snprintf(text, sizeof(text),
	         "scope %s: %u settings, %u roles, %u identities, %u keys; BEK KCV %s",
	         hdr.scope == KH_BACKUP_ALL      ? "all"
	         : hdr.scope == KH_BACKUP_CONFIG ? "config"
	                                         : "keys",
	         cnt.settings, cnt.roles, cnt.identities, cnt.keys, hdr.kcv);
	if ((r = kh_audit_append(hsm, actor, "backup.restore", text)) != KH_OK)
		goto out;
	in_tx = false;
	if ((r = kh_db_commit(hsm->db)) != KH_OK)
		goto out;
	if (hdr.scope & KH_BACKUP_KEYS)
		kh_keycache_clear(hsm); /* slots the backup lacks are gone too */
	if (hdr.scope & KH_BACKUP_CONFIG) {
		atomic_fetch_add(&hsm->role_gen, 1);
		kh_hsm_reload_settings(hsm);
	}
	if (counts)
		*counts = cnt;
out:
	if (in_tx)
		kh_db_rollback(hsm->db);
	lbuf_free(&pt);
	return r;
}

/* ---- paged transfers ---------------------------------------------------------- */

int kh_backup_stage_begin(struct kh_backup_stage *st, uint64_t total, const uint8_t *page,
                          size_t n)
{
	int r;

	memset(st, 0, sizeof(*st));
	if (total > KH_BACKUP_MAX)
		return KH_ERR_TOO_LARGE;
	if (page == NULL || n < KH_BACKUP_HDR_LEN || n > total)
		return KH_ERR_BAD_FIELD;
	/* the header is whole in the first page; the parser reads only it */
	if ((r = kh_backup_parse_header(page, (size_t)total, &st->hdr)) != KH_OK) {
		memset(st, 0, sizeof(*st));
		return r;
	}
	if ((st->data = malloc((size_t)total)) == NULL) {
		memset(st, 0, sizeof(*st));
		return KH_ERR_NOMEM;
	}
	memcpy(st->data, page, n);
	st->total = (size_t)total;
	st->have = n;
	return KH_OK;
}

int kh_backup_stage_add(struct kh_backup_stage *st, uint64_t off, const uint8_t *page, size_t n)
{
	if (st->data == NULL || page == NULL || off != st->have || n == 0 ||
	    n > st->total - st->have)
		return KH_ERR_BAD_FIELD;
	memcpy(st->data + st->have, page, n);
	st->have += n;
	return KH_OK;
}

void kh_backup_stage_free(struct kh_backup_stage *st)
{
	if (st->data) {
		kh_wipe(st->data, st->have); /* the rest was never written */
		free(st->data);
	}
	memset(st, 0, sizeof(*st));
}

struct kh_backup_xfer {
	struct kh_backup_stage st; /* an export: the whole file, have = total */
	char id[17];               /* an export's name, random */
	char kcv[7];
	uint8_t sha256[32];        /* of the whole export */
	size_t page;
	struct timespec started;   /* CLOCK_MONOTONIC: the HSM clock can be set */
	char actor[KH_MAX_LOGINS * KH_NAME_MAX];
};

static bool budget_take(struct kh_hsm *hsm, uint64_t n)
{
	uint64_t cur = atomic_load(&hsm->backup_staged);
	do {
		if (n > KH_BACKUP_STAGED_MAX - cur || cur > KH_BACKUP_STAGED_MAX)
			return false;
	} while (!atomic_compare_exchange_weak(&hsm->backup_staged, &cur, cur + n));
	return true;
}

static void xfer_free(struct kh_hsm *hsm, struct kh_backup_xfer **xp)
{
	struct kh_backup_xfer *x = *xp;
	if (x == NULL)
		return;
	atomic_fetch_sub(&hsm->backup_staged, (uint64_t)x->st.total);
	kh_backup_stage_free(&x->st);
	kh_wipe(x, sizeof(*x));
	free(x);
	*xp = NULL;
}

static struct kh_backup_xfer *xfer_new(const char *actor)
{
	struct kh_backup_xfer *x = calloc(1, sizeof(*x));
	if (x == NULL)
		return NULL;
	clock_gettime(CLOCK_MONOTONIC, &x->started);
	snprintf(x->actor, sizeof(x->actor), "%s", actor);
	return x;
}

/* The transfer may go on: not expired, same identities. Otherwise it is
 * dropped and detail says why. */
static int xfer_check(struct kh_hsm *hsm, struct kh_backup_xfer **xp, const char *actor,
                      const char *what, char *detail, size_t detailsz)
{
	struct timespec now;
	struct kh_backup_xfer *x = *xp;

	if (x == NULL) {
		snprintf(detail, detailsz, "no %s in progress on this connection", what);
		return KH_ERR_STATE;
	}
	clock_gettime(CLOCK_MONOTONIC, &now);
	if (now.tv_sec - x->started.tv_sec > KH_BACKUP_XFER_TTL) {
		xfer_free(hsm, xp);
		snprintf(detail, detailsz, "the %s expired (%d s): start again", what,
		         KH_BACKUP_XFER_TTL);
		return KH_ERR_STATE;
	}
	if (strcmp(x->actor, actor) != 0) {
		xfer_free(hsm, xp);
		snprintf(detail, detailsz, "the %s was started by other identities", what);
		return KH_ERR_STATE;
	}
	return KH_OK;
}

int kh_backup_export_start(struct kh_hsm *hsm, struct kh_session *s, unsigned scope, size_t page,
                           const char *actor, struct kh_backup_counts *counts)
{
	struct kh_backup_xfer *x = NULL;
	struct kh_mk_info bek;
	uint8_t *file = NULL, rnd[8];
	size_t len = 0;
	int r;

	xfer_free(hsm, &s->bk_out); /* a new export replaces the old one */
	if (page < KH_BACKUP_PAGE_MIN || page > KH_BACKUP_PAGE_MAX)
		return KH_ERR_BAD_FIELD;
	if ((r = kh_backup_create(hsm, scope, actor, &file, &len, counts)) != KH_OK)
		return r;
	if (!budget_take(hsm, len)) {
		r = KH_ERR_BUSY;
		goto out;
	}
	if ((x = xfer_new(actor)) == NULL) {
		atomic_fetch_sub(&hsm->backup_staged, (uint64_t)len);
		r = KH_ERR_NOMEM;
		goto out;
	}
	x->st.data = file;
	x->st.total = x->st.have = len;
	file = NULL;
	x->page = page;
	kh_mk_info(hsm, KH_MK_BEK, &bek);
	memcpy(x->kcv, bek.kcv, sizeof(x->kcv));
	if (RAND_bytes(rnd, sizeof(rnd)) != 1 ||
	    EVP_Digest(x->st.data, len, x->sha256, NULL, EVP_sha256(), NULL) != 1) {
		xfer_free(hsm, &x);
		r = KH_ERR_CRYPTO;
		goto out;
	}
	kh_hex_encode(rnd, sizeof(rnd), x->id);
	s->bk_out = x;
out:
	free(file);
	return r;
}

int kh_backup_export_page(struct kh_hsm *hsm, struct kh_session *s, const char *id, uint64_t off,
                          const char *actor, struct kh_backup_page *pg, char *detail,
                          size_t detailsz)
{
	struct kh_backup_xfer *x;
	int r;

	memset(pg, 0, sizeof(*pg));
	if ((r = xfer_check(hsm, &s->bk_out, actor, "backup export", detail, detailsz)) != KH_OK)
		return r;
	x = s->bk_out;
	if (id != NULL && strcmp(id, x->id) != 0) {
		snprintf(detail, detailsz, "XI: not this connection's export");
		return KH_ERR_NOT_FOUND;
	}
	if (off >= x->st.total) {
		snprintf(detail, detailsz, "OF: past the end of the backup (%zu bytes)", x->st.total);
		return KH_ERR_BAD_FIELD;
	}
	memcpy(pg->id, x->id, sizeof(pg->id));
	memcpy(pg->kcv, x->kcv, sizeof(pg->kcv));
	memcpy(pg->sha256, x->sha256, sizeof(pg->sha256));
	pg->total = x->st.total;
	pg->off = (size_t)off;
	pg->n = x->st.total - pg->off < x->page ? x->st.total - pg->off : x->page;
	pg->next = pg->off + pg->n < x->st.total ? pg->off + pg->n : 0;
	pg->p = x->st.data + pg->off;
	return KH_OK;
}

void kh_backup_export_served(struct kh_hsm *hsm, struct kh_session *s,
                             const struct kh_backup_page *pg)
{
	if (pg->p != NULL && pg->next == 0)
		xfer_free(hsm, &s->bk_out);
}

int kh_backup_upload_start(struct kh_hsm *hsm, struct kh_session *s, uint64_t total,
                           const uint8_t *page, size_t n, const char *actor,
                           struct kh_backup_hdr *hdr, char *detail, size_t detailsz)
{
	struct kh_backup_xfer *x;
	int r;

	kh_backup_upload_drop(hsm, s); /* a new upload replaces the old one */
	if (total > KH_BACKUP_MAX) {
		snprintf(detail, detailsz, "BZ: a backup is at most %u bytes", KH_BACKUP_MAX);
		return KH_ERR_TOO_LARGE;
	}
	if (!budget_take(hsm, total)) {
		snprintf(detail, detailsz, "other backup transfers hold too much memory");
		return KH_ERR_BUSY;
	}
	if ((x = xfer_new(actor)) == NULL) {
		atomic_fetch_sub(&hsm->backup_staged, total);
		return KH_ERR_NOMEM;
	}
	if ((r = kh_backup_stage_begin(&x->st, total, page, n)) != KH_OK) {
		atomic_fetch_sub(&hsm->backup_staged, total);
		free(x);
		if (r == KH_ERR_BAD_FIELD)
			snprintf(detail, detailsz, "BD: the first page holds the %d-byte header "
			         "and at most BZ bytes", KH_BACKUP_HDR_LEN);
		else if (r == KH_ERR_BACKUP_INVALID)
			snprintf(detail, detailsz, "not a keyhold backup, or an unsupported version");
		return r;
	}
	*hdr = x->st.hdr;
	s->bk_in = x;
	return KH_OK;
}

struct kh_backup_stage *kh_backup_upload(struct kh_hsm *hsm, struct kh_session *s,
                                         const char *actor, char *detail, size_t detailsz)
{
	if (xfer_check(hsm, &s->bk_in, actor, "restore upload", detail, detailsz) != KH_OK)
		return NULL;
	return &s->bk_in->st;
}

void kh_backup_upload_drop(struct kh_hsm *hsm, struct kh_session *s)
{
	xfer_free(hsm, &s->bk_in);
}

void kh_backup_session_end(struct kh_hsm *hsm, struct kh_session *s)
{
	xfer_free(hsm, &s->bk_in);
	xfer_free(hsm, &s->bk_out);
}

/* ---- configuration replication (CFEX / CFIM) ------------------------------------ */

#define CFG_MAGIC "KHCF"
#define CONFIG_INFO "keyhold config v1"

int kh_config_parse_header(const uint8_t *p, size_t n, struct kh_backup_hdr *h)
{
	struct kh_rd r = {.p = p, .n = n};
	const uint8_t *q;

	memset(h, 0, sizeof(*h));
	if (p == NULL || n < KH_CONFIG_HDR_LEN + KH_MK_SEAL_OVERHEAD || n > KH_CONFIG_MAX)
		return KH_ERR_BAD_FIELD;
	if ((q = kh_rd_take(&r, 4)) == NULL || memcmp(q, CFG_MAGIC, 4) != 0)
		return KH_ERR_BAD_FIELD;
	h->version = kh_rd_u8(&r);
	h->scope = KH_BACKUP_CONFIG;
	if ((q = kh_rd_take(&r, 6)) == NULL)
		return KH_ERR_BAD_FIELD;
	for (int i = 0; i < 6; i++) {
		if (!is_uhex(q[i]))
			return KH_ERR_BAD_FIELD;
		h->kcv[i] = (char)q[i];
	}
	h->kcv[6] = '\0';
	h->created = get_i64(&r);
	if (r.bad || r.off != KH_CONFIG_HDR_LEN || h->version != KH_CONFIG_VERSION)
		return KH_ERR_BAD_FIELD;
	return KH_OK;
}

int kh_config_export(struct kh_hsm *hsm, const char *actor, uint8_t **out, size_t *outlen,
                     struct kh_backup_counts *counts)
{
	struct kh_backup_counts cnt = {0};
	struct kh_mk_info pmk;
	struct lbuf b = {0};
	uint8_t *blob = NULL;
	size_t sealed = 0;
	char text[160];
	int r;

	kh_mk_info(hsm, KH_MK_PMK, &pmk);
	if (!pmk.loaded)
		return KH_ERR_MAJOR_KEY_NOT_LOADED;
	if ((r = lbuf_init(&b, KH_CONFIG_MAX - KH_CONFIG_HDR_LEN - KH_MK_SEAL_OVERHEAD, false)) != KH_OK)
		return r;
	put(&b, BODY_MAGIC, 4);
	kh_db_lock(hsm->db);
	r = write_config(hsm, &b, &cnt, false);
	kh_db_unlock(hsm->db);
	if (r == KH_OK)
		r = b.err;
	if (r != KH_OK)
		goto out;
	if ((blob = malloc(KH_CONFIG_HDR_LEN + b.len + KH_MK_SEAL_OVERHEAD)) == NULL) {
		r = KH_ERR_NOMEM;
		goto out;
	}
	{
		struct lbuf hb = {.p = blob, .cap = KH_CONFIG_HDR_LEN};
		put(&hb, CFG_MAGIC, 4);
		put_u8(&hb, KH_CONFIG_VERSION);
		put(&hb, pmk.kcv, 6);
		put_i64(&hb, (int64_t)kh_hsm_now(hsm));
		if (hb.err || hb.len != KH_CONFIG_HDR_LEN) {
			r = KH_ERR_INTERNAL;
			goto out;
		}
	}
	if ((r = kh_mk_seal_ex(hsm, KH_MK_PMK, CONFIG_INFO, blob, KH_CONFIG_HDR_LEN, b.p, b.len,
	                       blob + KH_CONFIG_HDR_LEN, &sealed)) != KH_OK)
		goto out;
	snprintf(text, sizeof(text), "%u settings, %u roles, %u identities; PMK KCV %s",
	         cnt.settings, cnt.roles, cnt.identities, pmk.kcv);
	if ((r = kh_audit_append(hsm, actor, "config.export", text)) != KH_OK)
		goto out;
	*out = blob;
	*outlen = KH_CONFIG_HDR_LEN + sealed;
	blob = NULL;
	if (counts)
		*counts = cnt;
out:
	free(blob);
	lbuf_free(&b);
	return r;
}

int kh_config_digest(struct kh_hsm *hsm, uint8_t out[static KH_CONFIG_DIGEST_LEN])
{
	static const char label[] = "keyhold config digest v1";
	struct kh_backup_counts cnt = {0};
	struct lbuf b = {0};
	unsigned int outlen = 0;
	int r;

	if ((r = lbuf_init(&b, KH_CONFIG_MAX, false)) != KH_OK)
		return r;
	put(&b, BODY_MAGIC, 4);
	kh_db_lock(hsm->db);
	r = write_config(hsm, &b, &cnt, false);
	kh_db_unlock(hsm->db);
	if (r == KH_OK)
		r = b.err;
	if (r == KH_OK) {
		EVP_MD_CTX *md = EVP_MD_CTX_new();
		if (md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1 ||
		    EVP_DigestUpdate(md, label, sizeof(label) - 1) != 1 ||
		    EVP_DigestUpdate(md, b.p, b.len) != 1 || EVP_DigestFinal_ex(md, out, &outlen) != 1 ||
		    outlen != KH_CONFIG_DIGEST_LEN)
			r = KH_ERR_CRYPTO;
		EVP_MD_CTX_free(md);
	}
	lbuf_free(&b);
	return r;
}

/* What an identity keeps of its own across an import: lockout state
 * always; password and must-change when it is one of the importers. */
struct keep {
	char name[KH_NAME_MAX];
	uint8_t hash[KH_PW_HASH_LEN], salt[KH_PW_SALT_LEN];
	size_t hash_len, salt_len;
	char params[TEXT_MAX + 1];
	int must_change;
	int64_t failures, locked_until;
	bool importer;
};

static int keep_read(struct kh_hsm *hsm, const struct kh_config_importer *who, struct keep **out,
                     size_t *n)
{
	sqlite3_stmt *q = NULL;
	struct keep *k = NULL;
	size_t cap = 0;
	int rc, r;

	*out = NULL;
	*n = 0;
	if ((r = prep(hsm,
	              "SELECT name, pw_hash, pw_salt, pw_params, must_change, failures, locked_until "
	              "FROM identities ORDER BY id",
	              &q)) != KH_OK)
		return r;
	while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
		const char *name = (const char *)sqlite3_column_text(q, 0);
		size_t nl = (size_t)sqlite3_column_bytes(q, 0);
		size_t hl = (size_t)sqlite3_column_bytes(q, 1), sl = (size_t)sqlite3_column_bytes(q, 2);
		size_t pl = (size_t)sqlite3_column_bytes(q, 3);
		if (name == NULL || nl >= KH_NAME_MAX || hl > KH_PW_HASH_LEN || sl > KH_PW_SALT_LEN ||
		    pl > TEXT_MAX)
			continue; /* not an identity anyone could log in as */
		if (*n == cap) {
			size_t ncap = cap ? 2 * cap : 16;
			struct keep *p = calloc(ncap, sizeof(*p));
			if (p == NULL) {
				r = KH_ERR_NOMEM;
				goto out;
			}
			if (k) {
				memcpy(p, k, *n * sizeof(*p));
				kh_wipe(k, cap * sizeof(*k));
				free(k);
			}
			k = p;
			cap = ncap;
		}
		struct keep *e = &k[(*n)++];
		memcpy(e->name, name, nl);
		e->name[nl] = '\0';
		if (hl)
			memcpy(e->hash, sqlite3_column_blob(q, 1), hl);
		if (sl)
			memcpy(e->salt, sqlite3_column_blob(q, 2), sl);
		if (pl)
			memcpy(e->params, sqlite3_column_text(q, 3), pl);
		e->params[pl] = '\0';
		e->hash_len = hl;
		e->salt_len = sl;
		e->must_change = sqlite3_column_int(q, 4);
		e->failures = sqlite3_column_int64(q, 5);
		e->locked_until = sqlite3_column_int64(q, 6);
		for (size_t i = 0; i < who->n; i++)
			if (strcmp(who->names[i], e->name) == 0)
				e->importer = true;
	}
	r = rc == SQLITE_DONE ? KH_OK : kh_db_err(hsm->db, rc);
out:
	sqlite3_finalize(q);
	if (r != KH_OK) {
		if (k)
			kh_wipe(k, cap * sizeof(*k));
		free(k);
		*n = 0;
		return r;
	}
	*out = k;
	return KH_OK;
}

/* Put back what identities of the same name keep (keep_read). */
static int keep_apply(struct kh_hsm *hsm, const struct keep *k, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		sqlite3_stmt *st;
		int r = prep(hsm,
		             k[i].importer
		                 ? "UPDATE identities SET failures=?1, locked_until=?2, pw_hash=?3, "
		                   "pw_salt=?4, pw_params=?5, must_change=?6 WHERE name=?7"
		                 : "UPDATE identities SET failures=?1, locked_until=?2 WHERE name=?7",
		             &st);
		if (r != KH_OK)
			return r;
		sqlite3_bind_int64(st, 1, k[i].failures);
		sqlite3_bind_int64(st, 2, k[i].locked_until);
		if (k[i].importer) {
			sqlite3_bind_blob(st, 3, k[i].hash, (int)k[i].hash_len, SQLITE_STATIC);
			sqlite3_bind_blob(st, 4, k[i].salt, (int)k[i].salt_len, SQLITE_STATIC);
			sqlite3_bind_text(st, 5, k[i].params, -1, SQLITE_STATIC);
			sqlite3_bind_int(st, 6, k[i].must_change);
		}
		sqlite3_bind_text(st, 7, k[i].name, -1, SQLITE_STATIC);
		if ((r = run(hsm, st)) != KH_OK)
			return r;
	}
	return KH_OK;
}

/* Each importing identity must, in the new configuration, still be able to
 * run CFIM on this connection: present, in a role that holds replication,
 * enables CFIM, allows this port and source, and whose Logins Required its
 * identities can reach. */
static int importers_ok(struct kh_hsm *hsm, const struct kh_config_importer *who, char *detail,
                        size_t detailsz)
{
	int cfim = kh_cmd_index("CFIM");
	for (size_t i = 0; i < who->n; i++) {
		sqlite3_stmt *q;
		struct kh_role role;
		int64_t role_id = 0, members = 0;
		int r = prep(hsm, "SELECT role_id FROM identities WHERE name=?", &q), rc;
		if (r != KH_OK)
			return r;
		sqlite3_bind_text(q, 1, who->names[i], -1, SQLITE_STATIC);
		rc = sqlite3_step(q);
		if (rc == SQLITE_ROW)
			role_id = sqlite3_column_int64(q, 0);
		sqlite3_finalize(q);
		if (rc == SQLITE_DONE) {
			snprintf(detail, detailsz, "the configuration lacks the importing identity %s",
			         who->names[i]);
			return KH_ERR_STATE;
		}
		if (rc != SQLITE_ROW)
			return kh_db_err(hsm->db, rc);
		if ((r = kh_role_load_by_id(hsm, role_id, &role)) != KH_OK ||
		    (r = kh_db_int(hsm->db, "SELECT COUNT(*) FROM identities WHERE role_id=?",
		                   &role_id, 1, &members)) != KH_OK)
			return r;
		if (!(role.perms & KH_PERM(KH_P_REPLICATION)) || cfim < 0 ||
		    !kh_role_has_cmd(&role, cfim) || !kh_role_allows_conn(&role, who->port, who->source) ||
		    members < role.logins_required) {
			snprintf(detail, detailsz,
			         "the configuration would lock out the importing identity %s (its role "
			         "needs replication, CFIM, this port and source, and reachable logins)",
			         who->names[i]);
			return KH_ERR_STATE;
		}
	}
	return KH_OK;
}

int kh_config_import(struct kh_hsm *hsm, const uint8_t *data, size_t len, const char *actor,
                     const struct kh_config_importer *who, struct kh_backup_counts *counts,
                     char *detail, size_t detailsz)
{
	static const struct kh_backup_visitor visitor = {
	    .setting = restore_setting,
	    .role = restore_role,
	    .identity = restore_identity,
	};
	struct kh_backup_hdr hdr;
	struct kh_backup_counts cnt = {0};
	struct restore_ctx rc;
	struct lbuf pt = {0};
	struct keep *keep = NULL;
	size_t nkeep = 0, ptlen = 0;
	char dummy[8], text[160];
	bool in_tx = false;
	int r;

	if (detail == NULL || detailsz == 0) {
		detail = dummy;
		detailsz = sizeof(dummy);
	}
	detail[0] = '\0';
	if (kh_config_parse_header(data, len, &hdr) != KH_OK) {
		snprintf(detail, detailsz, "not a keyhold configuration, or an unsupported version");
		return KH_ERR_BAD_FIELD;
	}
	if ((r = open_sealed(hsm, KH_MK_PMK, CONFIG_INFO, hdr.kcv, data, len, KH_CONFIG_HDR_LEN, &pt,
	                     &ptlen, detail, detailsz)) != KH_OK)
		goto out;
	if (kh_backup_decode(pt.p, ptlen, KH_BACKUP_CONFIG, NULL, NULL, &cnt) != KH_OK) {
		snprintf(detail, detailsz, "contents are malformed");
		r = KH_ERR_BAD_FIELD;
		goto out;
	}
	rc.hsm = hsm;
	rc.when = hdr.created > 0 ? hdr.created : 1;
	rc.actor = actor;
	rc.detail = detail;
	rc.detailsz = detailsz;
	if ((r = kh_db_begin(hsm->db)) != KH_OK)
		goto out;
	in_tx = true;
	if ((r = keep_read(hsm, who, &keep, &nkeep)) != KH_OK ||
	    (r = exec_sql(hsm, "DELETE FROM identities")) != KH_OK ||
	    (r = exec_sql(hsm, "DELETE FROM roles")) != KH_OK || (r = clear_settings(hsm)) != KH_OK)
		goto out;
	if ((r = kh_backup_decode(pt.p, ptlen, KH_BACKUP_CONFIG, &visitor, &rc, &cnt)) != KH_OK) {
		if (r == KH_ERR_BACKUP_INVALID)
			r = KH_ERR_BAD_FIELD;
		goto out;
	}
	if ((r = keep_apply(hsm, keep, nkeep)) != KH_OK)
		goto out;
	if ((r = config_invariants(hsm, detail, detailsz)) != KH_OK ||
	    (r = importers_ok(hsm, who, detail, detailsz)) != KH_OK) {
		if (r == KH_ERR_BACKUP_INVALID)
			r = KH_ERR_STATE;
		goto out;
	}
	snprintf(text, sizeof(text), "%u settings, %u roles, %u identities; PMK KCV %s",
	         cnt.settings, cnt.roles, cnt.identities, hdr.kcv);
	if ((r = kh_audit_append(hsm, actor, "config.import", text)) != KH_OK)
		goto out;
	in_tx = false;
	if ((r = kh_db_commit(hsm->db)) != KH_OK)
		goto out;
	atomic_fetch_add(&hsm->role_gen, 1);
	kh_hsm_reload_settings(hsm);
	if (counts)
		*counts = cnt;
out:
	if (in_tx)
		kh_db_rollback(hsm->db);
	if (keep)
		kh_wipe(keep, nkeep * sizeof(*keep));
	free(keep);
	lbuf_free(&pt);
	return r;
}

/*
 * KTEX, KTIM, KTCK, CFEX, CFIM: what a group manager needs to keep members
 * that hold the same major keys alike. Key-table rows travel in their
 * wrapped form (replica.h) and the configuration sealed under the PMK
 * (backup.h); no handler here ever holds a key in clear.
 */
#include "hsm/cmds.h"
#include "hsm/backup.h"
#include "hsm/keystore.h"
#include "hsm/replica.h"
#include "common/kh_buf.h"
#include "common/kh_frame.h"
#include "common/kh_mem.h"

#include <stdlib.h>
#include <string.h>

/* KTEX pages: at most this many rows, and no more hex than this (a page
 * holds at least one row; the longest row is about 430 KB of hex). */
#define KTEX_NM_MAX 1000
#define KTEX_NM_DEFAULT 100
#define KTEX_HEX_BUDGET (3u * 1024 * 1024)
/* KTIM: rows and deletes in one request. */
#define KTIM_ITEMS_MAX 1000

/* ---- KTEX ---------------------------------------------------------------------- */

struct ktex_ctx {
	struct kh_buf *resp;
	uint8_t *buf;
	uint64_t max, count;
	size_t hex;
	bool more;
	uint32_t next;
	int err;
};

static int ktex_row(void *arg, const struct kh_key_row *row)
{
	struct ktex_ctx *k = arg;
	size_t n = kh_ktrow_len(row);
	int r;

	if (n == 0)
		return KH_ERR_STORAGE;
	if (k->count == k->max || (k->count > 0 && k->hex + 2 * n + 1 > KTEX_HEX_BUDGET)) {
		k->more = true;
		k->next = row->slot;
		return KH_KS_STOP;
	}
	kh_ktrow_encode(row, k->buf);
	if ((k->count > 0 && (r = kh_buf_put(k->resp, ",", 1)) != KH_OK) ||
	    (r = kh_buf_put_hex(k->resp, k->buf, n)) != KH_OK)
		return r;
	k->hex += 2 * n + 1;
	k->count++;
	return KH_OK;
}

static int read_kd(struct kh_ctx *c, const struct kh_frame *req, uint8_t id[KH_KEY_ID_LEN])
{
	size_t n = 0;
	if (kh_frame_hex(req, "KD", id, KH_KEY_ID_LEN, &n) != KH_OK || n != KH_KEY_ID_LEN) {
		kh_ctx_detail(c, "KD (16 bytes, hex)");
		return KH_ERR_BAD_FIELD;
	}
	return KH_OK;
}

/* Reads SL (required) and SH (optional, at least SL): the inclusive span. */
static int read_span(struct kh_ctx *c, const struct kh_frame *req, bool sl_required,
                     uint64_t *lo, uint64_t *hi)
{
	int r;
	*lo = 0;
	*hi = KH_SLOT_MAX;
	if ((sl_required || kh_frame_has(req, "SL")) &&
	    (r = kh_frame_u64(req, "SL", 0, KH_SLOT_MAX, lo)) != KH_OK) {
		kh_ctx_detail(c, "SL");
		return r;
	}
	if (kh_frame_has(req, "SH") && (r = kh_frame_u64(req, "SH", *lo, KH_SLOT_MAX, hi)) != KH_OK) {
		kh_ctx_detail(c, "SH (a slot from SL to 999999)");
		return r;
	}
	return KH_OK;
}

KH_ACT(kh_cmd_ktex)
{
	struct ktex_ctx k = {.resp = resp};
	uint64_t lo, hi;
	bool range = kh_frame_has(req, "NM") || kh_frame_has(req, "SH");
	int r;

	if ((r = read_span(c, req, true, &lo, &hi)) != KH_OK)
		return r;
	if (!range) {
		/* one slot, named like a key: KD must match */
		struct kh_key_row row;
		uint8_t id[KH_KEY_ID_LEN];
		size_t n;
		if (kh_frame_has(req, "KD") && (r = read_kd(c, req, id)) != KH_OK)
			return r;
		if ((r = kh_keystore_get(c->hsm, (uint32_t)lo, &row)) != KH_OK)
			return r;
		if (kh_frame_has(req, "KD") && !kh_ct_equal(id, row.key_id, KH_KEY_ID_LEN)) {
			kh_keystore_row_free(&row);
			kh_ctx_detail(c, "key identifier differs from slot %u's key", (unsigned)lo);
			return KH_ERR_NOT_FOUND;
		}
		if ((n = kh_ktrow_len(&row)) == 0)
			r = KH_ERR_STORAGE;
		else if ((k.buf = malloc(n)) == NULL)
			r = KH_ERR_NOMEM;
		if (r == KH_OK) {
			kh_ktrow_encode(&row, k.buf);
			if ((r = kh_msg_put(resp, "BB", "Y")) == KH_OK &&
			    (r = kh_msg_put_u64(resp, "RN", 1)) == KH_OK)
				r = kh_msg_put_hex(resp, "RW", k.buf, n);
		}
		kh_keystore_row_free(&row);
		free(k.buf);
		return r;
	}
	if (kh_frame_has(req, "KD")) {
		kh_ctx_detail(c, "KD names one slot: not with NM or SH");
		return KH_ERR_BAD_FIELD;
	}
	k.max = KTEX_NM_DEFAULT;
	if (kh_frame_has(req, "NM") && (r = kh_frame_u64(req, "NM", 1, KTEX_NM_MAX, &k.max)) != KH_OK) {
		kh_ctx_detail(c, "NM (1-%u)", KTEX_NM_MAX);
		return r;
	}
	if ((k.buf = malloc(KH_KTROW_MAX)) == NULL)
		return KH_ERR_NOMEM;
	if ((r = kh_msg_put(resp, "BB", "Y")) != KH_OK || (r = kh_buf_put_str(resp, "RW")) != KH_OK)
		goto out;
	if ((r = kh_keystore_walk(c->hsm, (uint32_t)lo, (uint32_t)hi, ktex_row, &k)) != KH_OK ||
	    (r = kh_buf_put_str(resp, ";")) != KH_OK || (r = kh_msg_put_u64(resp, "RN", k.count)) != KH_OK)
		goto out;
	if (k.more)
		r = kh_msg_put_u64(resp, "NX", k.next);
out:
	free(k.buf);
	return r;
}

/* ---- KTIM ---------------------------------------------------------------------- */

/* The next comma-separated item of f from *at: [*item, *item + *len). */
static bool next_item(const struct kh_field *f, size_t *at, const char **item, size_t *len)
{
	size_t i = *at;
	if (i > f->len)
		return false;
	while (i < f->len && f->val[i] != ',')
		i++;
	*item = f->val + *at;
	*len = i - *at;
	*at = i + 1;
	return true;
}

static int parse_u32_text(const char *s, size_t n, uint32_t *v)
{
	uint64_t x = 0;
	if (n == 0 || n > 6)
		return KH_ERR_BAD_FIELD;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return KH_ERR_BAD_FIELD;
		x = x * 10 + (uint64_t)(s[i] - '0');
	}
	if (x > KH_SLOT_MAX)
		return KH_ERR_BAD_FIELD;
	*v = (uint32_t)x;
	return KH_OK;
}

/* RW: comma list of hex rows, decoded into buf (the rows borrow it). */
static int read_rows(struct kh_ctx *c, const struct kh_field *f, uint8_t **buf,
                     struct kh_key_row **rows, size_t *nrows)
{
	size_t at = 0, off = 0, len, cap = f->len / 2 + 1, n = 0;
	const char *item;
	int r;

	*buf = NULL;
	*rows = NULL;
	*nrows = 0;
	if (f->len == 0)
		return KH_OK;
	if ((*buf = malloc(cap)) == NULL ||
	    (*rows = calloc(KTIM_ITEMS_MAX, sizeof(**rows))) == NULL)
		return KH_ERR_NOMEM;
	while (next_item(f, &at, &item, &len)) {
		if (n == KTIM_ITEMS_MAX) {
			kh_ctx_detail(c, "RW (at most %u rows)", KTIM_ITEMS_MAX);
			return KH_ERR_TOO_LARGE;
		}
		if ((r = kh_hex_decode(item, len, *buf + off, cap - off)) <= 0 ||
		    kh_ktrow_decode(*buf + off, (size_t)r, &(*rows)[n]) != KH_OK) {
			kh_ctx_detail(c, "RW (row %zu is not a key-table row)", n + 1);
			return KH_ERR_BAD_FIELD;
		}
		off += (size_t)r;
		n++;
	}
	*nrows = n;
	return KH_OK;
}

/* DL: comma list of slot:keyid (hex). */
static int read_dels(struct kh_ctx *c, const struct kh_field *f, struct kh_ks_del **dels,
                     size_t *ndels)
{
	size_t at = 0, len, n = 0;
	const char *item;

	*dels = NULL;
	*ndels = 0;
	if (f->len == 0)
		return KH_OK;
	if ((*dels = calloc(KTIM_ITEMS_MAX, sizeof(**dels))) == NULL)
		return KH_ERR_NOMEM;
	while (next_item(f, &at, &item, &len)) {
		size_t colon = 0;
		while (colon < len && item[colon] != ':')
			colon++;
		if (n == KTIM_ITEMS_MAX) {
			kh_ctx_detail(c, "DL (at most %u deletes)", KTIM_ITEMS_MAX);
			return KH_ERR_TOO_LARGE;
		}
		if (colon == len || parse_u32_text(item, colon, &(*dels)[n].slot) != KH_OK ||
		    kh_hex_decode(item + colon + 1, len - colon - 1, (*dels)[n].key_id,
		                  KH_KEY_ID_LEN) != KH_KEY_ID_LEN) {
			kh_ctx_detail(c, "DL (item %zu: slot:keyid)", n + 1);
			return KH_ERR_BAD_FIELD;
		}
		n++;
	}
	*ndels = n;
	return KH_OK;
}

KH_ACT(kh_cmd_ktim)
{
	char actor[KH_MAX_LOGINS * KH_NAME_MAX];
	const struct kh_field *rw = kh_frame_get(req, "RW"), *dl = kh_frame_get(req, "DL");
	struct kh_key_row *rows = NULL;
	struct kh_ks_del *dels = NULL;
	struct kh_ks_repl_result res;
	uint8_t *buf = NULL;
	size_t nrows = 0, ndels = 0;
	bool replace = false;
	int r;

	if (rw == NULL && dl == NULL) {
		kh_ctx_detail(c, "RW or DL");
		return KH_ERR_MISSING_FIELD;
	}
	if (kh_frame_has(req, "RP") && (r = kh_frame_yn(req, "RP", &replace)) != KH_OK) {
		kh_ctx_detail(c, "RP");
		return r;
	}
	if ((rw && (r = read_rows(c, rw, &buf, &rows, &nrows)) != KH_OK) ||
	    (dl && (r = read_dels(c, dl, &dels, &ndels)) != KH_OK))
		goto out;
	kh_session_actor(c->s, actor, sizeof(actor));
	r = kh_keystore_replicate(c->hsm, rows, nrows, dels, ndels, replace, actor, &res);
	switch (r) {
	case KH_OK:
		break;
	case KH_ERR_CRYPTO:
		kh_ctx_detail(c, "slot %u: the row does not open under this HSM's major key",
		              (unsigned)res.bad_slot);
		goto out;
	case KH_ERR_EXISTS:
		kh_ctx_detail(c, "slot %u holds another key, or its key identifier is in another slot "
		                 "(RPY replaces)",
		              (unsigned)res.bad_slot);
		goto out;
	case KH_ERR_KEY_USAGE:
		kh_ctx_detail(c, "slot %u: the row would undo a one-way attribute change (RPY forces)",
		              (unsigned)res.bad_slot);
		goto out;
	default:
		kh_ctx_detail(c, "slot %u", (unsigned)res.bad_slot);
		goto out;
	}
	if ((r = kh_msg_put(resp, "BB", "Y")) == KH_OK &&
	    (r = kh_msg_put_u64(resp, "NA", res.added)) == KH_OK &&
	    (r = kh_msg_put_u64(resp, "NU", res.updated)) == KH_OK &&
	    (r = kh_msg_put_u64(resp, "NR", res.replaced)) == KH_OK &&
	    (r = kh_msg_put_u64(resp, "NS", res.unchanged)) == KH_OK &&
	    (r = kh_msg_put_u64(resp, "ND", res.deleted)) == KH_OK)
		r = kh_msg_put_u64(resp, "NG", res.absent);
out:
	if (buf)
		kh_wipe(buf, rw->len / 2 + 1);
	free(buf);
	free(rows);
	free(dels);
	return r;
}

/* ---- KTCK ---------------------------------------------------------------------- */

KH_ACT(kh_cmd_ktck)
{
	uint8_t ck[KH_KTCK_LEN];
	uint64_t lo, hi, count;
	bool cf = false;
	int r;

	if (kh_frame_has(req, "CF")) {
		if ((r = kh_frame_yn(req, "CF", &cf)) != KH_OK) {
			kh_ctx_detail(c, "CF");
			return r;
		}
	}
	if (cf) {
		uint8_t cd[KH_CONFIG_DIGEST_LEN];
		if (kh_frame_has(req, "SL") || kh_frame_has(req, "SH")) {
			kh_ctx_detail(c, kh_frame_has(req, "SL") ? "SL" : "SH");
			return KH_ERR_BAD_FIELD;
		}
		if ((r = kh_config_digest(c->hsm, cd)) != KH_OK)
			return r;
		if ((r = kh_msg_put(resp, "BB", "Y")) == KH_OK)
			r = kh_msg_put_hex(resp, "CD", cd, sizeof(cd));
		return r;
	}
	if ((r = read_span(c, req, false, &lo, &hi)) != KH_OK)
		return r;
	if ((r = kh_ktck(c->hsm, (uint32_t)lo, (uint32_t)hi, ck, &count)) != KH_OK)
		return r;
	if ((r = kh_msg_put(resp, "BB", "Y")) == KH_OK && (r = kh_msg_put_u64(resp, "RN", count)) == KH_OK)
		r = kh_msg_put_hex(resp, "CK", ck, sizeof(ck));
	return r;
}

/* ---- CFEX / CFIM --------------------------------------------------------------- */

static int put_counts(struct kh_buf *resp, const struct kh_backup_counts *cnt)
{
	int r;
	if ((r = kh_msg_put_u64(resp, "ST", cnt->settings)) == KH_OK &&
	    (r = kh_msg_put_u64(resp, "RC", cnt->roles)) == KH_OK)
		r = kh_msg_put_u64(resp, "IC", cnt->identities);
	return r;
}

KH_ACT(kh_cmd_cfex)
{
	char actor[KH_MAX_LOGINS * KH_NAME_MAX];
	struct kh_backup_counts cnt;
	struct kh_mk_info pmk;
	uint8_t *data = NULL;
	size_t len = 0;
	int r;

	(void)req;
	kh_session_actor(c->s, actor, sizeof(actor));
	if ((r = kh_config_export(c->hsm, actor, &data, &len, &cnt)) != KH_OK) {
		if (r == KH_ERR_MAJOR_KEY_NOT_LOADED)
			kh_ctx_detail(c, "PMK");
		return r;
	}
	kh_mk_info(c->hsm, KH_MK_PMK, &pmk);
	if ((r = kh_msg_put(resp, "BB", "Y")) == KH_OK &&
	    (r = kh_msg_put_hex(resp, "CF", data, len)) == KH_OK &&
	    (r = kh_msg_put(resp, "KV", pmk.kcv)) == KH_OK)
		r = put_counts(resp, &cnt);
	free(data);
	return r;
}

KH_ACT(kh_cmd_cfim)
{
	char actor[KH_MAX_LOGINS * KH_NAME_MAX];
	const struct kh_field *cf = kh_frame_get(req, "CF");
	struct kh_config_importer who = {
	    .names = (const char (*)[KH_NAME_MAX])c->s->ident,
	    .n = c->s->nident,
	    .port = c->s->port,
	    .source = c->s->source,
	};
	struct kh_backup_counts cnt;
	uint8_t *data = NULL;
	size_t len = 0;
	int r;

	if (cf == NULL) {
		kh_ctx_detail(c, "CF");
		return KH_ERR_MISSING_FIELD;
	}
	if (cf->len == 0 || cf->len % 2 || cf->len / 2 > KH_CONFIG_MAX) {
		kh_ctx_detail(c, "CF");
		return cf->len / 2 > KH_CONFIG_MAX ? KH_ERR_TOO_LARGE : KH_ERR_BAD_FIELD;
	}
	/* an import replaces every identity: it needs an identity to keep
	 * (Transaction Processing without a login has none) */
	if (c->s->nident == 0 || !c->s->active) {
		kh_ctx_detail(c, "CFIM needs a logged-in identity");
		return KH_ERR_NOT_LOGGED_IN;
	}
	if ((data = malloc(cf->len / 2)) == NULL)
		return KH_ERR_NOMEM;
	if ((r = kh_frame_hex(req, "CF", data, cf->len / 2, &len)) != KH_OK) {
		kh_ctx_detail(c, "CF");
		goto out;
	}
	kh_session_actor(c->s, actor, sizeof(actor));
	if ((r = kh_config_import(c->hsm, data, len, actor, &who, &cnt, c->s->detail,
	                          sizeof(c->s->detail))) != KH_OK)
		goto out;
	if ((r = kh_msg_put(resp, "BB", "Y")) == KH_OK)
		r = put_counts(resp, &cnt);
out:
	free(data);
	return r;
}

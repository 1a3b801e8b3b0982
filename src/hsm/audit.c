/*
 * The audit trail: an HMAC chain over every entry plus a MAC'd head record
 * (last seq and MAC) kept in settings, both written in the caller's
 * transaction. It records who did what; it must never hold a password, a key
 * or any other secret, and it never takes hsm->mu (it runs under the db lock).
 */
#include "hsm/audit.h"
#include "hsm/db.h"
#include "common/kh_log.h"
#include "common/kh_mem.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#define MAC_LEN 32
#define HEAD_LEN (8 + MAC_LEN + MAC_LEN)
#define HEAD_KEY "audit_head"

static const uint8_t zero_mac[MAC_LEN];

static void be64(uint8_t out[8], uint64_t v)
{
	for (int i = 7; i >= 0; i--) {
		out[i] = (uint8_t)v;
		v >>= 8;
	}
}

static uint64_t get_be64(const uint8_t in[8])
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = (v << 8) | in[i];
	return v;
}

struct mac_ctx {
	EVP_MAC *mac;
	EVP_MAC_CTX *ctx;
};

static int mac_start(struct mac_ctx *m, const uint8_t *key)
{
	OSSL_PARAM params[2];
	params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0);
	params[1] = OSSL_PARAM_construct_end();
	m->mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
	m->ctx = m->mac ? EVP_MAC_CTX_new(m->mac) : NULL;
	if (m->ctx == NULL || EVP_MAC_init(m->ctx, key, MAC_LEN, params) != 1)
		return KH_ERR_CRYPTO;
	return KH_OK;
}

static bool mac_add(struct mac_ctx *m, const void *p, size_t n)
{
	return EVP_MAC_update(m->ctx, p, n) == 1;
}

/* A text as be32(length) || bytes, so that field boundaries are bound. */
static bool mac_add_text(struct mac_ctx *m, const char *s, size_t n)
{
	uint8_t len[4] = {(uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n};
	return mac_add(m, len, 4) && mac_add(m, s, n);
}

static int mac_finish(struct mac_ctx *m, uint8_t out[MAC_LEN], bool ok)
{
	size_t outl = 0;
	int r = KH_ERR_CRYPTO;
	if (ok && EVP_MAC_final(m->ctx, out, &outl, MAC_LEN) == 1 && outl == MAC_LEN)
		r = KH_OK;
	EVP_MAC_CTX_free(m->ctx);
	EVP_MAC_free(m->mac);
	return r;
}

/* mac_n = HMAC(key, mac_{n-1} || be64(seq) || be64(ts) || actor || event || detail) */
static int entry_mac(const uint8_t *key, const uint8_t prev[MAC_LEN], uint64_t seq, int64_t ts,
		     const char *actor, size_t al, const char *event, size_t el, const char *detail,
		     size_t dl, uint8_t out[MAC_LEN])
{
	struct mac_ctx m = {0};
	uint8_t num[16];
	int r = mac_start(&m, key);
	be64(num, seq);
	be64(num + 8, (uint64_t)ts);
	bool ok = r == KH_OK && mac_add(&m, prev, MAC_LEN) && mac_add(&m, num, 16) &&
		  mac_add_text(&m, actor, al) && mac_add_text(&m, event, el) &&
		  mac_add_text(&m, detail, dl);
	return mac_finish(&m, out, ok);
}

static int head_mac(const uint8_t *key, const uint8_t head[8 + MAC_LEN], uint8_t out[MAC_LEN])
{
	static const char label[] = "keyhold audit head v1";
	struct mac_ctx m = {0};
	int r = mac_start(&m, key);
	bool ok = r == KH_OK && mac_add(&m, label, sizeof(label)) && mac_add(&m, head, 8 + MAC_LEN);
	return mac_finish(&m, out, ok);
}

/* Read and authenticate the head. KH_ERR_NOT_FOUND if absent,
 * KH_ERR_CRYPTO if present but not authentic. */
static int head_get(struct kh_hsm *hsm, uint64_t *seq, uint8_t mac[MAC_LEN])
{
	uint8_t head[HEAD_LEN], want[MAC_LEN];
	size_t len = 0;
	int r = kh_db_setting_get(hsm->db, HEAD_KEY, head, sizeof(head), &len);
	if (r == KH_ERR_TOO_LARGE)
		return KH_ERR_CRYPTO;
	if (r != KH_OK)
		return r;
	if (len != HEAD_LEN)
		return KH_ERR_CRYPTO;
	if ((r = head_mac(hsm->audit_key, head, want)) != KH_OK)
		return r;
	if (CRYPTO_memcmp(want, head + 8 + MAC_LEN, MAC_LEN) != 0)
		return KH_ERR_CRYPTO;
	*seq = get_be64(head);
	memcpy(mac, head + 8, MAC_LEN);
	return KH_OK;
}

static int head_put(struct kh_hsm *hsm, uint64_t seq, const uint8_t mac[MAC_LEN])
{
	uint8_t head[HEAD_LEN];
	int r;
	be64(head, seq);
	memcpy(head + 8, mac, MAC_LEN);
	if ((r = head_mac(hsm->audit_key, head, head + 8 + MAC_LEN)) != KH_OK)
		return r;
	return kh_db_setting_put(hsm->db, HEAD_KEY, head, sizeof(head));
}

static int max_seq(struct kh_hsm *hsm, uint64_t *seq)
{
	int64_t v = 0;
	int r = kh_db_int(hsm->db, "SELECT COALESCE(MAX(seq),0) FROM audit", NULL, 0, &v);
	if (r == KH_OK)
		*seq = (uint64_t)v;
	return r;
}

static size_t cut(const char *s, size_t max)
{
	size_t n = strlen(s);
	return n > max ? max : n;
}

int kh_audit_append(struct kh_hsm *hsm, const char *actor, const char *event, const char *detail)
{
	sqlite3_stmt *st = NULL;
	uint8_t prev[MAC_LEN], mac[MAC_LEN];
	uint64_t seq = 0;
	int64_t ts;
	size_t al = cut(actor, KH_AUDIT_ACTOR_MAX), el = cut(event, KH_AUDIT_EVENT_MAX);
	size_t dl = cut(detail, KH_AUDIT_DETAIL_MAX);
	int r;

	if ((r = kh_db_begin(hsm->db)) != KH_OK)
		return r;
	/* the HSM clock from the stored offset: hsm->mu must not be taken here */
	ts = (int64_t)time(NULL) + kh_db_setting_get_int(hsm->db, "clock_offset", 0);
	r = head_get(hsm, &seq, prev);
	if (r == KH_ERR_NOT_FOUND || r == KH_ERR_CRYPTO) {
		/* no authentic head: continue after the last row but chain from
		 * zero, so that verification keeps flagging the break instead of
		 * a new entry papering over it */
		if (r == KH_ERR_CRYPTO)
			log_warnx("audit head record is not authentic");
		if ((r = max_seq(hsm, &seq)) != KH_OK)
			goto fail;
		memcpy(prev, zero_mac, MAC_LEN);
	} else if (r != KH_OK) {
		goto fail;
	}
	seq++;
	if ((r = entry_mac(hsm->audit_key, prev, seq, ts, actor, al, event, el, detail, dl, mac)) !=
	    KH_OK)
		goto fail;
	if ((r = kh_db_prepare(
	         hsm->db, "INSERT INTO audit(seq,ts,actor,event,detail,mac) VALUES(?,?,?,?,?,?)",
	         &st)) != KH_OK)
		goto fail;
	sqlite3_bind_int64(st, 1, (int64_t)seq);
	sqlite3_bind_int64(st, 2, ts);
	sqlite3_bind_text(st, 3, actor, (int)al, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 4, event, (int)el, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 5, detail, (int)dl, SQLITE_TRANSIENT);
	sqlite3_bind_blob(st, 6, mac, MAC_LEN, SQLITE_TRANSIENT);
	if ((r = kh_db_err(hsm->db, sqlite3_step(st))) != KH_OK)
		goto fail;
	if ((r = head_put(hsm, seq, mac)) != KH_OK)
		goto fail;
	sqlite3_finalize(st);
	return kh_db_commit(hsm->db);
fail:
	sqlite3_finalize(st);
	kh_db_rollback(hsm->db);
	return r;
}

/* ---- verification ---- */

struct row {
	uint64_t seq;
	int64_t ts;
	const char *actor, *event, *detail;
	size_t al, el, dl;
	const uint8_t *mac;
	size_t maclen;
};

static void row_get(sqlite3_stmt *st, struct row *w)
{
	w->seq = (uint64_t)sqlite3_column_int64(st, 0);
	w->ts = sqlite3_column_int64(st, 1);
	w->actor = (const char *)sqlite3_column_text(st, 2);
	w->al = (size_t)sqlite3_column_bytes(st, 2);
	w->event = (const char *)sqlite3_column_text(st, 3);
	w->el = (size_t)sqlite3_column_bytes(st, 3);
	w->detail = (const char *)sqlite3_column_text(st, 4);
	w->dl = (size_t)sqlite3_column_bytes(st, 4);
	w->mac = sqlite3_column_blob(st, 5);
	w->maclen = (size_t)sqlite3_column_bytes(st, 5);
	if (w->actor == NULL)
		w->actor = "";
	if (w->event == NULL)
		w->event = "";
	if (w->detail == NULL)
		w->detail = "";
}

/* Does w carry a valid MAC for position seq after prev? */
static int row_valid_at(struct kh_hsm *hsm, const struct row *w, const uint8_t prev[MAC_LEN],
			uint64_t seq, bool *valid)
{
	uint8_t calc[MAC_LEN];
	int r = entry_mac(hsm->audit_key, prev, seq, w->ts, w->actor, w->al, w->event, w->el,
			  w->detail, w->dl, calc);
	if (r != KH_OK)
		return r;
	*valid = w->mac != NULL && w->maclen == MAC_LEN && CRYPTO_memcmp(calc, w->mac, MAC_LEN) == 0;
	return KH_OK;
}

/* The entry that belongs at position seq (after prev) sits elsewhere? */
static int genuine_elsewhere(struct kh_hsm *hsm, uint64_t seq, const uint8_t prev[MAC_LEN],
			     bool *found)
{
	sqlite3_stmt *st = NULL;
	struct row w;
	int r, rc;

	*found = false;
	if ((r = kh_db_prepare(hsm->db,
	                       "SELECT seq,ts,actor,event,detail,mac FROM audit WHERE seq<>?",
	                       &st)) != KH_OK)
		return r;
	sqlite3_bind_int64(st, 1, (int64_t)seq);
	while (!*found && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		row_get(st, &w);
		if ((r = row_valid_at(hsm, &w, prev, seq, found)) != KH_OK)
			goto out;
	}
	if (!*found && rc != SQLITE_DONE)
		r = kh_db_err(hsm->db, rc);
out:
	sqlite3_finalize(st);
	return r;
}

static void bad(struct kh_audit_result *res, uint64_t seq, const char *reason)
{
	res->ok = false;
	res->bad_seq = seq;
	res->reason = reason;
}

static int roles_exist(struct kh_hsm *hsm, bool *exist)
{
	int64_t v = 0;
	int r = kh_db_int(hsm->db, "SELECT EXISTS(SELECT 1 FROM roles)", NULL, 0, &v);
	if (r == KH_OK)
		*exist = v != 0;
	return r;
}

/* The chain is intact up to last: does the head agree that the log ends there? */
static int check_head(struct kh_hsm *hsm, uint64_t last, const uint8_t last_mac[MAC_LEN],
		      struct kh_audit_result *res)
{
	uint64_t hseq = 0;
	uint8_t hmac[MAC_LEN];
	bool exist = false;
	int r = head_get(hsm, &hseq, hmac);

	if (r == KH_ERR_NOT_FOUND) {
		/* only a device that never wrote an entry has no head */
		if ((r = roles_exist(hsm, &exist)) != KH_OK)
			return r;
		if (last > 0 || exist)
			bad(res, last + 1, "truncated");
		return KH_OK;
	}
	if (r == KH_ERR_CRYPTO) {
		bad(res, last + 1, "edited");
		return KH_OK;
	}
	if (r != KH_OK)
		return r;
	if (hseq > last)
		bad(res, last + 1, "truncated");
	else if (hseq < last)
		bad(res, hseq + 1, "edited");
	else if (CRYPTO_memcmp(hmac, last_mac, MAC_LEN) != 0)
		bad(res, last, "edited");
	return KH_OK;
}

int kh_audit_verify(struct kh_hsm *hsm, struct kh_audit_result *res)
{
	sqlite3_stmt *st = NULL;
	uint8_t prev[MAC_LEN];
	uint64_t expect = 1;
	int64_t prev_ts = INT64_MIN;
	struct row w;
	bool valid = false;
	int r, rc;

	memset(res, 0, sizeof(*res));
	res->ok = true;
	memcpy(prev, zero_mac, MAC_LEN);
	kh_db_lock(hsm->db);
	if ((r = kh_db_prepare(hsm->db,
	                       "SELECT seq,ts,actor,event,detail,mac FROM audit ORDER BY seq",
	                       &st)) != KH_OK)
		goto out;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		row_get(st, &w);
		if (w.seq != expect) {
			bad(res, expect, "missing");
			goto out;
		}
		if ((r = row_valid_at(hsm, &w, prev, expect, &valid)) != KH_OK)
			goto out;
		if (!valid) {
			bool found = false;
			int64_t ts = w.ts;
			/* finished with the cursor before the second scan */
			sqlite3_finalize(st);
			st = NULL;
			if ((r = genuine_elsewhere(hsm, expect, prev, &found)) != KH_OK)
				goto out;
			bad(res, expect, found || ts < prev_ts ? "reordered" : "edited");
			goto out;
		}
		memcpy(prev, w.mac, MAC_LEN);
		prev_ts = w.ts;
		res->checked++;
		expect++;
	}
	if (rc != SQLITE_DONE) {
		r = kh_db_err(hsm->db, rc);
		goto out;
	}
	r = check_head(hsm, expect - 1, prev, res);
out:
	sqlite3_finalize(st);
	kh_db_unlock(hsm->db);
	if (r != KH_OK)
		res->ok = false;
	return r;
}

/* ---- reading ---- */

int kh_audit_count(struct kh_hsm *hsm, uint64_t *count)
{
	int64_t v = 0;
	int r = kh_db_int(hsm->db, "SELECT COUNT(*) FROM audit", NULL, 0, &v);
	if (r == KH_OK)
		*count = (uint64_t)v;
	return r;
}

int kh_audit_read(struct kh_hsm *hsm, uint64_t first, size_t max, kh_audit_visit_fn fn, void *arg,
		  uint64_t *next)
{
	sqlite3_stmt *st = NULL;
	struct kh_audit_entry e;
	size_t n = 0;
	int r, rc;

	*next = 0;
	kh_db_lock(hsm->db);
	if ((r = kh_db_prepare(
	         hsm->db,
	         "SELECT seq,ts,actor,event,detail FROM audit WHERE seq>=? ORDER BY seq LIMIT ?",
	         &st)) != KH_OK)
		goto out;
	sqlite3_bind_int64(st, 1, first > INT64_MAX ? INT64_MAX : (int64_t)first);
	sqlite3_bind_int64(st, 2, (int64_t)max + 1); /* one more tells whether more remain */
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		const unsigned char *t;
		uint64_t seq = (uint64_t)sqlite3_column_int64(st, 0);
		if (n == max) {
			*next = seq;
			break;
		}
		memset(&e, 0, sizeof(e));
		e.seq = seq;
		e.ts = sqlite3_column_int64(st, 1);
		t = sqlite3_column_text(st, 2);
		snprintf(e.actor, sizeof(e.actor), "%s", t ? (const char *)t : "");
		t = sqlite3_column_text(st, 3);
		snprintf(e.event, sizeof(e.event), "%s", t ? (const char *)t : "");
		t = sqlite3_column_text(st, 4);
		snprintf(e.detail, sizeof(e.detail), "%s", t ? (const char *)t : "");
		if ((r = fn(arg, &e)) != KH_OK)
			goto out;
		n++;
	}
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		r = kh_db_err(hsm->db, rc);
out:
	sqlite3_finalize(st);
	kh_db_unlock(hsm->db);
	return r;
}

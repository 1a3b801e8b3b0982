/*
 * The PKCS#11 communication commands (ECHO PRMD RAND HASH STAT TIME GPKM
 * GPKS GPKR) and device settings. These report what the HSM is (model,
 * version, serial, feature set) so that clients and the guardian can tell
 * devices apart, and what a key-table object is (its attributes, public
 * parts, check value); they never reveal secret key material.
 */
#include "hsm/cmds.h"
#include "hsm/selftest.h"
#include "hsm/audit.h"
#include "hsm/db.h"
#include "hsm/dispatch.h"
#include "hsm/hsm_core.h"
#include "hsm/majorkey.h"
#include "hsm/keystore.h"
#include "hsm/keyobj.h"
#include "hsm/tls.h"
#include "common/kh_buf.h"
#include "common/kh_mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#define RAND_MAX_BYTES 4096
#define GPKM_PAGE_DEFAULT 100
#define GPKM_PAGE_MAX 1000
#define KEY_SETTING_MAX 4096

static void mk_feature(struct kh_hsm *hsm, enum kh_mk_id id, char *out, size_t outsz, bool *loaded)
{
	struct kh_mk_info mi;
	kh_mk_info(hsm, id, &mi);
	*loaded = mi.loaded;
	snprintf(out, outsz, "%s", mi.loaded ? mi.kcv : "N");
}

KH_ACT(kh_cmd_echo)
{
	const struct kh_field *ag = kh_frame_get(req, "AG");
	int r = kh_msg_putn(resp, "AG", ag ? ag->val : "", ag ? ag->len : 0);
	if (r == KH_OK)
		r = kh_msg_put(resp, "BC", KH_VERSION);
	return r;
}

KH_ACT(kh_cmd_prmd)
{
	struct kh_hsm *hsm = c->hsm;
	pthread_mutex_lock(&hsm->mu);
	bool fips = hsm->fips, p11 = hsm->pkcs11;
	int lt = hsm->lockout_threshold;
	pthread_mutex_unlock(&hsm->mu);
	int r = kh_msg_put(resp, "BB", "Y");
	if (r == KH_OK) r = kh_msg_put(resp, "MD", KH_MODEL);
	if (r == KH_OK) r = kh_msg_put(resp, "VN", KH_VERSION);
	if (r == KH_OK) r = kh_msg_put(resp, "FI", fips ? "Y" : "N");
	if (r == KH_OK) r = kh_msg_put(resp, "PK", p11 ? "Y" : "N");
	if (r == KH_OK) r = kh_msg_put_u64(resp, "MR", fips ? 2048 : 1024);
	if (r == KH_OK) r = kh_msg_put(resp, "P1", fips ? "N" : "Y");
	if (r == KH_OK) r = kh_msg_put_u64(resp, "MF", KH_FRAME_MAX);
	if (r == KH_OK) r = kh_msg_put_u64(resp, "LT", (uint64_t)lt);
	return r;
}

KH_ACT(kh_cmd_rand)
{
	uint64_t n;
	uint8_t buf[RAND_MAX_BYTES];
	int r = kh_frame_u64(req, "NB", 1, RAND_MAX_BYTES, &n);
	if (r != KH_OK) {
		kh_ctx_detail(c, "NB (1-%d)", RAND_MAX_BYTES);
		return r;
	}
	if (RAND_bytes(buf, (int)n) != 1)
		return KH_ERR_CRYPTO;
	r = kh_msg_put_hex(resp, "RN", buf, (size_t)n);
	kh_wipe(buf, (size_t)n);
	return r;
}

KH_ACT(kh_cmd_hash)
{
	return kh_msg_put(resp, "SN", c->hsm->serial);
}

static int64_t key_count(struct kh_hsm *hsm)
{
	sqlite3_stmt *st = NULL;
	int64_t n = -1;
	kh_db_lock(hsm->db);
	if (sqlite3_prepare_v2(kh_db_sqlite(hsm->db), "SELECT COUNT(*) FROM keys", -1, &st, NULL) ==
		    SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW)
		n = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	kh_db_unlock(hsm->db);
	return n;
}

KH_ACT(kh_cmd_stat)
{
	struct kh_hsm *hsm = c->hsm;
	char ft[8], pm[8], bk[8], fs[96];
	bool lft, lpm, lbk;
	mk_feature(hsm, KH_MK_FTK, ft, sizeof(ft), &lft);
	mk_feature(hsm, KH_MK_PMK, pm, sizeof(pm), &lpm);
	mk_feature(hsm, KH_MK_BEK, bk, sizeof(bk), &lbk);
	pthread_mutex_lock(&hsm->mu);
	bool fips = hsm->fips, p11 = hsm->pkcs11;
	pthread_mutex_unlock(&hsm->mu);
	snprintf(fs, sizeof(fs), "FIPS=%c,PKCS11=%c,FTK=%c,PMK=%c,BEK=%c", fips ? 'Y' : 'N',
		 p11 ? 'Y' : 'N', lft ? 'Y' : 'N', lpm ? 'Y' : 'N', lbk ? 'Y' : 'N');
	int64_t kc = key_count(hsm);
	if (kc < 0)
		return KH_ERR_STORAGE;
	int r = kh_msg_put(resp, "BB", "Y");
	if (r == KH_OK) r = kh_msg_put(resp, "MD", KH_MODEL);
	if (r == KH_OK) r = kh_msg_put(resp, "VN", KH_VERSION);
	if (r == KH_OK) r = kh_msg_put(resp, "SN", hsm->serial);
	if (r == KH_OK) r = kh_msg_put(resp, "ST", atomic_load(&hsm->error_state) ? "ERROR" : "OK");
	if (r == KH_OK) r = kh_msg_put(resp, "FI", fips ? "Y" : "N");
	if (r == KH_OK) r = kh_msg_put(resp, "PK", p11 ? "Y" : "N");
	if (r == KH_OK) r = kh_msg_put(resp, "FT", ft);
	if (r == KH_OK) r = kh_msg_put(resp, "PM", pm);
	if (r == KH_OK) r = kh_msg_put(resp, "BK", bk);
	if (r == KH_OK) r = kh_msg_put(resp, "FS", fs);
	if (r == KH_OK) r = kh_msg_put_u64(resp, "UP", (uint64_t)(time(NULL) - hsm->started));
	if (r == KH_OK) r = kh_msg_put_u64(resp, "RQ", atomic_load(&hsm->n_requests));
	if (r == KH_OK) r = kh_msg_put_u64(resp, "ER", atomic_load(&hsm->n_errors));
	if (r == KH_OK) r = kh_msg_put_u64(resp, "CN", atomic_load(&hsm->n_conn_open));
	if (r == KH_OK) r = kh_msg_put_u64(resp, "KC", (uint64_t)kc);
	return r;
}

/* YYYYMMDDhhmmss (UTC) <-> time_t */
static int parse_time(const struct kh_field *f, time_t *out)
{
	struct tm tm;
	char tmp[16];
	if (f->len != 14)
		return KH_ERR_BAD_FIELD;
	memcpy(tmp, f->val, 14);
	tmp[14] = '\0';
	memset(&tm, 0, sizeof(tm));
	char *end = strptime(tmp, "%Y%m%d%H%M%S", &tm);
	if (end == NULL || *end != '\0')
		return KH_ERR_BAD_FIELD;
	time_t t = timegm(&tm);
	if (t == (time_t)-1)
		return KH_ERR_BAD_FIELD;
	*out = t;
	return KH_OK;
}

KH_ACT(kh_cmd_time)
{
	struct kh_hsm *hsm = c->hsm;
	const struct kh_field *tm_in = kh_frame_get(req, "TM");
	char out[32], actor[300], detail[64];
	struct tm tm;
	int r;

	if (tm_in) {
		time_t t;
		/* the clock guards certificate expiry, lockout and the audit
		 * trail: only an administrative permission may move it */
		if (c->role == NULL || !(c->role->perms & KH_PERM(KH_P_TIME_SET))) {
			kh_ctx_detail(c, "needs time.set to set the clock");
			return KH_ERR_PERMISSION_DENIED;
		}
		if ((r = parse_time(tm_in, &t)) != KH_OK) {
			kh_ctx_detail(c, "TM (YYYYMMDDhhmmss)");
			return r;
		}
		int64_t off = (int64_t)(t - time(NULL));
		kh_session_actor(c->s, actor, sizeof(actor));
		snprintf(detail, sizeof(detail), "offset %lld s", (long long)off);
		if ((r = kh_db_begin(hsm->db)) != KH_OK)
			return r;
		if ((r = kh_db_setting_put_int(hsm->db, "clock_offset", off)) != KH_OK ||
		    (r = kh_audit_append(hsm, actor, "time.set", detail)) != KH_OK) {
			kh_db_rollback(hsm->db);
			return r;
		}
		if ((r = kh_db_commit(hsm->db)) != KH_OK)
			return r;
		kh_hsm_reload_settings(hsm);
	}
	time_t now = kh_hsm_now(hsm);
	gmtime_r(&now, &tm);
	strftime(out, sizeof(out), "%Y%m%d%H%M%S", &tm);
	return kh_msg_put(resp, "TM", out);
}

/* WHERE clause restricting slots to the role's ranges ("1" with All Slots). */
static void range_clause(const struct kh_role *role, char *out, size_t outsz)
{
	size_t n = 0;
	if (role->perms & KH_PERM(KH_P_KEYS_ALL_SLOTS)) {
		snprintf(out, outsz, "1");
		return;
	}
	if (role->nranges == 0) {
		snprintf(out, outsz, "0");
		return;
	}
	n += (size_t)snprintf(out + n, outsz - n, "(");
	for (size_t i = 0; i < role->nranges && n < outsz; i++)
		n += (size_t)snprintf(out + n, outsz - n, "%s(slot BETWEEN %u AND %u)", i ? " OR " : "",
				      role->ranges[i].lo, role->ranges[i].hi);
	if (n < outsz)
		snprintf(out + n, outsz - n, ")");
}

/* GPKM's optional filters, each bound as a parameter (never spliced in). */
struct gpkm_filter {
	char cls[KH_KS_NAME_MAX], type[KH_KS_NAME_MAX];
	uint8_t label[KEY_SETTING_MAX], ckaid[KEY_SETTING_MAX], key_id[KH_KEY_ID_LEN];
	size_t label_len, ckaid_len, key_id_len;
	bool has_label, has_ckaid;
};

static int gpkm_filter_read(struct kh_ctx *c, const struct kh_frame *req, struct gpkm_filter *f)
{
	if (kh_frame_has(req, "CL") && kh_frame_str(req, "CL", f->cls, sizeof(f->cls)) != KH_OK)
		goto bad_cl;
	if (kh_frame_has(req, "TY") && kh_frame_str(req, "TY", f->type, sizeof(f->type)) != KH_OK) {
		kh_ctx_detail(c, "TY");
		return KH_ERR_BAD_FIELD;
	}
	/* an empty LB or KI matches keys without one */
	if ((f->has_label = kh_frame_has(req, "LB")) &&
	    kh_frame_hex(req, "LB", f->label, sizeof(f->label), &f->label_len) != KH_OK) {
		kh_ctx_detail(c, "LB (hex, at most %d bytes)", KEY_SETTING_MAX);
		return KH_ERR_BAD_FIELD;
	}
	if ((f->has_ckaid = kh_frame_has(req, "KI")) &&
	    kh_frame_hex(req, "KI", f->ckaid, sizeof(f->ckaid), &f->ckaid_len) != KH_OK) {
		kh_ctx_detail(c, "KI (hex, at most %d bytes)", KEY_SETTING_MAX);
		return KH_ERR_BAD_FIELD;
	}
	if (kh_frame_has(req, "KD") &&
	    (kh_frame_hex(req, "KD", f->key_id, sizeof(f->key_id), &f->key_id_len) != KH_OK ||
	     f->key_id_len != KH_KEY_ID_LEN)) {
		kh_ctx_detail(c, "KD (16 bytes, hex)");
		return KH_ERR_BAD_FIELD;
	}
	return KH_OK;
bad_cl:
	kh_ctx_detail(c, "CL");
	return KH_ERR_BAD_FIELD;
}

/* The WHERE clause: fixed text with ? placeholders for the filters, and
 * numbers from the role for its ranges. */
static void gpkm_where(const struct kh_role *role, const struct gpkm_filter *f, char *out,
		       size_t outsz)
{
	size_t n = 0;
	range_clause(role, out, outsz);
	n = strlen(out);
	if (f->cls[0])
		n += (size_t)snprintf(out + n, outsz - n, " AND class = ?");
	if (f->type[0] && n < outsz)
		n += (size_t)snprintf(out + n, outsz - n, " AND ktype = ?");
	if (f->has_label && n < outsz)
		n += (size_t)snprintf(out + n, outsz - n, " AND label IS ?");
	if (f->has_ckaid && n < outsz)
		n += (size_t)snprintf(out + n, outsz - n, " AND ckaid IS ?");
	if (f->key_id_len && n < outsz)
		snprintf(out + n, outsz - n, " AND key_id = ?");
}

/* Binds the filters in gpkm_where's order, from parameter index i. */
static int gpkm_bind(sqlite3_stmt *st, const struct gpkm_filter *f, int i)
{
	if (f->cls[0])
		sqlite3_bind_text(st, i++, f->cls, -1, SQLITE_STATIC);
	if (f->type[0])
		sqlite3_bind_text(st, i++, f->type, -1, SQLITE_STATIC);
	/* descriptive columns hold NULL for "none" (keystore.c) */
	if (f->has_label) {
		if (f->label_len)
			sqlite3_bind_blob(st, i, f->label, (int)f->label_len, SQLITE_STATIC);
		i++;
	}
	if (f->has_ckaid) {
		if (f->ckaid_len)
			sqlite3_bind_blob(st, i, f->ckaid, (int)f->ckaid_len, SQLITE_STATIC);
		i++;
	}
	if (f->key_id_len)
		sqlite3_bind_blob(st, i++, f->key_id, KH_KEY_ID_LEN, SQLITE_STATIC);
	return i;
}

KH_ACT(kh_cmd_gpkm)
{
	struct kh_hsm *hsm = c->hsm;
	uint64_t from = 0, page = GPKM_PAGE_DEFAULT;
	char where[KH_MAX_RANGES * 48 + 160], sql[sizeof(where) + 160];
	struct gpkm_filter *flt = NULL;
	sqlite3_stmt *st = NULL;
	struct kh_buf *list = NULL;
	int r, count = 0, i;
	int64_t total = 0, next = -1;

	if (kh_frame_has(req, "SL") && (r = kh_frame_u64(req, "SL", 0, KH_SLOT_MAX, &from)) != KH_OK) {
		kh_ctx_detail(c, "SL");
		return r;
	}
	if (kh_frame_has(req, "NM") &&
	    (r = kh_frame_u64(req, "NM", 1, GPKM_PAGE_MAX, &page)) != KH_OK) {
		kh_ctx_detail(c, "NM (1-%d)", GPKM_PAGE_MAX);
		return r;
	}
	if ((flt = calloc(1, sizeof(*flt))) == NULL)
		return KH_ERR_NOMEM;
	if ((r = gpkm_filter_read(c, req, flt)) != KH_OK) {
		free(flt);
		return r;
	}
	/* the clause holds only numbers from the role and fixed text */
	gpkm_where(c->role, flt, where, sizeof(where));
	if ((list = kh_buf_new(GPKM_PAGE_MAX * 90)) == NULL) {
		free(flt);
		return KH_ERR_NOMEM;
	}
	kh_db_lock(hsm->db);
	snprintf(sql, sizeof(sql), "SELECT COUNT(*) FROM keys WHERE %s", where);
	if (sqlite3_prepare_v2(kh_db_sqlite(hsm->db), sql, -1, &st, NULL) != SQLITE_OK) {
		r = KH_ERR_STORAGE;
		goto out;
	}
	gpkm_bind(st, flt, 1);
	if (sqlite3_step(st) != SQLITE_ROW) {
		r = KH_ERR_STORAGE;
		goto out;
	}
	total = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	st = NULL;
	snprintf(sql, sizeof(sql),
		 "SELECT slot, class, ktype, bits, key_id FROM keys WHERE %s AND slot >= ? "
		 "ORDER BY slot LIMIT ?",
		 where);
	if (sqlite3_prepare_v2(kh_db_sqlite(hsm->db), sql, -1, &st, NULL) != SQLITE_OK) {
		r = KH_ERR_STORAGE;
		goto out;
	}
	i = gpkm_bind(st, flt, 1);
	sqlite3_bind_int64(st, i++, (sqlite3_int64)from);
	sqlite3_bind_int64(st, i, (sqlite3_int64)page + 1);
	r = KH_OK;
	while (sqlite3_step(st) == SQLITE_ROW) {
		int64_t slot = sqlite3_column_int64(st, 0);
		char id[2 * KH_KEY_ID_LEN + 1];
		if ((uint64_t)count == page) {
			next = slot;
			break;
		}
		const char *cl = (const char *)sqlite3_column_text(st, 1);
		const char *ty = (const char *)sqlite3_column_text(st, 2);
		if (!kh_frame_text_ok(cl ? cl : "", cl ? strlen(cl) : 0) ||
		    !kh_frame_text_ok(ty ? ty : "", ty ? strlen(ty) : 0) ||
		    sqlite3_column_bytes(st, 4) != KH_KEY_ID_LEN) {
			r = KH_ERR_STORAGE;
			break;
		}
		kh_hex_encode(sqlite3_column_blob(st, 4), KH_KEY_ID_LEN, id);
		if ((r = kh_buf_putf(list, "%s%lld:%s:%s:%d:%s", count ? "," : "", (long long)slot,
				     cl ? cl : "", ty ? ty : "", sqlite3_column_int(st, 3), id)) != KH_OK)
			break;
		count++;
	}
out:
	sqlite3_finalize(st);
	kh_db_unlock(hsm->db);
	free(flt);
	if (r == KH_OK)
		r = kh_msg_put_u64(resp, "KC", (uint64_t)total);
	if (r == KH_OK)
		r = kh_msg_putn(resp, "KL", (const char *)kh_buf_ptr(list), kh_buf_len(list));
	if (r == KH_OK && next >= 0)
		r = kh_msg_put_u64(resp, "NX", (uint64_t)next);
	kh_buf_free(list);
	return r;
}

static int put_blob_col(struct kh_buf *resp, const char *tag, sqlite3_stmt *st, int col)
{
	return kh_msg_put_hex(resp, tag, sqlite3_column_blob(st, col),
			      (size_t)sqlite3_column_bytes(st, col));
}

/* The key-table columns of k's slot: SL, KD, LB, KI, EX, CL, TY, BT. The
 * row must still hold k (another key put there meanwhile: BUSY). */
static int key_settings_out(struct kh_ctx *c, const struct kh_key *k, struct kh_buf *resp)
{
	struct kh_hsm *hsm = c->hsm;
	sqlite3_stmt *st = NULL;
	int r;
	kh_db_lock(hsm->db);
	r = sqlite3_prepare_v2(kh_db_sqlite(hsm->db),
			       "SELECT key_id, label, ckaid, extra, class, ktype, bits FROM keys "
			       "WHERE slot = ?",
			       -1, &st, NULL);
	if (r != SQLITE_OK) {
		r = KH_ERR_STORAGE;
		goto out;
	}
	sqlite3_bind_int64(st, 1, k->slot);
	r = sqlite3_step(st);
	if (r == SQLITE_DONE) {
		kh_ctx_detail(c, "slot %u is empty", k->slot);
		r = KH_ERR_NOT_FOUND;
		goto out;
	}
	if (r != SQLITE_ROW) {
		r = KH_ERR_STORAGE;
		goto out;
	}
	if (sqlite3_column_bytes(st, 0) != KH_KEY_ID_LEN ||
	    memcmp(sqlite3_column_blob(st, 0), k->key_id, KH_KEY_ID_LEN) != 0) {
		kh_ctx_detail(c, "slot %u changed meanwhile: try again", k->slot);
		r = KH_ERR_BUSY;
		goto out;
	}
	const char *cl = (const char *)sqlite3_column_text(st, 4);
	const char *ty = (const char *)sqlite3_column_text(st, 5);
	if (!cl || !ty || !kh_frame_text_ok(cl, strlen(cl)) || !kh_frame_text_ok(ty, strlen(ty))) {
		r = KH_ERR_STORAGE;
		goto out;
	}
	r = kh_msg_put_u64(resp, "SL", k->slot);
	if (r == KH_OK) r = put_blob_col(resp, "KD", st, 0);
	if (r == KH_OK) r = put_blob_col(resp, "LB", st, 1);
	if (r == KH_OK) r = put_blob_col(resp, "KI", st, 2);
	if (r == KH_OK) r = put_blob_col(resp, "EX", st, 3);
	if (r == KH_OK) r = kh_msg_put(resp, "CL", cl);
	if (r == KH_OK) r = kh_msg_put(resp, "TY", ty);
	if (r == KH_OK) r = kh_msg_put_u64(resp, "BT", (uint64_t)sqlite3_column_int64(st, 6));
out:
	sqlite3_finalize(st);
	kh_db_unlock(hsm->db);
	return r;
}

/* What GPKR and GPKS answer: for a slot its columns, for a cryptogram its
 * identifier, class, type and size; then the bound attributes and, by
 * class, the public parts, check value or value (kh_key_put_attrs). */
static int object_out(struct kh_ctx *c, const struct kh_key *k, struct kh_buf *resp)
{
	int r;
	if (k->in_table)
		r = key_settings_out(c, k, resp);
	else if ((r = kh_msg_put_hex(resp, "KD", k->key_id, KH_KEY_ID_LEN)) == KH_OK &&
		 (r = kh_msg_put(resp, "CL", kh_kclass_name(k->a.cls))) == KH_OK &&
		 (r = kh_msg_put(resp, "TY", kh_ktype_name(k->a.type))) == KH_OK)
		r = kh_msg_put_u64(resp, "BT", k->a.bits);
	return r == KH_OK ? kh_key_put_attrs(resp, k) : r;
}

/* GPKR and GPKS name one object: a slot (SL, KD optional) or a cryptogram
 * (CG). It is opened like any key a command uses (range, kind, identifier,
 * Authorized, an altered row is CRYPTO), data objects included. */
static void plan_object(struct kh_op *op)
{
	op->ref[op->nref++] = (struct kh_keyref){.slot_tag = "SL",
						 .id_tag = "KD",
						 .cg_tag = "CG",
						 .flags = KH_KR_REQUIRED | KH_KR_OBJECT};
}

KH_PLAN(kh_plan_gpkr)
{
	(void)c;
	(void)req;
	plan_object(op);
	return KH_OK;
}

KH_ACT(kh_cmd_gpkr)
{
	(void)req;
	return object_out(c, c->op->key[0], resp);
}

KH_PLAN(kh_plan_gpks)
{
	static const char *const slot_only[] = {"LB", "KI", "EX", "DV"};
	if (kh_frame_has(req, "CG"))
		for (size_t i = 0; i < sizeof(slot_only) / sizeof(slot_only[0]); i++)
			if (kh_frame_has(req, slot_only[i])) {
				kh_ctx_detail(c, "%s (a key-table object's, not a cryptogram's)",
					      slot_only[i]);
				return KH_ERR_BAD_FIELD;
			}
	plan_object(op);
	return KH_OK;
}

/* Replace one descriptive column if its tag is present. The column name is
 * one of three constants, never request text. */
static int update_setting(struct kh_ctx *c, const struct kh_frame *req, const char *tag,
			  const char *column, uint32_t slot, int *changed)
{
	uint8_t val[KEY_SETTING_MAX];
	size_t len = 0;
	char sql[96];
	sqlite3_stmt *st = NULL;
	if (!kh_frame_has(req, tag))
		return KH_OK;
	int r = kh_frame_hex(req, tag, val, sizeof(val), &len);
	if (r != KH_OK) {
		kh_ctx_detail(c, "%s (hex, at most %d bytes)", tag, KEY_SETTING_MAX);
		return r;
	}
	snprintf(sql, sizeof(sql), "UPDATE keys SET %s = ? WHERE slot = ?", column);
	if (sqlite3_prepare_v2(kh_db_sqlite(c->hsm->db), sql, -1, &st, NULL) != SQLITE_OK)
		return KH_ERR_STORAGE;
	sqlite3_bind_blob(st, 1, val, (int)len, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, slot);
	r = sqlite3_step(st) == SQLITE_DONE ? KH_OK : KH_ERR_STORAGE;
	if (r == KH_OK && sqlite3_changes(kh_db_sqlite(c->hsm->db)) == 0)
		r = KH_ERR_NOT_FOUND;
	sqlite3_finalize(st);
	if (r == KH_OK)
		(*changed)++;
	return r;
}

/* The key after GPKS's changes to its bound attributes (CZ, KF) and, for a
 * data object, its value (DV, which needs M as usage does): *out is NULL
 * when nothing bound changes. */
static int gpks_changed_key(struct kh_ctx *c, const struct kh_frame *req, const struct kh_key *k,
			    struct kh_key **out, bool *new_value)
{
	const struct kh_field *dv = kh_frame_get(req, "DV");
	struct kh_keyattr a;
	uint8_t *v = NULL;
	size_t n = 0;
	bool changed = false;
	int r;

	*out = NULL;
	*new_value = false;
	if ((r = kh_key_attrs_change(c, req, k, &a, &changed)) != KH_OK)
		return r;
	if (dv != NULL) {
		if (k->a.cls != KH_KC_DATA) {
			kh_ctx_detail(c, "DV (a data object's value)");
			return KH_ERR_BAD_FIELD;
		}
		if (dv->len % 2 || dv->len / 2 > KH_DATA_MAX_LEN ||
		    (v = malloc(dv->len / 2 + 1)) == NULL ||
		    kh_frame_hex(req, "DV", v, dv->len / 2 + 1, &n) != KH_OK) {
			free(v);
			kh_ctx_detail(c, "DV (hex, at most %d bytes)", KH_DATA_MAX_LEN);
			return KH_ERR_BAD_FIELD;
		}
		*new_value = n != k->der_len || (n && memcmp(v, k->der, n) != 0);
		if (*new_value && !(k->a.flags & KH_KF_MODIFIABLE)) {
			free(v);
			kh_ctx_detail(c, "DV: the data object is not modifiable (no M)");
			return KH_ERR_KEY_USAGE;
		}
	}
	if (*new_value && (r = kh_key_from_data(c, &a, v, n, out)) == KH_OK) {
		/* the same object, with another value */
		memcpy((*out)->key_id, k->key_id, KH_KEY_ID_LEN);
		(*out)->has_id = k->has_id;
		(*out)->in_table = k->in_table;
		(*out)->slot = k->slot;
	} else if (!*new_value && changed) {
		r = kh_key_with_attrs(k, &a, out);
	}
	free(v);
	return r;
}

/* A cryptogram with the changed attributes and the same identifier;
 * nothing is stored. */
static int gpks_cryptogram(struct kh_ctx *c, const struct kh_key *k, struct kh_key *nk,
			   struct kh_buf *resp)
{
	struct kh_key *use = nk;
	uint8_t *cg = NULL;
	size_t n = 0;
	int r;

	if (use == NULL && (r = kh_key_with_attrs(k, &k->a, &use)) != KH_OK)
		return r;
	r = kh_key_cryptogram(c->hsm, use, &cg, &n);
	if (r == KH_ERR_MAJOR_KEY_NOT_LOADED)
		kh_ctx_detail(c, "%s", kh_mk_name(use->a.major));
	if (r == KH_OK)
		r = object_out(c, use, resp);
	if (r == KH_OK)
		r = kh_msg_put_hex(resp,
				   use->a.cls == KH_KC_SECRET    ? "BG"
				   : use->a.cls == KH_KC_PRIVATE ? "RC"
								 : "SD",
				   cg, n);
	free(cg);
	if (use != nk)
		kh_key_unref(use);
	return r;
}

KH_ACT(kh_cmd_gpks)
{
	struct kh_hsm *hsm = c->hsm;
	const struct kh_key *k = c->op->key[0];
	struct kh_key *nk = NULL;
	bool new_value = false;
	int changed = 0, r;
	char actor[300], detail[64];

	if ((r = gpks_changed_key(c, req, k, &nk, &new_value)) != KH_OK)
		return r;
	if (!k->in_table) {
		r = gpks_cryptogram(c, k, nk, resp);
		kh_key_unref(nk);
		return r;
	}
	/* the descriptive columns and the re-wrapped key: one transaction */
	if ((r = kh_db_begin(hsm->db)) != KH_OK)
		goto out;
	if ((r = update_setting(c, req, "LB", "label", k->slot, &changed)) != KH_OK ||
	    (r = update_setting(c, req, "KI", "ckaid", k->slot, &changed)) != KH_OK ||
	    (r = update_setting(c, req, "EX", "extra", k->slot, &changed)) != KH_OK)
		goto fail;
	if (nk != NULL && (r = kh_key_update(c, k, nk, new_value)) != KH_OK)
		goto fail;
	if (changed) {
		kh_session_actor(c->s, actor, sizeof(actor));
		snprintf(detail, sizeof(detail), "slot %u", k->slot);
		if ((r = kh_audit_append(hsm, actor, "key.settings", detail)) != KH_OK)
			goto fail;
	}
	if ((r = kh_db_commit(hsm->db)) != KH_OK)
		goto out;
	if (nk != NULL)
		kh_keycache_forget(hsm, k->slot);
	r = object_out(c, nk != NULL ? nk : k, resp);
	goto out;
fail:
	kh_db_rollback(hsm->db);
out:
	kh_key_unref(nk);
	return r;
}

KH_ACT(kh_cmd_setg)
{
	struct kh_hsm *hsm = c->hsm;
	pthread_mutex_lock(&hsm->mu);
	bool fips = hsm->fips, p11 = hsm->pkcs11;
	int lt = hsm->lockout_threshold, ls = hsm->lockout_seconds;
	pthread_mutex_unlock(&hsm->mu);
	int r = kh_msg_put(resp, "FI", fips ? "Y" : "N");
	if (r == KH_OK) r = kh_msg_put(resp, "PK", p11 ? "Y" : "N");
	if (r == KH_OK) r = kh_msg_put_u64(resp, "LT", (uint64_t)lt);
	if (r == KH_OK) r = kh_msg_put_u64(resp, "LS", (uint64_t)ls);
	return r;
}

/* FIPS mode keeps every port encrypted and the Admin port mutual (TPRT
 * refuses the others while it is on); turning it on with such a port set
 * would leave one serving. KH_ERR_STATE, detail set, when one is. */
static int fips_ports_ok(struct kh_ctx *c)
{
	static const struct {
		enum kh_port port;
		const char *name;
	} ports[] = {{KH_PORT_PROD, "Excrypt"}, {KH_PORT_ADMIN, "Admin"}};
	for (size_t i = 0; i < sizeof(ports) / sizeof(ports[0]); i++) {
		struct kh_tls_port ps;
		int r = kh_tls_port_get(c->hsm, ports[i].port, &ps);
		if (r != KH_OK)
			return r;
		if (ps.mode == KH_TLS_CLEAR ||
		    (ports[i].port == KH_PORT_ADMIN && ps.mode != KH_TLS_MUTUAL)) {
			kh_ctx_detail(c, "the %s port is %s (FIPS mode needs %s)", ports[i].name,
			              kh_tls_mode_name(ps.mode),
			              ports[i].port == KH_PORT_ADMIN ? "mutual TLS" : "TLS");
			return KH_ERR_STATE;
		}
	}
	return KH_OK;
}

static int weak_roles(struct kh_hsm *hsm, int64_t *n)
{
	sqlite3_stmt *st = NULL;
	int r = KH_ERR_STORAGE;
	if (sqlite3_prepare_v2(kh_db_sqlite(hsm->db),
			       "SELECT COUNT(*) FROM roles WHERE logins_required < 2 AND name <> ?",
			       -1, &st, NULL) == SQLITE_OK) {
		sqlite3_bind_text(st, 1, KH_ROLE_TP, -1, SQLITE_STATIC);
		if (sqlite3_step(st) == SQLITE_ROW) {
			*n = sqlite3_column_int64(st, 0);
			r = KH_OK;
		}
	}
	sqlite3_finalize(st);
	return r;
}

KH_ACT(kh_cmd_sets)
{
	struct kh_hsm *hsm = c->hsm;
	bool fi = false, pk = false;
	uint64_t lt = 0, ls = 0;
	char actor[300], detail[96];
	int r;

	/* validate everything before changing anything */
	if (kh_frame_has(req, "FI") && (r = kh_frame_yn(req, "FI", &fi)) != KH_OK)
		goto bad_fi;
	if (kh_frame_has(req, "PK") && (r = kh_frame_yn(req, "PK", &pk)) != KH_OK) {
		kh_ctx_detail(c, "PK");
		return r;
	}
	if (kh_frame_has(req, "LT") && (r = kh_frame_u64(req, "LT", 1, 100, &lt)) != KH_OK) {
		kh_ctx_detail(c, "LT (1-100)");
		return r;
	}
	if (kh_frame_has(req, "LS") && (r = kh_frame_u64(req, "LS", 1, 86400, &ls)) != KH_OK) {
		kh_ctx_detail(c, "LS (1-86400)");
		return r;
	}
	if ((r = kh_db_begin(hsm->db)) != KH_OK)
		return r;
	if (kh_frame_has(req, "FI")) {
		int64_t weak = 0;
		if (fi && ((r = weak_roles(hsm, &weak)) != KH_OK || weak > 0)) {
			if (r == KH_OK) {
				kh_ctx_detail(c, "%lld role(s) have Logins Required below 2", (long long)weak);
				r = KH_ERR_STATE;
			}
			goto fail;
		}
		if (fi && (r = fips_ports_ok(c)) != KH_OK)
			goto fail;
		if ((r = kh_db_setting_put_int(hsm->db, "fips", fi)) != KH_OK)
			goto fail;
	}
	if (kh_frame_has(req, "PK") && (r = kh_db_setting_put_int(hsm->db, "pkcs11", pk)) != KH_OK)
		goto fail;
	if (kh_frame_has(req, "LT") &&
	    (r = kh_db_setting_put_int(hsm->db, "lockout_threshold", (int64_t)lt)) != KH_OK)
		goto fail;
	if (kh_frame_has(req, "LS") &&
	    (r = kh_db_setting_put_int(hsm->db, "lockout_seconds", (int64_t)ls)) != KH_OK)
		goto fail;
	kh_session_actor(c->s, actor, sizeof(actor));
	snprintf(detail, sizeof(detail), "FI=%s PK=%s LT=%llu LS=%llu",
		 kh_frame_has(req, "FI") ? (fi ? "Y" : "N") : "-",
		 kh_frame_has(req, "PK") ? (pk ? "Y" : "N") : "-", (unsigned long long)lt,
		 (unsigned long long)ls);
	if ((r = kh_audit_append(hsm, actor, "settings.change", detail)) != KH_OK)
		goto fail;
	if ((r = kh_db_commit(hsm->db)) != KH_OK)
		return r;
	kh_hsm_reload_settings(hsm);
	return kh_msg_put(resp, "BB", "Y");
fail:
	kh_db_rollback(hsm->db);
	return r;
bad_fi:
	kh_ctx_detail(c, "FI");
	return r;
}

KH_ACT(kh_cmd_slft)
{
	struct kh_selftest_result st;
	char actor[300], text[96];
	int r = kh_hsm_selftest(c->hsm, &st);
	kh_session_actor(c->s, actor, sizeof(actor));
	snprintf(text, sizeof(text), "%s (%u tests)", r == KH_OK ? "passed" : "failed", st.run);
	KH_IGNORE(kh_audit_append(c->hsm, actor, "selftest.run", text));
	r = kh_msg_put(resp, "BB", "Y");
	if (r == KH_OK) r = kh_msg_put(resp, "ST", atomic_load(&c->hsm->error_state) ? "ERROR" : "OK");
	if (r == KH_OK) r = kh_msg_put_u64(resp, "TN", st.run);
	if (r == KH_OK && st.first_failed[0]) r = kh_msg_put(resp, "TF", st.first_failed);
	return r;
}

/*
 * Major keys in memory (secure heap, behind a rwlock), sealed at rest under
 * a key derived from the device key, and the AEAD that wraps everything
 * else under them. Must never write, log or return a major key's bytes.
 * Lock order (hsm.h): the database lock, then the store's rwlock; hsm->mu is
 * never held across either. The store only changes with both the database
 * lock and the write lock held, so holding either one is enough to read it.
 */
#include "hsm/majorkey.h"
#include "hsm/audit.h"
#include "hsm/db.h"
#include "hsm/keyobj.h"
#include "hsm/keystore.h"
#include "common/kh_log.h"
#include "common/kh_mem.h"

#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>

#define WRAP_INFO "keyhold keywrap v1"
#define ROWSEAL_INFO "keyhold major key seal v1"
#define ROW_AAD_MAGIC "keyhold major key row v1"
#define PREV_SUFFIX ".prev"            /* major_keys row of a rotated-out key: "PMK.prev" */
#define TLS_KEY_AAD "keyhold tls key " /* as tls.c seals its keys under the PMK */
#define NONCE_LEN 12
#define TAG_LEN 16

struct mk_slot {
	uint8_t *key; /* secure heap, len bytes; NULL when not loaded */
	size_t len;
	uint8_t *wrapkey; /* secure heap, 32 bytes: HKDF(key, WRAP_INFO), cached */
	struct kh_mk_info info;
};

struct kh_mkstore {
	pthread_rwlock_t lock;
	struct mk_slot k[KH_MK_COUNT];
	/* the key the last rotation replaced, opening cryptograms made under
	 * it until prev_until (HSM clock); its row's loaded_at holds that
	 * deadline */
	struct mk_slot prev[KH_MK_COUNT];
	int64_t prev_until[KH_MK_COUNT];
	_Atomic uint64_t gen[KH_MK_COUNT]; /* kh_mk_generation */
};

static const char *const mk_names[KH_MK_COUNT] = {"FTK", "PMK", "BEK"};

const char *kh_mk_name(enum kh_mk_id id)
{
	if ((int)id < 0 || id >= KH_MK_COUNT)
		return "?";
	return mk_names[id];
}

int kh_mk_id_parse(const char *name, enum kh_mk_id *out)
{
	for (int i = 0; i < KH_MK_COUNT; i++) {
		if (strcmp(name, mk_names[i]) == 0) {
			*out = (enum kh_mk_id)i;
			return KH_OK;
		}
	}
	return KH_ERR_BAD_FIELD;
}

static bool valid_len(size_t len)
{
	return len == 16 || len == 24 || len == 32;
}

/* ---- primitives ---------------------------------------------------------- */

/*
 * The check value is the classic one for AES keys: encrypt one all-zero
 * block with the key in ECB mode and show the first three bytes. It reveals
 * nothing usable about the key (24 bits of one AES output) and is what
 * custodians compare across devices and against their component sheets.
 */
int kh_mk_kcv(const uint8_t *key, size_t len, char kcv[static 7])
{
	static const uint8_t zero[16];
	uint8_t out[32];
	int outl = 0, r = KH_ERR_CRYPTO;
	const EVP_CIPHER *c = len == 16   ? EVP_aes_128_ecb()
	                      : len == 24 ? EVP_aes_192_ecb()
	                      : len == 32 ? EVP_aes_256_ecb()
	                                  : NULL;
	EVP_CIPHER_CTX *ctx = NULL;

	kcv[0] = '\0';
	if (c == NULL)
		return KH_ERR_BAD_FIELD;
	if ((ctx = EVP_CIPHER_CTX_new()) == NULL)
		goto out;
	if (EVP_EncryptInit_ex(ctx, c, NULL, key, NULL) != 1 ||
	    EVP_CIPHER_CTX_set_padding(ctx, 0) != 1 ||
	    EVP_EncryptUpdate(ctx, out, &outl, zero, sizeof(zero)) != 1 || outl != 16)
		goto out;
	kh_hex_encode(out, 3, kcv);
	r = KH_OK;
out:
	kh_wipe(out, sizeof(out));
	EVP_CIPHER_CTX_free(ctx);
	return r;
}

static int hkdf32(const uint8_t *ikm, size_t ikmlen, const char *info, uint8_t out[static 32])
{
	EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
	EVP_KDF_CTX *kctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
	OSSL_PARAM params[4];
	int r = KH_ERR_CRYPTO;

	if (kctx == NULL)
		goto out;
	params[0] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0);
	params[1] =
	    OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)(uintptr_t)ikm, ikmlen);
	params[2] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)(uintptr_t)info,
	                                              strlen(info));
	params[3] = OSSL_PARAM_construct_end();
	if (EVP_KDF_derive(kctx, out, 32, params) == 1)
		r = KH_OK;
out:
	EVP_KDF_CTX_free(kctx);
	EVP_KDF_free(kdf);
	return r;
}

int kh_mk_gcm_seal(const uint8_t key[static 32], const uint8_t nonce[static 12], const uint8_t *aad,
                   size_t aadlen, const uint8_t *pt, size_t ptlen, uint8_t *out)
{
	EVP_CIPHER_CTX *ctx = NULL;
	int n = 0, r = KH_ERR_CRYPTO;

	if (ptlen > INT_MAX - 32 || aadlen > INT_MAX)
		return KH_ERR_TOO_LARGE;
	if ((ctx = EVP_CIPHER_CTX_new()) == NULL)
		goto out;
	if (EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
	    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, NONCE_LEN, NULL) != 1 ||
	    EVP_EncryptInit_ex(ctx, NULL, NULL, key, nonce) != 1)
		goto out;
	if (aadlen && EVP_EncryptUpdate(ctx, NULL, &n, aad, (int)aadlen) != 1)
		goto out;
	if (ptlen && EVP_EncryptUpdate(ctx, out, &n, pt, (int)ptlen) != 1)
		goto out;
	if (EVP_EncryptFinal_ex(ctx, out + ptlen, &n) != 1 || n != 0)
		goto out;
	if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_LEN, out + ptlen) != 1)
		goto out;
	r = KH_OK;
out:
	EVP_CIPHER_CTX_free(ctx);
	return r;
}

int kh_mk_gcm_open(const uint8_t key[static 32], const uint8_t nonce[static 12], const uint8_t *aad,
                   size_t aadlen, const uint8_t *ct, size_t ctlen, uint8_t *out)
{
	EVP_CIPHER_CTX *ctx = NULL;
	uint8_t tag[TAG_LEN];
	int n = 0, r = KH_ERR_CRYPTO;
	size_t len;

	if (ctlen < TAG_LEN)
		return KH_ERR_CRYPTO;
	len = ctlen - TAG_LEN;
	if (len > INT_MAX || aadlen > INT_MAX)
		return KH_ERR_TOO_LARGE;
	memcpy(tag, ct + len, TAG_LEN);
	if ((ctx = EVP_CIPHER_CTX_new()) == NULL)
		goto out;
	if (EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
	    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, NONCE_LEN, NULL) != 1 ||
	    EVP_DecryptInit_ex(ctx, NULL, NULL, key, nonce) != 1)
		goto out;
	if (aadlen && EVP_DecryptUpdate(ctx, NULL, &n, aad, (int)aadlen) != 1)
		goto out;
	if (len && EVP_DecryptUpdate(ctx, out, &n, ct, (int)len) != 1)
		goto out;
	if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_LEN, tag) != 1)
		goto out;
	if (EVP_DecryptFinal_ex(ctx, out + len, &n) != 1) {
		kh_wipe(out, len); /* no unauthenticated plaintext survives */
		goto out;
	}
	r = KH_OK;
out:
	EVP_CIPHER_CTX_free(ctx);
	return r;
}

/* ---- the store ----------------------------------------------------------- */

static void slot_clear(struct mk_slot *s)
{
	kh_secure_free(s->key, s->len);
	kh_secure_free(s->wrapkey, 32);
	memset(s, 0, sizeof(*s));
}

/* Fill a fresh slot with a copy of key; *s is untouched on failure. */
static int slot_make(struct mk_slot *s, const uint8_t *key, size_t len)
{
	struct mk_slot n = {0};
	int r = KH_ERR_NOMEM;

	if ((n.key = kh_secure_alloc(len)) == NULL || (n.wrapkey = kh_secure_alloc(32)) == NULL)
		goto fail;
	memcpy(n.key, key, len);
	n.len = len;
	if ((r = hkdf32(key, len, WRAP_INFO, n.wrapkey)) != KH_OK)
		goto fail;
	if ((r = kh_mk_kcv(key, len, n.info.kcv)) != KH_OK)
		goto fail;
	n.info.loaded = true;
	snprintf(n.info.alg, sizeof(n.info.alg), "AES");
	n.info.bits = (int)(len * 8);
	*s = n;
	return KH_OK;
fail:
	slot_clear(&n);
	return r;
}

/* Associated data of a sealed row: binds the key to its name, algorithm,
 * length and check value, so no column can be edited or swapped. A
 * rotated-out key's row also binds its deadline (its loaded_at column), so
 * that its grace period cannot be stretched on disk. */
static size_t row_aad(uint8_t out[static 64], enum kh_mk_id id, bool prev, int64_t until,
                      const char *alg, int bits, const char *kcv)
{
	size_t n = 0, l;
	l = strlen(ROW_AAD_MAGIC);
	memcpy(out + n, ROW_AAD_MAGIC, l);
	n += l;
	out[n++] = 0;
	memcpy(out + n, mk_names[id], 3);
	n += 3;
	if (prev) {
		memcpy(out + n, PREV_SUFFIX, strlen(PREV_SUFFIX));
		n += strlen(PREV_SUFFIX);
	}
	out[n++] = 0;
	l = strnlen(alg, 7);
	memcpy(out + n, alg, l);
	n += l;
	out[n++] = 0;
	out[n++] = (uint8_t)((unsigned)bits >> 8);
	out[n++] = (uint8_t)bits;
	memcpy(out + n, kcv, 6);
	n += 6;
	if (prev) {
		for (int i = 7; i >= 0; i--)
			out[n++] = (uint8_t)((uint64_t)until >> (8 * i));
	}
	return n;
}

/* Seal key at rest: nonce || AES-256-GCM(HKDF(device key)) || tag. */
static int row_seal(struct kh_hsm *hsm, enum kh_mk_id id, bool prev, int64_t until,
                    const uint8_t *key, size_t len, const char *kcv, uint8_t *out /* len + 28 */)
{
	uint8_t aad[64];
	uint8_t *sk = kh_secure_alloc(32);
	size_t aadlen = row_aad(aad, id, prev, until, "AES", (int)(len * 8), kcv);
	int r = KH_ERR_NOMEM;

	if (sk == NULL)
		goto out;
	if ((r = hkdf32(hsm->device_key, 32, ROWSEAL_INFO, sk)) != KH_OK)
		goto out;
	if (RAND_bytes(out, NONCE_LEN) != 1) {
		r = KH_ERR_CRYPTO;
		goto out;
	}
	r = kh_mk_gcm_seal(sk, out, aad, aadlen, key, len, out + NONCE_LEN);
out:
	kh_secure_free(sk, 32);
	return r;
}

static int row_open(struct kh_hsm *hsm, enum kh_mk_id id, bool prev, int64_t until, const char *alg,
                    int bits, const char *kcv, const uint8_t *sealed, size_t slen,
                    uint8_t *key /* bits/8 */)
{
	uint8_t aad[64];
	uint8_t *sk = NULL;
	size_t len = (size_t)bits / 8;
	size_t aadlen;
	int r = KH_ERR_CRYPTO;

	if (slen != NONCE_LEN + len + TAG_LEN || strlen(kcv) != 6)
		return KH_ERR_CRYPTO;
	aadlen = row_aad(aad, id, prev, until, alg, bits, kcv);
	if ((sk = kh_secure_alloc(32)) == NULL)
		return KH_ERR_NOMEM;
	if ((r = hkdf32(hsm->device_key, 32, ROWSEAL_INFO, sk)) != KH_OK)
		goto out;
	r = kh_mk_gcm_open(sk, sealed, aad, aadlen, sealed + NONCE_LEN, slen - NONCE_LEN, key);
out:
	kh_secure_free(sk, 32);
	return r;
}

static struct kh_mkstore *store_new(void)
{
	struct kh_mkstore *st = calloc(1, sizeof(*st));
	if (st == NULL)
		return NULL;
	if (pthread_rwlock_init(&st->lock, NULL) != 0) {
		free(st);
		return NULL;
	}
	for (int i = 0; i < KH_MK_COUNT; i++)
		atomic_init(&st->gen[i], 1);
	return st;
}

void kh_mk_free(struct kh_hsm *hsm)
{
	struct kh_mkstore *st = hsm->mk;
	if (st == NULL)
		return;
	for (int i = 0; i < KH_MK_COUNT; i++) {
		slot_clear(&st->k[i]);
		slot_clear(&st->prev[i]);
	}
	pthread_rwlock_destroy(&st->lock);
	free(st);
	hsm->mk = NULL;
}

/* "PMK" or "PMK.prev" -> id and which slot. */
static int row_name_parse(const char *name, enum kh_mk_id *id, bool *prev)
{
	char base[4];
	size_t n = strlen(name);
	*prev = n == 3 + strlen(PREV_SUFFIX) && strcmp(name + 3, PREV_SUFFIX) == 0;
	if (n != 3 && !*prev)
		return KH_ERR_BAD_FIELD;
	memcpy(base, name, 3);
	base[3] = '\0';
	return kh_mk_id_parse(base, id);
}

/* Restore one sealed row into its slot (start-up, single-threaded). */
static int restore_row(struct kh_hsm *hsm, sqlite3_stmt *q)
{
	const char *name = (const char *)sqlite3_column_text(q, 0);
	const char *alg = (const char *)sqlite3_column_text(q, 1);
	int bits = sqlite3_column_int(q, 2);
	const char *kcv = (const char *)sqlite3_column_text(q, 3);
	const uint8_t *sealed = sqlite3_column_blob(q, 4);
	size_t slen = (size_t)sqlite3_column_bytes(q, 4);
	int64_t until = sqlite3_column_int64(q, 5);
	enum kh_mk_id id;
	bool prev = false;
	uint8_t *key = NULL;
	char got[7];
	int r = KH_ERR_CRYPTO;

	if (name == NULL || alg == NULL || kcv == NULL ||
	    row_name_parse(name, &id, &prev) != KH_OK || strcmp(alg, "AES") != 0 ||
	    !valid_len((size_t)bits / 8) || bits % 8 != 0) {
		log_warnx("major_keys table holds an invalid row: refusing to start");
		return KH_ERR_CRYPTO;
	}
	if (sqlite3_column_type(q, 4) == SQLITE_NULL) {
		log_info("major key %s was loaded in volatile mode: reload it", name);
		return KH_OK;
	}
	if (hsm->volatile_mk) {
		log_warnx("major key %s is sealed on disk but the device runs in volatile mode: "
		          "not loaded (erase or reload it)",
		          name);
		return KH_OK;
	}
	if ((key = kh_secure_alloc((size_t)bits / 8)) == NULL)
		return KH_ERR_NOMEM;
	if (row_open(hsm, id, prev, until, alg, bits, kcv, sealed, slen, key) != KH_OK) {
		log_warnx("major key %s: sealed row does not open under the device key "
		          "(tampered, or from another device)",
		          name);
		r = KH_ERR_CRYPTO;
		goto out;
	}
	if ((r = kh_mk_kcv(key, (size_t)bits / 8, got)) != KH_OK)
		goto out;
	if (!kh_ct_equal(got, kcv, 6)) {
		log_warnx("major key %s: check value does not match its sealed row", name);
		r = KH_ERR_CRYPTO;
		goto out;
	}
	if (prev) {
		if ((r = slot_make(&hsm->mk->prev[id], key, (size_t)bits / 8)) != KH_OK)
			goto out;
		hsm->mk->prev_until[id] = until;
		log_info("major key %s: KCV %s, replaced by a rotation, kept until %lld",
		         mk_names[id], got, (long long)until);
	} else {
		if ((r = slot_make(&hsm->mk->k[id], key, (size_t)bits / 8)) != KH_OK)
			goto out;
		log_info("major key %s restored, KCV %s", name, got);
	}
out:
	kh_secure_free(key, (size_t)bits / 8);
	return r;
}

int kh_mk_init(struct kh_hsm *hsm)
{
	sqlite3 *h = kh_db_sqlite(hsm->db);
	sqlite3_stmt *q = NULL;
	int r, rc;

	if ((hsm->mk = store_new()) == NULL)
		return KH_ERR_NOMEM;
	kh_db_lock(hsm->db);
	rc = sqlite3_prepare_v2(h, "SELECT name, alg, bits, kcv, sealed, loaded_at FROM major_keys",
	                        -1, &q, NULL);
	if (rc != SQLITE_OK) {
		r = kh_db_err(hsm->db, rc);
		goto out;
	}
	r = KH_OK;
	while (r == KH_OK && (rc = sqlite3_step(q)) == SQLITE_ROW)
		r = restore_row(hsm, q);
	if (r == KH_OK && rc != SQLITE_DONE)
		r = kh_db_err(hsm->db, rc);
	/* a rotated-out key only ever accompanies its successor */
	for (int i = 0; r == KH_OK && i < KH_MK_COUNT; i++)
		if (!hsm->mk->k[i].info.loaded)
			slot_clear(&hsm->mk->prev[i]);
out:
	sqlite3_finalize(q);
	kh_db_unlock(hsm->db);
	if (r != KH_OK) {
		kh_mk_free(hsm);
		return r;
	}
	for (int i = 0; i < KH_MK_COUNT; i++)
		kh_mk_prune(hsm, (enum kh_mk_id)i);
	return KH_OK;
}

/* Whether the rotated-out key of id still opens (read lock held). */
static bool prev_live(const struct kh_mkstore *st, enum kh_mk_id id, int64_t now)
{
	return st->prev[id].info.loaded && now < st->prev_until[id];
}

void kh_mk_info(struct kh_hsm *hsm, enum kh_mk_id id, struct kh_mk_info *out)
{
	int64_t now;
	memset(out, 0, sizeof(*out));
	if (hsm->mk == NULL || (int)id < 0 || id >= KH_MK_COUNT)
		return;
	now = (int64_t)kh_hsm_now(hsm);
	pthread_rwlock_rdlock(&hsm->mk->lock);
	*out = hsm->mk->k[id].info;
	if (prev_live(hsm->mk, id, now)) {
		memcpy(out->prev_kcv, hsm->mk->prev[id].info.kcv, 7);
		out->prev_until = hsm->mk->prev_until[id];
	}
	pthread_rwlock_unlock(&hsm->mk->lock);
}

uint64_t kh_mk_generation(struct kh_hsm *hsm, enum kh_mk_id id)
{
	if (hsm->mk == NULL || (int)id < 0 || id >= KH_MK_COUNT)
		return 1;
	return atomic_load(&hsm->mk->gen[id]);
}

static int stmt_run(struct kh_db *db, sqlite3_stmt *st)
{
	int rc = sqlite3_step(st);
	return rc == SQLITE_DONE ? KH_OK : kh_db_err(db, rc);
}

/* Insert or replace the row of id (prev: its rotated-out key's row, whose
 * loaded_at is the deadline), inside the caller's transaction. sealed is
 * NULL in volatile mode. */
static int row_write(struct kh_hsm *hsm, enum kh_mk_id id, bool prev, size_t len, const char *kcv,
                     const uint8_t *sealed, int64_t when)
{
	sqlite3 *h = kh_db_sqlite(hsm->db);
	sqlite3_stmt *st = NULL;
	char name[16];
	int r;

	snprintf(name, sizeof(name), "%s%s", mk_names[id], prev ? PREV_SUFFIX : "");
	if (sqlite3_prepare_v2(h,
	                       "INSERT INTO major_keys(name, alg, bits, kcv, sealed, loaded_at) "
	                       "VALUES(?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET "
	                       "alg=excluded.alg, bits=excluded.bits, kcv=excluded.kcv, "
	                       "sealed=excluded.sealed, loaded_at=excluded.loaded_at",
	                       -1, &st, NULL) != SQLITE_OK)
		return kh_db_err(hsm->db, sqlite3_errcode(h));
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, "AES", -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 3, (int)(len * 8));
	sqlite3_bind_text(st, 4, kcv, 6, SQLITE_STATIC);
	if (sealed == NULL)
		sqlite3_bind_null(st, 5);
	else
		sqlite3_bind_blob(st, 5, sealed, (int)(len + NONCE_LEN + TAG_LEN), SQLITE_STATIC);
	sqlite3_bind_int64(st, 6, when);
	r = stmt_run(hsm->db, st);
	sqlite3_finalize(st);
	return r;
}

/* Delete rows of id inside the caller's transaction: the rotated-out key's
 * only, or both. *changes (may be NULL) gets the number deleted. */
static int row_delete(struct kh_hsm *hsm, enum kh_mk_id id, bool current_too, int *changes)
{
	sqlite3 *h = kh_db_sqlite(hsm->db);
	sqlite3_stmt *st = NULL;
	char prev[16];
	int r;

	snprintf(prev, sizeof(prev), "%s%s", mk_names[id], PREV_SUFFIX);
	if (sqlite3_prepare_v2(h, "DELETE FROM major_keys WHERE name=? OR name=?", -1, &st, NULL) !=
	    SQLITE_OK)
		return kh_db_err(hsm->db, sqlite3_errcode(h));
	sqlite3_bind_text(st, 1, prev, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, current_too ? mk_names[id] : prev, -1, SQLITE_STATIC);
	r = stmt_run(hsm->db, st);
	if (r == KH_OK && changes)
		*changes = sqlite3_changes(h);
	sqlite3_finalize(st);
	return r;
}

int kh_mk_load(struct kh_hsm *hsm, enum kh_mk_id id, const uint8_t *key, size_t len,
               const char *actor, const char *event, const char *detail, char kcv_out[7])
{
	uint8_t sealed[KH_MK_MAX_LEN + NONCE_LEN + TAG_LEN];
	struct mk_slot fresh = {0};
	char kcv[7], text[200];
	bool in_tx = false, locked = false;
	int64_t now;
	int r;

	if (hsm->mk == NULL || (int)id < 0 || id >= KH_MK_COUNT)
		return KH_ERR_INTERNAL;
	now = (int64_t)kh_hsm_now(hsm); /* takes hsm->mu: before the database lock */
	if (!valid_len(len))
		return KH_ERR_BAD_FIELD;
	if ((r = kh_mk_kcv(key, len, kcv)) != KH_OK)
		return r;
	if (!hsm->volatile_mk && (r = row_seal(hsm, id, false, 0, key, len, kcv, sealed)) != KH_OK)
		return r;
	if ((r = slot_make(&fresh, key, len)) != KH_OK)
		return r;

	if ((r = kh_db_begin(hsm->db)) != KH_OK)
		goto out;
	in_tx = true;
	pthread_rwlock_wrlock(&hsm->mk->lock);
	locked = true;
	if (hsm->mk->k[id].info.loaded) {
		r = KH_ERR_EXISTS;
		goto out;
	}
	/* a rotated-out key's row left by a volatile run belongs to no key now */
	if ((r = row_delete(hsm, id, false, NULL)) != KH_OK ||
	    (r = row_write(hsm, id, false, len, kcv, hsm->volatile_mk ? NULL : sealed, now)) !=
	        KH_OK)
		goto out;
	snprintf(text, sizeof(text), "%s AES-%zu KCV %s %s%s", mk_names[id], len * 8, kcv,
	         detail ? detail : "", hsm->volatile_mk ? " (volatile)" : " (sealed)");
	if ((r = kh_audit_append(hsm, actor, event, text)) != KH_OK)
		goto out;
	in_tx = false;
	if ((r = kh_db_commit(hsm->db)) != KH_OK)
		goto out;
	hsm->mk->k[id] = fresh;
	memset(&fresh, 0, sizeof(fresh));
	if (kcv_out)
		memcpy(kcv_out, kcv, 7);
out:
	if (in_tx)
		kh_db_rollback(hsm->db);
	if (locked)
		pthread_rwlock_unlock(&hsm->mk->lock);
	slot_clear(&fresh);
	kh_wipe(sealed, sizeof(sealed));
	return r;
}

int kh_mk_erase(struct kh_hsm *hsm, enum kh_mk_id id, const char *actor)
{
	bool in_tx = false, locked = false, was_loaded;
	char text[96];
	int changes = 0, r;

	if (hsm->mk == NULL || (int)id < 0 || id >= KH_MK_COUNT)
		return KH_ERR_INTERNAL;
	if ((r = kh_db_begin(hsm->db)) != KH_OK)
		return r;
	in_tx = true;
	pthread_rwlock_wrlock(&hsm->mk->lock);
	locked = true;
	was_loaded = hsm->mk->k[id].info.loaded;
	if ((r = row_delete(hsm, id, true, &changes)) != KH_OK)
		goto out;
	if (changes == 0 && !was_loaded) {
		r = KH_ERR_NOT_FOUND;
		goto out;
	}
	snprintf(text, sizeof(text), "%s KCV %s%s%s", mk_names[id],
	         was_loaded ? hsm->mk->k[id].info.kcv : "(not loaded)",
	         hsm->mk->prev[id].info.loaded ? ", and the key it replaced, KCV " : "",
	         hsm->mk->prev[id].info.loaded ? hsm->mk->prev[id].info.kcv : "");
	if ((r = kh_audit_append(hsm, actor, "majorkey.erase", text)) != KH_OK)
		goto out;
	in_tx = false;
	if ((r = kh_db_commit(hsm->db)) != KH_OK)
		goto out;
	slot_clear(&hsm->mk->k[id]);
	slot_clear(&hsm->mk->prev[id]);
out:
	if (in_tx)
		kh_db_rollback(hsm->db);
	if (locked)
		pthread_rwlock_unlock(&hsm->mk->lock);
	/* keys parsed from rows or cryptograms under it go too (lock order:
	 * the cache's lock is a leaf, taken with nothing else held) */
	if (r == KH_OK)
		kh_keycache_clear(hsm);
	return r;
}

/* ---- rotation ------------------------------------------------------------ */

struct rewrap {
	const struct mk_slot *from, *to;
};

/* Open under the old key's wrapping key, seal under the new one's. The
 * slots are read without the store's lock: the caller holds the database
 * lock, without which the store does not change. */
static int rewrap_one(void *arg, const uint8_t *aad, size_t aadlen, const uint8_t *in, size_t inlen,
                      uint8_t *out)
{
	const struct rewrap *rw = arg;
	uint8_t *pt;
	size_t ptlen;
	int r;

	if (inlen <= KH_MK_SEAL_OVERHEAD)
		return KH_ERR_CRYPTO;
	ptlen = inlen - KH_MK_SEAL_OVERHEAD;
	if ((pt = kh_secure_alloc(ptlen)) == NULL)
		return KH_ERR_NOMEM;
	r = kh_mk_gcm_open(rw->from->wrapkey, in, aad, aadlen, in + NONCE_LEN, inlen - NONCE_LEN,
	                   pt);
	if (r == KH_OK && RAND_bytes(out, NONCE_LEN) != 1)
		r = KH_ERR_CRYPTO;
	if (r == KH_OK)
		r = kh_mk_gcm_seal(rw->to->wrapkey, out, aad, aadlen, pt, ptlen, out + NONCE_LEN);
	kh_secure_free(pt, ptlen);
	return r;
}

/* The PMK also seals the TLS private keys (tls.c, kh_tls_key_put): the same
 * AEAD with "keyhold tls key <name>" as associated data. */
static int rewrap_tls(struct kh_hsm *hsm, const struct rewrap *rw, struct kh_mk_rotation *out)
{
	static const char *const names[] = {"ca_key", "server_key", "pending_key"};
	sqlite3 *h = kh_db_sqlite(hsm->db);
	sqlite3_stmt *q = NULL, *u = NULL;
	uint8_t *blob = NULL;
	char aad[64];
	int r = KH_OK;

	if (sqlite3_prepare_v2(h, "SELECT value FROM tls WHERE name=?", -1, &q, NULL) !=
	        SQLITE_OK ||
	    sqlite3_prepare_v2(h, "UPDATE tls SET value=? WHERE name=?", -1, &u, NULL) !=
	        SQLITE_OK) {
		r = kh_db_err(hsm->db, sqlite3_errcode(h));
		goto out;
	}
	for (size_t i = 0; r == KH_OK && i < sizeof(names) / sizeof(names[0]); i++) {
		size_t n;
		sqlite3_reset(q);
		sqlite3_bind_text(q, 1, names[i], -1, SQLITE_STATIC);
		if ((r = sqlite3_step(q)) == SQLITE_DONE) {
			r = KH_OK;
			continue;
		}
		if (r != SQLITE_ROW) {
			r = kh_db_err(hsm->db, r);
			break;
		}
		n = (size_t)sqlite3_column_bytes(q, 0);
		free(blob);
		if ((blob = malloc(n ? n : 1)) == NULL) {
			r = KH_ERR_NOMEM;
			break;
		}
		snprintf(aad, sizeof(aad), TLS_KEY_AAD "%s", names[i]);
		r = rewrap_one((void *)(uintptr_t)rw, (const uint8_t *)aad, strlen(aad),
		               sqlite3_column_blob(q, 0), n, blob);
		if (r != KH_OK) {
			snprintf(out->bad, sizeof(out->bad), "TLS key %s", names[i]);
			break;
		}
		sqlite3_reset(u);
		sqlite3_bind_blob(u, 1, blob, (int)n, SQLITE_STATIC);
		sqlite3_bind_text(u, 2, names[i], -1, SQLITE_STATIC);
		r = stmt_run(hsm->db, u);
	}
out:
	sqlite3_finalize(q);
	sqlite3_finalize(u);
	free(blob);
	return r;
}

int kh_mk_rotate(struct kh_hsm *hsm, enum kh_mk_id id, const uint8_t *key, size_t len,
                 uint32_t grace, const char *actor, const char *detail, struct kh_mk_rotation *out)
{
	uint8_t sealed[KH_MK_MAX_LEN + NONCE_LEN + TAG_LEN];
	uint8_t psealed[KH_MK_MAX_LEN + NONCE_LEN + TAG_LEN];
	struct mk_slot fresh = {0}, *old;
	struct rewrap rw;
	uint32_t bad_slot = 0;
	char text[240];
	bool in_tx = false, locked = false, keep;
	int64_t now;
	int r;

	memset(out, 0, sizeof(*out));
	if (hsm->mk == NULL || (int)id < 0 || id >= KH_MK_COUNT)
		return KH_ERR_INTERNAL;
	if (id != KH_MK_FTK && id != KH_MK_PMK)
		return KH_ERR_UNSUPPORTED;
	if (!valid_len(len) || grace > KH_MK_GRACE_MAX)
		return KH_ERR_BAD_FIELD;
	now = (int64_t)kh_hsm_now(hsm);
	keep = grace > 0;
	if ((r = kh_mk_kcv(key, len, out->kcv)) != KH_OK)
		return r;
	if (!hsm->volatile_mk &&
	    (r = row_seal(hsm, id, false, 0, key, len, out->kcv, sealed)) != KH_OK)
		return r;
	if ((r = slot_make(&fresh, key, len)) != KH_OK)
		return r;

	/* from here to the commit nothing else changes the store or the key
	 * table, and readers go on with the old key and the old rows */
	if ((r = kh_db_begin(hsm->db)) != KH_OK)
		goto out;
	in_tx = true;
	old = &hsm->mk->k[id];
	if (!old->info.loaded) {
		r = KH_ERR_NOT_FOUND;
		goto out;
	}
	memcpy(out->old_kcv, old->info.kcv, 7);
	if (old->len == len && kh_ct_equal(old->key, key, len)) {
		r = KH_ERR_BAD_KCV;
		goto out;
	}
	rw.from = old;
	rw.to = &fresh;
	if ((r = kh_keystore_rewrap(hsm, id, rewrap_one, &rw, &out->rows, &bad_slot)) != KH_OK) {
		snprintf(out->bad, sizeof(out->bad), "slot %u", bad_slot);
		goto out;
	}
	if (id == KH_MK_PMK && (r = rewrap_tls(hsm, &rw, out)) != KH_OK)
		goto out;
	if ((r = row_write(hsm, id, false, len, out->kcv, hsm->volatile_mk ? NULL : sealed, now)) !=
	    KH_OK)
		goto out;
	if (keep)
		out->until = now + (int64_t)grace;
	if (keep && !hsm->volatile_mk) {
		if ((r = row_seal(hsm, id, true, out->until, old->key, old->len, old->info.kcv,
		                  psealed)) != KH_OK ||
		    (r = row_write(hsm, id, true, old->len, old->info.kcv, psealed, out->until)) !=
		        KH_OK)
			goto out;
	} else if ((r = row_delete(hsm, id, false, NULL)) != KH_OK) {
		goto out;
	}
	snprintf(text, sizeof(text),
	         "%s AES-%zu KCV %s replaces KCV %s, %llu keys re-wrapped, old key kept %us %s%s",
	         mk_names[id], len * 8, out->kcv, out->old_kcv, (unsigned long long)out->rows,
	         (unsigned)grace, detail ? detail : "",
	         hsm->volatile_mk ? " (volatile)" : " (sealed)");
	if ((r = kh_audit_append(hsm, actor, "majorkey.rotate", text)) != KH_OK)
		goto out;
	/* readers wait from before the commit until the switch: none opens a
	 * re-wrapped row with the old key */
	pthread_rwlock_wrlock(&hsm->mk->lock);
	locked = true;
	in_tx = false;
	if ((r = kh_db_commit(hsm->db)) != KH_OK)
		goto out;
	slot_clear(&hsm->mk->prev[id]);
	if (keep) {
		hsm->mk->prev[id] = *old;
		hsm->mk->prev_until[id] = out->until;
	} else {
		slot_clear(old);
	}
	hsm->mk->k[id] = fresh;
	memset(&fresh, 0, sizeof(fresh));
	atomic_fetch_add(&hsm->mk->gen[id], 1);
out:
	if (in_tx)
		kh_db_rollback(hsm->db);
	if (locked)
		pthread_rwlock_unlock(&hsm->mk->lock);
	slot_clear(&fresh);
	kh_wipe(sealed, sizeof(sealed));
	kh_wipe(psealed, sizeof(psealed));
	return r;
}

void kh_mk_prune(struct kh_hsm *hsm, enum kh_mk_id id)
{
	struct kh_mkstore *st = hsm->mk;
	char text[96];
	int64_t now;
	bool due;
	int r;

	if (st == NULL || (int)id < 0 || id >= KH_MK_COUNT)
		return;
	now = (int64_t)kh_hsm_now(hsm);
	pthread_rwlock_rdlock(&st->lock);
	due = st->prev[id].info.loaded && !prev_live(st, id, now);
	pthread_rwlock_unlock(&st->lock);
	if (!due || kh_db_begin(hsm->db) != KH_OK)
		return;
	/* under the database lock the slot cannot change any more */
	if (!st->prev[id].info.loaded) {
		kh_db_rollback(hsm->db);
		return;
	}
	snprintf(text, sizeof(text), "%s KCV %s: grace period over, erased", mk_names[id],
	         st->prev[id].info.kcv);
	if ((r = row_delete(hsm, id, false, NULL)) != KH_OK ||
	    (r = kh_audit_append(hsm, "-", "majorkey.retire", text)) != KH_OK) {
		kh_db_rollback(hsm->db);
		log_warnx("major key %s: cannot erase the rotated-out key: %s", mk_names[id],
		          kh_strerror(r));
		return;
	}
	pthread_rwlock_wrlock(&st->lock);
	if (kh_db_commit(hsm->db) == KH_OK)
		slot_clear(&st->prev[id]);
	pthread_rwlock_unlock(&st->lock);
}

/* ---- AEAD under a major key ---------------------------------------------- */

/* The AEAD with one slot's key (the caller holds the read lock). */
static int slot_aead(const struct mk_slot *s, const char *info, bool seal, const uint8_t *aad,
                     size_t aadlen, const uint8_t *in, size_t inlen, uint8_t *out, size_t *outlen)
{
	uint8_t *dk = NULL;
	const uint8_t *key;
	int r;

	if (!seal && inlen < KH_MK_SEAL_OVERHEAD)
		return KH_ERR_CRYPTO;
	if (info == NULL) {
		key = s->wrapkey;
	} else {
		if ((dk = kh_secure_alloc(32)) == NULL)
			return KH_ERR_NOMEM;
		if ((r = hkdf32(s->key, s->len, info, dk)) != KH_OK)
			goto out;
		key = dk;
	}
	if (seal) {
		if (RAND_bytes(out, NONCE_LEN) != 1) {
			r = KH_ERR_CRYPTO;
			goto out;
		}
		r = kh_mk_gcm_seal(key, out, aad, aadlen, in, inlen, out + NONCE_LEN);
		if (r == KH_OK)
			*outlen = inlen + KH_MK_SEAL_OVERHEAD;
	} else {
		r = kh_mk_gcm_open(key, in, aad, aadlen, in + NONCE_LEN, inlen - NONCE_LEN, out);
		if (r == KH_OK)
			*outlen = inlen - KH_MK_SEAL_OVERHEAD;
	}
out:
	kh_secure_free(dk, 32);
	return r;
}

static int aead(struct kh_hsm *hsm, enum kh_mk_id id, const char *info, bool seal,
                const uint8_t *aad, size_t aadlen, const uint8_t *in, size_t inlen, uint8_t *out,
                size_t *outlen)
{
	int r;

	if (hsm->mk == NULL || (int)id < 0 || id >= KH_MK_COUNT)
		return KH_ERR_MAJOR_KEY_NOT_LOADED;
	pthread_rwlock_rdlock(&hsm->mk->lock);
	if (!hsm->mk->k[id].info.loaded)
		r = KH_ERR_MAJOR_KEY_NOT_LOADED;
	else
		r = slot_aead(&hsm->mk->k[id], info, seal, aad, aadlen, in, inlen, out, outlen);
	pthread_rwlock_unlock(&hsm->mk->lock);
	return r;
}

/* The slot whose key has check value kcv and still opens: the current key,
 * or the rotated-out one within its grace period; NULL otherwise (read
 * lock held; the clock, a leaf lock, is read only for the rotated-out
 * key). *expired tells whether kcv names one whose grace period is over. */
static const struct mk_slot *slot_by_kcv(struct kh_hsm *hsm, enum kh_mk_id id, const char *kcv,
                                         bool *expired)
{
	const struct kh_mkstore *st = hsm->mk;
	const struct mk_slot *cur = &st->k[id], *prev = &st->prev[id];
	*expired = false;
	if (strlen(kcv) != 6)
		return NULL;
	if (cur->info.loaded && kh_ct_equal(cur->info.kcv, kcv, 6))
		return cur;
	if (prev->info.loaded && kh_ct_equal(prev->info.kcv, kcv, 6)) {
		if (prev_live(st, id, (int64_t)kh_hsm_now(hsm)))
			return prev;
		*expired = true;
	}
	return NULL;
}

int kh_mk_seal_kcv(struct kh_hsm *hsm, enum kh_mk_id id, const char *kcv, const uint8_t *aad,
                   size_t aadlen, const uint8_t *pt, size_t ptlen, uint8_t *out, size_t *outlen)
{
	const struct mk_slot *s;
	int r;

	if (hsm->mk == NULL || (int)id < 0 || id >= KH_MK_COUNT)
		return KH_ERR_MAJOR_KEY_NOT_LOADED;
	pthread_rwlock_rdlock(&hsm->mk->lock);
	s = &hsm->mk->k[id];
	if (!s->info.loaded)
		r = KH_ERR_MAJOR_KEY_NOT_LOADED;
	else if (strlen(kcv) != 6 || !kh_ct_equal(s->info.kcv, kcv, 6))
		r = KH_ERR_BUSY;
	else
		r = slot_aead(s, NULL, true, aad, aadlen, pt, ptlen, out, outlen);
	pthread_rwlock_unlock(&hsm->mk->lock);
	return r;
}

int kh_mk_open_kcv(struct kh_hsm *hsm, enum kh_mk_id id, const char *kcv, const uint8_t *aad,
                   size_t aadlen, const uint8_t *ct, size_t ctlen, uint8_t *out, size_t *outlen)
{
	const struct mk_slot *s;
	bool expired = false;
	int r;

	if (hsm->mk == NULL || (int)id < 0 || id >= KH_MK_COUNT)
		return KH_ERR_MAJOR_KEY_NOT_LOADED;
	pthread_rwlock_rdlock(&hsm->mk->lock);
	s = slot_by_kcv(hsm, id, kcv, &expired);
	if (s != NULL)
		r = slot_aead(s, NULL, false, aad, aadlen, ct, ctlen, out, outlen);
	else if (!hsm->mk->k[id].info.loaded)
		r = KH_ERR_MAJOR_KEY_NOT_LOADED;
	else
		r = KH_ERR_CRYPTO; /* made under another (or a retired) major key */
	pthread_rwlock_unlock(&hsm->mk->lock);
	if (expired)
		kh_mk_prune(hsm, id);
	return r;
}

bool kh_mk_kcv_usable(struct kh_hsm *hsm, enum kh_mk_id id, const char *kcv)
{
	bool ok, expired = false;

	if (hsm->mk == NULL || (int)id < 0 || id >= KH_MK_COUNT)
		return false;
	pthread_rwlock_rdlock(&hsm->mk->lock);
	ok = slot_by_kcv(hsm, id, kcv, &expired) != NULL;
	pthread_rwlock_unlock(&hsm->mk->lock);
	return ok;
}

int kh_mk_seal(struct kh_hsm *hsm, enum kh_mk_id id, const uint8_t *aad, size_t aadlen,
               const uint8_t *pt, size_t ptlen, uint8_t *out, size_t *outlen)
{
	return aead(hsm, id, NULL, true, aad, aadlen, pt, ptlen, out, outlen);
}

int kh_mk_open(struct kh_hsm *hsm, enum kh_mk_id id, const uint8_t *aad, size_t aadlen,
               const uint8_t *ct, size_t ctlen, uint8_t *out, size_t *outlen)
{
	return aead(hsm, id, NULL, false, aad, aadlen, ct, ctlen, out, outlen);
}

int kh_mk_seal_ex(struct kh_hsm *hsm, enum kh_mk_id id, const char *info, const uint8_t *aad,
                  size_t aadlen, const uint8_t *pt, size_t ptlen, uint8_t *out, size_t *outlen)
{
	if (info == NULL || strcmp(info, WRAP_INFO) == 0)
		return KH_ERR_INTERNAL; /* the keywrap key has its own entry points */
	return aead(hsm, id, info, true, aad, aadlen, pt, ptlen, out, outlen);
}

int kh_mk_open_ex(struct kh_hsm *hsm, enum kh_mk_id id, const char *info, const uint8_t *aad,
                  size_t aadlen, const uint8_t *ct, size_t ctlen, uint8_t *out, size_t *outlen)
{
	if (info == NULL || strcmp(info, WRAP_INFO) == 0)
		return KH_ERR_INTERNAL;
	return aead(hsm, id, info, false, aad, aadlen, ct, ctlen, out, outlen);
}

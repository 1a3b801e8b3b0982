/*
 * The key table's stored form. Every key is wrapped under its major key
 * (FTK or PMK) with kh_mk_seal, and the associated data binds slot, key
 * identifier, major key, class, type, length and the canonical bound
 * attributes: editing any of those columns makes the key unusable, never
 * weaker. Label, CKA_ID and other descriptive attributes sit beside it.
 * Nothing here returns key material except kh_keystore_unwrap (secure heap).
 */
#ifndef KH_KEYSTORE_H
#define KH_KEYSTORE_H

#include "hsm/hsm.h"
#include "hsm/majorkey.h"

#define KH_KEY_ID_LEN 16
#define KH_KS_NAME_MAX 16 /* class and ktype, NUL included */
#define KH_KS_ATTRS_MAX 4096
#define KH_KS_MATERIAL_MAX 16384
#define KH_KS_DESC_MAX 65536 /* label, ckaid, extra each */
/* The longest key the table holds is a generic secret or data object of
 * 16320 bytes: 130560 bits. */
#define KH_KS_BITS_MAX (8u * KH_KS_MATERIAL_MAX)

/* Flags for kh_keystore_put. */
#define KH_KS_REPLACE 0x1 /* overwrite whatever is in the slot */
#define KH_KS_NEW_ID 0x2  /* make a fresh random key_id (written back to row) */
#define KH_KS_QUIET 0x4   /* no audit entry: the caller audits the whole operation */

/* One row of table keys. Buffers returned by kh_keystore_get/foreach are
 * owned by the row (kh_keystore_row_free); for put the caller's buffers are
 * only read. A zero-length descriptive field is stored as NULL. */
struct kh_key_row {
	uint32_t slot;
	uint8_t key_id[KH_KEY_ID_LEN];
	enum kh_mk_id major;        /* KH_MK_FTK or KH_MK_PMK */
	char cls[KH_KS_NAME_MAX];   /* e.g. "secret", "private", "public" */
	char ktype[KH_KS_NAME_MAX]; /* e.g. "AES", "RSA", "EC" */
	uint32_t bits;
	uint8_t *attrs; /* canonical bound attributes */
	size_t attrs_len;
	uint8_t *wrapped; /* nonce || ciphertext || tag (get only) */
	size_t wrapped_len;
	uint8_t *label;
	size_t label_len;
	uint8_t *ckaid;
	size_t ckaid_len;
	uint8_t *extra;
	size_t extra_len;
	int64_t created; /* 0: put sets it to the HSM clock (callers
	                  * inside a transaction must set it: reading
	                  * the clock takes hsm->mu) */
	uint64_t mk_gen; /* kh_mk_generation of major when get/foreach read
	                  * the row; 0 for a row the caller built */
};

struct kh_key_summary {
	uint32_t slot;
	uint8_t key_id[KH_KEY_ID_LEN];
	enum kh_mk_id major;
	char cls[KH_KS_NAME_MAX];
	char ktype[KH_KS_NAME_MAX];
	uint32_t bits;
};

void kh_keystore_row_free(struct kh_key_row *row);

/* Wrap material under row->major and store the row (one transaction, with
 * an audit entry unless KH_KS_QUIET). KH_ERR_EXISTS if the slot is taken
 * (without KH_KS_REPLACE) or the key_id is already used by another slot;
 * KH_ERR_MAJOR_KEY_NOT_LOADED if the major key is missing. */
KH_MUST_CHECK int kh_keystore_put(struct kh_hsm *hsm, struct kh_key_row *row,
                                  const uint8_t *material, size_t mlen, unsigned flags,
                                  const char *actor);
/* A span of slots, both ends included. */
struct kh_ks_span {
	uint32_t lo, hi;
};
/* As kh_keystore_put, into the lowest free slot of the spans that is not
 * one of the navoid slots in avoid (slots the same request names for
 * another key), written to row->slot. The choice and the write are one
 * transaction under the database lock, so concurrent callers never pick
 * the same slot. KH_ERR_SLOT_OUT_OF_RANGE when no slot is free. */
KH_MUST_CHECK int kh_keystore_put_free(struct kh_hsm *hsm, struct kh_key_row *row,
                                       const struct kh_ks_span *spans, size_t nspans,
                                       const uint32_t *avoid, size_t navoid,
                                       const uint8_t *material, size_t mlen, unsigned flags,
                                       const char *actor);
/* Re-wrap the key in was->slot with the bound attributes and length of now
 * (attrs, bits) in one transaction, keeping its slot, identifier, class,
 * type and major key (which now must repeat). The row must still be the
 * key the caller decided on (was: key_id, attrs, bits; KH_ERR_NOT_FOUND
 * for another key or none, KH_ERR_BUSY when its attributes changed
 * meanwhile) and must open (KH_ERR_CRYPTO): its own material is wrapped
 * again, or material when not NULL (a data object's new value). Audited as
 * key.attributes with detail; the cache forgets the slot. */
KH_MUST_CHECK int kh_keystore_rewrite(struct kh_hsm *hsm, const struct kh_key_row *was,
                                      const struct kh_key_row *now, const uint8_t *material,
                                      size_t mlen, const char *actor, const char *detail);
/* Store a row whose wrapped form was made elsewhere (a group member with
 * the same major key): it is verified to open here before it is stored. */
KH_MUST_CHECK int kh_keystore_put_wrapped(struct kh_hsm *hsm, const struct kh_key_row *row,
                                          unsigned flags, const char *actor);
/* KH_ERR_NOT_FOUND if the slot is empty. */
KH_MUST_CHECK int kh_keystore_delete(struct kh_hsm *hsm, uint32_t slot, const char *actor);
KH_MUST_CHECK int kh_keystore_get(struct kh_hsm *hsm, uint32_t slot, struct kh_key_row *out);
/* Replace descriptive fields; a NULL pointer leaves that field unchanged. */
KH_MUST_CHECK int kh_keystore_set_desc(struct kh_hsm *hsm, uint32_t slot, const uint8_t *label,
                                       size_t label_len, const uint8_t *ckaid, size_t ckaid_len,
                                       const uint8_t *extra, size_t extra_len, const char *actor);
/* Unwrap a row's material into a fresh secure-heap buffer
 * (kh_secure_free(*material, *mlen)). KH_ERR_CRYPTO if any bound column
 * was altered; KH_ERR_MAJOR_KEY_NOT_LOADED if its major key is missing.
 * A row read before a rotation of its major key and opened after it is
 * read again (same bound columns) and opened in its re-wrapped form. */
KH_MUST_CHECK int kh_keystore_unwrap(struct kh_hsm *hsm, const struct kh_key_row *row,
                                     uint8_t **material, size_t *mlen);

/* Number of keys, optionally only those in [lo, hi]. */
KH_MUST_CHECK int kh_keystore_count(struct kh_hsm *hsm, uint32_t lo, uint32_t hi, uint64_t *count);
/* Up to max summaries of slots >= from, in slot order; *more tells whether
 * further rows exist. */
KH_MUST_CHECK int kh_keystore_list(struct kh_hsm *hsm, uint32_t from, struct kh_key_summary *out,
                                   size_t max, size_t *n, bool *more);
/* Call fn for every row in slot order (under the database lock: fn must
 * not start a transaction). A non-OK return from fn stops and is returned,
 * except KH_KS_STOP, which stops the walk without an error (KH_OK). */
#define KH_KS_STOP 1
KH_MUST_CHECK int kh_keystore_foreach(struct kh_hsm *hsm,
                                      int (*fn)(void *arg, const struct kh_key_row *row),
                                      void *arg);
/* As kh_keystore_foreach, over the rows with lo <= slot <= hi only. */
KH_MUST_CHECK int kh_keystore_walk(struct kh_hsm *hsm, uint32_t lo, uint32_t hi,
                                   int (*fn)(void *arg, const struct kh_key_row *row), void *arg);

/* Replication (KTIM): a delete names the key it removes by slot and
 * identifier, so a replayed delete never removes another key. */
struct kh_ks_del {
	uint32_t slot;
	uint8_t key_id[KH_KEY_ID_LEN];
};
struct kh_ks_repl_result {
	uint32_t added;     /* rows written to a free slot */
	uint32_t updated;   /* same key identifier, other columns: written */
	uint32_t replaced;  /* another key's slot, with replace: written */
	uint32_t unchanged; /* the slot already held exactly this row */
	uint32_t deleted;   /* deletes that removed their key */
	uint32_t absent;    /* deletes whose slot was empty or held another key */
	uint32_t bad_slot;  /* on failure: the slot of the row or delete refused */
};
/* Apply rows made elsewhere (a group member with the same major keys) and
 * deletes, in ONE transaction under the database lock; nothing changes
 * unless all of them apply. Deletes run first, in order, then rows. Every
 * row must open here under its major key with its associated data
 * (KH_ERR_CRYPTO; KH_ERR_MAJOR_KEY_NOT_LOADED); its slot must be free,
 * hold the same key identifier (a byte-identical row is left alone, any
 * other is an update, refused with KH_ERR_KEY_USAGE when it would undo a
 * one-way attribute change: see kh_key_row_change_allowed), or hold
 * another key, which only replace overwrites (KH_ERR_EXISTS otherwise, and
 * when the identifier sits in another slot). Each change is audited
 * (key.replicate, key.delete); the cache forgets every slot touched. */
KH_MUST_CHECK int kh_keystore_replicate(struct kh_hsm *hsm, const struct kh_key_row *rows,
                                        size_t nrows, const struct kh_ks_del *dels, size_t ndels,
                                        bool replace, const char *actor,
                                        struct kh_ks_repl_result *res);

/* Re-wrap every row under major (a major-key rotation) inside the
 * transaction the caller holds: fn gets a row's associated data and wrapped
 * form and writes the new wrapped form, of the same length, to out. Only
 * the wrapped column changes. A row fn refuses (or that cannot be read)
 * stops the walk with that result, and *bad_slot names it. *count gets the
 * number of rows re-wrapped. */
typedef int (*kh_keystore_rewrap_fn)(void *arg, const uint8_t *aad, size_t aadlen,
                                     const uint8_t *in, size_t inlen, uint8_t *out);
KH_MUST_CHECK int kh_keystore_rewrap(struct kh_hsm *hsm, enum kh_mk_id major,
                                     kh_keystore_rewrap_fn fn, void *arg, uint64_t *count,
                                     uint32_t *bad_slot);

#endif

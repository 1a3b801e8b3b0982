/*
 * Major keys (FTK, PMK, BEK): the in-memory store, sealing across restarts,
 * and the only functions that use a major key's bytes. Major keys never
 * leave this module in clear: callers get check values, sealed blobs and
 * AEAD results, never key bytes or keys derived from them.
 */
#ifndef KH_MAJORKEY_H
#define KH_MAJORKEY_H

#include "hsm/hsm.h"

enum kh_mk_id { KH_MK_FTK = 0, KH_MK_PMK = 1, KH_MK_BEK = 2, KH_MK_COUNT };

#define KH_MK_MAX_LEN 32 /* bytes of the longest major key (AES-256) */

#define KH_MK_GRACE_MAX (30 * 86400) /* seconds a rotated-out key may keep opening */

struct kh_mk_info {
	bool loaded;
	char alg[8]; /* "AES" */
	int bits;    /* 128, 192, 256 */
	char kcv[7]; /* six hex digits */
	/* the key a rotation replaced, while it still opens cryptograms:
	 * prev_kcv is "" when there is none (or its grace period is over) */
	char prev_kcv[7];
	int64_t prev_until; /* HSM clock (kh_hsm_now) when it stops */
};

/* Start-up: restore sealed major keys (unless volatile). A sealed row that
 * does not open under the device key, or whose key does not match its
 * stored check value, makes this fail (KH_ERR_CRYPTO): a tampered store is
 * refused, not silently skipped. */
KH_MUST_CHECK int kh_mk_init(struct kh_hsm *hsm);
void kh_mk_free(struct kh_hsm *hsm);
void kh_mk_ceremony_free(struct kh_mk_ceremony *c);
void kh_mk_info(struct kh_hsm *hsm, enum kh_mk_id id, struct kh_mk_info *out);
const char *kh_mk_name(enum kh_mk_id id);
/* "FTK"/"PMK"/"BEK" (exact case) -> id. */
KH_MUST_CHECK int kh_mk_id_parse(const char *name, enum kh_mk_id *out);

/* Check value of an AES key (16, 24 or 32 bytes): the first three bytes of
 * the AES-ECB encryption of an all-zero block, as six uppercase hex digits.
 * Used for major keys and for their components alike. */
KH_MUST_CHECK int kh_mk_kcv(const uint8_t *key, size_t len, char kcv[static 7]);

/* Install a major key assembled by a ceremony (key: len = bits/8 bytes,
 * caller keeps and wipes it). Unless the device is volatile the key is
 * sealed into its major_keys row; the row and one audit entry (event,
 * detail) are written in one transaction. KH_ERR_EXISTS if a key of that
 * name is already loaded. kcv_out (may be NULL) gets the key's check value. */
KH_MUST_CHECK int kh_mk_load(struct kh_hsm *hsm, enum kh_mk_id id, const uint8_t *key, size_t len,
                             const char *actor, const char *event, const char *detail,
                             char kcv_out[7]);
/* Erase a major key (and the key it replaced, if still kept) from memory
 * and its rows from the database (with an audit entry, one transaction).
 * KH_ERR_NOT_FOUND if neither existed. */
KH_MUST_CHECK int kh_mk_erase(struct kh_hsm *hsm, enum kh_mk_id id, const char *actor);

/* Rotation: replace the loaded FTK or PMK by key and re-wrap, in one
 * transaction, every key-table row under it (for the PMK also the sealed
 * TLS keys). Readers are held off only while the commit and the switch in
 * memory happen, so that none sees a re-wrapped row with the old key
 * current or the reverse; key-table reads that raced the switch retry
 * (kh_keystore_unwrap). The replaced key is kept for grace seconds (0 to
 * KH_MK_GRACE_MAX) to open cryptograms made under it (kh_mk_open_kcv), and
 * nothing else; a rotation during a grace period drops the older key.
 * A row that does not open under the old key stops the rotation
 * (KH_ERR_CRYPTO, out->bad names it: "slot 12", "TLS key server_key"):
 * nothing changes. KH_ERR_UNSUPPORTED for the BEK, KH_ERR_NOT_FOUND if id
 * is not loaded, KH_ERR_BAD_KCV if key is the current key. On success out
 * gets the new and the replaced check values, the count of re-wrapped
 * keys and the end of the grace period (HSM clock; 0 if none). */
struct kh_mk_rotation {
	char kcv[7];
	char old_kcv[7];
	uint64_t rows;
	int64_t until;
	char bad[48];
};
KH_MUST_CHECK int kh_mk_rotate(struct kh_hsm *hsm, enum kh_mk_id id, const uint8_t *key, size_t len,
                               uint32_t grace, const char *actor, const char *detail,
                               struct kh_mk_rotation *out);
/* Drop the replaced key of id once its grace period is over (memory, row,
 * audit entry). Past the deadline it is refused anyway; this only wipes it.
 * Called lazily: by MKST, at start-up and when a cryptogram meets it. */
void kh_mk_prune(struct kh_hsm *hsm, enum kh_mk_id id);
/* Rotations of id since start-up: a row read under one generation and
 * opened under another may have been re-wrapped in between. Never 0. */
uint64_t kh_mk_generation(struct kh_hsm *hsm, enum kh_mk_id id);

/* AEAD under a major key (AES-256-GCM under HKDF-SHA256(major key, info
 * "keyhold keywrap v1")). The derivation is deterministic, so any HSM that
 * holds the same major key opens what another sealed. Output is
 * nonce(12) || ciphertext || tag(16); out must hold ptlen +
 * KH_MK_SEAL_OVERHEAD bytes. KH_ERR_MAJOR_KEY_NOT_LOADED when the key is
 * absent, KH_ERR_CRYPTO when the tag does not verify. */
#define KH_MK_SEAL_OVERHEAD 28
KH_MUST_CHECK int kh_mk_seal(struct kh_hsm *hsm, enum kh_mk_id id, const uint8_t *aad,
                             size_t aadlen, const uint8_t *pt, size_t ptlen, uint8_t *out,
                             size_t *outlen);
KH_MUST_CHECK int kh_mk_open(struct kh_hsm *hsm, enum kh_mk_id id, const uint8_t *aad,
                             size_t aadlen, const uint8_t *ct, size_t ctlen, uint8_t *out,
                             size_t *outlen);
/* For blobs that name their major key's check value in the associated
 * data (cryptograms). seal_kcv seals only if id's current check value is
 * kcv (six hex digits, as kh_mk_info gives it), else KH_ERR_BUSY (a
 * rotation came between: read the check value again). open_kcv opens
 * under the key of check value kcv: the current one, or the one a
 * rotation replaced while its grace period lasts; any other is
 * KH_ERR_CRYPTO. kcv_usable says whether open_kcv would try a key (for
 * blobs opened earlier and kept parsed). */
KH_MUST_CHECK int kh_mk_seal_kcv(struct kh_hsm *hsm, enum kh_mk_id id, const char *kcv,
                                 const uint8_t *aad, size_t aadlen, const uint8_t *pt, size_t ptlen,
                                 uint8_t *out, size_t *outlen);
KH_MUST_CHECK int kh_mk_open_kcv(struct kh_hsm *hsm, enum kh_mk_id id, const char *kcv,
                                 const uint8_t *aad, size_t aadlen, const uint8_t *ct, size_t ctlen,
                                 uint8_t *out, size_t *outlen);
bool kh_mk_kcv_usable(struct kh_hsm *hsm, enum kh_mk_id id, const char *kcv);
/* The same with another HKDF info string, for other purposes that need
 * their own key under a major key (backups use "keyhold backup v1"). */
KH_MUST_CHECK int kh_mk_seal_ex(struct kh_hsm *hsm, enum kh_mk_id id, const char *info,
                                const uint8_t *aad, size_t aadlen, const uint8_t *pt, size_t ptlen,
                                uint8_t *out, size_t *outlen);
KH_MUST_CHECK int kh_mk_open_ex(struct kh_hsm *hsm, enum kh_mk_id id, const char *info,
                                const uint8_t *aad, size_t aadlen, const uint8_t *ct, size_t ctlen,
                                uint8_t *out, size_t *outlen);

/* AES-256-GCM with an explicit 32-byte key, 12-byte nonce and 16-byte tag
 * appended to the ciphertext (out: ptlen + 16). Shared by the sealing above,
 * fragment files and backups. open returns KH_ERR_CRYPTO on a bad tag and
 * then leaves no plaintext in out. */
KH_MUST_CHECK int kh_mk_gcm_seal(const uint8_t key[static 32], const uint8_t nonce[static 12],
                                 const uint8_t *aad, size_t aadlen, const uint8_t *pt, size_t ptlen,
                                 uint8_t *out);
KH_MUST_CHECK int kh_mk_gcm_open(const uint8_t key[static 32], const uint8_t nonce[static 12],
                                 const uint8_t *aad, size_t aadlen, const uint8_t *ct, size_t ctlen,
                                 uint8_t *out);

#endif

/*
 * The crypto service's key objects: what a key is (class, type, size,
 * usage, flags), how it is encoded in the key table and in cryptograms, the
 * cache of ready-to-use keys, and how a request names a key. Handlers get
 * resolved, checked keys from the dispatcher (struct kh_op) and never see a
 * wrapped form; this module is the only one that opens key-table rows and
 * cryptograms.
 *
 * Encodings of the clear material (inside the AEAD, never stored clear):
 *   secret keys   raw key bytes
 *   private keys  PKCS#8 PrivateKeyInfo DER
 *   public keys   SubjectPublicKeyInfo DER
 *   certificates  X.509 DER
 *   data objects  the byte 'D' followed by the value (0-16320 bytes): the
 *                 AEAD of a row and a backup never hold an empty plaintext
 */
#ifndef KH_KEYOBJ_H
#define KH_KEYOBJ_H

#include <openssl/evp.h>

#include "hsm/hsm.h"
#include "hsm/majorkey.h"
#include "hsm/keystore.h"

struct kh_frame;
struct kh_buf;

/* KH_KC_DATA: a PKCS#11 data object (CKO_DATA), type GENERIC, stored in a
 * slot only; no usage, never a key for any command, no cryptogram. */
enum kh_kclass { KH_KC_SECRET = 1, KH_KC_PRIVATE, KH_KC_PUBLIC, KH_KC_CERT, KH_KC_DATA };
#define KH_DATA_MAX_LEN 16320 /* bytes of a data object's value */
enum kh_ktype {
	KH_KT_AES = 1,
	KH_KT_GENERIC, /* generic secret: HMAC keys, derived secrets, unwrapped blobs */
	KH_KT_RSA,
	KH_KT_EC, /* NIST P-256, P-384, P-521 (bits tell which) */
	KH_KT_ED25519,
	KH_KT_X25519,
	KH_KT_X509,
};
#define KH_KT_BIT(t) (1u << (t))

/* Usage (wire letters in CZ, in this order): E encrypt, D decrypt, G sign
 * (and MAC generate), V verify, W wrap, U unwrap, X derive. */
enum {
	KH_U_ENCRYPT = 1 << 0,
	KH_U_DECRYPT = 1 << 1,
	KH_U_SIGN = 1 << 2,
	KH_U_VERIFY = 1 << 3,
	KH_U_WRAP = 1 << 4,
	KH_U_UNWRAP = 1 << 5,
	KH_U_DERIVE = 1 << 6,
	KH_U_ALL = 0x7f
};
/* Flags (wire letters in KF). X, S, A, M may be asked for; L, N, Y are set
 * by the HSM only (PKCS#11 CKA_LOCAL, NEVER_EXTRACTABLE, ALWAYS_SENSITIVE). */
enum {
	KH_KF_EXPORTABLE = 1 << 0, /* X: may leave the HSM wrapped by GPKW/GPWK */
	KH_KF_SENSITIVE = 1 << 1,  /* S */
	KH_KF_AUTHORIZED = 1 << 2, /* A: use needs a logged-in identity and keys.authorized */
	KH_KF_MODIFIABLE = 1 << 3, /* M */
	KH_KF_LOCAL = 1 << 4,      /* L: generated on the HSM */
	KH_KF_NEVER_EXPORTABLE = 1 << 5, /* N */
	KH_KF_ALWAYS_SENSITIVE = 1 << 6, /* Y */
	KH_KF_REQUESTABLE = KH_KF_EXPORTABLE | KH_KF_SENSITIVE | KH_KF_AUTHORIZED | KH_KF_MODIFIABLE,
	KH_KF_ALL = 0x7f,
	KH_KF_DATA = KH_KF_AUTHORIZED | KH_KF_MODIFIABLE /* what a data object may carry */
};

/* What a key is. Everything here is bound into the AEAD of its stored form
 * and of its cryptograms. */
struct kh_keyattr {
	enum kh_kclass cls;
	enum kh_ktype type;
	uint32_t bits;  /* AES/generic: key bits; RSA: modulus; EC: 256/384/521; Ed/X25519: 255 */
	uint16_t usage; /* KH_U_* */
	uint16_t flags; /* KH_KF_* */
	enum kh_mk_id major;
};

/* Per-key scratch of the signing code (cmd_sign.c): a context set up once
 * for one digest and padding, copied for each signature, which spares
 * OpenSSL's algorithm lookups on every call. It caches; it never changes
 * what the key is, so it may change behind a const key. */
struct kh_sigcache {
	pthread_mutex_t mu;
	EVP_PKEY_CTX *ctx; /* NULL until the first signature */
	const EVP_MD *md;
	int pad;
};

/* A ready-to-use key. Immutable once made; shared by reference (the cache
 * holds one). Secret bytes live on the secure heap. */
struct kh_key {
	_Atomic unsigned refs;
	struct kh_keyattr a;
	uint8_t key_id[KH_KEY_ID_LEN];
	bool has_id;   /* key_id is set (a new key gets one when stored or wrapped) */
	bool in_table; /* true: slot holds it; false: a cryptogram or clear public key */
	uint32_t slot;
	uint8_t *secret; /* KH_KC_SECRET: raw bytes (secure heap) */
	size_t secret_len;
	EVP_PKEY *pkey;  /* private and public keys; certificates: their public key */
	uint8_t *der;    /* KH_KC_CERT: the certificate; KH_KC_PUBLIC: SPKI; KH_KC_DATA: the
	                  * value, der_len bytes, possibly 0 (plain heap) */
	size_t der_len;
	struct kh_sigcache *sig;
};

struct kh_key *kh_key_ref(struct kh_key *k);
void kh_key_unref(struct kh_key *k); /* NULL ok */

/* Names used in the key table's class/ktype columns and on the wire
 * ("secret", "private", "public", "cert", "data"; "AES", "GENERIC", "RSA", "EC",
 * "ED25519", "X25519", "X509"). */
const char *kh_kclass_name(enum kh_kclass c);
const char *kh_ktype_name(enum kh_ktype t);
KH_MUST_CHECK int kh_kclass_parse(const char *s, enum kh_kclass *out);
KH_MUST_CHECK int kh_ktype_parse(const char *s, enum kh_ktype *out);
/* Usage / flag letters <-> bits. parse refuses unknown or repeated letters. */
KH_MUST_CHECK int kh_usage_parse(const char *s, size_t n, uint16_t *out);
void kh_usage_str(uint16_t usage, char out[static 8]);
KH_MUST_CHECK int kh_flags_parse(const char *s, size_t n, uint16_t *out);
void kh_flags_str(uint16_t flags, char out[static 8]);
bool kh_ktype_symmetric(enum kh_ktype t);

/* Make key objects from clear material. These validate the material
 * against the attributes (AES length, RSA/EC parameters, curve, FIPS
 * limits through kh_key_policy) and return KH_ERR_BAD_FIELD /
 * KH_ERR_UNSUPPORTED / KH_ERR_FIPS with c->s->detail set when c is not
 * NULL. from_pkey takes over the caller's reference on success. */
KH_MUST_CHECK int kh_key_from_secret(struct kh_ctx *c, const struct kh_keyattr *a,
                                     const uint8_t *bytes, size_t len, struct kh_key **out);
KH_MUST_CHECK int kh_key_from_pkey(struct kh_ctx *c, const struct kh_keyattr *a, EVP_PKEY *pk,
                                   struct kh_key **out);
/* A data object (a->cls KH_KC_DATA, type GENERIC) holding the len bytes
 * value (0 to KH_DATA_MAX_LEN); bits are 8 * len, usage none. */
KH_MUST_CHECK int kh_key_from_data(struct kh_ctx *c, const struct kh_keyattr *a,
                                   const uint8_t *value, size_t len, struct kh_key **out);
/* The same key with other bound attributes a (class, type, bits and major
 * key must be k's): usage and flags change, identifier kept. */
KH_MUST_CHECK int kh_key_with_attrs(const struct kh_key *k, const struct kh_keyattr *a,
                                    struct kh_key **out);
/* Parse DER (PKCS#8 private, PKCS#1 RSAPrivateKey, SPKI public, X.509
 * certificate for KH_KC_CERT) into a key; a->type and a->bits are filled in
 * from the material when a->type is 0, otherwise must match it. */
KH_MUST_CHECK int kh_key_from_der(struct kh_ctx *c, struct kh_keyattr *a, const uint8_t *der,
                                  size_t len, struct kh_key **out);
/* The clear encoding of a key (see top of file) in a secure-heap buffer
 * (kh_secure_free(*out, *len)). */
KH_MUST_CHECK int kh_key_material(const struct kh_key *k, uint8_t **out, size_t *len);
/* The public key of a private/public/cert key as SPKI DER (malloc'd). */
KH_MUST_CHECK int kh_key_spki(const struct kh_key *k, uint8_t **out, size_t *len);
/* Check value: AES: first 3 bytes of AES-ECB(key, 0^128); generic secret:
 * first 3 bytes of SHA-1(value) (PKCS#11 3.0); six hex digits. */
KH_MUST_CHECK int kh_key_kcv(const struct kh_key *k, char out[static 7]);

/* Flags of a new key from the requested ones: a key generated on the HSM
 * (local) gets L, and N when not exportable, Y when sensitive. */
uint16_t kh_key_new_flags(uint16_t requested, bool local);
/* The usage a public key gets by default from its private key's:
 * G -> V, D -> E, U -> W, X -> X. */
uint16_t kh_usage_public_of(uint16_t private_usage);
/* Type of the key in a cryptogram field, read from its header without
 * opening it (for destination range kinds; the header is authenticated
 * when the cryptogram is opened). KH_ERR_BAD_FIELD if unreadable. */
KH_MUST_CHECK int kh_req_cg_type(struct kh_ctx *c, const struct kh_frame *req, const char *tag,
                                 enum kh_ktype *out);

/* The usage letters a key of this class and type may carry: what the
 * algorithm can do with that half of a pair (RSA private G D U, public V E
 * W; EC G or V, and X; Ed25519 G or V; X25519 X), any for secret keys,
 * none for data objects. kh_key_usage_allowed also knows a certificate's
 * (its public key's). The flags a key may carry (KF letters X S A M): no
 * S for public keys and certificates, only A M for data objects. */
uint16_t kh_usage_allowed(enum kh_kclass cls, enum kh_ktype type);
uint16_t kh_key_usage_allowed(const struct kh_key *k);
uint16_t kh_flags_allowed(enum kh_kclass cls);

/* A change of a key's bound attributes (GPKS CZ, KF: PKCS#11
 * C_SetAttributeValue), as k's attributes after it in *out: CZ the new
 * usage (only when k has M; letters the type allows), KF the new flags, in
 * the directions PKCS#11 allows (S may be added, X and M removed, A stays;
 * L, N, Y may be given and are ignored: the HSM keeps its own). A forbidden
 * change is KH_ERR_KEY_USAGE, letters the key cannot carry KH_ERR_BAD_FIELD
 * (detail set). *changed tells whether anything differs. */
KH_MUST_CHECK int kh_key_attrs_change(struct kh_ctx *c, const struct kh_frame *req,
                                      const struct kh_key *k, struct kh_keyattr *out,
                                      bool *changed);
/* Re-wrap the key-table key old (loaded from its slot) as nk: nk's bound
 * attributes, and for a data object with new_value its value, under the
 * same slot and identifier, in one transaction; the row must still hold
 * old and open (KH_ERR_CRYPTO otherwise). The cache forgets the slot. */
KH_MUST_CHECK int kh_key_update(struct kh_ctx *c, const struct kh_key *old,
                                const struct kh_key *nk, bool new_value);
/* What GPKR and GPKS say of a key beyond the key table's columns: CZ, KF
 * (letters, may be empty), FS (PMK or FTK), and by class RD (private and
 * public keys: SPKI DER), CE and RD (certificates: the DER and its public
 * key), AE (secret keys: the check value), DV (data objects: the value). */
KH_MUST_CHECK int kh_key_put_attrs(struct kh_buf *resp, const struct kh_key *k);

/* The usage a new key gets when the request does not say (CZ): AES
 * encrypt/decrypt, generic secrets sign/verify (MAC), X25519 derive, other
 * private keys sign, other public keys verify. */
uint16_t kh_key_default_usage(enum kh_kclass cls, enum kh_ktype type);
/* CT: 4/5/6 AES-128/192/256, 7 generic secret of LN bytes (1-16320; dflt_len
 * when LN is absent, 0 meaning "the caller decides"). */
#define KH_GENERIC_MAX_LEN 16320 /* the longest HKDF-SHA512 output */
KH_MUST_CHECK int kh_req_ct(struct kh_ctx *c, const struct kh_frame *req, size_t dflt_len,
                            enum kh_ktype *type, size_t *len);
/* AE: a secret key's check value, into a response. */
KH_MUST_CHECK int kh_msg_put_kcv(struct kh_buf *resp, const struct kh_key *k);

/* An EC key given with explicit curve parameters. OpenSSL maps them to the
 * named curve they resemble and drops what differs (a wrong cofactor, for
 * one), so such keys are refused wherever a key comes from outside. */
bool kh_pkey_explicit_curve(EVP_PKEY *pk);
/* Our type and size of an OpenSSL key (RSA, EC on P-256/384/521, Ed25519,
 * X25519); KH_ERR_UNSUPPORTED for anything else. */
KH_MUST_CHECK int kh_pkey_kind(EVP_PKEY *pk, enum kh_ktype *type, uint32_t *bits);

/* FIPS policy for a key about to be made or used (KH_ERR_FIPS, detail set;
 * no limit outside FIPS mode or with c NULL). use is what the request does
 * with the key: its KH_U_* usage, or KH_FIPS_USE_MAKE for a key being made,
 * imported or unwrapped and for any request that names no usage. Refused:
 * Ed25519 and X25519 (not approved) for anything; RSA under 1024 bits for
 * anything; RSA 1024-2047 bits for anything but KH_U_VERIFY alone (SP
 * 800-131A legacy use: verifying existing signatures); curves under P-256
 * (none is supported anyway). */
#define KH_FIPS_RSA_MIN 2048
#define KH_FIPS_RSA_LEGACY_MIN 1024
#define KH_FIPS_USE_MAKE 0
KH_MUST_CHECK int kh_key_policy(struct kh_ctx *c, const struct kh_keyattr *a, uint16_t use);
bool kh_hsm_fips(struct kh_hsm *hsm);

/* Store a new key in a slot (fresh random key id, KH_ERR_EXISTS if the slot
 * is taken unless replace). Sets k->key_id, in_table and slot. desc may
 * carry label/CKA_ID/extra from the request (LB, KI, EX tags) or be NULL.
 * slot KH_SLOT_AUTO: the lowest free slot of the role's ranges that fit
 * the key (kh_role_auto_spans), chosen and written in one transaction;
 * SLOT_OUT_OF_RANGE when none is free. */
#define KH_SLOT_AUTO UINT32_MAX
struct kh_key_desc {
	const uint8_t *label, *ckaid, *extra;
	size_t label_len, ckaid_len, extra_len;
};
KH_MUST_CHECK int kh_key_store(struct kh_ctx *c, struct kh_key *k, uint32_t slot, bool replace,
                               const struct kh_key_desc *desc);
/* Delete a slot (KH_ERR_NOT_FOUND if empty); the cache forgets it. */
KH_MUST_CHECK int kh_key_delete(struct kh_ctx *c, uint32_t slot);

/* Cryptograms: the key wrapped under its major key with every attribute and
 * the key id bound (layout in docs/PROTOCOL.md). kh_key_cryptogram gives a
 * malloc'd blob; for a key without an id yet one is made. */
KH_MUST_CHECK int kh_key_cryptogram(struct kh_hsm *hsm, struct kh_key *k, uint8_t **out,
                                    size_t *len);
KH_MUST_CHECK int kh_key_from_cryptogram(struct kh_hsm *hsm, const uint8_t *cg, size_t len,
                                         struct kh_key **out);
/* Load the key in a slot (through the cache). KH_ERR_NOT_FOUND if empty,
 * KH_ERR_CRYPTO if its stored form does not open (tampered row). */
KH_MUST_CHECK int kh_key_load_slot(struct kh_hsm *hsm, uint32_t slot, struct kh_key **out);

/* Emit a key a command made: stored in the slot named by slot_tag when the
 * request has that tag (with LB/KI/EX descriptive tags, RP=Y to replace),
 * else returned as a cryptogram under cg_tag. Always adds id_tag (the key
 * id, hex). The dispatcher has already checked the slot (kh_op.dest). A
 * slot_tag of `*` stores the key in the lowest free slot of the role's
 * ranges for its kind, never one the request names in another
 * destination tag, and adds slot_tag with the slot chosen. */
KH_MUST_CHECK int kh_key_emit(struct kh_ctx *c, const struct kh_frame *req, struct kh_key *k,
                              const char *slot_tag, const char *id_tag, const char *cg_tag,
                              struct kh_buf *resp);

/* May the key-table row was become now (same key identifier: a change
 * replicated from another member)? False when now would undo a one-way
 * change of the bound attributes: add X or M, remove S, change A, or
 * change the usage of a key that was not modifiable; and when either row's
 * attributes cannot be read. */
struct kh_key_row;
bool kh_key_row_change_allowed(const struct kh_key_row *was, const struct kh_key_row *now);

/* The key cache. Bounded; entries are dropped on any change to their slot
 * (kh_keystore calls kh_keycache_forget) and all at once on restore or
 * major-key change (kh_keycache_clear). */
void kh_keycache_init(struct kh_hsm *hsm);
void kh_keycache_free(struct kh_hsm *hsm);
void kh_keycache_forget(struct kh_hsm *hsm, uint32_t slot);
void kh_keycache_clear(struct kh_hsm *hsm);

/* ---- what a request does with keys: filled by a command's plan ---- */

/* Range kinds: a symmetric key (AES, generic) sits in an S or M range, any
 * other key in an A or M range, a data object in any. */
enum kh_slot_kind { KH_SK_ASYMMETRIC, KH_SK_SYMMETRIC, KH_SK_ANY };
static inline enum kh_slot_kind kh_slot_kind_of(bool symmetric)
{
	return symmetric ? KH_SK_SYMMETRIC : KH_SK_ASYMMETRIC;
}

/* Where a key may come from and what it must allow. */
#define KH_KR_REQUIRED 0x01    /* missing key -> MISSING_FIELD */
#define KH_KR_EXPORTABLE 0x02  /* must carry KH_KF_EXPORTABLE */
#define KH_KR_CLEAR_PUB 0x04   /* may be a clear SPKI in pub_tag */
#define KH_KR_CLEAR_PKI 0x08   /* ...and using it needs keys.import_pki */
#define KH_KR_OBJECT 0x10      /* any object will do, data objects too (GPKR, GPKS):
                                * without it a data object is KEY_USAGE */

struct kh_keyref {
	const char *slot_tag; /* e.g. "SL" */
	const char *id_tag;   /* e.g. "KD": must match the slot's key id when given */
	const char *cg_tag;   /* e.g. "CG" */
	const char *pub_tag;  /* e.g. "PU" (with KH_KR_CLEAR_PUB) */
	unsigned flags;       /* KH_KR_* */
	uint16_t usage;       /* KH_U_* all required */
	uint32_t classes;     /* bit set (1u << enum kh_kclass); 0 = any */
	uint32_t types;       /* KH_KT_BIT set; 0 = any */
};

/* A slot a command will write a new key into: a number, or `*` for the
 * lowest free slot of the role's ranges of the kind (chosen when the key
 * is stored; kh_op_resolve only checks the role has such a range). */
struct kh_dest {
	const char *slot_tag;   /* e.g. "SL", "PS", "DS" */
	enum kh_slot_kind kind; /* checked against the range kind (S, A, M) */
};

#define KH_OP_MAX_KEYS 2
#define KH_OP_MAX_DEST 2
struct kh_op {
	struct kh_keyref ref[KH_OP_MAX_KEYS];
	size_t nref;
	struct kh_dest dest[KH_OP_MAX_DEST];
	size_t ndest;
	uint64_t perms;            /* permissions this request needs beyond the command's */
	const char *fips_refusal;  /* non-NULL: refused in FIPS mode, detail text */
	uint16_t new_flags;        /* flags asked for a new key (A needs keys.authorized) */
	/* filled in by the dispatcher before the handler runs */
	struct kh_key *key[KH_OP_MAX_KEYS]; /* NULL for an optional key not given */
};

/* A command's plan: read the request's mode fields (no key access) and say
 * what the request needs. Returns KH_OK or an error (detail set). */
typedef int (*kh_plan_fn)(struct kh_ctx *c, const struct kh_frame *req, struct kh_op *op);

/* Run by the dispatcher after the role checks: permissions and FIPS of the
 * plan, destination slots (range and kind), then each key: named by slot
 * (range, kind, id), cryptogram or clear public key; class, type, usage,
 * exportability, Authorized, FIPS key policy. On success op->key[] are
 * set; kh_op_release drops them. */
KH_MUST_CHECK int kh_op_resolve(struct kh_ctx *c, const struct kh_frame *req, struct kh_op *op);
void kh_op_release(struct kh_op *op);

enum kh_slot_kind kh_key_slot_kind(const struct kh_keyattr *a);
/* Range kind check: may a key of this kind sit in this slot for the role? */
bool kh_role_slot_fits(const struct kh_role *r, uint32_t slot, enum kh_slot_kind kind);
/* The role's ranges a new key of this kind may go to (for `*`), at most
 * KH_MAX_RANGES; keys.all_slots adds none (it widens listing, not where a
 * key may be written). */
size_t kh_role_auto_spans(const struct kh_role *r, enum kh_slot_kind kind,
                          struct kh_ks_span out[static KH_MAX_RANGES]);
/* A destination slot tag of the request (present): a number in the role's
 * ranges and of the kind (SLOT_OUT_OF_RANGE otherwise), or `*` when the
 * role has a range of the kind (SLOT_OUT_OF_RANGE, "no ... range"), then
 * *slot is KH_SLOT_AUTO. */
KH_MUST_CHECK int kh_dest_check(struct kh_ctx *c, const struct kh_frame *req, const char *tag,
                                enum kh_slot_kind kind, uint32_t *slot);

/* Request readers shared by the key commands. */
/* FS: "PMK" / "6" -> PMK, "FTK" -> FTK; default PMK. */
KH_MUST_CHECK int kh_req_major(struct kh_ctx *c, const struct kh_frame *req, enum kh_mk_id *out);
/* CZ (default dflt) and KF (default 0: requestable letters only). */
KH_MUST_CHECK int kh_req_usage(struct kh_ctx *c, const struct kh_frame *req, const char *tag,
                               uint16_t dflt, uint16_t *out);
KH_MUST_CHECK int kh_req_flags(struct kh_ctx *c, const struct kh_frame *req, uint16_t *out);
/* RSA-OAEP parameters: HA (default SHA-256), MG (default HA), OL label
 * (hex, at most KH_OAEP_LABEL_MAX bytes). Free with kh_oaep_free. */
#define KH_OAEP_LABEL_MAX 1024
struct kh_oaep {
	const EVP_MD *md, *mgf;
	uint8_t *label; /* malloc'd, NULL when empty */
	size_t label_len;
};
KH_MUST_CHECK int kh_req_oaep(struct kh_ctx *c, const struct kh_frame *req, struct kh_oaep *o);
void kh_oaep_free(struct kh_oaep *o);
/* OAEP padding with o's parameters on a context already initialised for
 * encryption or decryption. */
KH_MUST_CHECK int kh_oaep_setup(EVP_PKEY_CTX *px, const struct kh_oaep *o);

/* HA and friends: "SHA-1", "SHA-224", "SHA-256", "SHA-384", "SHA-512",
 * "SHA3-224", "SHA3-256", "SHA3-384", "SHA3-512" -> EVP_MD (static). */
KH_MUST_CHECK int kh_req_md(struct kh_ctx *c, const struct kh_frame *req, const char *tag,
                            const char *dflt, const EVP_MD **out);

#endif

/*
 * The module's mechanisms, shared by p11_mech.c and p11_crypto.c only: one
 * table says what each CKM_* is (its family, hence the Excrypt command that
 * runs it; its hash; its key sizes and flags); an operation's parsed
 * parameter and what each operation sends to the HSM; and a small request
 * builder around p11_call. Nothing here ever holds key material in clear.
 */
#ifndef P11_MECH_H
#define P11_MECH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "pkcs11/p11.h"

/* 3.0 names p11-kit 0.24 lacks. */
#ifndef CKF_MESSAGE_ENCRYPT
#define CKF_MESSAGE_ENCRYPT 0x00000002UL
#define CKF_MESSAGE_DECRYPT 0x00000004UL
#define CKF_MESSAGE_SIGN 0x00000008UL
#define CKF_MESSAGE_VERIFY 0x00000010UL
#endif
#ifndef CKG_NO_GENERATE
#define CKG_NO_GENERATE 0UL
#define CKG_GENERATE 1UL
#define CKG_GENERATE_COUNTER 2UL
#define CKG_GENERATE_RANDOM 3UL
#define CKG_GENERATE_COUNTER_XOR 4UL
#endif
/* CK_GCM_MESSAGE_PARAMS (3.0), laid out as the specification's. */
struct p11_gcm_msg_params {
	CK_BYTE_PTR pIv;
	CK_ULONG ulIvLen;
	CK_ULONG ulIvFixedBits;
	CK_ULONG ivGenerator;
	CK_BYTE_PTR pTag;
	CK_ULONG ulTagBits;
};

/* Families: one per way of running a mechanism on the HSM. */
enum p11_mfam {
	P11_MF_GEN_RSA,
	P11_MF_GEN_EC,
	P11_MF_GEN_ED,
	P11_MF_GEN_X,
	P11_MF_GEN_AES,
	P11_MF_GEN_GENERIC,
	P11_MF_DIGEST,     /* GHSH; multi-part locally */
	P11_MF_RSA_PKCS,   /* GPSR (sign, verify, recover), GPSE / GPSD PKCS1 */
	P11_MF_RSA_X509,   /* GPSR PD NONE */
	P11_MF_RSA_PKCS_H, /* hash here, ASYS / ASYV HS, PD PKCS1 */
	P11_MF_RSA_PSS,    /* ASYS / ASYV HS, PD PSS (hash here when the mechanism names one) */
	P11_MF_RSA_OAEP,   /* GPSE / GPSD PD OAEP, GPKW / GPKU AL OAEP */
	P11_MF_ECDSA,      /* ASYS / ASYV HS, SF P1363 (hash here when named) */
	P11_MF_EDDSA,      /* ASYS / ASYV DT */
	P11_MF_ECDH,       /* GPDK */
	P11_MF_AES_ECB,
	P11_MF_AES_CBC,
	P11_MF_AES_CBC_PAD,
	P11_MF_AES_CTR,
	P11_MF_AES_GCM,  /* GPSE / GPSD */
	P11_MF_AES_CMAC, /* GPMC */
	P11_MF_AES_KW,
	P11_MF_AES_KWP, /* GPKW / GPKU */
	P11_MF_HMAC,    /* HMAC */
};

struct p11_hash {
	CK_MECHANISM_TYPE ckm;    /* CKM_SHA256 */
	CK_RSA_PKCS_MGF_TYPE mgf; /* CKG_MGF1_SHA256 */
	const char *hsm;          /* "SHA-256": the HSM's HA / MG value */
	const char *evp;          /* "SHA256": OpenSSL's name */
	size_t len;
};

struct p11_mech {
	CK_MECHANISM_TYPE type;
	enum p11_mfam fam;
	const struct p11_hash *hash; /* digest, hash-then-sign, HMAC; NULL otherwise */
	bool general;                /* *_GENERAL MACs: the length is the parameter */
};

/* What one slot's HSM allows, read once with PRMD. */
struct p11_caps {
	bool fips;        /* FI */
	bool pkcs1_dec;   /* P1: PKCS#1 v1.5 decryption and raw private RSA possible */
	CK_ULONG min_rsa; /* MR */
};

const struct p11_mech *p11_mech_find(CK_MECHANISM_TYPE t);
const struct p11_hash *p11_hash_by_ckm(CK_MECHANISM_TYPE t);
const struct p11_hash *p11_hash_by_mgf(CK_RSA_PKCS_MGF_TYPE g);
/* The hash an ECDSA signature over a raw digest of n bytes is labelled with. */
const struct p11_hash *p11_hash_by_len(size_t n);
/* The slot's capabilities (PRMD once per slot; conservative values while
 * the HSM cannot be asked). */
void p11_mech_caps(struct p11_slot *sl, struct p11_caps *c);
/* The flags the module offers for m on a slot with those capabilities
 * (0: not offered there). */
CK_FLAGS p11_mech_flags(const struct p11_mech *m, const struct p11_caps *c);

/* ---- one request to the HSM ----
 * The first failure while building is kept and reported by p11_rq_run, so
 * a builder reads like the command's schema. */
struct p11_rq {
	struct kh_buf *req, *resp;
	struct kh_frame f;
	char cmd[5];
	int err;  /* building error (kh_err) */
	int kerr; /* the HSM's (or transport's) answer after p11_rq_run */
};
KH_MUST_CHECK CK_RV p11_rq_begin(struct p11_rq *r, const char *cmd);
void p11_rq_put(struct p11_rq *r, const char *tag, const char *val);
void p11_rq_hex(struct p11_rq *r, const char *tag, const uint8_t *d, size_t n);
void p11_rq_u64(struct p11_rq *r, const char *tag, uint64_t v);
/* The key by slot and identifier or by cryptogram, under the given tags. */
void p11_rq_key(struct p11_rq *r, const struct p11_obj *o, const char *slot_tag, const char *id_tag,
                const char *cg_tag);
/* Send it; CKR_OK, or p11_rv_from_kh of the error, which stays in r->kerr
 * for callers whose specification names another code. */
KH_MUST_CHECK CK_RV p11_rq_run(struct p11_session *s, struct p11_rq *r, unsigned flags);
/* Append the bytes of a hex response field to out (wiped buffer). */
KH_MUST_CHECK CK_RV p11_rq_field(const struct p11_rq *r, const char *tag, struct kh_buf *out);
void p11_rq_free(struct p11_rq *r);

/* ---- operations: what p11_crypto.c's calls run ---- */

#define P11_GCM_IV_MAX 512              /* the HSM's limit */
#define P11_LABEL_MAX 1024              /* OAEP label, X9.63 shared info: the HSM's limit */
#define P11_RES_MAX (P11_MAX_DATA + 64) /* an output: the input, and padding or a tag */
#define P11_DIGEST_MAX 64

/* An operation's private, parsed copy of its mechanism parameter, and
 * what it must remember between calls. */
struct p11_mop {
	const struct p11_mech *m;
	uint8_t iv[P11_GCM_IV_MAX]; /* CBC IV, CTR counter block, GCM IV */
	size_t iv_len;
	uint8_t *aad; /* GCM */
	size_t aad_len, tag_len;
	unsigned ctr_bits;         /* CTR */
	const struct p11_hash *ph; /* PSS / OAEP hash */
	const struct p11_hash *mgf;
	CK_ULONG salt;  /* PSS */
	uint8_t *label; /* OAEP */
	size_t label_len;
	size_t mac_len;               /* HMAC / CMAC output */
	uint8_t hash[P11_DIGEST_MAX]; /* the final digest of op->md, once taken */
	size_t hash_len;
	bool hashed;
	uint8_t kept_in[32]; /* SHA-256 of the input whose output op->result keeps */
	bool kept_final;     /* ... or: kept by a Final call */
};
void p11_mop_free(void *p);

/* What a key is used for (its usage bit, and the class the use needs). */
enum p11_use {
	P11_USE_ENC,
	P11_USE_DEC,
	P11_USE_SIGN,
	P11_USE_VERIFY,
	P11_USE_WRAP,
	P11_USE_UNWRAP,
	P11_USE_DERIVE
};
/* Whether key o may run m for that use, from its cached attributes (the
 * HSM checks again): CKR_KEY_HANDLE_INVALID (not a key),
 * CKR_KEY_TYPE_INCONSISTENT, CKR_KEY_FUNCTION_NOT_PERMITTED. */
KH_MUST_CHECK CK_RV p11_mech_key_fits(const struct p11_obj *o, const struct p11_mech *m,
                                      enum p11_use u);
/* Hash-then-sign: the data is hashed here and the HSM signs the digest. */
bool p11_mech_prehash(const struct p11_mech *m);
/* Bytes of an RSA modulus or an EC field element; 0 when not known. */
size_t p11_key_bytes(const struct p11_obj *o);

/* Parse and copy mech's parameter for an operation of kind k with key o
 * (NULL for digests) into st (st->m set): the application may free it once
 * Init returns. CKR_MECHANISM_PARAM_INVALID. */
KH_MUST_CHECK CK_RV p11_mech_params(const CK_MECHANISM *mech, const struct p11_obj *o,
                                    enum p11_op_kind k, struct p11_mop *st);
KH_MUST_CHECK CK_RV p11_mech_oaep(const CK_MECHANISM *mech, struct p11_mop *st);
/* GCM tag bits -> bytes (4-16 whole bytes). */
KH_MUST_CHECK CK_RV p11_mech_gcm_tag(CK_ULONG bits, size_t *len);
/* HA, MG, OL of an OAEP operation. */
void p11_rq_oaep(struct p11_rq *r, const struct p11_mop *st);

/* Lengths, before anything runs: the output's (exact, or an upper bound
 * when only the HSM can tell), or the input's error. */
KH_MUST_CHECK CK_RV p11_mech_enc_size(const struct p11_op *op, size_t n, size_t *need, bool *exact);
KH_MUST_CHECK CK_RV p11_mech_dec_size(const struct p11_op *op, size_t n, size_t *need, bool *exact);
/* A signature's length; in (the data, or the digest) checked. */
KH_MUST_CHECK CK_RV p11_mech_sig_size(const struct p11_op *op, size_t n, size_t *need);

/* One run on the HSM of the operation op for input in, output appended to out. */
typedef CK_RV (*p11_run_fn)(struct p11_session *s, struct p11_op *op, const uint8_t *in, size_t n,
                            struct kh_buf *out);
CK_RV p11_mech_encrypt(struct p11_session *s, struct p11_op *op, const uint8_t *in, size_t n,
                       struct kh_buf *out);
CK_RV p11_mech_decrypt(struct p11_session *s, struct p11_op *op, const uint8_t *in, size_t n,
                       struct kh_buf *out);
CK_RV p11_mech_sign(struct p11_session *s, struct p11_op *op, const uint8_t *in, size_t n,
                    struct kh_buf *out);
CK_RV p11_mech_vrecover(struct p11_session *s, struct p11_op *op, const uint8_t *in, size_t n,
                        struct kh_buf *out);
CK_RV p11_mech_digest(struct p11_session *s, struct p11_op *op, const uint8_t *in, size_t n,
                      struct kh_buf *out);
/* CKR_OK, CKR_SIGNATURE_INVALID, CKR_SIGNATURE_LEN_RANGE, ... */
CK_RV p11_mech_verify(struct p11_session *s, struct p11_op *op, const uint8_t *in, size_t n,
                      const uint8_t *sig, size_t siglen);

#endif

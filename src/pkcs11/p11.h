/*
 * The module's internals, shared by its files: slots (one per <HSM> block,
 * each with a connection pool), sessions, objects and their handles, and
 * the helpers every C_* function uses. Keys never exist here in clear:
 * token objects are named by HSM slot and key identifier, session objects
 * are cryptograms the HSM issued.
 *
 * Locking: one module lock (p11_lock) guards the slot, session and object
 * tables; each session has its own lock, held for the whole of a call on
 * that session (PKCS#11 allows one call at a time per session); an object
 * is reference counted so a call can use it while another thread destroys
 * its handle. Order: session lock, then module lock; never the reverse.
 */
#ifndef P11_H
#define P11_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <openssl/evp.h>
#include "pkcs11/p11_spec.h"
#include "pkcs11/p11_config.h"
#include "common/kh_buf.h"
#include "common/kh_frame.h"
#include "common/kh_pool.h"

#define P11_EXPORT __attribute__((visibility("default")))

#define P11_KEY_ID_LEN 16
#define P11_MAX_DATA (3u * 1024 * 1024) /* one operation's input: fits a frame in hex */

struct p11_retired; /* memory replaced under readers, freed with the object */

/* HSM usage letters (CZ) and flags (KF) as bits, as the HSM's letters. */
enum {
	P11_U_ENCRYPT = 1u << 0, /* E */
	P11_U_DECRYPT = 1u << 1, /* D */
	P11_U_SIGN = 1u << 2,    /* G */
	P11_U_VERIFY = 1u << 3,  /* V */
	P11_U_WRAP = 1u << 4,    /* W */
	P11_U_UNWRAP = 1u << 5,  /* U */
	P11_U_DERIVE = 1u << 6,  /* X */
};
enum {
	P11_F_EXPORTABLE = 1u << 0,  /* X */
	P11_F_SENSITIVE = 1u << 1,   /* S */
	P11_F_AUTHORIZED = 1u << 2,  /* A */
	P11_F_MODIFIABLE = 1u << 3,  /* M */
	P11_F_LOCAL = 1u << 4,       /* L */
	P11_F_NEVER_EXTRACTABLE = 1u << 5, /* N */
	P11_F_ALWAYS_SENSITIVE = 1u << 6,  /* Y */
};
/* letters <-> bits; *_parse returns false on a letter it does not know */
void p11_usage_letters(unsigned usage, char out[8]);
void p11_flag_letters(unsigned flags, char out[8]);
bool p11_usage_parse(const char *s, size_t n, unsigned *out);
bool p11_flag_parse(const char *s, size_t n, unsigned *out);

struct p11_slot {
	CK_SLOT_ID id;
	const struct p11_slot_cfg *cfg;
	struct kh_pool *pool;
	/* guarded by the module lock */
	bool user_logged_in, so_logged_in;
	CK_ULONG nsessions, nrw_sessions;
	/* token facts read from the HSM once (STAT/HASH); "" until then */
	char serial[17], model[17], version[17];
	unsigned fw_major, fw_minor;
};

/* One object as the module knows it. Token objects: hsm_slot + key_id,
 * attributes read from the HSM (GPKR) on first use. Session objects: the
 * cryptogram and the attributes the module recorded when it made them.
 * Immutable after p11_obj_publish except under the module lock (attrs
 * cache fill, destroyed flag). */
struct p11_obj {
	CK_OBJECT_HANDLE handle;
	struct p11_slot *slot;
	unsigned refs;            /* module lock */
	bool destroyed;           /* handle gone; freed at the last put */
	bool token;
	CK_SESSION_HANDLE owner;  /* session objects: the session that made it */
	uint32_t hsm_slot;        /* token objects */
	uint8_t key_id[P11_KEY_ID_LEN];
	uint8_t *cg;              /* session keys: cryptogram (BG/RC/SD bytes) */
	size_t cg_len;
	const char *cg_tag;       /* "BG", "RC" or "SD": which kind cg is */
	/* attributes (valid when loaded) */
	bool loaded;
	CK_OBJECT_CLASS cls;
	CK_KEY_TYPE ktype;        /* keys; CKC_X_509 for certificates */
	CK_ULONG bits;            /* key size (RSA modulus, EC field, secret bits) */
	unsigned usage, flags;    /* P11_U_*, P11_F_* */
	bool priv;                /* CKA_PRIVATE */
	uint8_t *pub;             /* SPKI DER of private/public keys and certificates' keys */
	size_t pub_len;
	uint8_t *value;           /* certificate DER, data object value, or NULL */
	size_t value_len;
	uint8_t kcv[3];           /* AES check value when has_kcv */
	bool has_kcv;
	/* descriptive attributes (CKA_LABEL, CKA_ID, others as an encoded list) */
	uint8_t *label; size_t label_len;
	uint8_t *ckaid; size_t ckaid_len;
	uint8_t *extra; size_t extra_len; /* descriptive attributes, see p11_attr.c */
	struct p11_retired *retired;
};

/* What a template asks of a new key (generate, unwrap, derive, create). */
struct p11_newkey {
	CK_OBJECT_CLASS cls;
	CK_KEY_TYPE ktype;
	CK_ULONG value_len;       /* CKA_VALUE_LEN (secret keys), 0 when not given */
	CK_ULONG modulus_bits;    /* CKA_MODULUS_BITS */
	uint8_t *pubexp; size_t pubexp_len;  /* CKA_PUBLIC_EXPONENT */
	uint8_t *ec_params; size_t ec_params_len; /* CKA_EC_PARAMS DER */
	bool token, priv;
	unsigned usage, flags;    /* P11_U_*, P11_F_* (requestable flags only) */
	uint8_t *label; size_t label_len;
	uint8_t *ckaid; size_t ckaid_len;
	uint8_t *extra; size_t extra_len;
	uint8_t *value; size_t value_len_bytes; /* CKA_VALUE (C_CreateObject), secure heap */
};

/* What a template is for: decides defaults and which attributes are allowed. */
enum p11_tmpl_use {
	P11_TMPL_GENERATE,     /* C_GenerateKey */
	P11_TMPL_GEN_PUBLIC,   /* C_GenerateKeyPair public template */
	P11_TMPL_GEN_PRIVATE,  /* C_GenerateKeyPair private template */
	P11_TMPL_UNWRAP,       /* C_UnwrapKey */
	P11_TMPL_DERIVE,       /* C_DeriveKey */
	P11_TMPL_CREATE,       /* C_CreateObject */
	P11_TMPL_COPY,         /* C_CopyObject */
};

/* Operation slots of a session: an operation of each kind may be active. */
enum p11_op_kind {
	P11_OP_ENCRYPT, P11_OP_DECRYPT, P11_OP_DIGEST, P11_OP_SIGN, P11_OP_VERIFY,
	P11_OP_SIGN_RECOVER, P11_OP_VERIFY_RECOVER,
	P11_OP_MSG_ENCRYPT, P11_OP_MSG_DECRYPT, P11_OP_MSG_SIGN, P11_OP_MSG_VERIFY,
	P11_OP_COUNT
};

struct p11_op {
	bool active;
	bool multi;                 /* an Update was called: the one-shot call is no longer allowed */
	CK_MECHANISM_TYPE mech;
	uint8_t *param;             /* a private copy of the mechanism parameter (and of what it points at) */
	size_t param_len;
	struct p11_obj *key;        /* held reference, or NULL (digest) */
	struct kh_buf *acc;         /* data gathered by Update calls */
	EVP_MD_CTX *md;             /* local hashing (hash-then-sign, multi-part digest) */
	void *state;                /* mechanism-specific, freed by free_state */
	void (*free_state)(void *);
	uint8_t *result;            /* a computed result kept for a call that asked the length first */
	size_t result_len;
};

struct p11_session {
	CK_SESSION_HANDLE handle;
	struct p11_slot *slot;
	CK_FLAGS flags;             /* CKF_RW_SESSION | CKF_SERIAL_SESSION */
	CK_VOID_PTR app;
	CK_NOTIFY notify;
	pthread_mutex_t mu;         /* held by the thread in a call on this session */
	unsigned users;             /* module lock: references from p11_session_get */
	bool closing;               /* module lock: out of the table, freed by the last user */
	/* C_FindObjects state */
	bool find_active;
	CK_OBJECT_HANDLE *found;
	size_t nfound, found_pos;
	struct p11_op op[P11_OP_COUNT];
};

/* ---- module state ---- */
void p11_lock(void);
void p11_unlock(void);
/* CKR_CRYPTOKI_NOT_INITIALIZED unless C_Initialize ran in this process. */
CK_RV p11_check_init(void);
const struct p11_config *p11_config(void);

/* Slot by id (CKR_SLOT_ID_INVALID). Slots live until C_Finalize. */
CK_RV p11_slot_get(CK_SLOT_ID id, struct p11_slot **out);

/* Session by handle, locked for the caller's call (CKR_SESSION_HANDLE_INVALID,
 * CKR_CRYPTOKI_NOT_INITIALIZED). Every C_* that takes a session starts with
 * this and ends with p11_session_put. */
CK_RV p11_session_get(CK_SESSION_HANDLE h, struct p11_session **out);
void p11_session_put(struct p11_session *s);
bool p11_session_logged_in(const struct p11_session *s);
bool p11_session_rw(const struct p11_session *s);
/* End the session's operation of that kind (free parameter, key ref, buffers). */
void p11_op_end(struct p11_session *s, enum p11_op_kind k);

/* ---- talking to the HSM ---- */
#define P11_CALL_BALANCE KH_POOL_BALANCE /* any address; retried on another after a transport failure */
#define P11_CALL_PRIMARY KH_POOL_PRIMARY /* changes keys: the first address that is up; not retried once sent */
/* One request for the session's slot; f parsed from resp on success or on
 * an HSM error. Returns KH_OK, the HSM's error (kh_err), or a transport
 * error after the retries. */
KH_MUST_CHECK int p11_call(struct p11_session *s, unsigned flags, const struct kh_buf *req,
			   struct kh_buf *resp, struct kh_frame *f);
/* The one table from kh_err to CK_RV (callers override where an
 * operation's specification names another code). */
CK_RV p11_rv_from_kh(int err);
/* Fresh request/response buffers sized for P11_MAX_DATA (frees on NULL). */
struct kh_buf *p11_buf_new(void);

/* ---- objects ---- */
/* A referenced object by handle, visible to this session (private objects
 * need a login: CKR_OBJECT_HANDLE_INVALID otherwise), attributes loaded. */
CK_RV p11_obj_get(struct p11_session *s, CK_OBJECT_HANDLE h, struct p11_obj **out);
void p11_obj_put(struct p11_obj *o);
/* The same with the module lock held (C_Finalize, a forked child's
 * C_Initialize: freeing a session with an active operation). */
void p11_obj_put_locked(struct p11_obj *o);
/* Name the key in a request: token objects put slot_tag (slot) and id_tag
 * (key identifier); session objects put cg_tag (the cryptogram). */
KH_MUST_CHECK int p11_obj_put_ref(const struct p11_obj *o, struct kh_buf *req, const char *slot_tag,
				  const char *id_tag, const char *cg_tag);
/* The object's public key as SubjectPublicKeyInfo DER (private and public
 * keys, certificates); NULL if it has none. Points into o. */
const uint8_t *p11_obj_spki(const struct p11_obj *o, size_t *len);

/* Parse a template for a new key; defaults by use. CKR_TEMPLATE_INCONSISTENT,
 * CKR_ATTRIBUTE_VALUE_INVALID, CKR_ATTRIBUTE_TYPE_INVALID as the spec says. */
CK_RV p11_tmpl_parse(const CK_ATTRIBUTE *t, CK_ULONG n, enum p11_tmpl_use use, CK_OBJECT_CLASS cls,
		     CK_KEY_TYPE ktype, struct p11_newkey *nk);
void p11_newkey_free(struct p11_newkey *nk);
/* Put the new key's attributes into a request: usage (usage_tag, e.g. "CZ"
 * or "PZ"), flags (flags_tag, "KF" or "NF"), "FS" FTK, the destination
 * dest_tag "*" (the HSM picks a free slot) for token keys, LB/KI/EX. */
KH_MUST_CHECK int p11_newkey_put(const struct p11_newkey *nk, struct kh_buf *req, const char *usage_tag,
				 const char *flags_tag, const char *dest_tag);
/* Make the object a response describes and give it a handle: token keys
 * from dest_tag (slot) and id_tag (key identifier), session keys from
 * cg_tag (the cryptogram); pub_tag (e.g. "RD") the public key if any. */
CK_RV p11_obj_from_resp(struct p11_session *s, const struct p11_newkey *nk, const struct kh_frame *f,
			const char *dest_tag, const char *id_tag, const char *cg_tag, const char *pub_tag,
			CK_OBJECT_HANDLE *out);

/* ---- small helpers ---- */
/* Copy out as PKCS#11 does: NULL buffer -> length only; too small ->
 * CKR_BUFFER_TOO_SMALL with the length needed. */
CK_RV p11_out(const uint8_t *data, size_t n, CK_BYTE_PTR out, CK_ULONG_PTR out_len);
/* Hex field of a response into a malloc'd buffer (responses carry no clear
 * key material: keys come back as cryptograms). */
KH_MUST_CHECK int p11_field_bytes(const struct kh_frame *f, const char *tag, uint8_t **out, size_t *len);
/* Blank-padded copy into a fixed PKCS#11 text field. */
void p11_pad(CK_UTF8CHAR *dst, size_t n, const char *src);

#endif

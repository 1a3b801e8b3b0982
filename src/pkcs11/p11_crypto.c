/*
 * The cryptographic entry points: encrypt, decrypt, digest, sign and verify
 * (with recovery), the dual-function updates, the 3.0 message functions,
 * wrap, unwrap, derive and random. Every operation runs on the HSM; only
 * the hashing of hash-then-sign mechanisms and multi-part digests runs
 * here. Keys never pass through in clear, plaintext only sits in wiped
 * buffers, and a decryption is never run twice to tell its length.
 */
#include <stdlib.h>
#include <string.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "pkcs11/p11.h"
#include "pkcs11/p11_attr.h"
#include "pkcs11/p11_log.h"
#include "pkcs11/p11_mech.h"
#include "common/kh_buf.h"
#include "common/kh_mem.h"

#define RAND_CHUNK 4096 /* RAND NB */

static CK_RV logged(const char *fn, CK_RV rv)
{
	if (rv != CKR_OK && rv != CKR_BUFFER_TOO_SMALL)
		p11_log(P11_LOG_DEBUG, "%s: 0x%lx", fn, (unsigned long)rv);
	return rv;
}

/* A key by handle; handle errors under the name the caller's function uses. */
static CK_RV key_get(struct p11_session *s, CK_OBJECT_HANDLE h, CK_RV invalid, struct p11_obj **out)
{
	CK_RV rv = p11_obj_get(s, h, out);
	return rv == CKR_OBJECT_HANDLE_INVALID ? invalid : rv;
}

/* ---- operations: start, end, gather ---- */

static const struct {
	enum p11_use u;
	CK_FLAGS flag;
} kinds[P11_OP_COUNT] = {
    [P11_OP_ENCRYPT] = {P11_USE_ENC, CKF_ENCRYPT},
    [P11_OP_DECRYPT] = {P11_USE_DEC, CKF_DECRYPT},
    [P11_OP_DIGEST] = {P11_USE_ENC, CKF_DIGEST},
    [P11_OP_SIGN] = {P11_USE_SIGN, CKF_SIGN},
    [P11_OP_VERIFY] = {P11_USE_VERIFY, CKF_VERIFY},
    [P11_OP_SIGN_RECOVER] = {P11_USE_SIGN, CKF_SIGN_RECOVER},
    [P11_OP_VERIFY_RECOVER] = {P11_USE_VERIFY, CKF_VERIFY_RECOVER},
    [P11_OP_MSG_ENCRYPT] = {P11_USE_ENC, CKF_MESSAGE_ENCRYPT},
    [P11_OP_MSG_DECRYPT] = {P11_USE_DEC, CKF_MESSAGE_DECRYPT},
    [P11_OP_MSG_SIGN] = {P11_USE_SIGN, CKF_MESSAGE_SIGN},
    [P11_OP_MSG_VERIFY] = {P11_USE_VERIFY, CKF_MESSAGE_VERIFY},
};

/* Init checks what the module can do at all; what this HSM refuses (FIPS
 * mode, a role without PKCS#1 v1.5 decryption) it answers itself. */
static const struct p11_caps all_caps = {.fips = false, .pkcs1_dec = true, .min_rsa = 1024};

static void op_begin(struct p11_op *op, CK_MECHANISM_TYPE t, struct p11_obj *key,
                     struct p11_mop *st)
{
	*op = (struct p11_op){
	    .active = true,
	    .mech = t,
	    .key = key,
	    .state = st,
	    .free_state = p11_mop_free,
	};
}

static CK_RV op_init(CK_SESSION_HANDLE h, enum p11_op_kind k, CK_MECHANISM_PTR mech,
                     CK_OBJECT_HANDLE hkey, bool keyed)
{
	struct p11_session *s;
	struct p11_obj *o = NULL;
	struct p11_mop *st = NULL;
	const struct p11_mech *m;
	CK_RV rv = p11_session_get(h, &s);

	if (rv != CKR_OK)
		return rv;
	struct p11_op *op = &s->op[k];
	if (!mech) {
		/* 3.0: Init with no mechanism cancels the active operation */
		if (op->active) {
			p11_op_end(s, k);
			rv = CKR_OK;
		} else {
			rv = CKR_ARGUMENTS_BAD;
		}
		goto out;
	}
	if (op->active) {
		rv = CKR_OPERATION_ACTIVE;
		goto out;
	}
	m = p11_mech_find(mech->mechanism);
	if (!m || !(p11_mech_flags(m, &all_caps) & kinds[k].flag)) {
		rv = CKR_MECHANISM_INVALID;
		goto out;
	}
	if (keyed) {
		if ((rv = key_get(s, hkey, CKR_KEY_HANDLE_INVALID, &o)) != CKR_OK ||
		    (rv = p11_mech_key_fits(o, m, kinds[k].u)) != CKR_OK)
			goto out;
	}
	if (!(st = calloc(1, sizeof(*st)))) {
		rv = CKR_HOST_MEMORY;
		goto out;
	}
	st->m = m;
	if ((rv = p11_mech_params(mech, o, k, st)) != CKR_OK)
		goto out;
	op_begin(op, mech->mechanism, o, st);
	o = NULL;
	st = NULL;
out:
	if (o)
		p11_obj_put(o);
	p11_mop_free(st);
	if (rv != CKR_OK)
		p11_log(P11_LOG_DEBUG, "init of operation %d, mechanism 0x%lx: 0x%lx", (int)k,
		        mech ? (unsigned long)mech->mechanism : 0ul, (unsigned long)rv);
	p11_session_put(s);
	return rv;
}

/* The session's active operation of kind k (CKR_OPERATION_NOT_INITIALIZED
 * otherwise: the session is released then). */
static CK_RV op_get(CK_SESSION_HANDLE h, enum p11_op_kind k, struct p11_session **s,
                    struct p11_op **op)
{
	CK_RV rv = p11_session_get(h, s);
	if (rv != CKR_OK)
		return rv;
	*op = &(*s)->op[k];
	if (!(*op)->active) {
		p11_session_put(*s);
		return CKR_OPERATION_NOT_INITIALIZED;
	}
	return CKR_OK;
}

/* A one-shot or Final call is over: the operation ends, unless the call
 * only told the length (a NULL buffer, or CKR_BUFFER_TOO_SMALL). */
static CK_RV op_done(struct p11_session *s, enum p11_op_kind k, CK_RV rv, bool query,
                     const char *fn)
{
	if (!(rv == CKR_BUFFER_TOO_SMALL || (rv == CKR_OK && query)))
		p11_op_end(s, k);
	p11_session_put(s);
	return logged(fn, rv);
}

/* An Update call: any error ends the operation. */
static CK_RV op_step(struct p11_session *s, enum p11_op_kind k, CK_RV rv, const char *fn)
{
	if (rv != CKR_OK)
		p11_op_end(s, k);
	p11_session_put(s);
	return logged(fn, rv);
}

static CK_RV acc_put(struct p11_op *op, const uint8_t *d, size_t n, CK_RV too_long)
{
	if (!op->acc && !(op->acc = kh_buf_new(P11_MAX_DATA)))
		return CKR_HOST_MEMORY;
	if (n > P11_MAX_DATA - kh_buf_len(op->acc))
		return too_long;
	if (n && kh_buf_put(op->acc, d, n) != KH_OK)
		return CKR_HOST_MEMORY;
	return CKR_OK;
}

static const uint8_t *acc_ptr(const struct p11_op *op, size_t *n)
{
	*n = op->acc ? kh_buf_len(op->acc) : 0;
	return *n ? kh_buf_ptr(op->acc) : NULL;
}

static CK_RV md_update(struct p11_op *op, const struct p11_hash *h, const uint8_t *d, size_t n)
{
	if (!op->md) {
		const EVP_MD *md = EVP_get_digestbyname(h->evp);
		if (!md || !(op->md = EVP_MD_CTX_new()) || EVP_DigestInit_ex(op->md, md, NULL) != 1)
			return CKR_HOST_MEMORY;
	}
	if (n && EVP_DigestUpdate(op->md, d, n) != 1)
		return CKR_GENERAL_ERROR;
	return CKR_OK;
}

/* The digest of everything op->md saw, taken once and kept in st. */
static CK_RV md_final(struct p11_op *op, struct p11_mop *st, const struct p11_hash *h)
{
	unsigned len = 0;
	CK_RV rv;

	if (st->hashed)
		return CKR_OK;
	if ((rv = md_update(op, h, NULL, 0)) != CKR_OK)
		return rv;
	if (EVP_DigestFinal_ex(op->md, st->hash, &len) != 1 || len != h->len)
		return CKR_GENERAL_ERROR;
	st->hash_len = len;
	st->hashed = true;
	return CKR_OK;
}

static CK_RV hash_once(const struct p11_hash *h, const uint8_t *d, size_t n, uint8_t *out)
{
	const EVP_MD *md = EVP_get_digestbyname(h->evp);
	unsigned len = 0;
	if (!md || EVP_Digest(n ? d : (const uint8_t *)"", n, out, &len, md, NULL) != 1 ||
	    len != h->len)
		return CKR_GENERAL_ERROR;
	return CKR_OK;
}

/* ---- output: the length convention ---- */

static void result_drop(struct p11_op *op)
{
	if (op->result) {
		kh_wipe(op->result, op->result_len);
		free(op->result);
	}
	op->result = NULL;
	op->result_len = 0;
}

/* Give the output of run(in) the PKCS#11 way. need is the output length,
 * exact or (exact false) an upper bound. A NULL buffer learns need without
 * running anything; a buffer that is too small for an exact need learns it
 * without running either. When only running tells the length and the
 * buffer is too small, the output is kept (op->result) for the call that
 * comes back with the same input and a larger buffer. */
static CK_RV deliver(struct p11_session *s, struct p11_op *op, p11_run_fn run, const uint8_t *in,
                     size_t n, bool final, size_t need, bool exact, CK_BYTE_PTR out,
                     CK_ULONG_PTR out_len)
{
	struct p11_mop *st = op->state;
	uint8_t dg[32] = {0};
	struct kh_buf *res;
	CK_RV rv;

	if (op->result) {
		bool same = final ? st->kept_final
		                  : !st->kept_final &&
		                        EVP_Digest(n ? in : (const uint8_t *)"", n, dg, NULL,
		                                   EVP_sha256(), NULL) == 1 &&
		                        CRYPTO_memcmp(dg, st->kept_in, sizeof(dg)) == 0;
		if (same) {
			rv = p11_out(op->result, op->result_len, out, out_len);
			if (rv == CKR_OK && out)
				result_drop(op);
			return rv;
		}
		result_drop(op);
	}
	if (!out) {
		*out_len = need;
		return CKR_OK;
	}
	if (exact && *out_len < need) {
		*out_len = need;
		return CKR_BUFFER_TOO_SMALL;
	}
	if (!(res = kh_buf_new(P11_RES_MAX)))
		return CKR_HOST_MEMORY;
	rv = run(s, op, in, n, res);
	if (rv == CKR_OK)
		rv = p11_out(kh_buf_ptr(res), kh_buf_len(res), out, out_len);
	if (rv == CKR_BUFFER_TOO_SMALL) {
		size_t len = kh_buf_len(res);
		if (!(op->result = malloc(len))) {
			rv = CKR_HOST_MEMORY;
		} else {
			memcpy(op->result, kh_buf_ptr(res), len);
			op->result_len = len;
			st->kept_final = final;
			if (!final && EVP_Digest(n ? in : (const uint8_t *)"", n, st->kept_in, NULL,
			                         EVP_sha256(), NULL) != 1)
				rv = CKR_GENERAL_ERROR;
		}
	}
	kh_buf_free(res);
	return rv;
}

/* ======================================================================== */
/* Encryption */

P11_EXPORT CK_RV C_EncryptInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                               CK_OBJECT_HANDLE hKey)
{
	return op_init(hSession, P11_OP_ENCRYPT, pMechanism, hKey, true);
}

P11_EXPORT CK_RV C_Encrypt(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen,
                           CK_BYTE_PTR pEncryptedData, CK_ULONG_PTR pulEncryptedDataLen)
{
	struct p11_session *s;
	struct p11_op *op;
	size_t need;
	bool exact;
	CK_RV rv = op_get(hSession, P11_OP_ENCRYPT, &s, &op);

	if (rv != CKR_OK)
		return rv;
	if (!pulEncryptedDataLen || (!pData && ulDataLen))
		rv = CKR_ARGUMENTS_BAD;
	else if (op->multi)
		rv = CKR_OPERATION_ACTIVE; /* C_Encrypt cannot finish a multi-part operation */
	else if ((rv = p11_mech_enc_size(op, ulDataLen, &need, &exact)) == CKR_OK)
		rv = deliver(s, op, p11_mech_encrypt, pData, ulDataLen, false, need, exact,
		             pEncryptedData, pulEncryptedDataLen);
	return op_done(s, P11_OP_ENCRYPT, rv, pEncryptedData == NULL, "C_Encrypt");
}

/* Multi-part encryption and decryption gather the input and run at Final:
 * an Update gives no output yet, as PKCS#11 allows. */
static CK_RV gather(CK_SESSION_HANDLE h, enum p11_op_kind k, CK_BYTE_PTR in, CK_ULONG n,
                    CK_BYTE_PTR out, CK_ULONG_PTR out_len, CK_RV too_long, const char *fn)
{
	struct p11_session *s;
	struct p11_op *op;
	CK_RV rv = op_get(h, k, &s, &op);

	if (rv != CKR_OK)
		return rv;
	if (!out_len || (!in && n)) {
		rv = CKR_ARGUMENTS_BAD;
	} else if (!out) {
		*out_len = 0; /* a length query: nothing would come out */
	} else if ((rv = acc_put(op, in, n, too_long)) == CKR_OK) {
		op->multi = true;
		*out_len = 0;
	}
	return op_step(s, k, rv, fn);
}

P11_EXPORT CK_RV C_EncryptUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen,
                                 CK_BYTE_PTR pEncryptedPart, CK_ULONG_PTR pulEncryptedPartLen)
{
	return gather(hSession, P11_OP_ENCRYPT, pPart, ulPartLen, pEncryptedPart,
	              pulEncryptedPartLen, CKR_DATA_LEN_RANGE, "C_EncryptUpdate");
}

P11_EXPORT CK_RV C_EncryptFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pLastEncryptedPart,
                                CK_ULONG_PTR pulLastEncryptedPartLen)
{
	struct p11_session *s;
	struct p11_op *op;
	size_t n, need;
	bool exact;
	CK_RV rv = op_get(hSession, P11_OP_ENCRYPT, &s, &op);

	if (rv != CKR_OK)
		return rv;
	const uint8_t *in = acc_ptr(op, &n);
	if (!pulLastEncryptedPartLen)
		rv = CKR_ARGUMENTS_BAD;
	else if ((rv = p11_mech_enc_size(op, n, &need, &exact)) == CKR_OK)
		rv = deliver(s, op, p11_mech_encrypt, in, n, true, need, exact, pLastEncryptedPart,
		             pulLastEncryptedPartLen);
	return op_done(s, P11_OP_ENCRYPT, rv, pLastEncryptedPart == NULL, "C_EncryptFinal");
}

/* ======================================================================== */
/* Decryption */

P11_EXPORT CK_RV C_DecryptInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                               CK_OBJECT_HANDLE hKey)
{
	return op_init(hSession, P11_OP_DECRYPT, pMechanism, hKey, true);
}

P11_EXPORT CK_RV C_Decrypt(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedData,
                           CK_ULONG ulEncryptedDataLen, CK_BYTE_PTR pData, CK_ULONG_PTR pulDataLen)
{
	struct p11_session *s;
	struct p11_op *op;
	size_t need;
	bool exact;
	CK_RV rv = op_get(hSession, P11_OP_DECRYPT, &s, &op);

	if (rv != CKR_OK)
		return rv;
	if (!pulDataLen || (!pEncryptedData && ulEncryptedDataLen))
		rv = CKR_ARGUMENTS_BAD;
	else if (op->multi)
		rv = CKR_OPERATION_ACTIVE;
	else if ((rv = p11_mech_dec_size(op, ulEncryptedDataLen, &need, &exact)) == CKR_OK)
		rv = deliver(s, op, p11_mech_decrypt, pEncryptedData, ulEncryptedDataLen, false,
		             need, exact, pData, pulDataLen);
	return op_done(s, P11_OP_DECRYPT, rv, pData == NULL, "C_Decrypt");
}

P11_EXPORT CK_RV C_DecryptUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedPart,
                                 CK_ULONG ulEncryptedPartLen, CK_BYTE_PTR pPart,
                                 CK_ULONG_PTR pulPartLen)
{
	return gather(hSession, P11_OP_DECRYPT, pEncryptedPart, ulEncryptedPartLen, pPart,
	              pulPartLen, CKR_ENCRYPTED_DATA_LEN_RANGE, "C_DecryptUpdate");
}

P11_EXPORT CK_RV C_DecryptFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pLastPart,
                                CK_ULONG_PTR pulLastPartLen)
{
	struct p11_session *s;
	struct p11_op *op;
	size_t n, need;
	bool exact;
	CK_RV rv = op_get(hSession, P11_OP_DECRYPT, &s, &op);

	if (rv != CKR_OK)
		return rv;
	const uint8_t *in = acc_ptr(op, &n);
	if (!pulLastPartLen)
		rv = CKR_ARGUMENTS_BAD;
	else if ((rv = p11_mech_dec_size(op, n, &need, &exact)) == CKR_OK)
		rv = deliver(s, op, p11_mech_decrypt, in, n, true, need, exact, pLastPart,
		             pulLastPartLen);
	return op_done(s, P11_OP_DECRYPT, rv, pLastPart == NULL, "C_DecryptFinal");
}

/* ======================================================================== */
/* Digests: single-part on the HSM (GHSH), multi-part here */

P11_EXPORT CK_RV C_DigestInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism)
{
	return op_init(hSession, P11_OP_DIGEST, pMechanism, CK_INVALID_HANDLE, false);
}

P11_EXPORT CK_RV C_Digest(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen,
                          CK_BYTE_PTR pDigest, CK_ULONG_PTR pulDigestLen)
{
	struct p11_session *s;
	struct p11_op *op;
	CK_RV rv = op_get(hSession, P11_OP_DIGEST, &s, &op);

	if (rv != CKR_OK)
		return rv;
	const struct p11_mop *st = op->state;
	if (!pulDigestLen || (!pData && ulDataLen))
		rv = CKR_ARGUMENTS_BAD;
	else if (op->multi)
		rv = CKR_OPERATION_ACTIVE;
	else
		rv = deliver(s, op, p11_mech_digest, pData, ulDataLen, false, st->m->hash->len,
		             true, pDigest, pulDigestLen);
	return op_done(s, P11_OP_DIGEST, rv, pDigest == NULL, "C_Digest");
}

static CK_RV digest_update(struct p11_op *op, const uint8_t *d, size_t n)
{
	const struct p11_mop *st = op->state;
	op->multi = true;
	return md_update(op, st->m->hash, d, n);
}

P11_EXPORT CK_RV C_DigestUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen)
{
	struct p11_session *s;
	struct p11_op *op;
	CK_RV rv = op_get(hSession, P11_OP_DIGEST, &s, &op);

	if (rv != CKR_OK)
		return rv;
	rv = !pPart && ulPartLen ? CKR_ARGUMENTS_BAD : digest_update(op, pPart, ulPartLen);
	return op_step(s, P11_OP_DIGEST, rv, "C_DigestUpdate");
}

P11_EXPORT CK_RV C_DigestKey(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hKey)
{
	struct p11_session *s;
	struct p11_op *op;
	struct p11_obj *o;
	CK_RV rv = op_get(hSession, P11_OP_DIGEST, &s, &op);

	if (rv != CKR_OK)
		return rv;
	/* a key's value never leaves the HSM, so no key can be digested */
	if ((rv = key_get(s, hKey, CKR_KEY_HANDLE_INVALID, &o)) == CKR_OK) {
		rv = o->cls == CKO_SECRET_KEY || o->cls == CKO_PRIVATE_KEY ||
		             o->cls == CKO_PUBLIC_KEY
		         ? CKR_KEY_INDIGESTIBLE
		         : CKR_KEY_HANDLE_INVALID;
		p11_obj_put(o);
	}
	return op_step(s, P11_OP_DIGEST, rv, "C_DigestKey");
}

P11_EXPORT CK_RV C_DigestFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pDigest,
                               CK_ULONG_PTR pulDigestLen)
{
	struct p11_session *s;
	struct p11_op *op;
	CK_RV rv = op_get(hSession, P11_OP_DIGEST, &s, &op);

	if (rv != CKR_OK)
		return rv;
	struct p11_mop *st = op->state;
	if (!pulDigestLen)
		rv = CKR_ARGUMENTS_BAD;
	else if ((rv = md_final(op, st, st->m->hash)) == CKR_OK)
		rv = p11_out(st->hash, st->hash_len, pDigest, pulDigestLen);
	return op_done(s, P11_OP_DIGEST, rv, pDigest == NULL, "C_DigestFinal");
}

/* ======================================================================== */
/* Signatures and MACs */

P11_EXPORT CK_RV C_SignInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                            CK_OBJECT_HANDLE hKey)
{
	return op_init(hSession, P11_OP_SIGN, pMechanism, hKey, true);
}

/* What the HSM signs for data: the data, or its digest made here. */
static CK_RV sign_input(const struct p11_op *op, const uint8_t *d, size_t n, uint8_t *buf,
                        const uint8_t **in, size_t *in_len)
{
	const struct p11_mop *st = op->state;
	CK_RV rv;

	if (!p11_mech_prehash(st->m)) {
		*in = d;
		*in_len = n;
		return n > P11_MAX_DATA ? CKR_DATA_LEN_RANGE : CKR_OK;
	}
	if ((rv = hash_once(st->m->hash, d, n, buf)) != CKR_OK)
		return rv;
	*in = buf;
	*in_len = st->m->hash->len;
	return CKR_OK;
}

/* C_Sign, C_SignRecover and C_SignMessage: one message, one signature. */
static CK_RV sign_one(struct p11_session *s, struct p11_op *op, CK_BYTE_PTR d, CK_ULONG n,
                      CK_BYTE_PTR sig, CK_ULONG_PTR sig_len)
{
	uint8_t buf[P11_DIGEST_MAX];
	const uint8_t *in;
	size_t in_len, need;
	CK_RV rv;

	if (!sig_len || (!d && n))
		return CKR_ARGUMENTS_BAD;
	if (op->multi)
		return CKR_OPERATION_ACTIVE;
	if ((rv = sign_input(op, d, n, buf, &in, &in_len)) != CKR_OK ||
	    (rv = p11_mech_sig_size(op, in_len, &need)) != CKR_OK)
		return rv;
	return deliver(s, op, p11_mech_sign, in, in_len, false, need, true, sig, sig_len);
}

P11_EXPORT CK_RV C_Sign(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen,
                        CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen)
{
	struct p11_session *s;
	struct p11_op *op;
	CK_RV rv = op_get(hSession, P11_OP_SIGN, &s, &op);

	if (rv != CKR_OK)
		return rv;
	rv = sign_one(s, op, pData, ulDataLen, pSignature, pulSignatureLen);
	return op_done(s, P11_OP_SIGN, rv, pSignature == NULL, "C_Sign");
}

/* Multi-part signing and verifying: hash-then-sign mechanisms hash as the
 * data comes; the others gather it for the HSM. */
static CK_RV sig_update(struct p11_op *op, const uint8_t *d, size_t n)
{
	const struct p11_mop *st = op->state;
	op->multi = true;
	if (p11_mech_prehash(st->m))
		return md_update(op, st->m->hash, d, n);
	return acc_put(op, d, n, CKR_DATA_LEN_RANGE);
}

/* The input of a Final call: the digest, or what was gathered. */
static CK_RV sig_final_input(struct p11_op *op, const uint8_t **in, size_t *n)
{
	struct p11_mop *st = op->state;
	CK_RV rv;

	if (!p11_mech_prehash(st->m)) {
		*in = acc_ptr(op, n);
		return CKR_OK;
	}
	if ((rv = md_final(op, st, st->m->hash)) != CKR_OK)
		return rv;
	*in = st->hash;
	*n = st->hash_len;
	return CKR_OK;
}

P11_EXPORT CK_RV C_SignUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen)
{
	struct p11_session *s;
	struct p11_op *op;
	CK_RV rv = op_get(hSession, P11_OP_SIGN, &s, &op);

	if (rv != CKR_OK)
		return rv;
	rv = !pPart && ulPartLen ? CKR_ARGUMENTS_BAD : sig_update(op, pPart, ulPartLen);
	return op_step(s, P11_OP_SIGN, rv, "C_SignUpdate");
}

P11_EXPORT CK_RV C_SignFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature,
                             CK_ULONG_PTR pulSignatureLen)
{
	struct p11_session *s;
	struct p11_op *op;
	const uint8_t *in;
	size_t n, need;
	CK_RV rv = op_get(hSession, P11_OP_SIGN, &s, &op);

	if (rv != CKR_OK)
		return rv;
	if (!pulSignatureLen)
		rv = CKR_ARGUMENTS_BAD;
	else if ((rv = sig_final_input(op, &in, &n)) == CKR_OK &&
	         (rv = p11_mech_sig_size(op, n, &need)) == CKR_OK)
		rv = deliver(s, op, p11_mech_sign, in, n, true, need, true, pSignature,
		             pulSignatureLen);
	return op_done(s, P11_OP_SIGN, rv, pSignature == NULL, "C_SignFinal");
}

P11_EXPORT CK_RV C_SignRecoverInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                                   CK_OBJECT_HANDLE hKey)
{
	return op_init(hSession, P11_OP_SIGN_RECOVER, pMechanism, hKey, true);
}

P11_EXPORT CK_RV C_SignRecover(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen,
                               CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen)
{
	struct p11_session *s;
	struct p11_op *op;
	CK_RV rv = op_get(hSession, P11_OP_SIGN_RECOVER, &s, &op);

	if (rv != CKR_OK)
		return rv;
	rv = sign_one(s, op, pData, ulDataLen, pSignature, pulSignatureLen);
	return op_done(s, P11_OP_SIGN_RECOVER, rv, pSignature == NULL, "C_SignRecover");
}

P11_EXPORT CK_RV C_VerifyInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                              CK_OBJECT_HANDLE hKey)
{
	return op_init(hSession, P11_OP_VERIFY, pMechanism, hKey, true);
}

/* C_Verify and C_VerifyMessage. */
static CK_RV verify_one(struct p11_session *s, struct p11_op *op, CK_BYTE_PTR d, CK_ULONG n,
                        CK_BYTE_PTR sig, CK_ULONG sig_len)
{
	uint8_t buf[P11_DIGEST_MAX];
	const uint8_t *in;
	size_t in_len;
	CK_RV rv;

	if ((!d && n) || (!sig && sig_len))
		return CKR_ARGUMENTS_BAD;
	if (op->multi)
		return CKR_OPERATION_ACTIVE;
	if ((rv = sign_input(op, d, n, buf, &in, &in_len)) != CKR_OK)
		return rv;
	return p11_mech_verify(s, op, in, in_len, sig, sig_len);
}

P11_EXPORT CK_RV C_Verify(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen,
                          CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen)
{
	struct p11_session *s;
	struct p11_op *op;
	CK_RV rv = op_get(hSession, P11_OP_VERIFY, &s, &op);

	if (rv != CKR_OK)
		return rv;
	rv = verify_one(s, op, pData, ulDataLen, pSignature, ulSignatureLen);
	return op_done(s, P11_OP_VERIFY, rv, false, "C_Verify");
}

P11_EXPORT CK_RV C_VerifyUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen)
{
	struct p11_session *s;
	struct p11_op *op;
	CK_RV rv = op_get(hSession, P11_OP_VERIFY, &s, &op);

	if (rv != CKR_OK)
		return rv;
	rv = !pPart && ulPartLen ? CKR_ARGUMENTS_BAD : sig_update(op, pPart, ulPartLen);
	return op_step(s, P11_OP_VERIFY, rv, "C_VerifyUpdate");
}

P11_EXPORT CK_RV C_VerifyFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature,
                               CK_ULONG ulSignatureLen)
{
	struct p11_session *s;
	struct p11_op *op;
	const uint8_t *in;
	size_t n;
	CK_RV rv = op_get(hSession, P11_OP_VERIFY, &s, &op);

	if (rv != CKR_OK)
		return rv;
	if (!pSignature && ulSignatureLen)
		rv = CKR_ARGUMENTS_BAD;
	else if ((rv = sig_final_input(op, &in, &n)) == CKR_OK)
		rv = p11_mech_verify(s, op, in, n, pSignature, ulSignatureLen);
	return op_done(s, P11_OP_VERIFY, rv, false, "C_VerifyFinal");
}

P11_EXPORT CK_RV C_VerifyRecoverInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                                     CK_OBJECT_HANDLE hKey)
{
	return op_init(hSession, P11_OP_VERIFY_RECOVER, pMechanism, hKey, true);
}

P11_EXPORT CK_RV C_VerifyRecover(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature,
                                 CK_ULONG ulSignatureLen, CK_BYTE_PTR pData,
                                 CK_ULONG_PTR pulDataLen)
{
	struct p11_session *s;
	struct p11_op *op;
	CK_RV rv = op_get(hSession, P11_OP_VERIFY_RECOVER, &s, &op);

	if (rv != CKR_OK)
		return rv;
	const struct p11_mop *st = op->state;
	size_t k = p11_key_bytes(op->key);
	if (!pulDataLen || (!pSignature && ulSignatureLen))
		rv = CKR_ARGUMENTS_BAD;
	else if (k && ulSignatureLen != k)
		rv = CKR_SIGNATURE_LEN_RANGE;
	else if (st->m->fam == P11_MF_RSA_X509)
		rv = deliver(s, op, p11_mech_vrecover, pSignature, ulSignatureLen, false,
		             k ? k : 1024, k != 0, pData, pulDataLen);
	else /* PKCS#1 v1.5: at most k - 11 bytes; only the HSM knows how many */
		rv = deliver(s, op, p11_mech_vrecover, pSignature, ulSignatureLen, false,
		             k > 11 ? k - 11 : 1024, false, pData, pulDataLen);
	return op_done(s, P11_OP_VERIFY_RECOVER, rv, pData == NULL, "C_VerifyRecover");
}

/* ======================================================================== */
/* Dual-function updates. Encryption and decryption give their output at
 * Final, so what C_DecryptDigestUpdate / C_DecryptVerifyUpdate would feed
 * to the digest or verification is the plaintext C_DecryptFinal returns:
 * the application digests or verifies that part itself, as PKCS#11 says
 * of tokens that hold back output. */

static CK_RV dual(CK_SESSION_HANDLE h, enum p11_op_kind first, enum p11_op_kind second,
                  CK_BYTE_PTR in, CK_ULONG n, CK_BYTE_PTR out, CK_ULONG_PTR out_len, const char *fn)
{
	struct p11_session *s;
	CK_RV rv = p11_session_get(h, &s);
	enum p11_op_kind failed = first;

	if (rv != CKR_OK)
		return rv;
	struct p11_op *a = &s->op[first], *b = &s->op[second];
	if (!a->active || !b->active) {
		p11_session_put(s);
		return CKR_OPERATION_NOT_INITIALIZED;
	}
	if (!out_len || (!in && n)) {
		rv = CKR_ARGUMENTS_BAD;
		failed = first;
		goto out;
	}
	if (!out) {
		*out_len = 0;
		goto out;
	}
	/* the data goes to both operations: digest / sign it, and gather it
	 * for encryption; or gather it for decryption (no plaintext yet) */
	failed = first;
	switch (first) {
	case P11_OP_DIGEST:
		rv = digest_update(a, in, n);
		break;
	case P11_OP_SIGN:
		rv = sig_update(a, in, n);
		break;
	default: /* P11_OP_DECRYPT */
		rv = acc_put(a, in, n, CKR_ENCRYPTED_DATA_LEN_RANGE);
		a->multi = true;
		break;
	}
	if (rv == CKR_OK && second == P11_OP_ENCRYPT) {
		failed = second;
		if ((rv = acc_put(b, in, n, CKR_DATA_LEN_RANGE)) == CKR_OK)
			b->multi = true;
	} else if (rv == CKR_OK) {
		b->multi = true; /* it has taken part (no bytes yet) */
	}
	if (rv == CKR_OK)
		*out_len = 0;
out:
	if (rv != CKR_OK)
		p11_op_end(s, failed);
	p11_session_put(s);
	return logged(fn, rv);
}

P11_EXPORT CK_RV C_DigestEncryptUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart,
                                       CK_ULONG ulPartLen, CK_BYTE_PTR pEncryptedPart,
                                       CK_ULONG_PTR pulEncryptedPartLen)
{
	return dual(hSession, P11_OP_DIGEST, P11_OP_ENCRYPT, pPart, ulPartLen, pEncryptedPart,
	            pulEncryptedPartLen, "C_DigestEncryptUpdate");
}

P11_EXPORT CK_RV C_DecryptDigestUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedPart,
                                       CK_ULONG ulEncryptedPartLen, CK_BYTE_PTR pPart,
                                       CK_ULONG_PTR pulPartLen)
{
	return dual(hSession, P11_OP_DECRYPT, P11_OP_DIGEST, pEncryptedPart, ulEncryptedPartLen,
	            pPart, pulPartLen, "C_DecryptDigestUpdate");
}

P11_EXPORT CK_RV C_SignEncryptUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart,
                                     CK_ULONG ulPartLen, CK_BYTE_PTR pEncryptedPart,
                                     CK_ULONG_PTR pulEncryptedPartLen)
{
	return dual(hSession, P11_OP_SIGN, P11_OP_ENCRYPT, pPart, ulPartLen, pEncryptedPart,
	            pulEncryptedPartLen, "C_SignEncryptUpdate");
}

P11_EXPORT CK_RV C_DecryptVerifyUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedPart,
                                       CK_ULONG ulEncryptedPartLen, CK_BYTE_PTR pPart,
                                       CK_ULONG_PTR pulPartLen)
{
	return dual(hSession, P11_OP_DECRYPT, P11_OP_VERIFY, pEncryptedPart, ulEncryptedPartLen,
	            pPart, pulPartLen, "C_DecryptVerifyUpdate");
}

/* ======================================================================== */
/* 3.0 message-based functions: AES-GCM messages, and one-shot signatures
 * with any signing mechanism. The multi-part forms (Begin/Next) are not
 * offered. A message call never ends the message-based operation; only
 * its Final does. */

P11_EXPORT CK_RV C_MessageEncryptInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                                      CK_OBJECT_HANDLE hKey)
{
	return op_init(hSession, P11_OP_MSG_ENCRYPT, pMechanism, hKey, true);
}

/* One GCM message: ct (ciphertext or plaintext, n bytes) through GPSE or
 * GPSD with the message's parameters; the tag goes to or comes from
 * p->pTag, a generated IV to p->pIv. */
static CK_RV gcm_message(struct p11_session *s, struct p11_op *op, bool enc, CK_VOID_PTR param,
                         CK_ULONG plen, CK_BYTE_PTR aad, CK_ULONG aad_len, CK_BYTE_PTR in,
                         CK_ULONG n, CK_BYTE_PTR out, CK_ULONG_PTR out_len)
{
	const struct p11_gcm_msg_params *p = param;
	struct p11_rq r = {0};
	struct kh_buf *res = NULL;
	size_t tag_len;
	bool gen;
	CK_RV rv;

	if (!param || !out_len || (!aad && aad_len) || (!in && n))
		return CKR_ARGUMENTS_BAD;
	if (plen != sizeof(*p) || !p->pTag || !p->pIv || p->ulIvLen == 0 ||
	    p->ulIvLen > P11_GCM_IV_MAX || p11_mech_gcm_tag(p->ulTagBits, &tag_len) != CKR_OK)
		return CKR_MECHANISM_PARAM_INVALID;
	/* IVs: the application's, or 12 random bytes the HSM makes (counters
	 * and fixed fields are not offered) */
	gen = enc && p->ivGenerator != CKG_NO_GENERATE;
	if (gen && ((p->ivGenerator != CKG_GENERATE && p->ivGenerator != CKG_GENERATE_RANDOM) ||
	            p->ulIvFixedBits != 0 || p->ulIvLen != 12))
		return CKR_MECHANISM_PARAM_INVALID;
	if (n + aad_len > P11_MAX_DATA || n + aad_len < n)
		return enc ? CKR_DATA_LEN_RANGE : CKR_ENCRYPTED_DATA_LEN_RANGE;
	if (!out) {
		*out_len = n;
		return CKR_OK;
	}
	if (*out_len < n) {
		*out_len = n;
		return CKR_BUFFER_TOO_SMALL;
	}
	if ((rv = p11_rq_begin(&r, enc ? "GPSE" : "GPSD")) != CKR_OK)
		return rv;
	p11_rq_key(&r, op->key, "SL", "KD", "CG");
	p11_rq_put(&r, "AL", "GCM");
	if (!gen)
		p11_rq_hex(&r, "IV", p->pIv, p->ulIvLen);
	if (aad_len)
		p11_rq_hex(&r, "AD", aad, aad_len);
	if (enc)
		p11_rq_u64(&r, "TL", tag_len);
	else
		p11_rq_hex(&r, "TG", p->pTag, tag_len);
	p11_rq_hex(&r, "DT", in, n);
	rv = p11_rq_run(s, &r, P11_CALL_BALANCE);
	if (r.kerr == KH_ERR_DECRYPT_FAILED)
		rv = CKR_ENCRYPTED_DATA_INVALID;
	if (rv == CKR_OK && !(res = kh_buf_new(P11_RES_MAX)))
		rv = CKR_HOST_MEMORY;
	if (rv == CKR_OK && (rv = p11_rq_field(&r, "DT", res)) == CKR_OK && kh_buf_len(res) != n)
		rv = CKR_DEVICE_ERROR;
	if (rv == CKR_OK && enc) {
		size_t got;
		if (kh_frame_hex(&r.f, "TG", p->pTag, tag_len, &got) != KH_OK || got != tag_len ||
		    (gen && (kh_frame_hex(&r.f, "IV", p->pIv, p->ulIvLen, &got) != KH_OK ||
		             got != p->ulIvLen)))
			rv = CKR_DEVICE_ERROR;
	}
	if (rv == CKR_OK)
		rv = p11_out(kh_buf_ptr(res), n, out, out_len);
	kh_buf_free(res);
	p11_rq_free(&r);
	return rv;
}

static CK_RV message(CK_SESSION_HANDLE h, enum p11_op_kind k, CK_VOID_PTR param, CK_ULONG plen,
                     CK_BYTE_PTR aad, CK_ULONG aad_len, CK_BYTE_PTR in, CK_ULONG n, CK_BYTE_PTR out,
                     CK_ULONG_PTR out_len, const char *fn)
{
	struct p11_session *s;
	struct p11_op *op;
	CK_RV rv = op_get(h, k, &s, &op);

	if (rv != CKR_OK)
		return rv;
	rv = gcm_message(s, op, k == P11_OP_MSG_ENCRYPT, param, plen, aad, aad_len, in, n, out,
	                 out_len);
	p11_session_put(s);
	return logged(fn, rv);
}

static CK_RV message_final(CK_SESSION_HANDLE h, enum p11_op_kind k)
{
	struct p11_session *s;
	struct p11_op *op;
	CK_RV rv = op_get(h, k, &s, &op);

	if (rv != CKR_OK)
		return rv;
	p11_op_end(s, k);
	p11_session_put(s);
	return CKR_OK;
}

/* Begin/Next: a message in parts is not offered. */
static CK_RV message_parts(CK_SESSION_HANDLE h, enum p11_op_kind k)
{
	struct p11_session *s;
	struct p11_op *op;
	CK_RV rv = op_get(h, k, &s, &op);

	if (rv != CKR_OK)
		return rv;
	p11_session_put(s);
	return CKR_FUNCTION_NOT_SUPPORTED;
}

P11_EXPORT CK_RV C_EncryptMessage(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
                                  CK_ULONG ulParameterLen, CK_BYTE_PTR pAssociatedData,
                                  CK_ULONG ulAssociatedDataLen, CK_BYTE_PTR pPlaintext,
                                  CK_ULONG ulPlaintextLen, CK_BYTE_PTR pCiphertext,
                                  CK_ULONG_PTR pulCiphertextLen)
{
	return message(hSession, P11_OP_MSG_ENCRYPT, pParameter, ulParameterLen, pAssociatedData,
	               ulAssociatedDataLen, pPlaintext, ulPlaintextLen, pCiphertext,
	               pulCiphertextLen, "C_EncryptMessage");
}

P11_EXPORT CK_RV C_EncryptMessageBegin(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
                                       CK_ULONG ulParameterLen, CK_BYTE_PTR pAssociatedData,
                                       CK_ULONG ulAssociatedDataLen)
{
	return message_parts(hSession, P11_OP_MSG_ENCRYPT);
}

P11_EXPORT CK_RV C_EncryptMessageNext(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
                                      CK_ULONG ulParameterLen, CK_BYTE_PTR pPlaintextPart,
                                      CK_ULONG ulPlaintextPartLen, CK_BYTE_PTR pCiphertextPart,
                                      CK_ULONG_PTR pulCiphertextPartLen, CK_FLAGS flags)
{
	return message_parts(hSession, P11_OP_MSG_ENCRYPT);
}

P11_EXPORT CK_RV C_MessageEncryptFinal(CK_SESSION_HANDLE hSession)
{
	return message_final(hSession, P11_OP_MSG_ENCRYPT);
}

P11_EXPORT CK_RV C_MessageDecryptInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                                      CK_OBJECT_HANDLE hKey)
{
	return op_init(hSession, P11_OP_MSG_DECRYPT, pMechanism, hKey, true);
}

P11_EXPORT CK_RV C_DecryptMessage(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
                                  CK_ULONG ulParameterLen, CK_BYTE_PTR pAssociatedData,
                                  CK_ULONG ulAssociatedDataLen, CK_BYTE_PTR pCiphertext,
                                  CK_ULONG ulCiphertextLen, CK_BYTE_PTR pPlaintext,
                                  CK_ULONG_PTR pulPlaintextLen)
{
	return message(hSession, P11_OP_MSG_DECRYPT, pParameter, ulParameterLen, pAssociatedData,
	               ulAssociatedDataLen, pCiphertext, ulCiphertextLen, pPlaintext,
	               pulPlaintextLen, "C_DecryptMessage");
}

P11_EXPORT CK_RV C_DecryptMessageBegin(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
                                       CK_ULONG ulParameterLen, CK_BYTE_PTR pAssociatedData,
                                       CK_ULONG ulAssociatedDataLen)
{
	return message_parts(hSession, P11_OP_MSG_DECRYPT);
}

P11_EXPORT CK_RV C_DecryptMessageNext(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
                                      CK_ULONG ulParameterLen, CK_BYTE_PTR pCiphertextPart,
                                      CK_ULONG ulCiphertextPartLen, CK_BYTE_PTR pPlaintextPart,
                                      CK_ULONG_PTR pulPlaintextPartLen, CK_FLAGS flags)
{
	return message_parts(hSession, P11_OP_MSG_DECRYPT);
}

P11_EXPORT CK_RV C_MessageDecryptFinal(CK_SESSION_HANDLE hSession)
{
	return message_final(hSession, P11_OP_MSG_DECRYPT);
}

P11_EXPORT CK_RV C_MessageSignInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                                   CK_OBJECT_HANDLE hKey)
{
	return op_init(hSession, P11_OP_MSG_SIGN, pMechanism, hKey, true);
}

P11_EXPORT CK_RV C_SignMessage(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
                               CK_ULONG ulParameterLen, CK_BYTE_PTR pData, CK_ULONG ulDataLen,
                               CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen)
{
	struct p11_session *s;
	struct p11_op *op;
	CK_RV rv = op_get(hSession, P11_OP_MSG_SIGN, &s, &op);

	if (rv != CKR_OK)
		return rv;
	/* the signing mechanisms take no per-message parameter */
	rv = pParameter || ulParameterLen
	         ? CKR_MECHANISM_PARAM_INVALID
	         : sign_one(s, op, pData, ulDataLen, pSignature, pulSignatureLen);
	p11_session_put(s);
	return logged("C_SignMessage", rv);
}

P11_EXPORT CK_RV C_SignMessageBegin(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
                                    CK_ULONG ulParameterLen)
{
	return message_parts(hSession, P11_OP_MSG_SIGN);
}

P11_EXPORT CK_RV C_SignMessageNext(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
                                   CK_ULONG ulParameterLen, CK_BYTE_PTR pDataPart,
                                   CK_ULONG ulDataPartLen, CK_BYTE_PTR pSignature,
                                   CK_ULONG_PTR pulSignatureLen)
{
	return message_parts(hSession, P11_OP_MSG_SIGN);
}

P11_EXPORT CK_RV C_MessageSignFinal(CK_SESSION_HANDLE hSession)
{
	return message_final(hSession, P11_OP_MSG_SIGN);
}

P11_EXPORT CK_RV C_MessageVerifyInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                                     CK_OBJECT_HANDLE hKey)
{
	return op_init(hSession, P11_OP_MSG_VERIFY, pMechanism, hKey, true);
}

P11_EXPORT CK_RV C_VerifyMessage(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
                                 CK_ULONG ulParameterLen, CK_BYTE_PTR pData, CK_ULONG ulDataLen,
                                 CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen)
{
	struct p11_session *s;
	struct p11_op *op;
	CK_RV rv = op_get(hSession, P11_OP_MSG_VERIFY, &s, &op);

	if (rv != CKR_OK)
		return rv;
	rv = pParameter || ulParameterLen
	         ? CKR_MECHANISM_PARAM_INVALID
	         : verify_one(s, op, pData, ulDataLen, pSignature, ulSignatureLen);
	p11_session_put(s);
	return logged("C_VerifyMessage", rv);
}

P11_EXPORT CK_RV C_VerifyMessageBegin(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
                                      CK_ULONG ulParameterLen)
{
	return message_parts(hSession, P11_OP_MSG_VERIFY);
}

P11_EXPORT CK_RV C_VerifyMessageNext(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
                                     CK_ULONG ulParameterLen, CK_BYTE_PTR pDataPart,
                                     CK_ULONG ulDataPartLen, CK_BYTE_PTR pSignature,
                                     CK_ULONG ulSignatureLen)
{
	return message_parts(hSession, P11_OP_MSG_VERIFY);
}

P11_EXPORT CK_RV C_MessageVerifyFinal(CK_SESSION_HANDLE hSession)
{
	return message_final(hSession, P11_OP_MSG_VERIFY);
}

/* ======================================================================== */
/* Wrapping, unwrapping, derivation */

/* The key-wrap mechanism and its parameter: CKM_AES_KEY_WRAP(_PAD) take
 * only the RFC's default IV (absent, or given as it is), OAEP its params. */
static CK_RV wrap_mech(const CK_MECHANISM *mech, const struct p11_mech **m, struct p11_mop *st)
{
	static const uint8_t kw_iv[8] = {0xA6, 0xA6, 0xA6, 0xA6, 0xA6, 0xA6, 0xA6, 0xA6};
	static const uint8_t kwp_iv[4] = {0xA6, 0x59, 0x59, 0xA6};

	if (!(*m = p11_mech_find(mech->mechanism)) || !(p11_mech_flags(*m, &all_caps) & CKF_WRAP))
		return CKR_MECHANISM_INVALID;
	st->m = *m;
	switch ((*m)->fam) {
	case P11_MF_RSA_OAEP:
		return p11_mech_oaep(mech, st);
	case P11_MF_AES_KW:
		if (mech->ulParameterLen == 0 || (mech->pParameter && mech->ulParameterLen == 8 &&
		                                  memcmp(mech->pParameter, kw_iv, 8) == 0))
			return CKR_OK;
		return CKR_MECHANISM_PARAM_INVALID;
	default: /* KWP */
		if (mech->ulParameterLen == 0 || (mech->pParameter && mech->ulParameterLen == 4 &&
		                                  memcmp(mech->pParameter, kwp_iv, 4) == 0))
			return CKR_OK;
		return CKR_MECHANISM_PARAM_INVALID;
	}
}

static const char *wrap_alg(enum p11_mfam f)
{
	return f == P11_MF_RSA_OAEP ? "OAEP" : f == P11_MF_AES_KW ? "KW" : "KWP";
}

P11_EXPORT CK_RV C_WrapKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                           CK_OBJECT_HANDLE hWrappingKey, CK_OBJECT_HANDLE hKey,
                           CK_BYTE_PTR pWrappedKey, CK_ULONG_PTR pulWrappedKeyLen)
{
	struct p11_session *s;
	struct p11_obj *w = NULL, *o = NULL;
	struct p11_mop st = {0};
	const struct p11_mech *m;
	struct p11_rq r = {0};
	struct kh_buf *res = NULL;
	size_t need = 0, len;
	CK_RV rv = p11_session_get(hSession, &s);

	if (rv != CKR_OK)
		return rv;
	if (!pMechanism || !pulWrappedKeyLen) {
		rv = CKR_ARGUMENTS_BAD;
		goto out;
	}
	if ((rv = wrap_mech(pMechanism, &m, &st)) != CKR_OK)
		goto out;
	if ((rv = key_get(s, hWrappingKey, CKR_WRAPPING_KEY_HANDLE_INVALID, &w)) != CKR_OK)
		goto out;
	if ((rv = p11_mech_key_fits(w, m, P11_USE_WRAP)) != CKR_OK) {
		if (rv != CKR_KEY_FUNCTION_NOT_PERMITTED)
			rv = CKR_WRAPPING_KEY_TYPE_INCONSISTENT;
		goto out;
	}
	if ((rv = key_get(s, hKey, CKR_KEY_HANDLE_INVALID, &o)) != CKR_OK)
		goto out;
	if (o->cls != CKO_SECRET_KEY && o->cls != CKO_PRIVATE_KEY) {
		rv = o->cls == CKO_PUBLIC_KEY ? CKR_KEY_NOT_WRAPPABLE : CKR_KEY_HANDLE_INVALID;
		goto out;
	}
	if (!(o->flags & P11_F_EXPORTABLE)) {
		rv = CKR_KEY_UNEXTRACTABLE;
		goto out;
	}
	/* what each algorithm can carry, and the wrapped length when known
	 * beforehand (a private key's PKCS#8 length is only known by wrapping;
	 * len 0: a secret key's length is not known here, the HSM decides) */
	len = (size_t)(o->bits / 8);
	if (m->fam == P11_MF_AES_KW) {
		/* RFC 3394 takes whole 8-byte blocks, at least two: KWP does the rest */
		if (o->cls != CKO_SECRET_KEY || (len && (len < 16 || len % 8))) {
			rv = CKR_KEY_NOT_WRAPPABLE;
			goto out;
		}
		need = len ? len + 8 : 0;
	} else if (m->fam == P11_MF_AES_KWP) {
		need = o->cls == CKO_SECRET_KEY && len ? (len + 7) / 8 * 8 + 8 : 0;
	} else {
		size_t k = p11_key_bytes(w);
		if (o->cls != CKO_SECRET_KEY) {
			rv = CKR_KEY_NOT_WRAPPABLE;
			goto out;
		}
		if (k && (k < 2 * st.ph->len + 2 || len > k - 2 * st.ph->len - 2)) {
			rv = CKR_KEY_SIZE_RANGE;
			goto out;
		}
		need = k;
	}
	if (need && !pWrappedKey) {
		*pulWrappedKeyLen = need;
		goto out;
	}
	if (need && *pulWrappedKeyLen < need) {
		*pulWrappedKeyLen = need;
		rv = CKR_BUFFER_TOO_SMALL;
		goto out;
	}
	if ((rv = p11_rq_begin(&r, "GPKW")) != CKR_OK)
		goto out;
	p11_rq_key(&r, w, "SL", "KD", "CG");
	p11_rq_key(&r, o, "S2", "K2", "C2");
	p11_rq_put(&r, "AL", wrap_alg(m->fam));
	if (m->fam == P11_MF_RSA_OAEP)
		p11_rq_oaep(&r, &st);
	rv = p11_rq_run(s, &r, P11_CALL_BALANCE);
	if (r.kerr == KH_ERR_BAD_FIELD)
		rv = CKR_KEY_NOT_WRAPPABLE;
	if (rv == CKR_OK && !(res = kh_buf_new(P11_RES_MAX)))
		rv = CKR_HOST_MEMORY;
	if (rv == CKR_OK && (rv = p11_rq_field(&r, "WK", res)) == CKR_OK)
		rv = p11_out(kh_buf_ptr(res), kh_buf_len(res), pWrappedKey, pulWrappedKeyLen);
out:
	kh_buf_free(res);
	p11_rq_free(&r);
	if (st.label) {
		kh_wipe(st.label, st.label_len);
		free(st.label);
	}
	if (w)
		p11_obj_put(w);
	if (o)
		p11_obj_put(o);
	p11_session_put(s);
	return logged("C_WrapKey", rv);
}

/* CKA_CLASS or CKA_KEY_TYPE as the template gives it, else def (a value
 * that cannot be read is left to p11_tmpl_parse to refuse). */
static CK_ULONG tmpl_ulong(const CK_ATTRIBUTE *t, CK_ULONG n, CK_ATTRIBUTE_TYPE type, CK_ULONG def)
{
	CK_ULONG v;
	for (CK_ULONG i = 0; t && i < n; i++)
		if (t[i].type == type && t[i].pValue && t[i].ulValueLen == sizeof(v)) {
			memcpy(&v, t[i].pValue, sizeof(v));
			return v;
		}
	return def;
}

/* A new session secret key's length when the template did not give it:
 * from its cryptogram's header (bits, big-endian, at byte 10), so that
 * CKA_VALUE_LEN and wrapping know it. */
static void newkey_len(struct p11_newkey *nk, const struct kh_frame *f)
{
	const struct kh_field *fl = kh_frame_get(f, "BG");
	uint8_t h[14];

	if (nk->cls != CKO_SECRET_KEY || nk->value_len || !fl || fl->len < 2 * sizeof(h) ||
	    kh_hex_decode(fl->val, 2 * sizeof(h), h, sizeof(h)) != (int)sizeof(h) || h[0] != 'K' ||
	    h[1] != 'H' || h[2] != 'C' || h[3] != '1')
		return;
	nk->value_len =
	    ((CK_ULONG)h[10] << 24 | (CK_ULONG)h[11] << 16 | (CK_ULONG)h[12] << 8 | h[13]) / 8;
}

/* A new key's class and type as GPKU / GPDK name them. */
static CK_RV new_key_kind(const struct p11_newkey *nk, const char **cl, const char **kt)
{
	*cl = p11_class_name(nk->cls);
	*kt = p11_ktype_name(nk->ktype); /* HMAC key types are generic secrets there */
	if (!*cl || !*kt || (nk->cls != CKO_SECRET_KEY && nk->cls != CKO_PRIVATE_KEY))
		return CKR_TEMPLATE_INCONSISTENT;
	if ((nk->cls == CKO_SECRET_KEY) !=
	    (nk->ktype == CKK_AES || nk->ktype == CKK_GENERIC_SECRET ||
	     p11_is_hmac_ktype(nk->ktype)))
		return CKR_TEMPLATE_INCONSISTENT;
	return CKR_OK;
}

P11_EXPORT CK_RV C_UnwrapKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                             CK_OBJECT_HANDLE hUnwrappingKey, CK_BYTE_PTR pWrappedKey,
                             CK_ULONG ulWrappedKeyLen, CK_ATTRIBUTE_PTR pTemplate,
                             CK_ULONG ulAttributeCount, CK_OBJECT_HANDLE_PTR phKey)
{
	struct p11_session *s;
	struct p11_obj *u = NULL;
	struct p11_newkey nk;
	struct p11_mop st = {0};
	const struct p11_mech *m;
	struct p11_rq r = {0};
	const char *cl, *kt;
	CK_OBJECT_CLASS cls;
	CK_KEY_TYPE ktype;
	CK_RV rv = p11_session_get(hSession, &s);

	if (rv != CKR_OK)
		return rv;
	memset(&nk, 0, sizeof(nk));
	if (!pMechanism || !phKey || (!pWrappedKey && ulWrappedKeyLen) ||
	    (!pTemplate && ulAttributeCount)) {
		rv = CKR_ARGUMENTS_BAD;
		goto out;
	}
	if ((rv = wrap_mech(pMechanism, &m, &st)) != CKR_OK)
		goto out;
	if ((rv = key_get(s, hUnwrappingKey, CKR_UNWRAPPING_KEY_HANDLE_INVALID, &u)) != CKR_OK)
		goto out;
	if ((rv = p11_mech_key_fits(u, m, P11_USE_UNWRAP)) != CKR_OK) {
		if (rv != CKR_KEY_FUNCTION_NOT_PERMITTED)
			rv = CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT;
		goto out;
	}
	/* lengths the algorithm cannot produce */
	if ((m->fam == P11_MF_AES_KW && (ulWrappedKeyLen < 24 || ulWrappedKeyLen % 8)) ||
	    (m->fam == P11_MF_AES_KWP && (ulWrappedKeyLen < 16 || ulWrappedKeyLen % 8)) ||
	    (m->fam == P11_MF_RSA_OAEP && p11_key_bytes(u) &&
	     ulWrappedKeyLen != p11_key_bytes(u)) ||
	    ulWrappedKeyLen == 0 || ulWrappedKeyLen > P11_MAX_DATA) {
		rv = CKR_WRAPPED_KEY_LEN_RANGE;
		goto out;
	}
	/* the template says what the wrapped key is: a secret key (generic
	 * unless it says otherwise) or, with its type, a private key */
	cls = tmpl_ulong(pTemplate, ulAttributeCount, CKA_CLASS, CKO_SECRET_KEY);
	ktype = tmpl_ulong(pTemplate, ulAttributeCount, CKA_KEY_TYPE,
	                   cls == CKO_SECRET_KEY ? CKK_GENERIC_SECRET : (CK_KEY_TYPE)-1);
	if (ktype == (CK_KEY_TYPE)-1) {
		rv = CKR_TEMPLATE_INCOMPLETE;
		goto out;
	}
	if ((rv = p11_tmpl_parse(pTemplate, ulAttributeCount, P11_TMPL_UNWRAP, cls, ktype, &nk)) !=
	    CKR_OK)
		goto out;
	if ((rv = new_key_kind(&nk, &cl, &kt)) != CKR_OK)
		goto out;
	if (nk.cls == CKO_PRIVATE_KEY && m->fam != P11_MF_AES_KWP) {
		rv = CKR_TEMPLATE_INCONSISTENT; /* a private key travels as PKCS#8 under KWP only */
		goto out;
	}
	if (nk.token && !p11_session_rw(s)) {
		rv = CKR_SESSION_READ_ONLY;
		goto out;
	}
	if (nk.priv && !p11_session_logged_in(s)) {
		rv = CKR_USER_NOT_LOGGED_IN; /* PKCS#11 5.1: only public objects before login */
		goto out;
	}
	if ((rv = p11_rq_begin(&r, "GPKU")) != CKR_OK)
		goto out;
	p11_rq_key(&r, u, "SL", "KD", "CG");
	p11_rq_put(&r, "AL", wrap_alg(m->fam));
	if (m->fam == P11_MF_RSA_OAEP)
		p11_rq_oaep(&r, &st);
	p11_rq_hex(&r, "WK", pWrappedKey, ulWrappedKeyLen);
	p11_rq_put(&r, "CL", cl);
	p11_rq_put(&r, "KT", kt);
	if (r.err == KH_OK)
		r.err = p11_newkey_put(&nk, r.req, "CZ", "KF", "DS");
	rv = p11_rq_run(s, &r, nk.token ? P11_CALL_PRIMARY : P11_CALL_BALANCE);
	if (r.kerr == KH_ERR_DECRYPT_FAILED)
		rv = CKR_WRAPPED_KEY_INVALID;
	else if (r.kerr == KH_ERR_BAD_FIELD)
		rv = CKR_TEMPLATE_INCONSISTENT; /* the key does not fit CL / KT */
	if (rv == CKR_OK) {
		newkey_len(&nk, &r.f);
		rv = p11_obj_from_resp(s, &nk, &r.f, "DS", "KD",
		                       nk.cls == CKO_SECRET_KEY ? "BG" : "RC", NULL, phKey);
	}
out:
	p11_rq_free(&r);
	p11_newkey_free(&nk);
	if (st.label) {
		kh_wipe(st.label, st.label_len);
		free(st.label);
	}
	if (u)
		p11_obj_put(u);
	p11_session_put(s);
	return logged("C_UnwrapKey", rv);
}

/* The peer's public key as GPDK's PP wants it: the raw point (04||X||Y, or
 * the 32 bytes of an X25519 key), unwrapped from a DER OCTET STRING when
 * the application sent it so. */
static void peer_point(const struct p11_obj *base, const uint8_t *p, size_t n, const uint8_t **pt,
                       size_t *len)
{
	bool x25519 = base->ktype == CKK_EC_MONTGOMERY;
	size_t want = x25519 ? 32 : 1 + 2 * p11_key_bytes(base), hdr = 0, l = 0;

	*pt = p;
	*len = n;
	if ((n == want && (x25519 || p[0] == 0x04)) || n < 2 || p[0] != 0x04)
		return;
	if (p[1] < 0x80)
		hdr = 2, l = p[1];
	else if (p[1] == 0x81 && n >= 3)
		hdr = 3, l = p[2];
	else if (p[1] == 0x82 && n >= 4)
		hdr = 4, l = (size_t)p[2] << 8 | p[3];
	if (hdr && hdr + l == n && (!p11_key_bytes(base) || l == want)) {
		*pt = p + hdr;
		*len = l;
	}
}

static const char *ecdh_kdf(CK_ULONG kdf)
{
	switch (kdf) {
	case CKD_NULL:
		return "NULL";
	case CKD_SHA256_KDF:
		return "X963-SHA256";
	case CKD_SHA384_KDF:
		return "X963-SHA384";
	case CKD_SHA512_KDF:
		return "X963-SHA512";
	default:
		return NULL;
	}
}

P11_EXPORT CK_RV C_DeriveKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                             CK_OBJECT_HANDLE hBaseKey, CK_ATTRIBUTE_PTR pTemplate,
                             CK_ULONG ulAttributeCount, CK_OBJECT_HANDLE_PTR phKey)
{
	struct p11_session *s;
	struct p11_obj *b = NULL;
	struct p11_newkey nk;
	const struct p11_mech *m;
	const CK_ECDH1_DERIVE_PARAMS *p;
	const char *kdf;
	const uint8_t *pt;
	size_t pt_len, zlen;
	bool aes;
	struct p11_rq r = {0};
	CK_RV rv = p11_session_get(hSession, &s);

	if (rv != CKR_OK)
		return rv;
	memset(&nk, 0, sizeof(nk));
	if (!pMechanism || !phKey || (!pTemplate && ulAttributeCount)) {
		rv = CKR_ARGUMENTS_BAD;
		goto out;
	}
	if (!(m = p11_mech_find(pMechanism->mechanism)) || m->fam != P11_MF_ECDH) {
		rv = CKR_MECHANISM_INVALID;
		goto out;
	}
	p = pMechanism->pParameter;
	if (!p || pMechanism->ulParameterLen != sizeof(*p) || !(kdf = ecdh_kdf(p->kdf)) ||
	    !p->pPublicData || p->ulPublicDataLen == 0 || p->ulPublicDataLen > 1024 ||
	    (!p->pSharedData && p->ulSharedDataLen) || p->ulSharedDataLen > P11_LABEL_MAX ||
	    (p->kdf == CKD_NULL && p->ulSharedDataLen)) {
		rv = CKR_MECHANISM_PARAM_INVALID;
		goto out;
	}
	if ((rv = key_get(s, hBaseKey, CKR_KEY_HANDLE_INVALID, &b)) != CKR_OK ||
	    (rv = p11_mech_key_fits(b, m, P11_USE_DERIVE)) != CKR_OK)
		goto out;
	/* a secret key; generic unless the template names AES or an HMAC type */
	if ((rv = p11_tmpl_parse(
	         pTemplate, ulAttributeCount, P11_TMPL_DERIVE, CKO_SECRET_KEY,
	         tmpl_ulong(pTemplate, ulAttributeCount, CKA_KEY_TYPE, CKK_GENERIC_SECRET), &nk)) !=
	    CKR_OK)
		goto out;
	aes = nk.ktype == CKK_AES;
	if (nk.cls != CKO_SECRET_KEY ||
	    !(aes || nk.ktype == CKK_GENERIC_SECRET || p11_is_hmac_ktype(nk.ktype))) {
		rv = CKR_TEMPLATE_INCONSISTENT;
		goto out;
	}
	/* the new key's length: AES needs CKA_VALUE_LEN; a generic secret
	 * takes the whole shared secret under CKD_NULL, and needs a length
	 * with a KDF */
	zlen = b->ktype == CKK_EC_MONTGOMERY ? 32 : p11_key_bytes(b);
	if ((aes && nk.value_len != 16 && nk.value_len != 24 && nk.value_len != 32) ||
	    (!aes && nk.value_len > 16320)) {
		rv = nk.value_len ? CKR_ATTRIBUTE_VALUE_INVALID : CKR_TEMPLATE_INCOMPLETE;
		goto out;
	}
	if (!aes && !nk.value_len && p->kdf != CKD_NULL) {
		rv = CKR_TEMPLATE_INCOMPLETE;
		goto out;
	}
	if (p->kdf == CKD_NULL && zlen && nk.value_len > zlen) {
		rv = CKR_TEMPLATE_INCONSISTENT; /* longer than the shared secret: use a KDF */
		goto out;
	}
	if (nk.token && !p11_session_rw(s)) {
		rv = CKR_SESSION_READ_ONLY;
		goto out;
	}
	if (nk.priv && !p11_session_logged_in(s)) {
		rv = CKR_USER_NOT_LOGGED_IN; /* PKCS#11 5.1: only public objects before login */
		goto out;
	}
	peer_point(b, p->pPublicData, p->ulPublicDataLen, &pt, &pt_len);
	if ((rv = p11_rq_begin(&r, "GPDK")) != CKR_OK)
		goto out;
	p11_rq_key(&r, b, "SL", "KD", "CG");
	p11_rq_put(&r, "KF", kdf);
	if (p->ulSharedDataLen)
		p11_rq_hex(&r, "SI", p->pSharedData, p->ulSharedDataLen);
	p11_rq_hex(&r, "PP", pt, pt_len);
	if (aes) {
		p11_rq_put(&r, "CT", nk.value_len == 16 ? "4" : nk.value_len == 24 ? "5" : "6");
	} else {
		p11_rq_put(&r, "CT", "7");
		if (nk.value_len)
			p11_rq_u64(&r, "LN", nk.value_len);
	}
	if (r.err == KH_OK)
		r.err = p11_newkey_put(&nk, r.req, "CZ", "NF", "DS");
	rv = p11_rq_run(s, &r, nk.token ? P11_CALL_PRIMARY : P11_CALL_BALANCE);
	/* a peer point of the wrong form, off the curve or of small order */
	if (r.kerr == KH_ERR_BAD_FIELD || r.kerr == KH_ERR_CRYPTO)
		rv = CKR_MECHANISM_PARAM_INVALID;
	if (rv == CKR_OK) {
		newkey_len(&nk, &r.f);
		rv = p11_obj_from_resp(s, &nk, &r.f, "DS", "KD", "BG", NULL, phKey);
	}
out:
	p11_rq_free(&r);
	p11_newkey_free(&nk);
	if (b)
		p11_obj_put(b);
	p11_session_put(s);
	return logged("C_DeriveKey", rv);
}

/* ======================================================================== */
/* Random numbers: from the HSM's DRBG */

P11_EXPORT CK_RV C_SeedRandom(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSeed, CK_ULONG ulSeedLen)
{
	struct p11_session *s;
	CK_RV rv = p11_session_get(hSession, &s);

	if (rv != CKR_OK)
		return rv;
	p11_session_put(s);
	if (!pSeed && ulSeedLen)
		return CKR_ARGUMENTS_BAD;
	return CKR_RANDOM_SEED_NOT_SUPPORTED; /* the HSM seeds its own DRBG */
}

P11_EXPORT CK_RV C_GenerateRandom(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pRandomData,
                                  CK_ULONG ulRandomLen)
{
	struct p11_session *s;
	CK_RV rv = p11_session_get(hSession, &s);
	size_t off = 0;

	if (rv != CKR_OK)
		return rv;
	if (!pRandomData && ulRandomLen)
		rv = CKR_ARGUMENTS_BAD;
	while (rv == CKR_OK && off < ulRandomLen) {
		size_t n = ulRandomLen - off < RAND_CHUNK ? ulRandomLen - off : RAND_CHUNK, got = 0;
		struct p11_rq r = {0};
		if ((rv = p11_rq_begin(&r, "RAND")) != CKR_OK)
			break;
		p11_rq_u64(&r, "NB", n);
		if ((rv = p11_rq_run(s, &r, P11_CALL_BALANCE)) == CKR_OK &&
		    (kh_frame_hex(&r.f, "RN", pRandomData + off, n, &got) != KH_OK || got != n))
			rv = CKR_DEVICE_ERROR;
		p11_rq_free(&r);
		off += n;
	}
	if (rv != CKR_OK && pRandomData)
		kh_wipe(pRandomData, ulRandomLen); /* never half of a random string */
	p11_session_put(s);
	return logged("C_GenerateRandom", rv);
}

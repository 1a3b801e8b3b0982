/*
 * How each mechanism runs on the HSM: the mechanism table, C_GetMechanismList
 * and C_GetMechanismInfo (true to the slot's HSM: FIPS mode and minimum RSA
 * size from PRMD), parameter parsing, key checks, lengths, and the Excrypt
 * request of every operation. p11_crypto.c keeps PKCS#11's calling
 * conventions. Nothing here sees key material; it must never claim a
 * mechanism or flag that this module (or p11_keygen.c) cannot do.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "pkcs11/p11.h"
#include "pkcs11/p11_attr.h"
#include "pkcs11/p11_log.h"
#include "pkcs11/p11_mech.h"
#include "common/kh_pool.h"
#include "common/kh_buf.h"
#include "common/kh_frame.h"
#include "common/kh_mem.h"

/* ---- hashes ---- */

enum {
	H_SHA1,
	H_SHA224,
	H_SHA256,
	H_SHA384,
	H_SHA512,
	H_SHA3_224,
	H_SHA3_256,
	H_SHA3_384,
	H_SHA3_512
};

static const struct p11_hash hashes[] = {
    [H_SHA1] = {CKM_SHA_1, CKG_MGF1_SHA1, "SHA-1", "SHA1", 20},
    [H_SHA224] = {CKM_SHA224, CKG_MGF1_SHA224, "SHA-224", "SHA224", 28},
    [H_SHA256] = {CKM_SHA256, CKG_MGF1_SHA256, "SHA-256", "SHA256", 32},
    [H_SHA384] = {CKM_SHA384, CKG_MGF1_SHA384, "SHA-384", "SHA384", 48},
    [H_SHA512] = {CKM_SHA512, CKG_MGF1_SHA512, "SHA-512", "SHA512", 64},
    [H_SHA3_224] = {CKM_SHA3_224, CKG_MGF1_SHA3_224, "SHA3-224", "SHA3-224", 28},
    [H_SHA3_256] = {CKM_SHA3_256, CKG_MGF1_SHA3_256, "SHA3-256", "SHA3-256", 32},
    [H_SHA3_384] = {CKM_SHA3_384, CKG_MGF1_SHA3_384, "SHA3-384", "SHA3-384", 48},
    [H_SHA3_512] = {CKM_SHA3_512, CKG_MGF1_SHA3_512, "SHA3-512", "SHA3-512", 64},
};
#define NHASHES (sizeof(hashes) / sizeof(hashes[0]))

const struct p11_hash *p11_hash_by_ckm(CK_MECHANISM_TYPE t)
{
	for (size_t i = 0; i < NHASHES; i++)
		if (hashes[i].ckm == t)
			return &hashes[i];
	return NULL;
}

const struct p11_hash *p11_hash_by_mgf(CK_RSA_PKCS_MGF_TYPE g)
{
	for (size_t i = 0; i < NHASHES; i++)
		if (hashes[i].mgf == g)
			return &hashes[i];
	return NULL;
}

const struct p11_hash *p11_hash_by_len(size_t n)
{
	/* SHA-2 first: the HSM only checks that HS is as long as HA's digest,
	 * and an ECDSA signature does not depend on the hash's name */
	for (size_t i = H_SHA1; i <= H_SHA512; i++)
		if (hashes[i].len == n)
			return &hashes[i];
	return NULL;
}

/* ---- the table ---- */

#define H(x) (&hashes[x])
static const struct p11_mech mechs[] = {
    /* key generation: run by p11_obj.c (GRSA, GECC, GPGS); listed here */
    {CKM_RSA_PKCS_KEY_PAIR_GEN, P11_MF_GEN_RSA, NULL, false},
    {CKM_EC_KEY_PAIR_GEN, P11_MF_GEN_EC, NULL, false},
    {CKM_EC_EDWARDS_KEY_PAIR_GEN, P11_MF_GEN_ED, NULL, false},
    {CKM_EC_MONTGOMERY_KEY_PAIR_GEN, P11_MF_GEN_X, NULL, false},
    {CKM_AES_KEY_GEN, P11_MF_GEN_AES, NULL, false},
    {CKM_GENERIC_SECRET_KEY_GEN, P11_MF_GEN_GENERIC, NULL, false},
    /* RSA */
    {CKM_RSA_PKCS, P11_MF_RSA_PKCS, NULL, false},
    {CKM_RSA_X_509, P11_MF_RSA_X509, NULL, false},
    {CKM_RSA_PKCS_PSS, P11_MF_RSA_PSS, NULL, false},
    {CKM_RSA_PKCS_OAEP, P11_MF_RSA_OAEP, NULL, false},
    {CKM_SHA1_RSA_PKCS, P11_MF_RSA_PKCS_H, H(H_SHA1), false},
    {CKM_SHA224_RSA_PKCS, P11_MF_RSA_PKCS_H, H(H_SHA224), false},
    {CKM_SHA256_RSA_PKCS, P11_MF_RSA_PKCS_H, H(H_SHA256), false},
    {CKM_SHA384_RSA_PKCS, P11_MF_RSA_PKCS_H, H(H_SHA384), false},
    {CKM_SHA512_RSA_PKCS, P11_MF_RSA_PKCS_H, H(H_SHA512), false},
    {CKM_SHA3_224_RSA_PKCS, P11_MF_RSA_PKCS_H, H(H_SHA3_224), false},
    {CKM_SHA3_256_RSA_PKCS, P11_MF_RSA_PKCS_H, H(H_SHA3_256), false},
    {CKM_SHA3_384_RSA_PKCS, P11_MF_RSA_PKCS_H, H(H_SHA3_384), false},
    {CKM_SHA3_512_RSA_PKCS, P11_MF_RSA_PKCS_H, H(H_SHA3_512), false},
    {CKM_SHA1_RSA_PKCS_PSS, P11_MF_RSA_PSS, H(H_SHA1), false},
    {CKM_SHA224_RSA_PKCS_PSS, P11_MF_RSA_PSS, H(H_SHA224), false},
    {CKM_SHA256_RSA_PKCS_PSS, P11_MF_RSA_PSS, H(H_SHA256), false},
    {CKM_SHA384_RSA_PKCS_PSS, P11_MF_RSA_PSS, H(H_SHA384), false},
    {CKM_SHA512_RSA_PKCS_PSS, P11_MF_RSA_PSS, H(H_SHA512), false},
    {CKM_SHA3_224_RSA_PKCS_PSS, P11_MF_RSA_PSS, H(H_SHA3_224), false},
    {CKM_SHA3_256_RSA_PKCS_PSS, P11_MF_RSA_PSS, H(H_SHA3_256), false},
    {CKM_SHA3_384_RSA_PKCS_PSS, P11_MF_RSA_PSS, H(H_SHA3_384), false},
    {CKM_SHA3_512_RSA_PKCS_PSS, P11_MF_RSA_PSS, H(H_SHA3_512), false},
    /* EC */
    {CKM_ECDSA, P11_MF_ECDSA, NULL, false},
    {CKM_ECDSA_SHA1, P11_MF_ECDSA, H(H_SHA1), false},
    {CKM_ECDSA_SHA224, P11_MF_ECDSA, H(H_SHA224), false},
    {CKM_ECDSA_SHA256, P11_MF_ECDSA, H(H_SHA256), false},
    {CKM_ECDSA_SHA384, P11_MF_ECDSA, H(H_SHA384), false},
    {CKM_ECDSA_SHA512, P11_MF_ECDSA, H(H_SHA512), false},
    {CKM_ECDSA_SHA3_224, P11_MF_ECDSA, H(H_SHA3_224), false},
    {CKM_ECDSA_SHA3_256, P11_MF_ECDSA, H(H_SHA3_256), false},
    {CKM_ECDSA_SHA3_384, P11_MF_ECDSA, H(H_SHA3_384), false},
    {CKM_ECDSA_SHA3_512, P11_MF_ECDSA, H(H_SHA3_512), false},
    {CKM_EDDSA, P11_MF_EDDSA, NULL, false},
    {CKM_ECDH1_DERIVE, P11_MF_ECDH, NULL, false},
    /* AES */
    {CKM_AES_ECB, P11_MF_AES_ECB, NULL, false},
    {CKM_AES_CBC, P11_MF_AES_CBC, NULL, false},
    {CKM_AES_CBC_PAD, P11_MF_AES_CBC_PAD, NULL, false},
    {CKM_AES_CTR, P11_MF_AES_CTR, NULL, false},
    {CKM_AES_GCM, P11_MF_AES_GCM, NULL, false},
    {CKM_AES_CMAC, P11_MF_AES_CMAC, NULL, false},
    {CKM_AES_CMAC_GENERAL, P11_MF_AES_CMAC, NULL, true},
    {CKM_AES_KEY_WRAP, P11_MF_AES_KW, NULL, false},
    {CKM_AES_KEY_WRAP_PAD, P11_MF_AES_KWP, NULL, false},
    /* HMAC */
    {CKM_SHA_1_HMAC, P11_MF_HMAC, H(H_SHA1), false},
    {CKM_SHA_1_HMAC_GENERAL, P11_MF_HMAC, H(H_SHA1), true},
    {CKM_SHA224_HMAC, P11_MF_HMAC, H(H_SHA224), false},
    {CKM_SHA224_HMAC_GENERAL, P11_MF_HMAC, H(H_SHA224), true},
    {CKM_SHA256_HMAC, P11_MF_HMAC, H(H_SHA256), false},
    {CKM_SHA256_HMAC_GENERAL, P11_MF_HMAC, H(H_SHA256), true},
    {CKM_SHA384_HMAC, P11_MF_HMAC, H(H_SHA384), false},
    {CKM_SHA384_HMAC_GENERAL, P11_MF_HMAC, H(H_SHA384), true},
    {CKM_SHA512_HMAC, P11_MF_HMAC, H(H_SHA512), false},
    {CKM_SHA512_HMAC_GENERAL, P11_MF_HMAC, H(H_SHA512), true},
    {CKM_SHA3_224_HMAC, P11_MF_HMAC, H(H_SHA3_224), false},
    {CKM_SHA3_224_HMAC_GENERAL, P11_MF_HMAC, H(H_SHA3_224), true},
    {CKM_SHA3_256_HMAC, P11_MF_HMAC, H(H_SHA3_256), false},
    {CKM_SHA3_256_HMAC_GENERAL, P11_MF_HMAC, H(H_SHA3_256), true},
    {CKM_SHA3_384_HMAC, P11_MF_HMAC, H(H_SHA3_384), false},
    {CKM_SHA3_384_HMAC_GENERAL, P11_MF_HMAC, H(H_SHA3_384), true},
    {CKM_SHA3_512_HMAC, P11_MF_HMAC, H(H_SHA3_512), false},
    {CKM_SHA3_512_HMAC_GENERAL, P11_MF_HMAC, H(H_SHA3_512), true},
    /* digests */
    {CKM_SHA_1, P11_MF_DIGEST, H(H_SHA1), false},
    {CKM_SHA224, P11_MF_DIGEST, H(H_SHA224), false},
    {CKM_SHA256, P11_MF_DIGEST, H(H_SHA256), false},
    {CKM_SHA384, P11_MF_DIGEST, H(H_SHA384), false},
    {CKM_SHA512, P11_MF_DIGEST, H(H_SHA512), false},
    {CKM_SHA3_224, P11_MF_DIGEST, H(H_SHA3_224), false},
    {CKM_SHA3_256, P11_MF_DIGEST, H(H_SHA3_256), false},
    {CKM_SHA3_384, P11_MF_DIGEST, H(H_SHA3_384), false},
    {CKM_SHA3_512, P11_MF_DIGEST, H(H_SHA3_512), false},
};
#undef H
#define NMECHS (sizeof(mechs) / sizeof(mechs[0]))

const struct p11_mech *p11_mech_find(CK_MECHANISM_TYPE t)
{
	for (size_t i = 0; i < NMECHS; i++)
		if (mechs[i].type == t)
			return &mechs[i];
	return NULL;
}

#define EC_FLAGS (CKF_EC_F_P | CKF_EC_OID | CKF_EC_CURVENAME | CKF_EC_UNCOMPRESS)
#define SIGN_FLAGS (CKF_SIGN | CKF_VERIFY | CKF_MESSAGE_SIGN | CKF_MESSAGE_VERIFY)

CK_FLAGS p11_mech_flags(const struct p11_mech *m, const struct p11_caps *c)
{
	/* FIPS mode refuses SHA-1 in signature generation: verify only */
	bool sha1 = m->hash && m->hash->ckm == CKM_SHA_1;
	CK_FLAGS sig = SIGN_FLAGS & ~(c->fips && sha1 ? CKF_SIGN | CKF_MESSAGE_SIGN : 0);
	CK_FLAGS f;

	switch (m->fam) {
	case P11_MF_GEN_RSA:
		f = CKF_GENERATE_KEY_PAIR;
		break;
	case P11_MF_GEN_EC:
		f = CKF_GENERATE_KEY_PAIR | EC_FLAGS;
		break;
	case P11_MF_GEN_ED:
	case P11_MF_GEN_X:
		/* 32-byte encoded points (RFC 8032 / 7748), named by OID or name */
		f = CKF_GENERATE_KEY_PAIR | CKF_EC_F_P | CKF_EC_OID | CKF_EC_CURVENAME;
		break;
	case P11_MF_GEN_AES:
	case P11_MF_GEN_GENERIC:
		f = CKF_GENERATE;
		break;
	case P11_MF_DIGEST:
		f = CKF_DIGEST;
		break;
	case P11_MF_RSA_PKCS:
		/* PKCS#1 v1.5 decryption is an oracle: the HSM refuses it in FIPS
		 * mode (and to roles without keys.pkcs1_decrypt) */
		f = CKF_ENCRYPT | CKF_SIGN | CKF_VERIFY | CKF_SIGN_RECOVER | CKF_VERIFY_RECOVER |
		    CKF_MESSAGE_SIGN | CKF_MESSAGE_VERIFY | (c->pkcs1_dec ? CKF_DECRYPT : 0);
		break;
	case P11_MF_RSA_X509:
		/* raw private operations are the same oracle */
		f = CKF_ENCRYPT | CKF_VERIFY | CKF_VERIFY_RECOVER | CKF_MESSAGE_VERIFY |
		    (c->pkcs1_dec ? CKF_DECRYPT | CKF_SIGN | CKF_SIGN_RECOVER | CKF_MESSAGE_SIGN
		                  : 0);
		break;
	case P11_MF_RSA_PKCS_H:
	case P11_MF_RSA_PSS:
		f = sig;
		break;
	case P11_MF_RSA_OAEP:
		f = CKF_ENCRYPT | CKF_DECRYPT | CKF_WRAP | CKF_UNWRAP;
		break;
	case P11_MF_ECDSA:
		f = sig | EC_FLAGS;
		break;
	case P11_MF_EDDSA:
		f = SIGN_FLAGS | CKF_EC_F_P | CKF_EC_OID | CKF_EC_CURVENAME;
		break;
	case P11_MF_ECDH:
		f = CKF_DERIVE | EC_FLAGS;
		break;
	case P11_MF_AES_ECB:
		f = c->fips ? 0
		            : CKF_ENCRYPT | CKF_DECRYPT; /* ECB for data: refused in FIPS mode */
		break;
	case P11_MF_AES_CBC:
	case P11_MF_AES_CBC_PAD:
	case P11_MF_AES_CTR:
		f = CKF_ENCRYPT | CKF_DECRYPT;
		break;
	case P11_MF_AES_GCM:
		f = CKF_ENCRYPT | CKF_DECRYPT | CKF_MESSAGE_ENCRYPT | CKF_MESSAGE_DECRYPT;
		break;
	case P11_MF_AES_CMAC:
	case P11_MF_HMAC:
		f = SIGN_FLAGS;
		break;
	case P11_MF_AES_KW:
	case P11_MF_AES_KWP:
		f = CKF_WRAP | CKF_UNWRAP;
		break;
	default:
		f = 0;
	}
	return f ? f | CKF_HW : 0;
}

/* Key sizes in the units PKCS#11 gives each mechanism: bits for RSA and
 * EC, bytes for AES and HMAC, bits for CKM_GENERIC_SECRET_KEY_GEN. */
static void mech_sizes(const struct p11_mech *m, const struct p11_caps *c, CK_ULONG *min,
                       CK_ULONG *max)
{
	*min = *max = 0;
	switch (m->fam) {
	case P11_MF_GEN_RSA:
	case P11_MF_RSA_PKCS:
	case P11_MF_RSA_X509:
	case P11_MF_RSA_PKCS_H:
	case P11_MF_RSA_PSS:
	case P11_MF_RSA_OAEP:
		*min = c->min_rsa;
		*max = 4096;
		break;
	case P11_MF_GEN_EC:
	case P11_MF_ECDSA:
		*min = 256;
		*max = 521;
		break;
	case P11_MF_ECDH: /* P-256/384/521 and X25519 */
		*min = 255;
		*max = 521;
		break;
	case P11_MF_GEN_ED:
	case P11_MF_GEN_X:
	case P11_MF_EDDSA:
		*min = *max = 255;
		break;
	case P11_MF_GEN_AES:
	case P11_MF_AES_ECB:
	case P11_MF_AES_CBC:
	case P11_MF_AES_CBC_PAD:
	case P11_MF_AES_CTR:
	case P11_MF_AES_GCM:
	case P11_MF_AES_CMAC:
	case P11_MF_AES_KW:
	case P11_MF_AES_KWP:
		*min = 16;
		*max = 32;
		break;
	case P11_MF_HMAC:
		*min = 1;
		*max = 16320;
		break;
	case P11_MF_GEN_GENERIC:
		*min = 8;
		*max = 16320 * 8;
		break;
	case P11_MF_DIGEST:
		break;
	}
}

/* ---- capabilities per slot (PRMD) ---- */

#define CAPS_RETRY_S 60

static struct {
	pthread_mutex_t mu;
	struct caps_ent {
		/* a slot of this C_Initialize: a later one has other pools */
		CK_SLOT_ID id;
		const struct kh_pool *pool;
		bool known;
		time_t tried;
		struct p11_caps caps;
	} ent[P11_CFG_MAX_SLOTS];
} C = {.mu = PTHREAD_MUTEX_INITIALIZER};

static int caps_ask(struct p11_slot *sl, struct p11_caps *c)
{
	struct kh_buf *req = p11_buf_new(), *resp = p11_buf_new();
	struct kh_frame f;
	char v[8];
	uint64_t mr;
	int r = KH_ERR_NOMEM;

	if (!req || !resp || !sl->pool)
		goto out;
	if ((r = kh_msg_begin(req, "PRMD")) != KH_OK || (r = kh_msg_end(req)) != KH_OK)
		goto out;
	if ((r = kh_pool_call(sl->pool, KH_POOL_BALANCE, req, resp, &f, NULL, 0)) != KH_OK)
		goto out;
	if ((r = kh_frame_str(&f, "FI", v, sizeof(v))) != KH_OK)
		goto out;
	c->fips = v[0] == 'Y';
	c->pkcs1_dec = !c->fips;
	if (kh_frame_str(&f, "P1", v, sizeof(v)) == KH_OK)
		c->pkcs1_dec = v[0] == 'Y';
	c->min_rsa = c->fips ? 2048 : 1024;
	if (kh_frame_u64(&f, "MR", 512, 16384, &mr) == KH_OK)
		c->min_rsa = (CK_ULONG)mr;
out:
	kh_buf_free(req);
	kh_buf_free(resp);
	return r;
}

void p11_mech_caps(struct p11_slot *sl, struct p11_caps *out)
{
	/* until the HSM answers: what holds in FIPS mode too */
	static const struct p11_caps safe = {.fips = true, .pkcs1_dec = false, .min_rsa = 2048};
	struct caps_ent *e = NULL;
	time_t now = time(NULL);

	/* one lock, held while PRMD runs: callers that come meanwhile wait for
	 * its answer rather than see the conservative values */
	pthread_mutex_lock(&C.mu);
	for (size_t i = 0; i < P11_CFG_MAX_SLOTS; i++) {
		struct caps_ent *x = &C.ent[i];
		if (x->pool == sl->pool && x->id == sl->id) {
			e = x;
			break;
		}
		if (!e && !x->pool)
			e = x;
	}
	if (!e)
		e = &C.ent[sl->id % P11_CFG_MAX_SLOTS];
	if (e->pool != sl->pool || e->id != sl->id)
		*e = (struct caps_ent){.id = sl->id, .pool = sl->pool};
	if (!e->known && (e->tried == 0 || now - e->tried >= CAPS_RETRY_S)) {
		int r = caps_ask(sl, &e->caps);
		e->tried = now;
		e->known = r == KH_OK;
		if (r != KH_OK)
			p11_log(P11_LOG_DEBUG,
			        "slot %lu: PRMD failed (%s): mechanism info assumes FIPS limits",
			        (unsigned long)sl->id, kh_errname(r));
	}
	*out = e->known ? e->caps : safe;
	pthread_mutex_unlock(&C.mu);
}

/* ---- C_GetMechanismList / C_GetMechanismInfo ---- */

P11_EXPORT CK_RV C_GetMechanismList(CK_SLOT_ID slotID, CK_MECHANISM_TYPE_PTR pMechanismList,
                                    CK_ULONG_PTR pulCount)
{
	struct p11_slot *sl;
	struct p11_caps caps;
	CK_RV rv = p11_check_init();
	CK_ULONG n = 0;

	if (rv != CKR_OK)
		return rv;
	if ((rv = p11_slot_get(slotID, &sl)) != CKR_OK)
		return rv;
	if (!pulCount)
		return CKR_ARGUMENTS_BAD;
	p11_mech_caps(sl, &caps);
	for (size_t i = 0; i < NMECHS; i++)
		if (p11_mech_flags(&mechs[i], &caps))
			n++;
	if (!pMechanismList) {
		*pulCount = n;
		return CKR_OK;
	}
	if (*pulCount < n) {
		*pulCount = n;
		return CKR_BUFFER_TOO_SMALL;
	}
	n = 0;
	for (size_t i = 0; i < NMECHS; i++)
		if (p11_mech_flags(&mechs[i], &caps))
			pMechanismList[n++] = mechs[i].type;
	*pulCount = n;
	return CKR_OK;
}

P11_EXPORT CK_RV C_GetMechanismInfo(CK_SLOT_ID slotID, CK_MECHANISM_TYPE type,
                                    CK_MECHANISM_INFO_PTR pInfo)
{
	struct p11_slot *sl;
	struct p11_caps caps;
	const struct p11_mech *m;
	CK_RV rv = p11_check_init();

	if (rv != CKR_OK)
		return rv;
	if ((rv = p11_slot_get(slotID, &sl)) != CKR_OK)
		return rv;
	if (!pInfo)
		return CKR_ARGUMENTS_BAD;
	if (!(m = p11_mech_find(type)))
		return CKR_MECHANISM_INVALID;
	p11_mech_caps(sl, &caps);
	CK_FLAGS f = p11_mech_flags(m, &caps);
	if (!f)
		return CKR_MECHANISM_INVALID;
	mech_sizes(m, &caps, &pInfo->ulMinKeySize, &pInfo->ulMaxKeySize);
	pInfo->flags = f;
	return CKR_OK;
}

/* ---- the request builder ---- */

CK_RV p11_rq_begin(struct p11_rq *r, const char *cmd)
{
	r->req = p11_buf_new();
	r->resp = p11_buf_new();
	r->f.nfields = 0;
	r->f.cmd[0] = 0;
	r->kerr = KH_OK;
	snprintf(r->cmd, sizeof(r->cmd), "%s", cmd);
	if (!r->req || !r->resp) {
		p11_rq_free(r);
		return CKR_HOST_MEMORY;
	}
	r->err = kh_msg_begin(r->req, cmd);
	return CKR_OK;
}

void p11_rq_put(struct p11_rq *r, const char *tag, const char *val)
{
	if (r->err == KH_OK)
		r->err = kh_msg_put(r->req, tag, val);
}

void p11_rq_hex(struct p11_rq *r, const char *tag, const uint8_t *d, size_t n)
{
	if (r->err == KH_OK)
		r->err = kh_msg_put_hex(r->req, tag, d, n);
}

void p11_rq_u64(struct p11_rq *r, const char *tag, uint64_t v)
{
	if (r->err == KH_OK)
		r->err = kh_msg_put_u64(r->req, tag, v);
}

void p11_rq_key(struct p11_rq *r, const struct p11_obj *o, const char *slot_tag, const char *id_tag,
                const char *cg_tag)
{
	if (r->err == KH_OK)
		r->err = p11_obj_put_ref(o, r->req, slot_tag, id_tag, cg_tag);
}

CK_RV p11_rq_run(struct p11_session *s, struct p11_rq *r, unsigned flags)
{
	if (r->err == KH_OK)
		r->err = kh_msg_end(r->req);
	if (r->err != KH_OK) {
		/* data past a frame, memory, or a key the module cannot name */
		r->kerr = r->err;
		p11_log(P11_LOG_DEBUG, "%s: request not built: %s", r->cmd, kh_errname(r->err));
		return r->err == KH_ERR_NOMEM       ? CKR_HOST_MEMORY
		       : r->err == KH_ERR_TOO_LARGE ? CKR_DATA_LEN_RANGE
		                                    : CKR_GENERAL_ERROR;
	}
	r->kerr = p11_call(s, flags, r->req, r->resp, &r->f);
	if (r->kerr != KH_OK) {
		p11_log(P11_LOG_DEBUG, "slot %lu: %s: %s", (unsigned long)s->slot->id, r->cmd,
		        kh_errname(r->kerr));
		return p11_rv_from_kh(r->kerr);
	}
	return CKR_OK;
}

CK_RV p11_rq_field(const struct p11_rq *r, const char *tag, struct kh_buf *out)
{
	const struct kh_field *fl = kh_frame_get(&r->f, tag);
	uint8_t *p;
	size_t n;

	if (!fl || fl->len % 2)
		return CKR_DEVICE_ERROR;
	if (kh_buf_reserve(out, fl->len / 2, &p) != KH_OK)
		return CKR_HOST_MEMORY;
	if (kh_frame_hex(&r->f, tag, p, fl->len / 2, &n) != KH_OK) {
		kh_buf_commit(out, 0);
		return CKR_DEVICE_ERROR;
	}
	kh_buf_commit(out, n);
	return CKR_OK;
}

void p11_rq_free(struct p11_rq *r)
{
	kh_buf_free(r->req);
	kh_buf_free(r->resp);
	r->req = r->resp = NULL;
}

/* ======================================================================== */
/* What each operation runs */

void p11_mop_free(void *p)
{
	struct p11_mop *st = p;
	if (!st)
		return;
	if (st->aad) {
		kh_wipe(st->aad, st->aad_len);
		free(st->aad);
	}
	if (st->label) {
		kh_wipe(st->label, st->label_len);
		free(st->label);
	}
	kh_wipe(st, sizeof(*st));
	free(st);
}

static bool fam_aes(enum p11_mfam f)
{
	return f == P11_MF_AES_ECB || f == P11_MF_AES_CBC || f == P11_MF_AES_CBC_PAD ||
	       f == P11_MF_AES_CTR || f == P11_MF_AES_GCM || f == P11_MF_AES_CMAC ||
	       f == P11_MF_AES_KW || f == P11_MF_AES_KWP;
}

static bool fam_rsa(enum p11_mfam f)
{
	return f == P11_MF_RSA_PKCS || f == P11_MF_RSA_X509 || f == P11_MF_RSA_PKCS_H ||
	       f == P11_MF_RSA_PSS || f == P11_MF_RSA_OAEP;
}

/* Hash-then-sign: the data is hashed here and the HSM signs the digest. */
bool p11_mech_prehash(const struct p11_mech *m)
{
	return m->hash &&
	       (m->fam == P11_MF_RSA_PKCS_H || m->fam == P11_MF_RSA_PSS || m->fam == P11_MF_ECDSA);
}

/* Bytes of an RSA modulus or an EC field element; 0 when not known. */
size_t p11_key_bytes(const struct p11_obj *o)
{
	return (size_t)((o->bits + 7) / 8);
}

/* ---- keys ---- */

static const unsigned use_bit[] = {
    [P11_USE_ENC] = P11_U_ENCRYPT,   [P11_USE_DEC] = P11_U_DECRYPT, [P11_USE_SIGN] = P11_U_SIGN,
    [P11_USE_VERIFY] = P11_U_VERIFY, [P11_USE_WRAP] = P11_U_WRAP,   [P11_USE_UNWRAP] = P11_U_UNWRAP,
    [P11_USE_DERIVE] = P11_U_DERIVE,
};

/* Whether key o may run mechanism m for use u, from its cached attributes
 * (the HSM checks again): CKR_KEY_HANDLE_INVALID for an object that is
 * not a key, CKR_KEY_TYPE_INCONSISTENT, CKR_KEY_FUNCTION_NOT_PERMITTED. */
CK_RV p11_mech_key_fits(const struct p11_obj *o, const struct p11_mech *m, enum p11_use u)
{
	bool priv_only =
	    u == P11_USE_SIGN || u == P11_USE_DEC || u == P11_USE_UNWRAP || u == P11_USE_DERIVE;
	bool type_ok, cls_ok;

	if (o->cls != CKO_SECRET_KEY && o->cls != CKO_PRIVATE_KEY && o->cls != CKO_PUBLIC_KEY)
		return CKR_KEY_HANDLE_INVALID;
	if (fam_aes(m->fam)) {
		type_ok = o->ktype == CKK_AES;
		cls_ok = o->cls == CKO_SECRET_KEY;
	} else if (m->fam == P11_MF_HMAC) {
		type_ok = o->ktype == CKK_GENERIC_SECRET || p11_is_hmac_ktype(o->ktype);
		cls_ok = o->cls == CKO_SECRET_KEY;
	} else {
		if (fam_rsa(m->fam))
			type_ok = o->ktype == CKK_RSA;
		else if (m->fam == P11_MF_ECDSA)
			type_ok = o->ktype == CKK_EC;
		else if (m->fam == P11_MF_EDDSA)
			type_ok = o->ktype == CKK_EC_EDWARDS;
		else if (m->fam == P11_MF_ECDH)
			type_ok = o->ktype == CKK_EC || o->ktype == CKK_EC_MONTGOMERY;
		else
			type_ok = false;
		/* wrapping needs a public key (GPKW); verifying and encrypting
		 * take a public key, or a private key whose usage allows it */
		cls_ok = priv_only ? o->cls == CKO_PRIVATE_KEY
		         : u == P11_USE_WRAP
		             ? o->cls == CKO_PUBLIC_KEY
		             : o->cls == CKO_PUBLIC_KEY || o->cls == CKO_PRIVATE_KEY;
	}
	if (!type_ok || !cls_ok)
		return CKR_KEY_TYPE_INCONSISTENT;
	if (!(o->usage & use_bit[u]))
		return CKR_KEY_FUNCTION_NOT_PERMITTED;
	return CKR_OK;
}

/* ---- mechanism parameters ---- */

/* CK_GCM_PARAMS as the first 2.40 headers had it, without ulIvBits; some
 * applications still send it. */
struct gcm_params_short {
	CK_BYTE_PTR pIv;
	CK_ULONG ulIvLen;
	CK_BYTE_PTR pAAD;
	CK_ULONG ulAADLen;
	CK_ULONG ulTagBits;
};

static CK_RV copy_param(const void *src, size_t n, size_t max, uint8_t **dst, size_t *dlen)
{
	*dst = NULL;
	*dlen = 0;
	if (n == 0)
		return CKR_OK;
	if (!src || n > max)
		return CKR_MECHANISM_PARAM_INVALID;
	if (!(*dst = malloc(n)))
		return CKR_HOST_MEMORY;
	memcpy(*dst, src, n);
	*dlen = n;
	return CKR_OK;
}

CK_RV p11_mech_gcm_tag(CK_ULONG bits, size_t *len)
{
	/* the HSM makes and checks tags of 4-16 whole bytes */
	if (bits < 32 || bits > 128 || bits % 8)
		return CKR_MECHANISM_PARAM_INVALID;
	*len = bits / 8;
	return CKR_OK;
}

static CK_RV parse_gcm(const CK_MECHANISM *mech, struct p11_mop *st)
{
	const uint8_t *iv, *aad;
	CK_ULONG iv_len, aad_len, tag_bits;

	if (mech->pParameter && mech->ulParameterLen == sizeof(CK_GCM_PARAMS)) {
		const CK_GCM_PARAMS *g = mech->pParameter;
		iv = g->pIv, iv_len = g->ulIvLen, aad = g->pAAD, aad_len = g->ulAADLen;
		tag_bits = g->ulTagBits;
	} else if (mech->pParameter && mech->ulParameterLen == sizeof(struct gcm_params_short)) {
		const struct gcm_params_short *g = mech->pParameter;
		iv = g->pIv, iv_len = g->ulIvLen, aad = g->pAAD, aad_len = g->ulAADLen;
		tag_bits = g->ulTagBits;
	} else {
		return CKR_MECHANISM_PARAM_INVALID;
	}
	if (!iv || iv_len == 0 || iv_len > P11_GCM_IV_MAX)
		return CKR_MECHANISM_PARAM_INVALID;
	memcpy(st->iv, iv, iv_len);
	st->iv_len = iv_len;
	CK_RV rv = p11_mech_gcm_tag(tag_bits, &st->tag_len);
	if (rv != CKR_OK)
		return rv;
	return copy_param(aad, aad_len, P11_MAX_DATA, &st->aad, &st->aad_len);
}

static CK_RV parse_pss(const CK_MECHANISM *mech, const struct p11_obj *o, struct p11_mop *st)
{
	const CK_RSA_PKCS_PSS_PARAMS *p = mech->pParameter;

	if (!p || mech->ulParameterLen != sizeof(*p))
		return CKR_MECHANISM_PARAM_INVALID;
	st->ph = p11_hash_by_ckm(p->hashAlg);
	st->mgf = p11_hash_by_mgf(p->mgf);
	st->salt = p->sLen;
	/* a hash-then-sign mechanism names its hash; the parameter must agree */
	if (!st->ph || !st->mgf || (st->m->hash && st->m->hash != st->ph))
		return CKR_MECHANISM_PARAM_INVALID;
	if (o->bits) {
		size_t em = (size_t)(o->bits - 1 + 7) / 8;
		if (em < st->ph->len + 2 || st->salt > em - st->ph->len - 2)
			return CKR_MECHANISM_PARAM_INVALID;
	}
	return CKR_OK;
}

CK_RV p11_mech_oaep(const CK_MECHANISM *mech, struct p11_mop *st)
{
	const CK_RSA_PKCS_OAEP_PARAMS *p = mech->pParameter;

	if (!p || mech->ulParameterLen != sizeof(*p))
		return CKR_MECHANISM_PARAM_INVALID;
	st->ph = p11_hash_by_ckm(p->hashAlg);
	st->mgf = p11_hash_by_mgf(p->mgf);
	if (!st->ph || !st->mgf)
		return CKR_MECHANISM_PARAM_INVALID;
	/* CKZ_DATA_SPECIFIED is the only source; 0 with no label is taken too */
	if (p->source != CKZ_DATA_SPECIFIED && (p->source != 0 || p->ulSourceDataLen != 0))
		return CKR_MECHANISM_PARAM_INVALID;
	return copy_param(p->pSourceData, p->ulSourceDataLen, P11_LABEL_MAX, &st->label,
	                  &st->label_len);
}

static bool no_param(const CK_MECHANISM *mech)
{
	return mech->ulParameterLen == 0;
}

/* Parse and copy mech's parameter for an operation of kind k with key o:
 * the application may free it once the Init call returns. */
CK_RV p11_mech_params(const CK_MECHANISM *mech, const struct p11_obj *o, enum p11_op_kind k,
                      struct p11_mop *st)
{
	const struct p11_mech *m = st->m;
	bool msg = k == P11_OP_MSG_ENCRYPT || k == P11_OP_MSG_DECRYPT;

	switch (m->fam) {
	case P11_MF_AES_CBC:
	case P11_MF_AES_CBC_PAD:
		if (!mech->pParameter || mech->ulParameterLen != 16)
			return CKR_MECHANISM_PARAM_INVALID;
		memcpy(st->iv, mech->pParameter, 16);
		st->iv_len = 16;
		return CKR_OK;
	case P11_MF_AES_CTR: {
		const CK_AES_CTR_PARAMS *p = mech->pParameter;
		if (!p || mech->ulParameterLen != sizeof(*p) || p->ulCounterBits < 1 ||
		    p->ulCounterBits > 128)
			return CKR_MECHANISM_PARAM_INVALID;
		memcpy(st->iv, p->cb, 16);
		st->iv_len = 16;
		st->ctr_bits = (unsigned)p->ulCounterBits;
		return CKR_OK;
	}
	case P11_MF_AES_GCM:
		/* message-based GCM takes its parameters with each message */
		if (msg)
			return no_param(mech) ? CKR_OK : CKR_MECHANISM_PARAM_INVALID;
		return parse_gcm(mech, st);
	case P11_MF_RSA_PSS:
		return parse_pss(mech, o, st);
	case P11_MF_RSA_OAEP:
		return p11_mech_oaep(mech, st);
	case P11_MF_EDDSA:
		/* pure Ed25519 only: no pre-hashing, no context */
		if (no_param(mech))
			return CKR_OK;
		if (!mech->pParameter || mech->ulParameterLen != sizeof(CK_EDDSA_PARAMS_KH))
			return CKR_MECHANISM_PARAM_INVALID;
		{
			const CK_EDDSA_PARAMS_KH *p = mech->pParameter;
			if (p->phFlag || p->ulContextDataLen)
				return CKR_MECHANISM_PARAM_INVALID;
		}
		return CKR_OK;
	case P11_MF_AES_CMAC:
	case P11_MF_HMAC: {
		size_t full = m->fam == P11_MF_HMAC ? m->hash->len : 16;
		st->mac_len = full;
		if (!m->general)
			return no_param(mech) ? CKR_OK : CKR_MECHANISM_PARAM_INVALID;
		if (!mech->pParameter || mech->ulParameterLen != sizeof(CK_ULONG))
			return CKR_MECHANISM_PARAM_INVALID;
		CK_ULONG l = *(const CK_ULONG *)mech->pParameter;
		if (l < 1 || l > full)
			return CKR_MECHANISM_PARAM_INVALID;
		st->mac_len = l;
		return CKR_OK;
	}
	default:
		return no_param(mech) ? CKR_OK : CKR_MECHANISM_PARAM_INVALID;
	}
}

/* ---- the HSM requests ---- */

static const char *aes_mode(enum p11_mfam f)
{
	switch (f) {
	case P11_MF_AES_ECB:
		return "ECB";
	case P11_MF_AES_CBC:
		return "CBC";
	case P11_MF_AES_CBC_PAD:
		return "CBCP";
	case P11_MF_AES_CTR:
		return "CTR";
	default:
		return "GCM";
	}
}

/* The key, and the RSA padding parameters of st's mechanism. */
void p11_rq_oaep(struct p11_rq *r, const struct p11_mop *st)
{
	p11_rq_put(r, "HA", st->ph->hsm);
	p11_rq_put(r, "MG", st->mgf->hsm);
	if (st->label_len)
		p11_rq_hex(r, "OL", st->label, st->label_len);
}

/* GPSR (raw RSA): the input left-padded to the modulus length for PD NONE. */
static CK_RV gpsr(struct p11_session *s, struct p11_op *op, const char *opc, const uint8_t *in,
                  size_t n, struct p11_rq *r)
{
	const struct p11_mop *st = op->state;
	bool raw = st->m->fam == P11_MF_RSA_X509;
	size_t k = p11_key_bytes(op->key);
	CK_RV rv = p11_rq_begin(r, "GPSR");

	if (rv != CKR_OK)
		return rv;
	p11_rq_key(r, op->key, "SL", "KD", "CG");
	p11_rq_put(r, "OP", opc);
	p11_rq_put(r, "PD", raw ? "NONE" : "PKCS1");
	if (raw && k > n) {
		uint8_t *pad = calloc(1, k);
		if (!pad)
			return CKR_HOST_MEMORY;
		if (n)
			memcpy(pad + (k - n), in, n);
		p11_rq_hex(r, "DT", pad, k);
		kh_wipe(pad, k);
		free(pad);
	} else {
		p11_rq_hex(r, "DT", in, n);
	}
	return p11_rq_run(s, r, P11_CALL_BALANCE);
}

CK_RV p11_mech_encrypt(struct p11_session *s, struct p11_op *op, const uint8_t *in, size_t n,
                       struct kh_buf *out)
{
	const struct p11_mop *st = op->state;
	enum p11_mfam f = st->m->fam;
	struct p11_rq r = {0};
	CK_RV rv;

	if (f == P11_MF_RSA_X509) {
		rv = gpsr(s, op, "E", in, n, &r);
		if (r.kerr == KH_ERR_BAD_FIELD)
			rv = CKR_DATA_INVALID; /* not below the modulus */
	} else {
		if ((rv = p11_rq_begin(&r, "GPSE")) != CKR_OK)
			return rv;
		p11_rq_key(&r, op->key, "SL", "KD", "CG");
		if (f == P11_MF_RSA_PKCS) {
			p11_rq_put(&r, "PD", "PKCS1");
		} else if (f == P11_MF_RSA_OAEP) {
			p11_rq_put(&r, "PD", "OAEP");
			p11_rq_oaep(&r, st);
		} else {
			p11_rq_put(&r, "AL", aes_mode(f));
			if (st->iv_len)
				p11_rq_hex(&r, "IV", st->iv, st->iv_len);
			if (f == P11_MF_AES_GCM) {
				if (st->aad_len)
					p11_rq_hex(&r, "AD", st->aad, st->aad_len);
				p11_rq_u64(&r, "TL", st->tag_len);
			}
		}
		p11_rq_hex(&r, "DT", in, n);
		rv = p11_rq_run(s, &r, P11_CALL_BALANCE);
	}
	if (rv == CKR_OK)
		rv = p11_rq_field(&r, "DT", out);
	if (rv == CKR_OK && f == P11_MF_AES_GCM)
		rv = p11_rq_field(&r, "TG", out); /* PKCS#11: ciphertext || tag */
	p11_rq_free(&r);
	return rv;
}

CK_RV p11_mech_decrypt(struct p11_session *s, struct p11_op *op, const uint8_t *in, size_t n,
                       struct kh_buf *out)
{
	const struct p11_mop *st = op->state;
	enum p11_mfam f = st->m->fam;
	struct p11_rq r = {0};
	CK_RV rv;

	if (f == P11_MF_RSA_X509) {
		rv = gpsr(s, op, "D", in, n, &r);
	} else {
		if ((rv = p11_rq_begin(&r, "GPSD")) != CKR_OK)
			return rv;
		p11_rq_key(&r, op->key, "SL", "KD", "CG");
		if (f == P11_MF_RSA_PKCS) {
			p11_rq_put(&r, "PD", "PKCS1");
		} else if (f == P11_MF_RSA_OAEP) {
			p11_rq_put(&r, "PD", "OAEP");
			p11_rq_oaep(&r, st);
		} else {
			p11_rq_put(&r, "AL", aes_mode(f));
			if (st->iv_len)
				p11_rq_hex(&r, "IV", st->iv, st->iv_len);
			if (f == P11_MF_AES_GCM) {
				/* PKCS#11 input: ciphertext || tag */
				if (st->aad_len)
					p11_rq_hex(&r, "AD", st->aad, st->aad_len);
				p11_rq_hex(&r, "TG", in + (n - st->tag_len), st->tag_len);
				n -= st->tag_len;
			}
		}
		p11_rq_hex(&r, "DT", in, n);
		rv = p11_rq_run(s, &r, P11_CALL_BALANCE);
	}
	/* every decryption failure is one answer, with nothing to tell apart */
	if (r.kerr == KH_ERR_DECRYPT_FAILED || (f == P11_MF_RSA_X509 && r.kerr == KH_ERR_BAD_FIELD))
		rv = CKR_ENCRYPTED_DATA_INVALID;
	if (rv == CKR_OK)
		rv = p11_rq_field(&r, "DT", out);
	p11_rq_free(&r);
	return rv;
}

/* The signing request for in (the data, or the digest for hash mechanisms)
 * without its command's output tag; sig (may be NULL) is the signature to
 * verify. */
static CK_RV sig_request(const struct p11_op *op, bool verify, const uint8_t *in, size_t n,
                         const uint8_t *sig, size_t siglen, struct p11_rq *r, const char **out_tag)
{
	const struct p11_mop *st = op->state;
	const struct p11_mech *m = st->m;
	CK_RV rv;

	switch (m->fam) {
	case P11_MF_HMAC:
	case P11_MF_AES_CMAC:
		if ((rv = p11_rq_begin(r, m->fam == P11_MF_HMAC ? "HMAC" : "GPMC")) != CKR_OK)
			return rv;
		p11_rq_key(r, op->key, "SL", "KD", "CG");
		if (m->fam == P11_MF_HMAC)
			p11_rq_put(r, "HA", m->hash->hsm);
		p11_rq_u64(r, "ML", st->mac_len);
		if (verify)
			p11_rq_hex(r, "MC", sig, siglen);
		p11_rq_hex(r, "DT", in, n);
		*out_tag = "MC";
		return CKR_OK;
	default:
		break;
	}
	if ((rv = p11_rq_begin(r, verify ? "ASYV" : "ASYS")) != CKR_OK)
		return rv;
	p11_rq_key(r, op->key, "SL", "KD", "CG");
	switch (m->fam) {
	case P11_MF_RSA_PKCS_H:
		p11_rq_put(r, "HA", m->hash->hsm);
		p11_rq_put(r, "PD", "PKCS1");
		p11_rq_hex(r, "HS", in, n);
		break;
	case P11_MF_RSA_PSS:
		p11_rq_put(r, "HA", st->ph->hsm);
		p11_rq_put(r, "PD", "PSS");
		p11_rq_u64(r, "SA", st->salt);
		p11_rq_put(r, "MG", st->mgf->hsm);
		p11_rq_hex(r, "HS", in, n);
		break;
	case P11_MF_ECDSA: {
		const struct p11_hash *h = m->hash ? m->hash : p11_hash_by_len(n);
		if (!h) { /* p11_mech_sig_size refused this length already */
			p11_rq_free(r);
			return CKR_DATA_LEN_RANGE;
		}
		p11_rq_put(r, "HA", h->hsm);
		p11_rq_put(r, "SF", "P1363");
		p11_rq_hex(r, "HS", in, n);
		break;
	}
	default: /* EdDSA: the message itself */
		p11_rq_hex(r, "DT", in, n);
		break;
	}
	if (verify)
		p11_rq_hex(r, "SG", sig, siglen);
	*out_tag = "SG";
	return CKR_OK;
}

CK_RV p11_mech_sign(struct p11_session *s, struct p11_op *op, const uint8_t *in, size_t n,
                    struct kh_buf *out)
{
	const struct p11_mop *st = op->state;
	struct p11_rq r = {0};
	const char *tag = "DT";
	CK_RV rv;

	if (st->m->fam == P11_MF_RSA_PKCS || st->m->fam == P11_MF_RSA_X509) {
		/* GPSR S: PKCS#1 v1.5 type 1 over the input itself (the
		 * caller's DigestInfo), or the raw private operation */
		rv = gpsr(s, op, "S", in, n, &r);
		if (st->m->fam == P11_MF_RSA_X509 && r.kerr == KH_ERR_BAD_FIELD)
			rv = CKR_DATA_INVALID;
	} else {
		if ((rv = sig_request(op, false, in, n, NULL, 0, &r, &tag)) == CKR_OK)
			rv = p11_rq_run(s, &r, P11_CALL_BALANCE);
	}
	if (rv == CKR_OK)
		rv = p11_rq_field(&r, tag, out);
	p11_rq_free(&r);
	return rv;
}

/* C_VerifyRecover: GPSR V gives back what was signed. */
CK_RV p11_mech_vrecover(struct p11_session *s, struct p11_op *op, const uint8_t *in, size_t n,
                        struct kh_buf *out)
{
	struct p11_rq r = {0};
	CK_RV rv = gpsr(s, op, "V", in, n, &r);

	if (r.kerr == KH_ERR_VERIFY_FAILED || r.kerr == KH_ERR_BAD_FIELD)
		rv = CKR_SIGNATURE_INVALID;
	if (rv == CKR_OK)
		rv = p11_rq_field(&r, "DT", out);
	p11_rq_free(&r);
	return rv;
}

/* A digest made here: for data past a frame, and for a role that may not
 * run GHSH (the pre-login one, out of the box). A digest uses no key;
 * multi-part digests are made here anyway. */
static CK_RV digest_here(const struct p11_hash *h, const uint8_t *in, size_t n, struct kh_buf *out)
{
	const EVP_MD *md = EVP_get_digestbyname(h->evp);
	unsigned len = 0;
	uint8_t *p;
	CK_RV rv = CKR_GENERAL_ERROR;

	if (!md || kh_buf_reserve(out, P11_DIGEST_MAX, &p) != KH_OK)
		return CKR_HOST_MEMORY;
	if (EVP_Digest(n ? in : (const uint8_t *)"", n, p, &len, md, NULL) == 1 && len == h->len)
		rv = CKR_OK;
	kh_buf_commit(out, rv == CKR_OK ? len : 0);
	return rv;
}

CK_RV p11_mech_digest(struct p11_session *s, struct p11_op *op, const uint8_t *in, size_t n,
                      struct kh_buf *out)
{
	const struct p11_mop *st = op->state;
	struct p11_rq r = {0};
	CK_RV rv;

	/* before login a request frame may not pass 4096 bytes (PROTOCOL.md,
	 * "Limits"): GHSH would be TOO_LARGE, and the HSM closes the connection */
	if (n > P11_MAX_DATA || !p11_session_logged_in(s))
		return digest_here(st->m->hash, in, n, out);
	if ((rv = p11_rq_begin(&r, "GHSH")) != CKR_OK)
		return rv;
	p11_rq_put(&r, "HA", st->m->hash->hsm);
	p11_rq_hex(&r, "DT", in, n);
	if ((rv = p11_rq_run(s, &r, P11_CALL_BALANCE)) == CKR_OK)
		rv = p11_rq_field(&r, "HS", out);
	if (r.kerr == KH_ERR_NOT_LOGGED_IN || r.kerr == KH_ERR_COMMAND_NOT_ALLOWED)
		rv = digest_here(st->m->hash, in, n, out);
	p11_rq_free(&r);
	return rv;
}

/* ---- lengths ---- */

/* CKM_AES_CTR counts in the low ctr_bits bits of the counter block; the
 * HSM counts with all 128. Both give the same key stream while the counter
 * field does not wrap, so data that would wrap it (reuse a counter value)
 * is refused instead. */
static bool ctr_fits(const struct p11_mop *st, size_t n)
{
	uint64_t add = n ? (uint64_t)((n + 15) / 16 - 1) : 0;
	unsigned bits = st->ctr_bits, carry = 0;
	uint8_t c[16];

	for (int i = 15; i >= 0; i--) {
		unsigned lo = (unsigned)(15 - i) * 8; /* the byte's lowest bit */
		uint8_t b = st->iv[i];
		if (lo >= bits)
			b = 0;
		else if (lo + 8 > bits)
			b &= (uint8_t)((1u << (bits - lo)) - 1);
		unsigned v = b + (unsigned)(add & 0xff) + carry;
		c[i] = (uint8_t)v;
		carry = v >> 8;
		add >>= 8;
	}
	if (carry)
		return false;
	for (int i = 0; i < 16; i++) {
		unsigned lo = (unsigned)(15 - i) * 8;
		if (lo >= bits ? c[i] != 0 : lo + 8 > bits && (c[i] >> (bits - lo)) != 0)
			return false;
	}
	return true;
}

CK_RV p11_mech_enc_size(const struct p11_op *op, size_t n, size_t *need, bool *exact)
{
	const struct p11_mop *st = op->state;
	size_t k = p11_key_bytes(op->key);

	*exact = true;
	*need = n;
	if (n > P11_MAX_DATA)
		return CKR_DATA_LEN_RANGE;
	switch (st->m->fam) {
	case P11_MF_AES_ECB:
	case P11_MF_AES_CBC:
		return n % 16 ? CKR_DATA_LEN_RANGE : CKR_OK;
	case P11_MF_AES_CBC_PAD:
		*need = (n / 16 + 1) * 16;
		return CKR_OK;
	case P11_MF_AES_CTR:
		return ctr_fits(st, n) ? CKR_OK : CKR_DATA_LEN_RANGE;
	case P11_MF_AES_GCM:
		*need = n + st->tag_len;
		return n + st->aad_len > P11_MAX_DATA ? CKR_DATA_LEN_RANGE : CKR_OK;
	case P11_MF_RSA_PKCS:
	case P11_MF_RSA_OAEP:
	case P11_MF_RSA_X509: {
		size_t over = st->m->fam == P11_MF_RSA_PKCS   ? 11
		              : st->m->fam == P11_MF_RSA_OAEP ? 2 * st->ph->len + 2
		                                              : 0;
		if (!k) { /* size not known: an upper bound */
			*need = 1024;
			*exact = false;
			return CKR_OK;
		}
		*need = k;
		return k < over || n > k - over ? CKR_DATA_LEN_RANGE : CKR_OK;
	}
	default:
		return CKR_MECHANISM_INVALID;
	}
}

CK_RV p11_mech_dec_size(const struct p11_op *op, size_t n, size_t *need, bool *exact)
{
	const struct p11_mop *st = op->state;
	size_t k = p11_key_bytes(op->key);

	*exact = true;
	*need = n;
	if (n > P11_MAX_DATA)
		return CKR_ENCRYPTED_DATA_LEN_RANGE;
	switch (st->m->fam) {
	case P11_MF_AES_ECB:
	case P11_MF_AES_CBC:
		return n % 16 ? CKR_ENCRYPTED_DATA_LEN_RANGE : CKR_OK;
	case P11_MF_AES_CBC_PAD:
		if (n == 0 || n % 16)
			return CKR_ENCRYPTED_DATA_LEN_RANGE;
		*need = n - 1; /* at least one byte of padding */
		*exact = false;
		return CKR_OK;
	case P11_MF_AES_CTR:
		return ctr_fits(st, n) ? CKR_OK : CKR_ENCRYPTED_DATA_LEN_RANGE;
	case P11_MF_AES_GCM:
		if (n < st->tag_len || n - st->tag_len + st->aad_len > P11_MAX_DATA)
			return CKR_ENCRYPTED_DATA_LEN_RANGE;
		*need = n - st->tag_len;
		return CKR_OK;
	case P11_MF_RSA_PKCS:
	case P11_MF_RSA_OAEP:
	case P11_MF_RSA_X509: {
		size_t over = st->m->fam == P11_MF_RSA_PKCS   ? 11
		              : st->m->fam == P11_MF_RSA_OAEP ? 2 * st->ph->len + 2
		                                              : 0;
		if (!k) {
			*need = 1024;
			*exact = false;
			return CKR_OK;
		}
		if (n != k)
			return CKR_ENCRYPTED_DATA_LEN_RANGE;
		*need = k > over ? k - over : 0;
		*exact = st->m->fam == P11_MF_RSA_X509;
		return CKR_OK;
	}
	default:
		return CKR_MECHANISM_INVALID;
	}
}

/* The signature's length, and whether in (data or digest) can be signed. */
CK_RV p11_mech_sig_size(const struct p11_op *op, size_t n, size_t *need)
{
	const struct p11_mop *st = op->state;
	size_t k = p11_key_bytes(op->key);

	switch (st->m->fam) {
	case P11_MF_RSA_PKCS:
	case P11_MF_RSA_X509:
	case P11_MF_RSA_PKCS_H:
	case P11_MF_RSA_PSS:
		*need = k ? k : 1024;
		if (st->m->fam == P11_MF_RSA_PKCS && k && (k < 11 || n > k - 11))
			return CKR_DATA_LEN_RANGE;
		if (st->m->fam == P11_MF_RSA_X509 && k && n > k)
			return CKR_DATA_LEN_RANGE;
		if (st->m->fam == P11_MF_RSA_PSS && n != st->ph->len)
			return CKR_DATA_LEN_RANGE; /* CKM_RSA_PKCS_PSS takes the digest */
		break;
	case P11_MF_ECDSA:
		*need = k ? 2 * k : 132;
		if (!st->m->hash && !p11_hash_by_len(n))
			return CKR_DATA_LEN_RANGE;
		break;
	case P11_MF_EDDSA:
		*need = 64;
		break;
	case P11_MF_HMAC:
	case P11_MF_AES_CMAC:
		*need = st->mac_len;
		break;
	default:
		return CKR_MECHANISM_INVALID;
	}
	if (n > P11_MAX_DATA)
		return CKR_DATA_LEN_RANGE;
	return CKR_OK;
}

/* ---- verification ---- */

CK_RV p11_mech_verify(struct p11_session *s, struct p11_op *op, const uint8_t *in, size_t n,
                      const uint8_t *sig, size_t siglen)
{
	const struct p11_mop *st = op->state;
	enum p11_mfam f = st->m->fam;
	size_t need, k = p11_key_bytes(op->key);
	struct p11_rq r = {0};
	const char *tag;
	CK_RV rv = p11_mech_sig_size(op, n, &need);

	if (rv != CKR_OK)
		return rv;
	/* the length is known unless the key's size is not */
	if ((k || (!fam_rsa(f) && f != P11_MF_ECDSA)) && siglen != need)
		return CKR_SIGNATURE_LEN_RANGE;
	if (f == P11_MF_RSA_PKCS || f == P11_MF_RSA_X509) {
		/* recover what was signed, then compare */
		struct kh_buf *rec = kh_buf_new(P11_RES_MAX);
		if (!rec)
			return CKR_HOST_MEMORY;
		rv = p11_mech_vrecover(s, op, sig, siglen, rec);
		if (rv == CKR_OK) {
			size_t rl = kh_buf_len(rec);
			const uint8_t *rp = kh_buf_ptr(rec);
			bool ok = true;
			if (f == P11_MF_RSA_X509) {
				/* raw: the data stands left-padded with zeros */
				size_t i;
				ok = rl >= n;
				for (i = 0; ok && i < rl - n; i++)
					ok = rp[i] == 0;
				ok = ok && CRYPTO_memcmp(rp + (rl - n), in, n) == 0;
			} else {
				ok = rl == n && (n == 0 || CRYPTO_memcmp(rp, in, n) == 0);
			}
			if (!ok)
				rv = CKR_SIGNATURE_INVALID;
		}
		kh_buf_free(rec);
		return rv;
	}
	if ((rv = sig_request(op, true, in, n, sig, siglen, &r, &tag)) == CKR_OK)
		rv = p11_rq_run(s, &r, P11_CALL_BALANCE);
	if (r.kerr == KH_ERR_VERIFY_FAILED)
		rv = CKR_SIGNATURE_INVALID;
	p11_rq_free(&r);
	return rv;
}

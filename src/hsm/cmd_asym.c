/*
 * Asymmetric keys: generating key pairs (GRSA, GECC), loading clear keys
 * (ASYL, LRSA), public halves and their parts (APFP, RPFP, RDPK, ADPK) and
 * certificates (GPCA). A generated pair passes a pairwise consistency check
 * before anything is stored; a request that writes two slots writes both or
 * neither. Private key material is never returned except as a cryptogram.
 */
#include "hsm/cmds.h"
#include "hsm/db.h"
#include "hsm/keyobj.h"
#include "common/kh_buf.h"
#include "common/kh_mem.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#define RSA_E_MAX_HEX 64 /* FIPS 186-4: e < 2^256 */
#define RSA_E_FIPS_MIN 0x10001
#define PCT_SIG_MAX 512 /* an RSA-4096 signature; ECDSA P-521 DER is smaller */
/* PEM is base64 (a third larger than its DER) with line ends and headers */
#define CERT_MAX (2 * KH_KS_MATERIAL_MAX)

/* ---- usage ------------------------------------------------------------------- */

static uint16_t usage_default(enum kh_kclass cls, enum kh_ktype type)
{
	if (type == KH_KT_X25519)
		return KH_U_DERIVE;
	return cls == KH_KC_PRIVATE ? KH_U_SIGN : KH_U_VERIFY;
}

/* Usage in tag (default dflt), limited to what the key can do. */
static int read_usage(struct kh_ctx *c, const struct kh_frame *req, const char *tag,
                      enum kh_kclass cls, enum kh_ktype type, uint16_t dflt, uint16_t *out)
{
	uint16_t allowed = kh_usage_allowed(cls, type);
	char letters[8];
	int r;

	if ((r = kh_req_usage(c, req, tag, dflt, out)) != KH_OK)
		return r;
	if (*out & ~allowed) {
		kh_usage_str(allowed, letters);
		kh_ctx_detail(c, "%s (letters of %s for a %s %s key)", tag, letters,
		              kh_kclass_name(cls), kh_ktype_name(type));
		return KH_ERR_BAD_FIELD;
	}
	return KH_OK;
}

/* ---- emitting keys ------------------------------------------------------------ */

/* A pair's two halves: the private key in SL (else RC), the public key in
 * PS (else SD). Both slot writes are one transaction. */
static int emit_pair(struct kh_ctx *c, const struct kh_frame *req, struct kh_key *priv,
                     struct kh_key *pub, struct kh_buf *resp)
{
	bool stores = kh_frame_has(req, "SL") || kh_frame_has(req, "PS");
	int r;

	if (stores && (r = kh_db_begin(c->hsm->db)) != KH_OK)
		return r;
	r = kh_key_emit(c, req, priv, "SL", "KD", "RC", resp);
	if (r == KH_OK)
		r = kh_key_emit(c, req, pub, "PS", "PD", "SD", resp);
	if (!stores)
		return r;
	if (r != KH_OK) {
		kh_db_rollback(c->hsm->db);
		return r;
	}
	return kh_db_commit(c->hsm->db);
}

static int put_spki(struct kh_buf *resp, const struct kh_key *k)
{
	uint8_t *der = NULL;
	size_t n = 0;
	int r = kh_key_spki(k, &der, &n);
	if (r == KH_OK)
		r = kh_msg_put_hex(resp, "RD", der, n);
	free(der);
	return r;
}

/* The public half of priv as a key of its own. */
static int public_of(struct kh_ctx *c, const struct kh_key *priv, uint16_t usage, uint16_t flags,
                     struct kh_key **out)
{
	struct kh_keyattr a = {.cls = KH_KC_PUBLIC,
	                       .type = priv->a.type,
	                       .usage = usage,
	                       .flags = flags,
	                       .major = priv->a.major};
	int r;

	if (EVP_PKEY_up_ref(priv->pkey) != 1)
		return KH_ERR_CRYPTO;
	if ((r = kh_key_from_pkey(c, &a, priv->pkey, out)) != KH_OK)
		EVP_PKEY_free(priv->pkey);
	return r;
}

/* ---- pairwise consistency ---------------------------------------------------- */

static const uint8_t pct_msg[] = "Keyhold pairwise consistency check";

static int pct_sign(EVP_PKEY *priv, EVP_PKEY *pub, const EVP_MD *md)
{
	EVP_MD_CTX *m = EVP_MD_CTX_new();
	uint8_t sig[PCT_SIG_MAX];
	size_t n = sizeof(sig);
	int r = KH_ERR_CRYPTO;

	if (m == NULL)
		return KH_ERR_NOMEM;
	if (EVP_DigestSignInit(m, NULL, md, NULL, priv) == 1 &&
	    EVP_DigestSign(m, sig, &n, pct_msg, sizeof(pct_msg)) == 1 && EVP_MD_CTX_reset(m) == 1 &&
	    EVP_DigestVerifyInit(m, NULL, md, NULL, pub) == 1 &&
	    EVP_DigestVerify(m, sig, n, pct_msg, sizeof(pct_msg)) == 1)
		r = KH_OK;
	EVP_MD_CTX_free(m);
	return r;
}

static int pct_oaep(EVP_PKEY *priv, EVP_PKEY *pub)
{
	EVP_PKEY_CTX *e = EVP_PKEY_CTX_new(pub, NULL), *d = EVP_PKEY_CTX_new(priv, NULL);
	uint8_t ct[PCT_SIG_MAX], pt[PCT_SIG_MAX];
	size_t cn = sizeof(ct), pn = sizeof(pt);
	int r = KH_ERR_CRYPTO;

	if (e != NULL && d != NULL && EVP_PKEY_encrypt_init(e) == 1 &&
	    EVP_PKEY_CTX_set_rsa_padding(e, RSA_PKCS1_OAEP_PADDING) == 1 &&
	    EVP_PKEY_CTX_set_rsa_oaep_md(e, EVP_sha256()) == 1 &&
	    EVP_PKEY_encrypt(e, ct, &cn, pct_msg, sizeof(pct_msg)) == 1 &&
	    EVP_PKEY_decrypt_init(d) == 1 &&
	    EVP_PKEY_CTX_set_rsa_padding(d, RSA_PKCS1_OAEP_PADDING) == 1 &&
	    EVP_PKEY_CTX_set_rsa_oaep_md(d, EVP_sha256()) == 1 &&
	    EVP_PKEY_decrypt(d, pt, &pn, ct, cn) == 1 && pn == sizeof(pct_msg) &&
	    CRYPTO_memcmp(pt, pct_msg, pn) == 0)
		r = KH_OK;
	OPENSSL_cleanse(pt, sizeof(pt));
	EVP_PKEY_CTX_free(e);
	EVP_PKEY_CTX_free(d);
	return r;
}

static int derive(EVP_PKEY *priv, EVP_PKEY *peer, uint8_t out[static 32])
{
	EVP_PKEY_CTX *x = EVP_PKEY_CTX_new(priv, NULL);
	size_t n = 32;
	int ok = x != NULL && EVP_PKEY_derive_init(x) == 1 &&
	         EVP_PKEY_derive_set_peer(x, peer) == 1 && EVP_PKEY_derive(x, out, &n) == 1 &&
	         n == 32;
	EVP_PKEY_CTX_free(x);
	return ok ? KH_OK : KH_ERR_CRYPTO;
}

/* X25519 cannot sign: agree with a fresh peer both ways. */
static int pct_x25519(EVP_PKEY *priv, EVP_PKEY *pub)
{
	EVP_PKEY *peer = EVP_PKEY_Q_keygen(NULL, NULL, "X25519");
	uint8_t s1[32], s2[32];
	int r = KH_ERR_CRYPTO;

	if (peer != NULL && derive(priv, peer, s1) == KH_OK && derive(peer, pub, s2) == KH_OK &&
	    CRYPTO_memcmp(s1, s2, sizeof(s1)) == 0)
		r = KH_OK;
	OPENSSL_cleanse(s1, sizeof(s1));
	OPENSSL_cleanse(s2, sizeof(s2));
	EVP_PKEY_free(peer);
	return r;
}

/* The private key and the public key that will be handed out belong
 * together (FIPS 140-3 pairwise consistency test). */
static int pct(struct kh_ctx *c, const struct kh_key *priv, const struct kh_key *pub)
{
	int r;

	switch (priv->a.type) {
	case KH_KT_RSA:
		r = pct_sign(priv->pkey, pub->pkey, EVP_sha256());
		if (r == KH_OK && (priv->a.usage & KH_U_DECRYPT))
			r = pct_oaep(priv->pkey, pub->pkey);
		break;
	case KH_KT_EC:
		r = pct_sign(priv->pkey, pub->pkey, EVP_sha256());
		break;
	case KH_KT_ED25519:
		r = pct_sign(priv->pkey, pub->pkey, NULL);
		break;
	case KH_KT_X25519:
		r = pct_x25519(priv->pkey, pub->pkey);
		break;
	default:
		return KH_ERR_INTERNAL;
	}
	if (r != KH_OK)
		kh_ctx_detail(c, "pairwise consistency check failed");
	return r;
}

/* ---- GRSA, GECC -------------------------------------------------------------- */

/* Both halves of a new pair go to asymmetric slots, two different ones. */
static int plan_pair(struct kh_ctx *c, const struct kh_frame *req, struct kh_op *op)
{
	uint64_t sl, ps;

	if (kh_frame_has(req, "SL") && kh_frame_has(req, "PS") &&
	    kh_frame_u64(req, "SL", 0, KH_SLOT_MAX, &sl) == KH_OK &&
	    kh_frame_u64(req, "PS", 0, KH_SLOT_MAX, &ps) == KH_OK && sl == ps) {
		kh_ctx_detail(c, "PS (a slot other than SL)");
		return KH_ERR_BAD_FIELD;
	}
	op->dest[op->ndest++] = (struct kh_dest){"SL", KH_SK_ASYMMETRIC};
	op->dest[op->ndest++] = (struct kh_dest){"PS", KH_SK_ASYMMETRIC};
	return kh_req_flags(c, req, &op->new_flags);
}

/* What a pair request asks for, read before the (slow) generation. */
struct pair_req {
	uint16_t usage, pub_usage, flags;
	enum kh_mk_id major;
};

static int read_pair(struct kh_ctx *c, const struct kh_frame *req, enum kh_ktype type,
                     struct pair_req *p)
{
	int r;

	if ((r = read_usage(c, req, "CZ", KH_KC_PRIVATE, type, usage_default(KH_KC_PRIVATE, type),
	                    &p->usage)) != KH_OK ||
	    (r = read_usage(c, req, "PZ", KH_KC_PUBLIC, type, kh_usage_public_of(p->usage),
	                    &p->pub_usage)) != KH_OK ||
	    (r = kh_req_flags(c, req, &p->flags)) != KH_OK ||
	    (r = kh_req_major(c, req, &p->major)) != KH_OK)
		return r;
	return KH_OK;
}

/* Check, store or wrap a generated pair (pk is taken) and answer. */
static int finish_pair(struct kh_ctx *c, const struct kh_frame *req, const struct pair_req *p,
                       EVP_PKEY *pk, struct kh_buf *resp)
{
	struct kh_keyattr a = {.cls = KH_KC_PRIVATE,
	                       .usage = p->usage,
	                       .flags = kh_key_new_flags(p->flags, true),
	                       .major = p->major};
	struct kh_key *priv = NULL, *pub = NULL;
	int r;

	if ((r = kh_key_from_pkey(c, &a, pk, &priv)) != KH_OK) {
		EVP_PKEY_free(pk);
		return r;
	}
	/* public keys are never sensitive */
	if ((r = public_of(c, priv, p->pub_usage,
	                   kh_key_new_flags(p->flags & ~KH_KF_SENSITIVE, true), &pub)) != KH_OK ||
	    (r = pct(c, priv, pub)) != KH_OK)
		goto out;
	if ((r = kh_msg_put(resp, "BB", "Y")) == KH_OK &&
	    (r = emit_pair(c, req, priv, pub, resp)) == KH_OK)
		r = kh_msg_put_hex(resp, "RD", pub->der, pub->der_len);
out:
	kh_key_unref(priv);
	kh_key_unref(pub);
	return r;
}

static int read_rsa_bits(struct kh_ctx *c, const struct kh_frame *req, uint32_t *bits)
{
	uint64_t v;
	if (kh_frame_u64(req, "RB", 1024, 4096, &v) != KH_OK ||
	    (v != 1024 && v != 2048 && v != 3072 && v != 4096)) {
		kh_ctx_detail(c, "RB (1024, 2048, 3072 or 4096)");
		return kh_frame_has(req, "RB") ? KH_ERR_BAD_FIELD : KH_ERR_MISSING_FIELD;
	}
	*bits = (uint32_t)v;
	return KH_OK;
}

/* RA: the public exponent in hex, any number of digits (default 10001). */
static int read_rsa_e(struct kh_ctx *c, const struct kh_frame *req, BIGNUM **out)
{
	char hex[RSA_E_MAX_HEX + 1] = "10001";
	BIGNUM *e = NULL;

	if (kh_frame_has(req, "RA")) {
		if (kh_frame_str(req, "RA", hex, sizeof(hex)) != KH_OK || hex[0] == '\0')
			goto bad;
		for (size_t i = 0; hex[i] != '\0'; i++)
			if (!((hex[i] >= '0' && hex[i] <= '9') ||
			      (hex[i] >= 'A' && hex[i] <= 'F') || (hex[i] >= 'a' && hex[i] <= 'f')))
				goto bad;
	}
	if (BN_hex2bn(&e, hex) == 0)
		return KH_ERR_NOMEM;
	if (!BN_is_odd(e) || BN_num_bits(e) < 2) {
		BN_free(e);
		goto bad;
	}
	*out = e;
	return KH_OK;
bad:
	kh_ctx_detail(c, "RA (an odd public exponent of at least 3, hex, up to %d digits)",
	              RSA_E_MAX_HEX);
	return KH_ERR_BAD_FIELD;
}

KH_PLAN(kh_plan_grsa)
{
	uint32_t bits;
	BIGNUM *e = NULL;
	int r;

	if ((r = read_rsa_bits(c, req, &bits)) != KH_OK || (r = read_rsa_e(c, req, &e)) != KH_OK)
		return r;
	if (bits < 2048)
		op->fips_refusal = "RSA keys under 2048 bits";
	else if (BN_num_bits(e) <= 17 && BN_get_word(e) < RSA_E_FIPS_MIN)
		op->fips_refusal = "RSA public exponents under 10001 (hex)";
	BN_free(e);
	return plan_pair(c, req, op);
}

static int rsa_keygen(uint32_t bits, const BIGNUM *e, EVP_PKEY **out)
{
	EVP_PKEY_CTX *g = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
	uint8_t ebuf[RSA_E_MAX_HEX / 2];
	size_t nbits = bits, elen = (size_t)BN_num_bytes(e);
	int r = KH_ERR_CRYPTO;

	/* OSSL_PARAM integers are native-endian */
	if (g != NULL && BN_bn2nativepad(e, ebuf, (int)elen) == (int)elen) {
		OSSL_PARAM params[] = {
		    OSSL_PARAM_construct_size_t(OSSL_PKEY_PARAM_RSA_BITS, &nbits),
		    OSSL_PARAM_construct_BN(OSSL_PKEY_PARAM_RSA_E, ebuf, elen),
		    OSSL_PARAM_construct_end(),
		};
		*out = NULL;
		if (EVP_PKEY_keygen_init(g) == 1 && EVP_PKEY_CTX_set_params(g, params) == 1 &&
		    EVP_PKEY_keygen(g, out) == 1)
			r = KH_OK;
	}
	EVP_PKEY_CTX_free(g);
	return r;
}

KH_ACT(kh_cmd_grsa)
{
	struct pair_req p;
	EVP_PKEY *pk = NULL;
	uint32_t bits;
	BIGNUM *e = NULL;
	int r;

	if ((r = read_rsa_bits(c, req, &bits)) != KH_OK || (r = read_rsa_e(c, req, &e)) != KH_OK)
		return r;
	if ((r = read_pair(c, req, KH_KT_RSA, &p)) == KH_OK)
		r = rsa_keygen(bits, e, &pk);
	BN_free(e);
	if (r != KH_OK)
		return r;
	return finish_pair(c, req, &p, pk, resp);
}

static const struct curve {
	const char *code, *name; /* RA values */
	const char *alg, *group; /* EVP_PKEY_Q_keygen arguments */
	enum kh_ktype type;
} curves[] = {
	/* clang-format off */
	{"2", "P-256", "EC", "P-256", KH_KT_EC},
	{"3", "P-384", "EC", "P-384", KH_KT_EC},
	{"4", "P-521", "EC", "P-521", KH_KT_EC},
	{"5", "ED25519", "ED25519", NULL, KH_KT_ED25519},
	{"6", "X25519", "X25519", NULL, KH_KT_X25519},
	/* clang-format on */
};

static int read_curve(struct kh_ctx *c, const struct kh_frame *req, const struct curve **out)
{
	char v[16];
	if (kh_frame_str(req, "RA", v, sizeof(v)) == KH_OK)
		for (size_t i = 0; i < sizeof(curves) / sizeof(curves[0]); i++)
			if (strcmp(v, curves[i].code) == 0 || strcmp(v, curves[i].name) == 0) {
				*out = &curves[i];
				return KH_OK;
			}
	kh_ctx_detail(c, "RA (2 P-256, 3 P-384, 4 P-521, 5 ED25519, 6 X25519)");
	return kh_frame_has(req, "RA") ? KH_ERR_BAD_FIELD : KH_ERR_MISSING_FIELD;
}

KH_PLAN(kh_plan_gecc)
{
	const struct curve *cv;
	int r = read_curve(c, req, &cv);
	if (r != KH_OK)
		return r;
	/* refused before the generation; kh_key_policy would refuse the key
	 * after it */
	if (cv->type == KH_KT_ED25519)
		op->fips_refusal = "Ed25519 (EdDSA) (not an approved algorithm in FIPS mode)";
	else if (cv->type == KH_KT_X25519)
		op->fips_refusal = "X25519 (not an approved algorithm in FIPS mode)";
	return plan_pair(c, req, op);
}

KH_ACT(kh_cmd_gecc)
{
	const struct curve *cv;
	struct pair_req p;
	EVP_PKEY *pk;
	int r;

	if ((r = read_curve(c, req, &cv)) != KH_OK ||
	    (r = read_pair(c, req, cv->type, &p)) != KH_OK)
		return r;
	pk = cv->group != NULL ? EVP_PKEY_Q_keygen(NULL, NULL, cv->alg, cv->group)
	                       : EVP_PKEY_Q_keygen(NULL, NULL, cv->alg);
	if (pk == NULL)
		return KH_ERR_CRYPTO;
	return finish_pair(c, req, &p, pk, resp);
}

/* ---- ASYL, LRSA ---------------------------------------------------------------- */

/* The class of the DER key in KV, from its structure: an SPKI starts with
 * the AlgorithmIdentifier SEQUENCE, PKCS#8 and PKCS#1 with the version
 * INTEGER. Read without parsing the key so that the plan can ask for the
 * right permission; the parse that follows accepts only this class. */
static int kv_class(struct kh_ctx *c, const struct kh_frame *req, enum kh_kclass *out)
{
	const struct kh_field *f = kh_frame_get(req, "KV");
	uint8_t b[6];
	size_t off;
	int n;

	if (f == NULL) {
		kh_ctx_detail(c, "KV");
		return KH_ERR_MISSING_FIELD;
	}
	n = kh_hex_decode(f->val, f->len < 2 * sizeof(b) ? f->len & ~(size_t)1 : 2 * sizeof(b), b,
	                  sizeof(b));
	if (n < 3 || b[0] != 0x30)
		goto bad;
	off = b[1] < 0x80 ? 2 : 2 + (size_t)(b[1] & 0x7f);
	if (off >= (size_t)n)
		goto bad;
	if (b[off] == 0x30)
		*out = KH_KC_PUBLIC;
	else if (b[off] == 0x02)
		*out = KH_KC_PRIVATE;
	else
		goto bad;
	return KH_OK;
bad:
	kh_ctx_detail(c, "KV (PKCS#8, PKCS#1 or SubjectPublicKeyInfo DER, hex)");
	return KH_ERR_BAD_FIELD;
}

static int plan_load(struct kh_ctx *c, const struct kh_frame *req, struct kh_op *op)
{
	enum kh_kclass cls;
	int r;

	if ((r = kv_class(c, req, &cls)) != KH_OK)
		return r;
	if (cls == KH_KC_PUBLIC)
		op->perms |= KH_PERM(KH_P_KEYS_IMPORT_PKI);
	else
		op->fips_refusal = "clear import of private keys (unwrap them with GPKU/GPUK)";
	op->dest[op->ndest++] = (struct kh_dest){"SL", KH_SK_ASYMMETRIC};
	return kh_req_flags(c, req, &op->new_flags);
}

KH_PLAN(kh_plan_asyl)
{
	return plan_load(c, req, op);
}

KH_PLAN(kh_plan_lrsa)
{
	return plan_load(c, req, op);
}

static int load(struct kh_ctx *c, const struct kh_frame *req, bool rsa_only, struct kh_buf *resp)
{
	struct kh_keyattr a = {0};
	struct kh_key *k = NULL;
	uint16_t flags;
	uint8_t *m = NULL;
	size_t mlen = 0;
	int r;

	if ((r = kv_class(c, req, &a.cls)) != KH_OK ||
	    (r = kh_req_flags(c, req, &flags)) != KH_OK ||
	    (r = kh_req_major(c, req, &a.major)) != KH_OK)
		return r;
	a.flags = kh_key_new_flags(a.cls == KH_KC_PUBLIC ? flags & ~KH_KF_SENSITIVE : flags, false);
	if ((r = kh_frame_hex_secure(req, "KV", KH_KS_MATERIAL_MAX, &m, &mlen)) != KH_OK) {
		kh_ctx_detail(c, "KV (hex, at most %d bytes)", KH_KS_MATERIAL_MAX);
		return r;
	}
	r = kh_key_from_der(c, &a, m, mlen, &k);
	kh_secure_free(m, mlen);
	if (r != KH_OK)
		return r;
	if (rsa_only && a.type != KH_KT_RSA) {
		kh_ctx_detail(c, "LRSA loads RSA keys only (ASYL loads any)");
		r = KH_ERR_UNSUPPORTED;
		goto out;
	}
	/* the usage's default and limits depend on the type just read; the
	 * key is not shared yet, so it is set here */
	if ((r = read_usage(c, req, "CZ", a.cls, a.type, usage_default(a.cls, a.type),
	                    &k->a.usage)) != KH_OK)
		goto out;
	if ((r = kh_msg_put(resp, "BB", "Y")) == KH_OK &&
	    (r = kh_key_emit(c, req, k, "SL", "KD", NULL, resp)) == KH_OK &&
	    (r = put_spki(resp, k)) == KH_OK && rsa_only)
		r = kh_msg_put_u64(resp, "RB", k->a.bits);
out:
	kh_key_unref(k);
	return r;
}

KH_ACT(kh_cmd_asyl)
{
	return load(c, req, false, resp);
}

KH_ACT(kh_cmd_lrsa)
{
	return load(c, req, true, resp);
}

/* ---- public keys ---------------------------------------------------------------- */

KH_PLAN(kh_plan_apfp)
{
	op->ref[op->nref++] = (struct kh_keyref){.slot_tag = "SL",
	                                         .id_tag = "KD",
	                                         .cg_tag = "CG",
	                                         .flags = KH_KR_REQUIRED,
	                                         .classes = 1u << KH_KC_PRIVATE};
	op->dest[op->ndest++] = (struct kh_dest){"PS", KH_SK_ASYMMETRIC};
	return KH_OK;
}

/* The public key gets the private key's flags (never sensitive) and major
 * key, and a new identifier. */
KH_ACT(kh_cmd_apfp)
{
	const struct kh_key *priv = c->op->key[0];
	uint16_t usage, flags = priv->a.flags & (KH_KF_REQUESTABLE & ~KH_KF_SENSITIVE);
	struct kh_key *pub = NULL;
	int r;

	/* (a private key added by GPKA may carry letters its public key cannot) */
	if ((r = read_usage(c, req, "PZ", KH_KC_PUBLIC, priv->a.type,
	                    kh_usage_public_of(priv->a.usage) &
	                        kh_usage_allowed(KH_KC_PUBLIC, priv->a.type),
	                    &usage)) != KH_OK ||
	    (r = public_of(c, priv, usage,
	                   kh_key_new_flags(flags, (priv->a.flags & KH_KF_LOCAL) != 0), &pub)) !=
	        KH_OK)
		return r;
	if ((r = kh_msg_put(resp, "BB", "Y")) == KH_OK &&
	    (r = kh_key_emit(c, req, pub, "PS", "PD", "SD", resp)) == KH_OK)
		r = kh_msg_put_hex(resp, "RD", pub->der, pub->der_len);
	kh_key_unref(pub);
	return r;
}

KH_PLAN(kh_plan_rpfp)
{
	op->ref[op->nref++] =
	    (struct kh_keyref){.slot_tag = "SL",
	                       .id_tag = "KD",
	                       .cg_tag = "CG",
	                       .flags = KH_KR_REQUIRED,
	                       .classes = 1u << KH_KC_PRIVATE | 1u << KH_KC_PUBLIC,
	                       .types = KH_KT_BIT(KH_KT_RSA)};
	return KH_OK;
}

/* A big number as big-endian bytes, padded to len (0: its own length). */
static int put_bn(struct kh_buf *resp, const char *tag, const BIGNUM *bn, size_t len)
{
	size_t n = len ? len : (size_t)BN_num_bytes(bn);
	uint8_t *b = malloc(n ? n : 1);
	int r;

	if (b == NULL)
		return KH_ERR_NOMEM;
	r = BN_bn2binpad(bn, b, (int)n) == (int)n ? kh_msg_put_hex(resp, tag, b, n) : KH_ERR_CRYPTO;
	free(b);
	return r;
}

KH_ACT(kh_cmd_rpfp)
{
	const struct kh_key *k = c->op->key[0];
	BIGNUM *n = NULL, *e = NULL;
	int r = KH_ERR_CRYPTO;

	if (EVP_PKEY_get_bn_param(k->pkey, OSSL_PKEY_PARAM_RSA_N, &n) == 1 &&
	    EVP_PKEY_get_bn_param(k->pkey, OSSL_PKEY_PARAM_RSA_E, &e) == 1 &&
	    (r = kh_msg_put(resp, "BB", "Y")) == KH_OK &&
	    (r = kh_msg_put_u64(resp, "RB", k->a.bits)) == KH_OK &&
	    (r = put_bn(resp, "MO", n, ((size_t)k->a.bits + 7) / 8)) == KH_OK)
		r = put_bn(resp, "PE", e, 0);
	BN_free(n);
	BN_free(e);
	return r;
}

KH_PLAN(kh_plan_rdpk)
{
	op->ref[op->nref++] =
	    (struct kh_keyref){.cg_tag = "CG",
	                       .flags = KH_KR_REQUIRED,
	                       .classes = 1u << KH_KC_PRIVATE | 1u << KH_KC_PUBLIC};
	return KH_OK;
}

KH_ACT(kh_cmd_rdpk)
{
	const struct kh_key *k = c->op->key[0];
	int r;

	if ((r = kh_msg_put(resp, "BB", "Y")) != KH_OK || (r = put_spki(resp, k)) != KH_OK ||
	    (r = kh_msg_put(resp, "KT", kh_ktype_name(k->a.type))) != KH_OK)
		return r;
	return kh_msg_put_u64(resp, "BT", k->a.bits);
}

/* A trusted public key only: the cryptogram opening under this HSM's major
 * key is the binding check. */
KH_PLAN(kh_plan_adpk)
{
	op->ref[op->nref++] = (struct kh_keyref){
	    .cg_tag = "CG", .flags = KH_KR_REQUIRED, .classes = 1u << KH_KC_PUBLIC};
	return KH_OK;
}

KH_ACT(kh_cmd_adpk)
{
	const struct kh_key *k = c->op->key[0];
	char usage[8], flags[8];
	int r;

	kh_usage_str(k->a.usage, usage);
	kh_flags_str(k->a.flags, flags);
	if ((r = kh_msg_put(resp, "BB", "Y")) != KH_OK ||
	    (r = kh_msg_put_hex(resp, "RD", k->der, k->der_len)) != KH_OK ||
	    (r = kh_msg_put(resp, "KT", kh_ktype_name(k->a.type))) != KH_OK ||
	    (r = kh_msg_put_u64(resp, "BT", k->a.bits)) != KH_OK ||
	    (r = kh_msg_put(resp, "CZ", usage)) != KH_OK ||
	    (r = kh_msg_put(resp, "KF", flags)) != KH_OK)
		return r;
	return kh_msg_put_hex(resp, "KD", k->key_id, KH_KEY_ID_LEN);
}

/* ---- certificates ----------------------------------------------------------------- */

KH_PLAN(kh_plan_gpca)
{
	if (!kh_frame_has(req, "SL")) {
		kh_ctx_detail(c, "SL (certificates are stored, they have no cryptogram)");
		return KH_ERR_MISSING_FIELD;
	}
	op->dest[op->ndest++] = (struct kh_dest){"SL", KH_SK_ASYMMETRIC};
	return kh_req_flags(c, req, &op->new_flags);
}

/* A certificate's key type, for its usage. */
static int cert_key_type(struct kh_ctx *c, EVP_PKEY *pk, enum kh_ktype *out)
{
	uint32_t bits;
	if (pk == NULL || kh_pkey_kind(pk, out, &bits) != KH_OK) {
		kh_ctx_detail(c, "CE: the certificate's key algorithm");
		return KH_ERR_UNSUPPORTED;
	}
	return KH_OK;
}

/* CE as DER (malloc'd): a DER certificate starts with its SEQUENCE,
 * anything else is read as PEM. */
static int read_cert(struct kh_ctx *c, const struct kh_frame *req, uint8_t **der, size_t *len)
{
	const struct kh_field *f = kh_frame_get(req, "CE");
	uint8_t *b = NULL, *p;
	size_t n = 0;
	BIO *bio = NULL;
	X509 *x = NULL;
	int dn, r = KH_ERR_BAD_FIELD;

	if (f == NULL) {
		kh_ctx_detail(c, "CE");
		return KH_ERR_MISSING_FIELD;
	}
	if (f->len / 2 == 0 || f->len / 2 > CERT_MAX)
		goto out;
	if ((b = malloc(f->len / 2)) == NULL) {
		r = KH_ERR_NOMEM;
		goto out;
	}
	if (kh_frame_hex(req, "CE", b, f->len / 2, &n) != KH_OK || n == 0)
		goto out;
	if (b[0] == 0x30) {
		*der = b;
		*len = n;
		return KH_OK;
	}
	if ((bio = BIO_new_mem_buf(b, (int)n)) == NULL ||
	    (x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) == NULL || (dn = i2d_X509(x, NULL)) <= 0)
		goto out;
	if ((*der = malloc((size_t)dn)) == NULL) {
		r = KH_ERR_NOMEM;
		goto out;
	}
	p = *der;
	if (i2d_X509(x, &p) != dn) {
		free(*der);
		goto out;
	}
	*len = (size_t)dn;
	r = KH_OK;
out:
	if (r == KH_ERR_BAD_FIELD)
		kh_ctx_detail(c, "CE (a certificate, DER or PEM, hex)");
	BIO_free(bio);
	X509_free(x);
	free(b);
	return r;
}

KH_ACT(kh_cmd_gpca)
{
	struct kh_keyattr a = {.cls = KH_KC_CERT};
	struct kh_key *k = NULL;
	enum kh_ktype type;
	uint8_t *der = NULL;
	size_t len = 0;
	uint16_t flags;
	int r;

	if ((r = kh_req_flags(c, req, &flags)) != KH_OK ||
	    (r = kh_req_major(c, req, &a.major)) != KH_OK ||
	    (r = read_cert(c, req, &der, &len)) != KH_OK)
		return r;
	a.flags = kh_key_new_flags(flags & ~KH_KF_SENSITIVE, false);
	r = kh_key_from_der(c, &a, der, len, &k);
	free(der);
	if (r != KH_OK)
		return r;
	/* a certificate does what its public key can do */
	if ((r = cert_key_type(c, k->pkey, &type)) != KH_OK ||
	    (r = read_usage(c, req, "CZ", KH_KC_PUBLIC, type, kh_usage_allowed(KH_KC_PUBLIC, type),
	                    &k->a.usage)) != KH_OK)
		goto out;
	if ((r = kh_msg_put(resp, "BB", "Y")) == KH_OK &&
	    (r = kh_key_emit(c, req, k, "SL", "KD", NULL, resp)) == KH_OK)
		r = put_spki(resp, k);
out:
	kh_key_unref(k);
	return r;
}

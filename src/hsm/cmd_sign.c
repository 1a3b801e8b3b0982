/*
 * Signatures with private keys and their verification: ASYS, RSAS, ASYV,
 * and the engine GPSV shares (kh_sign_run). RSA PKCS#1 v1.5 and PSS, ECDSA
 * (DER or IEEE P1363 r||s), pure Ed25519. Keys come resolved and checked
 * from the dispatcher; a verification failure says nothing about why.
 */
#include "hsm/cmds.h"
#include "hsm/keyobj.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/rsa.h>

/* DigestInfo prefix (SHA-2 and SHA-3) plus PKCS#1 v1.5's minimum padding */
#define PKCS1_OVERHEAD (19 + 11)

/* A request's signature parameters, read against the key's type. */
struct sig_req {
	const EVP_MD *md;   /* HA; NULL for Ed25519 */
	const EVP_MD *mgf1; /* MG (PSS) */
	int pad;            /* RSA_PKCS1_PADDING or RSA_PKCS1_PSS_PADDING */
	int salt;           /* SA (PSS) */
	bool p1363;         /* SF P1363 (ECDSA) */
	bool prehashed;     /* in is HS, not DT */
	uint8_t *in;        /* DT or HS */
	size_t in_len;
};

/* Tags that mean nothing for a key type are refused rather than ignored:
 * a client asking for PSS on an EC key has made a mistake. */
static int refuse_tags(struct kh_ctx *c, const struct kh_frame *req, const char *const *tags,
                       const char *why)
{
	for (; *tags != NULL; tags++)
		if (kh_frame_has(req, *tags)) {
			kh_ctx_detail(c, "%s (%s)", *tags, why);
			return KH_ERR_BAD_FIELD;
		}
	return KH_OK;
}

/* A hex field in a fresh buffer sized by the field (data may be megabytes). */
static int read_hex(struct kh_ctx *c, const struct kh_frame *req, const char *tag, uint8_t **out,
                    size_t *len)
{
	const struct kh_field *f = kh_frame_get(req, tag);
	size_t cap = f->len / 2 + 1;
	if ((*out = malloc(cap)) == NULL)
		return KH_ERR_NOMEM;
	if (kh_frame_hex(req, tag, *out, cap, len) != KH_OK) {
		free(*out);
		*out = NULL;
		kh_ctx_detail(c, "%s (hex)", tag);
		return KH_ERR_BAD_FIELD;
	}
	return KH_OK;
}

static int read_rsa(struct kh_ctx *c, const struct kh_frame *req, const struct kh_key *k,
                    struct sig_req *p)
{
	static const char *const not_rsa[] = {"SF", NULL};
	static const char *const not_pkcs1[] = {"SA", "MG", NULL};
	char v[8];
	int r, hlen = EVP_MD_get_size(p->md), size = EVP_PKEY_get_size(k->pkey);

	if ((r = refuse_tags(c, req, not_rsa, "ECDSA keys only")) != KH_OK)
		return r;
	p->pad = RSA_PKCS1_PADDING;
	if (kh_frame_has(req, "PD")) {
		if (kh_frame_str(req, "PD", v, sizeof(v)) != KH_OK ||
		    (strcmp(v, "PKCS1") != 0 && strcmp(v, "PSS") != 0)) {
			kh_ctx_detail(c, "PD (PKCS1 or PSS)");
			return KH_ERR_BAD_FIELD;
		}
		if (strcmp(v, "PSS") == 0)
			p->pad = RSA_PKCS1_PSS_PADDING;
	}
	if (p->pad == RSA_PKCS1_PADDING) {
		if ((r = refuse_tags(c, req, not_pkcs1, "PSS only")) != KH_OK)
			return r;
		if (size < hlen + PKCS1_OVERHEAD) {
			kh_ctx_detail(c, "HA (too long for a %d-byte modulus)", size);
			return KH_ERR_BAD_FIELD;
		}
		return KH_OK;
	}
	p->mgf1 = p->md;
	if (kh_frame_has(req, "MG") && (r = kh_req_md(c, req, "MG", NULL, &p->mgf1)) != KH_OK)
		return r;
	/* EMSA-PSS: emLen = ceil((modBits - 1) / 8) >= hLen + sLen + 2 */
	int max_salt = (EVP_PKEY_get_bits(k->pkey) - 1 + 7) / 8 - hlen - 2;
	uint64_t salt = (uint64_t)hlen;
	if (kh_frame_has(req, "SA") && kh_frame_u64(req, "SA", 0, INT_MAX, &salt) != KH_OK)
		salt = UINT64_MAX;
	if (max_salt < 0 || salt > (uint64_t)max_salt) {
		kh_ctx_detail(c, "SA (salt length, at most %d bytes for this key and HA)",
		              max_salt < 0 ? 0 : max_salt);
		return KH_ERR_BAD_FIELD;
	}
	p->salt = (int)salt;
	return KH_OK;
}

static int read_ec(struct kh_ctx *c, const struct kh_frame *req, struct sig_req *p)
{
	static const char *const not_ec[] = {"PD", "SA", "MG", NULL};
	char v[8];
	int r;

	if ((r = refuse_tags(c, req, not_ec, "RSA keys only")) != KH_OK)
		return r;
	if (kh_frame_has(req, "SF")) {
		if (kh_frame_str(req, "SF", v, sizeof(v)) != KH_OK ||
		    (strcmp(v, "DER") != 0 && strcmp(v, "P1363") != 0)) {
			kh_ctx_detail(c, "SF (DER or P1363)");
			return KH_ERR_BAD_FIELD;
		}
		p->p1363 = strcmp(v, "P1363") == 0;
	}
	return KH_OK;
}

/* Everything but the signature: hash, padding, format, and DT or HS. */
static int read_params(struct kh_ctx *c, const struct kh_frame *req, const struct kh_key *k,
                       struct sig_req *p)
{
	static const char *const not_ed[] = {"HA", "HS", "PD", "SA", "MG", "SF", NULL};
	bool dt = kh_frame_has(req, "DT"), hs = kh_frame_has(req, "HS");
	int r;

	if (dt == hs) {
		kh_ctx_detail(c, dt ? "DT or HS, not both" : "DT or HS");
		return dt ? KH_ERR_BAD_FIELD : KH_ERR_MISSING_FIELD;
	}
	switch (k->a.type) {
	case KH_KT_ED25519:
		/* pure EdDSA hashes the message itself: nothing to choose */
		if ((r = refuse_tags(c, req, not_ed, "not for Ed25519: pure EdDSA over DT")) !=
		    KH_OK)
			return r;
		break;
	case KH_KT_RSA:
	case KH_KT_EC:
		if ((r = kh_req_md(c, req, "HA", "SHA-256", &p->md)) != KH_OK)
			return r;
		r = k->a.type == KH_KT_RSA ? read_rsa(c, req, k, p) : read_ec(c, req, p);
		if (r != KH_OK)
			return r;
		break;
	default:
		kh_ctx_detail(c, "a %s key does not sign", kh_ktype_name(k->a.type));
		return KH_ERR_KEY_USAGE;
	}
	p->prehashed = hs;
	if ((r = read_hex(c, req, hs ? "HS" : "DT", &p->in, &p->in_len)) != KH_OK)
		return r;
	if (hs && p->in_len != (size_t)EVP_MD_get_size(p->md)) {
		kh_ctx_detail(c, "HS (%d bytes, the length of HA's digest)",
		              EVP_MD_get_size(p->md));
		return KH_ERR_BAD_FIELD;
	}
	return KH_OK;
}

/* One context per call over the cached key: OpenSSL keys are safe to
 * share between threads, contexts are not. */
static EVP_PKEY_CTX *pkey_ctx(const struct kh_key *k, const struct sig_req *p, bool verify)
{
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, k->pkey, NULL);
	if (ctx == NULL || (verify ? EVP_PKEY_verify_init(ctx) : EVP_PKEY_sign_init(ctx)) <= 0)
		goto fail;
	if (k->a.type == KH_KT_RSA && (EVP_PKEY_CTX_set_rsa_padding(ctx, p->pad) <= 0 ||
	                               (p->pad == RSA_PKCS1_PSS_PADDING &&
	                                (EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx, p->salt) <= 0 ||
	                                 EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, p->mgf1) <= 0))))
		goto fail;
	if (EVP_PKEY_CTX_set_signature_md(ctx, p->md) <= 0)
		goto fail;
	return ctx;
fail:
	EVP_PKEY_CTX_free(ctx);
	return NULL;
}

/* A signing context: a copy of the key's template when it was made for
 * the same digest and padding (PSS salt lengths vary, so PSS is set up
 * fresh), else a new one that becomes the template. */
static EVP_PKEY_CTX *sign_ctx(const struct kh_key *k, const struct sig_req *p)
{
	struct kh_sigcache *sc = k->sig;
	EVP_PKEY_CTX *ctx = NULL;
	bool cacheable = p->pad != RSA_PKCS1_PSS_PADDING;

	if (cacheable) {
		pthread_mutex_lock(&sc->mu);
		if (sc->ctx != NULL && sc->md == p->md && sc->pad == p->pad)
			ctx = EVP_PKEY_CTX_dup(sc->ctx);
		pthread_mutex_unlock(&sc->mu);
		if (ctx != NULL)
			return ctx;
	}
	if ((ctx = pkey_ctx(k, p, false)) == NULL || !cacheable)
		return ctx;
	EVP_PKEY_CTX *tmpl = EVP_PKEY_CTX_dup(ctx);
	if (tmpl != NULL) {
		pthread_mutex_lock(&sc->mu);
		EVP_PKEY_CTX_free(sc->ctx);
		sc->ctx = tmpl;
		sc->md = p->md;
		sc->pad = p->pad;
		pthread_mutex_unlock(&sc->mu);
	}
	return ctx;
}

/* Field size in bytes of the key's curve: P1363 fixes r and s to it. */
static size_t ec_width(const struct kh_key *k)
{
	return (k->a.bits + 7) / 8;
}

/* DER ECDSA-Sig-Value -> r||s. */
static int der_to_p1363(const struct kh_key *k, const uint8_t *der, size_t len, uint8_t *out)
{
	const uint8_t *q = der;
	const BIGNUM *br, *bs;
	size_t w = ec_width(k);
	ECDSA_SIG *s = d2i_ECDSA_SIG(NULL, &q, (long)len);
	int r = KH_ERR_CRYPTO;

	if (s == NULL)
		return KH_ERR_CRYPTO;
	ECDSA_SIG_get0(s, &br, &bs);
	if (BN_bn2binpad(br, out, (int)w) == (int)w && BN_bn2binpad(bs, out + w, (int)w) == (int)w)
		r = KH_OK;
	ECDSA_SIG_free(s);
	return r;
}

/* r||s of exactly twice the field size -> DER (malloc'd). A wrong length
 * is a malformed signature: KH_ERR_VERIFY_FAILED. */
static int p1363_to_der(const struct kh_key *k, const uint8_t *sig, size_t len, uint8_t **der,
                        size_t *der_len)
{
	size_t w = ec_width(k);
	BIGNUM *br = NULL, *bs = NULL;
	ECDSA_SIG *s = NULL;
	int n, r = KH_ERR_CRYPTO;

	*der = NULL;
	if (len != 2 * w)
		return KH_ERR_VERIFY_FAILED;
	if ((s = ECDSA_SIG_new()) == NULL || (br = BN_bin2bn(sig, (int)w, NULL)) == NULL ||
	    (bs = BN_bin2bn(sig + w, (int)w, NULL)) == NULL || !ECDSA_SIG_set0(s, br, bs))
		goto out;
	br = bs = NULL; /* owned by s */
	if ((n = i2d_ECDSA_SIG(s, der)) <= 0) {
		*der = NULL;
		goto out;
	}
	*der_len = (size_t)n;
	r = KH_OK;
out:
	BN_free(br);
	BN_free(bs);
	ECDSA_SIG_free(s);
	return r;
}

/* Only the one DER encoding of (r, s) is a signature: BER variants (long
 * lengths, leading zeros, trailing bytes) are malleable copies. */
static bool der_canonical(const uint8_t *sig, size_t len)
{
	const uint8_t *q = sig;
	uint8_t *re = NULL;
	ECDSA_SIG *s = d2i_ECDSA_SIG(NULL, &q, (long)len);
	bool ok = false;
	int n;

	if (s != NULL && q == sig + len && (n = i2d_ECDSA_SIG(s, &re)) > 0)
		ok = (size_t)n == len && memcmp(re, sig, len) == 0;
	OPENSSL_free(re);
	ECDSA_SIG_free(s);
	return ok;
}

static int ed25519_run(const struct kh_key *k, const struct sig_req *p, bool verify,
                       const uint8_t *sig, size_t sig_len, uint8_t *out, size_t *out_len)
{
	EVP_MD_CTX *m = EVP_MD_CTX_new();
	int r = KH_ERR_CRYPTO;

	if (m == NULL)
		return KH_ERR_NOMEM;
	if ((verify ? EVP_DigestVerifyInit_ex(m, NULL, NULL, NULL, NULL, k->pkey, NULL)
	            : EVP_DigestSignInit_ex(m, NULL, NULL, NULL, NULL, k->pkey, NULL)) != 1)
		goto out;
	if (verify)
		r = EVP_DigestVerify(m, sig, sig_len, p->in, p->in_len) == 1 ? KH_OK
		                                                             : KH_ERR_VERIFY_FAILED;
	else if (EVP_DigestSign(m, out, out_len, p->in, p->in_len) == 1)
		r = KH_OK;
out:
	EVP_MD_CTX_free(m);
	return r;
}

/* RSA and ECDSA over a digest (HS, or DT hashed here). The signature
 * produced or checked is always DER for ECDSA; P1363 is converted around it. */
static int digest_run(const struct kh_key *k, const struct sig_req *p, bool verify,
                      const uint8_t *sig, size_t sig_len, uint8_t *out, size_t *out_len)
{
	uint8_t dg[EVP_MAX_MD_SIZE];
	const uint8_t *tbs = p->in;
	size_t tbs_len = p->in_len;
	unsigned dlen = 0;
	EVP_PKEY_CTX *ctx = NULL;
	int r = KH_ERR_CRYPTO;

	if (!p->prehashed) {
		if (EVP_Digest(p->in, p->in_len, dg, &dlen, p->md, NULL) != 1)
			return KH_ERR_CRYPTO;
		tbs = dg;
		tbs_len = dlen;
	}
	if ((ctx = verify ? pkey_ctx(k, p, true) : sign_ctx(k, p)) == NULL)
		goto out;
	if (verify)
		r = EVP_PKEY_verify(ctx, sig, sig_len, tbs, tbs_len) == 1 ? KH_OK
		                                                          : KH_ERR_VERIFY_FAILED;
	else if (EVP_PKEY_sign(ctx, out, out_len, tbs, tbs_len) == 1)
		r = KH_OK;
out:
	EVP_PKEY_CTX_free(ctx);
	return r;
}

static int sign_out(struct kh_ctx *c, const struct kh_key *k, const struct sig_req *p,
                    struct kh_buf *resp)
{
	size_t cap = (size_t)EVP_PKEY_get_size(k->pkey), n = cap;
	uint8_t *sig = malloc(cap), *fixed = NULL;
	int r;

	if (sig == NULL)
		return KH_ERR_NOMEM;
	if (k->a.type == KH_KT_ED25519)
		r = ed25519_run(k, p, false, NULL, 0, sig, &n);
	else
		r = digest_run(k, p, false, NULL, 0, sig, &n);
	if (r == KH_OK && p->p1363) {
		if ((fixed = malloc(2 * ec_width(k))) == NULL)
			r = KH_ERR_NOMEM;
		else if ((r = der_to_p1363(k, sig, n, fixed)) == KH_OK)
			r = kh_msg_put_hex(resp, "SG", fixed, 2 * ec_width(k));
	} else if (r == KH_OK) {
		r = kh_msg_put_hex(resp, "SG", sig, n);
	}
	if (r == KH_ERR_CRYPTO) {
		ERR_clear_error();
		kh_ctx_detail(c, "signing failed");
	}
	free(fixed);
	free(sig);
	return r;
}

static int verify_in(struct kh_ctx *c, const struct kh_frame *req, const struct kh_key *k,
                     const struct sig_req *p)
{
	uint8_t *sig = NULL, *der = NULL;
	size_t sig_len = 0, der_len = 0;
	int r;

	if (!kh_frame_has(req, "SG")) {
		kh_ctx_detail(c, "SG");
		return KH_ERR_MISSING_FIELD;
	}
	if ((r = read_hex(c, req, "SG", &sig, &sig_len)) != KH_OK)
		return r;
	switch (k->a.type) {
	case KH_KT_RSA:
		/* OpenSSL accepts a PSS signature shorter than the modulus */
		r = sig_len == (size_t)EVP_PKEY_get_size(k->pkey)
		        ? digest_run(k, p, true, sig, sig_len, NULL, NULL)
		        : KH_ERR_VERIFY_FAILED;
		break;
	case KH_KT_EC:
		if (p->p1363)
			r = p1363_to_der(k, sig, sig_len, &der, &der_len);
		else
			r = der_canonical(sig, sig_len) ? KH_OK : KH_ERR_VERIFY_FAILED;
		if (r == KH_OK)
			r = digest_run(k, p, true, der ? der : sig, der ? der_len : sig_len, NULL,
			               NULL);
		break;
	default:
		r = ed25519_run(k, p, true, sig, sig_len, NULL, NULL);
		break;
	}
	/* why it failed is not kept for anyone to read */
	if (r == KH_ERR_VERIFY_FAILED || r == KH_ERR_CRYPTO)
		ERR_clear_error();
	if (r == KH_ERR_CRYPTO)
		kh_ctx_detail(c, "verification could not run");
	OPENSSL_free(der);
	free(sig);
	return r;
}

int kh_sign_run(struct kh_ctx *c, const struct kh_frame *req, const struct kh_key *k, bool verify,
                struct kh_buf *resp)
{
	struct sig_req p = {0};
	int r = read_params(c, req, k, &p);

	if (r == KH_OK)
		r = verify ? verify_in(c, req, k, &p) : sign_out(c, k, &p, resp);
	free(p.in);
	return r;
}

const char *kh_sign_fips_refusal(const struct kh_frame *req)
{
	static const char *const tags[] = {"HA", "MG"};
	char v[16];

	for (size_t i = 0; i < sizeof(tags) / sizeof(tags[0]); i++)
		if (kh_frame_str(req, tags[i], v, sizeof(v)) == KH_OK && strcmp(v, "SHA-1") == 0)
			return "SHA-1 in signature generation";
	return NULL;
}

static int plan_sign(const struct kh_frame *req, struct kh_op *op, uint32_t types)
{
	op->ref[op->nref++] = (struct kh_keyref){.slot_tag = "SL",
	                                         .id_tag = "KD",
	                                         .cg_tag = "CG",
	                                         .flags = KH_KR_REQUIRED,
	                                         .usage = KH_U_SIGN,
	                                         .classes = 1u << KH_KC_PRIVATE,
	                                         .types = types};
	op->fips_refusal = kh_sign_fips_refusal(req);
	return KH_OK;
}

KH_PLAN(kh_plan_asys)
{
	(void)c;
	return plan_sign(req, op,
	                 KH_KT_BIT(KH_KT_RSA) | KH_KT_BIT(KH_KT_EC) | KH_KT_BIT(KH_KT_ED25519));
}

KH_PLAN(kh_plan_rsas)
{
	(void)c;
	return plan_sign(req, op, KH_KT_BIT(KH_KT_RSA));
}

static int sign_cmd(struct kh_ctx *c, const struct kh_frame *req, struct kh_buf *resp)
{
	int r = kh_msg_put(resp, "BB", "Y");
	return r == KH_OK ? kh_sign_run(c, req, c->op->key[0], false, resp) : r;
}

KH_ACT(kh_cmd_asys)
{
	return sign_cmd(c, req, resp);
}

KH_ACT(kh_cmd_rsas)
{
	return sign_cmd(c, req, resp);
}

/* A clear public key (PU) verifies without keys.import_pki: trusting it
 * decides nothing the caller could not check with it alone. */
KH_PLAN(kh_plan_asyv)
{
	(void)c;
	(void)req;
	op->ref[op->nref++] = (struct kh_keyref){
	    .slot_tag = "SL",
	    .id_tag = "KD",
	    .cg_tag = "CG",
	    .pub_tag = "PU",
	    .flags = KH_KR_REQUIRED | KH_KR_CLEAR_PUB,
	    .usage = KH_U_VERIFY,
	    .classes = 1u << KH_KC_PUBLIC | 1u << KH_KC_PRIVATE,
	    .types = KH_KT_BIT(KH_KT_RSA) | KH_KT_BIT(KH_KT_EC) | KH_KT_BIT(KH_KT_ED25519)};
	return KH_OK;
}

KH_ACT(kh_cmd_asyv)
{
	int r = kh_sign_run(c, req, c->op->key[0], true, resp);
	return r == KH_OK ? kh_msg_put(resp, "BB", "Y") : r;
}

/* GPSV: one front for signing and verifying with any key that can: RSA,
 * EC and Ed25519 keys as ASYS/ASYV, generic secrets (HMAC) and AES keys
 * (CMAC) as HMAC/GPMC. OP picks the direction and so the usage. */
static int gpsv_op(struct kh_ctx *c, const struct kh_frame *req, bool *verify)
{
	char op[4];
	if (kh_frame_str(req, "OP", op, sizeof(op)) != KH_OK || (strcmp(op, "S") && strcmp(op, "V"))) {
		kh_ctx_detail(c, "OP (S sign, V verify)");
		return kh_frame_has(req, "OP") ? KH_ERR_BAD_FIELD : KH_ERR_MISSING_FIELD;
	}
	*verify = op[0] == 'V';
	return KH_OK;
}

KH_PLAN(kh_plan_gpsv)
{
	bool verify;
	int r = gpsv_op(c, req, &verify);
	if (r != KH_OK)
		return r;
	op->ref[op->nref++] = (struct kh_keyref){
	    .slot_tag = "SL",
	    .id_tag = "KD",
	    .cg_tag = "CG",
	    .pub_tag = "PU",
	    .flags = KH_KR_REQUIRED | (verify ? KH_KR_CLEAR_PUB : 0u),
	    .usage = verify ? KH_U_VERIFY : KH_U_SIGN,
	    .classes = 1u << KH_KC_SECRET | 1u << KH_KC_PRIVATE |
	               (verify ? 1u << KH_KC_PUBLIC : 0u),
	    .types = KH_KT_BIT(KH_KT_RSA) | KH_KT_BIT(KH_KT_EC) | KH_KT_BIT(KH_KT_ED25519) |
	             KH_KT_BIT(KH_KT_GENERIC) | KH_KT_BIT(KH_KT_AES)};
	/* SHA-1 signing is refused in FIPS mode; the plan cannot tell a MAC
	 * key from a signing key yet, so GPSV refuses SHA-1 for both */
	if (!verify)
		op->fips_refusal = kh_sign_fips_refusal(req);
	return KH_OK;
}

KH_ACT(kh_cmd_gpsv)
{
	const struct kh_key *k = c->op->key[0];
	bool verify;
	int r = gpsv_op(c, req, &verify);
	if (r == KH_OK)
		r = kh_msg_put(resp, "BB", "Y");
	if (r != KH_OK)
		return r;
	if (k->a.cls == KH_KC_SECRET)
		return kh_data_mac(c, req, k, verify, "SG", resp);
	return kh_sign_run(c, req, k, verify, resp);
}

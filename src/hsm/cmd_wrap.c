/*
 * Key wrapping and derivation: GPKW/GPKU (the standard forms, AES key wrap
 * RFC 3394 / RFC 5649 and RSA-OAEP, without key usage), GPWK/GPUK (the same
 * carrying the key's attributes so that its usage survives the trip) and
 * GPDK (ECDH / X25519, X9.63 and HKDF, into a new key that never leaves
 * clear). Clear material stays on the secure heap. Every unwrap failure is
 * one DECRYPT_FAILED with no detail: the answer must never tell an integrity
 * failure from a padding or length failure.
 */
#include "hsm/cmds.h"
#include "hsm/dispatch.h"
#include "hsm/keyobj.h"
#include "common/kh_buf.h"
#include "common/kh_mem.h"

#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/kdf.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

/* ---- wrapping algorithms -------------------------------------------------- */

enum wrap_alg { WA_KW = 1, WA_KWP, WA_OAEP };
#define WA_BIT(a) (1u << (a))
#define WA_ALL (WA_BIT(WA_KW) | WA_BIT(WA_KWP) | WA_BIT(WA_OAEP))

/* The wrapped form is at most this much longer than what it wraps (AES key
 * wrap: 8 bytes of integrity value and up to 7 of padding); OpenSSL's
 * RFC 5649 unwrap also wipes a whole input length of output on failure. */
#define KW_SLACK 16
/* SA, IN, SI: OpenSSL's HKDF takes at most 1024 bytes of info. */
#define KDF_PARAM_MAX 1024

/* GPWK blob: "KHW1" | class | type | bits (4, BE) | usage (2, BE) |
 * flags (2, BE) | the clear encoding of the key. */
#define BLOB_MAGIC "KHW1"
#define BLOB_HDR 14

static int read_al(struct kh_ctx *c, const struct kh_frame *req, unsigned allowed,
                   enum wrap_alg *out)
{
	static const char *const names[] = {NULL, "KW", "KWP", "OAEP"};
	char v[8];

	if (kh_frame_str(req, "AL", v, sizeof(v)) == KH_OK)
		for (int i = WA_KW; i <= WA_OAEP; i++)
			if ((allowed & WA_BIT(i)) && strcmp(v, names[i]) == 0) {
				*out = (enum wrap_alg)i;
				return KH_OK;
			}
	kh_ctx_detail(c, "AL (%s)", (allowed & WA_BIT(WA_KW)) ? "KW, KWP or OAEP" : "KWP or OAEP");
	return kh_frame_has(req, "AL") ? KH_ERR_BAD_FIELD : KH_ERR_MISSING_FIELD;
}

/* The key-encryption key of a wrap (usage W: an AES key, or for OAEP an RSA
 * public key, possibly clear in PU) or of an unwrap (usage U: an AES key or
 * an RSA private key). */
static struct kh_keyref kek_ref(enum wrap_alg al, bool wrap)
{
	struct kh_keyref r = {.slot_tag = "SL",
	                      .id_tag = "KD",
	                      .cg_tag = "CG",
	                      .flags = KH_KR_REQUIRED,
	                      .usage = wrap ? KH_U_WRAP : KH_U_UNWRAP};
	if (al == WA_OAEP) {
		r.classes = 1u << (wrap ? KH_KC_PUBLIC : KH_KC_PRIVATE);
		r.types = KH_KT_BIT(KH_KT_RSA);
		if (wrap) {
			r.pub_tag = "PU";
			r.flags |= KH_KR_CLEAR_PUB | KH_KR_CLEAR_PKI;
		}
	} else {
		r.classes = 1u << KH_KC_SECRET;
		r.types = KH_KT_BIT(KH_KT_AES);
	}
	return r;
}

/* The key a wrap takes out: named by S2/K2 or C2, exportable. */
static struct kh_keyref target_ref(uint32_t classes)
{
	return (struct kh_keyref){.slot_tag = "S2",
	                          .id_tag = "K2",
	                          .cg_tag = "C2",
	                          .flags = KH_KR_REQUIRED | KH_KR_EXPORTABLE,
	                          .classes = classes};
}

static const EVP_CIPHER *kw_cipher(enum wrap_alg al, size_t keylen)
{
	switch (keylen) {
	case 16:
		return al == WA_KW ? EVP_aes_128_wrap() : EVP_aes_128_wrap_pad();
	case 24:
		return al == WA_KW ? EVP_aes_192_wrap() : EVP_aes_192_wrap_pad();
	case 32:
		return al == WA_KW ? EVP_aes_256_wrap() : EVP_aes_256_wrap_pad();
	default:
		return NULL;
	}
}

/* RFC 3394 (KW) or RFC 5649 (KWP) in either direction; out holds
 * inl + KW_SLACK bytes. Returns false on any failure. */
static bool aes_kw(const struct kh_key *kek, enum wrap_alg al, int enc, const uint8_t *in,
                   size_t inl, uint8_t *out, size_t *outl)
{
	const EVP_CIPHER *ciph = kw_cipher(al, kek->secret_len);
	EVP_CIPHER_CTX *ctx;
	int n = 0, m = 0;
	bool ok;

	if (ciph == NULL || inl > INT_MAX - KW_SLACK || (ctx = EVP_CIPHER_CTX_new()) == NULL)
		return false;
	EVP_CIPHER_CTX_set_flags(ctx, EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
	ok = EVP_CipherInit_ex(ctx, ciph, NULL, kek->secret, NULL, enc) == 1 &&
	     EVP_CipherUpdate(ctx, out, &n, in, (int)inl) == 1 && n > 0 &&
	     EVP_CipherFinal_ex(ctx, out + n, &m) == 1;
	EVP_CIPHER_CTX_free(ctx);
	*outl = (size_t)n + (size_t)m;
	return ok;
}

static EVP_PKEY_CTX *oaep_ctx(EVP_PKEY *pk, const struct kh_oaep *o, bool enc)
{
	EVP_PKEY_CTX *px = EVP_PKEY_CTX_new_from_pkey(NULL, pk, NULL);
	if (px != NULL && ((enc ? EVP_PKEY_encrypt_init(px) : EVP_PKEY_decrypt_init(px)) != 1 ||
	                   kh_oaep_setup(px, o) != KH_OK)) {
		EVP_PKEY_CTX_free(px);
		px = NULL;
	}
	return px;
}

/* Wrap the n bytes m under kek and answer BBY and WK. */
static int wrap_out(struct kh_ctx *c, enum wrap_alg al, const struct kh_key *kek,
                    const struct kh_oaep *o, const uint8_t *m, size_t n, struct kh_buf *resp)
{
	uint8_t *w = NULL;
	size_t wl = 0;
	int r = KH_ERR_CRYPTO;

	if (al == WA_OAEP) {
		int ksz = EVP_PKEY_get_size(kek->pkey), hsz = EVP_MD_get_size(o->md);
		size_t max = ksz > 2 * hsz + 2 ? (size_t)(ksz - 2 * hsz - 2) : 0;
		EVP_PKEY_CTX *px;
		if (n > max) {
			kh_ctx_detail(c,
			              "the key is too long for OAEP with this RSA key and HA "
			              "(at most %zu bytes)",
			              max);
			return KH_ERR_BAD_FIELD;
		}
		if ((w = malloc((size_t)ksz)) == NULL)
			return KH_ERR_NOMEM;
		wl = (size_t)ksz;
		if ((px = oaep_ctx(kek->pkey, o, true)) != NULL &&
		    EVP_PKEY_encrypt(px, w, &wl, m, n) == 1)
			r = KH_OK;
		EVP_PKEY_CTX_free(px);
	} else {
		if ((w = malloc(n + KW_SLACK)) == NULL)
			return KH_ERR_NOMEM;
		if (aes_kw(kek, al, 1, m, n, w, &wl))
			r = KH_OK;
	}
	if (r == KH_OK && (r = kh_msg_put(resp, "BB", "Y")) == KH_OK)
		r = kh_msg_put_hex(resp, "WK", w, wl);
	free(w);
	return r;
}

/* WK, the wrapped key, into a malloc'd buffer. */
static int read_wk(struct kh_ctx *c, const struct kh_frame *req, uint8_t **out, size_t *len)
{
	const struct kh_field *f = kh_frame_get(req, "WK");
	size_t max = BLOB_HDR + KH_KS_MATERIAL_MAX + KW_SLACK;

	*out = NULL;
	if (f == NULL) {
		kh_ctx_detail(c, "WK");
		return KH_ERR_MISSING_FIELD;
	}
	if (f->len == 0 || f->len / 2 > max || (*out = malloc(f->len / 2 + 1)) == NULL ||
	    kh_frame_hex(req, "WK", *out, f->len / 2 + 1, len) != KH_OK) {
		free(*out);
		*out = NULL;
		kh_ctx_detail(c, "WK (hex, at most %zu bytes)", max);
		return KH_ERR_BAD_FIELD;
	}
	return KH_OK;
}

/* Unwrap w into a secure-heap buffer of *cap bytes (kh_secure_free(*out,
 * *cap)), *outl of them used. One answer for every failure, the OpenSSL
 * error queue emptied, no detail: a caller must not learn whether the
 * length, the padding or the integrity check failed. */
static int unwrap(enum wrap_alg al, const struct kh_key *kek, const struct kh_oaep *o,
                  const uint8_t *w, size_t wl, uint8_t **out, size_t *outl, size_t *cap_out)
{
	size_t cap = al == WA_OAEP ? (size_t)EVP_PKEY_get_size(kek->pkey) : wl + KW_SLACK;
	size_t n = cap;
	uint8_t *p = kh_secure_alloc(cap);
	bool ok = false;

	if (p == NULL)
		return KH_ERR_NOMEM;
	if (al == WA_OAEP) {
		EVP_PKEY_CTX *px = oaep_ctx(kek->pkey, o, false);
		ok = px != NULL && EVP_PKEY_decrypt(px, p, &n, w, wl) == 1 && n > 0;
		EVP_PKEY_CTX_free(px);
	} else {
		ok = aes_kw(kek, al, 0, w, wl, p, &n) && n > 0;
	}
	if (!ok) {
		kh_secure_free(p, cap);
		ERR_clear_error();
		return KH_ERR_DECRYPT_FAILED;
	}
	*out = p;
	*outl = n;
	*cap_out = cap;
	return KH_OK;
}

/* ---- GPKW / GPWK ------------------------------------------------------------ */

KH_PLAN(kh_plan_gpkw)
{
	enum wrap_alg al;
	int r;

	if ((r = read_al(c, req, WA_ALL, &al)) != KH_OK)
		return r;
	op->ref[op->nref++] = kek_ref(al, true);
	/* KWP also carries private keys (PKCS#8); KW and OAEP only secrets */
	op->ref[op->nref++] =
	    target_ref(1u << KH_KC_SECRET | (al == WA_KWP ? 1u << KH_KC_PRIVATE : 0u));
	return KH_OK;
}

KH_ACT(kh_cmd_gpkw)
{
	const struct kh_key *kek = c->op->key[0], *k = c->op->key[1];
	struct kh_oaep o = {0};
	enum wrap_alg al;
	uint8_t *m = NULL;
	size_t n = 0;
	int r;

	if ((r = read_al(c, req, WA_ALL, &al)) != KH_OK ||
	    (al == WA_OAEP && (r = kh_req_oaep(c, req, &o)) != KH_OK))
		return r;
	if ((r = kh_key_material(k, &m, &n)) != KH_OK)
		goto out;
	if (al == WA_KW && (n % 8 != 0 || n < 16)) {
		kh_ctx_detail(c,
		              "AL KW wraps keys of a multiple of 8 bytes, at least 16 (use KWP)");
		r = KH_ERR_BAD_FIELD;
		goto out;
	}
	r = wrap_out(c, al, kek, &o, m, n, resp);
out:
	kh_secure_free(m, n);
	kh_oaep_free(&o);
	return r;
}

KH_PLAN(kh_plan_gpwk)
{
	enum wrap_alg al;
	int r;

	if ((r = read_al(c, req, WA_BIT(WA_KWP) | WA_BIT(WA_OAEP), &al)) != KH_OK)
		return r;
	op->ref[op->nref++] = kek_ref(al, true);
	op->ref[op->nref++] = target_ref(1u << KH_KC_SECRET | 1u << KH_KC_PRIVATE);
	return KH_OK;
}

static void blob_header(const struct kh_keyattr *a, uint8_t h[static BLOB_HDR])
{
	memcpy(h, BLOB_MAGIC, 4);
	h[4] = (uint8_t)a->cls;
	h[5] = (uint8_t)a->type;
	h[6] = (uint8_t)(a->bits >> 24);
	h[7] = (uint8_t)(a->bits >> 16);
	h[8] = (uint8_t)(a->bits >> 8);
	h[9] = (uint8_t)a->bits;
	h[10] = (uint8_t)(a->usage >> 8);
	h[11] = (uint8_t)a->usage;
	h[12] = (uint8_t)(a->flags >> 8);
	h[13] = (uint8_t)a->flags;
}

KH_ACT(kh_cmd_gpwk)
{
	const struct kh_key *kek = c->op->key[0], *k = c->op->key[1];
	struct kh_oaep o = {0};
	enum wrap_alg al;
	uint8_t *m = NULL, *blob = NULL;
	size_t n = 0;
	int r;

	if ((r = read_al(c, req, WA_BIT(WA_KWP) | WA_BIT(WA_OAEP), &al)) != KH_OK ||
	    (al == WA_OAEP && (r = kh_req_oaep(c, req, &o)) != KH_OK))
		return r;
	if ((r = kh_key_material(k, &m, &n)) != KH_OK)
		goto out;
	if ((blob = kh_secure_alloc(BLOB_HDR + n)) == NULL) {
		r = KH_ERR_NOMEM;
		goto out;
	}
	blob_header(&k->a, blob);
	memcpy(blob + BLOB_HDR, m, n);
	r = wrap_out(c, al, kek, &o, blob, BLOB_HDR + n, resp);
out:
	kh_secure_free(blob, BLOB_HDR + n);
	kh_secure_free(m, n);
	kh_oaep_free(&o);
	return r;
}

/* ---- GPKU / GPUK ------------------------------------------------------------ */

/* The new key's class and type as GPKU's request gives them: CL secret
 * (default) or private (KWP only); KT AES or GENERIC (default) for a secret,
 * optional for a private key (then it must match the material). */
static int gpku_kind(struct kh_ctx *c, const struct kh_frame *req, enum wrap_alg al,
                     enum kh_kclass *cls, enum kh_ktype *type)
{
	char v[16];

	*cls = KH_KC_SECRET;
	*type = 0;
	if (kh_frame_has(req, "CL") &&
	    (kh_frame_str(req, "CL", v, sizeof(v)) != KH_OK || kh_kclass_parse(v, cls) != KH_OK ||
	     (*cls != KH_KC_SECRET && (*cls != KH_KC_PRIVATE || al != WA_KWP)))) {
		kh_ctx_detail(c, "CL (secret, or private with AL KWP)");
		return KH_ERR_BAD_FIELD;
	}
	if (!kh_frame_has(req, "KT")) {
		if (*cls == KH_KC_SECRET)
			*type = KH_KT_GENERIC;
		return KH_OK;
	}
	if (kh_frame_str(req, "KT", v, sizeof(v)) != KH_OK || kh_ktype_parse(v, type) != KH_OK ||
	    *type == KH_KT_X509 || kh_ktype_symmetric(*type) != (*cls == KH_KC_SECRET)) {
		kh_ctx_detail(c, "KT (a type of class %s)", kh_kclass_name(*cls));
		return KH_ERR_BAD_FIELD;
	}
	return KH_OK;
}

KH_PLAN(kh_plan_gpku)
{
	enum wrap_alg al;
	enum kh_kclass cls;
	enum kh_ktype type;
	int r;

	if ((r = read_al(c, req, WA_ALL, &al)) != KH_OK ||
	    (r = gpku_kind(c, req, al, &cls, &type)) != KH_OK ||
	    (r = kh_req_flags(c, req, &op->new_flags)) != KH_OK)
		return r;
	op->ref[op->nref++] = kek_ref(al, false);
	op->dest[op->ndest++] = (struct kh_dest){"DS", kh_slot_kind_of(cls == KH_KC_SECRET)};
	return KH_OK;
}

/* BBY, then the new key stored in DS or returned as a cryptogram, KD, and
 * for a secret key its check value. */
static int emit_new(struct kh_ctx *c, const struct kh_frame *req, struct kh_key *k,
                    struct kh_buf *resp)
{
	int r;
	if ((r = kh_msg_put(resp, "BB", "Y")) != KH_OK ||
	    (r = kh_key_emit(c, req, k, "DS", "KD", NULL, resp)) != KH_OK)
		return r;
	return k->a.cls == KH_KC_SECRET ? kh_msg_put_kcv(resp, k) : KH_OK;
}

KH_ACT(kh_cmd_gpku)
{
	const struct kh_key *kek = c->op->key[0];
	struct kh_keyattr a = {0};
	struct kh_key *k = NULL;
	struct kh_oaep o = {0};
	enum wrap_alg al;
	uint8_t *w = NULL, *m = NULL;
	size_t wl = 0, n = 0, mcap = 0;
	uint16_t flags;
	int r;

	/* every request field is read before anything is unwrapped */
	if ((r = read_al(c, req, WA_ALL, &al)) != KH_OK ||
	    (r = gpku_kind(c, req, al, &a.cls, &a.type)) != KH_OK ||
	    (r = kh_req_usage(c, req, "CZ", 0, &a.usage)) != KH_OK ||
	    (r = kh_req_flags(c, req, &flags)) != KH_OK ||
	    (r = kh_req_major(c, req, &a.major)) != KH_OK ||
	    (al == WA_OAEP && (r = kh_req_oaep(c, req, &o)) != KH_OK) ||
	    (r = read_wk(c, req, &w, &wl)) != KH_OK)
		goto out;
	a.flags = kh_key_new_flags(flags, false);
	if ((r = unwrap(al, kek, &o, w, wl, &m, &n, &mcap)) != KH_OK)
		goto out;
	/* past the integrity check: the material is what the wrapping party
	 * meant, and a mismatch with CL/KT is the request's to hear about */
	if (a.cls == KH_KC_SECRET)
		r = kh_key_from_secret(c, &a, m, n, &k);
	else
		r = kh_key_from_der(c, &a, m, n, &k);
	if (r != KH_OK)
		goto out;
	if (!kh_frame_has(req, "CZ"))
		k->a.usage = kh_key_default_usage(k->a.cls, k->a.type);
	r = emit_new(c, req, k, resp);
out:
	kh_secure_free(m, mcap);
	kh_key_unref(k);
	free(w);
	kh_oaep_free(&o);
	return r;
}

/* GPUK's plan names no destination: whether DS must be a symmetric or an
 * asymmetric slot is known only once the blob is open, so the handler
 * checks the range kind itself (and Authorized, for the same reason). This
 * is the one exception to "the dispatcher checks every slot". */
KH_PLAN(kh_plan_gpuk)
{
	enum wrap_alg al;
	int r;

	if ((r = read_al(c, req, WA_BIT(WA_KWP) | WA_BIT(WA_OAEP), &al)) != KH_OK)
		return r;
	op->ref[op->nref++] = kek_ref(al, false);
	return KH_OK;
}

/* The attributes a GPWK blob carries, checked as values this HSM makes. */
static int blob_attrs(struct kh_ctx *c, const uint8_t *h, struct kh_keyattr *a)
{
	a->cls = (enum kh_kclass)h[4];
	a->type = (enum kh_ktype)h[5];
	a->bits = (uint32_t)h[6] << 24 | (uint32_t)h[7] << 16 | (uint32_t)h[8] << 8 | h[9];
	a->usage = (uint16_t)(h[10] << 8 | h[11]);
	a->flags = (uint16_t)(h[12] << 8 | h[13]);
	if ((a->cls != KH_KC_SECRET && a->cls != KH_KC_PRIVATE) || a->type < KH_KT_AES ||
	    a->type > KH_KT_X25519 || kh_ktype_symmetric(a->type) != (a->cls == KH_KC_SECRET) ||
	    (a->usage & ~KH_U_ALL) || (a->flags & ~KH_KF_ALL)) {
		kh_ctx_detail(c, "WK: key attributes this HSM does not support");
		return KH_ERR_BAD_FIELD;
	}
	/* X, S, A, M travel; L, N, Y describe a key's history on one HSM and an
	 * unwrapped key starts a new one (PKCS#11 C_UnwrapKey does the same) */
	a->flags = kh_key_new_flags(a->flags & KH_KF_REQUESTABLE, false);
	return KH_OK;
}

/* The checks the dispatcher makes for a planned destination and new flags,
 * made here once the blob says what the key is (see kh_plan_gpuk). */
static int gpuk_allowed(struct kh_ctx *c, const struct kh_frame *req, const struct kh_key *k)
{
	uint32_t slot;

	if ((k->a.flags & KH_KF_AUTHORIZED) && !(c->role->perms & KH_PERM(KH_P_KEYS_AUTHORIZED))) {
		kh_ctx_detail(c, "needs keys.authorized (Authorized key)");
		return KH_ERR_PERMISSION_DENIED;
	}
	if ((k->a.flags & KH_KF_AUTHORIZED) && !(c->s->active && c->s->nident > 0)) {
		kh_ctx_detail(c, "an Authorized key needs a logged-in identity");
		return KH_ERR_NOT_LOGGED_IN;
	}
	/* a number: its range kind; `*`: a range of the kind to pick from */
	if (kh_frame_has(req, "DS"))
		return kh_dest_check(c, req, "DS", kh_key_slot_kind(&k->a), &slot);
	return KH_OK;
}

KH_ACT(kh_cmd_gpuk)
{
	const struct kh_key *kek = c->op->key[0];
	struct kh_keyattr a = {0};
	struct kh_key *k = NULL;
	struct kh_oaep o = {0};
	enum wrap_alg al;
	enum kh_mk_id major;
	uint8_t *w = NULL, *m = NULL;
	size_t wl = 0, n = 0, mcap = 0;
	uint32_t slot;
	int r;

	if ((r = read_al(c, req, WA_BIT(WA_KWP) | WA_BIT(WA_OAEP), &al)) != KH_OK ||
	    (r = kh_req_major(c, req, &major)) != KH_OK ||
	    (al == WA_OAEP && (r = kh_req_oaep(c, req, &o)) != KH_OK) ||
	    (r = read_wk(c, req, &w, &wl)) != KH_OK)
		goto out;
	/* the slot range is known before the blob is opened (for `*`: that
	 * the role has a range at all); its kind after */
	if (kh_frame_has(req, "DS") &&
	    (r = kh_dest_check(c, req, "DS", KH_SK_ANY, &slot)) != KH_OK)
		goto out;
	if ((r = unwrap(al, kek, &o, w, wl, &m, &n, &mcap)) != KH_OK)
		goto out;
	/* a blob GPWK did not make is an unwrap failure like any other */
	if (n < BLOB_HDR || !kh_ct_equal(m, BLOB_MAGIC, 4)) {
		r = KH_ERR_DECRYPT_FAILED;
		goto out;
	}
	if ((r = blob_attrs(c, m, &a)) != KH_OK)
		goto out;
	a.major = major;
	if (a.cls == KH_KC_SECRET)
		r = kh_key_from_secret(c, &a, m + BLOB_HDR, n - BLOB_HDR, &k);
	else
		r = kh_key_from_der(c, &a, m + BLOB_HDR, n - BLOB_HDR, &k);
	if (r != KH_OK)
		goto out;
	if (k->a.bits != a.bits || k->a.type != a.type) {
		kh_ctx_detail(c, "WK: the key does not match its size or type");
		r = KH_ERR_BAD_FIELD;
		goto out;
	}
	if ((r = gpuk_allowed(c, req, k)) == KH_OK)
		r = emit_new(c, req, k, resp);
out:
	kh_secure_free(m, mcap);
	kh_key_unref(k);
	free(w);
	kh_oaep_free(&o);
	return r;
}

/* ---- GPDK ---------------------------------------------------------------------- */

enum kdf_kind { KDF_NULL, KDF_X963, KDF_HKDF };

struct kdf_def {
	const char *name;
	enum kdf_kind kind;
	const char *md; /* OpenSSL digest name */
};

static const struct kdf_def kdf_table[] = {
    {"NULL", KDF_NULL, NULL},
    {"X963-SHA256", KDF_X963, "SHA256"},
    {"X963-SHA384", KDF_X963, "SHA384"},
    {"X963-SHA512", KDF_X963, "SHA512"},
    {"HKDF-SHA256", KDF_HKDF, "SHA256"},
    {"HKDF-SHA384", KDF_HKDF, "SHA384"},
    {"HKDF-SHA512", KDF_HKDF, "SHA512"},
};

static int read_kdf(struct kh_ctx *c, const struct kh_frame *req, const struct kdf_def **out)
{
	char v[16];

	*out = &kdf_table[0];
	if (!kh_frame_has(req, "KF"))
		return KH_OK;
	if (kh_frame_str(req, "KF", v, sizeof(v)) == KH_OK)
		for (size_t i = 0; i < sizeof(kdf_table) / sizeof(kdf_table[0]); i++)
			if (strcmp(v, kdf_table[i].name) == 0) {
				*out = &kdf_table[i];
				return KH_OK;
			}
	kh_ctx_detail(c, "KF (NULL, X963-SHA256/384/512, HKDF-SHA256/384/512)");
	return KH_ERR_BAD_FIELD;
}

/* NF: the new key's flags, letters as KF elsewhere (KF names the KDF). */
static int read_nf(struct kh_ctx *c, const struct kh_frame *req, uint16_t *out)
{
	const struct kh_field *f = kh_frame_get(req, "NF");
	*out = 0;
	if (f == NULL)
		return KH_OK;
	if (kh_flags_parse(f->val, f->len, out) != KH_OK || (*out & ~KH_KF_REQUESTABLE)) {
		kh_ctx_detail(c, "NF (letters of XSAM, once each)");
		return KH_ERR_BAD_FIELD;
	}
	return KH_OK;
}

KH_PLAN(kh_plan_gpdk)
{
	const struct kdf_def *kdf;
	int r;

	if ((r = read_kdf(c, req, &kdf)) != KH_OK || (r = read_nf(c, req, &op->new_flags)) != KH_OK)
		return r;
	/* SP 800-56A: a shared secret is keying material only through a KDF */
	if (kdf->kind == KDF_NULL)
		op->fips_refusal =
		    "KF NULL (the raw shared secret as a key: SP 800-56A needs a KDF)";
	/* key agreement from an EC or X25519 private key; HKDF also extracts
	 * from a generic secret */
	op->ref[op->nref++] = (struct kh_keyref){
	    .slot_tag = "SL",
	    .id_tag = "KD",
	    .cg_tag = "CG",
	    .flags = KH_KR_REQUIRED,
	    .usage = KH_U_DERIVE,
	    .classes = 1u << KH_KC_PRIVATE | (kdf->kind == KDF_HKDF ? 1u << KH_KC_SECRET : 0u),
	    .types = KH_KT_BIT(KH_KT_EC) | KH_KT_BIT(KH_KT_X25519) |
	             (kdf->kind == KDF_HKDF ? KH_KT_BIT(KH_KT_GENERIC) : 0u)};
	op->dest[op->ndest++] = (struct kh_dest){"DS", KH_SK_SYMMETRIC};
	return KH_OK;
}

/* An optional hex KDF parameter (SA, IN, SI), allowed only with the KDF
 * that uses it; malloc'd, NULL when absent. */
static int kdf_param(struct kh_ctx *c, const struct kh_frame *req, const char *tag, bool allowed,
                     uint8_t **out, size_t *len)
{
	const struct kh_field *f = kh_frame_get(req, tag);

	*out = NULL;
	*len = 0;
	if (f == NULL)
		return KH_OK;
	if (!allowed) {
		kh_ctx_detail(c, "%s (not a parameter of this KF)", tag);
		return KH_ERR_BAD_FIELD;
	}
	if (f->len == 0)
		return KH_OK;
	if (f->len / 2 > KDF_PARAM_MAX || (*out = malloc(f->len / 2 + 1)) == NULL ||
	    kh_frame_hex(req, tag, *out, f->len / 2 + 1, len) != KH_OK) {
		free(*out);
		*out = NULL;
		kh_ctx_detail(c, "%s (hex, at most %d bytes)", tag, KDF_PARAM_MAX);
		return KH_ERR_BAD_FIELD;
	}
	return KH_OK;
}

/* The peer's public key from PU (SPKI) or PP (an uncompressed point on the
 * base key's curve, or 32 raw bytes for X25519). A key that does not parse
 * or is not on the curve is KH_ERR_CRYPTO (the protocol's answer for a bad
 * peer key); a PP of the wrong form is a bad field. */
static int peer_key(struct kh_ctx *c, const struct kh_frame *req, const struct kh_key *base,
                    EVP_PKEY **out)
{
	bool pu = kh_frame_has(req, "PU"), pp = kh_frame_has(req, "PP");
	const char *tag = pu ? "PU" : "PP";
	const struct kh_field *f = kh_frame_get(req, tag);
	size_t fl = (base->a.bits + 7) / 8, n = 0;
	uint8_t *b = NULL;
	int r = KH_OK;

	*out = NULL;
	if (pu == pp) {
		kh_ctx_detail(c, "PU or PP (the peer's public key), one of them");
		return pu ? KH_ERR_BAD_FIELD : KH_ERR_MISSING_FIELD;
	}
	if (f->len == 0 || f->len / 2 > KH_KS_MATERIAL_MAX ||
	    (b = malloc(f->len / 2 + 1)) == NULL ||
	    kh_frame_hex(req, tag, b, f->len / 2 + 1, &n) != KH_OK) {
		kh_ctx_detail(c, "%s (hex)", tag);
		r = KH_ERR_BAD_FIELD;
		goto out;
	}
	if (pu) {
		const uint8_t *p = b;
		if ((*out = d2i_PUBKEY(NULL, &p, (long)n)) == NULL || p != b + n ||
		    kh_pkey_explicit_curve(*out)) {
			kh_ctx_detail(c, "PU: not a valid public key on a named curve");
			r = KH_ERR_CRYPTO;
		}
	} else if (base->a.type == KH_KT_X25519) {
		if (n != 32) {
			kh_ctx_detail(c, "PP (32 bytes for X25519)");
			r = KH_ERR_BAD_FIELD;
		} else if ((*out = EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, NULL, b, n)) ==
		           NULL) {
			r = KH_ERR_CRYPTO;
		}
	} else if (n != 1 + 2 * fl || b[0] != 0x04) {
		kh_ctx_detail(c, "PP (an uncompressed point, 04 X Y, %zu bytes)", 1 + 2 * fl);
		r = KH_ERR_BAD_FIELD;
	} else {
		char group[32];
		EVP_PKEY_CTX *fx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
		OSSL_PARAM prm[] = {
		    OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, group, 0),
		    OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, b, n),
		    OSSL_PARAM_construct_end()};
		if (!EVP_PKEY_get_utf8_string_param(base->pkey, OSSL_PKEY_PARAM_GROUP_NAME, group,
		                                    sizeof(group), NULL) ||
		    fx == NULL || EVP_PKEY_fromdata_init(fx) != 1 ||
		    EVP_PKEY_fromdata(fx, out, EVP_PKEY_PUBLIC_KEY, prm) != 1) {
			kh_ctx_detail(c, "PP: not a point on the key's curve");
			r = KH_ERR_CRYPTO;
		}
		EVP_PKEY_CTX_free(fx);
	}
out:
	if (r != KH_OK) {
		EVP_PKEY_free(*out);
		*out = NULL;
		ERR_clear_error();
	}
	free(b);
	return r;
}

/* The shared secret Z (secure heap). The peer is validated (on the curve,
 * same group); X25519 refuses an all-zero result (a small-order peer). */
static int agree(struct kh_ctx *c, EVP_PKEY *priv, EVP_PKEY *peer, uint8_t **z, size_t *zlen)
{
	EVP_PKEY_CTX *dx = EVP_PKEY_CTX_new_from_pkey(NULL, priv, NULL);
	uint8_t *p = NULL;
	size_t n = 0, cap;
	int r = KH_ERR_CRYPTO;

	if (dx == NULL || EVP_PKEY_derive_init(dx) != 1 ||
	    EVP_PKEY_derive_set_peer_ex(dx, peer, 1) != 1) {
		kh_ctx_detail(c, "the peer key is not a valid key on the base key's curve");
		goto out;
	}
	if (EVP_PKEY_derive(dx, NULL, &n) != 1 || n == 0)
		goto out;
	cap = n;
	if ((p = kh_secure_alloc(cap)) == NULL) {
		r = KH_ERR_NOMEM;
		goto out;
	}
	if (EVP_PKEY_derive(dx, p, &n) != 1) {
		kh_secure_free(p, cap);
		kh_ctx_detail(c, "key agreement failed (a peer key of small order?)");
		goto out;
	}
	*z = p;
	*zlen = n;
	r = KH_OK;
out:
	if (r != KH_OK)
		ERR_clear_error();
	EVP_PKEY_CTX_free(dx);
	return r;
}

struct kdf_in {
	const uint8_t *ikm;
	size_t ikm_len;
	uint8_t *salt, *info; /* SA; IN (HKDF) or SI (X9.63) */
	size_t salt_len, info_len;
};

/* X9.63 or HKDF (extract and expand) into out. Derivation is rare, so the
 * KDF is fetched per call. */
static int kdf_run(const struct kdf_def *d, const struct kdf_in *in, uint8_t *out, size_t len)
{
	EVP_KDF *kdf = EVP_KDF_fetch(NULL, d->kind == KDF_HKDF ? "HKDF" : "X963KDF", NULL);
	EVP_KDF_CTX *kx = kdf != NULL ? EVP_KDF_CTX_new(kdf) : NULL;
	OSSL_PARAM p[5], *q = p;
	int r;

	*q++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)(uintptr_t)d->md, 0);
	*q++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)(uintptr_t)in->ikm,
	                                         in->ikm_len);
	if (in->salt_len != 0)
		*q++ =
		    OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, in->salt, in->salt_len);
	if (in->info_len != 0)
		*q++ =
		    OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, in->info, in->info_len);
	*q = OSSL_PARAM_construct_end();
	r = kx != NULL && EVP_KDF_derive(kx, out, len, p) == 1 ? KH_OK : KH_ERR_CRYPTO;
	EVP_KDF_CTX_free(kx);
	EVP_KDF_free(kdf);
	return r;
}

KH_ACT(kh_cmd_gpdk)
{
	const struct kh_key *base = c->op->key[0];
	const struct kdf_def *kdf;
	struct kh_keyattr a = {.cls = KH_KC_SECRET};
	struct kdf_in in = {0};
	struct kh_key *k = NULL;
	EVP_PKEY *peer = NULL;
	uint8_t *z = NULL, *okm = NULL;
	size_t zlen = 0, len = 0;
	uint16_t flags;
	int r;

	if ((r = read_kdf(c, req, &kdf)) != KH_OK ||
	    (r = kh_req_ct(c, req, 0, &a.type, &len)) != KH_OK ||
	    (r = kh_req_usage(c, req, "CZ",
	                      a.type == KH_KT_AES ? KH_U_ENCRYPT | KH_U_DECRYPT
	                                          : KH_U_SIGN | KH_U_VERIFY,
	                      &a.usage)) != KH_OK ||
	    (r = read_nf(c, req, &flags)) != KH_OK ||
	    (r = kh_req_major(c, req, &a.major)) != KH_OK ||
	    (r = kdf_param(c, req, "SA", kdf->kind == KDF_HKDF, &in.salt, &in.salt_len)) != KH_OK ||
	    (r = kdf_param(c, req, "IN", kdf->kind == KDF_HKDF, &in.info, &in.info_len)) != KH_OK)
		goto out;
	if (kdf->kind == KDF_X963 &&
	    (r = kdf_param(c, req, "SI", true, &in.info, &in.info_len)) != KH_OK)
		goto out;
	if (kdf->kind != KDF_X963 && kh_frame_has(req, "SI")) {
		kh_ctx_detail(c, "SI (not a parameter of this KF)");
		r = KH_ERR_BAD_FIELD;
		goto out;
	}
	a.flags = kh_key_new_flags(flags, false);
	if (kdf->kind != KDF_NULL && len == 0) {
		kh_ctx_detail(c, "LN (the generic key's length, with a KDF)");
		r = KH_ERR_MISSING_FIELD;
		goto out;
	}
	if (base->a.cls == KH_KC_SECRET) {
		if (kh_frame_has(req, "PU") || kh_frame_has(req, "PP")) {
			kh_ctx_detail(c, "PU/PP (key agreement needs an EC or X25519 base key)");
			r = KH_ERR_BAD_FIELD;
			goto out;
		}
		in.ikm = base->secret;
		in.ikm_len = base->secret_len;
	} else {
		if ((r = peer_key(c, req, base, &peer)) != KH_OK ||
		    (r = agree(c, base->pkey, peer, &z, &zlen)) != KH_OK)
			goto out;
		in.ikm = z;
		in.ikm_len = zlen;
	}
	if (kdf->kind == KDF_NULL) {
		/* the leading bytes of Z, as PKCS#11 CKD_NULL with a shorter key */
		if (len == 0)
			len = zlen;
		if (len > zlen) {
			kh_ctx_detail(c, "%s (longer than the %zu-byte shared secret: use a KDF)",
			              a.type == KH_KT_AES ? "CT" : "LN", zlen);
			r = KH_ERR_BAD_FIELD;
			goto out;
		}
	}
	if ((okm = kh_secure_alloc(len)) == NULL) {
		r = KH_ERR_NOMEM;
		goto out;
	}
	if (kdf->kind == KDF_NULL)
		memcpy(okm, z, len);
	else if ((r = kdf_run(kdf, &in, okm, len)) != KH_OK)
		goto out;
	if ((r = kh_key_from_secret(c, &a, okm, len, &k)) != KH_OK)
		goto out;
	r = emit_new(c, req, k, resp);
out:
	kh_key_unref(k);
	kh_secure_free(okm, len);
	kh_secure_free(z, zlen);
	EVP_PKEY_free(peer);
	free(in.salt);
	free(in.info);
	return r;
}

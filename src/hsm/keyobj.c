/*
 * Key objects: attributes and their encodings, making keys from clear
 * material, storing them in the key table, cryptograms, the key cache, and
 * resolving the keys a request names (kh_op_resolve, run by the dispatcher).
 *
 * Clear key material exists only on the secure heap here and inside
 * OpenSSL's key objects; it is never logged, stored or put in an error.
 */
#include "hsm/keyobj.h"
#include "hsm/dispatch.h"
#include "hsm/roles.h"
#include "common/kh_buf.h"
#include "common/kh_mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

/* ---- names and letters ---------------------------------------------------- */

static const char *const class_names[] = {NULL, "secret", "private", "public", "cert", "data"};
static const char *const type_names[] = {NULL,      "AES",     "GENERIC", "RSA",
                                         "EC",      "ED25519", "X25519",  "X509"};
static const char usage_letters[] = "EDGVWUX";
static const char flag_letters[] = "XSAMLNY";

const char *kh_kclass_name(enum kh_kclass c)
{
	return (c >= KH_KC_SECRET && c <= KH_KC_DATA) ? class_names[c] : "?";
}

const char *kh_ktype_name(enum kh_ktype t)
{
	return (t >= KH_KT_AES && t <= KH_KT_X509) ? type_names[t] : "?";
}

int kh_kclass_parse(const char *s, enum kh_kclass *out)
{
	for (int i = KH_KC_SECRET; i <= KH_KC_DATA; i++)
		if (strcmp(s, class_names[i]) == 0) {
			*out = (enum kh_kclass)i;
			return KH_OK;
		}
	return KH_ERR_BAD_FIELD;
}

int kh_ktype_parse(const char *s, enum kh_ktype *out)
{
	for (int i = KH_KT_AES; i <= KH_KT_X509; i++)
		if (strcmp(s, type_names[i]) == 0) {
			*out = (enum kh_ktype)i;
			return KH_OK;
		}
	return KH_ERR_BAD_FIELD;
}

bool kh_ktype_symmetric(enum kh_ktype t)
{
	return t == KH_KT_AES || t == KH_KT_GENERIC;
}

static int letters_parse(const char *alphabet, const char *s, size_t n, uint16_t *out)
{
	uint16_t v = 0;
	for (size_t i = 0; i < n; i++) {
		const char *p = s[i] ? strchr(alphabet, s[i]) : NULL;
		if (p == NULL)
			return KH_ERR_BAD_FIELD;
		uint16_t bit = (uint16_t)(1u << (p - alphabet));
		if (v & bit)
			return KH_ERR_BAD_FIELD;
		v |= bit;
	}
	*out = v;
	return KH_OK;
}

static void letters_str(const char *alphabet, uint16_t v, char out[static 8])
{
	size_t n = 0;
	for (size_t i = 0; alphabet[i] && n < 7; i++)
		if (v & (1u << i))
			out[n++] = alphabet[i];
	out[n] = '\0';
}

int kh_usage_parse(const char *s, size_t n, uint16_t *out)
{
	return letters_parse(usage_letters, s, n, out);
}

void kh_usage_str(uint16_t usage, char out[static 8])
{
	letters_str(usage_letters, usage, out);
}

int kh_flags_parse(const char *s, size_t n, uint16_t *out)
{
	return letters_parse(flag_letters, s, n, out);
}

void kh_flags_str(uint16_t flags, char out[static 8])
{
	letters_str(flag_letters, flags, out);
}

/* ---- key objects -------------------------------------------------------------- */

/* The first byte of a data object's clear encoding (keyobj.h). */
#define DATA_TAG 0x44

static void detail(struct kh_ctx *c, const char *text)
{
	if (c != NULL)
		kh_ctx_detail(c, "%s", text);
}

struct kh_key *kh_key_ref(struct kh_key *k)
{
	atomic_fetch_add(&k->refs, 1);
	return k;
}

void kh_key_unref(struct kh_key *k)
{
	if (k == NULL || atomic_fetch_sub(&k->refs, 1) != 1)
		return;
	kh_secure_free(k->secret, k->secret_len);
	EVP_PKEY_free(k->pkey);
	free(k->der);
	if (k->sig != NULL) {
		pthread_mutex_destroy(&k->sig->mu);
		EVP_PKEY_CTX_free(k->sig->ctx);
		free(k->sig);
	}
	kh_wipe(k, sizeof(*k));
	free(k);
}

/* The object itself holds no secret (only pointers to it and attributes),
 * so it lives on the normal heap where leak checkers can follow them. */
static struct kh_key *key_alloc(const struct kh_keyattr *a)
{
	struct kh_key *k = calloc(1, sizeof(*k));
	if (k == NULL)
		return NULL;
	if ((k->sig = calloc(1, sizeof(*k->sig))) == NULL) {
		free(k);
		return NULL;
	}
	pthread_mutex_init(&k->sig->mu, NULL);
	atomic_init(&k->refs, 1);
	k->a = *a;
	return k;
}

bool kh_hsm_fips(struct kh_hsm *hsm)
{
	pthread_mutex_lock(&hsm->mu);
	bool f = hsm->fips;
	pthread_mutex_unlock(&hsm->mu);
	return f;
}

int kh_key_policy(struct kh_ctx *c, const struct kh_keyattr *a, uint16_t use)
{
	if (c == NULL || !kh_hsm_fips(c->hsm))
		return KH_OK;
	/* FIPS 140-3 with the OpenSSL 3.0 FIPS provider approves neither EdDSA
	 * nor X25519: such keys are not made, imported or used */
	if (a->type == KH_KT_ED25519 || a->type == KH_KT_X25519) {
		kh_ctx_detail(c, "%s (not an approved algorithm in FIPS mode)",
		              a->type == KH_KT_ED25519 ? "Ed25519 (EdDSA)" : "X25519");
		return KH_ERR_FIPS;
	}
	if (a->type == KH_KT_RSA && a->bits < KH_FIPS_RSA_LEGACY_MIN) {
		kh_ctx_detail(c, "RSA keys under %d bits", KH_FIPS_RSA_LEGACY_MIN);
		return KH_ERR_FIPS;
	}
	/* SP 800-131A: 1024-2047 bits only for verifying signatures (legacy
	 * use) with a key already held or given clear; never made or imported */
	if (a->type == KH_KT_RSA && a->bits < KH_FIPS_RSA_MIN && use != KH_U_VERIFY) {
		kh_ctx_detail(c, "RSA keys under %d bits (%d-%d: signature verification only)",
		              KH_FIPS_RSA_MIN, KH_FIPS_RSA_LEGACY_MIN, KH_FIPS_RSA_MIN - 1);
		return KH_ERR_FIPS;
	}
	/* (no curve under P-256 is supported at all: a check for the day one is) */
	if (a->type == KH_KT_EC && a->bits < 256) {
		kh_ctx_detail(c, "curves under P-256");
		return KH_ERR_FIPS;
	}
	return KH_OK;
}

int kh_key_from_secret(struct kh_ctx *c, const struct kh_keyattr *a, const uint8_t *bytes,
                       size_t len, struct kh_key **out)
{
	struct kh_keyattr at = *a;
	struct kh_key *k;

	if (at.cls != KH_KC_SECRET) {
		detail(c, "CL");
		return KH_ERR_BAD_FIELD;
	}
	if (at.type == KH_KT_AES) {
		if (len != 16 && len != 24 && len != 32) {
			detail(c, "AES keys are 16, 24 or 32 bytes");
			return KH_ERR_BAD_FIELD;
		}
	} else if (at.type == KH_KT_GENERIC) {
		if (len == 0 || len > KH_GENERIC_MAX_LEN) {
			detail(c, "generic secrets are 1-16320 bytes");
			return KH_ERR_BAD_FIELD;
		}
	} else {
		detail(c, "KT");
		return KH_ERR_BAD_FIELD;
	}
	at.bits = (uint32_t)len * 8;
	if ((k = key_alloc(&at)) == NULL || (k->secret = kh_secure_alloc(len)) == NULL) {
		kh_key_unref(k);
		return KH_ERR_NOMEM;
	}
	memcpy(k->secret, bytes, len);
	k->secret_len = len;
	*out = k;
	return KH_OK;
}

int kh_key_from_data(struct kh_ctx *c, const struct kh_keyattr *a, const uint8_t *value,
                     size_t len, struct kh_key **out)
{
	struct kh_keyattr at = *a;
	struct kh_key *k;

	if (at.cls != KH_KC_DATA || at.type != KH_KT_GENERIC) {
		detail(c, "CL");
		return KH_ERR_BAD_FIELD;
	}
	if (len > KH_DATA_MAX_LEN) {
		detail(c, "data objects hold 0-16320 bytes");
		return KH_ERR_BAD_FIELD;
	}
	at.bits = (uint32_t)len * 8;
	at.usage = 0;
	/* the value is not secret in PKCS#11 terms: the plain heap will do;
	 * an empty value still gets a buffer, so der is never NULL */
	if ((k = key_alloc(&at)) == NULL || (k->der = malloc(len ? len : 1)) == NULL) {
		kh_key_unref(k);
		return KH_ERR_NOMEM;
	}
	if (len)
		memcpy(k->der, value, len);
	k->der_len = len;
	*out = k;
	return KH_OK;
}

bool kh_pkey_explicit_curve(EVP_PKEY *pk)
{
	int explicit = 0;
	return EVP_PKEY_get_base_id(pk) == EVP_PKEY_EC &&
	       (!EVP_PKEY_get_int_param(pk, OSSL_PKEY_PARAM_EC_DECODED_FROM_EXPLICIT_PARAMS,
	                                &explicit) ||
	        explicit != 0);
}

/* Type and size of an OpenSSL key as ours; keys on explicit curves are
 * not supported (kh_pkey_explicit_curve). */
int kh_pkey_kind(EVP_PKEY *pk, enum kh_ktype *type, uint32_t *bits)
{
	switch (EVP_PKEY_get_base_id(pk)) {
	case EVP_PKEY_RSA:
		*type = KH_KT_RSA;
		*bits = (uint32_t)EVP_PKEY_get_bits(pk);
		return KH_OK;
	case EVP_PKEY_EC: {
		char curve[32];
		size_t n = 0;
		if (kh_pkey_explicit_curve(pk))
			return KH_ERR_UNSUPPORTED;
		if (!EVP_PKEY_get_utf8_string_param(pk, OSSL_PKEY_PARAM_GROUP_NAME, curve,
		                                    sizeof(curve), &n))
			return KH_ERR_UNSUPPORTED;
		*type = KH_KT_EC;
		if (strcmp(curve, "prime256v1") == 0 || strcmp(curve, "P-256") == 0)
			*bits = 256;
		else if (strcmp(curve, "secp384r1") == 0 || strcmp(curve, "P-384") == 0)
			*bits = 384;
		else if (strcmp(curve, "secp521r1") == 0 || strcmp(curve, "P-521") == 0)
			*bits = 521;
		else
			return KH_ERR_UNSUPPORTED;
		return KH_OK;
	}
	case EVP_PKEY_ED25519:
		*type = KH_KT_ED25519;
		*bits = 255;
		return KH_OK;
	case EVP_PKEY_X25519:
		*type = KH_KT_X25519;
		*bits = 255;
		return KH_OK;
	default:
		return KH_ERR_UNSUPPORTED;
	}
}

static int spki_of(EVP_PKEY *pk, uint8_t **out, size_t *len)
{
	int n = i2d_PUBKEY(pk, NULL);
	uint8_t *p, *q;
	if (n <= 0)
		return KH_ERR_CRYPTO;
	if ((p = malloc((size_t)n)) == NULL)
		return KH_ERR_NOMEM;
	q = p;
	if (i2d_PUBKEY(pk, &q) != n) {
		free(p);
		return KH_ERR_CRYPTO;
	}
	*out = p;
	*len = (size_t)n;
	return KH_OK;
}

/* policy: hold the key to the FIPS limits of a key being made
 * (kh_key_policy); false only where the caller applies them for its use. */
static int key_from_pkey(struct kh_ctx *c, const struct kh_keyattr *a, EVP_PKEY *pk, bool policy,
                         struct kh_key **out)
{
	struct kh_keyattr at = *a;
	enum kh_ktype type;
	uint32_t bits;
	struct kh_key *k;
	int r;

	if ((r = kh_pkey_kind(pk, &type, &bits)) != KH_OK) {
		detail(c, "key algorithm or curve not supported");
		return r;
	}
	if ((at.type != 0 && at.type != type) ||
	    (at.cls != KH_KC_PRIVATE && at.cls != KH_KC_PUBLIC)) {
		detail(c, "key does not match KT/CL");
		return KH_ERR_BAD_FIELD;
	}
	at.type = type;
	at.bits = bits;
	if (policy && (r = kh_key_policy(c, &at, KH_FIPS_USE_MAKE)) != KH_OK)
		return r;
	if ((k = key_alloc(&at)) == NULL)
		return KH_ERR_NOMEM;
	if (at.cls == KH_KC_PUBLIC) {
		/* keep only the public half: re-read it from its SPKI */
		const uint8_t *p;
		if ((r = spki_of(pk, &k->der, &k->der_len)) != KH_OK) {
			kh_key_unref(k);
			return r;
		}
		p = k->der;
		if ((k->pkey = d2i_PUBKEY(NULL, &p, (long)k->der_len)) == NULL) {
			kh_key_unref(k);
			return KH_ERR_CRYPTO;
		}
		EVP_PKEY_free(pk);
	} else {
		k->pkey = pk;
	}
	*out = k;
	return KH_OK;
}

int kh_key_from_pkey(struct kh_ctx *c, const struct kh_keyattr *a, EVP_PKEY *pk,
                     struct kh_key **out)
{
	return key_from_pkey(c, a, pk, true, out);
}

static int key_from_der(struct kh_ctx *c, struct kh_keyattr *a, const uint8_t *der, size_t len,
                        bool policy, struct kh_key **out)
{
	const uint8_t *p = der;
	EVP_PKEY *pk = NULL;
	int r;

	if (len == 0 || len > KH_KS_MATERIAL_MAX) {
		detail(c, "key material size");
		return KH_ERR_BAD_FIELD;
	}
	if (a->cls == KH_KC_CERT) {
		X509 *x = d2i_X509(NULL, &p, (long)len);
		struct kh_key *k = NULL;
		if (x == NULL || p != der + len) {
			X509_free(x);
			detail(c, "not an X.509 certificate (DER)");
			return KH_ERR_BAD_FIELD;
		}
		a->type = KH_KT_X509;
		pk = X509_get_pubkey(x);
		X509_free(x);
		if (pk != NULL) {
			struct kh_keyattr pa = *a;
			if (kh_pkey_kind(pk, &pa.type, &pa.bits) != KH_OK)
				pa.bits = (uint32_t)EVP_PKEY_get_bits(pk);
			else if (policy && (r = kh_key_policy(c, &pa, KH_FIPS_USE_MAKE)) != KH_OK) {
				EVP_PKEY_free(pk);
				return r;
			}
			a->bits = pa.bits;
		}
		if ((k = key_alloc(a)) == NULL || (k->der = malloc(len)) == NULL) {
			EVP_PKEY_free(pk);
			kh_key_unref(k);
			return KH_ERR_NOMEM;
		}
		memcpy(k->der, der, len);
		k->der_len = len;
		k->pkey = pk;
		*out = k;
		return KH_OK;
	}
	if (a->cls == 0 || a->cls == KH_KC_PRIVATE) {
		pk = d2i_AutoPrivateKey(NULL, &p, (long)len);
		if (pk != NULL && p == der + len)
			a->cls = KH_KC_PRIVATE;
		else {
			EVP_PKEY_free(pk);
			pk = NULL;
			p = der;
		}
	}
	if (pk == NULL && (a->cls == 0 || a->cls == KH_KC_PUBLIC)) {
		pk = d2i_PUBKEY(NULL, &p, (long)len);
		if (pk != NULL && p == der + len)
			a->cls = KH_KC_PUBLIC;
		else {
			EVP_PKEY_free(pk);
			pk = NULL;
		}
	}
	if (pk == NULL) {
		detail(c, "not a PKCS#8, PKCS#1 or SubjectPublicKeyInfo DER key");
		return KH_ERR_BAD_FIELD;
	}
	if ((r = key_from_pkey(c, a, pk, policy, out)) != KH_OK) {
		EVP_PKEY_free(pk);
		return r;
	}
	a->type = (*out)->a.type;
	a->bits = (*out)->a.bits;
	return KH_OK;
}

int kh_key_from_der(struct kh_ctx *c, struct kh_keyattr *a, const uint8_t *der, size_t len,
                    struct kh_key **out)
{
	return key_from_der(c, a, der, len, true, out);
}

int kh_key_material(const struct kh_key *k, uint8_t **out, size_t *len)
{
	uint8_t *p = NULL, *q;
	int n;

	switch (k->a.cls) {
	case KH_KC_SECRET:
		if ((p = kh_secure_alloc(k->secret_len)) == NULL)
			return KH_ERR_NOMEM;
		memcpy(p, k->secret, k->secret_len);
		*out = p;
		*len = k->secret_len;
		return KH_OK;
	case KH_KC_PRIVATE: {
		PKCS8_PRIV_KEY_INFO *p8 = EVP_PKEY2PKCS8(k->pkey);
		if (p8 == NULL || (n = i2d_PKCS8_PRIV_KEY_INFO(p8, NULL)) <= 0 ||
		    (p = kh_secure_alloc((size_t)n)) == NULL) {
			PKCS8_PRIV_KEY_INFO_free(p8);
			return p8 == NULL || n <= 0 ? KH_ERR_CRYPTO : KH_ERR_NOMEM;
		}
		q = p;
		if (i2d_PKCS8_PRIV_KEY_INFO(p8, &q) != n) {
			PKCS8_PRIV_KEY_INFO_free(p8);
			kh_secure_free(p, (size_t)n);
			return KH_ERR_CRYPTO;
		}
		PKCS8_PRIV_KEY_INFO_free(p8);
		*out = p;
		*len = (size_t)n;
		return KH_OK;
	}
	case KH_KC_PUBLIC:
	case KH_KC_CERT:
		if ((p = kh_secure_alloc(k->der_len)) == NULL)
			return KH_ERR_NOMEM;
		memcpy(p, k->der, k->der_len);
		*out = p;
		*len = k->der_len;
		return KH_OK;
	case KH_KC_DATA:
		if ((p = kh_secure_alloc(1 + k->der_len)) == NULL)
			return KH_ERR_NOMEM;
		p[0] = DATA_TAG;
		if (k->der_len)
			memcpy(p + 1, k->der, k->der_len);
		*out = p;
		*len = 1 + k->der_len;
		return KH_OK;
	}
	return KH_ERR_INTERNAL;
}

int kh_key_spki(const struct kh_key *k, uint8_t **out, size_t *len)
{
	if (k->pkey == NULL)
		return KH_ERR_KEY_USAGE;
	return spki_of(k->pkey, out, len);
}

int kh_key_kcv(const struct kh_key *k, char out[static 7])
{
	uint8_t d[SHA_DIGEST_LENGTH];
	if (k->a.cls != KH_KC_SECRET)
		return KH_ERR_KEY_USAGE;
	if (k->a.type == KH_KT_AES)
		return kh_mk_kcv(k->secret, k->secret_len, out);
	if (SHA1(k->secret, k->secret_len, d) == NULL)
		return KH_ERR_CRYPTO;
	kh_hex_encode(d, 3, out);
	return KH_OK;
}

uint16_t kh_key_new_flags(uint16_t requested, bool local)
{
	uint16_t f = requested & KH_KF_REQUESTABLE;
	if (local) {
		f |= KH_KF_LOCAL;
		if (!(f & KH_KF_EXPORTABLE))
			f |= KH_KF_NEVER_EXPORTABLE;
		if (f & KH_KF_SENSITIVE)
			f |= KH_KF_ALWAYS_SENSITIVE;
	}
	return f;
}

uint16_t kh_usage_public_of(uint16_t u)
{
	uint16_t p = 0;
	if (u & KH_U_SIGN)
		p |= KH_U_VERIFY;
	if (u & KH_U_DECRYPT)
		p |= KH_U_ENCRYPT;
	if (u & KH_U_UNWRAP)
		p |= KH_U_WRAP;
	if (u & KH_U_DERIVE)
		p |= KH_U_DERIVE;
	return p;
}

uint16_t kh_usage_allowed(enum kh_kclass cls, enum kh_ktype type)
{
	bool priv = cls == KH_KC_PRIVATE;
	if (cls == KH_KC_SECRET)
		return KH_U_ALL;
	if (cls != KH_KC_PRIVATE && cls != KH_KC_PUBLIC)
		return 0;
	switch (type) {
	case KH_KT_RSA:
		return priv ? KH_U_SIGN | KH_U_DECRYPT | KH_U_UNWRAP
		            : KH_U_VERIFY | KH_U_ENCRYPT | KH_U_WRAP;
	case KH_KT_EC:
		return (priv ? KH_U_SIGN : KH_U_VERIFY) | KH_U_DERIVE;
	case KH_KT_ED25519:
		return priv ? KH_U_SIGN : KH_U_VERIFY;
	case KH_KT_X25519:
		return KH_U_DERIVE;
	default:
		return 0;
	}
}

uint16_t kh_key_usage_allowed(const struct kh_key *k)
{
	enum kh_ktype type;
	uint32_t bits;
	if (k->a.cls != KH_KC_CERT)
		return kh_usage_allowed(k->a.cls, k->a.type);
	/* a certificate does what its public key can do */
	if (k->pkey == NULL || kh_pkey_kind(k->pkey, &type, &bits) != KH_OK)
		return 0;
	return kh_usage_allowed(KH_KC_PUBLIC, type);
}

uint16_t kh_flags_allowed(enum kh_kclass cls)
{
	switch (cls) {
	case KH_KC_SECRET:
	case KH_KC_PRIVATE:
		return KH_KF_REQUESTABLE;
	case KH_KC_PUBLIC:
	case KH_KC_CERT:
		return KH_KF_REQUESTABLE & ~KH_KF_SENSITIVE; /* never sensitive */
	case KH_KC_DATA:
		return KH_KF_DATA;
	}
	return 0;
}

/* The flags a client may change only make a key safer, as PKCS#11 has it
 * for C_SetAttributeValue: sensitive may only be set, extractable (and
 * here modifiable) only cleared; Authorized decides who may use the key
 * and does not change. */
static int flags_change(struct kh_ctx *c, uint16_t cur, uint16_t want)
{
	uint16_t added = want & ~cur, removed = cur & ~want;
	if (removed & KH_KF_SENSITIVE) {
		kh_ctx_detail(c, "KF: S (sensitive) cannot be removed");
		return KH_ERR_KEY_USAGE;
	}
	if (added & KH_KF_EXPORTABLE) {
		kh_ctx_detail(c, "KF: X (exportable) cannot be added");
		return KH_ERR_KEY_USAGE;
	}
	if (added & KH_KF_MODIFIABLE) {
		kh_ctx_detail(c, "KF: M (modifiable) cannot be added");
		return KH_ERR_KEY_USAGE;
	}
	if ((added | removed) & KH_KF_AUTHORIZED) {
		kh_ctx_detail(c, "KF: A (Authorized) cannot change");
		return KH_ERR_KEY_USAGE;
	}
	return KH_OK;
}

int kh_key_attrs_change(struct kh_ctx *c, const struct kh_frame *req, const struct kh_key *k,
                        struct kh_keyattr *out, bool *changed)
{
	const struct kh_field *f;
	char letters[8];
	int r;

	*out = k->a;
	if ((f = kh_frame_get(req, "CZ")) != NULL) {
		uint16_t usage, allowed = kh_key_usage_allowed(k);
		if (kh_usage_parse(f->val, f->len, &usage) != KH_OK) {
			kh_ctx_detail(c, "CZ (letters of EDGVWUX, once each)");
			return KH_ERR_BAD_FIELD;
		}
		/* the usage a key has stays acceptable (GPKA may have given a
		 * private key letters its type cannot use); a new one must fit */
		if (usage != k->a.usage && (usage & ~allowed)) {
			kh_usage_str(allowed, letters);
			kh_ctx_detail(c, "CZ (letters of %s for a %s %s)", letters,
			              kh_kclass_name(k->a.cls), kh_ktype_name(k->a.type));
			return KH_ERR_BAD_FIELD;
		}
		if (usage != k->a.usage && !(k->a.flags & KH_KF_MODIFIABLE)) {
			kh_ctx_detail(c, "CZ: the key is not modifiable (no M): usage fixed");
			return KH_ERR_KEY_USAGE;
		}
		out->usage = usage;
	}
	if ((f = kh_frame_get(req, "KF")) != NULL) {
		uint16_t flags, allowed = kh_flags_allowed(k->a.cls);
		if (kh_flags_parse(f->val, f->len, &flags) != KH_OK) {
			kh_ctx_detail(c, "KF (letters of XSAMLNY, once each)");
			return KH_ERR_BAD_FIELD;
		}
		/* L, N, Y tell the key's history: given back as GPKR shows them
		 * or left out, they are the HSM's and stay as they are */
		flags &= KH_KF_REQUESTABLE;
		if (flags & ~allowed) {
			kh_flags_str(allowed, letters);
			kh_ctx_detail(c, "KF (letters of %s for a %s)", letters,
			              kh_kclass_name(k->a.cls));
			return KH_ERR_BAD_FIELD;
		}
		if ((r = flags_change(c, k->a.flags & KH_KF_REQUESTABLE, flags)) != KH_OK)
			return r;
		out->flags = (uint16_t)((k->a.flags & ~KH_KF_REQUESTABLE) | flags);
	}
	*changed = out->usage != k->a.usage || out->flags != k->a.flags;
	return KH_OK;
}

int kh_key_put_attrs(struct kh_buf *resp, const struct kh_key *k)
{
	uint8_t *der = NULL;
	size_t n = 0;
	char usage[8], flags[8];
	int r;

	kh_usage_str(k->a.usage, usage);
	kh_flags_str(k->a.flags, flags);
	if ((r = kh_msg_put(resp, "CZ", usage)) != KH_OK ||
	    (r = kh_msg_put(resp, "KF", flags)) != KH_OK ||
	    (r = kh_msg_put(resp, "FS", kh_mk_name(k->a.major))) != KH_OK)
		return r;
	if (k->a.cls == KH_KC_SECRET)
		return kh_msg_put_kcv(resp, k);
	if (k->a.cls == KH_KC_DATA)
		return kh_msg_put_hex(resp, "DV", k->der, k->der_len);
	/* a certificate, then its public key (if OpenSSL could read it) */
	if (k->a.cls == KH_KC_CERT &&
	    ((r = kh_msg_put_hex(resp, "CE", k->der, k->der_len)) != KH_OK || k->pkey == NULL))
		return r;
	if ((r = kh_key_spki(k, &der, &n)) == KH_OK)
		r = kh_msg_put_hex(resp, "RD", der, n);
	free(der);
	return r;
}

uint16_t kh_key_default_usage(enum kh_kclass cls, enum kh_ktype type)
{
	switch (cls) {
	case KH_KC_SECRET:
		return type == KH_KT_AES ? KH_U_ENCRYPT | KH_U_DECRYPT : KH_U_SIGN | KH_U_VERIFY;
	case KH_KC_PRIVATE:
		return type == KH_KT_X25519 ? KH_U_DERIVE : KH_U_SIGN;
	case KH_KC_PUBLIC:
		return type == KH_KT_X25519 ? KH_U_DERIVE : KH_U_VERIFY;
	default:
		return 0;
	}
}

int kh_msg_put_kcv(struct kh_buf *resp, const struct kh_key *k)
{
	char kcv[7];
	int r = kh_key_kcv(k, kcv);
	return r == KH_OK ? kh_msg_put(resp, "AE", kcv) : r;
}

/* ---- the key table ------------------------------------------------------------ */

#define ATTR_VERSION 1
#define ATTR_LEN 5

static void attrs_encode(const struct kh_keyattr *a, uint8_t out[static ATTR_LEN])
{
	out[0] = ATTR_VERSION;
	out[1] = (uint8_t)(a->usage >> 8);
	out[2] = (uint8_t)a->usage;
	out[3] = (uint8_t)(a->flags >> 8);
	out[4] = (uint8_t)a->flags;
}

/* A row's columns as attributes. Anything unexpected is KH_ERR_CRYPTO:
 * the AEAD binds these columns, so an edited row never opens anyway. */
static int attrs_from_row(const struct kh_key_row *row, struct kh_keyattr *a)
{
	if (row->attrs_len != ATTR_LEN || row->attrs[0] != ATTR_VERSION ||
	    kh_kclass_parse(row->cls, &a->cls) != KH_OK ||
	    kh_ktype_parse(row->ktype, &a->type) != KH_OK)
		return KH_ERR_CRYPTO;
	a->bits = row->bits;
	a->usage = (uint16_t)(row->attrs[1] << 8 | row->attrs[2]);
	a->flags = (uint16_t)(row->attrs[3] << 8 | row->attrs[4]);
	a->major = row->major;
	if ((a->usage & ~KH_U_ALL) || (a->flags & ~KH_KF_ALL))
		return KH_ERR_CRYPTO;
	return KH_OK;
}

bool kh_key_row_change_allowed(const struct kh_key_row *was, const struct kh_key_row *now)
{
	struct kh_keyattr a, b;
	if (attrs_from_row(was, &a) != KH_OK || attrs_from_row(now, &b) != KH_OK)
		return false;
	uint16_t gained = b.flags & ~a.flags, lost = a.flags & ~b.flags;
	if ((gained & (KH_KF_EXPORTABLE | KH_KF_MODIFIABLE)) || (lost & KH_KF_SENSITIVE) ||
	    ((gained | lost) & KH_KF_AUTHORIZED))
		return false;
	return b.usage == a.usage || (a.flags & KH_KF_MODIFIABLE);
}

/* Make a key object from its attributes and clear encoding. */
static int key_from_material(const struct kh_keyattr *a, const uint8_t *m, size_t n,
                             struct kh_key **out)
{
	struct kh_keyattr at = *a;
	struct kh_key *k = NULL;
	int r;

	if (a->cls == KH_KC_SECRET)
		r = kh_key_from_secret(NULL, &at, m, n, &k);
	else if (a->cls == KH_KC_DATA)
		r = n >= 1 && m[0] == DATA_TAG && a->type == KH_KT_GENERIC
		        ? kh_key_from_data(NULL, &at, m + 1, n - 1, &k)
		        : KH_ERR_CRYPTO;
	else
		r = kh_key_from_der(NULL, &at, m, n, &k);
	if (r != KH_OK)
		return KH_ERR_CRYPTO;
	/* the material must be what the bound attributes say it is */
	if (at.type != a->type || at.bits != a->bits || at.cls != a->cls) {
		kh_key_unref(k);
		return KH_ERR_CRYPTO;
	}
	k->a = *a;
	*out = k;
	return KH_OK;
}

int kh_key_with_attrs(const struct kh_key *k, const struct kh_keyattr *a, struct kh_key **out)
{
	uint8_t *m = NULL;
	size_t n = 0;
	int r;

	if (a->cls != k->a.cls || a->type != k->a.type || a->bits != k->a.bits ||
	    a->major != k->a.major)
		return KH_ERR_INTERNAL;
	if ((r = kh_key_material(k, &m, &n)) != KH_OK)
		return r;
	r = key_from_material(a, m, n, out);
	kh_secure_free(m, n);
	if (r != KH_OK)
		return r;
	memcpy((*out)->key_id, k->key_id, KH_KEY_ID_LEN);
	(*out)->has_id = k->has_id;
	(*out)->in_table = k->in_table;
	(*out)->slot = k->slot;
	return KH_OK;
}

/* A key's row as it is bound: slot, identifier, major key, class, type,
 * bits and attributes (attrs is the caller's ATTR_LEN bytes). */
static void bound_row(const struct kh_key *k, uint32_t slot, struct kh_key_row *row,
                      uint8_t attrs[static ATTR_LEN])
{
	memset(row, 0, sizeof(*row));
	row->slot = slot;
	row->major = k->a.major;
	snprintf(row->cls, sizeof(row->cls), "%s", kh_kclass_name(k->a.cls));
	snprintf(row->ktype, sizeof(row->ktype), "%s", kh_ktype_name(k->a.type));
	row->bits = k->a.bits;
	attrs_encode(&k->a, attrs);
	row->attrs = attrs;
	row->attrs_len = ATTR_LEN;
	if (k->has_id)
		memcpy(row->key_id, k->key_id, KH_KEY_ID_LEN);
}

/* Store k in slot, or with KH_SLOT_AUTO in the lowest free slot of the
 * role's ranges for its kind that is not one of avoid. */
static int key_store(struct kh_ctx *c, struct kh_key *k, uint32_t slot, bool replace,
                     const struct kh_key_desc *desc, const uint32_t *avoid, size_t navoid)
{
	struct kh_key_row row;
	uint8_t attrs[ATTR_LEN], *m = NULL;
	size_t mlen = 0;
	unsigned flags = (replace ? KH_KS_REPLACE : 0u) | (k->has_id ? 0u : KH_KS_NEW_ID);
	char actor[300];
	int r;

	bound_row(k, slot, &row, attrs);
	if (desc != NULL) {
		row.label = (uint8_t *)(uintptr_t)desc->label;
		row.label_len = desc->label_len;
		row.ckaid = (uint8_t *)(uintptr_t)desc->ckaid;
		row.ckaid_len = desc->ckaid_len;
		row.extra = (uint8_t *)(uintptr_t)desc->extra;
		row.extra_len = desc->extra_len;
	}
	if ((r = kh_key_material(k, &m, &mlen)) != KH_OK)
		return r;
	kh_session_actor(c->s, actor, sizeof(actor));
	if (slot == KH_SLOT_AUTO) {
		struct kh_ks_span spans[KH_MAX_RANGES];
		enum kh_slot_kind kind = kh_key_slot_kind(&k->a);
		size_t n = c->role ? kh_role_auto_spans(c->role, kind, spans) : 0;
		r = n == 0 ? KH_ERR_SLOT_OUT_OF_RANGE
		           : kh_keystore_put_free(c->hsm, &row, spans, n, avoid, navoid, m, mlen,
		                                  flags, actor);
	} else {
		r = kh_keystore_put(c->hsm, &row, m, mlen, flags, actor);
	}
	kh_secure_free(m, mlen);
	if (r == KH_ERR_MAJOR_KEY_NOT_LOADED)
		kh_ctx_detail(c, "%s", kh_mk_name(k->a.major));
	else if (r == KH_ERR_SLOT_OUT_OF_RANGE)
		kh_ctx_detail(c, "no free slot in the role's ranges");
	else if (r == KH_ERR_EXISTS && slot == KH_SLOT_AUTO)
		kh_ctx_detail(c, "the key identifier is in use in another slot");
	else if (r == KH_ERR_EXISTS)
		kh_ctx_detail(c, "slot %u is taken (RP=Y replaces) or the key identifier is in use",
		              slot);
	if (r != KH_OK)
		return r;
	memcpy(k->key_id, row.key_id, KH_KEY_ID_LEN);
	k->has_id = true;
	k->in_table = true;
	k->slot = row.slot;
	return KH_OK;
}

int kh_key_store(struct kh_ctx *c, struct kh_key *k, uint32_t slot, bool replace,
                 const struct kh_key_desc *desc)
{
	return key_store(c, k, slot, replace, desc, NULL, 0);
}

int kh_key_update(struct kh_ctx *c, const struct kh_key *old, const struct kh_key *nk,
                  bool new_value)
{
	struct kh_key_row was, now;
	uint8_t a1[ATTR_LEN], a2[ATTR_LEN], *m = NULL;
	size_t mlen = 0;
	char actor[300], text[96], u1[8], u2[8], f1[8], f2[8];
	int r;

	if (!old->in_table || !old->has_id)
		return KH_ERR_INTERNAL;
	bound_row(old, old->slot, &was, a1);
	bound_row(nk, old->slot, &now, a2);
	kh_usage_str(old->a.usage, u1);
	kh_usage_str(nk->a.usage, u2);
	kh_flags_str(old->a.flags, f1);
	kh_flags_str(nk->a.flags, f2);
	snprintf(text, sizeof(text), "usage %s->%s flags %s->%s%s", u1[0] ? u1 : "-",
	         u2[0] ? u2 : "-", f1[0] ? f1 : "-", f2[0] ? f2 : "-", new_value ? " value" : "");
	if (new_value && (r = kh_key_material(nk, &m, &mlen)) != KH_OK)
		return r;
	kh_session_actor(c->s, actor, sizeof(actor));
	r = kh_keystore_rewrite(c->hsm, &was, &now, m, mlen, actor, text);
	kh_secure_free(m, mlen);
	if (r == KH_ERR_CRYPTO)
		kh_ctx_detail(c, "the stored key in slot %u does not open (altered)", old->slot);
	else if (r == KH_ERR_NOT_FOUND)
		kh_ctx_detail(c, "slot %u no longer holds this key", old->slot);
	else if (r == KH_ERR_BUSY)
		kh_ctx_detail(c, "slot %u changed meanwhile: try again", old->slot);
	else if (r == KH_ERR_MAJOR_KEY_NOT_LOADED)
		kh_ctx_detail(c, "%s", kh_mk_name(old->a.major));
	return r;
}

int kh_key_delete(struct kh_ctx *c, uint32_t slot)
{
	char actor[300];
	kh_session_actor(c->s, actor, sizeof(actor));
	return kh_keystore_delete(c->hsm, slot, actor);
}

/* ---- cryptograms --------------------------------------------------------------- */

#define CG_MAGIC "KHC1"
#define CG_HDR 34

/* The current check value of a major key, as text (for kh_mk_seal_kcv) and
 * as the three bytes a cryptogram's header carries. */
static int kcv_bytes(struct kh_hsm *hsm, enum kh_mk_id major, char hex[static 7], uint8_t out[3])
{
	struct kh_mk_info info;
	kh_mk_info(hsm, major, &info);
	if (!info.loaded)
		return KH_ERR_MAJOR_KEY_NOT_LOADED;
	memcpy(hex, info.kcv, 7);
	return kh_hex_decode(info.kcv, 6, out, 3) == 3 ? KH_OK : KH_ERR_INTERNAL;
}

static void cg_header(const struct kh_key *k, const uint8_t kcv[3], uint8_t h[static CG_HDR])
{
	memcpy(h, CG_MAGIC, 4);
	h[4] = (uint8_t)k->a.major;
	memcpy(h + 5, kcv, 3);
	h[8] = (uint8_t)k->a.cls;
	h[9] = (uint8_t)k->a.type;
	h[10] = (uint8_t)(k->a.bits >> 24);
	h[11] = (uint8_t)(k->a.bits >> 16);
	h[12] = (uint8_t)(k->a.bits >> 8);
	h[13] = (uint8_t)k->a.bits;
	h[14] = (uint8_t)(k->a.usage >> 8);
	h[15] = (uint8_t)k->a.usage;
	h[16] = (uint8_t)(k->a.flags >> 8);
	h[17] = (uint8_t)k->a.flags;
	memcpy(h + 18, k->key_id, KH_KEY_ID_LEN);
}

/* Tries to make a cryptogram before giving up on a major key that keeps
 * changing under it (each retry means a rotation completed meanwhile). */
#define CG_SEAL_TRIES 3

int kh_key_cryptogram(struct kh_hsm *hsm, struct kh_key *k, uint8_t **out, size_t *len)
{
	uint8_t kcv[3], *m = NULL, *blob = NULL;
	size_t mlen = 0, wlen = 0;
	char hex[7];
	int r;

	if (k->a.cls == KH_KC_CERT || k->a.cls == KH_KC_DATA)
		return KH_ERR_UNSUPPORTED;
	if ((r = kcv_bytes(hsm, k->a.major, hex, kcv)) != KH_OK)
		return r;
	if (!k->has_id) {
		if (RAND_bytes(k->key_id, KH_KEY_ID_LEN) != 1)
			return KH_ERR_CRYPTO;
		k->has_id = true;
	}
	if ((r = kh_key_material(k, &m, &mlen)) != KH_OK)
		return r;
	if ((blob = malloc(CG_HDR + mlen + KH_MK_SEAL_OVERHEAD)) == NULL) {
		r = KH_ERR_NOMEM;
		goto out;
	}
	/* the header names the major key by its check value and is bound as
	 * associated data: seal only under the key it names */
	for (int i = 0; i < CG_SEAL_TRIES; i++) {
		if (i > 0 && (r = kcv_bytes(hsm, k->a.major, hex, kcv)) != KH_OK)
			goto out;
		cg_header(k, kcv, blob);
		r = kh_mk_seal_kcv(hsm, k->a.major, hex, blob, CG_HDR, m, mlen, blob + CG_HDR,
		                   &wlen);
		if (r != KH_ERR_BUSY)
			break;
	}
	if (r != KH_OK)
		goto out;
	*out = blob;
	*len = CG_HDR + wlen;
	blob = NULL;
out:
	free(blob);
	kh_secure_free(m, mlen);
	return r;
}

static int cryptogram_open(struct kh_hsm *hsm, const uint8_t *cg, size_t len, struct kh_key **out)
{
	struct kh_keyattr a = {0};
	uint8_t *m = NULL;
	size_t cap, n = 0;
	struct kh_key *k = NULL;
	char kcv[7];
	int r;

	if (len <= CG_HDR + KH_MK_SEAL_OVERHEAD ||
	    len > CG_HDR + KH_KS_MATERIAL_MAX + KH_MK_SEAL_OVERHEAD || memcmp(cg, CG_MAGIC, 4) != 0)
		return KH_ERR_CRYPTO;
	if (cg[4] != KH_MK_FTK && cg[4] != KH_MK_PMK)
		return KH_ERR_CRYPTO;
	a.major = (enum kh_mk_id)cg[4];
	a.cls = (enum kh_kclass)cg[8];
	a.type = (enum kh_ktype)cg[9];
	a.bits = (uint32_t)cg[10] << 24 | (uint32_t)cg[11] << 16 | (uint32_t)cg[12] << 8 | cg[13];
	a.usage = (uint16_t)(cg[14] << 8 | cg[15]);
	a.flags = (uint16_t)(cg[16] << 8 | cg[17]);
	if (a.cls < KH_KC_SECRET || a.cls > KH_KC_PUBLIC || a.type < KH_KT_AES ||
	    a.type > KH_KT_X25519 || (a.usage & ~KH_U_ALL) || (a.flags & ~KH_KF_ALL))
		return KH_ERR_CRYPTO;
	cap = len - CG_HDR - KH_MK_SEAL_OVERHEAD;
	if ((m = kh_secure_alloc(cap)) == NULL)
		return KH_ERR_NOMEM;
	/* opens under the major key the header names: the current one, or the
	 * one a rotation replaced while its grace period lasts */
	kh_hex_encode(cg + 5, 3, kcv);
	r = kh_mk_open_kcv(hsm, a.major, kcv, cg, CG_HDR, cg + CG_HDR, len - CG_HDR, m, &n);
	if (r == KH_OK)
		r = key_from_material(&a, m, n, &k);
	kh_secure_free(m, cap);
	if (r != KH_OK)
		return r == KH_ERR_MAJOR_KEY_NOT_LOADED ? r : KH_ERR_CRYPTO;
	memcpy(k->key_id, cg + 18, KH_KEY_ID_LEN);
	k->has_id = true;
	*out = k;
	return KH_OK;
}

/* ---- the cache ------------------------------------------------------------------- */

/* Bounded so that it cannot exhaust the secure heap: a parsed RSA-4096 key
 * holds a few KiB there. Replacement is by a clock hand. */
#define CACHE_SIZE 256

struct cache_ent {
	bool used;
	bool is_slot;
	bool hot;
	uint32_t slot;
	uint8_t digest[32]; /* cryptograms: SHA-256 of the blob */
	struct kh_key *key;
};

struct kh_keycache {
	pthread_mutex_t mu; /* a leaf lock: nothing else is taken while held */
	uint64_t gen;       /* bumped by every forget/clear */
	size_t hand;
	struct cache_ent e[CACHE_SIZE];
};

void kh_keycache_init(struct kh_hsm *hsm)
{
	struct kh_keycache *kc = calloc(1, sizeof(*kc));
	if (kc != NULL)
		pthread_mutex_init(&kc->mu, NULL);
	hsm->keycache = kc; /* NULL: no cache, every use opens the stored form */
}

static void ent_drop(struct cache_ent *e, struct kh_key **drop)
{
	*drop = e->key;
	memset(e, 0, sizeof(*e));
}

void kh_keycache_free(struct kh_hsm *hsm)
{
	struct kh_keycache *kc = hsm->keycache;
	if (kc == NULL)
		return;
	for (size_t i = 0; i < CACHE_SIZE; i++)
		kh_key_unref(kc->e[i].key);
	pthread_mutex_destroy(&kc->mu);
	free(kc);
	hsm->keycache = NULL;
}

void kh_keycache_forget(struct kh_hsm *hsm, uint32_t slot)
{
	struct kh_keycache *kc = hsm->keycache;
	struct kh_key *drop = NULL;
	if (kc == NULL)
		return;
	pthread_mutex_lock(&kc->mu);
	kc->gen++;
	for (size_t i = 0; i < CACHE_SIZE; i++)
		if (kc->e[i].used && kc->e[i].is_slot && kc->e[i].slot == slot) {
			ent_drop(&kc->e[i], &drop);
			break;
		}
	pthread_mutex_unlock(&kc->mu);
	kh_key_unref(drop);
}

void kh_keycache_clear(struct kh_hsm *hsm)
{
	struct kh_keycache *kc = hsm->keycache;
	struct kh_key *drop[CACHE_SIZE];
	size_t n = 0;
	if (kc == NULL)
		return;
	pthread_mutex_lock(&kc->mu);
	kc->gen++;
	for (size_t i = 0; i < CACHE_SIZE; i++)
		if (kc->e[i].used)
			ent_drop(&kc->e[i], &drop[n++]);
	pthread_mutex_unlock(&kc->mu);
	for (size_t i = 0; i < n; i++)
		kh_key_unref(drop[i]);
}

static struct kh_key *cache_get(struct kh_hsm *hsm, bool is_slot, uint32_t slot,
                                const uint8_t digest[32], uint64_t *gen)
{
	struct kh_keycache *kc = hsm->keycache;
	struct kh_key *k = NULL;
	if (kc == NULL)
		return NULL;
	pthread_mutex_lock(&kc->mu);
	*gen = kc->gen;
	for (size_t i = 0; i < CACHE_SIZE; i++) {
		struct cache_ent *e = &kc->e[i];
		if (!e->used || e->is_slot != is_slot)
			continue;
		if (is_slot ? e->slot == slot : memcmp(e->digest, digest, 32) == 0) {
			e->hot = true;
			k = kh_key_ref(e->key);
			break;
		}
	}
	pthread_mutex_unlock(&kc->mu);
	return k;
}

/* Insert unless something was forgotten since gen was read (the key may
 * have been read before a change that the forget announced). */
static void cache_put(struct kh_hsm *hsm, bool is_slot, uint32_t slot, const uint8_t digest[32],
                      uint64_t gen, struct kh_key *k)
{
	struct kh_keycache *kc = hsm->keycache;
	struct kh_key *drop = NULL;
	if (kc == NULL)
		return;
	pthread_mutex_lock(&kc->mu);
	if (kc->gen == gen) {
		struct cache_ent *e;
		for (;;) {
			e = &kc->e[kc->hand];
			kc->hand = (kc->hand + 1) % CACHE_SIZE;
			if (!e->used || !e->hot)
				break;
			e->hot = false;
		}
		if (e->used)
			ent_drop(e, &drop);
		e->used = true;
		e->is_slot = is_slot;
		e->slot = slot;
		if (!is_slot)
			memcpy(e->digest, digest, 32);
		e->key = kh_key_ref(k);
	}
	pthread_mutex_unlock(&kc->mu);
	kh_key_unref(drop);
}

int kh_key_from_cryptogram(struct kh_hsm *hsm, const uint8_t *cg, size_t len, struct kh_key **out)
{
	uint8_t digest[32];
	uint64_t gen = 0;
	struct kh_key *k;
	int r;

	if (SHA256(cg, len, digest) == NULL)
		return KH_ERR_CRYPTO;
	if ((k = cache_get(hsm, false, 0, digest, &gen)) != NULL) {
		char kcv[7];
		/* kept parsed, but only while its major key would still open it
		 * (a rotation retires the key a cryptogram was made under) */
		kh_hex_encode(cg + 5, 3, kcv);
		if (kh_mk_kcv_usable(hsm, k->a.major, kcv)) {
			*out = k;
			return KH_OK;
		}
		kh_key_unref(k);
	}
	if ((r = cryptogram_open(hsm, cg, len, &k)) != KH_OK)
		return r;
	cache_put(hsm, false, 0, digest, gen, k);
	*out = k;
	return KH_OK;
}

int kh_key_load_slot(struct kh_hsm *hsm, uint32_t slot, struct kh_key **out)
{
	struct kh_key_row row = {0};
	struct kh_keyattr a = {0};
	struct kh_key *k;
	uint8_t *m = NULL;
	size_t mlen = 0;
	uint64_t gen = 0;
	int r;

	if ((k = cache_get(hsm, true, slot, NULL, &gen)) != NULL) {
		*out = k;
		return KH_OK;
	}
	if ((r = kh_keystore_get(hsm, slot, &row)) != KH_OK)
		return r;
	if ((r = attrs_from_row(&row, &a)) != KH_OK ||
	    (r = kh_keystore_unwrap(hsm, &row, &m, &mlen)) != KH_OK)
		goto out;
	if ((r = key_from_material(&a, m, mlen, &k)) != KH_OK)
		goto out;
	memcpy(k->key_id, row.key_id, KH_KEY_ID_LEN);
	k->has_id = true;
	k->in_table = true;
	k->slot = slot;
	cache_put(hsm, true, slot, NULL, gen, k);
	*out = k;
out:
	kh_secure_free(m, mlen);
	kh_keystore_row_free(&row);
	return r;
}

/* ---- emitting a new key -------------------------------------------------------- */

static const char *cg_tag_for(const struct kh_key *k, const char *cg_tag)
{
	if (cg_tag != NULL)
		return cg_tag;
	return k->a.cls == KH_KC_SECRET ? "BG" : k->a.cls == KH_KC_PRIVATE ? "RC" : "SD";
}

/* Optional hex tag into a malloc'd buffer (NULL, 0 when absent). */
static int opt_hex(struct kh_ctx *c, const struct kh_frame *req, const char *tag, uint8_t **out,
                   size_t *len)
{
	const struct kh_field *f = kh_frame_get(req, tag);
	*out = NULL;
	*len = 0;
	if (f == NULL || f->len == 0)
		return KH_OK;
	if (f->len / 2 > KH_KS_DESC_MAX || (*out = malloc(f->len / 2 + 1)) == NULL)
		goto bad;
	if (kh_frame_hex(req, tag, *out, f->len / 2 + 1, len) != KH_OK)
		goto bad;
	return KH_OK;
bad:
	free(*out);
	*out = NULL;
	kh_ctx_detail(c, "%s (hex, at most %d bytes)", tag, KH_KS_DESC_MAX);
	return KH_ERR_BAD_FIELD;
}

/* Is the destination tag `*`, the HSM's choice of slot? */
static bool dest_auto(const struct kh_frame *req, const char *tag)
{
	const struct kh_field *f = kh_frame_get(req, tag);
	return f != NULL && f->len == 1 && f->val[0] == '*';
}

/* The slots the request names in its other destination tags: a slot the
 * HSM picks must not be one of them (GRSA SL * with PS 7 must not put the
 * private key in 7 before the public key goes there). */
static size_t dest_avoid(struct kh_ctx *c, const struct kh_frame *req, const char *slot_tag,
                         uint32_t avoid[static KH_OP_MAX_DEST])
{
	size_t n = 0;
	uint64_t v;
	if (c->op == NULL)
		return 0;
	for (size_t i = 0; i < c->op->ndest && n < KH_OP_MAX_DEST; i++) {
		const char *t = c->op->dest[i].slot_tag;
		if (strcmp(t, slot_tag) != 0 && kh_frame_has(req, t) &&
		    kh_frame_u64(req, t, 0, KH_SLOT_MAX, &v) == KH_OK)
			avoid[n++] = (uint32_t)v;
	}
	return n;
}

int kh_key_emit(struct kh_ctx *c, const struct kh_frame *req, struct kh_key *k,
                const char *slot_tag, const char *id_tag, const char *cg_tag, struct kh_buf *resp)
{
	int r;

	if (slot_tag != NULL && kh_frame_has(req, slot_tag)) {
		struct kh_key_desc d = {0};
		uint8_t *lb = NULL, *ki = NULL, *ex = NULL;
		uint32_t avoid[KH_OP_MAX_DEST];
		size_t navoid = 0;
		uint64_t slot;
		bool replace = false, pick = dest_auto(req, slot_tag);
		if (pick) {
			slot = KH_SLOT_AUTO;
			navoid = dest_avoid(c, req, slot_tag, avoid);
		} else if ((r = kh_frame_u64(req, slot_tag, 0, KH_SLOT_MAX, &slot)) != KH_OK) {
			kh_ctx_detail(c, "%s", slot_tag);
			return r;
		}
		if (kh_frame_has(req, "RP") && (r = kh_frame_yn(req, "RP", &replace)) != KH_OK) {
			kh_ctx_detail(c, "RP");
			return r;
		}
		if ((r = opt_hex(c, req, "LB", &lb, &d.label_len)) == KH_OK &&
		    (r = opt_hex(c, req, "KI", &ki, &d.ckaid_len)) == KH_OK &&
		    (r = opt_hex(c, req, "EX", &ex, &d.extra_len)) == KH_OK) {
			d.label = lb;
			d.ckaid = ki;
			d.extra = ex;
			/* a slot the HSM picks is free: RP has nothing to replace */
			r = key_store(c, k, (uint32_t)slot, replace && !pick, &d, avoid, navoid);
		}
		free(lb);
		free(ki);
		free(ex);
		if (r != KH_OK)
			return r;
		if (pick && (r = kh_msg_put_u64(resp, slot_tag, k->slot)) != KH_OK)
			return r;
	} else {
		uint8_t *cg = NULL;
		size_t n = 0;
		if ((r = kh_key_cryptogram(c->hsm, k, &cg, &n)) != KH_OK) {
			if (r == KH_ERR_MAJOR_KEY_NOT_LOADED)
				kh_ctx_detail(c, "%s", kh_mk_name(k->a.major));
			return r;
		}
		r = kh_msg_put_hex(resp, cg_tag_for(k, cg_tag), cg, n);
		free(cg);
		if (r != KH_OK)
			return r;
	}
	return kh_msg_put_hex(resp, id_tag, k->key_id, KH_KEY_ID_LEN);
}

int kh_req_cg_type(struct kh_ctx *c, const struct kh_frame *req, const char *tag,
                   enum kh_ktype *out)
{
	const struct kh_field *f = kh_frame_get(req, tag);
	uint8_t b;
	if (f == NULL || f->len < 2 * CG_HDR || kh_hex_decode(f->val + 18, 2, &b, 1) != 1 ||
	    b < KH_KT_AES || b > KH_KT_X25519) {
		kh_ctx_detail(c, "%s (a cryptogram)", tag);
		return KH_ERR_BAD_FIELD;
	}
	*out = (enum kh_ktype)b;
	return KH_OK;
}

/* ---- request readers ----------------------------------------------------------- */

int kh_req_ct(struct kh_ctx *c, const struct kh_frame *req, size_t dflt_len, enum kh_ktype *type,
              size_t *len)
{
	char ct[4];
	uint64_t ln = dflt_len;
	if (kh_frame_str(req, "CT", ct, sizeof(ct)) != KH_OK || strlen(ct) != 1 || ct[0] < '4' ||
	    ct[0] > '7') {
		kh_ctx_detail(c, "CT (4, 5, 6 AES-128/192/256, 7 generic)");
		return kh_frame_has(req, "CT") ? KH_ERR_BAD_FIELD : KH_ERR_MISSING_FIELD;
	}
	if (ct[0] != '7') {
		*type = KH_KT_AES;
		*len = (size_t)(16 + 8 * (ct[0] - '4'));
		return KH_OK;
	}
	if (kh_frame_has(req, "LN") &&
	    kh_frame_u64(req, "LN", 1, KH_GENERIC_MAX_LEN, &ln) != KH_OK) {
		kh_ctx_detail(c, "LN (1-%d)", KH_GENERIC_MAX_LEN);
		return KH_ERR_BAD_FIELD;
	}
	*type = KH_KT_GENERIC;
	*len = (size_t)ln;
	return KH_OK;
}

int kh_req_major(struct kh_ctx *c, const struct kh_frame *req, enum kh_mk_id *out)
{
	char v[8];
	*out = KH_MK_PMK;
	if (!kh_frame_has(req, "FS"))
		return KH_OK;
	if (kh_frame_str(req, "FS", v, sizeof(v)) == KH_OK) {
		if (strcmp(v, "PMK") == 0 || strcmp(v, "6") == 0)
			return KH_OK;
		if (strcmp(v, "FTK") == 0) {
			*out = KH_MK_FTK;
			return KH_OK;
		}
	}
	kh_ctx_detail(c, "FS (PMK or FTK)");
	return KH_ERR_BAD_FIELD;
}

int kh_req_usage(struct kh_ctx *c, const struct kh_frame *req, const char *tag, uint16_t dflt,
                 uint16_t *out)
{
	const struct kh_field *f = kh_frame_get(req, tag);
	*out = dflt;
	if (f == NULL)
		return KH_OK;
	if (kh_usage_parse(f->val, f->len, out) != KH_OK) {
		kh_ctx_detail(c, "%s (letters of EDGVWUX, once each)", tag);
		return KH_ERR_BAD_FIELD;
	}
	return KH_OK;
}

int kh_req_flags(struct kh_ctx *c, const struct kh_frame *req, uint16_t *out)
{
	const struct kh_field *f = kh_frame_get(req, "KF");
	*out = 0;
	if (f == NULL)
		return KH_OK;
	if (kh_flags_parse(f->val, f->len, out) != KH_OK || (*out & ~KH_KF_REQUESTABLE)) {
		kh_ctx_detail(c, "KF (letters of XSAM, once each)");
		return KH_ERR_BAD_FIELD;
	}
	return KH_OK;
}

int kh_req_oaep(struct kh_ctx *c, const struct kh_frame *req, struct kh_oaep *o)
{
	const struct kh_field *f = kh_frame_get(req, "OL");
	int r;

	memset(o, 0, sizeof(*o));
	if ((r = kh_req_md(c, req, "HA", "SHA-256", &o->md)) != KH_OK)
		return r;
	o->mgf = o->md;
	if (kh_frame_has(req, "MG") && (r = kh_req_md(c, req, "MG", NULL, &o->mgf)) != KH_OK)
		return r;
	if (f == NULL || f->len == 0)
		return KH_OK;
	if (f->len / 2 > KH_OAEP_LABEL_MAX || (o->label = malloc(f->len / 2 + 1)) == NULL ||
	    kh_frame_hex(req, "OL", o->label, f->len / 2 + 1, &o->label_len) != KH_OK) {
		kh_oaep_free(o);
		kh_ctx_detail(c, "OL (hex, at most %d bytes)", KH_OAEP_LABEL_MAX);
		return KH_ERR_BAD_FIELD;
	}
	return KH_OK;
}

void kh_oaep_free(struct kh_oaep *o)
{
	free(o->label);
	o->label = NULL;
	o->label_len = 0;
}

int kh_oaep_setup(EVP_PKEY_CTX *px, const struct kh_oaep *o)
{
	uint8_t *l;
	if (EVP_PKEY_CTX_set_rsa_padding(px, RSA_PKCS1_OAEP_PADDING) != 1 ||
	    EVP_PKEY_CTX_set_rsa_oaep_md(px, o->md) != 1 ||
	    EVP_PKEY_CTX_set_rsa_mgf1_md(px, o->mgf) != 1)
		return KH_ERR_CRYPTO;
	if (o->label_len == 0)
		return KH_OK;
	/* set0 takes the label over */
	if ((l = OPENSSL_memdup(o->label, o->label_len)) == NULL)
		return KH_ERR_NOMEM;
	if (EVP_PKEY_CTX_set0_rsa_oaep_label(px, l, (int)o->label_len) != 1) {
		OPENSSL_free(l);
		return KH_ERR_CRYPTO;
	}
	return KH_OK;
}

/* Digests by their wire names. They are fetched once: in OpenSSL 3 the
 * EVP_sha256()-style getters make every use look the algorithm up again,
 * under a lock shared by all threads. */
static const char *const md_names[] = {"SHA-1",    "SHA-224",  "SHA-256",  "SHA-384", "SHA-512",
                                       "SHA3-224", "SHA3-256", "SHA3-384", "SHA3-512"};
#define NMD (sizeof(md_names) / sizeof(md_names[0]))
static EVP_MD *md_fetched[NMD]; /* for the life of the process */
static pthread_once_t md_once = PTHREAD_ONCE_INIT;

static void md_fetch(void)
{
	for (size_t i = 0; i < NMD; i++)
		md_fetched[i] = EVP_MD_fetch(NULL, md_names[i], NULL);
}

int kh_req_md(struct kh_ctx *c, const struct kh_frame *req, const char *tag, const char *dflt,
              const EVP_MD **out)
{
	char v[16];
	const char *name = dflt;
	if (kh_frame_has(req, tag)) {
		if (kh_frame_str(req, tag, v, sizeof(v)) != KH_OK)
			goto bad;
		name = v;
	}
	if (name == NULL) {
		kh_ctx_detail(c, "%s", tag);
		return KH_ERR_MISSING_FIELD;
	}
	pthread_once(&md_once, md_fetch);
	for (size_t i = 0; i < NMD; i++)
		if (strcmp(name, md_names[i]) == 0) {
			if (md_fetched[i] == NULL)
				return KH_ERR_CRYPTO;
			*out = md_fetched[i];
			return KH_OK;
		}
bad:
	kh_ctx_detail(c, "%s (SHA-1, SHA-224, SHA-256, SHA-384, SHA-512, SHA3-224..512)", tag);
	return KH_ERR_BAD_FIELD;
}

/* ---- resolving a request's keys ---------------------------------------------- */

enum kh_slot_kind kh_key_slot_kind(const struct kh_keyattr *a)
{
	if (a->cls == KH_KC_DATA)
		return KH_SK_ANY;
	return kh_ktype_symmetric(a->type) ? KH_SK_SYMMETRIC : KH_SK_ASYMMETRIC;
}

static bool range_fits(const struct kh_range *g, enum kh_slot_kind kind)
{
	return g->kind == 'M' || kind == KH_SK_ANY ||
	       g->kind == (kind == KH_SK_SYMMETRIC ? 'S' : 'A');
}

bool kh_role_slot_fits(const struct kh_role *r, uint32_t slot, enum kh_slot_kind kind)
{
	for (size_t i = 0; i < r->nranges; i++) {
		const struct kh_range *g = &r->ranges[i];
		if (slot >= g->lo && slot <= g->hi && range_fits(g, kind))
			return true;
	}
	return false;
}

size_t kh_role_auto_spans(const struct kh_role *r, enum kh_slot_kind kind,
                          struct kh_ks_span out[static KH_MAX_RANGES])
{
	size_t n = 0;
	for (size_t i = 0; i < r->nranges && i < KH_MAX_RANGES; i++)
		if (range_fits(&r->ranges[i], kind))
			out[n++] = (struct kh_ks_span){r->ranges[i].lo, r->ranges[i].hi};
	return n;
}

static const char *kind_text(enum kh_slot_kind kind)
{
	return kind == KH_SK_SYMMETRIC    ? "a symmetric"
	       : kind == KH_SK_ASYMMETRIC ? "an asymmetric"
	                                  : "any";
}

static bool logged_in(const struct kh_ctx *c)
{
	return c->s->active && c->s->nident > 0;
}

/* Authorized keys: made or used only by a role with keys.authorized on a
 * connection where an identity is logged in. */
static int authorized_ok(struct kh_ctx *c)
{
	if (!(c->role->perms & KH_PERM(KH_P_KEYS_AUTHORIZED))) {
		kh_ctx_detail(c, "needs keys.authorized (Authorized key)");
		return KH_ERR_PERMISSION_DENIED;
	}
	if (!logged_in(c)) {
		kh_ctx_detail(c, "an Authorized key needs a logged-in identity");
		return KH_ERR_NOT_LOGGED_IN;
	}
	return KH_OK;
}

static int slot_of(struct kh_ctx *c, const struct kh_frame *req, const char *tag, uint32_t *slot)
{
	uint64_t v;
	if (kh_frame_u64(req, tag, 0, KH_SLOT_MAX, &v) != KH_OK) {
		kh_ctx_detail(c, "%s (slot 0-%u)", tag, KH_SLOT_MAX);
		return KH_ERR_BAD_FIELD;
	}
	*slot = (uint32_t)v;
	if (!kh_role_has_slot(c->role, *slot)) {
		kh_ctx_detail(c, "%s %u", tag, *slot);
		return KH_ERR_SLOT_OUT_OF_RANGE;
	}
	return KH_OK;
}

int kh_dest_check(struct kh_ctx *c, const struct kh_frame *req, const char *tag,
                  enum kh_slot_kind kind, uint32_t *slot)
{
	struct kh_ks_span spans[KH_MAX_RANGES];
	int r;

	if (dest_auto(req, tag)) {
		/* the slot itself is chosen when the key is stored (kh_key_emit),
		 * in the transaction that writes it */
		if (kh_role_auto_spans(c->role, kind, spans) == 0) {
			kh_ctx_detail(c,
			              "%s *: no free slot in the role's ranges (it has no range "
			              "for %s key)",
			              tag, kind_text(kind));
			return KH_ERR_SLOT_OUT_OF_RANGE;
		}
		*slot = KH_SLOT_AUTO;
		return KH_OK;
	}
	if ((r = slot_of(c, req, tag, slot)) != KH_OK)
		return r;
	if (!kh_role_slot_fits(c->role, *slot, kind)) {
		kh_ctx_detail(c, "%s %u: range kind does not allow %s key", tag, *slot,
		              kind_text(kind));
		return KH_ERR_SLOT_OUT_OF_RANGE;
	}
	return KH_OK;
}

static int hex_field(struct kh_ctx *c, const struct kh_frame *req, const char *tag, size_t max,
                     uint8_t **out, size_t *len)
{
	const struct kh_field *f = kh_frame_get(req, tag);
	size_t cap = f->len / 2 + 1;
	if (f->len / 2 > max || (*out = malloc(cap)) == NULL ||
	    kh_frame_hex(req, tag, *out, cap, len) != KH_OK || *len == 0) {
		free(*out);
		*out = NULL;
		kh_ctx_detail(c, "%s (hex)", tag);
		return KH_ERR_BAD_FIELD;
	}
	return KH_OK;
}

static int resolve_one(struct kh_ctx *c, const struct kh_frame *req, const struct kh_keyref *ref,
                       struct kh_key **out)
{
	bool has_slot = ref->slot_tag && kh_frame_has(req, ref->slot_tag);
	bool has_cg = ref->cg_tag && kh_frame_has(req, ref->cg_tag);
	bool has_pub = (ref->flags & KH_KR_CLEAR_PUB) && ref->pub_tag && kh_frame_has(req, ref->pub_tag);
	struct kh_key *k = NULL;
	uint8_t *blob = NULL;
	size_t blen = 0;
	int r;

	*out = NULL;
	if (has_slot + has_cg + has_pub > 1) {
		kh_ctx_detail(c, "name the key once (%s, %s%s%s)", ref->slot_tag ? ref->slot_tag : "",
		              ref->cg_tag ? ref->cg_tag : "", has_pub ? " or " : "",
		              has_pub ? ref->pub_tag : "");
		return KH_ERR_BAD_FIELD;
	}
	if (!has_slot && !has_cg && !has_pub) {
		if (!(ref->flags & KH_KR_REQUIRED))
			return KH_OK;
		if (ref->slot_tag && ref->cg_tag)
			kh_ctx_detail(c, "%s or %s", ref->slot_tag, ref->cg_tag);
		else
			kh_ctx_detail(c, "%s", ref->slot_tag ? ref->slot_tag : ref->cg_tag);
		return KH_ERR_MISSING_FIELD;
	}
	if (has_slot) {
		uint32_t slot;
		if ((r = slot_of(c, req, ref->slot_tag, &slot)) != KH_OK)
			return r;
		if ((r = kh_key_load_slot(c->hsm, slot, &k)) != KH_OK) {
			if (r == KH_ERR_NOT_FOUND)
				kh_ctx_detail(c, "slot %u is empty", slot);
			else if (r == KH_ERR_CRYPTO)
				kh_ctx_detail(c, "the stored key in slot %u does not open (altered)", slot);
			return r;
		}
		if (!kh_role_slot_fits(c->role, slot, kh_key_slot_kind(&k->a))) {
			kh_ctx_detail(c, "slot %u: range kind does not allow this key", slot);
			r = KH_ERR_SLOT_OUT_OF_RANGE;
			goto fail;
		}
		if (ref->id_tag && kh_frame_has(req, ref->id_tag)) {
			uint8_t id[KH_KEY_ID_LEN];
			size_t n = 0;
			if (kh_frame_hex(req, ref->id_tag, id, sizeof(id), &n) != KH_OK ||
			    n != KH_KEY_ID_LEN) {
				kh_ctx_detail(c, "%s (16 bytes, hex)", ref->id_tag);
				r = KH_ERR_BAD_FIELD;
				goto fail;
			}
			if (!kh_ct_equal(id, k->key_id, KH_KEY_ID_LEN)) {
				kh_ctx_detail(c, "key identifier differs from slot %u's key", slot);
				r = KH_ERR_NOT_FOUND;
				goto fail;
			}
		}
	} else if (has_cg) {
		if ((r = hex_field(c, req, ref->cg_tag, CG_HDR + KH_KS_MATERIAL_MAX + KH_MK_SEAL_OVERHEAD,
		                   &blob, &blen)) != KH_OK)
			return r;
		r = kh_key_from_cryptogram(c->hsm, blob, blen, &k);
		free(blob);
		if (r != KH_OK) {
			if (r == KH_ERR_CRYPTO)
				kh_ctx_detail(c,
				              "%s: not a cryptogram of this HSM's major keys (or made "
				              "under a retired one), or altered",
				              ref->cg_tag);
			return r;
		}
	} else {
		struct kh_keyattr a = {.cls = KH_KC_PUBLIC,
		                       .usage = KH_U_ENCRYPT | KH_U_VERIFY | KH_U_WRAP | KH_U_DERIVE};
		if ((ref->flags & KH_KR_CLEAR_PKI) &&
		    !(c->role->perms & KH_PERM(KH_P_KEYS_IMPORT_PKI))) {
			kh_ctx_detail(c, "needs keys.import_pki (clear public key in %s)", ref->pub_tag);
			return KH_ERR_PERMISSION_DENIED;
		}
		if ((r = hex_field(c, req, ref->pub_tag, KH_KS_MATERIAL_MAX, &blob, &blen)) != KH_OK)
			return r;
		/* held to the FIPS limits below, for what this request does */
		r = key_from_der(c, &a, blob, blen, false, &k);
		free(blob);
		if (r != KH_OK)
			return r;
		if (a.cls != KH_KC_PUBLIC) {
			kh_key_unref(k);
			kh_ctx_detail(c, "%s (a public key)", ref->pub_tag);
			return KH_ERR_BAD_FIELD;
		}
	}
	if (k->a.cls == KH_KC_DATA && !(ref->flags & KH_KR_OBJECT)) {
		kh_ctx_detail(c, "a data object is not a key");
		r = KH_ERR_KEY_USAGE;
		goto fail;
	}
	if (ref->classes && !(ref->classes & (1u << k->a.cls))) {
		kh_ctx_detail(c, "a %s key cannot do this", kh_kclass_name(k->a.cls));
		r = KH_ERR_KEY_USAGE;
		goto fail;
	}
	if (ref->types && !(ref->types & KH_KT_BIT(k->a.type))) {
		kh_ctx_detail(c, "a %s key cannot do this", kh_ktype_name(k->a.type));
		r = KH_ERR_KEY_USAGE;
		goto fail;
	}
	if ((k->a.usage & ref->usage) != ref->usage) {
		char need[8];
		kh_usage_str((uint16_t)(ref->usage & ~k->a.usage), need);
		kh_ctx_detail(c, "the key's usage lacks %s", need);
		r = KH_ERR_KEY_USAGE;
		goto fail;
	}
	if ((ref->flags & KH_KR_EXPORTABLE) && !(k->a.flags & KH_KF_EXPORTABLE)) {
		kh_ctx_detail(c, "the key is not exportable");
		r = KH_ERR_KEY_USAGE;
		goto fail;
	}
	if ((k->a.flags & KH_KF_AUTHORIZED) && (r = authorized_ok(c)) != KH_OK)
		goto fail;
	/* the FIPS limits for what the request does with the key: a request
	 * that names no usage (GPKR, GPGC, RDPK, a key wrapped out...) is held
	 * to those of a key being made */
	if ((r = kh_key_policy(c, &k->a, ref->usage)) != KH_OK)
		goto fail;
	if (k->a.cls == KH_KC_CERT && k->pkey != NULL) {
		/* a certificate's key is held to the same limits as a key's */
		struct kh_keyattr pa = k->a;
		if (kh_pkey_kind(k->pkey, &pa.type, &pa.bits) == KH_OK &&
		    (r = kh_key_policy(c, &pa, ref->usage)) != KH_OK)
			goto fail;
	}
	*out = k;
	return KH_OK;
fail:
	kh_key_unref(k);
	return r;
}

int kh_op_resolve(struct kh_ctx *c, const struct kh_frame *req, struct kh_op *op)
{
	int r;

	if (op->perms & ~c->role->perms) {
		for (int i = 0; i < KH_P_COUNT; i++)
			if (op->perms & ~c->role->perms & KH_PERM(i)) {
				kh_ctx_detail(c, "needs %s", kh_perm_table[i].id);
				break;
			}
		return KH_ERR_PERMISSION_DENIED;
	}
	if (op->fips_refusal != NULL && kh_hsm_fips(c->hsm)) {
		kh_ctx_detail(c, "%s", op->fips_refusal);
		return KH_ERR_FIPS;
	}
	if ((op->new_flags & KH_KF_AUTHORIZED) && (r = authorized_ok(c)) != KH_OK)
		return r;
	for (size_t i = 0; i < op->ndest; i++) {
		const struct kh_dest *d = &op->dest[i];
		uint32_t slot;
		if (!kh_frame_has(req, d->slot_tag))
			continue;
		if ((r = kh_dest_check(c, req, d->slot_tag, d->kind, &slot)) != KH_OK)
			return r;
	}
	for (size_t i = 0; i < op->nref; i++)
		if ((r = resolve_one(c, req, &op->ref[i], &op->key[i])) != KH_OK)
			return r;
	return KH_OK;
}

void kh_op_release(struct kh_op *op)
{
	for (size_t i = 0; i < KH_OP_MAX_KEYS; i++) {
		kh_key_unref(op->key[i]);
		op->key[i] = NULL;
	}
}

/*
 * PKCS#11 attributes of the module's objects: the mapping between the
 * HSM's classes, types, usage letters and flags and PKCS#11's, the values
 * C_GetAttributeValue answers (public parts derived from the key's
 * SubjectPublicKeyInfo, certificate fields from its DER), and the encoding
 * of descriptive attributes kept beside a key on the HSM (GPKS EX). Never
 * sees a secret: secret and private values are always "sensitive".
 */
#include <stdlib.h>
#include <string.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/x509.h>

#include "pkcs11/p11.h"
#include "pkcs11/p11_attr.h"

/* ---- classes and types ---- */

static const struct {
	CK_OBJECT_CLASS cls;
	const char *name;
} classes[] = {
	{CKO_SECRET_KEY, "secret"}, {CKO_PRIVATE_KEY, "private"}, {CKO_PUBLIC_KEY, "public"},
	{CKO_CERTIFICATE, "cert"},  {CKO_DATA, "data"},
};

static const struct {
	CK_KEY_TYPE kt;
	const char *name;
} ktypes[] = {
	{CKK_AES, "AES"}, {CKK_GENERIC_SECRET, "GENERIC"}, {CKK_RSA, "RSA"}, {CKK_EC, "EC"},
	{CKK_EC_EDWARDS, "ED25519"}, {CKK_EC_MONTGOMERY, "X25519"},
};

const char *p11_class_name(CK_OBJECT_CLASS c)
{
	for (size_t i = 0; i < sizeof(classes) / sizeof(classes[0]); i++)
		if (classes[i].cls == c)
			return classes[i].name;
	return NULL;
}

bool p11_class_from(const char *s, size_t n, CK_OBJECT_CLASS *out)
{
	for (size_t i = 0; i < sizeof(classes) / sizeof(classes[0]); i++)
		if (strlen(classes[i].name) == n && memcmp(classes[i].name, s, n) == 0) {
			*out = classes[i].cls;
			return true;
		}
	return false;
}

bool p11_is_hmac_ktype(CK_KEY_TYPE kt)
{
	switch (kt) {
	case CKK_SHA_1_HMAC:
	case CKK_SHA224_HMAC:
	case CKK_SHA256_HMAC:
	case CKK_SHA384_HMAC:
	case CKK_SHA512_HMAC:
	case CKK_SHA3_224_HMAC:
	case CKK_SHA3_256_HMAC:
	case CKK_SHA3_384_HMAC:
	case CKK_SHA3_512_HMAC:
		return true;
	default:
		return false;
	}
}

const char *p11_ktype_name(CK_KEY_TYPE kt)
{
	if (p11_is_hmac_ktype(kt))
		kt = CKK_GENERIC_SECRET;
	for (size_t i = 0; i < sizeof(ktypes) / sizeof(ktypes[0]); i++)
		if (ktypes[i].kt == kt)
			return ktypes[i].name;
	return NULL;
}

bool p11_ktype_from(const char *s, size_t n, CK_KEY_TYPE *out)
{
	for (size_t i = 0; i < sizeof(ktypes) / sizeof(ktypes[0]); i++)
		if (strlen(ktypes[i].name) == n && memcmp(ktypes[i].name, s, n) == 0) {
			*out = ktypes[i].kt;
			return true;
		}
	if (n == 4 && memcmp(s, "X509", 4) == 0) {
		*out = CKC_X_509;
		return true;
	}
	return false;
}

unsigned p11_usage_allowed(CK_OBJECT_CLASS cls, CK_KEY_TYPE kt)
{
	bool priv = cls == CKO_PRIVATE_KEY;
	if (cls == CKO_SECRET_KEY)
		return kt == CKK_AES ? 0x7f : (P11_U_SIGN | P11_U_VERIFY | P11_U_DERIVE);
	if (cls != CKO_PRIVATE_KEY && cls != CKO_PUBLIC_KEY)
		return 0;
	switch (kt) {
	case CKK_RSA:
		return priv ? P11_U_SIGN | P11_U_DECRYPT | P11_U_UNWRAP : P11_U_VERIFY | P11_U_ENCRYPT | P11_U_WRAP;
	case CKK_EC:
		return (priv ? P11_U_SIGN : P11_U_VERIFY) | P11_U_DERIVE;
	case CKK_EC_EDWARDS:
		return priv ? P11_U_SIGN : P11_U_VERIFY;
	case CKK_EC_MONTGOMERY:
		return P11_U_DERIVE;
	default:
		return 0;
	}
}

/* ---- curves ---- */

static const struct {
	const char *ossl;     /* OpenSSL group name */
	const char *alias;    /* other accepted printable names */
	uint8_t der[12];
	size_t der_len;
	const char *hsm;      /* GECC RA */
	CK_KEY_TYPE kt;
	CK_ULONG bits;
} curves[] = {
	{"prime256v1", "P-256", {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}, 10, "2", CKK_EC, 256},
	{"secp384r1", "P-384", {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22}, 7, "3", CKK_EC, 384},
	{"secp521r1", "P-521", {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23}, 7, "4", CKK_EC, 521},
	{"edwards25519", "ED25519", {0x06, 0x03, 0x2b, 0x65, 0x70}, 5, "5", CKK_EC_EDWARDS, 255},
	{"curve25519", "X25519", {0x06, 0x03, 0x2b, 0x65, 0x6e}, 5, "6", CKK_EC_MONTGOMERY, 255},
};
#define NCURVES (sizeof(curves) / sizeof(curves[0]))

static bool name_eq(const uint8_t *p, size_t n, const char *name)
{
	size_t l = strlen(name);
	if (l != n)
		return false;
	for (size_t i = 0; i < n; i++) {
		char a = (char)p[i], b = name[i];
		if (a >= 'a' && a <= 'z')
			a = (char)(a - 32);
		if (b >= 'a' && b <= 'z')
			b = (char)(b - 32);
		if (a != b)
			return false;
	}
	return true;
}

/* CKA_EC_PARAMS: a named curve OID, or (PKCS#11 3.0) a PrintableString
 * curve name. Explicit parameters are not supported. */
int p11_curve_from_params(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < NCURVES; i++)
		if (n == curves[i].der_len && memcmp(p, curves[i].der, n) == 0)
			return (int)i;
	if (n >= 2 && p[0] == 0x13 && p[1] == n - 2) {
		for (size_t i = 0; i < NCURVES; i++)
			if (name_eq(p + 2, n - 2, curves[i].ossl) || name_eq(p + 2, n - 2, curves[i].alias))
				return (int)i;
		if (name_eq(p + 2, n - 2, "secp256r1"))
			return 0;
	}
	return -1;
}

const char *p11_curve_hsm(int c)
{
	return curves[c].hsm;
}

CK_KEY_TYPE p11_curve_ktype(int c)
{
	return curves[c].kt;
}

/* ---- descriptive attributes (EX) ---- */

static const CK_ATTRIBUTE_TYPE descriptive[] = {
	CKA_SUBJECT, CKA_START_DATE, CKA_END_DATE, CKA_APPLICATION, CKA_OBJECT_ID, CKA_ISSUER,
	CKA_SERIAL_NUMBER, CKA_URL, CKA_CERTIFICATE_CATEGORY, CKA_JAVA_MIDP_SECURITY_DOMAIN,
	CKA_HASH_OF_SUBJECT_PUBLIC_KEY, CKA_HASH_OF_ISSUER_PUBLIC_KEY, CKA_KEY_TYPE, CKA_PRIVATE,
	CKA_ALLOWED_MECHANISMS, CKA_KEY_GEN_MECHANISM,
};

bool p11_attr_descriptive(CK_ATTRIBUTE_TYPE t)
{
	for (size_t i = 0; i < sizeof(descriptive) / sizeof(descriptive[0]); i++)
		if (descriptive[i] == t)
			return true;
	return false;
}

/* The list is type (4, big-endian) | length (4) | value, repeated, each
 * type at most once. */
bool p11_extra_find(const uint8_t *ex, size_t n, CK_ATTRIBUTE_TYPE t, const uint8_t **v, size_t *vlen)
{
	size_t off = 0;
	while (n - off >= 8) {
		uint32_t ty = (uint32_t)ex[off] << 24 | (uint32_t)ex[off + 1] << 16 | (uint32_t)ex[off + 2] << 8 | ex[off + 3];
		uint32_t l = (uint32_t)ex[off + 4] << 24 | (uint32_t)ex[off + 5] << 16 | (uint32_t)ex[off + 6] << 8 | ex[off + 7];
		off += 8;
		if (l > n - off)
			return false;
		if (ty == t) {
			*v = ex + off;
			*vlen = l;
			return true;
		}
		off += l;
	}
	return false;
}

int p11_extra_set(uint8_t **ex, size_t *n, CK_ATTRIBUTE_TYPE t, const void *v, size_t vlen)
{
	/* rebuild without t, then append it */
	size_t cap = *n + 8 + vlen, off = 0, w = 0;
	if (t > 0xffffffffu || vlen > 0xffffffffu)
		return KH_ERR_BAD_FIELD;
	uint8_t *nb = malloc(cap ? cap : 1);
	if (!nb)
		return KH_ERR_NOMEM;
	const uint8_t *old = *ex;
	while (*n - off >= 8) {
		uint32_t ty = (uint32_t)old[off] << 24 | (uint32_t)old[off + 1] << 16 | (uint32_t)old[off + 2] << 8 | old[off + 3];
		uint32_t l = (uint32_t)old[off + 4] << 24 | (uint32_t)old[off + 5] << 16 | (uint32_t)old[off + 6] << 8 | old[off + 7];
		if (l > *n - off - 8)
			break;
		if (ty != t) {
			memcpy(nb + w, old + off, 8 + l);
			w += 8 + l;
		}
		off += 8 + l;
	}
	uint32_t ty = (uint32_t)t, l = (uint32_t)vlen;
	nb[w++] = (uint8_t)(ty >> 24);
	nb[w++] = (uint8_t)(ty >> 16);
	nb[w++] = (uint8_t)(ty >> 8);
	nb[w++] = (uint8_t)ty;
	nb[w++] = (uint8_t)(l >> 24);
	nb[w++] = (uint8_t)(l >> 16);
	nb[w++] = (uint8_t)(l >> 8);
	nb[w++] = (uint8_t)l;
	if (vlen)
		memcpy(nb + w, v, vlen);
	w += vlen;
	free(*ex);
	*ex = nb;
	*n = w;
	return KH_OK;
}

/* ---- values ---- */

void p11_av_free(struct p11_av *a)
{
	if (a->heap)
		free(a->p);
	memset(a, 0, sizeof(*a));
}

static CK_RV av_copy(struct p11_av *a, const void *v, size_t n)
{
	if (n <= sizeof(a->small)) {
		if (n)
			memcpy(a->small, v, n);
		a->p = a->small;
	} else {
		a->p = malloc(n);
		if (!a->p)
			return CKR_HOST_MEMORY;
		memcpy(a->p, v, n);
		a->heap = true;
	}
	a->n = n;
	return CKR_OK;
}

static CK_RV av_bool(struct p11_av *a, bool v)
{
	CK_BBOOL b = v ? CK_TRUE : CK_FALSE;
	return av_copy(a, &b, sizeof(b));
}

static CK_RV av_ulong(struct p11_av *a, CK_ULONG v)
{
	return av_copy(a, &v, sizeof(v));
}

static CK_RV av_take(struct p11_av *a, uint8_t *p, size_t n)
{
	a->p = p;
	a->n = n;
	a->heap = true;
	return CKR_OK;
}

static CK_RV av_bn(struct p11_av *a, const EVP_PKEY *pk, const char *name)
{
	BIGNUM *bn = NULL;
	if (!EVP_PKEY_get_bn_param(pk, name, &bn))
		return CKR_GENERAL_ERROR;
	int n = BN_num_bytes(bn);
	uint8_t *p = malloc(n ? (size_t)n : 1);
	if (!p) {
		BN_free(bn);
		return CKR_HOST_MEMORY;
	}
	BN_bn2bin(bn, p);
	BN_free(bn);
	return av_take(a, p, (size_t)n);
}

/* DER OCTET STRING around the public point (CKA_EC_POINT), taken from the
 * SubjectPublicKeyInfo's BIT STRING as it is: the encoded point of an EC key,
 * the 32 raw bytes of Ed25519 and X25519. Not through an EVP_PKEY: in an
 * application that made an ENGINE the default for EC (openssl -engine,
 * ENGINE_set_default), d2i_PUBKEY gives a legacy key whose
 * OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY cannot be read. */
static CK_RV av_ec_point(struct p11_av *a, const uint8_t *spki, size_t spki_len)
{
	const uint8_t *q = spki;
	X509_PUBKEY *xpk = spki ? d2i_X509_PUBKEY(NULL, &q, (long)spki_len) : NULL;
	const unsigned char *pt = NULL;
	int n = 0;
	if (!xpk)
		return CKR_DEVICE_ERROR;
	if (!X509_PUBKEY_get0_param(NULL, &pt, &n, NULL, xpk) || !pt || n <= 0 || n > 255) {
		X509_PUBKEY_free(xpk);
		return CKR_GENERAL_ERROR;
	}
	uint8_t *p = malloc((size_t)n + 3);
	if (!p) {
		X509_PUBKEY_free(xpk);
		return CKR_HOST_MEMORY;
	}
	size_t h = 0;
	p[h++] = 0x04;
	if (n < 128) {
		p[h++] = (uint8_t)n;
	} else {
		p[h++] = 0x81;
		p[h++] = (uint8_t)n;
	}
	memcpy(p + h, pt, (size_t)n);
	X509_PUBKEY_free(xpk);
	return av_take(a, p, h + (size_t)n);
}

static CK_RV av_ec_params(struct p11_av *a, const EVP_PKEY *pk, CK_KEY_TYPE kt)
{
	char name[64] = "";
	if (kt == CKK_EC_EDWARDS)
		return av_copy(a, curves[3].der, curves[3].der_len);
	if (kt == CKK_EC_MONTGOMERY)
		return av_copy(a, curves[4].der, curves[4].der_len);
	if (!EVP_PKEY_get_utf8_string_param(pk, OSSL_PKEY_PARAM_GROUP_NAME, name, sizeof(name), NULL))
		return CKR_GENERAL_ERROR;
	for (size_t i = 0; i < 3; i++)
		if (strcmp(name, curves[i].ossl) == 0)
			return av_copy(a, curves[i].der, curves[i].der_len);
	return CKR_GENERAL_ERROR;
}

static CK_RV av_der(struct p11_av *a, int len, uint8_t *buf)
{
	if (len < 0) {
		OPENSSL_free(buf);
		return CKR_GENERAL_ERROR;
	}
	CK_RV rv = av_copy(a, buf, (size_t)len);
	OPENSSL_free(buf);
	return rv;
}

/* Certificate fields a template did not set are read from the DER. */
static CK_RV cert_field(struct p11_av *a, const struct p11_obj *o, CK_ATTRIBUTE_TYPE t)
{
	const uint8_t *p = o->value;
	X509 *x = o->value ? d2i_X509(NULL, &p, (long)o->value_len) : NULL;
	uint8_t *der = NULL;
	int len = -1;
	if (!x)
		return av_copy(a, "", 0);
	switch (t) {
	case CKA_SUBJECT:
		len = i2d_X509_NAME(X509_get_subject_name(x), &der);
		break;
	case CKA_ISSUER:
		len = i2d_X509_NAME(X509_get_issuer_name(x), &der);
		break;
	case CKA_SERIAL_NUMBER:
		len = i2d_ASN1_INTEGER(X509_get0_serialNumber(x), &der);
		break;
	default:
		break;
	}
	X509_free(x);
	return av_der(a, len, der);
}

static bool has_bit(unsigned v, unsigned bit)
{
	return (v & bit) != 0;
}

CK_RV p11_attr_value(const struct p11_obj *o, CK_ATTRIBUTE_TYPE t, struct p11_av *a)
{
	const uint8_t *ev;
	size_t evlen;
	bool key = o->cls == CKO_SECRET_KEY || o->cls == CKO_PRIVATE_KEY || o->cls == CKO_PUBLIC_KEY;
	bool secret = o->cls == CKO_SECRET_KEY, priv = o->cls == CKO_PRIVATE_KEY, pub = o->cls == CKO_PUBLIC_KEY;
	bool cert = o->cls == CKO_CERTIFICATE, data = o->cls == CKO_DATA;
	bool modifiable = has_bit(o->flags, P11_F_MODIFIABLE) || cert || data;

	memset(a, 0, sizeof(*a));
	/* descriptive values given by the application win */
	if (t != CKA_KEY_TYPE && t != CKA_PRIVATE && p11_attr_descriptive(t) &&
	    p11_extra_find(o->extra, o->extra_len, t, &ev, &evlen))
		return av_copy(a, ev, evlen);

	switch (t) {
	case CKA_CLASS:
		return av_ulong(a, o->cls);
	case CKA_TOKEN:
		return av_bool(a, o->token);
	case CKA_PRIVATE:
		return av_bool(a, o->priv);
	case CKA_MODIFIABLE:
		return av_bool(a, modifiable);
	case CKA_COPYABLE:
	case CKA_DESTROYABLE:
		return av_bool(a, true);
	case CKA_LABEL:
		return av_copy(a, o->label, o->label_len);
	case CKA_UNIQUE_ID: {
		char hex[2 * P11_KEY_ID_LEN + 1];
		static const char digits[] = "0123456789abcdef";
		for (size_t i = 0; i < P11_KEY_ID_LEN; i++) {
			hex[2 * i] = digits[o->key_id[i] >> 4];
			hex[2 * i + 1] = digits[o->key_id[i] & 15];
		}
		return av_copy(a, hex, 2 * P11_KEY_ID_LEN);
	}
	default:
		break;
	}

	if (data) {
		switch (t) {
		case CKA_APPLICATION:
		case CKA_OBJECT_ID:
			return av_copy(a, "", 0);
		case CKA_VALUE:
			return av_copy(a, o->value, o->value_len);
		default:
			return CKR_ATTRIBUTE_TYPE_INVALID;
		}
	}
	if (cert) {
		switch (t) {
		case CKA_CERTIFICATE_TYPE:
			return av_ulong(a, CKC_X_509);
		case CKA_TRUSTED:
			return av_bool(a, false);
		case CKA_CERTIFICATE_CATEGORY:
			return av_ulong(a, 0);
		case CKA_ID:
			return av_copy(a, o->ckaid, o->ckaid_len);
		case CKA_VALUE:
			return av_copy(a, o->value, o->value_len);
		case CKA_SUBJECT:
		case CKA_ISSUER:
		case CKA_SERIAL_NUMBER:
			return cert_field(a, o, t);
		case CKA_START_DATE:
		case CKA_END_DATE:
		case CKA_URL:
		case CKA_HASH_OF_SUBJECT_PUBLIC_KEY:
		case CKA_HASH_OF_ISSUER_PUBLIC_KEY:
			return av_copy(a, "", 0);
		case CKA_JAVA_MIDP_SECURITY_DOMAIN:
			return av_ulong(a, 0);
		case CKA_PUBLIC_KEY_INFO:
			return av_copy(a, o->pub, o->pub_len);
		case CKA_CHECK_VALUE: {
			uint8_t md[EVP_MAX_MD_SIZE];
			unsigned mdl = 0;
			if (!EVP_Digest(o->value, o->value_len, md, &mdl, EVP_sha1(), NULL))
				return CKR_GENERAL_ERROR;
			return av_copy(a, md, 3);
		}
		default:
			return CKR_ATTRIBUTE_TYPE_INVALID;
		}
	}
	if (!key)
		return CKR_ATTRIBUTE_TYPE_INVALID;

	/* common key attributes */
	switch (t) {
	case CKA_KEY_TYPE:
		if (p11_extra_find(o->extra, o->extra_len, CKA_KEY_TYPE, &ev, &evlen) && evlen == sizeof(CK_ULONG))
			return av_copy(a, ev, evlen);
		return av_ulong(a, o->ktype);
	case CKA_ID:
		return av_copy(a, o->ckaid, o->ckaid_len);
	case CKA_START_DATE:
	case CKA_END_DATE:
		return av_copy(a, "", 0);
	case CKA_DERIVE:
		return av_bool(a, has_bit(o->usage, P11_U_DERIVE));
	case CKA_LOCAL:
		return av_bool(a, has_bit(o->flags, P11_F_LOCAL));
	case CKA_KEY_GEN_MECHANISM:
		if (!has_bit(o->flags, P11_F_LOCAL))
			return av_ulong(a, CK_UNAVAILABLE_INFORMATION);
		switch (o->ktype) {
		case CKK_AES:
			return av_ulong(a, CKM_AES_KEY_GEN);
		case CKK_RSA:
			return av_ulong(a, CKM_RSA_PKCS_KEY_PAIR_GEN);
		case CKK_EC:
			return av_ulong(a, CKM_EC_KEY_PAIR_GEN);
		case CKK_EC_EDWARDS:
			return av_ulong(a, CKM_EC_EDWARDS_KEY_PAIR_GEN);
		case CKK_EC_MONTGOMERY:
			return av_ulong(a, CKM_EC_MONTGOMERY_KEY_PAIR_GEN);
		default:
			return av_ulong(a, CKM_GENERIC_SECRET_KEY_GEN);
		}
	case CKA_ALLOWED_MECHANISMS:
		return av_copy(a, "", 0);
	default:
		break;
	}

	if (secret || priv) {
		switch (t) {
		case CKA_SENSITIVE:
			return av_bool(a, has_bit(o->flags, P11_F_SENSITIVE));
		case CKA_EXTRACTABLE:
			return av_bool(a, has_bit(o->flags, P11_F_EXPORTABLE));
		case CKA_ALWAYS_SENSITIVE:
			return av_bool(a, has_bit(o->flags, P11_F_ALWAYS_SENSITIVE));
		case CKA_NEVER_EXTRACTABLE:
			return av_bool(a, has_bit(o->flags, P11_F_NEVER_EXTRACTABLE));
		case CKA_WRAP_WITH_TRUSTED:
			return av_bool(a, false);
		case CKA_DECRYPT:
			return av_bool(a, has_bit(o->usage, P11_U_DECRYPT));
		case CKA_SIGN:
			return av_bool(a, has_bit(o->usage, P11_U_SIGN));
		case CKA_UNWRAP:
			return av_bool(a, has_bit(o->usage, P11_U_UNWRAP));
		case CKA_UNWRAP_TEMPLATE:
			return CKR_ATTRIBUTE_TYPE_INVALID;
		default:
			break;
		}
	}
	if (secret || pub) {
		switch (t) {
		case CKA_ENCRYPT:
			return av_bool(a, has_bit(o->usage, P11_U_ENCRYPT));
		case CKA_VERIFY:
			return av_bool(a, has_bit(o->usage, P11_U_VERIFY));
		case CKA_WRAP:
			return av_bool(a, has_bit(o->usage, P11_U_WRAP));
		case CKA_TRUSTED:
			return av_bool(a, false);
		default:
			break;
		}
	}
	if (secret) {
		switch (t) {
		case CKA_VALUE:
			/* key material never leaves the HSM in clear */
			return CKR_ATTRIBUTE_SENSITIVE;
		case CKA_VALUE_LEN:
			return av_ulong(a, o->bits / 8);
		case CKA_CHECK_VALUE:
			if (!o->has_kcv)
				return av_copy(a, "", 0);
			return av_copy(a, o->kcv, 3);
		case CKA_SIGN_RECOVER:
		case CKA_VERIFY_RECOVER:
			return CKR_ATTRIBUTE_TYPE_INVALID;
		default:
			return CKR_ATTRIBUTE_TYPE_INVALID;
		}
	}

	/* asymmetric keys: public parts from the SubjectPublicKeyInfo */
	switch (t) {
	case CKA_SUBJECT:
		return av_copy(a, "", 0);
	case CKA_SIGN_RECOVER:
		if (!priv)
			return CKR_ATTRIBUTE_TYPE_INVALID;
		return av_bool(a, o->ktype == CKK_RSA && has_bit(o->usage, P11_U_SIGN));
	case CKA_VERIFY_RECOVER:
		if (!pub)
			return CKR_ATTRIBUTE_TYPE_INVALID;
		return av_bool(a, o->ktype == CKK_RSA && has_bit(o->usage, P11_U_VERIFY));
	case CKA_ALWAYS_AUTHENTICATE:
		if (!priv)
			return CKR_ATTRIBUTE_TYPE_INVALID;
		return av_bool(a, false);
	case CKA_PUBLIC_KEY_INFO:
		return av_copy(a, o->pub, o->pub_len);
	case CKA_PRIVATE_EXPONENT:
	case CKA_PRIME_1:
	case CKA_PRIME_2:
	case CKA_EXPONENT_1:
	case CKA_EXPONENT_2:
	case CKA_COEFFICIENT:
		if (priv && o->ktype == CKK_RSA)
			return CKR_ATTRIBUTE_SENSITIVE;
		return CKR_ATTRIBUTE_TYPE_INVALID;
	case CKA_VALUE:
		if (priv && o->ktype != CKK_RSA)
			return CKR_ATTRIBUTE_SENSITIVE;
		return CKR_ATTRIBUTE_TYPE_INVALID;
	default:
		break;
	}
	bool rsa = o->ktype == CKK_RSA;
	bool ec = o->ktype == CKK_EC || o->ktype == CKK_EC_EDWARDS || o->ktype == CKK_EC_MONTGOMERY;
	bool wants_pub = (rsa && (t == CKA_MODULUS || t == CKA_PUBLIC_EXPONENT || t == CKA_MODULUS_BITS)) ||
			 (ec && (t == CKA_EC_PARAMS || (t == CKA_EC_POINT && pub)));
	if (!wants_pub)
		return CKR_ATTRIBUTE_TYPE_INVALID;
	if (t == CKA_MODULUS_BITS)
		return av_ulong(a, o->bits);
	if (t == CKA_EC_POINT)
		return av_ec_point(a, o->pub, o->pub_len);
	const uint8_t *p = o->pub;
	EVP_PKEY *pk = o->pub ? d2i_PUBKEY(NULL, &p, (long)o->pub_len) : NULL;
	if (!pk)
		return CKR_DEVICE_ERROR;
	CK_RV rv;
	if (t == CKA_MODULUS)
		rv = av_bn(a, pk, OSSL_PKEY_PARAM_RSA_N);
	else if (t == CKA_PUBLIC_EXPONENT)
		rv = av_bn(a, pk, OSSL_PKEY_PARAM_RSA_E);
	else
		rv = av_ec_params(a, pk, o->ktype);
	EVP_PKEY_free(pk);
	return rv;
}

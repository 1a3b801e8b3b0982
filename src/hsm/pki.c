/*
 * X.509 for the HSM's TLS ports on OpenSSL 3 EVP/X509 objects only: the CA,
 * server and client certificates, CSRs, CRLs and a strict PEM reader for
 * documents that come from the network. No storage, no logging, and never a
 * deprecated RSA_/EC_KEY call.
 */
#include "hsm/pki.h"
#include "common/kh_mem.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#define SKEW_SECONDS 300 /* notBefore is backdated so a peer with a slow clock accepts */

static void set_why(const char **why, const char *text)
{
	if (why)
		*why = text;
}

bool kh_pki_text_ok(const uint8_t *s, size_t n, size_t max)
{
	if (n == 0 || n > max)
		return false;
	for (size_t i = 0; i < n; i++)
		if (s[i] < 0x20 || s[i] > 0x7e)
			return false;
	return true;
}

/* ---- keys ---- */

static const char *ec_group(int bits)
{
	return bits == 256 ? "P-256" : bits == 384 ? "P-384" : NULL;
}

int kh_pki_keygen(const struct kh_pki_keyspec *spec, EVP_PKEY **out)
{
	EVP_PKEY *k = NULL;

	if (spec->alg == KH_PKI_RSA) {
		if (spec->bits != 2048 && spec->bits != 3072 && spec->bits != 4096)
			return KH_ERR_UNSUPPORTED;
		k = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)spec->bits);
	} else if (spec->alg == KH_PKI_EC) {
		const char *g = ec_group(spec->bits);
		if (g == NULL)
			return KH_ERR_UNSUPPORTED;
		k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", g);
	} else {
		return KH_ERR_UNSUPPORTED;
	}
	if (k == NULL)
		return KH_ERR_CRYPTO;
	*out = k;
	return KH_OK;
}

/* The named group of an EC key as a NID (NID_undef if none). */
static int ec_nid(const EVP_PKEY *key)
{
	char name[64];
	size_t len = 0;
	if (EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, name, sizeof(name),
					   &len) != 1)
		return NID_undef;
	int nid = OBJ_txt2nid(name);
	if (nid == NID_undef)
		nid = EC_curve_nist2nid(name);
	return nid;
}

int kh_pki_keyspec_of(const EVP_PKEY *key, struct kh_pki_keyspec *out)
{
	int bits = EVP_PKEY_get_bits(key);

	if (EVP_PKEY_is_a(key, "RSA")) {
		if (bits != 2048 && bits != 3072 && bits != 4096)
			return KH_ERR_UNSUPPORTED;
		out->alg = KH_PKI_RSA;
		out->bits = bits;
		return KH_OK;
	}
	if (EVP_PKEY_is_a(key, "EC")) {
		int nid = ec_nid(key);
		if (nid == NID_X9_62_prime256v1)
			out->bits = 256;
		else if (nid == NID_secp384r1)
			out->bits = 384;
		else
			return KH_ERR_UNSUPPORTED;
		out->alg = KH_PKI_EC;
		return KH_OK;
	}
	return KH_ERR_UNSUPPORTED;
}

int kh_pki_key_der(EVP_PKEY *key, uint8_t **der, size_t *len)
{
	int n = i2d_PrivateKey(key, NULL);
	if (n <= 0)
		return KH_ERR_CRYPTO;
	uint8_t *buf = kh_secure_alloc((size_t)n);
	if (buf == NULL)
		return KH_ERR_NOMEM;
	uint8_t *p = buf;
	if (i2d_PrivateKey(key, &p) != n) {
		kh_secure_free(buf, (size_t)n);
		return KH_ERR_CRYPTO;
	}
	*der = buf;
	*len = (size_t)n;
	return KH_OK;
}

int kh_pki_key_from_der(const uint8_t *der, size_t len, EVP_PKEY **out)
{
	const uint8_t *p = der;
	struct kh_pki_keyspec spec;
	EVP_PKEY *k;

	if (len == 0 || len > 16384)
		return KH_ERR_CRYPTO;
	k = d2i_AutoPrivateKey(NULL, &p, (long)len);
	if (k == NULL || p != der + len || kh_pki_keyspec_of(k, &spec) != KH_OK) {
		EVP_PKEY_free(k);
		return KH_ERR_CRYPTO;
	}
	*out = k;
	return KH_OK;
}

/* SHA-384 for P-384 keys (and larger), SHA-256 for everything else. */
static const EVP_MD *sig_md(const EVP_PKEY *signer)
{
	if (EVP_PKEY_is_a(signer, "EC") && EVP_PKEY_get_bits(signer) >= 384)
		return EVP_sha384();
	return EVP_sha256();
}

/* Client keys we sign: RSA 2048..8192, EC on P-256, P-384 or P-521. */
static bool client_key_ok(const EVP_PKEY *key)
{
	if (EVP_PKEY_is_a(key, "RSA")) {
		int bits = EVP_PKEY_get_bits(key);
		return bits >= 2048 && bits <= 8192;
	}
	if (EVP_PKEY_is_a(key, "EC")) {
		int nid = ec_nid(key);
		return nid == NID_X9_62_prime256v1 || nid == NID_secp384r1 || nid == NID_secp521r1;
	}
	return false;
}

/* ---- names, serials, extensions ---- */

static int cn_name(const char *cn, X509_NAME **out)
{
	size_t n = strlen(cn);
	if (!kh_pki_text_ok((const uint8_t *)cn, n, KH_PKI_CN_MAX))
		return KH_ERR_BAD_FIELD;
	X509_NAME *name = X509_NAME_new();
	if (name == NULL)
		return KH_ERR_NOMEM;
	if (X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8,
				       (const unsigned char *)cn, (int)n, -1, 0) != 1) {
		X509_NAME_free(name);
		return KH_ERR_CRYPTO;
	}
	*out = name;
	return KH_OK;
}

/* A random positive serial of 128 bits. */
static int set_random_serial(X509 *x)
{
	uint8_t rnd[16];
	BIGNUM *bn = NULL;
	ASN1_INTEGER *ai = NULL;
	int r = KH_ERR_CRYPTO;

	if (RAND_bytes(rnd, sizeof(rnd)) != 1)
		goto out;
	if ((bn = BN_bin2bn(rnd, sizeof(rnd), NULL)) == NULL || BN_is_zero(bn))
		goto out;
	if ((ai = BN_to_ASN1_INTEGER(bn, NULL)) == NULL)
		goto out;
	if (X509_set_serialNumber(x, ai) != 1)
		goto out;
	r = KH_OK;
out:
	ASN1_INTEGER_free(ai);
	BN_free(bn);
	return r;
}

static int add_ext(X509 *x, X509V3_CTX *ctx, int nid, const char *value)
{
	X509_EXTENSION *ex = X509V3_EXT_nconf_nid(NULL, ctx, nid, value);
	if (ex == NULL)
		return KH_ERR_CRYPTO;
	int ok = X509_add_ext(x, ex, -1);
	X509_EXTENSION_free(ex);
	return ok == 1 ? KH_OK : KH_ERR_CRYPTO;
}

static bool dns_char(char ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
	       ch == '-';
}

/* A DNS name: labels of letters, digits and '-', not starting or ending
 * with '-', 1..63 each; the first label may be a lone '*'. */
static bool dns_ok(const char *s, size_t n)
{
	size_t label = 0;
	if (n == 0 || n > 253)
		return false;
	for (size_t i = 0; i <= n; i++) {
		if (i == n || s[i] == '.') {
			if (label == 0 || label > 63 || s[i - 1] == '-' || s[i - label] == '-')
				return false;
			label = 0;
			continue;
		}
		if (s[i] == '*') {
			if (i != 0 || n < 3 || s[1] != '.')
				return false;
			label++;
			continue;
		}
		if (!dns_char(s[i]))
			return false;
		label++;
	}
	return true;
}

static bool has_prefix(const char *s, size_t n, const char *lit)
{
	size_t i = 0;
	for (; lit[i]; i++)
		if (i >= n || s[i] != lit[i])
			return false;
	return true;
}

/* Parse "IP:1.2.3.4,DNS:host" into GeneralNames. */
static int san_parse(const char *san, GENERAL_NAMES **out, const char **why)
{
	GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
	GENERAL_NAME *gn = NULL;
	size_t n = strlen(san), start = 0;
	int r = KH_ERR_BAD_FIELD;

	if (gens == NULL)
		return KH_ERR_NOMEM;
	if (!kh_pki_text_ok((const uint8_t *)san, n, KH_PKI_SAN_MAX)) {
		set_why(why, "subject alternative names: empty, too long or not printable");
		goto out;
	}
	while (start <= n) {
		size_t end = start;
		char item[KH_PKI_SAN_MAX + 1];
		while (end < n && san[end] != ',')
			end++;
		size_t len = end - start;
		if (sk_GENERAL_NAME_num(gens) >= KH_PKI_SAN_ENTRIES) {
			set_why(why, "subject alternative names: too many entries");
			goto out;
		}
		for (size_t i = 0; i < len; i++)
			item[i] = san[start + i];
		item[len] = '\0';
		if ((gn = GENERAL_NAME_new()) == NULL) {
			r = KH_ERR_NOMEM;
			goto out;
		}
		if (has_prefix(item, len, "IP:")) {
			ASN1_OCTET_STRING *ip = a2i_IPADDRESS(item + 3);
			if (ip == NULL) {
				set_why(why, "subject alternative names: bad IP address");
				goto out;
			}
			GENERAL_NAME_set0_value(gn, GEN_IPADD, ip);
		} else if (has_prefix(item, len, "DNS:")) {
			ASN1_IA5STRING *ia5;
			if (!dns_ok(item + 4, len - 4)) {
				set_why(why, "subject alternative names: bad DNS name");
				goto out;
			}
			if ((ia5 = ASN1_IA5STRING_new()) == NULL ||
			    ASN1_STRING_set(ia5, item + 4, (int)(len - 4)) != 1) {
				ASN1_IA5STRING_free(ia5);
				r = KH_ERR_NOMEM;
				goto out;
			}
			GENERAL_NAME_set0_value(gn, GEN_DNS, ia5);
		} else {
			set_why(why, "subject alternative names: entries must be IP:<address> or DNS:<name>");
			goto out;
		}
		if (sk_GENERAL_NAME_push(gens, gn) <= 0) {
			r = KH_ERR_NOMEM;
			goto out;
		}
		gn = NULL;
		start = end + 1;
	}
	*out = gens;
	gens = NULL;
	r = KH_OK;
out:
	GENERAL_NAME_free(gn);
	GENERAL_NAMES_free(gens);
	return r;
}

/* Common body of every certificate we issue. */
static int cert_base(X509 *issuer_cert, EVP_PKEY *pub, const X509_NAME *subject, int days,
		     time_t now, X509 **out)
{
	X509 *x = X509_new();
	int r = KH_ERR_CRYPTO;

	if (x == NULL)
		return KH_ERR_NOMEM;
	if (days < 1 || days > 36500) {
		r = KH_ERR_BAD_FIELD;
		goto out;
	}
	if (X509_set_version(x, X509_VERSION_3) != 1 || (r = set_random_serial(x)) != KH_OK)
		goto out;
	r = KH_ERR_CRYPTO;
	if (X509_set_subject_name(x, subject) != 1 ||
	    X509_set_issuer_name(x, issuer_cert ? X509_get_subject_name(issuer_cert) : subject) != 1 ||
	    X509_time_adj_ex(X509_getm_notBefore(x), 0, -SKEW_SECONDS, &now) == NULL ||
	    X509_time_adj_ex(X509_getm_notAfter(x), days, 0, &now) == NULL ||
	    X509_set_pubkey(x, pub) != 1)
		goto out;
	*out = x;
	x = NULL;
	r = KH_OK;
out:
	X509_free(x);
	return r;
}

int kh_pki_ca_new(EVP_PKEY *key, const char *cn, int days, time_t now, X509 **out)
{
	X509_NAME *name = NULL;
	X509 *x = NULL;
	X509V3_CTX v3;
	int r;

	if ((r = cn_name(cn, &name)) != KH_OK)
		goto out;
	if ((r = cert_base(NULL, key, name, days, now, &x)) != KH_OK)
		goto out;
	X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
	if ((r = add_ext(x, &v3, NID_basic_constraints, "critical,CA:TRUE")) != KH_OK ||
	    (r = add_ext(x, &v3, NID_key_usage, "critical,keyCertSign,cRLSign")) != KH_OK ||
	    (r = add_ext(x, &v3, NID_subject_key_identifier, "hash")) != KH_OK ||
	    (r = add_ext(x, &v3, NID_authority_key_identifier, "keyid:always")) != KH_OK)
		goto out;
	if (X509_sign(x, key, sig_md(key)) <= 0) {
		r = KH_ERR_CRYPTO;
		goto out;
	}
	*out = x;
	x = NULL;
	r = KH_OK;
out:
	X509_free(x);
	X509_NAME_free(name);
	return r;
}

static int ca_usable(X509 *ca, EVP_PKEY *cakey, const char **why)
{
	if (X509_check_ca(ca) < 1 || X509_check_private_key(ca, cakey) != 1) {
		set_why(why, "CA certificate and key do not belong together");
		return KH_ERR_TLS;
	}
	return KH_OK;
}

int kh_pki_server_cert(X509 *ca, EVP_PKEY *cakey, EVP_PKEY *pub, const char *cn,
		       const char *san, int days, time_t now, X509 **out, const char **why)
{
	X509_NAME *name = NULL;
	GENERAL_NAMES *gens = NULL;
	X509 *x = NULL;
	X509V3_CTX v3;
	int r;

	if ((r = ca_usable(ca, cakey, why)) != KH_OK)
		goto out;
	if ((r = cn_name(cn, &name)) != KH_OK) {
		set_why(why, "common name: 1-64 printable characters");
		goto out;
	}
	if ((r = san_parse(san ? san : KH_PKI_DEFAULT_SAN, &gens, why)) != KH_OK)
		goto out;
	if ((r = cert_base(ca, pub, name, days, now, &x)) != KH_OK)
		goto out;
	X509V3_set_ctx(&v3, ca, x, NULL, NULL, 0);
	if ((r = add_ext(x, &v3, NID_basic_constraints, "critical,CA:FALSE")) != KH_OK ||
	    (r = add_ext(x, &v3, NID_key_usage,
			 EVP_PKEY_is_a(pub, "RSA") ? "critical,digitalSignature,keyEncipherment"
						   : "critical,digitalSignature")) != KH_OK ||
	    (r = add_ext(x, &v3, NID_ext_key_usage, "serverAuth")) != KH_OK ||
	    (r = add_ext(x, &v3, NID_subject_key_identifier, "hash")) != KH_OK ||
	    (r = add_ext(x, &v3, NID_authority_key_identifier, "keyid:always")) != KH_OK)
		goto out;
	r = KH_ERR_CRYPTO;
	if (X509_add1_ext_i2d(x, NID_subject_alt_name, gens, 0, X509V3_ADD_DEFAULT) != 1)
		goto out;
	if (X509_sign(x, cakey, sig_md(cakey)) <= 0)
		goto out;
	*out = x;
	x = NULL;
	r = KH_OK;
out:
	X509_free(x);
	GENERAL_NAMES_free(gens);
	X509_NAME_free(name);
	return r;
}

int kh_pki_csr_new(EVP_PKEY *key, const char *cn, const char *san, X509_REQ **out,
		   const char **why)
{
	X509_NAME *name = NULL;
	GENERAL_NAMES *gens = NULL;
	STACK_OF(X509_EXTENSION) *exts = NULL;
	X509_EXTENSION *ex = NULL;
	X509_REQ *req = X509_REQ_new();
	int r;

	if (req == NULL)
		return KH_ERR_NOMEM;
	if ((r = cn_name(cn, &name)) != KH_OK) {
		set_why(why, "common name: 1-64 printable characters");
		goto out;
	}
	if ((r = san_parse(san ? san : KH_PKI_DEFAULT_SAN, &gens, why)) != KH_OK)
		goto out;
	r = KH_ERR_CRYPTO;
	if (X509_REQ_set_version(req, X509_REQ_VERSION_1) != 1 ||
	    X509_REQ_set_subject_name(req, name) != 1 || X509_REQ_set_pubkey(req, key) != 1)
		goto out;
	if ((exts = sk_X509_EXTENSION_new_null()) == NULL ||
	    (ex = X509V3_EXT_i2d(NID_subject_alt_name, 0, gens)) == NULL ||
	    sk_X509_EXTENSION_push(exts, ex) <= 0)
		goto out;
	ex = NULL;
	if (X509_REQ_add_extensions(req, exts) != 1)
		goto out;
	if (X509_REQ_sign(req, key, sig_md(key)) <= 0)
		goto out;
	*out = req;
	req = NULL;
	r = KH_OK;
out:
	X509_EXTENSION_free(ex);
	sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
	GENERAL_NAMES_free(gens);
	X509_NAME_free(name);
	X509_REQ_free(req);
	return r;
}

int kh_pki_client_cert(X509 *ca, EVP_PKEY *cakey, X509_REQ *req, int days, time_t now,
		       X509 **out, const char **why)
{
	EVP_PKEY *pub = X509_REQ_get0_pubkey(req);
	const X509_NAME *subject = X509_REQ_get_subject_name(req);
	X509 *x = NULL;
	X509V3_CTX v3;
	int r;

	if ((r = ca_usable(ca, cakey, why)) != KH_OK)
		goto out;
	r = KH_ERR_TLS;
	if (pub == NULL || X509_REQ_verify(req, pub) != 1) {
		set_why(why, "CSR signature does not verify");
		goto out;
	}
	if (!client_key_ok(pub)) {
		set_why(why, "CSR key must be RSA 2048-8192 or EC P-256/P-384/P-521");
		goto out;
	}
	if (subject == NULL || X509_NAME_entry_count(subject) == 0) {
		set_why(why, "CSR has an empty subject");
		goto out;
	}
	if ((r = cert_base(ca, pub, subject, days, now, &x)) != KH_OK)
		goto out;
	X509V3_set_ctx(&v3, ca, x, NULL, NULL, 0);
	if ((r = add_ext(x, &v3, NID_basic_constraints, "critical,CA:FALSE")) != KH_OK ||
	    (r = add_ext(x, &v3, NID_key_usage, "critical,digitalSignature")) != KH_OK ||
	    (r = add_ext(x, &v3, NID_ext_key_usage, "clientAuth")) != KH_OK ||
	    (r = add_ext(x, &v3, NID_subject_key_identifier, "hash")) != KH_OK ||
	    (r = add_ext(x, &v3, NID_authority_key_identifier, "keyid:always")) != KH_OK)
		goto out;
	if (X509_sign(x, cakey, sig_md(cakey)) <= 0) {
		r = KH_ERR_CRYPTO;
		goto out;
	}
	*out = x;
	x = NULL;
	r = KH_OK;
out:
	X509_free(x);
	return r;
}

/* ---- serials and CRLs ---- */

static int hexval(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

int kh_pki_serial_norm(const char *hex, size_t n, char out[KH_PKI_SERIAL_HEX])
{
	static const char digits[] = "0123456789ABCDEF";
	size_t i = 0, o = 0;

	if (n == 0 || n > 64)
		return KH_ERR_BAD_FIELD;
	for (size_t j = 0; j < n; j++)
		if (hexval(hex[j]) < 0)
			return KH_ERR_BAD_FIELD;
	while (i < n && hex[i] == '0')
		i++;
	if (i == n || n - i > KH_PKI_SERIAL_HEX - 1)
		return KH_ERR_BAD_FIELD; /* zero, or more than 20 octets */
	for (; i < n; i++)
		out[o++] = digits[hexval(hex[i])];
	out[o] = '\0';
	return KH_OK;
}

static int serial_of_ai(const ASN1_INTEGER *ai, char out[KH_PKI_SERIAL_HEX])
{
	BIGNUM *bn = ASN1_INTEGER_to_BN(ai, NULL);
	char *hex = NULL;
	int r = KH_ERR_CRYPTO;

	if (bn == NULL || BN_is_negative(bn) || BN_is_zero(bn))
		goto out;
	if ((hex = BN_bn2hex(bn)) == NULL)
		goto out;
	r = kh_pki_serial_norm(hex, strlen(hex), out);
	if (r != KH_OK)
		r = KH_ERR_CRYPTO;
out:
	OPENSSL_free(hex);
	BN_free(bn);
	return r;
}

int kh_pki_serial_hex(const X509 *x, char out[KH_PKI_SERIAL_HEX])
{
	return serial_of_ai(X509_get0_serialNumber(x), out);
}

int kh_pki_fingerprint(const X509 *x, uint8_t out[KH_PKI_FP_LEN])
{
	unsigned int n = 0;
	if (X509_digest(x, EVP_sha256(), out, &n) != 1 || n != KH_PKI_FP_LEN)
		return KH_ERR_CRYPTO;
	return KH_OK;
}

static int add_revoked(X509_CRL *crl, const struct kh_pki_revoked *rv)
{
	X509_REVOKED *re = X509_REVOKED_new();
	BIGNUM *bn = NULL;
	ASN1_INTEGER *ai = NULL;
	ASN1_TIME *t = NULL;
	int r = KH_ERR_CRYPTO;

	if (re == NULL)
		return KH_ERR_NOMEM;
	if (BN_hex2bn(&bn, rv->serial) <= 0 || (ai = BN_to_ASN1_INTEGER(bn, NULL)) == NULL ||
	    (t = ASN1_TIME_set(NULL, (time_t)rv->when)) == NULL ||
	    X509_REVOKED_set_serialNumber(re, ai) != 1 || X509_REVOKED_set_revocationDate(re, t) != 1)
		goto out;
	if (X509_CRL_add0_revoked(crl, re) != 1)
		goto out;
	re = NULL;
	r = KH_OK;
out:
	X509_REVOKED_free(re);
	ASN1_TIME_free(t);
	ASN1_INTEGER_free(ai);
	BN_free(bn);
	return r;
}

int kh_pki_crl_new(X509 *ca, EVP_PKEY *cakey, const struct kh_pki_revoked *list, size_t n,
		   time_t now, X509_CRL **out)
{
	X509_CRL *crl = X509_CRL_new();
	ASN1_TIME *last = NULL, *next = NULL;
	ASN1_INTEGER *num = NULL;
	X509_EXTENSION *aki = NULL;
	X509V3_CTX v3;
	int r = KH_ERR_CRYPTO;

	if (crl == NULL)
		return KH_ERR_NOMEM;
	if ((r = ca_usable(ca, cakey, NULL)) != KH_OK)
		goto out;
	r = KH_ERR_CRYPTO;
	if (X509_CRL_set_version(crl, X509_CRL_VERSION_2) != 1 ||
	    X509_CRL_set_issuer_name(crl, X509_get_subject_name(ca)) != 1)
		goto out;
	if ((last = ASN1_TIME_adj(NULL, now, 0, -SKEW_SECONDS)) == NULL ||
	    (next = ASN1_TIME_adj(NULL, now, KH_PKI_CRL_DAYS, 0)) == NULL ||
	    X509_CRL_set1_lastUpdate(crl, last) != 1 || X509_CRL_set1_nextUpdate(crl, next) != 1)
		goto out;
	for (size_t i = 0; i < n; i++)
		if ((r = add_revoked(crl, &list[i])) != KH_OK)
			goto out;
	r = KH_ERR_CRYPTO;
	/* the CRL number only has to grow: the issuing time does */
	if ((num = ASN1_INTEGER_new()) == NULL || ASN1_INTEGER_set_int64(num, (int64_t)now) != 1 ||
	    X509_CRL_add1_ext_i2d(crl, NID_crl_number, num, 0, 0) != 1)
		goto out;
	X509V3_set_ctx(&v3, ca, NULL, NULL, crl, 0);
	if ((aki = X509V3_EXT_nconf_nid(NULL, &v3, NID_authority_key_identifier, "keyid:always")) ==
		    NULL ||
	    X509_CRL_add_ext(crl, aki, -1) != 1)
		goto out;
	if (X509_CRL_sort(crl) != 1 || X509_CRL_sign(crl, cakey, sig_md(cakey)) <= 0)
		goto out;
	*out = crl;
	crl = NULL;
	r = KH_OK;
out:
	X509_EXTENSION_free(aki);
	ASN1_INTEGER_free(num);
	ASN1_TIME_free(last);
	ASN1_TIME_free(next);
	X509_CRL_free(crl);
	return r;
}

bool kh_pki_crl_lists(X509_CRL *crl, const char *serial)
{
	STACK_OF(X509_REVOKED) *rev = X509_CRL_get_REVOKED(crl);
	char s[KH_PKI_SERIAL_HEX];
	for (int i = 0; i < sk_X509_REVOKED_num(rev); i++) {
		const X509_REVOKED *re = sk_X509_REVOKED_value(rev, i);
		if (serial_of_ai(X509_REVOKED_get0_serialNumber(re), s) == KH_OK &&
		    strcmp(s, serial) == 0)
			return true;
	}
	return false;
}

/* ---- strict PEM ---- */

typedef int (*pem_each_fn)(void *arg, const uint8_t *der, size_t len, const char **why);

static bool pem_space(uint8_t ch)
{
	return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n';
}

static bool bytes_at(const uint8_t *p, size_t n, size_t at, const char *lit)
{
	size_t i = 0;
	for (; lit[i]; i++)
		if (at + i >= n || p[at + i] != (uint8_t)lit[i])
			return false;
	return true;
}

/* Does a "-----BEGIN <label>-----" line start at p[at]? Returns the
 * length of the marker, or 0. */
static size_t marker_at(const uint8_t *p, size_t n, size_t at, const char *kind,
			const char *label)
{
	size_t k = 0;
	if (!bytes_at(p, n, at, "-----"))
		return 0;
	k += 5;
	if (!bytes_at(p, n, at + k, kind))
		return 0;
	k += strlen(kind);
	if (!bytes_at(p, n, at + k, label))
		return 0;
	k += strlen(label);
	if (!bytes_at(p, n, at + k, "-----"))
		return 0;
	return k + 5;
}

/* Split p[0..n) into PEM blocks of the given label (or alt), decode each
 * and hand its DER to each(). Only whitespace may stand between blocks. */
static int pem_walk(const uint8_t *p, size_t n, size_t maxlen, const char *label,
		    const char *alt, size_t min, size_t max, pem_each_fn each, void *arg,
		    const char **why)
{
	size_t at = 0, count = 0;
	int r;

	if (n > maxlen) {
		set_why(why, "PEM document too large");
		return KH_ERR_TOO_LARGE;
	}
	for (size_t i = 0; i < n; i++) {
		if ((p[i] < 0x20 || p[i] > 0x7e) && !pem_space(p[i])) {
			set_why(why, "PEM document holds non-text bytes");
			return KH_ERR_BAD_FIELD;
		}
	}
	for (;;) {
		const char *lab = label;
		size_t start, len, endlen = 0, e;
		BIO *bio = NULL;
		char *name = NULL, *header = NULL;
		unsigned char *data = NULL;
		long dlen = 0;

		while (at < n && pem_space(p[at]))
			at++;
		if (at == n)
			break;
		start = at;
		len = marker_at(p, n, at, "BEGIN ", label);
		if (len == 0 && alt && (len = marker_at(p, n, at, "BEGIN ", alt)) != 0)
			lab = alt;
		if (len == 0) {
			set_why(why, bytes_at(p, n, at, "-----BEGIN ")
					     ? "PEM block of the wrong type"
					     : "text outside PEM blocks");
			return KH_ERR_BAD_FIELD;
		}
		if (count == max) {
			set_why(why, max == 1 ? "more than one PEM block" : "too many PEM blocks");
			return KH_ERR_BAD_FIELD;
		}
		if (start + len >= n || (p[start + len] != '\n' && p[start + len] != '\r')) {
			set_why(why, "PEM BEGIN line is malformed");
			return KH_ERR_BAD_FIELD;
		}
		for (e = start + len; e < n; e++)
			if (p[e] == '\n' && (endlen = marker_at(p, n, e + 1, "END ", lab)) != 0)
				break;
		if (endlen == 0) {
			set_why(why, "PEM block without its END line");
			return KH_ERR_BAD_FIELD;
		}
		at = e + 1 + endlen;
		if ((bio = BIO_new_mem_buf(p + start, (int)(at - start))) == NULL)
			return KH_ERR_NOMEM;
		if (PEM_read_bio(bio, &name, &header, &data, &dlen) != 1 || strcmp(name, lab) != 0 ||
		    header[0] != '\0' || dlen <= 0) {
			set_why(why, "PEM block does not decode");
			r = KH_ERR_BAD_FIELD;
		} else {
			r = each(arg, data, (size_t)dlen, why);
		}
		OPENSSL_free(name);
		OPENSSL_free(header);
		OPENSSL_free(data);
		BIO_free(bio);
		if (r != KH_OK)
			return r;
		count++;
	}
	if (count < min) {
		set_why(why, "no PEM block of the expected type");
		return KH_ERR_BAD_FIELD;
	}
	return KH_OK;
}

/* The one DER object of type it that spans all len bytes, or NULL. */
static void *der_exact(const ASN1_ITEM *it, const uint8_t *der, size_t len)
{
	const uint8_t *q = der;
	ASN1_VALUE *v = ASN1_item_d2i(NULL, &q, (long)len, it);
	if (v != NULL && q != der + len) {
		ASN1_item_free(v, it);
		v = NULL;
	}
	return v;
}

static int each_cert(void *arg, const uint8_t *der, size_t len, const char **why)
{
	STACK_OF(X509) *sk = arg;
	X509 *x = der_exact(ASN1_ITEM_rptr(X509), der, len);
	if (x == NULL) {
		set_why(why, "certificate DER is malformed");
		return KH_ERR_BAD_FIELD;
	}
	if (sk_X509_push(sk, x) <= 0) {
		X509_free(x);
		return KH_ERR_NOMEM;
	}
	return KH_OK;
}

static int each_crl(void *arg, const uint8_t *der, size_t len, const char **why)
{
	STACK_OF(X509_CRL) *sk = arg;
	X509_CRL *c = der_exact(ASN1_ITEM_rptr(X509_CRL), der, len);
	if (c == NULL) {
		set_why(why, "CRL DER is malformed");
		return KH_ERR_BAD_FIELD;
	}
	if (sk_X509_CRL_push(sk, c) <= 0) {
		X509_CRL_free(c);
		return KH_ERR_NOMEM;
	}
	return KH_OK;
}

static int each_csr(void *arg, const uint8_t *der, size_t len, const char **why)
{
	X509_REQ **out = arg;
	X509_REQ *req = der_exact(ASN1_ITEM_rptr(X509_REQ), der, len);
	if (req == NULL) {
		set_why(why, "CSR DER is malformed");
		return KH_ERR_BAD_FIELD;
	}
	*out = req;
	return KH_OK;
}

int kh_pki_certs_from_pem(const uint8_t *p, size_t n, size_t min, size_t max,
			  STACK_OF(X509) **out, const char **why)
{
	STACK_OF(X509) *sk = sk_X509_new_null();
	if (sk == NULL)
		return KH_ERR_NOMEM;
	int r = pem_walk(p, n, KH_PKI_CHAIN_MAX, "CERTIFICATE", NULL, min, max, each_cert, sk, why);
	if (r != KH_OK) {
		sk_X509_pop_free(sk, X509_free);
		return r;
	}
	*out = sk;
	return KH_OK;
}

int kh_pki_cert_from_pem(const uint8_t *p, size_t n, X509 **out, const char **why)
{
	STACK_OF(X509) *sk = sk_X509_new_null();
	if (sk == NULL)
		return KH_ERR_NOMEM;
	int r = pem_walk(p, n, KH_PKI_PEM_MAX, "CERTIFICATE", NULL, 1, 1, each_cert, sk, why);
	if (r == KH_OK)
		*out = sk_X509_shift(sk);
	sk_X509_pop_free(sk, X509_free);
	return r;
}

int kh_pki_csr_from_pem(const uint8_t *p, size_t n, X509_REQ **out, const char **why)
{
	X509_REQ *req = NULL;
	int r = pem_walk(p, n, KH_PKI_PEM_MAX, "CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST", 1,
			 1, each_csr, &req, why);
	if (r != KH_OK) {
		X509_REQ_free(req);
		return r;
	}
	*out = req;
	return KH_OK;
}

int kh_pki_crls_from_pem(const uint8_t *p, size_t n, size_t max, STACK_OF(X509_CRL) **out,
			 const char **why)
{
	STACK_OF(X509_CRL) *sk = sk_X509_CRL_new_null();
	if (sk == NULL)
		return KH_ERR_NOMEM;
	int r = pem_walk(p, n, KH_PKI_CRL_MAX, "X509 CRL", NULL, 0, max, each_crl, sk, why);
	if (r != KH_OK) {
		sk_X509_CRL_pop_free(sk, X509_CRL_free);
		return r;
	}
	*out = sk;
	return KH_OK;
}

int kh_pki_crl_from_pem(const uint8_t *p, size_t n, X509_CRL **out, const char **why)
{
	STACK_OF(X509_CRL) *sk = sk_X509_CRL_new_null();
	if (sk == NULL)
		return KH_ERR_NOMEM;
	int r = pem_walk(p, n, KH_PKI_CRL_MAX, "X509 CRL", NULL, 1, 1, each_crl, sk, why);
	if (r == KH_OK)
		*out = sk_X509_CRL_shift(sk);
	sk_X509_CRL_pop_free(sk, X509_CRL_free);
	return r;
}

/* ---- PEM output ---- */

static int bio_take(BIO *bio, uint8_t **out, size_t *len)
{
	char *data = NULL;
	long n = BIO_get_mem_data(bio, &data);
	if (n < 0)
		return KH_ERR_CRYPTO;
	uint8_t *buf = malloc(n ? (size_t)n : 1);
	if (buf == NULL)
		return KH_ERR_NOMEM;
	if (n)
		memcpy(buf, data, (size_t)n);
	*out = buf;
	*len = (size_t)n;
	return KH_OK;
}

/* PEM of count objects, put(bio, obj, i) writing the i-th. */
typedef int (*pem_put_fn)(BIO *bio, void *obj, int i);

static int pem_out(pem_put_fn put, void *obj, int count, uint8_t **out, size_t *len)
{
	BIO *bio = BIO_new(BIO_s_mem());
	int r = KH_ERR_CRYPTO;
	if (bio == NULL)
		return KH_ERR_NOMEM;
	for (int i = 0; i < count; i++)
		if (put(bio, obj, i) != 1)
			goto out;
	r = bio_take(bio, out, len);
out:
	BIO_free(bio);
	return r;
}

static int put_cert(BIO *bio, void *x, int i)
{
	(void)i;
	return PEM_write_bio_X509(bio, x);
}

static int put_certs(BIO *bio, void *sk, int i)
{
	return PEM_write_bio_X509(bio, sk_X509_value(sk, i));
}

static int put_csr(BIO *bio, void *req, int i)
{
	(void)i;
	return PEM_write_bio_X509_REQ(bio, req);
}

static int put_crls(BIO *bio, void *sk, int i)
{
	return PEM_write_bio_X509_CRL(bio, sk_X509_CRL_value(sk, i));
}

int kh_pki_cert_pem(X509 *x, uint8_t **out, size_t *len)
{
	return pem_out(put_cert, x, 1, out, len);
}

int kh_pki_certs_pem(STACK_OF(X509) * sk, uint8_t **out, size_t *len)
{
	return pem_out(put_certs, sk, sk_X509_num(sk), out, len);
}

int kh_pki_csr_pem(X509_REQ *req, uint8_t **out, size_t *len)
{
	return pem_out(put_csr, req, 1, out, len);
}

int kh_pki_crls_pem(STACK_OF(X509_CRL) *sk, uint8_t **out, size_t *len)
{
	return pem_out(put_crls, sk, sk_X509_CRL_num(sk), out, len);
}

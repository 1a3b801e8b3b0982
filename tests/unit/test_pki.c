/* Unit tests of the pure X.509 functions in src/hsm/pki.c: CAs, server and
 * client certificates checked by OpenSSL's own verifier, CRLs, and the
 * strict PEM reader against malformed documents. */
#include "kh_testutil.h"
#include "hsm/pki.h"
#include "common/kh_mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/pem.h>
#include <openssl/x509v3.h>

static EVP_PKEY *keygen(enum kh_pki_alg alg, int bits)
{
	struct kh_pki_keyspec spec = {alg, bits};
	EVP_PKEY *k = NULL;
	assert_int_equal(kh_pki_keygen(&spec, &k), KH_OK);
	return k;
}

static X509 *make_ca(EVP_PKEY *k, const char *cn)
{
	X509 *ca = NULL;
	assert_int_equal(kh_pki_ca_new(k, cn, 3650, time(NULL), &ca), KH_OK);
	return ca;
}

/* Verify x against ca (and crl, if any) for the given purpose; returns the
 * X509_V_ result. */
static int verify(X509 *ca, X509_CRL *crl, X509 *x, int purpose)
{
	X509_STORE *st = X509_STORE_new();
	X509_STORE_CTX *ctx = X509_STORE_CTX_new();
	int err;
	assert_non_null(st);
	assert_non_null(ctx);
	assert_int_equal(X509_STORE_add_cert(st, ca), 1);
	if (crl) {
		assert_int_equal(X509_STORE_add_crl(st, crl), 1);
		X509_STORE_set_flags(st, X509_V_FLAG_CRL_CHECK);
	}
	assert_int_equal(X509_STORE_CTX_init(ctx, st, x, NULL), 1);
	X509_STORE_CTX_set_purpose(ctx, purpose);
	err = X509_verify_cert(ctx) == 1 ? X509_V_OK : X509_STORE_CTX_get_error(ctx);
	X509_STORE_CTX_free(ctx);
	X509_STORE_free(st);
	return err;
}

static void check_ca(enum kh_pki_alg alg, int bits, int signid)
{
	EVP_PKEY *k = keygen(alg, bits);
	X509 *ca = make_ca(k, "Keyhold Test CA");
	struct kh_pki_keyspec spec;
	char serial[KH_PKI_SERIAL_HEX];

	assert_int_equal(kh_pki_keyspec_of(k, &spec), KH_OK);
	assert_int_equal(spec.alg, alg);
	assert_int_equal(spec.bits, bits);
	assert_int_equal(X509_check_ca(ca), 1);
	assert_int_equal(X509_verify(ca, k), 1);
	assert_true(X509_get_key_usage(ca) == (KU_KEY_CERT_SIGN | KU_CRL_SIGN));
	assert_int_equal(X509_get_signature_nid(ca), signid);
	assert_non_null(X509_get0_subject_key_id(ca));
	assert_non_null(X509_get0_authority_key_id(ca));
	int crit = 0;
	BASIC_CONSTRAINTS *bc = X509_get_ext_d2i(ca, NID_basic_constraints, &crit, NULL);
	assert_non_null(bc);
	assert_true(bc->ca);
	assert_int_equal(crit, 1);
	BASIC_CONSTRAINTS_free(bc);
	ASN1_BIT_STRING *ku = X509_get_ext_d2i(ca, NID_key_usage, &crit, NULL);
	assert_non_null(ku);
	assert_int_equal(crit, 1);
	ASN1_BIT_STRING_free(ku);
	assert_int_equal(kh_pki_serial_hex(ca, serial), KH_OK);
	assert_true(strlen(serial) <= 32 && strlen(serial) >= 1);
	assert_int_equal(verify(ca, NULL, ca, X509_PURPOSE_ANY), X509_V_OK);
	X509_free(ca);
	EVP_PKEY_free(k);
}

static void test_ca_rsa(void **state)
{
	check_ca(KH_PKI_RSA, 2048, NID_sha256WithRSAEncryption);
}

static void test_ca_ec(void **state)
{
	check_ca(KH_PKI_EC, 256, NID_ecdsa_with_SHA256);
	check_ca(KH_PKI_EC, 384, NID_ecdsa_with_SHA384);
}

static void test_keygen_refuses_odd_sizes(void **state)
{
	struct kh_pki_keyspec bad[] = {{KH_PKI_RSA, 1024}, {KH_PKI_RSA, 2047}, {KH_PKI_EC, 521},
				       {KH_PKI_EC, 0}, {(enum kh_pki_alg)7, 256}};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		EVP_PKEY *k = NULL;
		assert_int_equal(kh_pki_keygen(&bad[i], &k), KH_ERR_UNSUPPORTED);
		assert_null(k);
	}
}

static void test_key_der_roundtrip(void **state)
{
	EVP_PKEY *k = keygen(KH_PKI_EC, 256), *k2 = NULL;
	uint8_t *der = NULL;
	size_t len = 0;
	assert_int_equal(kh_pki_key_der(k, &der, &len), KH_OK);
	assert_int_equal(kh_pki_key_from_der(der, len, &k2), KH_OK);
	assert_int_equal(EVP_PKEY_eq(k, k2), 1);
	der[len / 2] ^= 0x55;
	EVP_PKEY_free(k2);
	k2 = NULL;
	/* a damaged key either fails to decode or is another key */
	if (kh_pki_key_from_der(der, len, &k2) == KH_OK)
		assert_int_not_equal(EVP_PKEY_eq(k, k2), 1);
	EVP_PKEY_free(k2);
	assert_int_not_equal(kh_pki_key_from_der(der, len - 1, &k2), KH_OK);
	kh_secure_free(der, len);
	EVP_PKEY_free(k);
}

static void test_server_cert_chains(void **state)
{
	EVP_PKEY *cak = keygen(KH_PKI_RSA, 2048), *k = keygen(KH_PKI_EC, 256);
	X509 *ca = make_ca(cak, "CA"), *x = NULL;
	const char *why = NULL;

	assert_int_equal(kh_pki_server_cert(ca, cak, k, "hsm1", NULL, 825, time(NULL), &x, &why),
			 KH_OK);
	assert_int_equal(verify(ca, NULL, x, X509_PURPOSE_SSL_SERVER), X509_V_OK);
	/* serverAuth only: not usable as a client certificate */
	assert_int_not_equal(verify(ca, NULL, x, X509_PURPOSE_SSL_CLIENT), X509_V_OK);
	assert_int_equal(X509_check_ip_asc(x, "127.0.0.1", 0), 1);
	assert_int_equal(X509_check_host(x, "localhost", 0, 0, NULL), 1);
	assert_int_equal(X509_check_host(x, "example.com", 0, 0, NULL), 0);
	assert_int_equal(X509_check_ca(x), 0);
	X509_free(x);
	x = NULL;

	assert_int_equal(kh_pki_server_cert(ca, cak, k, "hsm1", "IP:::1,DNS:*.hsm.example,IP:10.0.0.7",
					    30, time(NULL), &x, &why),
			 KH_OK);
	assert_int_equal(X509_check_ip_asc(x, "::1", 0), 1);
	assert_int_equal(X509_check_ip_asc(x, "10.0.0.7", 0), 1);
	assert_int_equal(X509_check_host(x, "a.hsm.example", 0, 0, NULL), 1);
	assert_int_equal(X509_check_ip_asc(x, "127.0.0.1", 0), 0);
	X509_free(x);
	x = NULL;

	const char *bad[] = {"",        "IP:300.1.1.1", "DNS:",         "email:a@b",   "DNS:a..b",
			     "DNS:-a",  "DNS:a*.b",     "IP:1.2.3.4,",  "DNS:a b",     "URI:http://x",
			     "DNS:x;y", "ip:1.2.3.4",   "DNS:*",        "DNS:a.*.b"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		why = NULL;
		assert_int_equal(kh_pki_server_cert(ca, cak, k, "hsm1", bad[i], 30, time(NULL), &x, &why),
				 KH_ERR_BAD_FIELD);
		assert_non_null(why);
		assert_null(x);
	}
	/* the wrong CA key */
	assert_int_equal(kh_pki_server_cert(ca, k, k, "hsm1", NULL, 30, time(NULL), &x, &why),
			 KH_ERR_TLS);
	assert_int_not_equal(kh_pki_server_cert(ca, cak, k, "", NULL, 30, time(NULL), &x, &why), KH_OK);
	assert_int_not_equal(kh_pki_server_cert(ca, cak, k, "a\tb", NULL, 30, time(NULL), &x, &why),
			     KH_OK);
	X509_free(ca);
	EVP_PKEY_free(cak);
	EVP_PKEY_free(k);
}

/* A client CSR as `openssl req` would make it, with an extension request
 * the HSM must not copy. */
static X509_REQ *client_csr(EVP_PKEY *k, const char *cn)
{
	X509_REQ *req = X509_REQ_new();
	X509_NAME *name = X509_NAME_new();
	STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
	X509V3_CTX v3;
	assert_non_null(req);
	assert_int_equal(X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
						    (const unsigned char *)"Acme", -1, -1, 0), 1);
	assert_int_equal(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
						    (const unsigned char *)cn, -1, -1, 0), 1);
	assert_int_equal(X509_REQ_set_subject_name(req, name), 1);
	assert_int_equal(X509_REQ_set_pubkey(req, k), 1);
	X509V3_set_ctx(&v3, NULL, NULL, req, NULL, 0);
	X509_EXTENSION *ex = X509V3_EXT_nconf_nid(NULL, &v3, NID_basic_constraints, "critical,CA:TRUE");
	assert_non_null(ex);
	assert_true(sk_X509_EXTENSION_push(exts, ex) > 0);
	assert_int_equal(X509_REQ_add_extensions(req, exts), 1);
	assert_true(X509_REQ_sign(req, k, EVP_sha256()) > 0);
	sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
	X509_NAME_free(name);
	return req;
}

static void test_client_csr_signed(void **state)
{
	EVP_PKEY *cak = keygen(KH_PKI_EC, 384), *k = keygen(KH_PKI_RSA, 2048);
	X509 *ca = make_ca(cak, "CA"), *x = NULL;
	X509_REQ *req = client_csr(k, "app1"), *parsed = NULL;
	uint8_t *pem = NULL;
	size_t len = 0;
	const char *why = NULL;

	assert_int_equal(kh_pki_csr_pem(req, &pem, &len), KH_OK);
	assert_int_equal(kh_pki_csr_from_pem(pem, len, &parsed, &why), KH_OK);
	assert_int_equal(kh_pki_client_cert(ca, cak, parsed, 365, time(NULL), &x, &why), KH_OK);
	assert_int_equal(verify(ca, NULL, x, X509_PURPOSE_SSL_CLIENT), X509_V_OK);
	assert_int_not_equal(verify(ca, NULL, x, X509_PURPOSE_SSL_SERVER), X509_V_OK);
	assert_int_equal(X509_NAME_cmp(X509_get_subject_name(x), X509_REQ_get_subject_name(req)), 0);
	assert_int_equal(EVP_PKEY_eq(X509_get0_pubkey(x), k), 1);
	assert_int_equal(X509_check_ca(x), 0); /* the requested CA:TRUE was not copied */
	assert_int_equal(X509_get_key_usage(x), KU_DIGITAL_SIGNATURE);
	assert_int_equal(X509_get_extended_key_usage(x), XKU_SSL_CLIENT);
	assert_int_equal(X509_get_signature_nid(x), NID_ecdsa_with_SHA384);
	X509_free(x);
	X509_REQ_free(parsed);
	free(pem);
	X509_REQ_free(req);
	X509_free(ca);
	EVP_PKEY_free(cak);
	EVP_PKEY_free(k);
}

static void test_hsm_csr(void **state)
{
	EVP_PKEY *k = keygen(KH_PKI_EC, 256);
	X509_REQ *req = NULL;
	const char *why = NULL;
	assert_int_equal(kh_pki_csr_new(k, "hsm.example", "DNS:hsm.example", &req, &why), KH_OK);
	assert_int_equal(X509_REQ_verify(req, k), 1);
	STACK_OF(X509_EXTENSION) *exts = X509_REQ_get_extensions(req);
	assert_int_equal(sk_X509_EXTENSION_num(exts), 1);
	sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
	X509_REQ_free(req);
	req = NULL;
	assert_int_equal(kh_pki_csr_new(k, "hsm", "DNS:bad name", &req, &why), KH_ERR_BAD_FIELD);
	assert_null(req);
	EVP_PKEY_free(k);
}

static void test_tampered_csr_refused(void **state)
{
	EVP_PKEY *cak = keygen(KH_PKI_EC, 256), *k = keygen(KH_PKI_EC, 256);
	X509 *ca = make_ca(cak, "CA"), *x = NULL;
	X509_REQ *req = client_csr(k, "victim"), *parsed = NULL;
	uint8_t *der = NULL;
	int n = i2d_X509_REQ(req, &der);
	const char *why = NULL;
	assert_true(n > 0);
	/* change one letter of the common name ("victim" -> "victin") */
	int hit = 0;
	for (int i = 0; i + 6 <= n; i++)
		if (memcmp(der + i, "victim", 6) == 0) {
			der[i + 5] = 'n';
			hit = 1;
			break;
		}
	assert_true(hit);
	const uint8_t *q = der;
	X509_REQ *bad = d2i_X509_REQ(NULL, &q, n);
	assert_non_null(bad);
	uint8_t *pem = NULL;
	size_t len = 0;
	assert_int_equal(kh_pki_csr_pem(bad, &pem, &len), KH_OK);
	assert_int_equal(kh_pki_csr_from_pem(pem, len, &parsed, &why), KH_OK);
	assert_int_equal(kh_pki_client_cert(ca, cak, parsed, 365, time(NULL), &x, &why), KH_ERR_TLS);
	assert_string_equal(why, "CSR signature does not verify");
	assert_null(x);
	free(pem);
	X509_REQ_free(parsed);
	X509_REQ_free(bad);
	OPENSSL_free(der);
	X509_REQ_free(req);
	X509_free(ca);
	EVP_PKEY_free(cak);
	EVP_PKEY_free(k);
}

static void test_crl(void **state)
{
	EVP_PKEY *cak = keygen(KH_PKI_RSA, 2048), *k = keygen(KH_PKI_EC, 256);
	X509 *ca = make_ca(cak, "CA"), *x1 = NULL, *x2 = NULL;
	X509_REQ *req = client_csr(k, "app");
	X509_CRL *crl = NULL, *empty = NULL;
	struct kh_pki_revoked rv[2];
	const char *why = NULL;

	assert_int_equal(kh_pki_client_cert(ca, cak, req, 365, time(NULL), &x1, &why), KH_OK);
	assert_int_equal(kh_pki_client_cert(ca, cak, req, 365, time(NULL), &x2, &why), KH_OK);
	assert_int_equal(kh_pki_crl_new(ca, cak, NULL, 0, time(NULL), &empty), KH_OK);
	assert_int_equal(verify(ca, empty, x1, X509_PURPOSE_SSL_CLIENT), X509_V_OK);

	assert_int_equal(kh_pki_serial_hex(x1, rv[0].serial), KH_OK);
	rv[0].when = time(NULL);
	snprintf(rv[1].serial, sizeof(rv[1].serial), "1234ABCD");
	rv[1].when = time(NULL) - 10;
	assert_int_equal(kh_pki_crl_new(ca, cak, rv, 2, time(NULL), &crl), KH_OK);
	assert_int_equal(X509_CRL_verify(crl, cak), 1);
	assert_true(X509_CRL_verify(crl, k) <= 0);
	assert_true(kh_pki_crl_lists(crl, rv[0].serial));
	assert_true(kh_pki_crl_lists(crl, "1234ABCD"));
	assert_false(kh_pki_crl_lists(crl, "1234ABCE"));
	assert_int_equal(sk_X509_REVOKED_num(X509_CRL_get_REVOKED(crl)), 2);
	/* nextUpdate about 30 days ahead */
	int days = 0, secs = 0;
	assert_int_equal(ASN1_TIME_diff(&days, &secs, NULL, X509_CRL_get0_nextUpdate(crl)), 1);
	assert_true(days >= 29 && days <= 30);
	assert_int_equal(verify(ca, crl, x1, X509_PURPOSE_SSL_CLIENT), X509_V_ERR_CERT_REVOKED);
	assert_int_equal(verify(ca, crl, x2, X509_PURPOSE_SSL_CLIENT), X509_V_OK);

	/* PEM round trip of a CRL set */
	STACK_OF(X509_CRL) *sk = sk_X509_CRL_new_null(), *back = NULL;
	assert_true(sk_X509_CRL_push(sk, crl) > 0);
	assert_true(sk_X509_CRL_push(sk, empty) > 0);
	uint8_t *pem = NULL;
	size_t len = 0;
	assert_int_equal(kh_pki_crls_pem(sk, &pem, &len), KH_OK);
	assert_int_equal(kh_pki_crls_from_pem(pem, len, 4, &back, &why), KH_OK);
	assert_int_equal(sk_X509_CRL_num(back), 2);
	X509_CRL *one = NULL;
	assert_int_equal(kh_pki_crl_from_pem(pem, len, &one, &why), KH_ERR_BAD_FIELD);
	assert_string_equal(why, "more than one PEM block");
	sk_X509_CRL_pop_free(back, X509_CRL_free);
	sk_X509_CRL_pop_free(sk, X509_CRL_free);
	free(pem);
	X509_free(x1);
	X509_free(x2);
	X509_REQ_free(req);
	X509_free(ca);
	EVP_PKEY_free(cak);
	EVP_PKEY_free(k);
}

static void test_serial_norm(void **state)
{
	char out[KH_PKI_SERIAL_HEX];
	assert_int_equal(kh_pki_serial_norm("00ab12", 6, out), KH_OK);
	assert_string_equal(out, "AB12");
	assert_int_equal(kh_pki_serial_norm("1", 1, out), KH_OK);
	assert_string_equal(out, "1");
	assert_int_equal(kh_pki_serial_norm("0000", 4, out), KH_ERR_BAD_FIELD);
	assert_int_equal(kh_pki_serial_norm("", 0, out), KH_ERR_BAD_FIELD);
	assert_int_equal(kh_pki_serial_norm("12G4", 4, out), KH_ERR_BAD_FIELD);
	assert_int_equal(kh_pki_serial_norm("-12", 3, out), KH_ERR_BAD_FIELD);
	const char *big = "1234567890123456789012345678901234567890A"; /* 41 digits */
	assert_int_equal(kh_pki_serial_norm(big, strlen(big), out), KH_ERR_BAD_FIELD);
	assert_int_equal(kh_pki_serial_norm(big, 40, out), KH_OK);
}

/* Feed text to the certificate reader and expect a refusal. */
static void refuse_cert(const char *text, size_t n)
{
	X509 *x = NULL;
	const char *why = NULL;
	int r = kh_pki_cert_from_pem((const uint8_t *)text, n, &x, &why);
	assert_int_not_equal(r, KH_OK);
	assert_null(x);
	assert_non_null(why);
}

static void test_malformed_pem(void **state)
{
	EVP_PKEY *k = keygen(KH_PKI_EC, 256);
	X509 *ca = make_ca(k, "CA"), *x = NULL;
	uint8_t *pem = NULL;
	size_t len = 0;
	const char *why = NULL;
	char buf[16384];

	assert_int_equal(kh_pki_cert_pem(ca, &pem, &len), KH_OK);
	assert_true(len < sizeof(buf) / 3);
	/* the good one, with surrounding whitespace */
	snprintf(buf, sizeof(buf), "\r\n  %.*s\n\n", (int)len, (const char *)pem);
	assert_int_equal(kh_pki_cert_from_pem((uint8_t *)buf, strlen(buf), &x, &why), KH_OK);
	assert_int_equal(X509_cmp(x, ca), 0);
	X509_free(x);
	x = NULL;

	refuse_cert("", 0);
	refuse_cert("hello", 5);
	refuse_cert("\x01\x02\x03", 3);
	/* truncated */
	refuse_cert((const char *)pem, len / 2);
	/* text before and after */
	snprintf(buf, sizeof(buf), "Certificate:\n%.*s", (int)len, (const char *)pem);
	refuse_cert(buf, strlen(buf));
	snprintf(buf, sizeof(buf), "%.*sjunk\n", (int)len, (const char *)pem);
	refuse_cert(buf, strlen(buf));
	/* two certificates where one is expected */
	snprintf(buf, sizeof(buf), "%.*s%.*s", (int)len, (const char *)pem, (int)len,
		 (const char *)pem);
	refuse_cert(buf, strlen(buf));
	/* a NUL in the middle */
	memcpy(buf, pem, len);
	buf[40] = '\0';
	refuse_cert(buf, len);
	/* a corrupted base64 body */
	memcpy(buf, pem, len);
	buf[100] = '!';
	refuse_cert(buf, len);
	/* PEM headers (encryption) are refused */
	snprintf(buf, sizeof(buf), "-----BEGIN CERTIFICATE-----\nProc-Type: 4,ENCRYPTED\n%.*s",
		 (int)len - 28, (const char *)pem + 28);
	refuse_cert(buf, strlen(buf));
	/* the wrong type */
	const char *csr = "-----BEGIN CERTIFICATE REQUEST-----\nMAA=\n-----END CERTIFICATE REQUEST-----\n";
	refuse_cert(csr, strlen(csr));
	X509_REQ *req = NULL;
	assert_int_not_equal(kh_pki_csr_from_pem(pem, len, &req, &why), KH_OK);
	assert_string_equal(why, "PEM block of the wrong type");
	/* valid base64 that is not a certificate */
	const char *junk = "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
	refuse_cert(junk, strlen(junk));
	/* DER with a trailing byte */
	{
		uint8_t *der = NULL;
		int n = i2d_X509(ca, &der);
		uint8_t *der2 = malloc((size_t)n + 1);
		memcpy(der2, der, (size_t)n);
		der2[n] = 0;
		BIO *b = BIO_new(BIO_s_mem());
		assert_true(PEM_write_bio(b, "CERTIFICATE", "", der2, n + 1) > 0);
		char *data = NULL;
		long bl = BIO_get_mem_data(b, &data);
		refuse_cert(data, (size_t)bl);
		BIO_free(b);
		free(der2);
		OPENSSL_free(der);
	}
	/* oversize */
	{
		size_t big = KH_PKI_CHAIN_MAX + 1;
		char *huge = malloc(big);
		memset(huge, '\n', big);
		STACK_OF(X509) *sk = NULL;
		assert_int_equal(kh_pki_certs_from_pem((uint8_t *)huge, big, 1, 4, &sk, &why),
				 KH_ERR_TOO_LARGE);
		free(huge);
	}
	/* a chain: two certificates accepted by the list reader, limits enforced */
	snprintf(buf, sizeof(buf), "%.*s%.*s", (int)len, (const char *)pem, (int)len,
		 (const char *)pem);
	STACK_OF(X509) *sk = NULL;
	assert_int_equal(kh_pki_certs_from_pem((uint8_t *)buf, strlen(buf), 1, 4, &sk, &why), KH_OK);
	assert_int_equal(sk_X509_num(sk), 2);
	sk_X509_pop_free(sk, X509_free);
	sk = NULL;
	assert_int_equal(kh_pki_certs_from_pem((uint8_t *)buf, strlen(buf), 1, 1, &sk, &why),
			 KH_ERR_BAD_FIELD);
	assert_int_equal(kh_pki_certs_from_pem((uint8_t *)"  \n", 3, 1, 4, &sk, &why),
			 KH_ERR_BAD_FIELD);
	assert_int_equal(kh_pki_certs_from_pem((uint8_t *)"  \n", 3, 0, 4, &sk, &why), KH_OK);
	assert_int_equal(sk_X509_num(sk), 0);
	sk_X509_pop_free(sk, X509_free);

	free(pem);
	X509_free(ca);
	EVP_PKEY_free(k);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ca_rsa),
		cmocka_unit_test(test_ca_ec),
		cmocka_unit_test(test_keygen_refuses_odd_sizes),
		cmocka_unit_test(test_key_der_roundtrip),
		cmocka_unit_test(test_server_cert_chains),
		cmocka_unit_test(test_client_csr_signed),
		cmocka_unit_test(test_hsm_csr),
		cmocka_unit_test(test_tampered_csr_refused),
		cmocka_unit_test(test_crl),
		cmocka_unit_test(test_serial_norm),
		cmocka_unit_test(test_malformed_pem),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

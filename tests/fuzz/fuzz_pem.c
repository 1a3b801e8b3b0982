/*
 * libFuzzer target for the strict PEM readers of hsm/pki.h (certificate,
 * certificate list, CSR, CRL, CRL list), each fed the whole input. A
 * refusal must say why; what is accepted must write back (kh_pki_*_pem) to
 * PEM that the same reader accepts with the same DER; the one-object and
 * list readers must agree with each other.
 */
#include "hsm/pki.h"
#include "common/kh_err.h"

#include "fuzz_check.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/x509.h>

/* A reader's result: OK, or a refusal with its reason. */
static void check_result(int r, const char *why)
{
	CHECK(r == KH_OK || r == KH_ERR_BAD_FIELD || r == KH_ERR_TOO_LARGE);
	if (r != KH_OK)
		CHECK(why != NULL && why[0] != '\0');
}

static bool blank(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r' && p[i] != '\n')
			return false;
	return true;
}

/* ---- DER of each kind, as a malloc'd buffer ---- */

struct der {
	unsigned char *p;
	int len;
};

static struct der cert_der(X509 *x)
{
	struct der d = {NULL, i2d_X509(x, NULL)};
	unsigned char *q;
	CHECK(d.len > 0);
	d.p = q = OPENSSL_malloc((size_t)d.len);
	CHECK(d.p != NULL && i2d_X509(x, &q) == d.len);
	return d;
}

static struct der csr_der(X509_REQ *x)
{
	struct der d = {NULL, i2d_X509_REQ(x, NULL)};
	unsigned char *q;
	CHECK(d.len > 0);
	d.p = q = OPENSSL_malloc((size_t)d.len);
	CHECK(d.p != NULL && i2d_X509_REQ(x, &q) == d.len);
	return d;
}

static struct der crl_der(X509_CRL *x)
{
	struct der d = {NULL, i2d_X509_CRL(x, NULL)};
	unsigned char *q;
	CHECK(d.len > 0);
	d.p = q = OPENSSL_malloc((size_t)d.len);
	CHECK(d.p != NULL && i2d_X509_CRL(x, &q) == d.len);
	return d;
}

static bool der_eq(struct der a, struct der b)
{
	bool eq = a.len == b.len && memcmp(a.p, b.p, (size_t)a.len) == 0;
	OPENSSL_free(a.p);
	OPENSSL_free(b.p);
	return eq;
}

/* ---- one object ---- */

static void check_cert(const uint8_t *p, size_t n)
{
	X509 *x = NULL, *y = NULL;
	STACK_OF(X509) *sk = NULL;
	const char *why = NULL;
	uint8_t *pem = NULL, *pem2 = NULL;
	size_t len = 0, len2 = 0;
	int r = kh_pki_cert_from_pem(p, n, &x, &why), rl;

	check_result(r, why);
	if (n <= KH_PKI_PEM_MAX) {
		/* one certificate is a list of exactly one */
		why = NULL;
		rl = kh_pki_certs_from_pem(p, n, 1, 1, &sk, &why);
		check_result(rl, why);
		CHECK((rl == KH_OK) == (r == KH_OK));
		if (rl == KH_OK) {
			CHECK(sk_X509_num(sk) == 1);
			CHECK(der_eq(cert_der(x), cert_der(sk_X509_value(sk, 0))));
			sk_X509_pop_free(sk, X509_free);
		}
	} else {
		CHECK(r == KH_ERR_TOO_LARGE);
	}
	if (r != KH_OK)
		return;
	CHECK(x != NULL);
	CHECK(kh_pki_cert_pem(x, &pem, &len) == KH_OK);
	why = NULL;
	r = kh_pki_cert_from_pem(pem, len, &y, &why);
	CHECK(r == KH_OK && y != NULL);
	CHECK(der_eq(cert_der(x), cert_der(y)));
	CHECK(kh_pki_cert_pem(y, &pem2, &len2) == KH_OK);
	CHECK(len2 == len && memcmp(pem, pem2, len) == 0);
	free(pem2);
	free(pem);
	X509_free(y);
	X509_free(x);
}

static void check_csr(const uint8_t *p, size_t n)
{
	X509_REQ *x = NULL, *y = NULL;
	const char *why = NULL;
	uint8_t *pem = NULL;
	size_t len = 0;
	int r = kh_pki_csr_from_pem(p, n, &x, &why);

	check_result(r, why);
	if (n > KH_PKI_PEM_MAX)
		CHECK(r == KH_ERR_TOO_LARGE);
	if (r != KH_OK)
		return;
	CHECK(x != NULL);
	CHECK(kh_pki_csr_pem(x, &pem, &len) == KH_OK);
	why = NULL;
	CHECK(kh_pki_csr_from_pem(pem, len, &y, &why) == KH_OK && y != NULL);
	CHECK(der_eq(csr_der(x), csr_der(y)));
	free(pem);
	X509_REQ_free(y);
	X509_REQ_free(x);
}

static void check_crl(const uint8_t *p, size_t n)
{
	X509_CRL *x = NULL, *y = NULL;
	STACK_OF(X509_CRL) *sk = NULL, *one = NULL;
	const char *why = NULL;
	uint8_t *pem = NULL;
	size_t len = 0;
	int r = kh_pki_crl_from_pem(p, n, &x, &why), rl;

	check_result(r, why);
	/* one CRL is a list of at most one that is not empty */
	why = NULL;
	rl = kh_pki_crls_from_pem(p, n, 1, &sk, &why);
	check_result(rl, why);
	CHECK((r == KH_OK) == (rl == KH_OK && sk_X509_CRL_num(sk) == 1));
	if (rl == KH_OK) {
		CHECK(sk_X509_CRL_num(sk) == 1 || (sk_X509_CRL_num(sk) == 0 && blank(p, n)));
		if (r == KH_OK)
			CHECK(der_eq(crl_der(x), crl_der(sk_X509_CRL_value(sk, 0))));
		sk_X509_CRL_pop_free(sk, X509_CRL_free);
	}
	if (r != KH_OK)
		return;
	CHECK(x != NULL);
	one = sk_X509_CRL_new_null();
	CHECK(one != NULL && sk_X509_CRL_push(one, x) == 1);
	CHECK(kh_pki_crls_pem(one, &pem, &len) == KH_OK);
	why = NULL;
	CHECK(kh_pki_crl_from_pem(pem, len, &y, &why) == KH_OK && y != NULL);
	CHECK(der_eq(crl_der(x), crl_der(y)));
	free(pem);
	X509_CRL_free(y);
	sk_X509_CRL_pop_free(one, X509_CRL_free);
}

/* ---- lists ---- */

static void check_certs(const uint8_t *p, size_t n)
{
	STACK_OF(X509) *sk = NULL, *sk2 = NULL;
	const char *why = NULL;
	uint8_t *pem = NULL;
	size_t len = 0;
	int r = kh_pki_certs_from_pem(p, n, 0, KH_PKI_CHAIN_CERTS, &sk, &why);

	check_result(r, why);
	if (r != KH_OK)
		return;
	CHECK(sk_X509_num(sk) >= 0 && sk_X509_num(sk) <= (int)KH_PKI_CHAIN_CERTS);
	CHECK((sk_X509_num(sk) == 0) == blank(p, n));
	CHECK(kh_pki_certs_pem(sk, &pem, &len) == KH_OK);
	why = NULL;
	CHECK(kh_pki_certs_from_pem(pem, len, 0, KH_PKI_CHAIN_CERTS, &sk2, &why) == KH_OK);
	CHECK(sk_X509_num(sk2) == sk_X509_num(sk));
	for (int i = 0; i < sk_X509_num(sk); i++)
		CHECK(der_eq(cert_der(sk_X509_value(sk, i)), cert_der(sk_X509_value(sk2, i))));
	free(pem);
	sk_X509_pop_free(sk2, X509_free);
	sk_X509_pop_free(sk, X509_free);
}

static void check_crls(const uint8_t *p, size_t n)
{
	STACK_OF(X509_CRL) *sk = NULL, *sk2 = NULL;
	const char *why = NULL;
	uint8_t *pem = NULL;
	size_t len = 0;
	int r = kh_pki_crls_from_pem(p, n, KH_PKI_CRLS, &sk, &why);

	check_result(r, why);
	if (r != KH_OK)
		return;
	CHECK(sk_X509_CRL_num(sk) >= 0 && sk_X509_CRL_num(sk) <= (int)KH_PKI_CRLS);
	CHECK((sk_X509_CRL_num(sk) == 0) == blank(p, n));
	CHECK(kh_pki_crls_pem(sk, &pem, &len) == KH_OK);
	why = NULL;
	CHECK(kh_pki_crls_from_pem(pem, len, KH_PKI_CRLS, &sk2, &why) == KH_OK);
	CHECK(sk_X509_CRL_num(sk2) == sk_X509_CRL_num(sk));
	for (int i = 0; i < sk_X509_CRL_num(sk); i++)
		CHECK(
		    der_eq(crl_der(sk_X509_CRL_value(sk, i)), crl_der(sk_X509_CRL_value(sk2, i))));
	free(pem);
	sk_X509_CRL_pop_free(sk2, X509_CRL_free);
	sk_X509_CRL_pop_free(sk, X509_CRL_free);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	/* load error strings and algorithms once, not inside the first input */
	OPENSSL_init_crypto(OPENSSL_INIT_LOAD_CRYPTO_STRINGS, NULL);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* an exact-size copy, so that a read past the end is reported */
	uint8_t *p = malloc(size ? size : 1);

	if (p == NULL)
		abort();
	if (size)
		memcpy(p, data, size);
	check_cert(p, size);
	check_certs(p, size);
	check_csr(p, size);
	check_crl(p, size);
	check_crls(p, size);
	free(p);
	/* refusals leave OpenSSL errors queued; they are not ours to keep */
	ERR_clear_error();
	return 0;
}

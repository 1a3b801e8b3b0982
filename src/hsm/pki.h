/*
 * Pure X.509 work for the HSM's TLS: keys, the HSM's CA, server and client
 * certificates, CSRs, CRLs, strict PEM in and out. Nothing here touches
 * storage, major keys or the network; callers own every object they get.
 */
#ifndef KH_PKI_H
#define KH_PKI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "common/kh_err.h"

enum kh_pki_alg { KH_PKI_RSA = 1, KH_PKI_EC = 2 };

/* RSA: bits 2048, 3072 or 4096. EC: bits 256 (P-256) or 384 (P-384). */
struct kh_pki_keyspec {
	enum kh_pki_alg alg;
	int bits;
};

#define KH_PKI_DEFAULT_SAN "IP:127.0.0.1,DNS:localhost"
#define KH_PKI_CN_MAX 64            /* RFC 5280 ub-common-name */
#define KH_PKI_SAN_MAX 1024         /* text of a SAN list */
#define KH_PKI_SAN_ENTRIES 16
#define KH_PKI_PEM_MAX 65536u       /* one certificate or CSR in PEM */
#define KH_PKI_CHAIN_MAX 262144u    /* a chain or a list of trusted CAs in PEM */
#define KH_PKI_CHAIN_CERTS 32u      /* certificates in such a list */
#define KH_PKI_CRL_MAX (4u << 20)   /* one or more CRLs in PEM */
#define KH_PKI_CRLS 32u             /* CRLs in the stored set */
#define KH_PKI_SERIAL_HEX 41        /* 20 octets in hex and a NUL */
#define KH_PKI_CRL_DAYS 30          /* nextUpdate of the CRLs we make */
#define KH_PKI_FP_LEN 32            /* SHA-256 */

/* Keys. */
KH_MUST_CHECK int kh_pki_keygen(const struct kh_pki_keyspec *spec, EVP_PKEY **out);
/* What a key is; KH_ERR_UNSUPPORTED for anything but the specs above. */
KH_MUST_CHECK int kh_pki_keyspec_of(const EVP_PKEY *key, struct kh_pki_keyspec *out);
/* Private key as DER on the secure heap (free with kh_secure_free(*der, *len)). */
KH_MUST_CHECK int kh_pki_key_der(EVP_PKEY *key, uint8_t **der, size_t *len);
KH_MUST_CHECK int kh_pki_key_from_der(const uint8_t *der, size_t len, EVP_PKEY **out);

/* Certificates. cn: printable ASCII, 1..KH_PKI_CN_MAX bytes. san: a list
 * like KH_PKI_DEFAULT_SAN of IP:<v4|v6> and DNS:<name> entries; NULL means
 * the default. now: the HSM clock. why (may be NULL) gets a fixed text
 * naming what was refused. */
KH_MUST_CHECK int kh_pki_ca_new(EVP_PKEY *key, const char *cn, int days, time_t now, X509 **out);
KH_MUST_CHECK int kh_pki_server_cert(X509 *ca, EVP_PKEY *cakey, EVP_PKEY *pub, const char *cn,
				     const char *san, int days, time_t now, X509 **out,
				     const char **why);
/* CSR for one of the HSM's own keys. */
KH_MUST_CHECK int kh_pki_csr_new(EVP_PKEY *key, const char *cn, const char *san, X509_REQ **out,
				 const char **why);
/* Sign a client's CSR: its self-signature is verified first, and only its
 * subject and public key are copied (requested extensions are ignored). */
KH_MUST_CHECK int kh_pki_client_cert(X509 *ca, EVP_PKEY *cakey, X509_REQ *req, int days,
				     time_t now, X509 **out, const char **why);

/* CRLs. serial: canonical hex (kh_pki_serial_norm). */
struct kh_pki_revoked {
	char serial[KH_PKI_SERIAL_HEX];
	int64_t when;
};
KH_MUST_CHECK int kh_pki_crl_new(X509 *ca, EVP_PKEY *cakey, const struct kh_pki_revoked *list,
				 size_t n, time_t now, X509_CRL **out);
/* Is the serial listed in the CRL? */
bool kh_pki_crl_lists(X509_CRL *crl, const char *serial);

/* Serials as canonical hex: uppercase, no leading zeros, 1..40 digits, not 0. */
KH_MUST_CHECK int kh_pki_serial_norm(const char *hex, size_t n, char out[KH_PKI_SERIAL_HEX]);
KH_MUST_CHECK int kh_pki_serial_hex(const X509 *x, char out[KH_PKI_SERIAL_HEX]);
KH_MUST_CHECK int kh_pki_fingerprint(const X509 *x, uint8_t out[KH_PKI_FP_LEN]);
/* Printable ASCII (0x20..0x7E), 1..max bytes. */
bool kh_pki_text_ok(const uint8_t *s, size_t n, size_t max);

/* Strict PEM input: size limit, only printable ASCII and whitespace,
 * nothing outside the PEM blocks, exactly the expected type, no PEM headers
 * (no encryption), DER that decodes with no byte left over. One object,
 * or min..max objects for the list forms. */
KH_MUST_CHECK int kh_pki_cert_from_pem(const uint8_t *p, size_t n, X509 **out, const char **why);
KH_MUST_CHECK int kh_pki_certs_from_pem(const uint8_t *p, size_t n, size_t min, size_t max,
					STACK_OF(X509) **out, const char **why);
KH_MUST_CHECK int kh_pki_csr_from_pem(const uint8_t *p, size_t n, X509_REQ **out,
				      const char **why);
KH_MUST_CHECK int kh_pki_crl_from_pem(const uint8_t *p, size_t n, X509_CRL **out,
				      const char **why);
KH_MUST_CHECK int kh_pki_crls_from_pem(const uint8_t *p, size_t n, size_t max,
				       STACK_OF(X509_CRL) **out, const char **why);

/* PEM output into a fresh malloc'd buffer (not NUL-terminated; free()). */
KH_MUST_CHECK int kh_pki_cert_pem(X509 *x, uint8_t **out, size_t *len);
KH_MUST_CHECK int kh_pki_certs_pem(STACK_OF(X509) *sk, uint8_t **out, size_t *len);
KH_MUST_CHECK int kh_pki_csr_pem(X509_REQ *req, uint8_t **out, size_t *len);
KH_MUST_CHECK int kh_pki_crls_pem(STACK_OF(X509_CRL) *sk, uint8_t **out, size_t *len);

#endif

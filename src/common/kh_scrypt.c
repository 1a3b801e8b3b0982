/*
 * scrypt password verifiers (see kh_scrypt.h). The password reaches only
 * OpenSSL's KDF; nothing here keeps or logs it.
 */
#include "common/kh_scrypt.h"

#include <stdio.h>

#include <openssl/core_names.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

bool kh_scrypt_parse(const char *s, const struct kh_scrypt_params *max,
                     struct kh_scrypt_params *out)
{
	unsigned long long n;
	unsigned r, p;
	char tail;
	if (sscanf(s, "scrypt:%llu:%u:%u%c", &n, &r, &p, &tail) != 3)
		return false;
	if (n < 1024 || n > max->N || (n & (n - 1)) != 0 || r < 1 || r > max->r || p < 1 ||
	    p > max->p)
		return false;
	out->N = n;
	out->r = r;
	out->p = p;
	return true;
}

void kh_scrypt_format(const struct kh_scrypt_params *k, char *buf, size_t bufsz)
{
	snprintf(buf, bufsz, "scrypt:%llu:%u:%u", (unsigned long long)k->N, k->r, k->p);
}

int kh_scrypt(const uint8_t *pw, size_t n, const uint8_t *salt, size_t saltlen,
              const struct kh_scrypt_params *k, uint64_t maxmem, uint8_t *out, size_t outlen)
{
	static const uint8_t empty[1] = {0};
	uint64_t N = k->N;
	uint32_t r = k->r, p = k->p;
	EVP_KDF *kdf = EVP_KDF_fetch(NULL, "SCRYPT", NULL);
	EVP_KDF_CTX *kctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
	OSSL_PARAM params[7], *q = params;
	int rc = KH_ERR_CRYPTO;

	if (kctx == NULL)
		goto out;
	*q++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_PASSWORD,
	                                         (void *)(uintptr_t)(n ? pw : empty), n);
	*q++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)(uintptr_t)salt,
	                                         saltlen);
	*q++ = OSSL_PARAM_construct_uint64(OSSL_KDF_PARAM_SCRYPT_N, &N);
	*q++ = OSSL_PARAM_construct_uint32(OSSL_KDF_PARAM_SCRYPT_R, &r);
	*q++ = OSSL_PARAM_construct_uint32(OSSL_KDF_PARAM_SCRYPT_P, &p);
	if (maxmem)
		*q++ = OSSL_PARAM_construct_uint64(OSSL_KDF_PARAM_SCRYPT_MAXMEM, &maxmem);
	*q = OSSL_PARAM_construct_end();
	if (EVP_KDF_derive(kctx, out, outlen, params) == 1)
		rc = KH_OK;
out:
	EVP_KDF_CTX_free(kctx);
	EVP_KDF_free(kdf);
	return rc;
}

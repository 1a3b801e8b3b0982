/*
 * Password verifiers with scrypt (OpenSSL's KDF), shared by keyhold-hsm's
 * identities and keyhold-guardian's users. The parameters are stored with
 * each verifier as "scrypt:N:r:p" so that they can change; a stored string
 * is only accepted within the caller's bounds.
 */
#ifndef KH_SCRYPT_H
#define KH_SCRYPT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "common/kh_err.h"

struct kh_scrypt_params {
	uint64_t N; /* a power of two */
	uint32_t r, p;
};

/* "scrypt:N:r:p" into out, only with N a power of two from 1024 and N, r and
 * p at most max's: an edited database must not make a login allocate
 * gigabytes. */
bool kh_scrypt_parse(const char *s, const struct kh_scrypt_params *max,
                     struct kh_scrypt_params *out);
/* "scrypt:N:r:p" of k into buf. */
void kh_scrypt_format(const struct kh_scrypt_params *k, char *buf, size_t bufsz);
/* out (outlen bytes) = scrypt of the password pw (n bytes, may be 0) with
 * salt; maxmem 0 keeps OpenSSL's memory limit (32 MiB). KH_ERR_CRYPTO if the
 * KDF fails, for instance parameters above maxmem. */
KH_MUST_CHECK int kh_scrypt(const uint8_t *pw, size_t n, const uint8_t *salt, size_t saltlen,
                            const struct kh_scrypt_params *k, uint64_t maxmem, uint8_t *out,
                            size_t outlen);

#endif

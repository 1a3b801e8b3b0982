/*
 * Secret memory: allocation on OpenSSL's secure heap (falling back to wiped
 * heap memory), wiping that the compiler cannot elide, constant-time compare
 * and hex coding. Never log what passes through here.
 */
#ifndef KH_MEM_H
#define KH_MEM_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include "common/kh_err.h"

/* Initialise the secure heap (call once at start-up, before threads).
 * Returns 0 if the secure heap is active, 1 if it fell back to the normal heap. */
int kh_mem_init(size_t secure_heap_bytes);
/* Disable core dumps and ptrace attach, lock pages where the limits allow. */
void kh_mem_harden_process(void);

void *kh_secure_alloc(size_t n);             /* zeroed; NULL on failure */
void kh_secure_free(void *p, size_t n);      /* wipes, then frees; NULL ok */
void kh_wipe(void *p, size_t n);              /* OPENSSL_cleanse */
bool kh_ct_equal(const void *a, const void *b, size_t n); /* constant time */

/* Hex: uppercase on output, either case on input. Decoding runs in time
 * that depends only on the length (safe for key material).
 * kh_hex_decode returns the number of bytes written or a kh_err (< 0). */
void kh_hex_encode(const uint8_t *in, size_t n, char *out /* 2n+1 */);
void kh_hex_encode_raw(const uint8_t *in, size_t n, char *out /* 2n, no NUL */);
KH_MUST_CHECK int kh_hex_decode(const char *in, size_t inlen, uint8_t *out, size_t outmax);

#endif

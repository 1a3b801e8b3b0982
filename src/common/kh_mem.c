/*
 * Secret-memory helpers. Everything that holds a key or password goes
 * through kh_secure_alloc/kh_secure_free so that it is wiped on release.
 */
#include "common/kh_mem.h"

#include <openssl/crypto.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>

static int secure_heap_on;

int kh_mem_init(size_t secure_heap_bytes)
{
	if (secure_heap_bytes && CRYPTO_secure_malloc_init(secure_heap_bytes, 64) >= 1) {
		/* 2 means the heap works but could not be mlock'd */
		secure_heap_on = 1;
		return 0;
	}
	return 1;
}

void kh_mem_harden_process(void)
{
	struct rlimit rl = {0, 0};
	(void)setrlimit(RLIMIT_CORE, &rl);
	(void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
}

void *kh_secure_alloc(size_t n)
{
	void *p = secure_heap_on ? OPENSSL_secure_zalloc(n) : OPENSSL_zalloc(n);
	return p;
}

void kh_secure_free(void *p, size_t n)
{
	if (p == NULL)
		return;
	if (secure_heap_on && CRYPTO_secure_allocated(p))
		OPENSSL_secure_clear_free(p, n);
	else
		OPENSSL_clear_free(p, n);
}

void kh_wipe(void *p, size_t n)
{
	if (p && n)
		OPENSSL_cleanse(p, n);
}

bool kh_ct_equal(const void *a, const void *b, size_t n)
{
	return CRYPTO_memcmp(a, b, n) == 0;
}

void kh_hex_encode(const uint8_t *in, size_t n, char *out)
{
	kh_hex_encode_raw(in, n, out);
	out[2 * n] = '\0';
}

void kh_hex_encode_raw(const uint8_t *in, size_t n, char *out)
{
	for (size_t i = 0; i < n; i++) {
		/* branch-free nibble to '0'-'9','A'-'F' */
		unsigned hi = in[i] >> 4, lo = in[i] & 0xf;
		out[2 * i] = (char)(hi + '0' + (((9 - (int)hi) >> 8) & 7));
		out[2 * i + 1] = (char)(lo + '0' + (((9 - (int)lo) >> 8) & 7));
	}
}

/* Returns 0..15 for a hex digit, or -1 (all bits set) otherwise, without
 * branching on the value. */
static int hexval(unsigned char c)
{
	int d = c - '0', u = c - 'A', l = c - 'a';
	int isd = ((d | (9 - d)) >> 8) ^ -1; /* -1 if 0<=d<=9 */
	int isu = ((u | (5 - u)) >> 8) ^ -1;
	int isl = ((l | (5 - l)) >> 8) ^ -1;
	int v = (d & isd) | ((u + 10) & isu) | ((l + 10) & isl);
	int ok = isd | isu | isl;
	return (v & ok) | ~ok;
}

int kh_hex_decode(const char *in, size_t inlen, uint8_t *out, size_t outmax)
{
	if (inlen % 2)
		return KH_ERR_BAD_FIELD;
	if (inlen / 2 > outmax)
		return KH_ERR_TOO_LARGE;
	int bad = 0;
	for (size_t i = 0; i < inlen / 2; i++) {
		int hi = hexval((unsigned char)in[2 * i]);
		int lo = hexval((unsigned char)in[2 * i + 1]);
		bad |= (hi | lo) & 0x100;
		out[i] = (uint8_t)(((unsigned)hi << 4) | ((unsigned)lo & 0xfu));
	}
	if (bad) {
		kh_wipe(out, inlen / 2);
		return KH_ERR_BAD_FIELD;
	}
	return (int)(inlen / 2);
}

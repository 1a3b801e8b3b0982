/*
 * Secret-memory helpers. Everything that holds a key or password goes
 * through kh_secure_alloc/kh_secure_free so that it is wiped on release.
 */
#include "common/kh_mem.h"

#include <openssl/crypto.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#define KH_HEX_SSE2 1
#endif

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

/*
 * The hex codec carries key material, passwords and bulk data alike, so
 * neither direction branches on or indexes by the bytes it converts. With
 * SSE2 it handles 16 bytes (encode) or 16 digits (decode) per step, which
 * matters for bulk requests: a 64 KiB GPSE is 128 KiB of hex each way.
 */
void kh_hex_encode_raw(const uint8_t *in, size_t n, char *out)
{
	size_t i = 0;
#ifdef KH_HEX_SSE2
	const __m128i nib = _mm_set1_epi8(0x0f), nine = _mm_set1_epi8(9),
	              gap = _mm_set1_epi8('A' - '0' - 10), zero = _mm_set1_epi8('0');
	for (; i + 16 <= n; i += 16) {
		__m128i b = _mm_loadu_si128((const __m128i *)(const void *)(in + i));
		__m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), nib), lo = _mm_and_si128(b, nib);
		/* digits in output order: hi0 lo0 hi1 lo1 ... */
		__m128i d0 = _mm_unpacklo_epi8(hi, lo), d1 = _mm_unpackhi_epi8(hi, lo);
		d0 = _mm_add_epi8(_mm_add_epi8(d0, zero),
		                  _mm_and_si128(_mm_cmpgt_epi8(d0, nine), gap));
		d1 = _mm_add_epi8(_mm_add_epi8(d1, zero),
		                  _mm_and_si128(_mm_cmpgt_epi8(d1, nine), gap));
		_mm_storeu_si128((__m128i *)(void *)(out + 2 * i), d0);
		_mm_storeu_si128((__m128i *)(void *)(out + 2 * i + 16), d1);
	}
#endif
	for (; i < n; i++) {
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
	size_t i = 0;
#ifdef KH_HEX_SSE2
	const __m128i zero = _mm_set1_epi8('0'), a = _mm_set1_epi8('a'), fold = _mm_set1_epi8(0x20),
	              nine = _mm_set1_epi8(9), five = _mm_set1_epi8(5), ten = _mm_set1_epi8(10),
	              low = _mm_set1_epi16(0x00ff);
	__m128i badv = _mm_setzero_si128();
	for (; i + 8 <= inlen / 2; i += 8) {
		__m128i v = _mm_loadu_si128((const __m128i *)(const void *)(in + 2 * i));
		/* c - '0' <= 9, or (c | 0x20) - 'a' <= 5 ('A'-'F' and 'a'-'f'
		 * only), both unsigned */
		__m128i d = _mm_sub_epi8(v, zero), l = _mm_sub_epi8(_mm_or_si128(v, fold), a);
		__m128i isd = _mm_cmpeq_epi8(_mm_min_epu8(d, nine), d);
		__m128i isl = _mm_cmpeq_epi8(_mm_min_epu8(l, five), l);
		__m128i val =
		    _mm_or_si128(_mm_and_si128(d, isd), _mm_and_si128(_mm_add_epi8(l, ten), isl));
		badv =
		    _mm_or_si128(badv, _mm_cmpeq_epi8(_mm_or_si128(isd, isl), _mm_setzero_si128()));
		/* 16-bit lanes hold (lo digit << 8) | hi digit: one byte each */
		__m128i w = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(val, low), 4),
		                         _mm_srli_epi16(val, 8));
		_mm_storel_epi64((__m128i *)(void *)(out + i), _mm_packus_epi16(w, w));
	}
	bad = _mm_movemask_epi8(badv) << 8; /* bit 8 and up, as below */
#endif
	for (; i < inlen / 2; i++) {
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

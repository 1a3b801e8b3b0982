/*
 * libFuzzer target for major-key fragment files (hsm/fragment.h). The first
 * input byte is a mode, the rest is the file. Every input: kh_fragment_parse
 * must accept exactly the documented layout, with every field in bounds and
 * a header that re-encodes to the same bytes. Mode 0x00 also runs the
 * passphrase crypto, which must never accept a file it did not seal.
 *
 * The crypto costs scrypt (N=32768, about 0.3 s a call) four times, so it is
 * done for mode 0x00 only and at most CRYPTO_MAX times per process: a
 * replayed input always gets it, a long run spends seconds, not its time, there.
 * Seeds in corpus/fragment/ were written by kh_fragment_seal with PASS and
 * the share SHARE_BYTE ^ i (a one-off program, not kept): "*.open" files open.
 */
#include "hsm/fragment.h"
#include "common/kh_err.h"
#include "common/kh_mem.h"

#include "fuzz_check.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PASS "keyhold-fuzz-passphrase"
#define SHARE_BYTE 0xA5
#define SHARE_MAX 32 /* kh_fragment_open writes into at least this much */
#define CRYPTO_MAX 4

static bool is_uhex(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F');
}

/* The layout of fragment.h, written independently of fragment.c. */
static size_t ref_header(const struct kh_fragment_hdr *h, uint8_t *out)
{
	size_t off = 0, l;

	memcpy(out, "KHF1", 4);
	off = 4;
	out[off++] = (uint8_t)h->version;
	l = strlen(h->name);
	out[off++] = (uint8_t)l;
	memcpy(out + off, h->name, l);
	off += l;
	l = strlen(h->alg);
	out[off++] = (uint8_t)l;
	memcpy(out + off, h->alg, l);
	off += l;
	out[off++] = (uint8_t)(h->bits >> 8);
	out[off++] = (uint8_t)h->bits;
	out[off++] = (uint8_t)h->m;
	out[off++] = (uint8_t)h->n;
	out[off++] = (uint8_t)h->number;
	memcpy(out + off, h->kcv, 6);
	off += 6;
	memcpy(out + off, h->salt, KH_FRAGMENT_SALT_LEN);
	off += KH_FRAGMENT_SALT_LEN;
	memcpy(out + off, h->nonce, KH_FRAGMENT_NONCE_LEN);
	off += KH_FRAGMENT_NONCE_LEN;
	return off;
}

/* Every documented bound of an accepted header, and the file is exactly
 * header || ciphertext || tag. */
static void check_fields(const struct kh_fragment_hdr *h, const uint8_t *p, size_t n)
{
	uint8_t enc[KH_FRAGMENT_MAX_LEN];

	CHECK(n <= KH_FRAGMENT_MAX_LEN);
	CHECK(h->version == KH_FRAGMENT_VERSION);
	CHECK(strcmp(h->name, "FTK") == 0 || strcmp(h->name, "PMK") == 0 ||
	      strcmp(h->name, "BEK") == 0);
	CHECK(strcmp(h->alg, "AES") == 0);
	CHECK(h->bits == 128 || h->bits == 192 || h->bits == 256);
	CHECK(h->m >= 2 && h->m <= h->n && h->n <= KH_FRAGMENT_MAX_PARTS);
	CHECK(h->number >= 1 && h->number <= h->n);
	CHECK(strlen(h->kcv) == 6);
	for (size_t i = 0; i < 6; i++)
		CHECK(is_uhex(h->kcv[i]));
	CHECK(h->ct == p + h->hdrlen);
	CHECK(h->ctlen == h->bits / 8 + KH_FRAGMENT_TAG_LEN);
	CHECK(h->hdrlen + h->ctlen == n);
	CHECK(ref_header(h, enc) == h->hdrlen);
	CHECK(memcmp(enc, p, h->hdrlen) == 0);
}

static bool same_params(const struct kh_fragment_hdr *a, const struct kh_fragment_hdr *b)
{
	return a->version == b->version && strcmp(a->name, b->name) == 0 &&
	       strcmp(a->alg, b->alg) == 0 && a->bits == b->bits && a->m == b->m && a->n == b->n &&
	       a->number == b->number && strcmp(a->kcv, b->kcv) == 0 && a->hdrlen == b->hdrlen;
}

/* Open the input under PASS; seal a known share under the input's
 * parameters and open it again; a changed header byte must not open. */
static void check_crypto(const struct kh_fragment_hdr *h, const uint8_t *p, size_t n)
{
	static const uint8_t pass[] = PASS;
	struct kh_fragment_hdr o;
	uint8_t want[SHARE_MAX], file[KH_FRAGMENT_MAX_LEN];
	uint8_t *share = kh_secure_alloc(SHARE_MAX), *kcv;
	size_t sl = 0, fl = 0, plen = sizeof(pass) - 1;
	int r;

	CHECK(share != NULL);
	for (size_t i = 0; i < sizeof(want); i++)
		want[i] = (uint8_t)(SHARE_BYTE ^ i);

	r = kh_fragment_open(p, n, pass, plen, &o, share, &sl);
	CHECK(r == KH_OK || r == KH_ERR_FRAGMENT_INVALID);
	if (r == KH_OK) {
		/* only our seeds open, and they hold the known share */
		CHECK(same_params(&o, h) && sl == h->bits / 8);
		CHECK(memcmp(share, want, sl) == 0);
	}

	CHECK(kh_fragment_seal(h, want, pass, plen, file, &fl) == KH_OK);
	CHECK(fl == n);
	memset(share, 0, SHARE_MAX);
	sl = 0;
	CHECK(kh_fragment_open(file, fl, pass, plen, &o, share, &sl) == KH_OK);
	CHECK(same_params(&o, h) && sl == h->bits / 8);
	CHECK(memcmp(share, want, sl) == 0);

	/* the header is associated data: another valid KCV must not open */
	kcv = file + h->hdrlen - KH_FRAGMENT_SALT_LEN - KH_FRAGMENT_NONCE_LEN - 6;
	kcv[5] = kcv[5] == '0' ? '1' : '0';
	CHECK(kh_fragment_parse(file, fl, &o) == KH_OK);
	CHECK(kh_fragment_open(file, fl, pass, plen, &o, share, &sl) == KH_ERR_FRAGMENT_INVALID);

	kh_secure_free(share, SHARE_MAX);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static unsigned crypto_runs;
	struct kh_fragment_hdr h, g;
	uint8_t *p;
	size_t n;
	int r;

	if (size == 0)
		return 0;
	/* an exact-size copy, so that a read past the end is reported */
	n = size - 1;
	p = malloc(n ? n : 1);
	if (p == NULL)
		abort();
	memcpy(p, data + 1, n);

	r = kh_fragment_parse(p, n, &h);
	CHECK(r == KH_OK || r == KH_ERR_FRAGMENT_INVALID);
	if (r == KH_OK) {
		check_fields(&h, p, n);
		/* the length is exact: no prefix is a fragment */
		CHECK(kh_fragment_parse(p, n - 1, &g) == KH_ERR_FRAGMENT_INVALID);
		CHECK(kh_fragment_parse(p, h.hdrlen, &g) == KH_ERR_FRAGMENT_INVALID);
		if (data[0] == 0x00 && crypto_runs < CRYPTO_MAX) {
			crypto_runs++;
			check_crypto(&h, p, n);
		}
	}
	free(p);
	return 0;
}

/*
 * Major-key fragment files (the stand-in for a custodian's smart card): one
 * Shamir share of a major key, encrypted under the custodian's passphrase
 * (scrypt, then AES-256-GCM with the header as associated data). The parser
 * is pure and bounds-checked so a fuzz target can call it; nothing here
 * ever returns a share that did not authenticate.
 */
#ifndef KH_FRAGMENT_H
#define KH_FRAGMENT_H

#include <stddef.h>
#include <stdint.h>
#include "common/kh_err.h"

/*
 * Layout (version 1), all integers big-endian:
 *   "KHF1" | version u8 (=1) | name len u8 | name | alg len u8 | alg |
 *   bits u16 | M u8 | N u8 | number u8 | KCV (6 hex digits) | salt[16] |
 *   nonce[12] | ciphertext[bits/8] | tag[16]
 * Everything before the ciphertext is the header and the GCM associated
 * data. The passphrase key is scrypt(N=32768, r=8, p=1, salt) -> 32 bytes.
 */
#define KH_FRAGMENT_VERSION 1
#define KH_FRAGMENT_SALT_LEN 16
#define KH_FRAGMENT_NONCE_LEN 12
#define KH_FRAGMENT_TAG_LEN 16
#define KH_FRAGMENT_MAX_LEN 160 /* bytes of the largest valid file */
#define KH_FRAGMENT_PASS_MIN 8
#define KH_FRAGMENT_PASS_MAX 256
#define KH_FRAGMENT_MAX_PARTS 9

struct kh_fragment_hdr {
	unsigned version;
	char name[8];    /* "FTK", "PMK", "BEK" */
	char alg[8];     /* "AES" */
	unsigned bits;   /* 128, 192, 256 */
	unsigned m, n;   /* threshold and share count, 2 <= m <= n <= 9 */
	unsigned number; /* this share's number (its x coordinate), 1..n */
	char kcv[7];     /* the whole key's check value */
	uint8_t salt[KH_FRAGMENT_SALT_LEN];
	uint8_t nonce[KH_FRAGMENT_NONCE_LEN];
	size_t hdrlen;     /* bytes of header (the associated data) */
	const uint8_t *ct; /* into the parsed bytes: ciphertext || tag */
	size_t ctlen;
};

/* Parse and validate every field and length of a fragment file; does not
 * decrypt. KH_ERR_FRAGMENT_INVALID on any deviation. */
KH_MUST_CHECK int kh_fragment_parse(const uint8_t *p, size_t n, struct kh_fragment_hdr *h);

/* Build a fragment file. h supplies name, alg, bits, m, n, number and kcv
 * (salt and nonce are made here); share is bits/8 bytes. out must hold
 * KH_FRAGMENT_MAX_LEN bytes. */
KH_MUST_CHECK int kh_fragment_seal(const struct kh_fragment_hdr *h, const uint8_t *share,
                                   const uint8_t *pass, size_t passlen, uint8_t *out,
                                   size_t *outlen);

/* Parse and decrypt. share (secure memory, at least 32 bytes) receives
 * bits/8 bytes. A wrong passphrase and a corrupt file look the same:
 * KH_ERR_FRAGMENT_INVALID. */
KH_MUST_CHECK int kh_fragment_open(const uint8_t *p, size_t n, const uint8_t *pass, size_t passlen,
                                   struct kh_fragment_hdr *h, uint8_t *share, size_t *sharelen);

#endif

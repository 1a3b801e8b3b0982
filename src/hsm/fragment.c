/*
 * Fragment files: encoding, strict parsing, and passphrase encryption of one
 * Shamir share. Must never hand out share bytes from a file whose tag did
 * not verify, and never keep a passphrase-derived key outside secure memory.
 */
#include "hsm/fragment.h"
#include "hsm/majorkey.h"
#include "common/kh_buf.h"
#include "common/kh_mem.h"
#include "common/kh_scrypt.h"

#include <string.h>

#include <openssl/rand.h>

#define MAGIC "KHF1"
#define SCRYPT_N 32768
#define SCRYPT_R 8
#define SCRYPT_P 1
#define SCRYPT_MAXMEM (64u * 1024 * 1024)

/* Length-prefixed short text of [A-Z] only, into out (NUL-terminated). */
static void take_name(struct kh_rd *r, char out[static 8])
{
	unsigned l = kh_rd_u8(r);
	const uint8_t *q;
	out[0] = '\0';
	if (l == 0 || l > 7) {
		r->bad = true;
		return;
	}
	if ((q = kh_rd_take(r, l)) == NULL)
		return;
	for (unsigned i = 0; i < l; i++) {
		if (q[i] < 'A' || q[i] > 'Z') {
			r->bad = true;
			return;
		}
		out[i] = (char)q[i];
	}
	out[l] = '\0';
}

static bool is_uhex(uint8_t c)
{
	return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F');
}

int kh_fragment_parse(const uint8_t *p, size_t n, struct kh_fragment_hdr *h)
{
	struct kh_rd r = {.p = p, .n = n};
	const uint8_t *q;

	memset(h, 0, sizeof(*h));
	if (p == NULL || n > KH_FRAGMENT_MAX_LEN)
		return KH_ERR_FRAGMENT_INVALID;
	if ((q = kh_rd_take(&r, 4)) == NULL || memcmp(q, MAGIC, 4) != 0)
		return KH_ERR_FRAGMENT_INVALID;
	h->version = kh_rd_u8(&r);
	take_name(&r, h->name);
	take_name(&r, h->alg);
	h->bits = kh_rd_u16(&r);
	h->m = kh_rd_u8(&r);
	h->n = kh_rd_u8(&r);
	h->number = kh_rd_u8(&r);
	if ((q = kh_rd_take(&r, 6)) != NULL) {
		for (int i = 0; i < 6; i++) {
			if (!is_uhex(q[i]))
				r.bad = true;
			h->kcv[i] = (char)q[i];
		}
		h->kcv[6] = '\0';
	}
	if ((q = kh_rd_take(&r, KH_FRAGMENT_SALT_LEN)) != NULL)
		memcpy(h->salt, q, KH_FRAGMENT_SALT_LEN);
	if ((q = kh_rd_take(&r, KH_FRAGMENT_NONCE_LEN)) != NULL)
		memcpy(h->nonce, q, KH_FRAGMENT_NONCE_LEN);
	if (r.bad)
		return KH_ERR_FRAGMENT_INVALID;
	h->hdrlen = r.off;

	if (h->version != KH_FRAGMENT_VERSION)
		return KH_ERR_FRAGMENT_INVALID;
	if (strcmp(h->name, "FTK") != 0 && strcmp(h->name, "PMK") != 0 &&
	    strcmp(h->name, "BEK") != 0)
		return KH_ERR_FRAGMENT_INVALID;
	if (strcmp(h->alg, "AES") != 0)
		return KH_ERR_FRAGMENT_INVALID;
	if (h->bits != 128 && h->bits != 192 && h->bits != 256)
		return KH_ERR_FRAGMENT_INVALID;
	if (h->m < 2 || h->m > h->n || h->n > KH_FRAGMENT_MAX_PARTS || h->number < 1 ||
	    h->number > h->n)
		return KH_ERR_FRAGMENT_INVALID;
	/* the rest is exactly one share and its tag */
	if (n - r.off != h->bits / 8 + KH_FRAGMENT_TAG_LEN)
		return KH_ERR_FRAGMENT_INVALID;
	h->ct = p + r.off;
	h->ctlen = n - r.off;
	return KH_OK;
}

static int scrypt_key(const uint8_t *pass, size_t passlen, const uint8_t salt[static 16],
                      uint8_t out[static 32])
{
	static const struct kh_scrypt_params k = {.N = SCRYPT_N, .r = SCRYPT_R, .p = SCRYPT_P};
	return kh_scrypt(pass, passlen, salt, KH_FRAGMENT_SALT_LEN, &k, SCRYPT_MAXMEM, out, 32);
}

static void put_name(uint8_t *out, size_t *off, const char *s)
{
	size_t l = strlen(s);
	out[(*off)++] = (uint8_t)l;
	memcpy(out + *off, s, l);
	*off += l;
}

int kh_fragment_seal(const struct kh_fragment_hdr *h, const uint8_t *share, const uint8_t *pass,
                     size_t passlen, uint8_t *out, size_t *outlen)
{
	struct kh_fragment_hdr chk;
	uint8_t *key = NULL;
	size_t off = 0, sharelen = h->bits / 8;
	int r;

	if (passlen < KH_FRAGMENT_PASS_MIN || passlen > KH_FRAGMENT_PASS_MAX)
		return KH_ERR_BAD_FIELD;
	if (strlen(h->name) < 1 || strlen(h->name) > 7 || strlen(h->alg) < 1 ||
	    strlen(h->alg) > 7 || strlen(h->kcv) != 6 || sharelen > KH_MK_MAX_LEN)
		return KH_ERR_INTERNAL;
	memcpy(out, MAGIC, 4);
	off = 4;
	out[off++] = KH_FRAGMENT_VERSION;
	put_name(out, &off, h->name);
	put_name(out, &off, h->alg);
	out[off++] = (uint8_t)(h->bits >> 8);
	out[off++] = (uint8_t)h->bits;
	out[off++] = (uint8_t)h->m;
	out[off++] = (uint8_t)h->n;
	out[off++] = (uint8_t)h->number;
	memcpy(out + off, h->kcv, 6);
	off += 6;
	if (RAND_bytes(out + off, KH_FRAGMENT_SALT_LEN + KH_FRAGMENT_NONCE_LEN) != 1)
		return KH_ERR_CRYPTO;
	off += KH_FRAGMENT_SALT_LEN + KH_FRAGMENT_NONCE_LEN;
	if (off + sharelen + KH_FRAGMENT_TAG_LEN > KH_FRAGMENT_MAX_LEN)
		return KH_ERR_INTERNAL;
	if ((key = kh_secure_alloc(32)) == NULL)
		return KH_ERR_NOMEM;
	if ((r = scrypt_key(pass, passlen, out + off - KH_FRAGMENT_SALT_LEN - KH_FRAGMENT_NONCE_LEN,
	                    key)) != KH_OK)
		goto out;
	if ((r = kh_mk_gcm_seal(key, out + off - KH_FRAGMENT_NONCE_LEN, out, off, share, sharelen,
	                        out + off)) != KH_OK)
		goto out;
	*outlen = off + sharelen + KH_FRAGMENT_TAG_LEN;
	/* what we write must be what we accept */
	r = kh_fragment_parse(out, *outlen, &chk) == KH_OK ? KH_OK : KH_ERR_INTERNAL;
out:
	kh_secure_free(key, 32);
	return r;
}

int kh_fragment_open(const uint8_t *p, size_t n, const uint8_t *pass, size_t passlen,
                     struct kh_fragment_hdr *h, uint8_t *share, size_t *sharelen)
{
	uint8_t *key = NULL;
	int r;

	if ((r = kh_fragment_parse(p, n, h)) != KH_OK)
		return r;
	if (passlen < 1 || passlen > KH_FRAGMENT_PASS_MAX)
		return KH_ERR_FRAGMENT_INVALID;
	if ((key = kh_secure_alloc(32)) == NULL)
		return KH_ERR_NOMEM;
	if ((r = scrypt_key(pass, passlen, h->salt, key)) != KH_OK)
		goto out;
	if (kh_mk_gcm_open(key, h->nonce, p, h->hdrlen, h->ct, h->ctlen, share) != KH_OK) {
		r = KH_ERR_FRAGMENT_INVALID;
		goto out;
	}
	*sharelen = h->bits / 8;
	r = KH_OK;
out:
	kh_secure_free(key, 32);
	return r;
}

/*
 * The replicated form of a key-table row and the table check value. A row
 * travels exactly as it is stored: wrapped under its major key with its
 * bound columns as associated data, so only a member holding that major
 * key can use it, and any edit on the way makes it refused (KTIM opens it
 * before it stores it). This file never unwraps anything.
 */
#include "hsm/replica.h"
#include "hsm/majorkey.h"
#include "common/kh_buf.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#define KTCK_LABEL "keyhold ktck v1"

static bool name_ok(const char *s, size_t n)
{
	if (n == 0 || n >= KH_KS_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '-' || c == '.'))
			return false;
	}
	return true;
}

size_t kh_ktrow_len(const struct kh_key_row *row)
{
	size_t cl = strnlen(row->cls, KH_KS_NAME_MAX), tl = strnlen(row->ktype, KH_KS_NAME_MAX);
	if ((row->major != KH_MK_FTK && row->major != KH_MK_PMK) || !name_ok(row->cls, cl) ||
	    !name_ok(row->ktype, tl) || row->slot > KH_SLOT_MAX || row->bits > KH_KS_BITS_MAX ||
	    row->attrs_len > KH_KS_ATTRS_MAX ||
	    row->wrapped_len > KH_KS_MATERIAL_MAX + KH_MK_SEAL_OVERHEAD ||
	    row->label_len > KH_KS_DESC_MAX || row->ckaid_len > KH_KS_DESC_MAX ||
	    row->extra_len > KH_KS_DESC_MAX)
		return 0;
	return 1 + 4 + KH_KEY_ID_LEN + 1 + strlen(kh_mk_name(row->major)) + 1 + cl + 1 + tl + 4 +
	       8 + 2 + row->attrs_len + 2 + row->wrapped_len + 4 + row->label_len + 4 +
	       row->ckaid_len + 4 + row->extra_len;
}

static uint8_t *put_be(uint8_t *p, uint64_t v, int bytes)
{
	for (int i = bytes - 1; i >= 0; i--)
		*p++ = (uint8_t)(v >> (8 * i));
	return p;
}

static uint8_t *put_lp(uint8_t *p, int bytes, const void *d, size_t n)
{
	p = put_be(p, n, bytes);
	if (n)
		memcpy(p, d, n);
	return p + n;
}

void kh_ktrow_encode(const struct kh_key_row *row, uint8_t *out)
{
	const char *major = kh_mk_name(row->major);
	uint8_t *p = out;
	*p++ = KH_KTROW_VERSION;
	p = put_be(p, row->slot, 4);
	memcpy(p, row->key_id, KH_KEY_ID_LEN);
	p += KH_KEY_ID_LEN;
	p = put_lp(p, 1, major, strlen(major));
	p = put_lp(p, 1, row->cls, strlen(row->cls));
	p = put_lp(p, 1, row->ktype, strlen(row->ktype));
	p = put_be(p, row->bits, 4);
	p = put_be(p, (uint64_t)row->created, 8);
	p = put_lp(p, 2, row->attrs, row->attrs_len);
	p = put_lp(p, 2, row->wrapped, row->wrapped_len);
	p = put_lp(p, 4, row->label, row->label_len);
	p = put_lp(p, 4, row->ckaid, row->ckaid_len);
	(void)put_lp(p, 4, row->extra, row->extra_len);
}

/* Length-prefixed bytes of at most max (NULL when empty or bad). */
static const uint8_t *get_lp(struct kh_rd *r, int bytes, size_t max, size_t *len)
{
	size_t n = bytes == 1 ? kh_rd_u8(r) : bytes == 2 ? kh_rd_u16(r) : kh_rd_u32(r);
	*len = 0;
	if (r->bad || n > max) {
		r->bad = true;
		return NULL;
	}
	*len = n;
	return n ? kh_rd_take(r, n) : NULL;
}

static void get_name(struct kh_rd *r, char out[static KH_KS_NAME_MAX])
{
	size_t n = 0;
	const uint8_t *s = get_lp(r, 1, KH_KS_NAME_MAX - 1, &n);
	out[0] = '\0';
	if (r->bad || s == NULL || !name_ok((const char *)s, n)) {
		r->bad = true;
		return;
	}
	memcpy(out, s, n);
	out[n] = '\0';
}

int kh_ktrow_decode(const uint8_t *p, size_t n, struct kh_key_row *out)
{
	struct kh_rd r = {.p = p, .n = n};
	const uint8_t *id;
	char major[KH_KS_NAME_MAX];
	uint64_t hi, lo;

	memset(out, 0, sizeof(*out));
	if (p == NULL || kh_rd_u8(&r) != KH_KTROW_VERSION)
		return KH_ERR_BAD_FIELD;
	out->slot = kh_rd_u32(&r);
	if ((id = kh_rd_take(&r, KH_KEY_ID_LEN)) != NULL)
		memcpy(out->key_id, id, KH_KEY_ID_LEN);
	get_name(&r, major);
	get_name(&r, out->cls);
	get_name(&r, out->ktype);
	out->bits = kh_rd_u32(&r);
	hi = kh_rd_u32(&r);
	lo = kh_rd_u32(&r);
	out->created = (int64_t)(hi << 32 | lo);
	out->attrs = (uint8_t *)(uintptr_t)get_lp(&r, 2, KH_KS_ATTRS_MAX, &out->attrs_len);
	out->wrapped = (uint8_t *)(uintptr_t)get_lp(&r, 2, KH_KS_MATERIAL_MAX + KH_MK_SEAL_OVERHEAD,
	                                            &out->wrapped_len);
	out->label = (uint8_t *)(uintptr_t)get_lp(&r, 4, KH_KS_DESC_MAX, &out->label_len);
	out->ckaid = (uint8_t *)(uintptr_t)get_lp(&r, 4, KH_KS_DESC_MAX, &out->ckaid_len);
	out->extra = (uint8_t *)(uintptr_t)get_lp(&r, 4, KH_KS_DESC_MAX, &out->extra_len);
	if (r.bad || r.off != r.n || out->slot > KH_SLOT_MAX || out->bits > KH_KS_BITS_MAX ||
	    out->wrapped_len <= KH_MK_SEAL_OVERHEAD || out->created <= 0 ||
	    kh_mk_id_parse(major, &out->major) != KH_OK ||
	    (out->major != KH_MK_FTK && out->major != KH_MK_PMK)) {
		memset(out, 0, sizeof(*out));
		return KH_ERR_BAD_FIELD;
	}
	return KH_OK;
}

struct ktck_ctx {
	EVP_MD_CTX *md;
	uint8_t *buf;
	size_t cap;
	uint64_t count;
	int err;
};

static int ktck_row(void *arg, const struct kh_key_row *row)
{
	struct ktck_ctx *k = arg;
	size_t n = kh_ktrow_len(row);
	uint8_t len[4];
	if (n == 0)
		return KH_ERR_STORAGE; /* the database holds what a row cannot */
	if (n > k->cap)
		return KH_ERR_INTERNAL;
	kh_ktrow_encode(row, k->buf);
	put_be(len, n, 4);
	if (EVP_DigestUpdate(k->md, len, 4) != 1 || EVP_DigestUpdate(k->md, k->buf, n) != 1)
		return KH_ERR_CRYPTO;
	k->count++;
	return KH_OK;
}

int kh_ktck(struct kh_hsm *hsm, uint32_t lo, uint32_t hi, uint8_t out[static KH_KTCK_LEN],
            uint64_t *count)
{
	struct ktck_ctx k = {0};
	uint8_t cnt[8];
	unsigned int mdlen = 0;
	int r;

	*count = 0;
	if (lo > hi || hi > KH_SLOT_MAX)
		return KH_ERR_BAD_FIELD;
	k.cap = KH_KTROW_MAX;
	if ((k.md = EVP_MD_CTX_new()) == NULL || (k.buf = malloc(k.cap)) == NULL) {
		r = KH_ERR_NOMEM;
		goto out;
	}
	if (EVP_DigestInit_ex(k.md, EVP_sha256(), NULL) != 1 ||
	    EVP_DigestUpdate(k.md, KTCK_LABEL, strlen(KTCK_LABEL)) != 1) {
		r = KH_ERR_CRYPTO;
		goto out;
	}
	if ((r = kh_keystore_walk(hsm, lo, hi, ktck_row, &k)) != KH_OK)
		goto out;
	put_be(cnt, k.count, 8);
	if (EVP_DigestUpdate(k.md, cnt, 8) != 1 || EVP_DigestFinal_ex(k.md, out, &mdlen) != 1 ||
	    mdlen != KH_KTCK_LEN) {
		r = KH_ERR_CRYPTO;
		goto out;
	}
	*count = k.count;
out:
	EVP_MD_CTX_free(k.md);
	free(k.buf);
	return r;
}

/*
 * Small pieces every module file uses: the handle map, the HSM's usage and
 * flag letters, and copying hex fields out of responses.
 */
#include <stdlib.h>
#include <string.h>

#include "pkcs11/p11.h"
#include "pkcs11/p11_internal.h"
#include "common/kh_mem.h"

#define HM_DELETED UINT64_MAX

static size_t hm_slot(uint64_t key, size_t cap)
{
	key ^= key >> 33;
	key *= 0xff51afd7ed558ccdULL;
	key ^= key >> 33;
	return (size_t)key & (cap - 1);
}

static int hm_grow(struct p11_hmap *m)
{
	size_t ncap = m->cap ? m->cap * 2 : 64;
	if (m->cap && m->n * 4 < m->cap)
		ncap = m->cap; /* mostly tombstones: rehash at the same size */
	uint64_t *nk = calloc(ncap, sizeof(*nk));
	void **nv = calloc(ncap, sizeof(*nv));
	if (!nk || !nv) {
		free(nk);
		free(nv);
		return KH_ERR_NOMEM;
	}
	for (size_t i = 0; i < m->cap; i++) {
		uint64_t k = m->keys[i];
		if (k == 0 || k == HM_DELETED)
			continue;
		size_t j = hm_slot(k, ncap);
		while (nk[j])
			j = (j + 1) & (ncap - 1);
		nk[j] = k;
		nv[j] = m->vals[i];
	}
	free(m->keys);
	free(m->vals);
	m->keys = nk;
	m->vals = nv;
	m->cap = ncap;
	m->used = m->n;
	return KH_OK;
}

int p11_hmap_put(struct p11_hmap *m, uint64_t key, void *val)
{
	if (key == 0 || key == HM_DELETED)
		return KH_ERR_INTERNAL;
	if ((m->used + 1) * 4 >= m->cap * 3) {
		int r = hm_grow(m);
		if (r != KH_OK)
			return r;
	}
	size_t j = hm_slot(key, m->cap), tomb = SIZE_MAX;
	while (m->keys[j]) {
		if (m->keys[j] == key) {
			m->vals[j] = val;
			return KH_OK;
		}
		if (m->keys[j] == HM_DELETED && tomb == SIZE_MAX)
			tomb = j;
		j = (j + 1) & (m->cap - 1);
	}
	if (tomb != SIZE_MAX)
		j = tomb;
	else
		m->used++;
	m->keys[j] = key;
	m->vals[j] = val;
	m->n++;
	return KH_OK;
}

static size_t hm_find(const struct p11_hmap *m, uint64_t key)
{
	if (!m->cap || key == 0 || key == HM_DELETED)
		return SIZE_MAX;
	size_t j = hm_slot(key, m->cap);
	while (m->keys[j]) {
		if (m->keys[j] == key)
			return j;
		j = (j + 1) & (m->cap - 1);
	}
	return SIZE_MAX;
}

void *p11_hmap_get(const struct p11_hmap *m, uint64_t key)
{
	size_t j = hm_find(m, key);
	return j == SIZE_MAX ? NULL : m->vals[j];
}

void *p11_hmap_del(struct p11_hmap *m, uint64_t key)
{
	size_t j = hm_find(m, key);
	if (j == SIZE_MAX)
		return NULL;
	void *v = m->vals[j];
	m->keys[j] = HM_DELETED;
	m->vals[j] = NULL;
	m->n--;
	return v;
}

bool p11_hmap_next(const struct p11_hmap *m, size_t *it, uint64_t *key, void **val)
{
	while (*it < m->cap) {
		size_t j = (*it)++;
		if (m->keys[j] && m->keys[j] != HM_DELETED) {
			*key = m->keys[j];
			*val = m->vals[j];
			return true;
		}
	}
	return false;
}

void p11_hmap_free(struct p11_hmap *m)
{
	free(m->keys);
	free(m->vals);
	memset(m, 0, sizeof(*m));
}

static const char usage_chars[] = "EDGVWUX";
static const char flag_chars[] = "XSAMLNY";

static void letters(unsigned bits, const char *chars, char out[8])
{
	size_t n = 0;
	for (size_t i = 0; chars[i]; i++)
		if (bits & (1u << i))
			out[n++] = chars[i];
	out[n] = 0;
}

static bool parse_letters(const char *s, size_t n, const char *chars, unsigned *out)
{
	unsigned v = 0;
	for (size_t i = 0; i < n; i++) {
		const char *p = memchr(chars, s[i], strlen(chars));
		if (!p)
			return false;
		v |= 1u << (p - chars);
	}
	*out = v;
	return true;
}

void p11_usage_letters(unsigned usage, char out[8])
{
	letters(usage, usage_chars, out);
}

void p11_flag_letters(unsigned flags, char out[8])
{
	letters(flags, flag_chars, out);
}

bool p11_usage_parse(const char *s, size_t n, unsigned *out)
{
	return parse_letters(s, n, usage_chars, out);
}

bool p11_flag_parse(const char *s, size_t n, unsigned *out)
{
	return parse_letters(s, n, flag_chars, out);
}

int p11_field_bytes(const struct kh_frame *f, const char *tag, uint8_t **out, size_t *len)
{
	const struct kh_field *fl = kh_frame_get(f, tag);
	*out = NULL;
	*len = 0;
	if (!fl)
		return KH_ERR_MISSING_FIELD;
	if (fl->len % 2)
		return KH_ERR_BAD_FIELD;
	size_t n = fl->len / 2;
	uint8_t *b = malloc(n ? n : 1);
	if (!b)
		return KH_ERR_NOMEM;
	int r = kh_hex_decode(fl->val, fl->len, b, n);
	if (r < 0) {
		free(b);
		return KH_ERR_BAD_FIELD;
	}
	*out = b;
	*len = n;
	return KH_OK;
}

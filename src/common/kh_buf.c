/*
 * Bounded, self-wiping buffer. Storage is plain heap memory (the secure heap
 * is too small for per-connection buffers) but it is cleansed whenever bytes
 * leave the buffer's live region or the storage is released or moved. The
 * reader (kh_rd) only ever hands out pointers inside the bytes it was given.
 */
#include "common/kh_buf.h"
#include "common/kh_mem.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KH_BUF_MAGIC 0x6b686266u

struct kh_buf {
	uint32_t magic;
	uint8_t *d;
	size_t off;   /* start of live data */
	size_t len;   /* live bytes */
	size_t alloc;
	size_t max;
};

static void check(const struct kh_buf *b)
{
	if (b == NULL || b->magic != KH_BUF_MAGIC || b->off + b->len > b->alloc || b->len > b->max)
		abort(); /* corrupted internals: do not limp on */
}

struct kh_buf *kh_buf_new(size_t max)
{
	struct kh_buf *b = calloc(1, sizeof(*b));
	if (b == NULL)
		return NULL;
	b->magic = KH_BUF_MAGIC;
	b->max = max;
	return b;
}

void kh_buf_free(struct kh_buf *b)
{
	if (b == NULL)
		return;
	check(b);
	if (b->d) {
		kh_wipe(b->d, b->alloc);
		free(b->d);
	}
	kh_wipe(b, sizeof(*b));
	free(b);
}

void kh_buf_reset(struct kh_buf *b)
{
	check(b);
	if (b->d)
		kh_wipe(b->d, b->off + b->len);
	b->off = b->len = 0;
}

size_t kh_buf_len(const struct kh_buf *b)
{
	check(b);
	return b->len;
}

size_t kh_buf_max(const struct kh_buf *b)
{
	check(b);
	return b->max;
}

void kh_buf_set_max(struct kh_buf *b, size_t max)
{
	check(b);
	b->max = max < b->len ? b->len : max;
}

const uint8_t *kh_buf_ptr(const struct kh_buf *b)
{
	check(b);
	return b->d ? b->d + b->off : (const uint8_t *)"";
}

void kh_buf_consume(struct kh_buf *b, size_t n)
{
	check(b);
	if (n > b->len)
		abort();
	kh_wipe(b->d + b->off, n);
	b->off += n;
	b->len -= n;
	if (b->len == 0)
		b->off = 0;
}

void kh_buf_truncate(struct kh_buf *b, size_t len)
{
	check(b);
	if (len > b->len)
		abort();
	if (len < b->len) /* (a buffer never written to has no memory yet) */
		kh_wipe(b->d + b->off + len, b->len - len);
	b->len = len;
}

int kh_buf_reserve(struct kh_buf *b, size_t n, uint8_t **p)
{
	check(b);
	if (n > b->max - b->len)
		return KH_ERR_TOO_LARGE;
	if (b->off + b->len + n > b->alloc) {
		if (b->len + n <= b->alloc && b->off > 0) {
			/* slide live data to the front and wipe the tail it left */
			memmove(b->d, b->d + b->off, b->len);
			kh_wipe(b->d + b->len, b->off);
			b->off = 0;
		} else {
			size_t want = b->alloc ? b->alloc : 256;
			while (want < b->len + n)
				want *= 2;
			if (want > b->max)
				want = b->max;
			/* never realloc: it could leave an unwiped copy behind */
			uint8_t *nd = malloc(want);
			if (nd == NULL)
				return KH_ERR_NOMEM;
			if (b->d) {
				memcpy(nd, b->d + b->off, b->len);
				kh_wipe(b->d, b->alloc);
				free(b->d);
			}
			b->d = nd;
			b->alloc = want;
			b->off = 0;
		}
	}
	*p = b->d + b->off + b->len;
	return KH_OK;
}

void kh_buf_commit(struct kh_buf *b, size_t n)
{
	check(b);
	if (b->off + b->len + n > b->alloc || b->len + n > b->max)
		abort();
	b->len += n;
}

int kh_buf_put(struct kh_buf *b, const void *data, size_t n)
{
	uint8_t *p;
	int r;
	if (n == 0)
		return KH_OK;
	if ((r = kh_buf_reserve(b, n, &p)) != KH_OK)
		return r;
	memcpy(p, data, n);
	kh_buf_commit(b, n);
	return KH_OK;
}

int kh_buf_put_str(struct kh_buf *b, const char *s)
{
	return kh_buf_put(b, s, strlen(s));
}

int kh_buf_putf(struct kh_buf *b, const char *fmt, ...)
{
	char tmp[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(tmp))
		return KH_ERR_TOO_LARGE;
	int r = kh_buf_put(b, tmp, (size_t)n);
	kh_wipe(tmp, (size_t)n);
	return r;
}

int kh_buf_put_hex(struct kh_buf *b, const uint8_t *data, size_t n)
{
	uint8_t *p;
	int r;
	if (n > SIZE_MAX / 2)
		return KH_ERR_TOO_LARGE;
	if ((r = kh_buf_reserve(b, 2 * n, &p)) != KH_OK)
		return r;
	kh_hex_encode_raw(data, n, (char *)p);
	kh_buf_commit(b, 2 * n);
	return KH_OK;
}

long kh_buf_find(const struct kh_buf *b, size_t from, uint8_t c)
{
	check(b);
	if (from >= b->len)
		return -1;
	const uint8_t *s = memchr(b->d + b->off + from, c, b->len - from);
	return s ? (long)(s - (b->d + b->off)) : -1;
}

const uint8_t *kh_rd_take(struct kh_rd *r, size_t k)
{
	if (r->bad || r->n - r->off < k) {
		r->bad = true;
		return NULL;
	}
	const uint8_t *q = r->p + r->off;
	r->off += k;
	return q;
}

unsigned kh_rd_u8(struct kh_rd *r)
{
	const uint8_t *q = kh_rd_take(r, 1);
	return q ? q[0] : 0;
}

unsigned kh_rd_u16(struct kh_rd *r)
{
	const uint8_t *q = kh_rd_take(r, 2);
	return q ? ((unsigned)q[0] << 8) | q[1] : 0;
}

uint32_t kh_rd_u32(struct kh_rd *r)
{
	const uint8_t *q = kh_rd_take(r, 4);
	return q ? ((uint32_t)q[0] << 24) | ((uint32_t)q[1] << 16) | ((uint32_t)q[2] << 8) | q[3]
	         : 0;
}

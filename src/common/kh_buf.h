/*
 * A bounded byte buffer for network data and messages, and a bounded reader
 * over untrusted bytes. The buffer never grows past its ceiling, wipes memory
 * before every release or reallocation (a frame can hold a password or a key
 * component), and aborts on corrupted internals; the reader never reads past
 * its end.
 * All str and mem work on network bytes happens here or in kh_frame.
 */
#ifndef KH_BUF_H
#define KH_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "common/kh_err.h"

struct kh_buf;

struct kh_buf *kh_buf_new(size_t max);          /* NULL on allocation failure */
void kh_buf_free(struct kh_buf *b);             /* wipes; NULL ok */
void kh_buf_reset(struct kh_buf *b);            /* wipes contents, keeps memory */
size_t kh_buf_len(const struct kh_buf *b);
size_t kh_buf_max(const struct kh_buf *b);
void kh_buf_set_max(struct kh_buf *b, size_t max); /* never below current length */
const uint8_t *kh_buf_ptr(const struct kh_buf *b);
/* Drop n bytes from the front (wiping them). */
void kh_buf_consume(struct kh_buf *b, size_t n);
/* Drop bytes from the end so that len bytes remain (wiping them). */
void kh_buf_truncate(struct kh_buf *b, size_t len);
/* Reserve n writable bytes at the end; *p points at them. Call kh_buf_commit
 * with the number actually written. */
KH_MUST_CHECK int kh_buf_reserve(struct kh_buf *b, size_t n, uint8_t **p);
void kh_buf_commit(struct kh_buf *b, size_t n);
KH_MUST_CHECK int kh_buf_put(struct kh_buf *b, const void *data, size_t n);
KH_MUST_CHECK int kh_buf_put_str(struct kh_buf *b, const char *s);
KH_MUST_CHECK int kh_buf_putf(struct kh_buf *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Uppercase hex of data. */
KH_MUST_CHECK int kh_buf_put_hex(struct kh_buf *b, const uint8_t *data, size_t n);
/* Index of the first byte c at or after 'from', or -1. */
long kh_buf_find(const struct kh_buf *b, size_t from, uint8_t c);

/* A bounded reader over untrusted bytes (a backup, a fragment file): every
 * take checks the remainder; once one fails, bad stays set and every later
 * take fails too, so a parser may check once at the end. Start it as
 * {.p = data, .n = len}. */
struct kh_rd {
	const uint8_t *p;
	size_t n, off;
	bool bad;
};
/* The next k bytes, or NULL (and bad) when fewer remain. */
const uint8_t *kh_rd_take(struct kh_rd *r, size_t k);
/* Big-endian integers; 0 when short. */
unsigned kh_rd_u8(struct kh_rd *r);
unsigned kh_rd_u16(struct kh_rd *r);
uint32_t kh_rd_u32(struct kh_rd *r);

#endif

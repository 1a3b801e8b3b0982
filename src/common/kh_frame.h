/*
 * The Excrypt codec: "[AO" + 4-char command + ";" + fields "TGvalue;" + "]".
 * Parsing is zero-copy over the caller's bytes and reads like the schema;
 * accessors copy values out with explicit bounds. Nothing here allocates
 * except kh_frame_hex_secure, whose result lives on the secure heap.
 */
#ifndef KH_FRAME_H
#define KH_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "common/kh_err.h"

struct kh_buf;

#define KH_FRAME_MAX (8u * 1024 * 1024)   /* hard ceiling, any connection */
#define KH_FRAME_MAX_PRELOGIN 4096u       /* before any identity logged in */
#define KH_FIELDS_MAX 64u
#define KH_FIELDS_MAX_PRELOGIN 16u

struct kh_field {
	char tag[3];
	const char *val; /* not NUL-terminated; points into the parsed bytes */
	size_t len;
};

struct kh_frame {
	char cmd[5];
	size_t nfields;
	struct kh_field fields[KH_FIELDS_MAX];
};

/* Look for a complete frame at the start of buf[0..len). Returns 1 and sets
 * *frame_len when one is there, 0 when more bytes are needed, or a kh_err
 * (KH_ERR_MALFORMED if the data does not start with '[', KH_ERR_TOO_LARGE if
 * no frame ends within max bytes). */
int kh_frame_find(const uint8_t *buf, size_t len, size_t max, size_t *frame_len);

/* Parse exactly one frame. On failure f->cmd holds the command name when the
 * header could be read ("" otherwise). */
KH_MUST_CHECK int kh_frame_parse(const uint8_t *p, size_t n, size_t max_fields,
				 struct kh_frame *f);

const struct kh_field *kh_frame_get(const struct kh_frame *f, const char *tag);
bool kh_frame_has(const struct kh_frame *f, const char *tag);
/* Text value into out (NUL-terminated). Missing -> KH_ERR_MISSING_FIELD,
 * too long -> KH_ERR_BAD_FIELD. */
KH_MUST_CHECK int kh_frame_str(const struct kh_frame *f, const char *tag, char *out, size_t outsz);
/* Decimal unsigned value within [min, max]. */
KH_MUST_CHECK int kh_frame_u64(const struct kh_frame *f, const char *tag, uint64_t min,
			       uint64_t max, uint64_t *v);
/* Y or N. */
KH_MUST_CHECK int kh_frame_yn(const struct kh_frame *f, const char *tag, bool *v);
/* Hex value into out; *outlen gets the byte count. */
KH_MUST_CHECK int kh_frame_hex(const struct kh_frame *f, const char *tag, uint8_t *out,
			       size_t outmax, size_t *outlen);
/* Hex value into a fresh secure-heap buffer (free with kh_secure_free(*out, *outlen)). */
KH_MUST_CHECK int kh_frame_hex_secure(const struct kh_frame *f, const char *tag, size_t maxlen,
				      uint8_t **out, size_t *outlen);

/* Message building (requests and responses alike). Text values must not hold
 * ';', '[', ']' or control bytes: kh_msg_put refuses them (use hex). */
KH_MUST_CHECK int kh_msg_begin(struct kh_buf *b, const char *cmd);
KH_MUST_CHECK int kh_msg_put(struct kh_buf *b, const char *tag, const char *val);
KH_MUST_CHECK int kh_msg_putn(struct kh_buf *b, const char *tag, const char *val, size_t n);
KH_MUST_CHECK int kh_msg_put_u64(struct kh_buf *b, const char *tag, uint64_t v);
KH_MUST_CHECK int kh_msg_put_hex(struct kh_buf *b, const char *tag, const uint8_t *d, size_t n);
KH_MUST_CHECK int kh_msg_end(struct kh_buf *b);
/* The one error response: [AOERRO;CM<cmd>;EC<code>;ET<text>;]. cmd may be ""
 * when the request could not be parsed; detail (may be NULL) is appended to
 * the text after ": " with unsafe bytes replaced. */
KH_MUST_CHECK int kh_msg_error(struct kh_buf *b, const char *cmd, int err, const char *detail);

/* True if every byte of s[0..n) may stand in a text value. */
bool kh_frame_text_ok(const char *s, size_t n);

#endif

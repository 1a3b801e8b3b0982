/*
 * Excrypt frame codec. Input is hostile: every length is checked against
 * the caller's limits before use, and a frame is either parsed whole or
 * rejected whole.
 */
#include "common/kh_frame.h"
#include "common/kh_buf.h"
#include "common/kh_mem.h"

#include <stdio.h>
#include <string.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

static bool is_upper(uint8_t c)
{
	return c >= 'A' && c <= 'Z';
}

static bool is_cmdch(uint8_t c)
{
	return is_upper(c) || (c >= '0' && c <= '9');
}

static bool is_valch(uint8_t c)
{
	return c >= 0x20 && c <= 0x7e && c != ';' && c != '[' && c != ']';
}

/* The first index from j on (below end) whose byte may not be in a value,
 * or end. With SSE2 it looks at 16 bytes per step; it branches only on where
 * the value ends, which the frame shows anyway. */
static size_t value_end(const uint8_t *p, size_t j, size_t end)
{
#if defined(__SSE2__)
	const __m128i space = _mm_set1_epi8(0x20), del = _mm_set1_epi8(0x7f),
	              semi = _mm_set1_epi8(';'), open = _mm_set1_epi8('['),
	              close = _mm_set1_epi8(']');
	for (; j + 16 <= end; j += 16) {
		__m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + j));
		/* signed: bytes 0x80 and up are below 0x20 too */
		__m128i stop = _mm_or_si128(_mm_cmplt_epi8(v, space), _mm_cmpeq_epi8(v, del));
		stop = _mm_or_si128(stop, _mm_or_si128(_mm_cmpeq_epi8(v, semi),
		                                       _mm_or_si128(_mm_cmpeq_epi8(v, open),
		                                                    _mm_cmpeq_epi8(v, close))));
		unsigned m = (unsigned)_mm_movemask_epi8(stop);
		if (m != 0)
			return j + (size_t)__builtin_ctz(m);
	}
#endif
	while (j < end && is_valch(p[j]))
		j++;
	return j;
}

bool kh_frame_text_ok(const char *s, size_t n)
{
	return value_end((const uint8_t *)s, 0, n) == n;
}

int kh_frame_find(const uint8_t *buf, size_t len, size_t max, size_t *frame_len)
{
	if (len == 0)
		return 0;
	if (buf[0] != '[')
		return KH_ERR_MALFORMED;
	size_t lim = len < max ? len : max;
	const uint8_t *e = memchr(buf, ']', lim);
	if (e != NULL) {
		*frame_len = (size_t)(e - buf) + 1;
		return 1;
	}
	return len >= max ? KH_ERR_TOO_LARGE : 0;
}

int kh_frame_parse(const uint8_t *p, size_t n, size_t max_fields, struct kh_frame *f)
{
	size_t i;

	f->cmd[0] = '\0';
	f->nfields = 0;
	if (max_fields > KH_FIELDS_MAX)
		max_fields = KH_FIELDS_MAX;
	/* header: '[' 'A' 'O' c c c c ';' */
	if (n < 9 || p[0] != '[' || p[1] != 'A' || p[2] != 'O' || p[7] != ';' || p[n - 1] != ']')
		return KH_ERR_MALFORMED;
	for (i = 3; i < 7; i++)
		if (!is_cmdch(p[i]))
			return KH_ERR_MALFORMED;
	memcpy(f->cmd, p + 3, 4);
	f->cmd[4] = '\0';

	/* fields: TG value ';' ... up to the closing ']' */
	i = 8;
	while (i < n - 1) {
		if (n - 1 - i < 3)
			return KH_ERR_MALFORMED;
		if (!is_upper(p[i]) || !is_cmdch(p[i + 1]))
			return KH_ERR_MALFORMED;
		if (f->nfields == max_fields)
			return KH_ERR_TOO_LARGE;
		struct kh_field *fl = &f->fields[f->nfields];
		fl->tag[0] = (char)p[i];
		fl->tag[1] = (char)p[i + 1];
		fl->tag[2] = '\0';
		size_t v = i + 2, j = value_end(p, v, n - 1);
		if (j >= n - 1 || p[j] != ';')
			return KH_ERR_MALFORMED;
		fl->val = (const char *)p + v;
		fl->len = j - v;
		for (size_t k = 0; k < f->nfields; k++)
			if (f->fields[k].tag[0] == fl->tag[0] && f->fields[k].tag[1] == fl->tag[1])
				return KH_ERR_MALFORMED; /* duplicate tag: ambiguous */
		f->nfields++;
		i = j + 1;
	}
	return KH_OK;
}

const struct kh_field *kh_frame_get(const struct kh_frame *f, const char *tag)
{
	for (size_t i = 0; i < f->nfields; i++)
		if (f->fields[i].tag[0] == tag[0] && f->fields[i].tag[1] == tag[1])
			return &f->fields[i];
	return NULL;
}

bool kh_frame_has(const struct kh_frame *f, const char *tag)
{
	return kh_frame_get(f, tag) != NULL;
}

int kh_frame_str(const struct kh_frame *f, const char *tag, char *out, size_t outsz)
{
	const struct kh_field *fl = kh_frame_get(f, tag);
	if (fl == NULL)
		return KH_ERR_MISSING_FIELD;
	if (fl->len >= outsz)
		return KH_ERR_BAD_FIELD;
	memcpy(out, fl->val, fl->len);
	out[fl->len] = '\0';
	return KH_OK;
}

int kh_frame_u64(const struct kh_frame *f, const char *tag, uint64_t min, uint64_t max, uint64_t *v)
{
	const struct kh_field *fl = kh_frame_get(f, tag);
	uint64_t x = 0;
	if (fl == NULL)
		return KH_ERR_MISSING_FIELD;
	if (fl->len == 0 || fl->len > 19)
		return KH_ERR_BAD_FIELD;
	for (size_t i = 0; i < fl->len; i++) {
		if (fl->val[i] < '0' || fl->val[i] > '9')
			return KH_ERR_BAD_FIELD;
		x = x * 10 + (uint64_t)(fl->val[i] - '0');
	}
	if (x < min || x > max)
		return KH_ERR_BAD_FIELD;
	*v = x;
	return KH_OK;
}

int kh_frame_yn(const struct kh_frame *f, const char *tag, bool *v)
{
	const struct kh_field *fl = kh_frame_get(f, tag);
	if (fl == NULL)
		return KH_ERR_MISSING_FIELD;
	if (fl->len != 1 || (fl->val[0] != 'Y' && fl->val[0] != 'N'))
		return KH_ERR_BAD_FIELD;
	*v = fl->val[0] == 'Y';
	return KH_OK;
}

int kh_frame_hex(const struct kh_frame *f, const char *tag, uint8_t *out, size_t outmax,
                 size_t *outlen)
{
	const struct kh_field *fl = kh_frame_get(f, tag);
	if (fl == NULL)
		return KH_ERR_MISSING_FIELD;
	int r = kh_hex_decode(fl->val, fl->len, out, outmax);
	if (r < 0)
		return r == KH_ERR_TOO_LARGE ? KH_ERR_BAD_FIELD : r;
	*outlen = (size_t)r;
	return KH_OK;
}

int kh_frame_hex_secure(const struct kh_frame *f, const char *tag, size_t maxlen, uint8_t **out,
                        size_t *outlen)
{
	const struct kh_field *fl = kh_frame_get(f, tag);
	if (fl == NULL)
		return KH_ERR_MISSING_FIELD;
	if (fl->len % 2 || fl->len / 2 > maxlen)
		return KH_ERR_BAD_FIELD;
	size_t n = fl->len / 2;
	uint8_t *b = kh_secure_alloc(n ? n : 1);
	if (b == NULL)
		return KH_ERR_NOMEM;
	int r = kh_hex_decode(fl->val, fl->len, b, n);
	if (r < 0) {
		kh_secure_free(b, n ? n : 1);
		return KH_ERR_BAD_FIELD;
	}
	*out = b;
	*outlen = n;
	return KH_OK;
}

int kh_msg_begin(struct kh_buf *b, const char *cmd)
{
	if (strlen(cmd) != 4)
		return KH_ERR_INTERNAL;
	int r = kh_buf_put(b, "[AO", 3);
	if (r == KH_OK)
		r = kh_buf_put(b, cmd, 4);
	if (r == KH_OK)
		r = kh_buf_put(b, ";", 1);
	return r;
}

int kh_msg_putn(struct kh_buf *b, const char *tag, const char *val, size_t n)
{
	if (strlen(tag) != 2 || !kh_frame_text_ok(val, n))
		return KH_ERR_INTERNAL;
	int r = kh_buf_put(b, tag, 2);
	if (r == KH_OK)
		r = kh_buf_put(b, val, n);
	if (r == KH_OK)
		r = kh_buf_put(b, ";", 1);
	return r;
}

int kh_msg_put(struct kh_buf *b, const char *tag, const char *val)
{
	return kh_msg_putn(b, tag, val, strlen(val));
}

int kh_msg_put_u64(struct kh_buf *b, const char *tag, uint64_t v)
{
	char tmp[24];
	snprintf(tmp, sizeof(tmp), "%llu", (unsigned long long)v);
	return kh_msg_put(b, tag, tmp);
}

int kh_msg_put_hex(struct kh_buf *b, const char *tag, const uint8_t *d, size_t n)
{
	if (strlen(tag) != 2)
		return KH_ERR_INTERNAL;
	int r = kh_buf_put(b, tag, 2);
	if (r == KH_OK)
		r = kh_buf_put_hex(b, d, n);
	if (r == KH_OK)
		r = kh_buf_put(b, ";", 1);
	return r;
}

int kh_msg_end(struct kh_buf *b)
{
	return kh_buf_put(b, "]", 1);
}

int kh_msg_error(struct kh_buf *b, const char *cmd, int err, const char *detail)
{
	char text[256];
	int r;
	if (detail && *detail)
		snprintf(text, sizeof(text), "%s: %s", kh_strerror(err), detail);
	else
		snprintf(text, sizeof(text), "%s", kh_strerror(err));
	for (char *c = text; *c; c++)
		if (!is_valch((uint8_t)*c))
			*c = '_';
	if ((r = kh_msg_begin(b, "ERRO")) != KH_OK)
		return r;
	if (cmd && strlen(cmd) == 4 && kh_frame_text_ok(cmd, 4) &&
	    (r = kh_msg_put(b, "CM", cmd)) != KH_OK)
		return r;
	if ((r = kh_msg_put_u64(b, "EC", (uint64_t)kh_err_to_wire(err))) != KH_OK)
		return r;
	if ((r = kh_msg_put(b, "ET", text)) != KH_OK)
		return r;
	return kh_msg_end(b);
}

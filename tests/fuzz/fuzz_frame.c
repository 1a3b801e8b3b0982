/*
 * libFuzzer target for the Excrypt codec (kh_frame over kh_buf): delimiting
 * a byte stream as the server does, parsing under both limits, every value
 * accessor, and the build-then-parse round trip. Any sanitizer report or
 * broken property (abort) is a bug in the codec, never in the input.
 */
#include "common/kh_buf.h"
#include "common/kh_err.h"
#include "common/kh_frame.h"
#include "common/kh_mem.h"

#include "fuzz_check.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A small limit so that the TOO_LARGE paths are reached by short inputs. */
#define SMALL_MAX 64u
/* Longest detail handed to kh_msg_error (it truncates; longer adds nothing). */
#define DETAIL_MAX 300u

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (p == NULL)
		abort();
	return p;
}

static bool ref_valch(uint8_t c)
{
	return c >= 0x20 && c <= 0x7e && c != ';' && c != '[' && c != ']';
}

static bool ref_text_ok(const uint8_t *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!ref_valch(s[i]))
			return false;
	return true;
}

static int ref_hexdigit(uint8_t c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Plain reference decoder: true and out[0..n/2) filled if s is even-length hex. */
static bool ref_hex(const char *s, size_t n, uint8_t *out)
{
	if (n % 2)
		return false;
	for (size_t i = 0; i < n / 2; i++) {
		int hi = ref_hexdigit((uint8_t)s[2 * i]), lo = ref_hexdigit((uint8_t)s[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return false;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return true;
}

static bool ref_u64(const char *s, size_t n, uint64_t *v)
{
	uint64_t x = 0;
	if (n == 0 || n > 19)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		x = x * 10 + (uint64_t)(s[i] - '0');
	}
	*v = x;
	return true;
}

static bool has_byte(const uint8_t *d, size_t n, uint8_t c)
{
	return n > 0 && memchr(d, c, n) != NULL;
}

/* kh_frame_find must agree with a direct reading of its contract. */
static int check_find(const uint8_t *d, size_t n, size_t max, size_t *flen)
{
	size_t fl = 0;
	int r = kh_frame_find(d, n, max, &fl);

	switch (r) {
	case 1:
		CHECK(n > 0 && d[0] == '[');
		CHECK(fl >= 1 && fl <= n && fl <= max);
		CHECK(d[fl - 1] == ']' && !has_byte(d, fl - 1, ']'));
		*flen = fl;
		break;
	case 0:
		CHECK(n == 0 || (d[0] == '[' && n < max && !has_byte(d, n, ']')));
		break;
	case KH_ERR_MALFORMED:
		CHECK(n > 0 && d[0] != '[');
		break;
	case KH_ERR_TOO_LARGE:
		CHECK(n > 0 && d[0] == '[' && n >= max && !has_byte(d, max, ']'));
		break;
	default:
		fuzz_fail(__FILE__, __LINE__, "kh_frame_find returned an undocumented value");
	}
	return r;
}

/* Every field of a parsed frame: well-formed tag, value inside the input,
 * value bytes legal, tags distinct, and kh_frame_get finds each one. */
static void check_fields(const struct kh_frame *f, const uint8_t *p, size_t n)
{
	CHECK(strlen(f->cmd) == 4);
	CHECK(memcmp(f->cmd, p + 3, 4) == 0);
	CHECK(f->nfields <= KH_FIELDS_MAX);
	for (size_t i = 0; i < f->nfields; i++) {
		const struct kh_field *fl = &f->fields[i];
		CHECK(fl->tag[0] >= 'A' && fl->tag[0] <= 'Z' && fl->tag[2] == '\0');
		CHECK((const uint8_t *)fl->val > p && (const uint8_t *)fl->val + fl->len < p + n);
		CHECK(ref_text_ok((const uint8_t *)fl->val, fl->len));
		CHECK(fl->val[fl->len] == ';');
		CHECK(kh_frame_get(f, fl->tag) == fl);
		CHECK(kh_frame_has(f, fl->tag));
	}
}

static void check_str(const struct kh_frame *f, const struct kh_field *fl)
{
	char *s = xmalloc(fl->len + 1);
	CHECK(kh_frame_str(f, fl->tag, s, fl->len + 1) == KH_OK);
	CHECK(strlen(s) == fl->len && memcmp(s, fl->val, fl->len) == 0);
	CHECK(kh_frame_str(f, fl->tag, s, fl->len) == KH_ERR_BAD_FIELD);
	free(s);
}

static void check_u64(const struct kh_frame *f, const struct kh_field *fl)
{
	uint64_t want = 0, v = 0;
	bool ok = ref_u64(fl->val, fl->len, &want);
	int r = kh_frame_u64(f, fl->tag, 0, UINT64_MAX, &v);

	CHECK(r == (ok ? KH_OK : KH_ERR_BAD_FIELD));
	if (ok)
		CHECK(v == want);
	r = kh_frame_u64(f, fl->tag, 10, 1000, &v);
	CHECK(r == (ok && want >= 10 && want <= 1000 ? KH_OK : KH_ERR_BAD_FIELD));
}

static void check_yn(const struct kh_frame *f, const struct kh_field *fl)
{
	bool v = false;
	bool ok = fl->len == 1 && (fl->val[0] == 'Y' || fl->val[0] == 'N');
	int r = kh_frame_yn(f, fl->tag, &v);

	CHECK(r == (ok ? KH_OK : KH_ERR_BAD_FIELD));
	if (ok)
		CHECK(v == (fl->val[0] == 'Y'));
}

/* kh_frame_hex and kh_frame_hex_secure against the reference decoder, with
 * room for exactly the value and with one byte too little. */
static void check_hex(const struct kh_frame *f, const struct kh_field *fl)
{
	size_t half = fl->len / 2, outlen = 0;
	uint8_t *want = xmalloc(half);
	uint8_t *out = xmalloc(half);
	uint8_t *sec = NULL;
	bool ok = ref_hex(fl->val, fl->len, want);
	int r = kh_frame_hex(f, fl->tag, out, half, &outlen);

	CHECK(r == (ok ? KH_OK : KH_ERR_BAD_FIELD));
	if (ok)
		CHECK(outlen == half && memcmp(out, want, half) == 0);
	if (half > 0)
		CHECK(kh_frame_hex(f, fl->tag, out, half - 1, &outlen) == KH_ERR_BAD_FIELD);

	outlen = 0;
	r = kh_frame_hex_secure(f, fl->tag, half, &sec, &outlen);
	CHECK(r == (ok ? KH_OK : KH_ERR_BAD_FIELD));
	if (ok) {
		CHECK(sec != NULL && outlen == half && memcmp(sec, want, half) == 0);
		kh_secure_free(sec, outlen);
	}
	if (half > 0) {
		sec = NULL;
		CHECK(kh_frame_hex_secure(f, fl->tag, half - 1, &sec, &outlen) == KH_ERR_BAD_FIELD);
		CHECK(sec == NULL);
	}
	free(out);
	free(want);
}

static void check_accessors(const struct kh_frame *f)
{
	char s[8];
	uint64_t v;
	bool yn;
	uint8_t b[8], *sec = NULL;
	size_t n;

	/* Tags start with an uppercase letter: "zz" is never present. */
	CHECK(kh_frame_get(f, "zz") == NULL && !kh_frame_has(f, "zz"));
	CHECK(kh_frame_str(f, "zz", s, sizeof(s)) == KH_ERR_MISSING_FIELD);
	CHECK(kh_frame_u64(f, "zz", 0, UINT64_MAX, &v) == KH_ERR_MISSING_FIELD);
	CHECK(kh_frame_yn(f, "zz", &yn) == KH_ERR_MISSING_FIELD);
	CHECK(kh_frame_hex(f, "zz", b, sizeof(b), &n) == KH_ERR_MISSING_FIELD);
	CHECK(kh_frame_hex_secure(f, "zz", 8, &sec, &n) == KH_ERR_MISSING_FIELD);

	for (size_t i = 0; i < f->nfields; i++) {
		const struct kh_field *fl = &f->fields[i];
		check_str(f, fl);
		check_u64(f, fl);
		check_yn(f, fl);
		check_hex(f, fl);
	}
}

static void parse_or_die(const struct kh_buf *b, struct kh_frame *g)
{
	size_t fl = 0;
	CHECK(kh_frame_find(kh_buf_ptr(b), kh_buf_len(b), kh_buf_len(b), &fl) == 1);
	CHECK(fl == kh_buf_len(b));
	CHECK(kh_frame_parse(kh_buf_ptr(b), kh_buf_len(b), KH_FIELDS_MAX, g) == KH_OK);
}

/* Build the frame again from its parts, as text and as hex, and as an ERRO
 * answer to it; each must parse back to what went in. */
static void check_round_trip(const struct kh_frame *f, int err, const char *detail)
{
	/* the hex form doubles every value: room for any frame we can parse */
	struct kh_buf *b = kh_buf_new(2 * KH_FRAME_MAX + 1024);
	struct kh_frame *g = xmalloc(sizeof(*g));
	uint64_t ec = 0;
	char cm[5];

	if (b == NULL)
		abort();

	CHECK(kh_msg_begin(b, f->cmd) == KH_OK);
	for (size_t i = 0; i < f->nfields; i++)
		CHECK(kh_msg_putn(b, f->fields[i].tag, f->fields[i].val, f->fields[i].len) ==
		      KH_OK);
	CHECK(kh_msg_end(b) == KH_OK);
	parse_or_die(b, g);
	CHECK(strcmp(g->cmd, f->cmd) == 0 && g->nfields == f->nfields);
	for (size_t i = 0; i < f->nfields; i++) {
		CHECK(strcmp(g->fields[i].tag, f->fields[i].tag) == 0);
		CHECK(g->fields[i].len == f->fields[i].len);
		CHECK(memcmp(g->fields[i].val, f->fields[i].val, f->fields[i].len) == 0);
	}

	kh_buf_truncate(b, 0);
	CHECK(kh_msg_begin(b, f->cmd) == KH_OK);
	for (size_t i = 0; i < f->nfields; i++)
		CHECK(kh_msg_put_hex(b, f->fields[i].tag, (const uint8_t *)f->fields[i].val,
		                     f->fields[i].len) == KH_OK);
	CHECK(kh_msg_end(b) == KH_OK);
	parse_or_die(b, g);
	CHECK(strcmp(g->cmd, f->cmd) == 0 && g->nfields == f->nfields);
	for (size_t i = 0; i < f->nfields; i++) {
		size_t n = f->fields[i].len, got = 0;
		uint8_t *out = xmalloc(n);
		CHECK(kh_frame_hex(g, f->fields[i].tag, out, n, &got) == KH_OK);
		CHECK(got == n && memcmp(out, f->fields[i].val, n) == 0);
		free(out);
	}

	kh_buf_reset(b);
	CHECK(kh_msg_error(b, f->cmd, err, detail) == KH_OK);
	parse_or_die(b, g);
	CHECK(strcmp(g->cmd, "ERRO") == 0);
	CHECK(kh_frame_str(g, "CM", cm, sizeof(cm)) == KH_OK && strcmp(cm, f->cmd) == 0);
	CHECK(kh_frame_u64(g, "EC", 0, UINT64_MAX, &ec) == KH_OK);
	CHECK(ec == (uint64_t)kh_err_to_wire(err));
	CHECK(kh_frame_has(g, "ET") && g->nfields == 3);

	free(g);
	kh_buf_free(b);
}

/* Parse one delimited (or arbitrary) byte string under both field limits;
 * the two results must agree, and a good frame goes through every check. */
static void check_parse(const uint8_t *p, size_t n, int err, const char *detail)
{
	struct kh_frame *pre = xmalloc(sizeof(*pre)), *post = xmalloc(sizeof(*post));
	int rpre = kh_frame_parse(p, n, KH_FIELDS_MAX_PRELOGIN, pre);
	int rpost = kh_frame_parse(p, n, KH_FIELDS_MAX, post);

	CHECK(rpre == KH_OK || rpre == KH_ERR_MALFORMED || rpre == KH_ERR_TOO_LARGE);
	CHECK(rpost == KH_OK || rpost == KH_ERR_MALFORMED || rpost == KH_ERR_TOO_LARGE);
	CHECK(strcmp(pre->cmd, post->cmd) == 0);
	CHECK(pre->cmd[0] == '\0' || strlen(pre->cmd) == 4);
	/* the tighter limit can only turn success into TOO_LARGE */
	CHECK((rpre == KH_OK) == (rpost == KH_OK && post->nfields <= KH_FIELDS_MAX_PRELOGIN));
	if (rpost == KH_OK && post->nfields > KH_FIELDS_MAX_PRELOGIN)
		CHECK(rpre == KH_ERR_TOO_LARGE);
	if (rpost == KH_ERR_TOO_LARGE)
		CHECK(rpre == KH_ERR_TOO_LARGE);
	if (rpre == KH_ERR_MALFORMED)
		CHECK(rpost == KH_ERR_MALFORMED);

	if (rpost == KH_OK) {
		check_fields(post, p, n);
		if (rpre == KH_OK) {
			CHECK(pre->nfields == post->nfields);
			for (size_t i = 0; i < pre->nfields; i++)
				CHECK(pre->fields[i].val == post->fields[i].val &&
				      pre->fields[i].len == post->fields[i].len);
		}
		check_accessors(post);
		check_round_trip(post, err, detail);
	}
	free(post);
	free(pre);
}

/* Feed the input to a kh_buf in uneven chunks and take frames off the front,
 * as a connection does: pre-login limits until a LOGN frame parses, then
 * post-login ones. The frames taken must be exactly the input's own. */
static void check_stream(const uint8_t *data, size_t size, int err, const char *detail)
{
	struct kh_buf *b = kh_buf_new(KH_FRAME_MAX_PRELOGIN);
	size_t fed = 0, taken = 0, max = KH_FRAME_MAX_PRELOGIN, nfields = KH_FIELDS_MAX_PRELOGIN;

	if (b == NULL)
		abort();
	while (fed < size) {
		size_t room = kh_buf_max(b) - kh_buf_len(b);
		size_t chunk = 1 + ((size_t)data[fed] * 7 + fed) % 97;
		uint8_t *w;

		if (chunk > size - fed)
			chunk = size - fed;
		/* a full buffer without a frame was reported TOO_LARGE below */
		CHECK(room > 0);
		if (chunk > room)
			chunk = room;
		CHECK(kh_buf_reserve(b, chunk, &w) == KH_OK);
		memcpy(w, data + fed, chunk);
		kh_buf_commit(b, chunk);
		fed += chunk;
		CHECK(kh_buf_len(b) == fed - taken);
		CHECK(memcmp(kh_buf_ptr(b), data + taken, fed - taken) == 0);

		for (;;) {
			size_t fl = 0;
			long rbr = kh_buf_find(b, 0, ']');
			int r = check_find(kh_buf_ptr(b), kh_buf_len(b), max, &fl);
			struct kh_frame *f;

			if (r == 0)
				break;
			if (r < 0)
				goto done; /* the connection would be closed here */
			CHECK(rbr >= 0 && (size_t)rbr + 1 == fl);
			f = xmalloc(sizeof(*f));
			if (kh_frame_parse(kh_buf_ptr(b), fl, nfields, f) == KH_OK &&
			    strcmp(f->cmd, "LOGN") == 0 && max == KH_FRAME_MAX_PRELOGIN) {
				max = KH_FRAME_MAX;
				nfields = KH_FIELDS_MAX;
				kh_buf_set_max(b, KH_FRAME_MAX);
			}
			free(f);
			check_parse(kh_buf_ptr(b), fl, err, detail);
			kh_buf_consume(b, fl);
			taken += fl;
		}
	}
done:
	kh_buf_free(b);
}

/* Arbitrary bytes through the builders: hex always round-trips, text only
 * when every byte may stand in a value, and the error builder sanitises. */
static void check_builders(const uint8_t *data, size_t size, int err, const char *detail)
{
	/* room for the hex form and for an ERRO, whose text is under 256 bytes */
	struct kh_buf *b = kh_buf_new(2 * size + 512);
	struct kh_frame *g = xmalloc(sizeof(*g));
	uint8_t *out = xmalloc(size);
	size_t got = 0;
	bool text = ref_text_ok(data, size);

	if (b == NULL)
		abort();
	CHECK(kh_frame_text_ok((const char *)data, size) == text);

	CHECK(kh_msg_begin(b, "FUZZ") == KH_OK);
	CHECK(kh_msg_put_hex(b, "HX", data, size) == KH_OK);
	CHECK(kh_msg_end(b) == KH_OK);
	parse_or_die(b, g);
	CHECK(kh_frame_hex(g, "HX", out, size, &got) == KH_OK);
	CHECK(got == size && memcmp(out, data, size) == 0);

	kh_buf_reset(b);
	CHECK(kh_msg_begin(b, "FUZZ") == KH_OK);
	CHECK(kh_msg_putn(b, "TX", (const char *)data, size) == (text ? KH_OK : KH_ERR_INTERNAL));
	if (text) {
		const struct kh_field *fl;
		CHECK(kh_msg_end(b) == KH_OK);
		parse_or_die(b, g);
		fl = kh_frame_get(g, "TX");
		CHECK(fl != NULL && fl->len == size && memcmp(fl->val, data, size) == 0);
	}

	kh_buf_reset(b);
	CHECK(kh_msg_error(b, "", err, detail) == KH_OK);
	parse_or_die(b, g);
	CHECK(strcmp(g->cmd, "ERRO") == 0 && !kh_frame_has(g, "CM"));
	CHECK(kh_frame_has(g, "EC") && kh_frame_has(g, "ET"));

	free(out);
	free(g);
	kh_buf_free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t fl = 0, dn = size < DETAIL_MAX ? size : DETAIL_MAX;
	char detail[DETAIL_MAX + 1];
	/* any code, including out-of-range ones, must give a valid ERRO */
	int err = size ? -(int)(data[size - 1] % 50) : KH_ERR_INTERNAL;

	if (dn > 0)
		memcpy(detail, data, dn);
	detail[dn] = '\0';

	(void)check_find(data, size, SMALL_MAX, &fl);
	(void)check_find(data, size, KH_FRAME_MAX_PRELOGIN, &fl);
	if (check_find(data, size, KH_FRAME_MAX, &fl) != 1)
		fl = size;
	/* the first delimited frame, or the whole input when there is none */
	check_parse(data, fl, err, detail);
	if (fl != size)
		check_parse(data, size, err, detail);
	check_stream(data, size, err, detail);
	check_builders(data, size, err, detail);
	return 0;
}

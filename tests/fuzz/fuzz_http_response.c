/*
 * libFuzzer target for kh_http's response parser: the input (after a first
 * byte that picks a split point and the body ceiling) is fed whole, then in
 * two pieces, then byte by byte, followed by EOF. The three must agree on
 * the result, the status, the body and the bytes used; a refusal must say
 * why; nothing may be read past the input.
 */
#include "common/kh_buf.h"
#include "common/kh_err.h"
#include "common/kh_http.h"

#include "fuzz_check.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct result {
	int rc;
	size_t used;
	struct kh_http_resp r;
};

static struct kh_http_parser parser;

/* Feed p in pieces (cuts: offsets where a new feed starts), then EOF. */
static void run(const uint8_t *p, size_t n, const size_t *cuts, size_t ncuts, size_t body_max,
                struct result *out)
{
	size_t off = 0, k = 0;

	CHECK(kh_http_resp_init(&out->r, body_max) == KH_OK);
	kh_http_parser_init(&parser, &out->r, false);
	out->rc = KH_ERR_INCOMPLETE;
	while (off < n) {
		size_t end = k < ncuts && cuts[k] > off && cuts[k] < n ? cuts[k] : n, used = 0;
		k++;
		out->rc = kh_http_parser_feed(&parser, p + off, end - off, &used);
		CHECK(used <= end - off);
		off += used;
		if (out->rc != KH_ERR_INCOMPLETE)
			break;
		CHECK(off == end);
	}
	if (out->rc == KH_ERR_INCOMPLETE)
		out->rc = kh_http_parser_eof(&parser);
	out->used = off;
	CHECK(out->rc == KH_OK || out->rc == KH_ERR_PROTOCOL || out->rc == KH_ERR_TOO_LARGE);
	if (out->rc != KH_OK)
		CHECK(kh_http_parser_why(&parser)[0] != '\0');
	else {
		CHECK(out->r.status >= 100 && out->r.status <= 599);
		CHECK(kh_buf_len(out->r.body) <= body_max);
		if (out->r.content_length >= 0 && !out->r.chunked && out->r.status != 101 &&
		    out->r.status != 204 && out->r.status != 304)
			CHECK(kh_buf_len(out->r.body) == (size_t)out->r.content_length);
	}
}

static void same(struct result *a, struct result *b)
{
	CHECK(a->rc == b->rc);
	if (a->rc != KH_OK)
		return;
	CHECK(a->used == b->used);
	CHECK(a->r.status == b->r.status);
	CHECK(a->r.close == b->r.close && a->r.chunked == b->r.chunked);
	CHECK(kh_buf_len(a->r.body) == kh_buf_len(b->r.body));
	CHECK(memcmp(kh_buf_ptr(a->r.body), kh_buf_ptr(b->r.body), kh_buf_len(a->r.body)) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct result whole, two, bytes;
	size_t *cuts, split, body_max;
	uint8_t *p;

	if (size < 1)
		return 0;
	split = data[0];
	body_max = data[0] & 1 ? 64 : 1u << 16;
	data++;
	size--;
	/* an exact-size copy, so that a read past the end is reported */
	p = malloc(size ? size : 1);
	cuts = malloc((size ? size : 1) * sizeof(*cuts));
	if (p == NULL || cuts == NULL)
		abort();
	if (size)
		memcpy(p, data, size);
	run(p, size, NULL, 0, body_max, &whole);
	split = size ? split % size : 0;
	run(p, size, &split, 1, body_max, &two);
	for (size_t i = 0; i < size; i++)
		cuts[i] = i + 1;
	run(p, size, cuts, size, body_max, &bytes);
	same(&whole, &two);
	same(&whole, &bytes);
	kh_http_resp_free(&whole.r);
	kh_http_resp_free(&two.r);
	kh_http_resp_free(&bytes.r);
	free(cuts);
	free(p);
	return 0;
}

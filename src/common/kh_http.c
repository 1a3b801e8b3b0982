/*
 * HTTP/1.1 over a kh_client: the request writer and the response parser.
 * The parser reads like RFC 9112's grammar and refuses rather than guesses;
 * it must never read past what it was fed, never keep more than its limits,
 * and never put a body byte into a reason text.
 */
#include "common/kh_http.h"
#include "common/kh_buf.h"
#include "common/kh_client.h"
#include "common/kh_mem.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define READ_CHUNK 16384u

int kh_http_resp_init(struct kh_http_resp *r, size_t body_max)
{
	memset(r, 0, sizeof(*r));
	r->content_length = -1;
	r->body = kh_buf_new(body_max ? body_max : KH_HTTP_BODY_MAX);
	return r->body ? KH_OK : KH_ERR_NOMEM;
}

void kh_http_resp_free(struct kh_http_resp *r)
{
	kh_buf_free(r->body);
	r->body = NULL;
}

void kh_http_parser_init(struct kh_http_parser *ps, struct kh_http_resp *r, bool head_request)
{
	ps->state = KH_HTTP_P_HEAD;
	ps->r = r;
	ps->head_request = head_request;
	ps->headlen = 0;
	ps->trailer_total = 0;
	ps->left = 0;
	ps->err = KH_OK;
	ps->why[0] = '\0';
}

const char *kh_http_parser_why(const struct kh_http_parser *ps)
{
	return ps->why;
}

static int bad(struct kh_http_parser *ps, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int bad(struct kh_http_parser *ps, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(ps->why, sizeof(ps->why), fmt, ap);
	va_end(ap);
	ps->state = KH_HTTP_P_FAILED;
	ps->err = err;
	return err;
}

/* ---- character classes (RFC 9110 5.6.2, 5.5) ---- */

static bool is_digit(uint8_t c)
{
	return c >= '0' && c <= '9';
}

static bool is_tchar(uint8_t c)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c))
		return true;
	switch (c) {
	case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+':
	case '-': case '.': case '^': case '_': case '`': case '|': case '~':
		return true;
	default:
		return false;
	}
}

/* field-vchar / SP / HTAB (obs-text allowed) */
static bool is_field_char(uint8_t c)
{
	return c == '\t' || (c >= 0x20 && c != 0x7f);
}

static uint8_t lower(uint8_t c)
{
	return c >= 'A' && c <= 'Z' ? (uint8_t)(c + 32) : c;
}

/* p[0..n) equals the lowercase literal s, ignoring case */
static bool ci_eq(const uint8_t *p, size_t n, const char *s)
{
	size_t i = 0;
	for (; i < n && s[i]; i++)
		if (lower(p[i]) != (uint8_t)s[i])
			return false;
	return i == n && s[i] == '\0';
}

/* Printable ASCII copy of p[0..n) into out (cut to outsz - 1). */
static void copy_text(char *out, size_t outsz, const uint8_t *p, size_t n)
{
	size_t i = 0;
	for (; i < n && i + 1 < outsz; i++)
		out[i] = p[i] >= 0x20 && p[i] < 0x7f ? (char)p[i] : '?';
	out[i] = '\0';
}

/* 1*DIGIT without sign or spaces, at most 18 digits (no overflow). */
static bool parse_decimal(const uint8_t *p, size_t n, long long *v)
{
	long long x = 0;
	if (n == 0 || n > 18)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (!is_digit(p[i]))
			return false;
		x = x * 10 + (p[i] - '0');
	}
	*v = x;
	return true;
}

/* ---- the head ---- */

/* One comma-separated list element of a Connection field. */
static void connection_option(struct kh_http_resp *r, const uint8_t *p, size_t n)
{
	if (ci_eq(p, n, "close"))
		r->close = true;
	else if (ci_eq(p, n, "upgrade"))
		r->conn_upgrade = true;
	else if (ci_eq(p, n, "keep-alive") && r->minor == 0)
		r->close = false;
}

static int connection_field(struct kh_http_parser *ps, const uint8_t *v, size_t n)
{
	size_t i = 0;
	while (i <= n) {
		size_t b = i, e;
		while (i < n && v[i] != ',')
			i++;
		e = i;
		while (b < e && (v[b] == ' ' || v[b] == '\t'))
			b++;
		while (e > b && (v[e - 1] == ' ' || v[e - 1] == '\t'))
			e--;
		for (size_t k = b; k < e; k++)
			if (!is_tchar(v[k]))
				return bad(ps, KH_ERR_PROTOCOL, "Connection field holds a non-token");
		if (e > b)
			connection_option(ps->r, v + b, e - b);
		i++;
	}
	return KH_OK;
}

struct head_seen {
	bool cl, te;
};

static int header_field(struct kh_http_parser *ps, struct head_seen *seen, const uint8_t *name,
			size_t nlen, const uint8_t *v, size_t vlen)
{
	struct kh_http_resp *r = ps->r;

	if (ci_eq(name, nlen, "content-length")) {
		long long cl;
		if (!parse_decimal(v, vlen, &cl))
			return bad(ps, KH_ERR_PROTOCOL, "Content-Length is not one decimal number");
		if (seen->cl && cl != r->content_length)
			return bad(ps, KH_ERR_PROTOCOL, "two different Content-Length fields");
		seen->cl = true;
		r->content_length = cl;
	} else if (ci_eq(name, nlen, "transfer-encoding")) {
		if (seen->te)
			return bad(ps, KH_ERR_PROTOCOL, "Transfer-Encoding given twice");
		seen->te = true;
		if (!ci_eq(v, vlen, "chunked")) {
			char t[48];
			copy_text(t, sizeof(t), v, vlen);
			return bad(ps, KH_ERR_PROTOCOL, "unsupported Transfer-Encoding '%s'", t);
		}
		r->chunked = true;
	} else if (ci_eq(name, nlen, "connection")) {
		return connection_field(ps, v, vlen);
	} else if (ci_eq(name, nlen, "upgrade")) {
		if (vlen >= sizeof(r->upgrade))
			return bad(ps, KH_ERR_PROTOCOL, "Upgrade field too long");
		copy_text(r->upgrade, sizeof(r->upgrade), v, vlen);
	} else if (ci_eq(name, nlen, "content-type")) {
		copy_text(r->content_type, sizeof(r->content_type), v, vlen);
	}
	return KH_OK;
}

/* status-line = HTTP-version SP status-code SP [ reason-phrase ] CRLF;
 * a missing SP before an empty reason is tolerated. */
static int status_line(struct kh_http_parser *ps, const uint8_t *p, size_t n)
{
	struct kh_http_resp *r = ps->r;
	static const char ver[] = "HTTP/1.";
	size_t i;

	if (n < 12)
		return bad(ps, KH_ERR_PROTOCOL, "status line too short");
	for (i = 0; i < 7; i++)
		if (p[i] != (uint8_t)ver[i])
			return bad(ps, KH_ERR_PROTOCOL, "not an HTTP/1.x status line");
	if (p[7] != '0' && p[7] != '1')
		return bad(ps, KH_ERR_PROTOCOL, "HTTP version 1.%c is not supported",
			   is_digit(p[7]) ? p[7] : '?');
	r->minor = p[7] - '0';
	if (p[8] != ' ' || !is_digit(p[9]) || !is_digit(p[10]) || !is_digit(p[11]))
		return bad(ps, KH_ERR_PROTOCOL, "malformed status code");
	r->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
	if (r->status < 100 || r->status > 599)
		return bad(ps, KH_ERR_PROTOCOL, "status code %d out of range", r->status);
	if (n > 12) {
		if (p[12] != ' ')
			return bad(ps, KH_ERR_PROTOCOL, "malformed status code");
		for (i = 13; i < n; i++)
			if (!is_field_char(p[i]))
				return bad(ps, KH_ERR_PROTOCOL, "control character in the reason phrase");
		copy_text(r->reason, sizeof(r->reason), p + 13, n - 13);
	} else {
		r->reason[0] = '\0';
	}
	r->close = r->minor == 0; /* HTTP/1.0 closes unless it says keep-alive */
	return KH_OK;
}

/* Parse ps->head[0..headlen), which ends with CRLF CRLF. */
static int parse_head(struct kh_http_parser *ps)
{
	const uint8_t *h = ps->head;
	size_t n = ps->headlen - 2, i = 0, fields = 0; /* without the final CRLF */
	struct head_seen seen = {false, false};
	struct kh_http_resp *r = ps->r;
	int e;

	/* every line ends in CRLF (bare LF was refused while reading) */
	while (i < n && h[i] != '\r')
		i++;
	if ((e = status_line(ps, h, i)) != KH_OK)
		return e;
	r->content_length = -1;
	r->chunked = r->conn_upgrade = false;
	r->upgrade[0] = r->content_type[0] = '\0';
	i += 2;
	while (i < n) {
		size_t b = i, colon, vb, ve;
		while (i < n && h[i] != '\r')
			i++;
		/* the line is h[b..i) */
		if (h[b] == ' ' || h[b] == '\t')
			return bad(ps, KH_ERR_PROTOCOL, "obsolete line folding in the header");
		if (++fields > KH_HTTP_FIELDS_MAX)
			return bad(ps, KH_ERR_TOO_LARGE, "more than %u header fields",
				   KH_HTTP_FIELDS_MAX);
		colon = b;
		while (colon < i && is_tchar(h[colon]))
			colon++;
		if (colon == b || colon == i || h[colon] != ':')
			return bad(ps, KH_ERR_PROTOCOL, "malformed header field (line %zu)", fields + 1);
		vb = colon + 1;
		ve = i;
		while (vb < ve && (h[vb] == ' ' || h[vb] == '\t'))
			vb++;
		while (ve > vb && (h[ve - 1] == ' ' || h[ve - 1] == '\t'))
			ve--;
		for (size_t k = vb; k < ve; k++)
			if (!is_field_char(h[k]))
				return bad(ps, KH_ERR_PROTOCOL,
					   "control character in a header field value");
		if ((e = header_field(ps, &seen, h + b, colon - b, h + vb, ve - vb)) != KH_OK)
			return e;
		i += 2;
	}
	if (seen.cl && seen.te)
		return bad(ps, KH_ERR_PROTOCOL,
			   "both Content-Length and Transfer-Encoding in one response");
	if (r->chunked && r->minor == 0)
		return bad(ps, KH_ERR_PROTOCOL, "chunked coding in an HTTP/1.0 response");
	return KH_OK;
}

/* After the head: where the body starts, or the next head after a 1xx. */
static int after_head(struct kh_http_parser *ps)
{
	struct kh_http_resp *r = ps->r;
	size_t max = kh_buf_max(r->body);
	int e;

	if ((e = parse_head(ps)) != KH_OK)
		return e;
	ps->headlen = 0;
	if (r->status >= 100 && r->status < 200 && r->status != 101) {
		ps->state = KH_HTTP_P_HEAD; /* interim: the final answer follows */
		return KH_OK;
	}
	if (r->status == 101 || r->status == 204 || r->status == 304 || ps->head_request) {
		ps->state = KH_HTTP_P_DONE;
		return KH_OK;
	}
	if (r->chunked) {
		ps->state = KH_HTTP_P_CHUNK_SIZE;
		return KH_OK;
	}
	if (r->content_length >= 0) {
		if ((unsigned long long)r->content_length > max)
			return bad(ps, KH_ERR_TOO_LARGE, "a body of %lld bytes exceeds the limit of %zu",
				   r->content_length, max);
		ps->left = (unsigned long long)r->content_length;
		ps->state = ps->left ? KH_HTTP_P_BODY_LENGTH : KH_HTTP_P_DONE;
		return KH_OK;
	}
	r->close = true; /* the body runs to the close */
	ps->state = KH_HTTP_P_BODY_EOF;
	return KH_OK;
}

/* chunk-size [ chunk-ext ] CRLF, the line in ps->head without CRLF */
static int chunk_size_line(struct kh_http_parser *ps)
{
	const uint8_t *h = ps->head;
	size_t n = ps->headlen - 2, i = 0;
	unsigned long long v = 0;
	size_t room = kh_buf_max(ps->r->body) - kh_buf_len(ps->r->body);

	while (i < n) {
		uint8_t c = h[i], d;
		if (is_digit(c))
			d = (uint8_t)(c - '0');
		else if (lower(c) >= 'a' && lower(c) <= 'f')
			d = (uint8_t)(lower(c) - 'a' + 10);
		else
			break;
		if (i >= 15)
			return bad(ps, KH_ERR_TOO_LARGE, "chunk size too large");
		v = v * 16 + d;
		i++;
	}
	if (i == 0)
		return bad(ps, KH_ERR_PROTOCOL, "malformed chunk size");
	/* BWS ; chunk-ext: accepted and ignored; nothing else may follow */
	while (i < n && (h[i] == ' ' || h[i] == '\t'))
		i++;
	if (i < n && h[i] != ';')
		return bad(ps, KH_ERR_PROTOCOL, "malformed chunk size");
	for (; i < n; i++)
		if (!is_field_char(h[i]))
			return bad(ps, KH_ERR_PROTOCOL, "control character in a chunk extension");
	if (v > room)
		return bad(ps, KH_ERR_TOO_LARGE, "the chunked body exceeds the limit of %zu",
			   kh_buf_max(ps->r->body));
	ps->headlen = 0;
	ps->left = v;
	ps->state = v ? KH_HTTP_P_CHUNK_DATA : KH_HTTP_P_TRAILER;
	return KH_OK;
}

/* A trailer line (ps->head without CRLF): field syntax, then ignored. */
static int trailer_line(struct kh_http_parser *ps)
{
	const uint8_t *h = ps->head;
	size_t n = ps->headlen - 2, colon = 0;

	if (n == 0) {
		ps->state = KH_HTTP_P_DONE;
		return KH_OK;
	}
	while (colon < n && is_tchar(h[colon]))
		colon++;
	if (colon == 0 || colon == n || h[colon] != ':')
		return bad(ps, KH_ERR_PROTOCOL, "malformed trailer field");
	for (size_t k = colon + 1; k < n; k++)
		if (!is_field_char(h[k]))
			return bad(ps, KH_ERR_PROTOCOL, "control character in a trailer field");
	ps->headlen = 0;
	return KH_OK;
}

/* Take one byte of a CRLF-terminated line into ps->head; 1 when the line
 * (or, for the head, the empty line ending it) is complete. */
static int line_byte(struct kh_http_parser *ps, uint8_t c, size_t max, const char *what)
{
	if (ps->headlen >= max)
		return bad(ps, KH_ERR_TOO_LARGE, "%s longer than %zu bytes", what, max);
	if (c == '\n' && (ps->headlen == 0 || ps->head[ps->headlen - 1] != '\r'))
		return bad(ps, KH_ERR_PROTOCOL, "a line in the %s ends without CR", what);
	if (ps->headlen > 0 && ps->head[ps->headlen - 1] == '\r' && c != '\n')
		return bad(ps, KH_ERR_PROTOCOL, "a CR in the %s without LF", what);
	if (c == 0)
		return bad(ps, KH_ERR_PROTOCOL, "a NUL byte in the %s", what);
	ps->head[ps->headlen++] = c;
	return c == '\n' ? 1 : 0;
}

static int take_body(struct kh_http_parser *ps, const uint8_t *p, size_t n, size_t *took)
{
	size_t k = n;
	int e;

	if (ps->state != KH_HTTP_P_BODY_EOF && ps->left < k)
		k = (size_t)ps->left;
	if (k > kh_buf_max(ps->r->body) - kh_buf_len(ps->r->body))
		return bad(ps, KH_ERR_TOO_LARGE, "the body exceeds the limit of %zu",
			   kh_buf_max(ps->r->body));
	if ((e = kh_buf_put(ps->r->body, p, k)) != KH_OK)
		return bad(ps, e, "cannot hold the body (%s)", kh_strerror(e));
	if (ps->state != KH_HTTP_P_BODY_EOF)
		ps->left -= k;
	*took = k;
	return KH_OK;
}

int kh_http_parser_feed(struct kh_http_parser *ps, const uint8_t *p, size_t n, size_t *used)
{
	size_t i = 0, took;
	int e;

	*used = 0;
	if (ps->state == KH_HTTP_P_FAILED)
		return ps->err;
	while (i < n && ps->state != KH_HTTP_P_DONE) {
		switch (ps->state) {
		case KH_HTTP_P_HEAD:
			if ((e = line_byte(ps, p[i++], KH_HTTP_HEAD_MAX, "response head")) < 0)
				return e;
			if (e == 1 && ps->headlen == 2)
				return bad(ps, KH_ERR_PROTOCOL, "an empty line before the status line");
			if (e == 1 && ps->headlen >= 4 && ps->head[ps->headlen - 3] == '\n' &&
			    (e = after_head(ps)) != KH_OK)
				return e;
			break;
		case KH_HTTP_P_BODY_LENGTH:
		case KH_HTTP_P_CHUNK_DATA:
		case KH_HTTP_P_BODY_EOF:
			if ((e = take_body(ps, p + i, n - i, &took)) != KH_OK)
				return e;
			i += took;
			if (ps->left == 0 && ps->state == KH_HTTP_P_BODY_LENGTH)
				ps->state = KH_HTTP_P_DONE;
			else if (ps->left == 0 && ps->state == KH_HTTP_P_CHUNK_DATA)
				ps->state = KH_HTTP_P_CHUNK_END;
			break;
		case KH_HTTP_P_CHUNK_END:
			/* CRLF after the chunk data */
			if (p[i] != (ps->headlen == 0 ? '\r' : '\n'))
				return bad(ps, KH_ERR_PROTOCOL, "chunk data not followed by CRLF");
			i++;
			if (++ps->headlen == 2) {
				ps->headlen = 0;
				ps->state = KH_HTTP_P_CHUNK_SIZE;
			}
			break;
		case KH_HTTP_P_CHUNK_SIZE:
			if ((e = line_byte(ps, p[i++], KH_HTTP_CHUNK_LINE_MAX, "chunk size line")) < 0)
				return e;
			if (e == 1 && (e = chunk_size_line(ps)) != KH_OK)
				return e;
			break;
		case KH_HTTP_P_TRAILER:
			if (++ps->trailer_total > KH_HTTP_HEAD_MAX)
				return bad(ps, KH_ERR_TOO_LARGE, "trailer longer than %u bytes",
					   KH_HTTP_HEAD_MAX);
			if ((e = line_byte(ps, p[i++], KH_HTTP_HEAD_MAX, "trailer")) < 0)
				return e;
			if (e == 1 && (e = trailer_line(ps)) != KH_OK)
				return e;
			break;
		default:
			return bad(ps, KH_ERR_INTERNAL, "parser in a bad state");
		}
	}
	*used = i;
	return ps->state == KH_HTTP_P_DONE ? KH_OK : KH_ERR_INCOMPLETE;
}

int kh_http_parser_eof(struct kh_http_parser *ps)
{
	switch (ps->state) {
	case KH_HTTP_P_DONE:
		return KH_OK;
	case KH_HTTP_P_BODY_EOF:
		ps->state = KH_HTTP_P_DONE;
		return KH_OK;
	case KH_HTTP_P_FAILED:
		return ps->err;
	case KH_HTTP_P_HEAD:
		return bad(ps, KH_ERR_PROTOCOL, ps->headlen ? "connection closed inside the response head"
							    : "connection closed without a response");
	default:
		return bad(ps, KH_ERR_PROTOCOL, "connection closed before the end of the body");
	}
}

/* ---- the request ---- */

static bool token_ok(const char *s)
{
	if (s == NULL || *s == '\0')
		return false;
	for (; *s; s++)
		if (!is_tchar((uint8_t)*s))
			return false;
	return true;
}

/* visible ASCII, no space: a request target, a Host value, a bearer token */
static bool visible_ok(const char *s)
{
	if (s == NULL || *s == '\0')
		return false;
	for (; *s; s++)
		if ((uint8_t)*s <= 0x20 || (uint8_t)*s >= 0x7f)
			return false;
	return true;
}

static int write_request(struct kh_buf *b, const struct kh_http_req *rq)
{
	int e;

	if (!token_ok(rq->method) || !visible_ok(rq->target) || rq->target[0] != '/' ||
	    !visible_ok(rq->host) || (rq->bearer && !visible_ok(rq->bearer)) ||
	    (rq->upgrade && !token_ok(rq->upgrade)))
		return KH_ERR_BAD_FIELD;
	if ((e = kh_buf_putf(b, "%s %s HTTP/1.1\r\nHost: %s\r\n", rq->method, rq->target,
			     rq->host)) != KH_OK)
		return e;
	if (rq->bearer && ((e = kh_buf_put_str(b, "Authorization: Bearer ")) != KH_OK ||
			   (e = kh_buf_put_str(b, rq->bearer)) != KH_OK ||
			   (e = kh_buf_put_str(b, "\r\n")) != KH_OK))
		return e;
	if (rq->upgrade &&
	    (e = kh_buf_putf(b, "Connection: Upgrade\r\nUpgrade: %s\r\n", rq->upgrade)) != KH_OK)
		return e;
	if ((e = kh_buf_put_str(b, "Accept: application/json\r\nUser-Agent: keyhold/" KH_VERSION
				   "\r\n")) != KH_OK)
		return e;
	if (rq->body) {
		if ((e = kh_buf_putf(b, "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
				     rq->body_len)) != KH_OK ||
		    (e = kh_buf_put(b, rq->body, rq->body_len)) != KH_OK)
			return e;
	} else if (strcmp(rq->method, "POST") == 0 || strcmp(rq->method, "PUT") == 0) {
		if ((e = kh_buf_put_str(b, "Content-Length: 0\r\n\r\n")) != KH_OK)
			return e;
	} else if ((e = kh_buf_put_str(b, "\r\n")) != KH_OK) {
		return e;
	}
	return KH_OK;
}

int kh_http_exchange(struct kh_client *c, const struct kh_http_req *rq, struct kh_http_resp *rs,
		     char *why, size_t whysz)
{
	struct kh_http_parser *ps = NULL;
	struct kh_buf *req = kh_buf_new(KH_HTTP_HEAD_MAX + rq->body_len);
	uint8_t *rbuf = malloc(READ_CHUNK);
	int e;

	why[0] = '\0';
	if (req == NULL || rbuf == NULL || (ps = malloc(sizeof(*ps))) == NULL) {
		snprintf(why, whysz, "out of memory");
		e = KH_ERR_NOMEM;
		goto out;
	}
	if ((e = write_request(req, rq)) != KH_OK) {
		snprintf(why, whysz, e == KH_ERR_BAD_FIELD ? "a request field cannot go on the wire"
							    : "request too large");
		goto out;
	}
	if ((e = kh_client_write(c, kh_buf_ptr(req), kh_buf_len(req))) != KH_OK) {
		snprintf(why, whysz, "%s", kh_client_error(c));
		goto out;
	}
	kh_http_parser_init(ps, rs, strcmp(rq->method, "HEAD") == 0);
	for (;;) {
		size_t got = 0, used = 0;
		e = kh_client_read(c, rbuf, READ_CHUNK, &got);
		if (e == KH_ERR_CLOSED && got == 0) {
			if ((e = kh_http_parser_eof(ps)) != KH_OK) {
				snprintf(why, whysz, "%s", kh_http_parser_why(ps));
				goto out;
			}
			kh_client_disconnect(c);
			break;
		}
		if (e != KH_OK) {
			snprintf(why, whysz, "%s", kh_client_error(c));
			goto out;
		}
		e = kh_http_parser_feed(ps, rbuf, got, &used);
		if (e == KH_ERR_INCOMPLETE)
			continue;
		if (e != KH_OK) {
			snprintf(why, whysz, "%s", kh_http_parser_why(ps));
			goto out;
		}
		if (used != got) {
			/* nothing is pipelined, and the upgraded stream starts
			 * with our hello: the server is out of step */
			snprintf(why, whysz, "%s", rs->status == 101
				 ? "bytes of the upgraded stream arrived with the 101 answer"
				 : "bytes after the end of the response");
			e = KH_ERR_PROTOCOL;
			goto out;
		}
		if (rs->close && rs->status != 101)
			kh_client_disconnect(c);
		break;
	}
	e = KH_OK;
out:
	if (e != KH_OK)
		kh_client_disconnect(c);
	if (rbuf) {
		kh_wipe(rbuf, READ_CHUNK);
		free(rbuf);
	}
	if (ps) {
		kh_wipe(ps, sizeof(*ps));
		free(ps);
	}
	kh_buf_free(req);
	return e;
}

/*
 * A small HTTP/1.1 client over a kh_client connection (the CLI's HTTPS to
 * keyhold-guardian): one request at a time, and a strict, incremental
 * response parser with hard limits that refuses whatever it does not
 * understand (no line folding, no bare LF, no Content-Length beside
 * Transfer-Encoding, no coding but chunked) with a reason. Bodies live in
 * wiped kh_bufs: they carry session tokens. It never logs a byte it handles.
 */
#ifndef KH_HTTP_H
#define KH_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "common/kh_err.h"

struct kh_buf;
struct kh_client;

#define KH_HTTP_HEAD_MAX 16384u          /* status line and header fields */
#define KH_HTTP_FIELDS_MAX 100u          /* header fields in one head */
#define KH_HTTP_BODY_MAX (16u << 20)     /* default body ceiling */
#define KH_HTTP_CHUNK_LINE_MAX 1024u     /* a chunk-size line with extensions */

struct kh_http_resp {
	int status;               /* 100..599 */
	int minor;                /* HTTP/1.<minor>: 0 or 1 */
	char reason[128];         /* printable ASCII, others as '?' */
	long long content_length; /* -1: none given */
	bool chunked;             /* Transfer-Encoding: chunked */
	bool close;               /* the server closes after this response */
	bool conn_upgrade;        /* "upgrade" among the Connection options */
	char upgrade[64];         /* the Upgrade field ("" when none) */
	char content_type[128];   /* "" when none; longer values cut */
	struct kh_buf *body;      /* the decoded body (no chunk framing) */
};

/* An empty response with a body ceiling (0: KH_HTTP_BODY_MAX). */
KH_MUST_CHECK int kh_http_resp_init(struct kh_http_resp *r, size_t body_max);
/* Wipes and frees the body; the struct may be initialised again. */
void kh_http_resp_free(struct kh_http_resp *r);

enum kh_http_pstate {
	KH_HTTP_P_HEAD,
	KH_HTTP_P_BODY_LENGTH,
	KH_HTTP_P_BODY_EOF,
	KH_HTTP_P_CHUNK_SIZE,
	KH_HTTP_P_CHUNK_DATA,
	KH_HTTP_P_CHUNK_END,
	KH_HTTP_P_TRAILER,
	KH_HTTP_P_DONE,
	KH_HTTP_P_FAILED,
};

struct kh_http_parser {
	enum kh_http_pstate state;
	struct kh_http_resp *r;
	bool head_request;        /* the answer to HEAD has no body */
	uint8_t head[KH_HTTP_HEAD_MAX]; /* the head, or a chunk line or trailer */
	size_t headlen;
	size_t trailer_total;
	unsigned long long left;  /* body or chunk bytes still to come */
	int err;
	char why[192];
};

/* Parse one response into r (initialised, empty). */
void kh_http_parser_init(struct kh_http_parser *ps, struct kh_http_resp *r, bool head_request);
/* Feed the next n bytes. KH_OK: the response is complete after *used bytes
 * (what follows belongs to the next response or, after a 101, to the
 * upgraded stream). KH_ERR_INCOMPLETE: all n taken, more needed.
 * KH_ERR_PROTOCOL (malformed, or a transfer coding other than chunked) or
 * KH_ERR_TOO_LARGE (a limit), with the reason
 * in kh_http_parser_why; every later call fails the same way. 1xx answers
 * other than 101 are skipped. */
KH_MUST_CHECK int kh_http_parser_feed(struct kh_http_parser *ps, const uint8_t *p, size_t n,
				      size_t *used);
/* The peer closed the connection: KH_OK when that ends a body sent without
 * a length, else KH_ERR_PROTOCOL (a truncated response). */
KH_MUST_CHECK int kh_http_parser_eof(struct kh_http_parser *ps);
/* One line on the last failure ("" if none); never holds body bytes. */
const char *kh_http_parser_why(const struct kh_http_parser *ps);

struct kh_http_req {
	const char *method;        /* "GET", "POST", "PUT", "DELETE" */
	const char *target;        /* origin form with the query: "/api/events?max=5" */
	const char *host;          /* the Host field, e.g. "10.0.0.5:8080" */
	const char *bearer;        /* Authorization: Bearer <token>; NULL: none */
	const char *upgrade;       /* asks for Connection: Upgrade to this protocol; NULL: none */
	const uint8_t *body;       /* JSON (Content-Type: application/json); NULL: none */
	size_t body_len;
};

/* Send rq on c (connected) and read the answer into rs (initialised, empty).
 * A connection the server closes (Connection: close, HTTP/1.0, a body to
 * the close) is disconnected afterwards. After a 101 the connection carries
 * the upgraded stream; no byte of it may have arrived with the answer.
 * Errors: KH_ERR_BAD_FIELD (a request field that cannot go on the wire),
 * kh_client's transport errors, and the parser's. why gets one line:
 * kh_client_error's text or the parser's reason. */
KH_MUST_CHECK int kh_http_exchange(struct kh_client *c, const struct kh_http_req *rq,
				   struct kh_http_resp *rs, char *why, size_t whysz);

#endif

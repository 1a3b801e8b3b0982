/*
 * kh_http: the response parser on good and bad input (whole, byte by byte),
 * and the client end to end against a loopback HTTPS server thread with
 * certificates made by the test: keep-alive, Content-Length and chunked
 * answers, the request as sent, and the relay (101, then kh_client's mutual
 * TLS to an "HSM" inside the HTTPS stream, TLS in TLS).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "common/kh_buf.h"
#include "common/kh_client.h"
#include "common/kh_err.h"
#include "common/kh_frame.h"
#include "common/kh_http.h"
#include "hsm/pki.h"

/* ---- the parser ---- */

struct parsed {
	int rc;
	size_t used;
	struct kh_http_resp r;
	char why[192];
};

/* Feed s whole (step 0) or in pieces of step bytes; then EOF when eof. */
static void parse(struct parsed *p, const char *s, size_t n, size_t step, bool eof,
		  size_t body_max)
{
	struct kh_http_parser *ps = malloc(sizeof(*ps));
	size_t off = 0;

	assert_non_null(ps);
	memset(p, 0, sizeof(*p));
	assert_int_equal(kh_http_resp_init(&p->r, body_max), KH_OK);
	kh_http_parser_init(ps, &p->r, false);
	p->rc = KH_ERR_INCOMPLETE;
	while (off < n) {
		size_t k = step && n - off > step ? step : n - off, used = 0;
		p->rc = kh_http_parser_feed(ps, (const uint8_t *)s + off, k, &used);
		assert_true(used <= k);
		off += used;
		if (p->rc != KH_ERR_INCOMPLETE)
			break;
		assert_int_equal(used, k);
	}
	p->used = off;
	if (p->rc == KH_ERR_INCOMPLETE && eof)
		p->rc = kh_http_parser_eof(ps);
	snprintf(p->why, sizeof(p->why), "%s", kh_http_parser_why(ps));
	free(ps);
}

static void done(struct parsed *p)
{
	kh_http_resp_free(&p->r);
}

static bool body_is(struct parsed *p, const char *s)
{
	return kh_buf_len(p->r.body) == strlen(s) &&
	       memcmp(kh_buf_ptr(p->r.body), s, strlen(s)) == 0;
}

/* The same answer whole, byte by byte and in 7-byte pieces. */
static void parse_all_ways(const char *s, bool eof, int want_rc, const char *want_body)
{
	size_t steps[] = {0, 1, 7};
	for (size_t i = 0; i < 3; i++) {
		struct parsed p;
		parse(&p, s, strlen(s), steps[i], eof, 0);
		if (p.rc != want_rc)
			print_message("step %zu: rc %d (%s)\n", steps[i], p.rc, p.why);
		assert_int_equal(p.rc, want_rc);
		if (want_body)
			assert_true(body_is(&p, want_body));
		if (want_rc != KH_OK)
			assert_true(p.why[0] != '\0');
		done(&p);
	}
}

static void test_content_length(void **state)
{
	struct parsed p;
	const char *s = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
			"Content-Length: 11\r\nX-Other:  spaced value \r\n\r\n{\"a\":true}\nEXTRA";
	(void)state;
	parse(&p, s, strlen(s), 0, false, 0);
	assert_int_equal(p.rc, KH_OK);
	assert_int_equal(p.r.status, 200);
	assert_string_equal(p.r.reason, "OK");
	assert_int_equal(p.r.minor, 1);
	assert_int_equal(p.r.content_length, 11);
	assert_false(p.r.close);
	assert_string_equal(p.r.content_type, "application/json");
	assert_true(body_is(&p, "{\"a\":true}\n"));
	assert_int_equal(p.used, strlen(s) - 5); /* EXTRA is not this answer's */
	done(&p);
	parse_all_ways("HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}", false, KH_OK, "{}");
	/* an empty reason, with and without its SP */
	parse_all_ways("HTTP/1.1 204\r\n\r\n", false, KH_OK, "");
	parse_all_ways("HTTP/1.1 204 \r\n\r\n", false, KH_OK, "");
}

static void test_chunked(void **state)
{
	struct parsed p;
	const char *s = "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n"
			"4\r\n{\"a\"\r\n6;ext=1\r\n:[1,2]\r\nA \r\n,\"b\":\"xyz\"\r\n1\r\n}\r\n"
			"0\r\nTrailer-Field: x\r\n\r\n";
	(void)state;
	parse_all_ways(s, false, KH_OK, "{\"a\":[1,2],\"b\":\"xyz\"}");
	parse(&p, s, strlen(s), 0, false, 0);
	assert_true(p.r.chunked);
	assert_int_equal(p.r.content_length, -1);
	assert_int_equal(p.used, strlen(s));
	done(&p);
	parse_all_ways("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", false,
		       KH_OK, "");
}

static void test_interim_upgrade_close(void **state)
{
	struct parsed p;
	const char *up = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
			 "Upgrade: keyhold-relay\r\n\r\n";
	(void)state;
	parse(&p, up, strlen(up), 0, false, 0);
	assert_int_equal(p.rc, KH_OK);
	assert_int_equal(p.r.status, 101);
	assert_true(p.r.conn_upgrade);
	assert_string_equal(p.r.upgrade, "keyhold-relay");
	done(&p);
	/* 100 Continue is skipped */
	parse_all_ways("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
		       false, KH_OK, "x");
	/* a body to the close */
	parse_all_ways("HTTP/1.1 200 OK\r\n\r\nuntil the end", true, KH_OK, "until the end");
	parse(&p, "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", 38, 0, false, 0);
	assert_int_equal(p.rc, KH_OK);
	assert_true(p.r.close);
	done(&p);
	const char *ka = "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n";
	parse(&p, ka, strlen(ka), 0, false, 0);
	assert_int_equal(p.rc, KH_OK);
	assert_false(p.r.close);
	done(&p);
	const char *cl = "HTTP/1.1 200 OK\r\nConnection: foo, close\r\nContent-Length: 0\r\n\r\n";
	parse(&p, cl, strlen(cl), 0, false, 0);
	assert_int_equal(p.rc, KH_OK);
	assert_true(p.r.close);
	done(&p);
}

static void test_malformed(void **state)
{
	static const char *const bad[] = {
		"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",            /* bare LF */
		"HTTP/1.1 200 OK\r\nContent-Length: 0\n\r\n",            /* bare LF */
		"HTTP/1.1 200 OK\r\nA: b\r\n c\r\nContent-Length: 0\r\n\r\n", /* folding */
		"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
		"HTTP/1.1 200 OK\r\nContent-Length: 1a\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\nx",
		"HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n",
		"HTTP/2 200 OK\r\n\r\n",
		"HTTP/1.2 200 OK\r\n\r\n",
		"http/1.1 200 OK\r\n\r\n",
		"HTTP/1.1 099 Low\r\n\r\n",
		"HTTP/1.1 600 High\r\n\r\n",
		"HTTP/1.1 20 OK\r\n\r\n",
		"HTTP/1.1 2000 OK\r\n\r\n",
		"HTTP/1.1  200 OK\r\n\r\n",
		"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
		"HTTP/1.1 200 OK\r\nName : x\r\n\r\n",
		"HTTP/1.1 200 OK\r\n: x\r\n\r\n",
		"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n",
		"HTTP/1.1 200 OK\r\nA: b\x01\r\n\r\n",
		"HTTP/1.1 200 OK\r\nA: b\rc\r\n\r\n",
		"HTTP/1.1 200 O\x7fK\r\n\r\n",
		"\r\nHTTP/1.1 200 OK\r\n\r\n",
		"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZ\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1x\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nbad trailer\r\n\r\n",
		"HTTP/1.1 200 OK\r\nConnection: a b\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nUpgrade: 0123456789012345678901234567890123456789012345678901234567890123456789\r\n\r\n",
	};
	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct parsed p;
		parse(&p, bad[i], strlen(bad[i]), 0, true, 0);
		if (p.rc == KH_OK || p.rc == KH_ERR_INCOMPLETE)
			print_message("accepted bad answer %zu: %s\n", i, bad[i]);
		assert_true(p.rc == KH_ERR_PROTOCOL || p.rc == KH_ERR_TOO_LARGE);
		assert_true(p.why[0] != '\0');
		done(&p);
		parse(&p, bad[i], strlen(bad[i]), 1, true, 0);
		assert_true(p.rc == KH_ERR_PROTOCOL || p.rc == KH_ERR_TOO_LARGE);
		done(&p);
	}
	/* a NUL byte */
	struct parsed p;
	parse(&p, "HTTP/1.1 200 OK\r\nA: \0\r\n\r\n", 25, 0, true, 0);
	assert_int_equal(p.rc, KH_ERR_PROTOCOL);
	done(&p);
}

static void test_truncated_and_limits(void **state)
{
	struct parsed p;
	char *big;
	(void)state;
	/* truncated: EOF inside the head, the body, a chunk */
	parse_all_ways("", true, KH_ERR_PROTOCOL, NULL);
	parse_all_ways("HTTP/1.1 200 OK\r\nContent-Len", true, KH_ERR_PROTOCOL, NULL);
	parse_all_ways("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", true, KH_ERR_PROTOCOL,
		       NULL);
	parse_all_ways("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", true,
		       KH_ERR_PROTOCOL, NULL);
	parse_all_ways("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n", true,
		       KH_ERR_PROTOCOL, NULL);
	/* without EOF it only wants more */
	parse(&p, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", 44, 0, false, 0);
	assert_int_equal(p.rc, KH_ERR_INCOMPLETE);
	done(&p);
	/* the body ceiling: by Content-Length, by chunks, to the close */
	parse(&p, "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n", 40, 0, false, 10);
	assert_int_equal(p.rc, KH_ERR_TOO_LARGE);
	done(&p);
	const char *ch = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
			 "6\r\nabcdef\r\n6\r\nghijkl\r\n0\r\n\r\n";
	parse(&p, ch, strlen(ch), 0, false, 10);
	assert_int_equal(p.rc, KH_ERR_TOO_LARGE);
	done(&p);
	parse(&p, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFF\r\n", 65,
	      0, false, 0);
	assert_int_equal(p.rc, KH_ERR_TOO_LARGE);
	done(&p);
	parse(&p, "HTTP/1.1 200 OK\r\n\r\n0123456789x", 30, 0, true, 10);
	assert_int_equal(p.rc, KH_ERR_TOO_LARGE);
	done(&p);
	/* a head beyond its limit, and too many fields */
	big = malloc(KH_HTTP_HEAD_MAX + 64);
	assert_non_null(big);
	snprintf(big, KH_HTTP_HEAD_MAX + 64, "HTTP/1.1 200 OK\r\nX: ");
	memset(big + strlen(big), 'a', KH_HTTP_HEAD_MAX);
	big[KH_HTTP_HEAD_MAX + 20] = '\0';
	parse(&p, big, strlen(big), 0, false, 0);
	assert_int_equal(p.rc, KH_ERR_TOO_LARGE);
	done(&p);
	size_t o = (size_t)snprintf(big, KH_HTTP_HEAD_MAX, "HTTP/1.1 200 OK\r\n");
	for (unsigned i = 0; i <= KH_HTTP_FIELDS_MAX; i++)
		o += (size_t)snprintf(big + o, KH_HTTP_HEAD_MAX - o, "F%u: v\r\n", i);
	snprintf(big + o, KH_HTTP_HEAD_MAX - o, "\r\n");
	parse(&p, big, strlen(big), 0, false, 0);
	assert_int_equal(p.rc, KH_ERR_TOO_LARGE);
	done(&p);
	free(big);
}

/* ---- a loopback HTTPS server ---- */

struct pki {
	char dir[64];
	char ca[128], client_cert[128], client_key[128];
	SSL_CTX *guardian, *hsm; /* server contexts */
};

static void write_pem_cert(const char *path, X509 *x)
{
	FILE *fp = fopen(path, "w");
	assert_non_null(fp);
	assert_int_equal(PEM_write_X509(fp, x), 1);
	fclose(fp);
}

static SSL_CTX *server_ctx(X509 *ca, EVP_PKEY *cakey, const char *cn, bool want_client_cert)
{
	struct kh_pki_keyspec spec = {KH_PKI_EC, 256};
	EVP_PKEY *key = NULL;
	X509 *cert = NULL;
	const char *why = NULL;
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

	assert_non_null(ctx);
	assert_int_equal(kh_pki_keygen(&spec, &key), KH_OK);
	assert_int_equal(kh_pki_server_cert(ca, cakey, key, cn, "IP:127.0.0.1", 30, time(NULL),
					    &cert, &why),
			 KH_OK);
	assert_int_equal(SSL_CTX_use_certificate(ctx, cert), 1);
	assert_int_equal(SSL_CTX_use_PrivateKey(ctx, key), 1);
	if (want_client_cert) {
		X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx), ca);
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
	}
	X509_free(cert);
	EVP_PKEY_free(key);
	return ctx;
}

static int pki_setup(void **state)
{
	struct kh_pki_keyspec spec = {KH_PKI_EC, 256};
	struct pki *k = calloc(1, sizeof(*k));
	EVP_PKEY *cakey = NULL, *ckey = NULL;
	X509 *ca = NULL, *ccert = NULL;
	X509_REQ *req = NULL;
	const char *why = NULL;
	FILE *fp;

	snprintf(k->dir, sizeof(k->dir), "/tmp/kh_http_XXXXXX");
	if (mkdtemp(k->dir) == NULL)
		return -1;
	snprintf(k->ca, sizeof(k->ca), "%s/ca.pem", k->dir);
	snprintf(k->client_cert, sizeof(k->client_cert), "%s/client.pem", k->dir);
	snprintf(k->client_key, sizeof(k->client_key), "%s/client.key", k->dir);
	assert_int_equal(kh_pki_keygen(&spec, &cakey), KH_OK);
	assert_int_equal(kh_pki_ca_new(cakey, "test CA", 30, time(NULL), &ca), KH_OK);
	write_pem_cert(k->ca, ca);
	assert_int_equal(kh_pki_keygen(&spec, &ckey), KH_OK);
	assert_int_equal(kh_pki_csr_new(ckey, "admin-cli", NULL, &req, &why), KH_OK);
	assert_int_equal(kh_pki_client_cert(ca, cakey, req, 30, time(NULL), &ccert, &why), KH_OK);
	write_pem_cert(k->client_cert, ccert);
	fp = fopen(k->client_key, "w");
	assert_non_null(fp);
	assert_int_equal(PEM_write_PrivateKey(fp, ckey, NULL, NULL, 0, NULL, NULL), 1);
	fclose(fp);
	k->guardian = server_ctx(ca, cakey, "guardian", false);
	k->hsm = server_ctx(ca, cakey, "hsm", true);
	X509_REQ_free(req);
	X509_free(ccert);
	X509_free(ca);
	EVP_PKEY_free(ckey);
	EVP_PKEY_free(cakey);
	*state = k;
	return 0;
}

static int pki_teardown(void **state)
{
	struct pki *k = *state;
	char cmd[128];
	SSL_CTX_free(k->guardian);
	SSL_CTX_free(k->hsm);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", k->dir);
	if (system(cmd) != 0)
		return -1;
	free(k);
	return 0;
}

/* What the server thread answers to each request on its one connection. */
struct srv {
	struct pki *k;
	int lfd;
	unsigned port;
	const char *answers[4];   /* raw answers in order; a 101 starts the HSM */
	size_t nanswers;
	char reqs[8192];          /* every request head and body as received */
	size_t reqlen;
	char hsm_peer[128];       /* the inner TLS client certificate's CN */
	char hsm_got[256];        /* frames the HSM received */
	pthread_t th;
};

/* One request (head and Content-Length body) from ssl into sv->reqs. */
static bool read_request(SSL *ssl, struct srv *sv)
{
	size_t start = sv->reqlen, head_end = 0, cl = 0;
	while (sv->reqlen < sizeof(sv->reqs) - 1) {
		char ch;
		if (SSL_read(ssl, &ch, 1) != 1)
			return false;
		sv->reqs[sv->reqlen++] = ch;
		sv->reqs[sv->reqlen] = '\0';
		if (head_end == 0 && sv->reqlen - start >= 4 &&
		    memcmp(sv->reqs + sv->reqlen - 4, "\r\n\r\n", 4) == 0) {
			const char *c = strstr(sv->reqs + start, "Content-Length: ");
			head_end = sv->reqlen;
			cl = c ? strtoul(c + 16, NULL, 10) : 0;
		}
		if (head_end && sv->reqlen - head_end == cl)
			return true;
	}
	return false;
}

/* The "HSM" inside the relayed stream: mutual TLS over outer, then echo
 * every frame back. */
static void run_hsm(struct srv *sv, SSL *outer)
{
	SSL *in = SSL_new(sv->k->hsm);
	BIO *b = BIO_new(BIO_f_ssl());
	char frame[256];
	size_t n = 0;

	BIO_set_ssl(b, outer, BIO_NOCLOSE);
	SSL_set_bio(in, b, b);
	if (SSL_accept(in) != 1)
		goto out;
	X509 *peer = SSL_get1_peer_certificate(in);
	if (peer) {
		X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, sv->hsm_peer,
					  sizeof(sv->hsm_peer));
		X509_free(peer);
	}
	for (;;) {
		char ch;
		if (SSL_read(in, &ch, 1) != 1)
			break;
		if (n < sizeof(frame) - 1)
			frame[n++] = ch;
		if (ch == ']') {
			size_t l = strlen(sv->hsm_got);
			frame[n] = '\0';
			snprintf(sv->hsm_got + l, sizeof(sv->hsm_got) - l, "%s", frame);
			if (SSL_write(in, frame, (int)n) != (int)n)
				break;
			n = 0;
		}
	}
	SSL_shutdown(in);
out:
	SSL_free(in);
}

static void *srv_main(void *arg)
{
	struct srv *sv = arg;
	int fd = accept(sv->lfd, NULL, NULL);
	SSL *ssl;

	if (fd < 0)
		return NULL;
	ssl = SSL_new(sv->k->guardian);
	SSL_set_fd(ssl, fd);
	if (SSL_accept(ssl) == 1) {
		for (size_t i = 0; i < sv->nanswers; i++) {
			if (!read_request(ssl, sv))
				break;
			const char *a = sv->answers[i];
			if (SSL_write(ssl, a, (int)strlen(a)) != (int)strlen(a))
				break;
			if (strncmp(a, "HTTP/1.1 101 ", 13) == 0) {
				run_hsm(sv, ssl);
				break;
			}
		}
		SSL_shutdown(ssl);
	}
	SSL_free(ssl);
	close(fd);
	ERR_clear_error();
	return NULL;
}

static void srv_start(struct srv *sv, struct pki *k)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t sl = sizeof(sa);

	sv->k = k;
	sv->lfd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(sv->lfd >= 0);
	assert_int_equal(bind(sv->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(sv->lfd, 4), 0);
	assert_int_equal(getsockname(sv->lfd, (struct sockaddr *)&sa, &sl), 0);
	sv->port = ntohs(sa.sin_port);
	assert_int_equal(pthread_create(&sv->th, NULL, srv_main, sv), 0);
}

static void srv_stop(struct srv *sv)
{
	pthread_join(sv->th, NULL);
	close(sv->lfd);
}

static struct kh_client *guardian_client(struct pki *k, unsigned port)
{
	struct kh_client_opts o;
	kh_client_opts_init(&o);
	o.host = "127.0.0.1";
	o.port = port;
	o.ca_file = k->ca;
	o.port_name = "guardian";
	o.probe = false;
	o.io_timeout_ms = 10000;
	struct kh_client *c = kh_client_new(&o);
	assert_non_null(c);
	return c;
}

static void test_keepalive_exchange(void **state)
{
	struct pki *k = *state;
	struct srv sv = {0};
	struct kh_http_resp rs;
	char why[256];
	const char body[] = "{\"name\":\"Payments\",\"port\":9200}";

	sv.answers[0] = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
			"Content-Length: 13\r\n\r\n{\"groups\":[]}";
	sv.answers[1] = "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
			"5\r\n{\"id\"\r\n3\r\n:1}\r\n0\r\n\r\n";
	sv.answers[2] = "HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 45\r\n\r\n"
			"{\"error\":\"NOT_FOUND\",\"reason\":\"no group 7\"}\n\n";
	sv.nanswers = 3;
	srv_start(&sv, k);
	struct kh_client *c = guardian_client(k, sv.port);
	assert_int_equal(kh_client_connect(c), KH_OK);

	struct kh_http_req get = {.method = "GET", .target = "/api/groups", .host = "127.0.0.1:8080",
				  .bearer = "00ff"};
	assert_int_equal(kh_http_resp_init(&rs, 0), KH_OK);
	assert_int_equal(kh_http_exchange(c, &get, &rs, why, sizeof(why)), KH_OK);
	assert_int_equal(rs.status, 200);
	assert_int_equal(kh_buf_len(rs.body), 13);
	kh_http_resp_free(&rs);
	assert_true(kh_client_connected(c)); /* kept alive */

	struct kh_http_req post = {.method = "POST", .target = "/api/groups", .host = "h:1",
				   .bearer = "00ff", .body = (const uint8_t *)body,
				   .body_len = strlen(body)};
	assert_int_equal(kh_http_resp_init(&rs, 0), KH_OK);
	assert_int_equal(kh_http_exchange(c, &post, &rs, why, sizeof(why)), KH_OK);
	assert_int_equal(rs.status, 201);
	assert_int_equal(kh_buf_len(rs.body), 8);
	assert_memory_equal(kh_buf_ptr(rs.body), "{\"id\":1}", 8);
	kh_http_resp_free(&rs);

	struct kh_http_req del = {.method = "DELETE", .target = "/api/groups/7", .host = "h:1"};
	assert_int_equal(kh_http_resp_init(&rs, 0), KH_OK);
	assert_int_equal(kh_http_exchange(c, &del, &rs, why, sizeof(why)), KH_OK);
	assert_int_equal(rs.status, 404);
	assert_true(rs.close);
	kh_http_resp_free(&rs);
	assert_false(kh_client_connected(c)); /* the server said close */

	/* a field that cannot go on the wire is refused before sending */
	struct kh_http_req evil = {.method = "GET", .target = "/x\r\nInjected: 1", .host = "h"};
	assert_int_equal(kh_http_resp_init(&rs, 0), KH_OK);
	assert_int_equal(kh_http_exchange(c, &evil, &rs, why, sizeof(why)), KH_ERR_BAD_FIELD);
	kh_http_resp_free(&rs);
	kh_client_free(c);
	srv_stop(&sv);

	assert_non_null(strstr(sv.reqs, "GET /api/groups HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
					"Authorization: Bearer 00ff\r\n"));
	assert_non_null(strstr(sv.reqs, "POST /api/groups HTTP/1.1\r\n"));
	assert_non_null(strstr(sv.reqs, "Content-Type: application/json\r\nContent-Length: 31\r\n"
					"\r\n{\"name\":\"Payments\",\"port\":9200}"));
	assert_non_null(strstr(sv.reqs, "DELETE /api/groups/7 HTTP/1.1\r\nHost: h:1\r\n"));
}

static void test_relay_tls_in_tls(void **state)
{
	struct pki *k = *state;
	struct srv sv = {0};
	struct kh_http_resp rs;
	struct kh_client_opts o;
	struct kh_buf *req = kh_buf_new(256), *resp = kh_buf_new(KH_FRAME_MAX);
	struct kh_frame *f = malloc(sizeof(*f));
	char why[256];

	sv.answers[0] = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
			"Upgrade: keyhold-relay\r\n\r\n";
	sv.nanswers = 1;
	srv_start(&sv, k);
	struct kh_client *g = guardian_client(k, sv.port);
	assert_int_equal(kh_client_connect(g), KH_OK);
	struct kh_http_req rq = {.method = "POST", .target = "/api/devices/3/relay",
				 .host = "127.0.0.1:8080", .bearer = "ab", .upgrade = "keyhold-relay"};
	assert_int_equal(kh_http_resp_init(&rs, 0), KH_OK);
	assert_int_equal(kh_http_exchange(g, &rq, &rs, why, sizeof(why)), KH_OK);
	assert_int_equal(rs.status, 101);
	assert_true(rs.conn_upgrade);
	kh_http_resp_free(&rs);

	/* the HSM client: its own CA, client certificate and name check */
	kh_client_opts_init(&o);
	o.host = "127.0.0.1";
	o.port = 9009;
	o.ca_file = k->ca;
	o.cert_file = k->client_cert;
	o.key_file = k->client_key;
	o.port_name = "Admin, through the guardian";
	o.io_timeout_ms = 10000;
	struct kh_client *h = kh_client_new(&o);
	assert_non_null(h);
	assert_int_equal(kh_client_connect_over(h, g), KH_OK);
	assert_false(kh_client_connected(g));
	assert_true(kh_client_connected(h));
	assert_false(kh_client_stale(h));
	assert_int_equal(kh_msg_begin(req, "ECHO"), KH_OK);
	assert_int_equal(kh_msg_put(req, "BB", "through the relay"), KH_OK);
	assert_int_equal(kh_msg_end(req), KH_OK);
	assert_int_equal(kh_client_call(h, req, resp, f), KH_OK);
	assert_memory_equal(kh_buf_ptr(resp), "[AOECHO;BBthrough the relay;]", kh_buf_len(resp));
	assert_false(kh_client_stale(h));
	kh_client_free(h);
	kh_client_free(g);
	srv_stop(&sv);
	assert_string_equal(sv.hsm_peer, "admin-cli");
	assert_string_equal(sv.hsm_got, "[AOECHO;][AOECHO;BBthrough the relay;]");
	assert_non_null(strstr(sv.reqs, "POST /api/devices/3/relay HTTP/1.1\r\n"));
	assert_non_null(strstr(sv.reqs, "Connection: Upgrade\r\nUpgrade: keyhold-relay\r\n"));
	assert_non_null(strstr(sv.reqs, "Content-Length: 0\r\n\r\n"));
	free(f);
	kh_buf_free(req);
	kh_buf_free(resp);
}

static void test_relay_refusals(void **state)
{
	struct pki *k = *state;
	struct srv sv = {0};
	struct kh_http_resp rs;
	char why[256];

	/* bytes of the stream may not ride with the 101 */
	sv.answers[0] = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
			"Upgrade: keyhold-relay\r\n\r\nEARLY";
	sv.nanswers = 1;
	srv_start(&sv, k);
	struct kh_client *g = guardian_client(k, sv.port);
	assert_int_equal(kh_client_connect(g), KH_OK);
	struct kh_http_req rq = {.method = "POST", .target = "/api/devices/3/relay", .host = "h",
				 .upgrade = "keyhold-relay"};
	assert_int_equal(kh_http_resp_init(&rs, 0), KH_OK);
	assert_int_equal(kh_http_exchange(g, &rq, &rs, why, sizeof(why)), KH_ERR_PROTOCOL);
	assert_non_null(strstr(why, "101"));
	assert_false(kh_client_connected(g));
	kh_http_resp_free(&rs);
	kh_client_free(g);
	srv_stop(&sv);

	/* a server certificate from another CA is refused with a reason */
	struct pki other;
	memset(&other, 0, sizeof(other));
	snprintf(other.ca, sizeof(other.ca), "%s/client.pem", k->dir); /* not the CA */
	memset(&sv, 0, sizeof(sv));
	sv.nanswers = 0;
	srv_start(&sv, k);
	g = guardian_client(&other, sv.port);
	assert_int_equal(kh_client_connect(g), KH_ERR_TLS_CERT_UNKNOWN_CA);
	assert_non_null(strstr(kh_client_error(g), "port "));
	assert_non_null(strstr(kh_client_error(g), "(guardian): TLS handshake: server certificate "
						   "not trusted"));
	kh_client_free(g);
	srv_stop(&sv);
}

int main(void)
{
	/* the server thread writes with write(2): a client that gave up must
	 * fail a test, not kill the process */
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_content_length),
		cmocka_unit_test(test_chunked),
		cmocka_unit_test(test_interim_upgrade_close),
		cmocka_unit_test(test_malformed),
		cmocka_unit_test(test_truncated_and_limits),
		cmocka_unit_test(test_keepalive_exchange),
		cmocka_unit_test(test_relay_tls_in_tls),
		cmocka_unit_test(test_relay_refusals),
	};
	return cmocka_run_group_tests(tests, pki_setup, pki_teardown);
}

/*
 * Excrypt load generator for bench/: C mutual-TLS 1.3 connections, optionally
 * logged in (LOGN), each running one given request frame in sequential round
 * trips (one request each, or with --depth D, D requests in one write) for a
 * fixed time (or count), then one machine-readable result line. By default
 * every connection has its own blocking thread; --threads T spreads them over
 * T threads that drive their connections with epoll, so that on a machine
 * shared with the server the load generator takes fewer wake-ups away from
 * it. Plain OpenSSL, so it measures the server, not our client library; it
 * verifies the server's chain but not its name. The password is read from a
 * file and never printed.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RBUF_INIT (64u * 1024)
#define RBUF_MAX (16u * 1024 * 1024) /* twice the server's frame ceiling */
#define REQ_MAX (8u * 1024 * 1024)
#define MAX_CONNECTIONS 4096
#define PW_MAX 256

struct cfg {
	const char *host;
	const char *port;
	const char *ca;
	const char *cert;
	const char *key;
	const char *id;      /* LOGN identity; NULL = no login */
	const char *pw_file; /* its password, raw bytes */
	const char *request;
	const char *request_file;
	long connections;
	double seconds;
	double warmup;
	uint64_t requests; /* per connection; 0 = run for `seconds` */
	long threads;      /* 0 = one per connection */
	long depth;        /* requests sent together per round trip */
};

struct worker {
	int fd;
	SSL *ssl;
	uint8_t *rbuf;
	size_t rlen, rcap;
	uint64_t requests;
	uint64_t errors;
	uint32_t *lat; /* nanoseconds per measured round trip */
	size_t nlat, cap;
	char why[256]; /* why the connection could not be (re)opened */
	char bad[200]; /* the first unexpected reply, truncated */
	/* event mode: the round trip under way */
	uint64_t t0;
	size_t scanned;
	long awaited;            /* replies still to come for the requests sent */
	bool writing, watch_out; /* the request is not all sent; EPOLLOUT is asked */
};

/* A thread and the connections it drives: ws[first], ws[first + step], ... */
struct runner {
	pthread_t th;
	struct worker *ws;
	long first, step, total;
};

static struct cfg g_cfg;
static SSL_CTX *g_ctx;
static pthread_barrier_t g_ready, g_go;
/* Set up by main before the threads start, read-only afterwards. */
static uint8_t *g_req;
static size_t g_req_len;
static uint8_t *g_batch; /* --depth copies of the request, sent in one write */
static size_t g_batch_len;
static char g_expect[9]; /* "[AO" CMD ";" */
static char *g_login;    /* the LOGN frame (holds the password in hex) */
static size_t g_login_len;
/* Written by main between the two barriers, read-only afterwards. */
static uint64_t g_measure_ns, g_end_ns;
static bool g_abort;

static _Noreturn void usage(void)
{
	fprintf(stderr,
	        "usage: crypto_bench --host H --port N --ca F --cert F --key F\n"
	        "                    (--request FRAME | --request-file F)\n"
	        "                    [--id NAME --password-file F]\n"
	        "                    --connections C (--seconds S | --requests N) [--warmup 1]\n"
	        "                    [--threads T] [--depth D]\n");
	exit(2);
}

static _Noreturn void fail(const char *what)
{
	fprintf(stderr, "crypto_bench: %s\n", what);
	ERR_print_errors_fp(stderr);
	exit(2);
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static double parse_num(const char *v, double lo, double hi)
{
	char *end;
	double d;

	errno = 0;
	d = strtod(v, &end);
	if (*v == '\0' || *end != '\0' || errno != 0 || !(d >= lo && d <= hi))
		usage();
	return d;
}

static void parse_args(int argc, char **argv, struct cfg *c)
{
	c->host = "127.0.0.1";
	c->connections = 1;
	c->seconds = 10;
	c->warmup = 1;
	c->depth = 1;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (i + 1 >= argc)
			usage();
		const char *v = argv[++i];
		if (strcmp(a, "--host") == 0)
			c->host = v;
		else if (strcmp(a, "--port") == 0)
			c->port = v;
		else if (strcmp(a, "--ca") == 0)
			c->ca = v;
		else if (strcmp(a, "--cert") == 0)
			c->cert = v;
		else if (strcmp(a, "--key") == 0)
			c->key = v;
		else if (strcmp(a, "--id") == 0)
			c->id = v;
		else if (strcmp(a, "--password-file") == 0)
			c->pw_file = v;
		else if (strcmp(a, "--request") == 0)
			c->request = v;
		else if (strcmp(a, "--request-file") == 0)
			c->request_file = v;
		else if (strcmp(a, "--connections") == 0)
			c->connections = (long)parse_num(v, 1, MAX_CONNECTIONS);
		else if (strcmp(a, "--seconds") == 0)
			c->seconds = parse_num(v, 0.001, 86400);
		else if (strcmp(a, "--warmup") == 0)
			c->warmup = parse_num(v, 0, 3600);
		else if (strcmp(a, "--requests") == 0)
			c->requests = (uint64_t)parse_num(v, 1, 1e12);
		else if (strcmp(a, "--threads") == 0)
			c->threads = (long)parse_num(v, 1, MAX_CONNECTIONS);
		else if (strcmp(a, "--depth") == 0)
			c->depth = (long)parse_num(v, 1, 64);
		else
			usage();
	}
	if (!c->port || !c->ca || !c->cert || !c->key || !c->request == !c->request_file ||
	    !c->id != !c->pw_file)
		usage();
}

/* Read a whole small file into a NUL-terminated heap buffer; trailing
 * newlines are dropped (a frame or a password written by a shell). */
static char *slurp(const char *path, size_t max, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *p;
	size_t n;

	if (f == NULL) {
		fprintf(stderr, "crypto_bench: %s: %s\n", path, strerror(errno));
		exit(2);
	}
	if ((p = malloc(max + 1)) == NULL)
		fail("out of memory");
	n = fread(p, 1, max + 1, f);
	fclose(f);
	if (n > max) {
		fprintf(stderr, "crypto_bench: %s: longer than %zu bytes\n", path, max);
		exit(2);
	}
	while (n > 0 && (p[n - 1] == '\n' || p[n - 1] == '\r'))
		n--;
	p[n] = '\0';
	*len = n;
	return p;
}

/* The request, the reply prefix it expects, and the LOGN frame. */
static void load_request(const struct cfg *c)
{
	size_t n;

	if (c->request) {
		n = strlen(c->request);
		if ((g_req = malloc(n)) == NULL)
			fail("out of memory");
		memcpy(g_req, c->request, n);
	} else {
		g_req = (uint8_t *)slurp(c->request_file, REQ_MAX, &n);
	}
	g_req_len = n;
	if (n < 9 || memcmp(g_req, "[AO", 3) != 0 || g_req[7] != ';' || g_req[n - 1] != ']' ||
	    memchr(g_req, ']', n - 1) != NULL) {
		fprintf(stderr, "crypto_bench: the request must be one frame [AOCMD;...]\n");
		exit(2);
	}
	memcpy(g_expect, g_req, 8);
	g_expect[8] = '\0';
	if (n > REQ_MAX / (size_t)c->depth)
		fail("--depth copies of the request are too long");
	g_batch_len = n * (size_t)c->depth;
	if ((g_batch = malloc(g_batch_len)) == NULL)
		fail("out of memory");
	for (long i = 0; i < c->depth; i++)
		memcpy(g_batch + (size_t)i * n, g_req, n);

	if (c->id) {
		static const char hex[] = "0123456789ABCDEF";
		size_t pwlen, idlen = strlen(c->id), k;
		char *pw = slurp(c->pw_file, PW_MAX, &pwlen);

		if (idlen == 0 || strpbrk(c->id, ";[]") != NULL)
			fail("--id: empty or holds ; [ ]");
		g_login_len = 0;
		if ((g_login = malloc(16 + idlen + 2 * pwlen + 1)) == NULL)
			fail("out of memory");
		k = (size_t)sprintf(g_login, "[AOLOGN;ID%s;PW", c->id);
		for (size_t i = 0; i < pwlen; i++) {
			g_login[k++] = hex[(uint8_t)pw[i] >> 4];
			g_login[k++] = hex[(uint8_t)pw[i] & 15];
		}
		memcpy(g_login + k, ";]", 3);
		g_login_len = k + 2;
		OPENSSL_cleanse(pw, pwlen);
		free(pw);
	}
}

static SSL_CTX *make_ctx(const struct cfg *c)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

	if (ctx == NULL)
		fail("SSL_CTX_new failed");
	if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1)
		fail("cannot require TLS 1.3");
	if (SSL_CTX_use_certificate_chain_file(ctx, c->cert) != 1)
		fail("cannot load --cert");
	if (SSL_CTX_use_PrivateKey_file(ctx, c->key, SSL_FILETYPE_PEM) != 1)
		fail("cannot load --key");
	if (SSL_CTX_check_private_key(ctx) != 1)
		fail("--key does not match --cert");
	if (SSL_CTX_load_verify_locations(ctx, c->ca, NULL) != 1)
		fail("cannot load --ca");
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	return ctx;
}

static void set_why_ssl(struct worker *w, const char *step)
{
	char e[200];
	unsigned long code = ERR_get_error();

	if (code != 0)
		ERR_error_string_n(code, e, sizeof(e));
	else
		snprintf(e, sizeof(e), "%s", errno ? strerror(errno) : "connection closed");
	snprintf(w->why, sizeof(w->why), "%s: %s", step, e);
	ERR_clear_error();
}

static void close_conn(struct worker *w)
{
	if (w->ssl)
		SSL_free(w->ssl);
	if (w->fd >= 0)
		close(w->fd);
	w->ssl = NULL;
	w->fd = -1;
	w->rlen = 0;
}

/* Keep the first unexpected reply (printable, truncated) for the report. */
static void note_bad(struct worker *w, const uint8_t *p, size_t n)
{
	size_t k = 0;

	if (w->bad[0] != '\0')
		return;
	for (size_t i = 0; i < n && k + 4 < sizeof(w->bad); i++)
		w->bad[k++] = p[i] >= 0x20 && p[i] < 0x7f ? (char)p[i] : '?';
	if (n > k) {
		memcpy(w->bad + k, "...", 3);
		k += 3;
	}
	w->bad[k] = '\0';
}

/* Room for the next read; -1 when a reply outgrows RBUF_MAX. */
static int rbuf_room(struct worker *w)
{
	if (w->rlen < w->rcap)
		return 0;
	size_t cap = 2 * w->rcap;
	uint8_t *p;
	if (cap > RBUF_MAX || (p = realloc(w->rbuf, cap)) == NULL) {
		snprintf(w->why, sizeof(w->why), "reply longer than %u bytes", RBUF_MAX);
		return -1;
	}
	w->rbuf = p;
	w->rcap = cap;
	return 0;
}

/* The whole reply ending at close_at: 0 when it starts with `expect` (and
 * holds `holds`, if not NULL), 1 otherwise. It leaves the buffer. */
static int take_reply(struct worker *w, const uint8_t *close_at, const char *expect,
                      const char *holds)
{
	size_t end = (size_t)(close_at - w->rbuf) + 1, elen = strlen(expect);
	int bad = end < elen || memcmp(w->rbuf, expect, elen) != 0 ||
	          (holds != NULL && memmem(w->rbuf, end, holds, strlen(holds)) == NULL);
	if (bad)
		note_bad(w, w->rbuf, end);
	memmove(w->rbuf, w->rbuf + end, w->rlen - end);
	w->rlen -= end;
	return bad;
}

/* Send one frame and read one whole response (up to ']'), blocking. Returns
 * what take_reply does, or -1 on I/O failure. */
static int round_trip(struct worker *w, const void *req, size_t len, const char *expect,
                      const char *holds)
{
	size_t n = 0, scanned = 0;
	uint8_t *close_at;

	errno = 0;
	if (SSL_write_ex(w->ssl, req, len, &n) != 1) {
		set_why_ssl(w, "TLS write");
		return -1;
	}
	while ((close_at = memchr(w->rbuf + scanned, ']', w->rlen - scanned)) == NULL) {
		scanned = w->rlen;
		if (rbuf_room(w) != 0)
			return -1;
		errno = 0;
		if (SSL_read_ex(w->ssl, w->rbuf + w->rlen, w->rcap - w->rlen, &n) != 1) {
			set_why_ssl(w, "TLS read");
			return -1;
		}
		w->rlen += n;
	}
	return take_reply(w, close_at, expect, holds);
}

/* TCP connect, TLS handshake, then LOGN (or, without --id, the request once):
 * in TLS 1.3 the server's verdict on our certificate only arrives with the
 * first read. */
static int open_conn(struct worker *w)
{
	struct addrinfo hints, *res = NULL, *ai;
	int one = 1, r;

	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	if ((r = getaddrinfo(g_cfg.host, g_cfg.port, &hints, &res)) != 0) {
		snprintf(w->why, sizeof(w->why), "resolve %s: %s", g_cfg.host, gai_strerror(r));
		return -1;
	}
	w->fd = -1;
	for (ai = res; ai != NULL && w->fd < 0; ai = ai->ai_next) {
		w->fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
		if (w->fd < 0)
			snprintf(w->why, sizeof(w->why), "socket: %s", strerror(errno));
		else if (connect(w->fd, ai->ai_addr, ai->ai_addrlen) != 0) {
			snprintf(w->why, sizeof(w->why), "TCP connect to %s:%s: %s", g_cfg.host,
			         g_cfg.port, strerror(errno));
			close(w->fd);
			w->fd = -1;
		}
	}
	freeaddrinfo(res);
	if (w->fd < 0)
		return -1;
	setsockopt(w->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

	if ((w->ssl = SSL_new(g_ctx)) == NULL || SSL_set_fd(w->ssl, w->fd) != 1) {
		set_why_ssl(w, "TLS setup");
		goto fail;
	}
	errno = 0;
	if (SSL_connect(w->ssl) != 1) {
		long v = SSL_get_verify_result(w->ssl);
		if (v != X509_V_OK)
			snprintf(w->why, sizeof(w->why), "server certificate: %s",
			         X509_verify_cert_error_string(v));
		else
			set_why_ssl(w, "TLS handshake");
		goto fail;
	}
	if (g_login)
		r = round_trip(w, g_login, g_login_len, "[AOLOGN;", ";ACY;"); /* role active */
	else
		r = round_trip(w, g_req, g_req_len, g_expect, NULL);
	if (r != 0) {
		const char *step = g_login ? "LOGN" : "first request";
		if (r > 0)
			snprintf(w->why, sizeof(w->why), "%s: unexpected reply %s", step, w->bad);
		else
			snprintf(w->why + strlen(w->why), sizeof(w->why) - strlen(w->why),
			         " (%s; client certificate refused?)", step);
		goto fail;
	}
	return 0;
fail:
	close_conn(w);
	return -1;
}

static void record(struct worker *w, uint64_t ns)
{
	if (w->nlat == w->cap) {
		size_t cap = w->cap ? 2 * w->cap : 65536;
		uint32_t *p = realloc(w->lat, cap * sizeof(*p));
		if (p == NULL) {
			fprintf(stderr, "crypto_bench: out of memory\n");
			exit(2);
		}
		w->lat = p;
		w->cap = cap;
	}
	w->lat[w->nlat++] = ns > UINT32_MAX ? UINT32_MAX : (uint32_t)ns;
	w->requests++;
}

static bool time_left(const struct worker *w, uint64_t now)
{
	return now < g_end_ns && !(g_cfg.requests && w->requests >= g_cfg.requests);
}

/* A round trip that failed: count it, and reopen the connection after an I/O
 * failure. Returns -1 when the connection is gone for good. */
static int failed_trip(struct worker *w, int r)
{
	w->errors++;
	if (r > 0) {
		if (g_cfg.requests)
			w->requests++; /* a count must end even if every reply is bad */
		return 0;
	}
	fprintf(stderr, "crypto_bench: %s; reconnecting\n", w->why);
	close_conn(w);
	if (open_conn(w) != 0) {
		fprintf(stderr, "crypto_bench: %s\n", w->why);
		w->errors++;
		return -1;
	}
	return 0;
}

/* One connection on its own thread: blocking round trips. */
static void run_blocking(struct worker *w)
{
	for (;;) {
		uint64_t t0 = now_ns(), t1;
		int r;

		if (!time_left(w, t0))
			break;
		r = round_trip(w, g_req, g_req_len, g_expect, NULL);
		t1 = now_ns();
		if (r != 0) {
			if (failed_trip(w, r) != 0)
				break;
			continue;
		}
		/* count only round trips wholly inside the measured window */
		if (t0 >= g_measure_ns && t1 <= g_end_ns)
			record(w, t1 - t0);
	}
}

/* Event mode. Each step returns 1 when the phase is done, 0 when it must wait
 * for the socket, -1 on I/O failure. A TLS write is retried with the same
 * arguments until it completes (no partial writes). */
static int ev_write(struct worker *w)
{
	size_t n = 0;
	int r;

	errno = 0;
	if ((r = SSL_write_ex(w->ssl, g_batch, g_batch_len, &n)) == 1)
		return 1;
	if (SSL_get_error(w->ssl, r) == SSL_ERROR_WANT_WRITE)
		return 0;
	set_why_ssl(w, "TLS write");
	return -1;
}

static int ev_read(struct worker *w, uint8_t **close_at)
{
	for (;;) {
		size_t n = 0;
		int r;

		*close_at = memchr(w->rbuf + w->scanned, ']', w->rlen - w->scanned);
		if (*close_at != NULL)
			return 1;
		w->scanned = w->rlen;
		if (rbuf_room(w) != 0)
			return -1;
		errno = 0;
		if ((r = SSL_read_ex(w->ssl, w->rbuf + w->rlen, w->rcap - w->rlen, &n)) != 1) {
			if (SSL_get_error(w->ssl, r) == SSL_ERROR_WANT_READ)
				return 0;
			set_why_ssl(w, "TLS read");
			return -1;
		}
		w->rlen += n;
	}
}

/* Watch the socket for what the round trip waits for: EPOLLOUT while the
 * request is not all sent, EPOLLIN otherwise. */
static int ev_watch(int ep, struct worker *w, bool add, bool out)
{
	struct epoll_event ev = {.events = out ? EPOLLOUT : EPOLLIN, .data.ptr = w};

	if (add && fcntl(w->fd, F_SETFL, fcntl(w->fd, F_GETFL) | O_NONBLOCK) != 0)
		return -1;
	if (!add && out == w->watch_out)
		return 0;
	w->watch_out = out;
	return epoll_ctl(ep, add ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, w->fd, &ev);
}

/* Start the next round trip, or stop the connection; then move the round
 * trip as far as it goes without waiting. Returns false when the connection
 * has stopped. */
static bool ev_step(int ep, struct worker *w, bool start)
{
	for (;;) {
		uint8_t *close_at = NULL;
		int r = 1;

		if (start) {
			w->t0 = now_ns();
			if (!time_left(w, w->t0))
				return false;
			w->writing = true;
			w->scanned = 0;
			w->awaited = g_cfg.depth;
		}
		start = false;
		if (w->writing) {
			if ((r = ev_write(w)) == 0)
				return ev_watch(ep, w, false, true) == 0;
			if (r > 0) {
				w->writing = false;
				if (ev_watch(ep, w, false, false) != 0)
					return false;
			}
		}
		/* the replies of one write, each timed from that write */
		while (r > 0 && w->awaited > 0) {
			if ((r = ev_read(w, &close_at)) <= 0)
				break;
			w->awaited--;
			w->scanned = 0;
			if (take_reply(w, close_at, g_expect, NULL) != 0) {
				(void)failed_trip(w, 1); /* counted; the connection stays */
				continue;
			}
			uint64_t t1 = now_ns();
			if (w->t0 >= g_measure_ns && t1 <= g_end_ns)
				record(w, t1 - w->t0);
		}
		if (r == 0)
			return true;
		if (r < 0) {
			if (w->fd >= 0)
				epoll_ctl(ep, EPOLL_CTL_DEL, w->fd, NULL);
			if (failed_trip(w, r) != 0)
				return false;
			w->writing = false;
			if (ev_watch(ep, w, true, false) != 0)
				return false;
		}
		start = true;
	}
}

static void run_events(struct runner *rn)
{
	struct epoll_event evs[64];
	long live = 0;
	int ep = epoll_create1(EPOLL_CLOEXEC);

	if (ep < 0)
		fail("epoll_create1 failed");
	for (long i = rn->first; i < rn->total; i += rn->step) {
		struct worker *w = &rn->ws[i];
		w->writing = false;
		if (ev_watch(ep, w, true, false) != 0)
			fail("cannot watch a connection");
		live += ev_step(ep, w, true);
	}
	while (live > 0) {
		uint64_t now = now_ns();
		int ms = 100, n;

		if (!g_cfg.requests && now >= g_end_ns)
			break; /* what is still in flight would not count */
		if (!g_cfg.requests && g_end_ns - now < 100000000u)
			ms = (int)((g_end_ns - now) / 1000000u) + 1;
		n = epoll_wait(ep, evs, (int)(sizeof(evs) / sizeof(evs[0])), ms);
		for (int k = 0; k < n; k++)
			if (!ev_step(ep, evs[k].data.ptr, false))
				live--;
	}
	close(ep);
}

static void *runner_main(void *arg)
{
	struct runner *rn = arg;
	bool ok = true;

	for (long i = rn->first; i < rn->total; i += rn->step)
		ok = open_conn(&rn->ws[i]) == 0 && ok;
	pthread_barrier_wait(&g_ready);
	pthread_barrier_wait(&g_go);
	if (ok && !g_abort) {
		if (rn->first + rn->step >= rn->total && g_cfg.depth == 1)
			run_blocking(&rn->ws[rn->first]);
		else
			run_events(rn);
	}
	for (long i = rn->first; i < rn->total; i += rn->step) {
		struct worker *w = &rn->ws[i];
		if (w->ssl)
			SSL_shutdown(w->ssl);
		close_conn(w);
	}
	return NULL;
}

static void sleep_until(uint64_t ns)
{
	struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000u),
	                      .tv_nsec = (long)(ns % 1000000000u)};

	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

/* user + system CPU seconds of the whole process (all threads) */
static double cpu_seconds(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
	       ru.ru_stime.tv_usec / 1e6;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted v[0..n), in microseconds. */
static double pct_us(const uint32_t *v, size_t n, double p)
{
	size_t i;
	if (n == 0)
		return 0;
	i = (size_t)(p * (double)n + 0.999999);
	if (i == 0)
		i = 1;
	if (i > n)
		i = n;
	return v[i - 1] / 1000.0;
}

int main(int argc, char **argv)
{
	struct worker *ws;
	struct runner *rs;
	long nthreads;
	uint64_t requests = 0, errors = 0;
	size_t nlat = 0, k = 0, conn_min = 0, conn_max = 0;
	uint32_t *all;
	long i, failed = 0;
	double elapsed, cpu0, client_cpu = -1;
	const char *bad = NULL;

	parse_args(argc, argv, &g_cfg);
	load_request(&g_cfg);
	elapsed = g_cfg.seconds;
	signal(SIGPIPE, SIG_IGN);
	g_ctx = make_ctx(&g_cfg);
	nthreads =
	    g_cfg.threads && g_cfg.threads < g_cfg.connections ? g_cfg.threads : g_cfg.connections;
	ws = calloc((size_t)g_cfg.connections, sizeof(*ws));
	rs = calloc((size_t)nthreads, sizeof(*rs));
	if (ws == NULL || rs == NULL)
		fail("out of memory");
	for (i = 0; i < g_cfg.connections; i++) {
		ws[i].fd = -1;
		ws[i].rcap = RBUF_INIT;
		if ((ws[i].rbuf = malloc(RBUF_INIT)) == NULL)
			fail("out of memory");
	}
	pthread_barrier_init(&g_ready, NULL, (unsigned)nthreads + 1);
	pthread_barrier_init(&g_go, NULL, (unsigned)nthreads + 1);
	for (i = 0; i < nthreads; i++) {
		rs[i] = (struct runner){
		    .ws = ws, .first = i, .step = nthreads, .total = g_cfg.connections};
		if (pthread_create(&rs[i].th, NULL, runner_main, &rs[i]) != 0) {
			fprintf(stderr, "crypto_bench: cannot start thread %ld\n", i);
			exit(2);
		}
	}

	/* every connection is open and logged in (or has failed) before the
	 * clock starts: logins cost a password hash each, never measured */
	pthread_barrier_wait(&g_ready);
	for (i = 0; i < g_cfg.connections; i++)
		if (ws[i].ssl == NULL) {
			fprintf(stderr, "crypto_bench: connection %ld: %s\n", i, ws[i].why);
			failed++;
		}
	g_abort = failed > 0;
	g_measure_ns = now_ns() + (uint64_t)(g_cfg.warmup * 1e9);
	g_end_ns = g_cfg.requests ? UINT64_MAX : g_measure_ns + (uint64_t)(g_cfg.seconds * 1e9);
	pthread_barrier_wait(&g_go);
	if (!g_cfg.requests && !g_abort) {
		/* the load generator's own CPU over the measured window: on a
		 * machine it shares with the server, that is what it took away */
		sleep_until(g_measure_ns);
		cpu0 = cpu_seconds();
		sleep_until(g_end_ns);
		client_cpu = (cpu_seconds() - cpu0) / g_cfg.seconds;
	}
	for (i = 0; i < nthreads; i++)
		pthread_join(rs[i].th, NULL);
	free(rs);
	if (g_cfg.requests) /* a fixed count: the time is what it took */
		elapsed = (double)(now_ns() - g_measure_ns) / 1e9;
	if (failed) {
		fprintf(stderr, "crypto_bench: %ld of %ld connections failed; no measurement\n",
		        failed, g_cfg.connections);
		for (i = 0; i < g_cfg.connections; i++) {
			free(ws[i].lat);
			free(ws[i].rbuf);
		}
		free(ws);
		return 2;
	}

	for (i = 0; i < g_cfg.connections; i++) {
		requests += ws[i].requests;
		errors += ws[i].errors;
		nlat += ws[i].nlat;
		if (bad == NULL && ws[i].bad[0] != '\0')
			bad = ws[i].bad;
	}
	if (bad != NULL)
		fprintf(stderr, "crypto_bench: first unexpected reply: %s\n", bad);
	all = malloc((nlat ? nlat : 1) * sizeof(*all));
	if (all == NULL)
		fail("out of memory");
	for (i = 0; i < g_cfg.connections; i++) {
		if (ws[i].nlat)
			memcpy(all + k, ws[i].lat, ws[i].nlat * sizeof(*all));
		k += ws[i].nlat;
		free(ws[i].lat);
		free(ws[i].rbuf);
	}
	qsort(all, nlat, sizeof(*all), cmp_u32);
	printf("connections=%ld requests=%llu seconds=%.3f rps=%.1f p50_us=%.1f p99_us=%.1f "
	       "errors=%llu",
	       g_cfg.connections, (unsigned long long)requests, elapsed,
	       elapsed > 0 ? (double)requests / elapsed : 0.0, pct_us(all, nlat, 0.50),
	       pct_us(all, nlat, 0.99), (unsigned long long)errors);
	/* fairness: the least and the most served connection */
	for (i = 0; i < g_cfg.connections; i++) {
		if (i == 0 || ws[i].nlat < conn_min)
			conn_min = ws[i].nlat;
		if (ws[i].nlat > conn_max)
			conn_max = ws[i].nlat;
	}
	printf(" conn_min=%zu conn_max=%zu", conn_min, conn_max);
	if (client_cpu >= 0)
		printf(" client_cores=%.2f", client_cpu);
	printf("\n");
	free(all);
	free(ws);
	if (g_login) {
		OPENSSL_cleanse(g_login, g_login_len);
		free(g_login);
	}
	free(g_req);
	free(g_batch);
	SSL_CTX_free(g_ctx);
	return errors ? 1 : 0;
}

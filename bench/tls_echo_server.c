/*
 * The bound for bench/: the least work a mutual-TLS server can do per ECHO.
 * OpenSSL 3, TLS 1.3 only, one blocking thread per connection, no state: each
 * frame (4096 bytes, or --max-frame) gets an ECHO-shaped answer, signed when
 * it asks (SG, below). A yardstick for keyhold-hsm, never a server.
 */
#include "common/kh_buf.h"
#include "common/kh_err.h"
#include "common/kh_frame.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define OUT_MAX (64u * 1024)

struct opts {
	const char *host;
	int port;
	const char *cert;
	const char *key;
	const char *ca;
	size_t max_frame;
};

static SSL_CTX *g_ctx;
static size_t g_max_frame = KH_FRAME_MAX_PRELOGIN;
/* A request with an SG field gets an ECDSA P-256 signature (SHA-256) of its
 * AG in the answer's SG: the bound for a signing command. The key is made at
 * start; its context is prepared once and copied per signature. */
static EVP_MD_CTX *g_sign_ctx;

static _Noreturn void usage(void)
{
	fprintf(stderr, "usage: tls_echo_server --port N --cert FILE --key FILE --ca FILE "
			"[--host 127.0.0.1] [--max-frame BYTES]\n");
	exit(2);
}

static _Noreturn void die_ssl(const char *what)
{
	fprintf(stderr, "tls_echo_server: %s\n", what);
	ERR_print_errors_fp(stderr);
	exit(1);
}

static void parse_args(int argc, char **argv, struct opts *o)
{
	o->host = "127.0.0.1";
	o->port = -1;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (i + 1 >= argc)
			usage();
		const char *v = argv[++i];
		if (strcmp(a, "--host") == 0)
			o->host = v;
		else if (strcmp(a, "--port") == 0) {
			char *end;
			long p = strtol(v, &end, 10);
			if (*v == '\0' || *end != '\0' || p < 0 || p > 65535)
				usage();
			o->port = (int)p;
		} else if (strcmp(a, "--cert") == 0)
			o->cert = v;
		else if (strcmp(a, "--key") == 0)
			o->key = v;
		else if (strcmp(a, "--ca") == 0)
			o->ca = v;
		else if (strcmp(a, "--max-frame") == 0) {
			/* within keyhold's own ceilings: 4096 before login, 8 MiB after */
			char *end;
			unsigned long long m = strtoull(v, &end, 10);
			if (*v == '\0' || *end != '\0' || m < KH_FRAME_MAX_PRELOGIN ||
			    m > KH_FRAME_MAX)
				usage();
			o->max_frame = (size_t)m;
		} else
			usage();
	}
	if (o->port < 0 || !o->cert || !o->key || !o->ca)
		usage();
}

static SSL_CTX *make_ctx(const struct opts *o)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	STACK_OF(X509_NAME) *names;

	if (ctx == NULL)
		die_ssl("SSL_CTX_new failed");
	if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1)
		die_ssl("cannot require TLS 1.3");
	if (SSL_CTX_use_certificate_chain_file(ctx, o->cert) != 1)
		die_ssl("cannot load --cert");
	if (SSL_CTX_use_PrivateKey_file(ctx, o->key, SSL_FILETYPE_PEM) != 1)
		die_ssl("cannot load --key");
	if (SSL_CTX_check_private_key(ctx) != 1)
		die_ssl("--key does not match --cert");
	if (SSL_CTX_load_verify_locations(ctx, o->ca, NULL) != 1)
		die_ssl("cannot load --ca");
	if ((names = SSL_load_client_CA_file(o->ca)) == NULL)
		die_ssl("no CA names in --ca");
	SSL_CTX_set_client_CA_list(ctx, names);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
	/* connections live for the whole run: tickets would only cost time */
	SSL_CTX_set_num_tickets(ctx, 0);
	return ctx;
}

/* Append the answer to one delimited frame: ECHO with the request's AG (and
 * its signature, made in sctx, when asked for), or the codec's ERRO when the
 * frame does not parse. */
static int answer(struct kh_buf *out, EVP_MD_CTX *sctx, const uint8_t *p, size_t n)
{
	struct kh_frame f;
	const struct kh_field *ag;
	int r = kh_frame_parse(p, n, KH_FIELDS_MAX_PRELOGIN, &f);

	if (r != KH_OK)
		return kh_msg_error(out, f.cmd, r, NULL);
	ag = kh_frame_get(&f, "AG");
	if ((r = kh_msg_begin(out, "ECHO")) != KH_OK)
		return r;
	if ((r = kh_msg_putn(out, "AG", ag ? ag->val : "", ag ? ag->len : 0)) != KH_OK)
		return r;
	if ((r = kh_msg_put(out, "BC", "0.0.0")) != KH_OK)
		return r;
	if (kh_frame_get(&f, "SG") != NULL) {
		uint8_t sig[80];
		size_t slen = sizeof(sig);
		if (EVP_MD_CTX_copy_ex(sctx, g_sign_ctx) != 1 ||
		    EVP_DigestSign(sctx, sig, &slen, (const uint8_t *)(ag ? ag->val : ""),
		                   ag ? ag->len : 0) != 1)
			return KH_ERR_CRYPTO;
		if ((r = kh_msg_put_hex(out, "SG", sig, slen)) != KH_OK)
			return r;
	}
	return kh_msg_end(out);
}

/* Read, answer every complete frame, write the answers in one go; stop on
 * EOF, error, or a frame that cannot be delimited. */
static void serve(SSL *ssl)
{
	size_t have = 0, max = g_max_frame;
	uint8_t *in = malloc(max);
	/* an answer is its request's AG plus a few bytes */
	struct kh_buf *out = kh_buf_new(max + OUT_MAX);
	EVP_MD_CTX *sctx = EVP_MD_CTX_new();

	if (out == NULL || in == NULL || sctx == NULL)
		goto done;
	for (;;) {
		size_t got = 0, off = 0, fl;
		int r;

		if (SSL_read_ex(ssl, in + have, max - have, &got) != 1)
			break;
		have += got;
		while ((r = kh_frame_find(in + off, have - off, max, &fl)) == 1) {
			if (answer(out, sctx, in + off, fl) != KH_OK)
				goto done;
			off += fl;
		}
		if (r < 0)
			break;
		if (kh_buf_len(out) > 0) {
			size_t wrote = 0;
			if (SSL_write_ex(ssl, kh_buf_ptr(out), kh_buf_len(out), &wrote) != 1)
				break;
			kh_buf_reset(out);
		}
		memmove(in, in + off, have - off);
		have -= off;
	}
done:
	EVP_MD_CTX_free(sctx);
	kh_buf_free(out);
	free(in);
}

static void *conn_main(void *arg)
{
	int fd = (int)(intptr_t)arg;
	SSL *ssl = SSL_new(g_ctx);

	if (ssl != NULL && SSL_set_fd(ssl, fd) == 1) {
		if (SSL_accept(ssl) == 1) {
			serve(ssl);
			SSL_shutdown(ssl);
		} else {
			fprintf(stderr, "tls_echo_server: TLS handshake failed\n");
			ERR_print_errors_fp(stderr);
		}
	}
	SSL_free(ssl);
	close(fd);
	ERR_clear_error();
	return NULL;
}

static void on_signal(int sig)
{
	(void)sig;
	_exit(0);
}

static int listen_on(const struct opts *o)
{
	struct sockaddr_in sa;
	socklen_t salen = sizeof(sa);
	int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);

	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t)o->port);
	if (inet_pton(AF_INET, o->host, &sa.sin_addr) != 1) {
		fprintf(stderr, "tls_echo_server: --host must be an IPv4 address\n");
		exit(2);
	}
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
	    bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(fd, 128) != 0 ||
	    getsockname(fd, (struct sockaddr *)&sa, &salen) != 0) {
		fprintf(stderr, "tls_echo_server: listen on %s:%d: %s\n", o->host, o->port,
			strerror(errno));
		exit(1);
	}
	printf("listening on %s:%d\n", o->host, ntohs(sa.sin_port));
	fflush(stdout);
	return fd;
}

int main(int argc, char **argv)
{
	struct opts o;
	struct sigaction sa;
	pthread_attr_t attr;
	int lfd;

	memset(&o, 0, sizeof(o));
	parse_args(argc, argv, &o);
	if (o.max_frame)
		g_max_frame = o.max_frame;
	signal(SIGPIPE, SIG_IGN);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	g_ctx = make_ctx(&o);
	{
		EVP_PKEY *k = EVP_EC_gen("P-256");
		if (k == NULL || (g_sign_ctx = EVP_MD_CTX_new()) == NULL ||
		    EVP_DigestSignInit_ex(g_sign_ctx, NULL, "SHA256", NULL, NULL, k, NULL) != 1)
			die_ssl("cannot make the P-256 signing key");
		EVP_PKEY_free(k);
	}
	lfd = listen_on(&o);
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	for (;;) {
		pthread_t th;
		int one = 1, fd = accept(lfd, NULL, NULL);

		if (fd < 0) {
			if (errno != EINTR && errno != ECONNABORTED)
				fprintf(stderr, "tls_echo_server: accept: %s\n", strerror(errno));
			if (errno == EMFILE || errno == ENFILE)
				sleep(1);
			continue;
		}
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if (pthread_create(&th, &attr, conn_main, (void *)(intptr_t)fd) != 0) {
			fprintf(stderr, "tls_echo_server: cannot start a thread\n");
			close(fd);
		}
	}
}

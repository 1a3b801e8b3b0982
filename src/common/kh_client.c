/*
 * Excrypt client: connection set-up with a message per failed step, and
 * frame I/O through wiped kh_bufs. It must never copy a frame into memory
 * that is not wiped, and never put a frame value into an error message.
 */
#include "common/kh_client.h"
#include "common/kh_buf.h"
#include "common/kh_frame.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define CLIENT_RBUF_MAX (KH_FRAME_MAX + 4096u)

struct kh_client {
	struct kh_client_opts o;  /* strings below are owned copies */
	char *unix_path, *host, *ca_file, *cert_file, *key_file, *port_name;
	int fd;
	SSL_CTX *ctx;
	SSL *ssl;
	struct kh_buf *rbuf;      /* bytes received, not yet returned */
	char peer[320];
	char err[800];
};

static char *dup_opt(const char *s, bool *fail)
{
	if (s == NULL)
		return NULL;
	char *d = strdup(s);
	if (d == NULL)
		*fail = true;
	return d;
}

const char *kh_client_port_name(unsigned port)
{
	if (port == 9009)
		return "Admin";
	return "Excrypt";
}

void kh_client_opts_init(struct kh_client_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->host = "127.0.0.1";
	o->port = 9009;
	o->tls = true;
	o->check_name = true;
	o->connect_timeout_ms = 10000;
	o->io_timeout_ms = 30000;
	o->probe = true;
}

struct kh_client *kh_client_new(const struct kh_client_opts *o)
{
	struct kh_client *c = calloc(1, sizeof(*c));
	bool fail = false;

	if (c == NULL)
		return NULL;
	c->o = *o;
	c->fd = -1;
	c->unix_path = dup_opt(o->unix_path, &fail);
	c->host = dup_opt(o->host ? o->host : "127.0.0.1", &fail);
	c->ca_file = dup_opt(o->ca_file, &fail);
	c->cert_file = dup_opt(o->cert_file, &fail);
	c->key_file = dup_opt(o->key_file, &fail);
	c->port_name = dup_opt(o->port_name, &fail);
	c->rbuf = kh_buf_new(CLIENT_RBUF_MAX);
	if (fail || c->rbuf == NULL) {
		kh_client_free(c);
		return NULL;
	}
	c->o.unix_path = c->unix_path;
	c->o.host = c->host;
	c->o.ca_file = c->ca_file;
	c->o.cert_file = c->cert_file;
	c->o.key_file = c->key_file;
	c->o.port_name = c->port_name;
	if (c->unix_path)
		snprintf(c->peer, sizeof(c->peer), "%s (%.256s)", c->port_name ? c->port_name : "console",
			 c->unix_path);
	else
		snprintf(c->peer, sizeof(c->peer), "port %u (%.64s)", c->o.port,
			 c->port_name ? c->port_name : kh_client_port_name(c->o.port));
	return c;
}

void kh_client_disconnect(struct kh_client *c)
{
	if (c->ssl) {
		/* a polite close_notify; failures do not matter any more */
		(void)SSL_shutdown(c->ssl);
		SSL_free(c->ssl);
		c->ssl = NULL;
	}
	if (c->ctx) {
		SSL_CTX_free(c->ctx);
		c->ctx = NULL;
	}
	if (c->fd >= 0) {
		close(c->fd);
		c->fd = -1;
	}
	if (c->rbuf)
		kh_buf_reset(c->rbuf);
}

void kh_client_free(struct kh_client *c)
{
	if (c == NULL)
		return;
	kh_client_disconnect(c);
	kh_buf_free(c->rbuf);
	free(c->unix_path);
	free(c->host);
	free(c->ca_file);
	free(c->cert_file);
	free(c->key_file);
	free(c->port_name);
	free(c);
}

bool kh_client_connected(const struct kh_client *c)
{
	return c->fd >= 0;
}

const char *kh_client_peer(const struct kh_client *c)
{
	return c->peer;
}

const char *kh_client_error(const struct kh_client *c)
{
	return c->err;
}

static int fail(struct kh_client *c, int err, const char *step, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* Record "<peer>: <step>: <detail>" and return err. */
static int fail(struct kh_client *c, int err, const char *step, const char *fmt, ...)
{
	char detail[384];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	snprintf(c->err, sizeof(c->err), "%.320s: %.40s: %.383s", c->peer, step, detail);
	return err;
}

static void set_io_timeout(int fd, int ms)
{
	struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
	if (ms <= 0)
		return;
	(void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

/* Non-blocking connect bounded by the connect timeout. Returns 0 or an errno. */
static int connect_timed(int fd, const struct sockaddr *sa, socklen_t salen, int ms)
{
	int flags = fcntl(fd, F_GETFL);
	int e = 0;
	socklen_t elen = sizeof(e);

	if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
		return errno;
	if (connect(fd, sa, salen) < 0) {
		if (errno != EINPROGRESS)
			return errno;
		struct pollfd p = {.fd = fd, .events = POLLOUT};
		int n;
		do
			n = poll(&p, 1, ms > 0 ? ms : -1);
		while (n < 0 && errno == EINTR);
		if (n < 0)
			return errno;
		if (n == 0)
			return ETIMEDOUT;
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &elen) < 0)
			return errno;
		if (e)
			return e;
	}
	if (fcntl(fd, F_SETFL, flags) < 0)
		return errno;
	return 0;
}

static int connect_unix(struct kh_client *c)
{
	struct sockaddr_un sun;
	int e;

	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if (strlen(c->unix_path) >= sizeof(sun.sun_path))
		return fail(c, KH_ERR_CONNECT, "connect", "socket path too long");
	memcpy(sun.sun_path, c->unix_path, strlen(c->unix_path) + 1);
	c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0)
		return fail(c, KH_ERR_CONNECT, "connect", "%s", strerror(errno));
	if ((e = connect_timed(c->fd, (const struct sockaddr *)&sun, sizeof(sun),
			       c->o.connect_timeout_ms)) != 0) {
		close(c->fd);
		c->fd = -1;
		return fail(c, e == ETIMEDOUT ? KH_ERR_TIMEOUT : KH_ERR_CONNECT, "connect", "%s",
			    strerror(e));
	}
	return KH_OK;
}

static int connect_tcp(struct kh_client *c)
{
	struct addrinfo hints, *res = NULL;
	char port[16];
	int e = ECONNREFUSED, gr;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	snprintf(port, sizeof(port), "%u", c->o.port);
	if ((gr = getaddrinfo(c->host, port, &hints, &res)) != 0)
		return fail(c, KH_ERR_CONNECT, "TCP connect", "%s: %s", c->host, gai_strerror(gr));
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
		int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
		if (fd < 0) {
			e = errno;
			continue;
		}
		if ((e = connect_timed(fd, ai->ai_addr, ai->ai_addrlen, c->o.connect_timeout_ms)) == 0) {
			int one = 1;
			(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
			c->fd = fd;
			break;
		}
		close(fd);
	}
	freeaddrinfo(res);
	if (c->fd < 0)
		return fail(c, e == ETIMEDOUT ? KH_ERR_TIMEOUT : KH_ERR_CONNECT, "TCP connect", "%s",
			    strerror(e));
	return KH_OK;
}

static bool is_ip_literal(const char *h)
{
	unsigned char tmp[sizeof(struct in6_addr)];
	return inet_pton(AF_INET, h, tmp) == 1 || inet_pton(AF_INET6, h, tmp) == 1;
}

static const char *ssl_reason_text(unsigned long e)
{
	const char *s = e ? ERR_reason_error_string(e) : NULL;
	return s ? s : "unknown error";
}

/* Turn the OpenSSL error queue and verify result after a failed handshake or
 * post-handshake read into a kh_err and message. */
static int tls_failure(struct kh_client *c, int ssl_err, int io_errno)
{
	unsigned long e = ERR_peek_last_error();
	int reason = e ? ERR_GET_REASON(e) : 0;
	const char *step = "TLS handshake";
	int r;

	if (ssl_err == SSL_ERROR_WANT_READ || ssl_err == SSL_ERROR_WANT_WRITE) {
		r = fail(c, KH_ERR_TIMEOUT, step, "timed out");
		goto out;
	}
	switch (reason) {
	case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
		r = fail(c, KH_ERR_TLS_CERT_REQUIRED, step, "server requires a client certificate");
		break;
	case SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE:
		if (c->cert_file == NULL)
			r = fail(c, KH_ERR_TLS_CERT_REQUIRED, step,
				 "server requires a client certificate");
		else
			r = fail(c, KH_ERR_TLS_HANDSHAKE, step, "server refused the handshake");
		break;
	case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
		r = fail(c, KH_ERR_TLS_CERT_UNKNOWN_CA, step,
			 "client certificate is from another CA tree (unknown CA)");
		break;
	case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
	case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE:
		r = fail(c, KH_ERR_TLS_HANDSHAKE, step, "server rejected the client certificate (%s)",
			 ssl_reason_text(e));
		break;
	case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
		r = fail(c, KH_ERR_TLS_CERT_EXPIRED, step, "client certificate has expired");
		break;
	case SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED:
		r = fail(c, KH_ERR_TLS_CERT_REVOKED, step, "client certificate has been revoked");
		break;
	case SSL_R_CERTIFICATE_VERIFY_FAILED: {
		long v = c->ssl ? SSL_get_verify_result(c->ssl) : X509_V_OK;
		const char *vs = X509_verify_cert_error_string(v);
		switch (v) {
		case X509_V_ERR_CERT_HAS_EXPIRED:
		case X509_V_ERR_CERT_NOT_YET_VALID:
			r = KH_ERR_TLS_CERT_EXPIRED;
			break;
		case X509_V_ERR_CERT_REVOKED:
			r = KH_ERR_TLS_CERT_REVOKED;
			break;
		case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
		case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
		case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
		case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
		case X509_V_ERR_CERT_SIGNATURE_FAILURE:
			r = KH_ERR_TLS_CERT_UNKNOWN_CA;
			break;
		default:
			r = KH_ERR_TLS_HANDSHAKE;
			break;
		}
		r = fail(c, r, step, "server certificate not trusted: %s", vs);
		break;
	}
	case SSL_R_WRONG_VERSION_NUMBER:
	case SSL_R_PACKET_LENGTH_TOO_LONG:
	case SSL_R_RECORD_LENGTH_MISMATCH:
		r = fail(c, KH_ERR_TLS_HANDSHAKE, step,
			 "server did not answer with TLS (is the port in clear mode?)");
		break;
	case SSL_R_TLSV1_ALERT_PROTOCOL_VERSION:
	case SSL_R_UNSUPPORTED_PROTOCOL:
	case SSL_R_NO_PROTOCOLS_AVAILABLE:
		r = fail(c, KH_ERR_TLS_HANDSHAKE, step, "no common TLS version (%s)",
			 ssl_reason_text(e));
		break;
	case SSL_R_UNEXPECTED_EOF_WHILE_READING:
		r = fail(c, KH_ERR_CLOSED, step,
			 "connection closed by the server (does the port use TLS, and "
			 "does it accept this client?)");
		break;
	default:
		if (e != 0)
			r = fail(c, KH_ERR_TLS_HANDSHAKE, step, "%s", ssl_reason_text(e));
		else if (ssl_err == SSL_ERROR_SYSCALL && io_errno != 0)
			r = fail(c, io_errno == EAGAIN || io_errno == EWOULDBLOCK ? KH_ERR_TIMEOUT
										  : KH_ERR_TLS_HANDSHAKE,
				 step, "%s", strerror(io_errno));
		else
			r = fail(c, KH_ERR_CLOSED, step, "connection closed by the server");
		break;
	}
out:
	ERR_clear_error();
	return r;
}

static int tls_setup(struct kh_client *c)
{
	c->ctx = SSL_CTX_new(TLS_client_method());
	if (c->ctx == NULL)
		return fail(c, KH_ERR_NOMEM, "TLS setup", "%s", ssl_reason_text(ERR_get_error()));
	SSL_CTX_set_min_proto_version(c->ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(c->ctx, SSL_OP_CLEANSE_PLAINTEXT | SSL_OP_NO_RENEGOTIATION);
	SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
	if (c->ca_file) {
		if (SSL_CTX_load_verify_locations(c->ctx, c->ca_file, NULL) != 1)
			return fail(c, KH_ERR_TLS, "TLS setup", "cannot load CA file %s: %s", c->ca_file,
				    ssl_reason_text(ERR_get_error()));
	} else if (SSL_CTX_set_default_verify_paths(c->ctx) != 1) {
		return fail(c, KH_ERR_TLS, "TLS setup", "no CA file given and no system default");
	}
	if (c->cert_file) {
		const char *kf = c->key_file ? c->key_file : c->cert_file;
		if (SSL_CTX_use_certificate_chain_file(c->ctx, c->cert_file) != 1)
			return fail(c, KH_ERR_TLS, "TLS setup", "cannot load client certificate %s: %s",
				    c->cert_file, ssl_reason_text(ERR_get_error()));
		if (SSL_CTX_use_PrivateKey_file(c->ctx, kf, SSL_FILETYPE_PEM) != 1)
			return fail(c, KH_ERR_TLS, "TLS setup", "cannot load client key %s: %s", kf,
				    ssl_reason_text(ERR_get_error()));
		if (SSL_CTX_check_private_key(c->ctx) != 1)
			return fail(c, KH_ERR_TLS, "TLS setup",
				    "client key does not match the client certificate");
	} else if (c->key_file) {
		return fail(c, KH_ERR_TLS, "TLS setup", "a client key needs a client certificate");
	}
	c->ssl = SSL_new(c->ctx);
	if (c->ssl == NULL || SSL_set_fd(c->ssl, c->fd) != 1)
		return fail(c, KH_ERR_NOMEM, "TLS setup", "%s", ssl_reason_text(ERR_get_error()));
	if (!is_ip_literal(c->host)) {
		/* SNI only makes sense for names */
		if (SSL_set_tlsext_host_name(c->ssl, c->host) != 1)
			return fail(c, KH_ERR_TLS, "TLS setup", "bad server name");
		if (c->o.check_name && SSL_set1_host(c->ssl, c->host) != 1)
			return fail(c, KH_ERR_TLS, "TLS setup", "bad server name");
	} else if (c->o.check_name &&
		   X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), c->host) != 1) {
		/* an IP address must be in the certificate's IP SANs, or any
		 * certificate from the same CA would pass for the HSM */
		return fail(c, KH_ERR_TLS, "TLS setup", "bad server address");
	}
	return KH_OK;
}

static int tls_handshake(struct kh_client *c)
{
	int r;

	ERR_clear_error();
	errno = 0;
	if ((r = SSL_connect(c->ssl)) == 1)
		return KH_OK;
	return tls_failure(c, SSL_get_error(c->ssl, r), errno);
}

/* Low-level write of all n bytes. */
static int write_all(struct kh_client *c, const uint8_t *p, size_t n)
{
	while (n > 0) {
		if (c->ssl) {
			size_t w = 0;
			ERR_clear_error();
			errno = 0;
			int r = SSL_write_ex(c->ssl, p, n, &w);
			if (r != 1) {
				int se = SSL_get_error(c->ssl, r);
				if (se == SSL_ERROR_WANT_READ || se == SSL_ERROR_WANT_WRITE)
					return fail(c, KH_ERR_TIMEOUT, "send", "timed out");
				if (ERR_peek_last_error() != 0)
					return tls_failure(c, se, errno);
				return fail(c, KH_ERR_CLOSED, "send", "%s",
					    errno ? strerror(errno) : "connection closed");
			}
			p += w;
			n -= w;
		} else {
			ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
			if (w < 0) {
				if (errno == EINTR)
					continue;
				if (errno == EAGAIN || errno == EWOULDBLOCK)
					return fail(c, KH_ERR_TIMEOUT, "send", "timed out");
				return fail(c, errno == EPIPE || errno == ECONNRESET ? KH_ERR_CLOSED
										     : KH_ERR_IO,
					    "send", "%s", strerror(errno));
			}
			p += (size_t)w;
			n -= (size_t)w;
		}
	}
	return KH_OK;
}

/* Read some bytes into rbuf. */
static int read_some(struct kh_client *c)
{
	uint8_t *p;
	size_t want = 16384, got = 0;
	int r;

	if (kh_buf_max(c->rbuf) - kh_buf_len(c->rbuf) < want)
		want = kh_buf_max(c->rbuf) - kh_buf_len(c->rbuf);
	if (want == 0)
		return fail(c, KH_ERR_PROTOCOL, "receive", "response exceeds the maximum frame size");
	if ((r = kh_buf_reserve(c->rbuf, want, &p)) != KH_OK)
		return fail(c, r, "receive", "%s", kh_strerror(r));
	for (;;) {
		if (c->ssl) {
			ERR_clear_error();
			errno = 0;
			int sr = SSL_read_ex(c->ssl, p, want, &got);
			if (sr == 1)
				break;
			int se = SSL_get_error(c->ssl, sr);
			if (se == SSL_ERROR_ZERO_RETURN)
				return fail(c, KH_ERR_CLOSED, "receive", "connection closed by the server");
			if (se == SSL_ERROR_WANT_READ || se == SSL_ERROR_WANT_WRITE)
				return fail(c, KH_ERR_TIMEOUT, "receive", "timed out");
			if (ERR_peek_last_error() != 0)
				return tls_failure(c, se, errno);
			return fail(c, KH_ERR_CLOSED, "receive", "%s",
				    errno ? strerror(errno) : "connection closed by the server");
		}
		ssize_t n = recv(c->fd, p, want, 0);
		if (n > 0) {
			got = (size_t)n;
			break;
		}
		if (n == 0)
			return fail(c, KH_ERR_CLOSED, "receive", "connection closed by the server");
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			return fail(c, KH_ERR_TIMEOUT, "receive", "timed out");
		return fail(c, errno == ECONNRESET ? KH_ERR_CLOSED : KH_ERR_IO, "receive", "%s",
			    strerror(errno));
	}
	kh_buf_commit(c->rbuf, got);
	return KH_OK;
}

int kh_client_send(struct kh_client *c, const struct kh_buf *req)
{
	c->err[0] = '\0';
	if (c->fd < 0)
		return fail(c, KH_ERR_CLOSED, "send", "not connected");
	return write_all(c, kh_buf_ptr(req), kh_buf_len(req));
}

/* The ET text of an ERRO frame, as the last error (it is fixed text from the
 * HSM, never a value the client sent). */
static int take_erro(struct kh_client *c, const struct kh_frame *f)
{
	uint64_t code = 0;
	int err;

	if (kh_frame_u64(f, "EC", 1, 1000000, &code) != KH_OK)
		err = KH_ERR_PROTOCOL;
	else
		err = kh_err_from_wire((long)code);
	if (kh_frame_str(f, "ET", c->err, sizeof(c->err)) != KH_OK)
		snprintf(c->err, sizeof(c->err), "%s", kh_strerror(err));
	return err;
}

int kh_client_recv(struct kh_client *c, struct kh_buf *resp, struct kh_frame *f)
{
	size_t flen = 0;
	int r;

	c->err[0] = '\0';
	kh_buf_reset(resp);
	if (c->fd < 0)
		return fail(c, KH_ERR_CLOSED, "receive", "not connected");
	for (;;) {
		r = kh_frame_find(kh_buf_ptr(c->rbuf), kh_buf_len(c->rbuf), KH_FRAME_MAX, &flen);
		if (r == 1)
			break;
		if (r < 0) {
			r = fail(c, KH_ERR_PROTOCOL, "receive", "the server's answer is not an Excrypt "
				 "frame (does the port expect TLS?)");
			kh_client_disconnect(c);
			return r;
		}
		if ((r = read_some(c)) != KH_OK)
			return r;
	}
	if ((r = kh_buf_put(resp, kh_buf_ptr(c->rbuf), flen)) != KH_OK)
		return fail(c, r, "receive", "%s", kh_strerror(r));
	kh_buf_consume(c->rbuf, flen);
	if (kh_frame_parse(kh_buf_ptr(resp), kh_buf_len(resp), KH_FIELDS_MAX, f) != KH_OK) {
		r = fail(c, KH_ERR_PROTOCOL, "receive", "malformed response frame");
		kh_client_disconnect(c);
		return r;
	}
	if (memcmp(f->cmd, "ERRO", 5) == 0)
		return take_erro(c, f);
	return KH_OK;
}

int kh_client_call(struct kh_client *c, const struct kh_buf *req, struct kh_buf *resp,
		   struct kh_frame *f)
{
	int r = kh_client_send(c, req);
	if (r != KH_OK)
		return r;
	return kh_client_recv(c, resp, f);
}

/* [AOECHO;] round trip. Any well-formed answer proves the connection works
 * (an ERRO here is the HSM talking, not a transport failure). */
static int probe(struct kh_client *c)
{
	struct kh_buf *req = kh_buf_new(64), *resp = kh_buf_new(KH_FRAME_MAX);
	struct kh_frame *f = malloc(sizeof(*f));
	int r = KH_ERR_NOMEM;

	if (req == NULL || resp == NULL || f == NULL) {
		r = fail(c, KH_ERR_NOMEM, "probe", "out of memory");
		goto out;
	}
	if ((r = kh_msg_begin(req, "ECHO")) != KH_OK || (r = kh_msg_end(req)) != KH_OK)
		goto out;
	r = kh_client_call(c, req, resp, f);
	if (r < 0 && (r <= KH_ERR_IO && r >= KH_ERR_PROTOCOL)) {
		/* transport failure: rename the step. TLS alerts after a TLS 1.3
		 * handshake already carry "TLS handshake" in the message. */
		if (strstr(c->err, ": TLS handshake: ") == NULL) {
			const char *d = strstr(c->err, ": receive: ");
			if (d == NULL)
				d = strstr(c->err, ": send: ");
			if (d) {
				char tmp[800];
				snprintf(tmp, sizeof(tmp), "%s", strchr(d + 2, ':') + 2);
				/* a silent server is not a TLS problem */
				fail(c, r, c->ssl && r != KH_ERR_TIMEOUT ? "TLS handshake" : "probe",
				     "%s%s", tmp, r == KH_ERR_TIMEOUT ? " (no answer to [AOECHO;])" : "");
			}
		}
		goto out;
	}
	c->err[0] = '\0';
	r = KH_OK;
out:
	free(f);
	kh_buf_free(req);
	kh_buf_free(resp);
	return r;
}

int kh_client_connect(struct kh_client *c)
{
	int r;

	kh_client_disconnect(c);
	c->err[0] = '\0';
	r = c->unix_path ? connect_unix(c) : connect_tcp(c);
	if (r != KH_OK)
		goto fail;
	set_io_timeout(c->fd, c->o.io_timeout_ms);
	if (!c->unix_path && c->o.tls) {
		if ((r = tls_setup(c)) != KH_OK || (r = tls_handshake(c)) != KH_OK)
			goto fail;
	}
	if (c->o.probe && (r = probe(c)) != KH_OK)
		goto fail;
	return KH_OK;
fail:
	kh_client_disconnect(c);
	return r;
}

int kh_client_attach_fd(struct kh_client *c, int fd)
{
	kh_client_disconnect(c);
	c->err[0] = '\0';
	if (fd < 0)
		return fail(c, KH_ERR_CONNECT, "attach", "bad descriptor");
	c->fd = fd;
	set_io_timeout(fd, c->o.io_timeout_ms);
	return KH_OK;
}

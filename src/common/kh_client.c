/*
 * Excrypt client: connection set-up with a message per failed step, and
 * frame I/O through wiped kh_bufs. It must never copy a frame into memory
 * that is not wiped, and never put a frame value into an error message.
 */
#include "common/kh_client.h"
#include "common/kh_buf.h"
#include "common/kh_frame.h"
#include "common/kh_mem.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <time.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define CLIENT_RBUF_MAX (KH_FRAME_MAX + 4096u)

struct kh_client {
	struct kh_client_opts o;  /* strings below are owned copies */
	char *unix_path, *host, *ca_file, *cert_file, *key_file, *port_name;
	int fd;
	SSL_CTX *ctx;             /* built from the files for this connection */
	SSL_CTX *shared_ctx;      /* o.tls_ctx, referenced for the client's life */
	SSL *ssl;
	/* kh_client_connect_over: the carrying connection's TLS, read and
	 * written by ssl through a BIO_f_ssl (NULL: ssl is on fd) */
	SSL *outer_ssl;
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
	if (o->tls_ctx) {
		if (SSL_CTX_up_ref(o->tls_ctx) != 1) {
			kh_client_free(c);
			return NULL;
		}
		c->shared_ctx = o->tls_ctx;
	}
	c->o.tls_ctx = NULL; /* only shared_ctx, which this client holds a reference to */
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
	if (c->outer_ssl) {
		(void)SSL_shutdown(c->outer_ssl);
		SSL_free(c->outer_ssl);
		c->outer_ssl = NULL;
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
	SSL_CTX_free(c->shared_ctx);
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

int kh_client_fd(const struct kh_client *c)
{
	return c->fd;
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

/* ms <= 0: no timeout (a fresh socket has none either) */
static void set_io_timeout(int fd, int ms)
{
	struct timeval tv = {0, 0};
	if (ms > 0)
		tv = (struct timeval){.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
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

/* ---- a socket BIO whose writes never raise SIGPIPE ----
 * OpenSSL's own socket BIO writes with write(2): a peer that closed would
 * kill a process that did not ignore SIGPIPE, and a library (the PKCS#11
 * module) may not change the application's signal handlers. It also hands
 * EINTR back as "retry", which on a blocking socket reads as a timeout
 * whenever the application receives a signal. This one sends with
 * MSG_NOSIGNAL, restarts after EINTR and, for kh_client_stale, can read
 * without waiting. */
struct nsbio {
	int fd;
	bool eof;
	bool dontwait;
};

static int nsbio_write(BIO *b, const char *in, int inl)
{
	struct nsbio *d = BIO_get_data(b);
	ssize_t n;

	BIO_clear_retry_flags(b);
	if (d == NULL || in == NULL || inl <= 0)
		return 0;
	/* a signal is no reason to give up (OpenSSL's BIO reports EINTR as
	 * "retry", which a blocking caller can only take for a timeout) */
	do
		n = send(d->fd, in, (size_t)inl, MSG_NOSIGNAL | (d->dontwait ? MSG_DONTWAIT : 0));
	while (n < 0 && errno == EINTR);
	/* only a timeout (or MSG_DONTWAIT) is worth another try */
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
		BIO_set_retry_write(b);
	return (int)n;
}

static int nsbio_read(BIO *b, char *out, int outl)
{
	struct nsbio *d = BIO_get_data(b);
	ssize_t n;

	BIO_clear_retry_flags(b);
	if (d == NULL || out == NULL || outl <= 0)
		return 0;
	do
		n = recv(d->fd, out, (size_t)outl, d->dontwait ? MSG_DONTWAIT : 0);
	while (n < 0 && errno == EINTR);
	if (n == 0)
		d->eof = true; /* lets OpenSSL tell an unexpected EOF from an error */
	else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
		BIO_set_retry_read(b);
	return (int)n;
}

static long nsbio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	struct nsbio *d = BIO_get_data(b);

	if (d == NULL)
		return 0;
	switch (cmd) {
	case BIO_C_SET_FD:
		d->fd = *(const int *)ptr;
		d->eof = false;
		BIO_set_shutdown(b, (int)num);
		BIO_set_init(b, 1);
		return 1;
	case BIO_C_GET_FD:
		if (ptr)
			*(int *)ptr = d->fd;
		return d->fd;
	case BIO_CTRL_GET_CLOSE:
		return BIO_get_shutdown(b);
	case BIO_CTRL_SET_CLOSE:
		BIO_set_shutdown(b, (int)num);
		return 1;
	case BIO_CTRL_EOF:
		return d->eof;
	case BIO_CTRL_FLUSH:
	case BIO_CTRL_DUP:
		return 1;
	default:
		return 0;
	}
}

static int nsbio_create(BIO *b)
{
	struct nsbio *d = calloc(1, sizeof(*d));
	if (d == NULL)
		return 0;
	d->fd = -1;
	BIO_set_data(b, d);
	BIO_set_init(b, 0);
	return 1;
}

static int nsbio_destroy(BIO *b)
{
	struct nsbio *d = BIO_get_data(b);
	if (d == NULL)
		return 1;
	if (BIO_get_shutdown(b) && d->fd >= 0)
		close(d->fd);
	free(d);
	BIO_set_data(b, NULL);
	return 1;
}

static BIO_METHOD *nsbio_method;
static int nsbio_type;
static pthread_once_t nsbio_once = PTHREAD_ONCE_INIT;

static void nsbio_init(void)
{
	int type = BIO_get_new_index();
	BIO_METHOD *m;

	if (type == -1)
		return;
	type |= BIO_TYPE_SOURCE_SINK | BIO_TYPE_DESCRIPTOR;
	m = BIO_meth_new(type, "keyhold socket");
	if (m == NULL)
		return;
	if (BIO_meth_set_write(m, nsbio_write) != 1 || BIO_meth_set_read(m, nsbio_read) != 1 ||
	    BIO_meth_set_ctrl(m, nsbio_ctrl) != 1 || BIO_meth_set_create(m, nsbio_create) != 1 ||
	    BIO_meth_set_destroy(m, nsbio_destroy) != 1) {
		BIO_meth_free(m);
		return;
	}
	nsbio_type = type;
	nsbio_method = m;
}

/* The SSL reads and writes fd through an nsbio (the fd stays ours to close). */
static int nsbio_attach(SSL *ssl, int fd)
{
	BIO *b;

	if (pthread_once(&nsbio_once, nsbio_init) != 0 || nsbio_method == NULL)
		return KH_ERR_NOMEM;
	if ((b = BIO_new(nsbio_method)) == NULL)
		return KH_ERR_NOMEM;
	BIO_set_fd(b, fd, BIO_NOCLOSE);
	SSL_set_bio(ssl, b, b); /* one reference, owned by the SSL from here */
	return KH_OK;
}

/* TLS in TLS: ssl reads and writes through outer (which stays ours to free). */
static int sslbio_attach(SSL *ssl, SSL *outer)
{
	BIO *b = BIO_new(BIO_f_ssl());

	if (b == NULL)
		return KH_ERR_NOMEM;
	BIO_set_ssl(b, outer, BIO_NOCLOSE);
	SSL_set_bio(ssl, b, b);
	return KH_OK;
}

static struct nsbio *nsbio_of(SSL *ssl)
{
	BIO *b = SSL_get_rbio(ssl);
	if (b == NULL || nsbio_method == NULL || BIO_method_type(b) != nsbio_type)
		return NULL;
	return BIO_get_data(b);
}

/* ---- a TLS context shared by many clients ---- */

static int ctx_fail(char *err, size_t errsz, int r, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int ctx_fail(char *err, size_t errsz, int r, const char *fmt, ...)
{
	char detail[900];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	if (err && errsz)
		snprintf(err, errsz, "TLS setup: %s", detail);
	return r;
}

/* PEM password callback: the configured password, or a refusal; never a
 * prompt on the terminal (OpenSSL's default). */
static int pem_pass_cb(char *buf, int size, int rwflag, void *u)
{
	const struct kh_client_tls *t = u;
	(void)rwflag;
	if (t == NULL || t->pass == NULL || size < 0 || t->passlen > (size_t)size)
		return -1;
	memcpy(buf, t->pass, t->passlen);
	return (int)t->passlen;
}

static bool has_suffix(const char *s, const char *suf)
{
	size_t n = strlen(s), m = strlen(suf);
	return n >= m && strcasecmp(s + n - m, suf) == 0;
}

/* PKCS#12 by name, or by content: DER starts with a SEQUENCE, PEM with text. */
static bool is_pkcs12(const char *path)
{
	unsigned char b = 0;
	FILE *fp;
	bool der;

	if (has_suffix(path, ".p12") || has_suffix(path, ".pfx"))
		return true;
	if ((fp = fopen(path, "rb")) == NULL)
		return false; /* the PEM loader names the file and the reason */
	der = fread(&b, 1, 1, fp) == 1 && b == 0x30;
	fclose(fp);
	return der;
}

static int load_pkcs12(const struct kh_client_tls *t, EVP_PKEY **key, X509 **cert,
		       STACK_OF(X509) **ca, char *err, size_t errsz)
{
	PKCS12 *p12 = NULL;
	char *pw = NULL;
	BIO *b;
	int r;

	if ((b = BIO_new_file(t->cert_file, "rb")) == NULL) {
		r = ctx_fail(err, errsz, KH_ERR_TLS, "cannot read PKCS#12 file %s: %s", t->cert_file,
			     ssl_reason_text(ERR_peek_error()));
		goto out;
	}
	if ((p12 = d2i_PKCS12_bio(b, NULL)) == NULL) {
		r = ctx_fail(err, errsz, KH_ERR_TLS, "%s is not a PKCS#12 file", t->cert_file);
		goto out;
	}
	/* the PKCS#12 calls take a C string */
	if ((pw = kh_secure_alloc(t->passlen + 1)) == NULL) {
		r = ctx_fail(err, errsz, KH_ERR_NOMEM, "out of memory");
		goto out;
	}
	if (t->pass)
		memcpy(pw, t->pass, t->passlen);
	if (PKCS12_mac_present(p12) && PKCS12_verify_mac(p12, pw, -1) != 1 &&
	    !(t->passlen == 0 && PKCS12_verify_mac(p12, NULL, 0) == 1)) {
		r = ctx_fail(err, errsz, KH_ERR_TLS, "PKCS#12 file %s: wrong password%s", t->cert_file,
			     t->pass ? "" : " (none given)");
		goto out;
	}
	if (PKCS12_parse(p12, pw, key, cert, ca) != 1) {
		r = ctx_fail(err, errsz, KH_ERR_TLS,
			     "cannot read PKCS#12 file %s: %s (legacy algorithms such as RC2 "
			     "are not supported: export it again with AES)",
			     t->cert_file, ssl_reason_text(ERR_peek_last_error()));
		goto out;
	}
	if (*key == NULL || *cert == NULL) {
		r = ctx_fail(err, errsz, KH_ERR_TLS, "PKCS#12 file %s holds no %s", t->cert_file,
			     *key == NULL ? "private key" : "certificate");
		goto out;
	}
	r = KH_OK;
out:
	kh_secure_free(pw, t->passlen + 1);
	PKCS12_free(p12);
	BIO_free(b);
	return r;
}

static int load_pem_key(const struct kh_client_tls *t, const char *path, EVP_PKEY **key, char *err,
			size_t errsz)
{
	struct kh_client_tls cb = *t; /* the callback's argument is not const */
	BIO *b = BIO_new_file(path, "r");

	if (b == NULL)
		return ctx_fail(err, errsz, KH_ERR_TLS, "cannot load client key %s: %s", path,
				ssl_reason_text(ERR_peek_error()));
	*key = PEM_read_bio_PrivateKey(b, NULL, pem_pass_cb, &cb);
	BIO_free(b);
	if (*key == NULL) {
		unsigned long e = ERR_peek_last_error();
		if (t->pass == NULL && ERR_GET_REASON(e) == PEM_R_BAD_PASSWORD_READ)
			return ctx_fail(err, errsz, KH_ERR_TLS,
					"cannot load client key %s: it is encrypted and no password "
					"was given", path);
		return ctx_fail(err, errsz, KH_ERR_TLS, "cannot load client key %s: %s%s", path,
				ssl_reason_text(e), t->pass ? " (wrong password?)" : "");
	}
	return KH_OK;
}

int kh_client_tls_ctx(const struct kh_client_tls *t, SSL_CTX **out, char *err, size_t errsz)
{
	STACK_OF(X509) *chain = NULL;
	EVP_PKEY *key = NULL;
	X509 *cert = NULL;
	SSL_CTX *ctx;
	int r;

	*out = NULL;
	if (err && errsz)
		err[0] = '\0';
	ERR_clear_error();
	if ((ctx = SSL_CTX_new(TLS_client_method())) == NULL) {
		r = ctx_fail(err, errsz, KH_ERR_NOMEM, "%s", ssl_reason_text(ERR_peek_error()));
		goto out;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_CLEANSE_PLAINTEXT | SSL_OP_NO_RENEGOTIATION |
					 SSL_OP_NO_COMPRESSION);
	/* one read(2) per answer instead of one for the record header and one
	 * for its body: reads never wait on poll(2) first, and kh_client_stale
	 * looks at what the TLS layer holds (SSL_has_pending) */
	SSL_CTX_set_read_ahead(ctx, 1);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	/* whatever reads a PEM file through the context must never prompt */
	SSL_CTX_set_default_passwd_cb(ctx, pem_pass_cb);
	SSL_CTX_set_default_passwd_cb_userdata(ctx, NULL);
	if (t->ca_file) {
		if (SSL_CTX_load_verify_locations(ctx, t->ca_file, NULL) != 1) {
			r = ctx_fail(err, errsz, KH_ERR_TLS, "cannot load CA file %s: %s", t->ca_file,
				     ssl_reason_text(ERR_peek_last_error()));
			goto out;
		}
	} else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
		r = ctx_fail(err, errsz, KH_ERR_TLS, "no CA file given and no system default");
		goto out;
	}
	if (t->cert_file == NULL) {
		if (t->key_file) {
			r = ctx_fail(err, errsz, KH_ERR_TLS,
				     "client key %s given without a client certificate", t->key_file);
			goto out;
		}
		r = KH_OK;
		goto done;
	}
	if (is_pkcs12(t->cert_file)) {
		if (t->key_file) {
			r = ctx_fail(err, errsz, KH_ERR_TLS,
				     "%s is PKCS#12, which holds the key: no separate key file %s",
				     t->cert_file, t->key_file);
			goto out;
		}
		if ((r = load_pkcs12(t, &key, &cert, &chain, err, errsz)) != KH_OK)
			goto out;
		if (SSL_CTX_use_certificate(ctx, cert) != 1) {
			r = ctx_fail(err, errsz, KH_ERR_TLS, "client certificate in %s: %s",
				     t->cert_file, ssl_reason_text(ERR_peek_last_error()));
			goto out;
		}
		for (int i = 0; chain && i < sk_X509_num(chain); i++) {
			if (SSL_CTX_add1_chain_cert(ctx, sk_X509_value(chain, i)) != 1) {
				r = ctx_fail(err, errsz, KH_ERR_NOMEM, "out of memory");
				goto out;
			}
		}
	} else {
		if (SSL_CTX_use_certificate_chain_file(ctx, t->cert_file) != 1) {
			r = ctx_fail(err, errsz, KH_ERR_TLS, "cannot load client certificate %s: %s",
				     t->cert_file, ssl_reason_text(ERR_peek_last_error()));
			goto out;
		}
		if ((r = load_pem_key(t, t->key_file ? t->key_file : t->cert_file, &key, err,
				      errsz)) != KH_OK)
			goto out;
	}
	if (SSL_CTX_use_PrivateKey(ctx, key) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
		r = ctx_fail(err, errsz, KH_ERR_TLS,
			     "client key %s does not match the client certificate %s",
			     t->key_file ? t->key_file : t->cert_file, t->cert_file);
		goto out;
	}
	r = KH_OK;
done:
	*out = ctx;
	ctx = NULL;
out:
	SSL_CTX_free(ctx);
	EVP_PKEY_free(key);
	X509_free(cert);
	sk_X509_pop_free(chain, X509_free);
	ERR_clear_error();
	return r;
}

/* A context of this client's own, from the file names (the CLI's way). */
static int tls_own_ctx(struct kh_client *c)
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
	return KH_OK;
}

static int tls_setup(struct kh_client *c)
{
	int r;

	if (c->shared_ctx == NULL && (r = tls_own_ctx(c)) != KH_OK)
		return r;
	c->ssl = SSL_new(c->shared_ctx ? c->shared_ctx : c->ctx);
	if (c->ssl == NULL ||
	    (c->outer_ssl ? sslbio_attach(c->ssl, c->outer_ssl) : nsbio_attach(c->ssl, c->fd)) != KH_OK)
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

/* Read at least one byte, at most want, into p. */
static int read_raw(struct kh_client *c, uint8_t *p, size_t want, size_t *got)
{
	*got = 0;
	for (;;) {
		if (c->ssl) {
			ERR_clear_error();
			errno = 0;
			int sr = SSL_read_ex(c->ssl, p, want, got);
			if (sr == 1)
				return KH_OK;
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
			*got = (size_t)n;
			return KH_OK;
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
	if ((r = read_raw(c, p, want, &got)) != KH_OK)
		return r;
	kh_buf_commit(c->rbuf, got);
	return KH_OK;
}

int kh_client_write(struct kh_client *c, const void *p, size_t n)
{
	c->err[0] = '\0';
	if (c->fd < 0)
		return fail(c, KH_ERR_CLOSED, "send", "not connected");
	return write_all(c, p, n);
}

int kh_client_read(struct kh_client *c, void *p, size_t max, size_t *got)
{
	size_t held;

	*got = 0;
	c->err[0] = '\0';
	if (c->fd < 0)
		return fail(c, KH_ERR_CLOSED, "receive", "not connected");
	if (max == 0)
		return fail(c, KH_ERR_INTERNAL, "receive", "no room to read into");
	if ((held = kh_buf_len(c->rbuf)) > 0) {
		/* bytes a frame read took in beyond its frame */
		*got = held < max ? held : max;
		memcpy(p, kh_buf_ptr(c->rbuf), *got);
		kh_buf_consume(c->rbuf, *got);
		return KH_OK;
	}
	return read_raw(c, p, max, got);
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

/* TLS (when tls) and the probe on a connected fd. */
static int connect_finish(struct kh_client *c, bool tls)
{
	int r, hs;

	hs = c->o.handshake_timeout_ms > 0 ? c->o.handshake_timeout_ms : c->o.io_timeout_ms;
	set_io_timeout(c->fd, hs);
	if (tls) {
		if ((r = tls_setup(c)) != KH_OK || (r = tls_handshake(c)) != KH_OK)
			goto fail;
	}
	if (c->o.probe && (r = probe(c)) != KH_OK)
		goto fail;
	if (hs != c->o.io_timeout_ms)
		set_io_timeout(c->fd, c->o.io_timeout_ms);
	return KH_OK;
fail:
	kh_client_disconnect(c);
	return r;
}

int kh_client_connect(struct kh_client *c)
{
	int r;

	kh_client_disconnect(c);
	c->err[0] = '\0';
	r = c->unix_path ? connect_unix(c) : connect_tcp(c);
	if (r != KH_OK) {
		kh_client_disconnect(c);
		return r;
	}
	return connect_finish(c, !c->unix_path && c->o.tls);
}

int kh_client_connect_over(struct kh_client *c, struct kh_client *outer)
{
	kh_client_disconnect(c);
	c->err[0] = '\0';
	if (outer->fd < 0)
		return fail(c, KH_ERR_CLOSED, "relay", "the carrying connection is closed");
	if (kh_buf_len(outer->rbuf) > 0) {
		/* those bytes belong to c's stream, which starts with c's hello */
		kh_client_disconnect(outer);
		return fail(c, KH_ERR_PROTOCOL, "relay", "bytes arrived before the relayed stream began");
	}
	c->fd = outer->fd;
	outer->fd = -1;
	c->outer_ssl = outer->ssl; /* it holds its own reference to outer's SSL_CTX */
	outer->ssl = NULL;
	kh_client_disconnect(outer);
	return connect_finish(c, c->o.tls);
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

void kh_client_abandon(struct kh_client *c)
{
	if (c == NULL)
		return;
	for (int i = 0; i < 2; i++) {
		SSL **sp = i == 0 ? &c->ssl : &c->outer_ssl;
		if (*sp == NULL)
			continue;
		struct nsbio *d = nsbio_of(*sp);
		/* Nothing below writes, but make sure: the BIO loses the
		 * descriptor, and the SSL believes the close is done. */
		if (d)
			d->fd = -1;
		SSL_set_quiet_shutdown(*sp, 1);
		SSL_set_shutdown(*sp, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
		SSL_free(*sp);
		*sp = NULL;
	}
	if (c->fd >= 0) {
		close(c->fd); /* never shutdown(2): that would end the parent's stream too */
		c->fd = -1;
	}
	ERR_clear_error();
	kh_client_free(c);
}

bool kh_fd_spin(int fd, unsigned spin_us)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};
	struct timespec t0, t;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		if (poll(&p, 1, 0) != 0)
			return true; /* readable, closed or failed: the read tells */
		clock_gettime(CLOCK_MONOTONIC, &t);
		if ((unsigned long)((t.tv_sec - t0.tv_sec) * 1000000L + (t.tv_nsec - t0.tv_nsec) / 1000) >=
		    spin_us)
			return false;
	}
}

bool kh_client_spin(struct kh_client *c, unsigned spin_us)
{
	if (c->fd < 0 || kh_buf_len(c->rbuf) > 0 || (c->ssl && SSL_has_pending(c->ssl)))
		return true;
	return kh_fd_spin(c->fd, spin_us);
}

bool kh_client_stale(struct kh_client *c)
{
	struct pollfd p = {.fd = c->fd, .events = POLLIN};
	struct nsbio *d;
	uint8_t tmp[256];
	size_t got = 0;
	int n, sr;

	if (c->fd < 0 || kh_buf_len(c->rbuf) > 0)
		return true; /* closed, or bytes nobody asked for */
	if (c->ssl && SSL_has_pending(c->ssl))
		return true;
	do
		n = poll(&p, 1, 0);
	while (n < 0 && errno == EINTR);
	/* TLS in TLS: the carrying TLS may hold records read ahead */
	if (n == 0 && !(c->outer_ssl && SSL_has_pending(c->outer_ssl)))
		return false;
	if (n < 0 || (p.revents & (POLLERR | POLLNVAL)))
		return true;
	if (c->ssl == NULL)
		return true; /* clear TCP: an EOF, a reset, or bytes out of step */
	/* TLS: a record may be a post-handshake message (a session ticket, a
	 * key update), which is fine; application data, an alert or an EOF is
	 * not. Read what is there without waiting for more. */
	if ((d = nsbio_of(c->outer_ssl ? c->outer_ssl : c->ssl)) == NULL)
		return true;
	d->dontwait = true;
	ERR_clear_error();
	sr = SSL_read_ex(c->ssl, tmp, sizeof(tmp), &got);
	d->dontwait = false;
	kh_wipe(tmp, sizeof(tmp));
	if (sr == 1)
		return true;
	sr = SSL_get_error(c->ssl, sr);
	ERR_clear_error();
	return sr != SSL_ERROR_WANT_READ;
}

/*
 * The Excrypt client library: connect to an HSM port (TCP with or without TLS,
 * or the local console socket), send frames, receive frames in order. Used by
 * the CLI, the tests and the benchmarks. It never logs or keeps a frame's
 * contents beyond the caller's wiped buffers: frames carry passwords and keys.
 *
 * Thread-compatible: one struct kh_client per thread; the only shared state
 * is a TLS context (SSL_CTX) a caller may hand to many clients, which OpenSSL
 * lets threads share. Writes never raise SIGPIPE (MSG_NOSIGNAL, also under
 * TLS through our own socket BIO), so a library that embeds this client
 * need not touch the application's signal handlers.
 */
#ifndef KH_CLIENT_H
#define KH_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include "common/kh_err.h"

struct kh_buf;
struct kh_frame;
struct ssl_ctx_st; /* SSL_CTX, without pulling OpenSSL's headers into every caller */

struct kh_client_opts {
	const char *unix_path;   /* console socket; when set, host/port/TLS are ignored */
	const char *host;        /* name or IP literal (default "127.0.0.1") */
	unsigned port;           /* default 9009 */
	bool tls;                /* default true */
	const char *ca_file;     /* PEM trust anchors for the server (NULL: system default) */
	const char *cert_file;   /* PEM client certificate (chain), NULL: none */
	const char *key_file;    /* PEM client key, NULL: cert_file */
	bool check_name;         /* verify the server's certificate names host (default
				  * true): a DNS name, or an IP address in its IP SANs */
	int connect_timeout_ms;  /* TCP connect (default 10000) */
	int io_timeout_ms;       /* each read/write incl. handshake (default 30000); 0: none */
	const char *port_name;   /* for messages; NULL: from the port (9100 "Excrypt",
				  * 9009 "Admin", console "console") */
	bool probe;              /* send [AOECHO;] after connecting (default true) */
	/* A TLS context shared by many clients (kh_client_tls_ctx): kh_client_new
	 * takes a reference (SSL_CTX_up_ref) and kh_client_free drops it; ca_file,
	 * cert_file and key_file are then ignored. NULL (default): the client
	 * loads them into a context of its own at every connect. */
	struct ssl_ctx_st *tls_ctx;
	int handshake_timeout_ms; /* TLS handshake and probe (default 0: io_timeout_ms) */
};

/* What kh_client_tls_ctx loads. Files are PEM, except that cert_file may be
 * a PKCS#12 file (.p12 or .pfx, or any file that is not PEM) holding the
 * client key, its certificate and chain. */
struct kh_client_tls {
	const char *ca_file;   /* PEM trust anchors for the server (NULL: system default) */
	const char *cert_file; /* client certificate chain or PKCS#12; NULL: no client certificate */
	const char *key_file;  /* PEM client key, NULL: in cert_file */
	const char *pass;      /* for an encrypted PEM key or the PKCS#12 file; NULL: none */
	size_t passlen;
};

struct kh_client;

/* Defaults as documented above. */
void kh_client_opts_init(struct kh_client_opts *o);

/* One client TLS context (TLS 1.2+, server verified against the CA file,
 * SSL_OP_CLEANSE_PLAINTEXT, no renegotiation) for kh_client_opts.tls_ctx.
 * Never prompts for a password: an encrypted key without pass (or with a
 * wrong one) is an error. On failure *out is NULL and err holds one line
 * naming the file, e.g. "TLS setup: cannot load CA file /x/ca.pem: ...".
 * Errors: KH_ERR_TLS, KH_ERR_NOMEM. Free with SSL_CTX_free. */
KH_MUST_CHECK int kh_client_tls_ctx(const struct kh_client_tls *t, struct ssl_ctx_st **out,
				    char *err, size_t errsz);

/* A client with a private copy of the options (strings are copied); not yet
 * connected. NULL on allocation failure. */
struct kh_client *kh_client_new(const struct kh_client_opts *o);
/* Disconnects and frees; NULL ok. */
void kh_client_free(struct kh_client *c);
/* Frees without writing anything to the connection (no TLS close_notify):
 * for a process that inherited the connection through fork() while its
 * parent still uses it. The descriptor is closed. NULL ok. */
void kh_client_abandon(struct kh_client *c);

/* TCP or Unix connect, TLS handshake (TLS 1.2+, server verified against the
 * CA file), then the probe round trip: with TLS 1.3 a server's refusal of the
 * client certificate only arrives after the handshake. On failure the message
 * (kh_client_error) names the port and the step, e.g.
 * "port 9009 (Admin): TLS handshake: server requires a client certificate".
 * Errors: KH_ERR_CONNECT, KH_ERR_TLS (local TLS files), KH_ERR_TLS_HANDSHAKE,
 * KH_ERR_TLS_CERT_REQUIRED, KH_ERR_TLS_CERT_UNKNOWN_CA, KH_ERR_TLS_CERT_EXPIRED,
 * KH_ERR_TLS_CERT_REVOKED, KH_ERR_TIMEOUT, KH_ERR_CLOSED, KH_ERR_PROTOCOL,
 * KH_ERR_NOMEM. Connecting an already connected client reconnects. */
KH_MUST_CHECK int kh_client_connect(struct kh_client *c);
/* Adopt an already connected stream socket without TLS and without a probe
 * (one end of a socketpair in tests, an inherited descriptor). The client
 * owns fd from then on, also on failure. */
KH_MUST_CHECK int kh_client_attach_fd(struct kh_client *c, int fd);
void kh_client_disconnect(struct kh_client *c);
bool kh_client_connected(const struct kh_client *c);
/* The connection's descriptor (-1 when not connected), for bookkeeping only:
 * never read or write it behind the client's back. */
int kh_client_fd(const struct kh_client *c);
/* For a connection that sat idle between requests: true when it can no
 * longer carry one, because the peer closed or reset it or sent bytes that
 * answer nothing (the stream is out of step). Never blocks; TLS records
 * without application data (post-handshake messages) are consumed. */
/* For a caller on a latency-bound path, after a send: wait up to spin_us
 * for the answer to start arriving by polling without sleeping (a thread
 * that sleeps on a virtual machine's idle CPU can take 50-100 us to wake).
 * True when bytes (or a close) are there; then or after, kh_client_recv
 * reads as usual. Burns the CPU it waits on: only when it has one spare. */
bool kh_client_spin(struct kh_client *c, unsigned spin_us);
/* The same for any descriptor (poll without a timeout, up to spin_us). */
bool kh_fd_spin(int fd, unsigned spin_us);
bool kh_client_stale(struct kh_client *c);
/* "port 9009 (Admin)" or "console (/path/console.sock)". */
const char *kh_client_peer(const struct kh_client *c);

/* Write one request frame (the whole buffer). Pipelining: several sends, then
 * as many receives. */
KH_MUST_CHECK int kh_client_send(struct kh_client *c, const struct kh_buf *req);
/* Read the next response into resp (reset first) and parse it into f, whose
 * fields point into resp. An [AOERRO;...] response returns the kh_err of its
 * EC (f is then the parsed ERRO frame and kh_client_error the ET text).
 * Transport failures: KH_ERR_IO, KH_ERR_CLOSED, KH_ERR_TIMEOUT; a response
 * that is not a well-formed frame: KH_ERR_PROTOCOL (the connection is then
 * closed, since the stream can no longer be trusted to be in step). */
KH_MUST_CHECK int kh_client_recv(struct kh_client *c, struct kh_buf *resp, struct kh_frame *f);
/* send + recv. */
KH_MUST_CHECK int kh_client_call(struct kh_client *c, const struct kh_buf *req,
				 struct kh_buf *resp, struct kh_frame *f);

/* Text of the last failure: the connection message, or the HSM's ET text for
 * an ERRO response. "" when the last operation succeeded. Never holds frame
 * values, so never a secret. */
const char *kh_client_error(const struct kh_client *c);

/* ---- the connection as a byte stream (an HTTPS client such as kh_http, a
 * relay) instead of frames. Mixing them with frame calls on one connection is
 * the caller's business. ---- */

/* Write all n bytes. Errors as kh_client_send. */
KH_MUST_CHECK int kh_client_write(struct kh_client *c, const void *p, size_t n);
/* Read at least one byte, at most max, into p; *got is the count. The
 * peer's orderly close is KH_ERR_CLOSED with *got 0; other errors as
 * kh_client_recv. */
KH_MUST_CHECK int kh_client_read(struct kh_client *c, void *p, size_t max, size_t *got);

/* Connect c through outer's connection instead of its own socket: c's TLS
 * (when c's options ask for it, with its own CA, client certificate and name
 * check) runs inside outer's stream, TLS in TLS when outer uses TLS, so that
 * whatever relays outer's bytes sees only c's ciphertext; then c's probe.
 * outer's connection moves into c (outer is left disconnected, also on
 * failure); c's own host and port only name the peer in messages. outer must
 * hold no bytes read but not returned. Errors as kh_client_connect. */
KH_MUST_CHECK int kh_client_connect_over(struct kh_client *c, struct kh_client *outer);

/* The default port name for messages (9100 "Excrypt", 9009 "Admin", else
 * "Excrypt" for other ports). */
const char *kh_client_port_name(unsigned port);

#endif

/*
 * A pool of Excrypt connections to a group of HSM addresses (a PKCS#11
 * slot, a guardian's device group), with TLS as its configuration says. A
 * call takes an idle connection (or opens one, up to the limit per
 * address), sends one request and reads its answer. Balanced calls go to
 * the address with the fewest calls in flight and are retried on another
 * address when the transport fails; a login is replayed on every connection
 * the pool opens, so an HSM restart or a failover is invisible to the
 * caller. The password is kept on the secure heap only while logged in.
 * It knows nothing of its users' configuration files: they fill a
 * struct kh_pool_cfg.
 */
#ifndef KH_POOL_H
#define KH_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include "common/kh_err.h"

struct kh_buf;
struct kh_frame;
struct kh_pool;
struct ssl_ctx_st; /* SSL_CTX */

#define KH_POOL_MAX_ADDRS 8  /* at most 32: tried addresses are a bit set */
#define KH_POOL_HOST_MAX 255 /* bytes of a host name or IP literal */
#define KH_POOL_USER_MAX 64  /* bytes of an identity name in a login */
#define KH_POOL_PASS_MAX 256 /* bytes of a password in a login */
#define KH_POOL_DEFAULT_PORT 9100u

struct kh_pool_addr {
	const char *host; /* name or IP literal */
	unsigned port;    /* 0: the configuration's default_port */
};

/* What a pool needs; neither the struct nor its strings need outlive
 * kh_pool_new (everything kept is copied; a tls_ctx is referenced). Zero
 * means the default for every number. */
struct kh_pool_cfg {
	const char *name; /* names the pool in kh_pool_new's errors: "slot 1"
	                   * (NULL: "connection pool") */
	const char *what; /* what the addresses belong to, in the error of a call
	                   * that no address answered: "no address of the slot
	                   * answered: ..." (NULL: "pool") */
	struct kh_pool_addr addr[KH_POOL_MAX_ADDRS]; /* in order of preference */
	size_t naddr;
	unsigned default_port; /* for addresses without one (0: 9100) */
	bool tls;              /* false: clear TCP */
	/* TLS: an SSL_CTX of the caller's (kh_client_tls_ctx), which the pool
	 * references, or else the files, loaded once into one context */
	struct ssl_ctx_st *tls_ctx;
	bool anonymous;           /* no client certificate (files only) */
	const char *ca_file;      /* PEM trust anchors (NULL or "": system default) */
	const char *cert_file;    /* PEM chain or PKCS#12 (NULL or "": none) */
	const char *key_file;     /* PEM key (NULL or "": in cert_file) */
	const char *key_pass;     /* NUL-terminated, for an encrypted PEM key or the
	                           * PKCS#12 file; NULL: none */
	bool balance;             /* balanced calls spread over the addresses; false:
	                           * they too take the first that works */
	int connect_timeout_ms;   /* TCP connect and TLS handshake (default 10 s) */
	int request_timeout_ms;   /* each write of a request, each wait for an answer (60 s) */
	unsigned max_connections; /* per address, busy and idle (default 64) */
};

/* A pool (opens no connection yet). Loads the TLS material (PEM, or
 * PKCS#12 with key_pass) once, into one SSL_CTX. NULL with err set (one
 * line, "<name>: ...", naming the file) on failure. */
struct kh_pool *kh_pool_new(const struct kh_pool_cfg *cfg, char *err, size_t errsz);
/* Close every connection (TLS close_notify) and free. NULL ok. In a child
 * after fork() it abandons instead. */
void kh_pool_free(struct kh_pool *p);
/* In a child after fork(): drop every connection inherited from the parent
 * WITHOUT writing to it (no TLS shutdown: the parent still uses the session)
 * and free the pool. NULL ok. */
void kh_pool_abandon(struct kh_pool *p);

/* Log in: check the credentials on one connection (LOGN with each identity
 * in turn: a role may need two), then keep them so that every connection
 * the pool opens logs in the same way; connections opened before are
 * logged in before their next use. Returns KH_OK or the HSM's error
 * (AUTH_FAILED, LOCKED, PASSWORD_CHANGE_REQUIRED, ...) or a transport error;
 * nothing is kept on failure. KH_ERR_BAD_FIELD for 0 or more than 4
 * identities, a name that is empty, too long or not frame text, a password
 * longer than KH_POOL_PASS_MAX. */
struct kh_pool_cred {
	const char *user;
	const char *pw;
	size_t pwlen;
};
KH_MUST_CHECK int kh_pool_login(struct kh_pool *p, const struct kh_pool_cred *creds, size_t ncreds);
/* Forget the credentials (wiped) and log out every connection (idle ones at
 * once, busy ones when they come back: LOGO, or close). */
void kh_pool_logout(struct kh_pool *p);
bool kh_pool_logged_in(struct kh_pool *p);
/* After the identity user changed its password (CHPW): the connections the
 * pool logs in from now on use pw; those already logged in stay so.
 * KH_ERR_NOT_LOGGED_IN when the pool holds no login, KH_ERR_NOT_FOUND when
 * user is not one of its identities. */
KH_MUST_CHECK int kh_pool_set_password(struct kh_pool *p, const char *user, const char *pw,
                                       size_t pwlen);

#define KH_POOL_BALANCE 1u /* any address; retried on another after a transport failure */
#define KH_POOL_PRIMARY 2u /* the first address that answers; not resent once sent */
/* One request and its answer (see kh_client_call: f points into resp; an
 * [AOERRO] answer returns its kh_err with f parsed). Transport failures
 * (connect, TLS, I/O, timeout, a closed connection): the connection is
 * dropped and, for a BALANCE call, the request is sent again on a
 * connection to the next address, until every address was tried; the
 * HSM's own errors are returned as they are, except NOT_LOGGED_IN on a
 * connection that should be logged in (an HSM that restarted its session
 * state), which logs in again and retries once. Thread-safe. KH_ERR_STATE
 * in another process than the one that made the pool. err (may be NULL)
 * gets a one-line reason on a failure. */
KH_MUST_CHECK int kh_pool_call(struct kh_pool *p, unsigned flags, const struct kh_buf *req,
                               struct kh_buf *resp, struct kh_frame *f, char *err, size_t errsz);

/* How many addresses answer now (for monitoring); may connect. */
size_t kh_pool_addresses_up(struct kh_pool *p);

/* Counters for tests, benchmarks and monitoring. */
struct kh_pool_stats {
	unsigned long calls, retries, connects, failures;
	size_t open; /* connections open now */
};
void kh_pool_stats(struct kh_pool *p, struct kh_pool_stats *st);

/* Per address (i in configuration order); false when i is out of range. */
struct kh_pool_addr_stats {
	unsigned long calls, failures; /* attempts routed here; transport failures */
	size_t open, idle, in_flight;
	bool down; /* in back-off after a failure */
};
bool kh_pool_addr_stats(struct kh_pool *p, size_t i, struct kh_pool_addr_stats *st);
/* The one-line reason of the last failed call or login ("" when none since
 * the last successful login), for the caller's log. */
void kh_pool_last_error(struct kh_pool *p, char *out, size_t outsz);

#endif

/*
 * Connections from the module to the HSMs of one slot: a pool per slot,
 * over every <ADDRESS> of its <HSM> block, with mutual TLS (or what the
 * block says). A call takes an idle connection (or opens one, up to the
 * block's limit per address), sends one request and reads its answer.
 * Balanced calls go to the address with the fewest calls in flight and are
 * retried on another address when the transport fails; a login is replayed
 * on every connection the pool opens, so an HSM restart or a failover is
 * invisible to the application. The password is kept on the secure heap
 * only while the application is logged in.
 */
#ifndef P11_POOL_H
#define P11_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include "common/kh_err.h"
#include "pkcs11/p11_config.h"

struct kh_buf;
struct kh_frame;
struct p11_pool;

/* A pool for one <HSM> block (cfg must outlive it). Loads the TLS material
 * (PEM, or PKCS#12 with <PROD-TLS-KEY-PASS>) once, into one SSL_CTX; opens
 * no connection yet. NULL with err set (one line naming the file) on failure. */
struct p11_pool *p11_pool_new(const struct p11_slot_cfg *cfg, char *err, size_t errsz);
/* Close every connection (TLS close_notify) and free. NULL ok. */
void p11_pool_free(struct p11_pool *p);
/* In a child after fork(): drop every connection inherited from the parent
 * WITHOUT writing to it (no TLS shutdown: the parent still uses the session)
 * and free the pool. */
void p11_pool_abandon(struct p11_pool *p);

/* Log in: check the credentials on one connection (LOGN with each identity
 * in turn: a role may need two), then keep them so that every connection
 * the pool opens logs in the same way; connections opened before are
 * logged in before their next use. Returns KH_OK or the HSM's error
 * (AUTH_FAILED, LOCKED, PASSWORD_CHANGE_REQUIRED, ...) or a transport error;
 * nothing is kept on failure. */
struct p11_cred {
	const char *user;
	const char *pw;
	size_t pwlen;
};
KH_MUST_CHECK int p11_pool_login(struct p11_pool *p, const struct p11_cred *creds, size_t ncreds);
/* Forget the credentials (wiped) and log out every connection (idle ones at
 * once, busy ones when they come back: LOGO, or close). */
void p11_pool_logout(struct p11_pool *p);
bool p11_pool_logged_in(struct p11_pool *p);
/* After the identity user changed its password (CHPW, for C_SetPIN): the
 * connections the pool logs in from now on use pw; those already logged in
 * stay so. KH_ERR_NOT_LOGGED_IN when the pool holds no login,
 * KH_ERR_NOT_FOUND when user is not one of its identities. */
KH_MUST_CHECK int p11_pool_set_password(struct p11_pool *p, const char *user, const char *pw,
					size_t pwlen);

#define P11_POOL_BALANCE 1u /* any address; retried on another after a transport failure */
#define P11_POOL_PRIMARY 2u /* the first address that answers; not retried once the request was sent */
/* One request and its answer (see kh_client_call: f points into resp; an
 * [AOERRO] answer returns its kh_err with f parsed). Transport failures
 * (connect, TLS, I/O, timeout, a closed connection): the connection is
 * dropped and, for a BALANCE call, the request is sent again on a
 * connection to the next address, until every address was tried; the
 * HSM's own errors are returned as they are, except NOT_LOGGED_IN on a
 * connection that should be logged in (an HSM that restarted its session
 * state), which logs in again and retries once. Thread-safe. err (may be
 * NULL) gets a one-line reason on a transport failure. */
KH_MUST_CHECK int p11_pool_call(struct p11_pool *p, unsigned flags, const struct kh_buf *req,
				struct kh_buf *resp, struct kh_frame *f, char *err, size_t errsz);

/* How many addresses answer now (for C_GetSlotInfo / monitoring); may
 * connect. */
size_t p11_pool_addresses_up(struct p11_pool *p);

/* Counters for tests and benchmarks. */
struct p11_pool_stats {
	unsigned long calls, retries, connects, failures;
	size_t open;     /* connections open now */
};
void p11_pool_stats(struct p11_pool *p, struct p11_pool_stats *st);

/* Per address (i in configuration order), for tests and monitoring; false
 * when i is out of range. */
struct p11_pool_addr_stats {
	unsigned long calls, failures; /* attempts routed here; transport failures */
	size_t open, idle, in_flight;
	bool down;                     /* in back-off after a failure */
};
bool p11_pool_addr_stats(struct p11_pool *p, size_t i, struct p11_pool_addr_stats *st);
/* The one-line reason of the last failed call or login ("" when none since
 * the last successful login), for the module's log. */
void p11_pool_last_error(struct p11_pool *p, char *out, size_t outsz);

#endif

/*
 * The connections to the HSMs of one group of addresses: per address a
 * stack of idle connections, a count of calls in flight and a back-off after
 * failures, all under one mutex that is never held during network I/O.
 * It must never write to a connection inherited through fork(), never keep
 * a password outside the secure heap, and never put a frame value into an
 * error text.
 */
#include "common/kh_pool.h"
#include "common/kh_buf.h"
#include "common/kh_client.h"
#include "common/kh_frame.h"
#include "common/kh_mem.h"
#include "common/kh_pid.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/ssl.h>

#define POOL_MAX_CREDS 4 /* LOGN keeps at most 4 identities on a connection */
#define POOL_BACKOFF_FIRST_MS 1000u
#define POOL_BACKOFF_MAX_MS 30000u
#define POOL_LOGIN_RESP_MAX 65536u
#define POOL_DEFAULT_MAX_CONN 64u
#define POOL_DEFAULT_CONNECT_MS 10000
#define POOL_DEFAULT_REQUEST_MS 60000
#define POOL_MSG 600
#define POOL_NAME_MAX 64 /* cfg->what, cut to fit */

/* The credentials of one login, immutable once made; shared by reference
 * so that a LOGN in flight keeps its copy while a logout drops the pool's. */
struct pool_creds {
	unsigned refs; /* pool mutex */
	size_t n;
	struct {
		char user[KH_POOL_USER_MAX + 1];
		char *pw; /* secure heap, pwlen + 1 bytes */
		size_t pwlen;
	} c[POOL_MAX_CREDS];
};

struct pool_addr;

struct pool_conn {
	struct kh_client *c;
	struct pool_addr *a;
	int fd;              /* for kh_pool_abandon, which may not touch c of a busy one */
	uint64_t gen;        /* login generation the connection is in step with */
	bool logged_in;      /* holds a LOGN */
	bool idle;           /* on a->idle (pool mutex) */
	uint64_t idle_since; /* now_ms() when it went idle */
	struct pool_conn *next_idle;
	struct pool_conn *prev, *next; /* a->all: every open connection (pool mutex) */
};

struct pool_addr {
	char host[KH_POOL_HOST_MAX + 1];
	unsigned port;
	struct pool_conn *idle; /* most recently used first */
	struct pool_conn *all;
	size_t nopen; /* open or being opened: at most max_conn */
	size_t nidle;
	unsigned inflight;   /* calls routed here now */
	uint64_t down_until; /* monotonic ms; 0: up */
	unsigned backoff_ms;
	unsigned long calls, failures;
};

struct kh_pool {
	char what[POOL_NAME_MAX];   /* cfg->what */
	bool balance;               /* cfg->balance */
	SSL_CTX *ctx;               /* NULL for clear TCP */
	struct kh_client_opts base; /* host and port set per address */
	pid_t pid;
	pthread_mutex_t mu;
	pthread_cond_t cv; /* a connection slot came free */
	struct pool_addr addr[KH_POOL_MAX_ADDRS];
	size_t naddr;
	size_t max_conn;
	size_t rr;                /* round-robin cursor for ties */
	struct pool_creds *creds; /* NULL: logged out */
	uint64_t gen;             /* bumped by every login and logout */
	size_t nconn;
	struct kh_pool_stats st;
	char last_err[POOL_MSG];
};

/* ---- small helpers ---- */

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void set_msg(char *out, size_t outsz, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_msg(char *out, size_t outsz, const char *fmt, ...)
{
	va_list ap;
	if (out == NULL || outsz == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(out, outsz, fmt, ap);
	va_end(ap);
}

/* "127.0.0.1 port 9100 (Excrypt): TLS handshake: ..." from kh_client's
 * "port 9100 (Excrypt): ...", which does not name the host. */
static void client_msg(const struct pool_addr *a, const struct kh_client *c, char *out,
                       size_t outsz)
{
	const char *e = c ? kh_client_error(c) : "";
	if (e[0] == '\0')
		e = "failed";
	if (strncmp(e, "port ", 5) == 0)
		set_msg(out, outsz, "%s %s", a->host, e);
	else
		set_msg(out, outsz, "%s port %u (Excrypt): %s", a->host, a->port, e);
}

/* Failures of the connection, not answers of the HSM. An ERRO frame whose
 * code this client does not know also maps to PROTOCOL, but it is the HSM
 * talking on a sound stream. */
static bool is_transport(int r, const struct kh_frame *f)
{
	switch (r) {
	case KH_ERR_PROTOCOL:
		return f == NULL || strcmp(f->cmd, "ERRO") != 0;
	case KH_ERR_IO:
	case KH_ERR_CONNECT:
	case KH_ERR_TLS:
	case KH_ERR_TLS_HANDSHAKE:
	case KH_ERR_TLS_CERT_REQUIRED:
	case KH_ERR_TLS_CERT_UNKNOWN_CA:
	case KH_ERR_TLS_CERT_EXPIRED:
	case KH_ERR_TLS_CERT_REVOKED:
	case KH_ERR_CLOSED:
	case KH_ERR_TIMEOUT:
	case KH_ERR_NOMEM:
		return true;
	default:
		return false;
	}
}

/* A refusal of the TLS handshake that only shows on the first read (TLS 1.3
 * judges the client certificate after the client's side is done): the
 * server never read the request. */
static bool is_handshake_refusal(int r)
{
	return r == KH_ERR_TLS_CERT_REQUIRED || r == KH_ERR_TLS_CERT_UNKNOWN_CA ||
	       r == KH_ERR_TLS_CERT_EXPIRED || r == KH_ERR_TLS_CERT_REVOKED ||
	       r == KH_ERR_TLS_HANDSHAKE;
}

/* ---- credentials ---- */

static void creds_free(struct pool_creds *cs)
{
	if (cs == NULL)
		return;
	for (size_t i = 0; i < cs->n; i++)
		kh_secure_free(cs->c[i].pw, cs->c[i].pwlen + 1);
	kh_wipe(cs, sizeof(*cs));
	free(cs);
}

static void creds_unref(struct kh_pool *p, struct pool_creds *cs)
{
	bool last;
	if (cs == NULL)
		return;
	pthread_mutex_lock(&p->mu);
	last = --cs->refs == 0;
	pthread_mutex_unlock(&p->mu);
	if (last)
		creds_free(cs);
}

static int creds_new(const struct kh_pool_cred *in, size_t n, struct pool_creds **out)
{
	struct pool_creds *cs;

	*out = NULL;
	if (in == NULL || n == 0 || n > POOL_MAX_CREDS)
		return KH_ERR_BAD_FIELD;
	for (size_t i = 0; i < n; i++) {
		size_t ul = in[i].user ? strlen(in[i].user) : 0;
		if (ul == 0 || ul > KH_POOL_USER_MAX || !kh_frame_text_ok(in[i].user, ul) ||
		    (in[i].pw == NULL && in[i].pwlen != 0) || in[i].pwlen > KH_POOL_PASS_MAX)
			return KH_ERR_BAD_FIELD;
	}
	if ((cs = calloc(1, sizeof(*cs))) == NULL)
		return KH_ERR_NOMEM;
	cs->refs = 1;
	for (size_t i = 0; i < n; i++) {
		snprintf(cs->c[i].user, sizeof(cs->c[i].user), "%s", in[i].user);
		cs->c[i].pwlen = in[i].pwlen;
		if ((cs->c[i].pw = kh_secure_alloc(in[i].pwlen + 1)) == NULL) {
			cs->n = i;
			creds_free(cs);
			return KH_ERR_NOMEM;
		}
		cs->n = i + 1;
		if (in[i].pwlen)
			memcpy(cs->c[i].pw, in[i].pw, in[i].pwlen);
	}
	*out = cs;
	return KH_OK;
}

/* ---- connections ---- */

static void link_conn(struct pool_addr *a, struct pool_conn *k)
{
	k->prev = NULL;
	k->next = a->all;
	if (a->all)
		a->all->prev = k;
	a->all = k;
}

static void unlink_conn(struct pool_addr *a, struct pool_conn *k)
{
	if (k->prev)
		k->prev->next = k->next;
	else
		a->all = k->next;
	if (k->next)
		k->next->prev = k->prev;
	k->prev = k->next = NULL;
}

/* Close a connection (TLS close_notify) outside the lock. keep_slot: the
 * caller opens another in its place, so the address's count stays. */
static void conn_close(struct kh_pool *p, struct pool_conn *k, bool keep_slot)
{
	struct pool_addr *a = k->a;

	pthread_mutex_lock(&p->mu);
	unlink_conn(a, k);
	p->nconn--;
	pthread_mutex_unlock(&p->mu);
	kh_client_free(k->c);
	free(k);
	if (keep_slot)
		return;
	pthread_mutex_lock(&p->mu);
	a->nopen--;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
}

/* Close every connection of a list linked through next_idle. */
static void close_list(struct kh_pool *p, struct pool_conn *list)
{
	while (list) {
		struct pool_conn *k = list;
		list = k->next_idle;
		conn_close(p, k, false);
	}
}

/* Take the idle list of a (pool mutex held); the caller closes it. */
static struct pool_conn *take_idle_list(struct pool_addr *a)
{
	struct pool_conn *l = a->idle;
	for (struct pool_conn *k = l; k; k = k->next_idle)
		k->idle = false;
	a->idle = NULL;
	a->nidle = 0;
	return l;
}

/* A transport failure at a (pool mutex held): back off, and hand back its
 * idle connections to close, since a failure is most often a restarted or
 * stopped HSM, which took all of them with it. */
static struct pool_conn *mark_down(struct kh_pool *p, struct pool_addr *a)
{
	uint64_t now = now_ms();
	/* One outage is seen by every call in flight there: back off once per
	 * outage or failed probe, not once per call, or N calls at once would
	 * put a restarted HSM out of use for 2^(N-1) s (30 s from 6 on). */
	if (a->down_until <= now) {
		a->backoff_ms = a->backoff_ms ? a->backoff_ms * 2 : POOL_BACKOFF_FIRST_MS;
		if (a->backoff_ms > POOL_BACKOFF_MAX_MS)
			a->backoff_ms = POOL_BACKOFF_MAX_MS;
		a->down_until = now + a->backoff_ms;
	}
	a->failures++;
	p->st.failures++;
	return take_idle_list(a);
}

static void fail_addr(struct kh_pool *p, struct pool_addr *a, const char *msg)
{
	struct pool_conn *l;
	pthread_mutex_lock(&p->mu);
	l = mark_down(p, a);
	if (msg)
		snprintf(p->last_err, sizeof(p->last_err), "%s", msg);
	pthread_mutex_unlock(&p->mu);
	close_list(p, l);
}

/* Connect a new connection into a slot already counted in a->nopen. */
static int conn_open(struct kh_pool *p, struct pool_addr *a, struct pool_conn **out, char *msg,
                     size_t msgsz)
{
	struct kh_client_opts o = p->base;
	struct pool_conn *k = calloc(1, sizeof(*k));
	int r;

	*out = NULL;
	o.host = a->host;
	o.port = a->port;
	if (k == NULL || (k->c = kh_client_new(&o)) == NULL) {
		free(k);
		set_msg(msg, msgsz, "%s port %u (Excrypt): out of memory", a->host, a->port);
		return KH_ERR_NOMEM;
	}
	if ((r = kh_client_connect(k->c)) != KH_OK) {
		client_msg(a, k->c, msg, msgsz);
		kh_client_free(k->c);
		free(k);
		return r;
	}
	k->a = a;
	k->fd = kh_client_fd(k->c);
	pthread_mutex_lock(&p->mu);
	link_conn(a, k);
	p->nconn++;
	p->st.connects++;
	a->backoff_ms = 0;
	a->down_until = 0;
	pthread_mutex_unlock(&p->mu);
	*out = k;
	return KH_OK;
}

/* An idle connection this recent is taken without the stale check (a
 * poll(2) per call) when the call may be resent elsewhere: if the HSM went
 * away in between, the call fails on the transport and is retried. */
#define TRUST_IDLE_MS 200u

/* A connection to a: an idle one that still works, or a new one; waits
 * while the address has max_conn open and none idle. fresh: never an idle
 * one. resendable: the call is retried on a transport failure (see
 * TRUST_IDLE_MS). *is_new says which it got. */
static int conn_take(struct kh_pool *p, struct pool_addr *a, bool fresh, bool resendable,
                     struct pool_conn **out, bool *is_new, char *msg, size_t msgsz)
{
	struct pool_conn *k = NULL, *old = NULL;
	int r;

	*out = NULL;
	*is_new = false;
	pthread_mutex_lock(&p->mu);
	for (;;) {
		if (!fresh && a->idle) {
			k = a->idle;
			a->idle = k->next_idle;
			a->nidle--;
			k->idle = false;
			k->next_idle = NULL;
			if (k->logged_in && k->gen != p->gen) {
				/* logged in under credentials that are gone */
				old = k;
				k = NULL;
			}
			break;
		}
		if (a->nopen < p->max_conn) {
			a->nopen++;
			break;
		}
		if (a->idle) {
			/* fresh wanted at the limit: replace an idle one */
			old = a->idle;
			a->idle = old->next_idle;
			a->nidle--;
			old->idle = false;
			old->next_idle = NULL;
			break;
		}
		pthread_cond_wait(&p->cv, &p->mu);
	}
	pthread_mutex_unlock(&p->mu);
	if (k) {
		if ((resendable && now_ms() - k->idle_since < TRUST_IDLE_MS) ||
		    !kh_client_stale(k->c)) {
			*out = k;
			return KH_OK;
		}
		old = k; /* closed by the HSM while idle (restart, idle timeout) */
	}
	if (old)
		conn_close(p, old, true);
	if ((r = conn_open(p, a, out, msg, msgsz)) != KH_OK) {
		pthread_mutex_lock(&p->mu);
		a->nopen--;
		pthread_cond_broadcast(&p->cv);
		pthread_mutex_unlock(&p->mu);
		return r;
	}
	*is_new = true;
	return KH_OK;
}

/* Give a connection back after a sound exchange; one that holds a login
 * the pool no longer has (a logout came meanwhile) is closed instead. */
static void conn_release(struct kh_pool *p, struct pool_conn *k)
{
	bool drop;
	pthread_mutex_lock(&p->mu);
	drop = k->logged_in && k->gen != p->gen;
	if (!drop) {
		k->idle = true;
		k->idle_since = now_ms();
		k->next_idle = k->a->idle;
		k->a->idle = k;
		k->a->nidle++;
		pthread_cond_broadcast(&p->cv);
	}
	pthread_mutex_unlock(&p->mu);
	if (drop)
		conn_close(p, k, false);
}

/* ---- choosing an address ---- */

static bool addr_down(const struct pool_addr *a, uint64_t now)
{
	return a->down_until > now;
}

/* The next address to try (pool mutex held), or -1 when every one was
 * tried. Addresses in back-off come last, but are still tried: a call does
 * not fail without trying. */
static int pick(struct kh_pool *p, unsigned flags, uint32_t tried)
{
	uint64_t now = now_ms();
	bool balance = (flags & KH_POOL_BALANCE) && p->balance && p->naddr > 1;
	int best = -1;
	bool best_up = false;

	if (!balance) {
		/* config order: the first that is up, else the first untried */
		for (size_t i = 0; i < p->naddr; i++) {
			if (tried & (1u << i))
				continue;
			bool up = !addr_down(&p->addr[i], now);
			if (best < 0 || (up && !best_up)) {
				best = (int)i;
				best_up = up;
			}
		}
		return best;
	}
	/* fewest calls in flight among those up; ties go round robin */
	for (size_t k = 0; k < p->naddr; k++) {
		size_t i = (p->rr + k) % p->naddr;
		if (tried & (1u << i))
			continue;
		bool up = !addr_down(&p->addr[i], now);
		if (best < 0 || (up && !best_up) ||
		    (up == best_up && p->addr[i].inflight < p->addr[best].inflight)) {
			best = (int)i;
			best_up = up;
		}
	}
	if (best >= 0)
		p->rr = ((size_t)best + 1) % p->naddr;
	return best;
}

/* ---- login on one connection ---- */

/* LOGO: the connection keeps no identity. */
static int send_logout(struct pool_conn *k, struct kh_buf *req, struct kh_buf *resp,
                       struct kh_frame *f, char *msg, size_t msgsz)
{
	int r;
	kh_buf_reset(req);
	if ((r = kh_msg_begin(req, "LOGO")) != KH_OK || (r = kh_msg_end(req)) != KH_OK)
		return r;
	f->cmd[0] = '\0';
	if ((r = kh_client_call(k->c, req, resp, f)) != KH_OK) {
		client_msg(k->a, k->c, msg, msgsz);
		/* a connection whose logout was refused is not trusted to be
		 * logged out: the caller drops it */
		return is_transport(r, f) ? r : KH_ERR_CLOSED;
	}
	k->logged_in = false;
	return KH_OK;
}

/* LOGN with each identity in turn. *hsm: the HSM refused (not a transport
 * failure). */
static int send_logins(struct pool_conn *k, const struct pool_creds *cs, struct kh_buf *req,
                       struct kh_buf *resp, struct kh_frame *f, bool *hsm, char *msg, size_t msgsz)
{
	int r = KH_OK;

	*hsm = false;
	for (size_t i = 0; i < cs->n; i++) {
		kh_buf_reset(req);
		if ((r = kh_msg_begin(req, "LOGN")) != KH_OK ||
		    (r = kh_msg_put(req, "ID", cs->c[i].user)) != KH_OK ||
		    (r = kh_msg_put_hex(req, "PW", (const uint8_t *)cs->c[i].pw, cs->c[i].pwlen)) !=
		        KH_OK ||
		    (r = kh_msg_end(req)) != KH_OK) {
			*hsm = true; /* nothing was sent; not the connection's fault */
			set_msg(msg, msgsz, "login as %s: %s", cs->c[i].user, kh_strerror(r));
			goto out;
		}
		f->cmd[0] = '\0';
		r = kh_client_call(k->c, req, resp, f);
		/* the connection holds some identity from the first answer on;
		 * a failed LOGN may still leave an earlier one in place */
		k->logged_in = true;
		if (r != KH_OK) {
			if (is_transport(r, f)) {
				client_msg(k->a, k->c, msg, msgsz);
			} else {
				*hsm = true;
				set_msg(msg, msgsz, "%s port %u (Excrypt): login as %s: %s",
				        k->a->host, k->a->port, cs->c[i].user,
				        kh_client_error(k->c));
			}
			goto out;
		}
	}
	/* a role that needs more logins than were configured: say so now
	 * rather than with COMMAND_NOT_ALLOWED on every later call */
	bool active = true;
	if (kh_frame_has(f, "AC") && kh_frame_yn(f, "AC", &active) == KH_OK && !active) {
		char lq[16] = "?", lc[16] = "?";
		KH_IGNORE(kh_frame_str(f, "LQ", lq, sizeof(lq)));
		KH_IGNORE(kh_frame_str(f, "LC", lc, sizeof(lc)));
		*hsm = true;
		r = KH_ERR_INCOMPLETE;
		set_msg(msg, msgsz,
		        "%s port %u (Excrypt): login: the role needs %s logins, %s given",
		        k->a->host, k->a->port, lq, lc);
	}
out:
	kh_buf_reset(req); /* it held a password */
	return r;
}

/* Scratch buffers for logins (a call's own buffers belong to the caller). */
struct login_bufs {
	struct kh_buf *req, *resp;
	struct kh_frame *f;
};

static int login_bufs_new(struct login_bufs *b)
{
	b->req = kh_buf_new(KH_FRAME_MAX_PRELOGIN);
	b->resp = kh_buf_new(POOL_LOGIN_RESP_MAX);
	b->f = malloc(sizeof(*b->f));
	return b->req && b->resp && b->f ? KH_OK : KH_ERR_NOMEM;
}

static void login_bufs_free(struct login_bufs *b)
{
	kh_buf_free(b->req);
	kh_buf_free(b->resp);
	free(b->f);
}

/* Bring a connection in step with the pool's login: log it in, or out, or
 * over to new credentials. *hsm as in send_logins. */
static int conn_sync_login(struct kh_pool *p, struct pool_conn *k, bool *hsm, char *msg,
                           size_t msgsz)
{
	struct pool_creds *cs;
	struct login_bufs b = {0};
	uint64_t gen;
	int r = KH_OK;

	*hsm = false;
	pthread_mutex_lock(&p->mu);
	gen = p->gen;
	cs = p->creds;
	if (cs)
		cs->refs++;
	pthread_mutex_unlock(&p->mu);
	if (k->gen == gen)
		goto out;
	if (cs == NULL && !k->logged_in) {
		k->gen = gen;
		goto out;
	}
	if ((r = login_bufs_new(&b)) != KH_OK) {
		*hsm = true;
		set_msg(msg, msgsz, "out of memory");
		goto out;
	}
	if (k->logged_in && (r = send_logout(k, b.req, b.resp, b.f, msg, msgsz)) != KH_OK)
		goto out;
	if (cs && (r = send_logins(k, cs, b.req, b.resp, b.f, hsm, msg, msgsz)) != KH_OK)
		goto out;
	k->gen = gen;
out:
	login_bufs_free(&b);
	creds_unref(p, cs);
	return r;
}

/* ---- one exchange ---- */

/* Log in if needed, send, receive; NOT_LOGGED_IN on a connection that
 * should be logged in (the HSM restarted its session state, or an identity
 * changed) logs in again and sends once more. */
static int exchange(struct kh_pool *p, struct pool_conn *k, const struct kh_buf *req,
                    struct kh_buf *resp, struct kh_frame *f, bool *sent, bool *hsm, bool *drop,
                    char *msg, size_t msgsz)
{
	int r;

	*sent = *hsm = *drop = false;
	for (int round = 0;; round++) {
		if ((r = conn_sync_login(p, k, hsm, msg, msgsz)) != KH_OK) {
			*drop = true; /* a half-done login is no state to keep */
			return r;
		}
		f->cmd[0] = '\0';
		if ((r = kh_client_send(k->c, req)) != KH_OK) {
			client_msg(k->a, k->c, msg, msgsz);
			return r;
		}
		*sent = true;
		r = kh_client_recv(k->c, resp, f);
		if (r == KH_OK)
			return KH_OK;
		if (is_transport(r, f)) {
			client_msg(k->a, k->c, msg, msgsz);
			return r;
		}
		if (r == KH_ERR_NOT_LOGGED_IN && k->logged_in && round == 0) {
			/* refused before it ran: safe to send again */
			k->logged_in = false;
			k->gen = 0;
			*sent = false;
			continue;
		}
		*hsm = true;
		set_msg(msg, msgsz, "%s port %u (Excrypt): %s", k->a->host, k->a->port,
		        kh_client_error(k->c));
		return r;
	}
}

/* Every attempt's reason, in order, once each: "a; b". */
static void trail_add(char *trail, size_t sz, const char *msg)
{
	size_t n = strlen(trail);
	if (strstr(trail, msg) != NULL || n + 3 >= sz)
		return;
	snprintf(trail + n, sz - n, "%s%s", n ? "; " : "", msg);
}

static bool wrong_process(struct kh_pool *p, char *err, size_t errsz)
{
	if (kh_pid() == p->pid)
		return false;
	set_msg(err, errsz,
	        "the connection pool belongs to the parent process (fork): "
	        "make a new one in the child");
	return true;
}

int kh_pool_call(struct kh_pool *p, unsigned flags, const struct kh_buf *req, struct kh_buf *resp,
                 struct kh_frame *f, char *err, size_t errsz)
{
	bool balance = (flags & KH_POOL_BALANCE) != 0;
	char msg[POOL_MSG] = "", trail[2 * POOL_MSG] = "";
	uint32_t tried = 0;
	int reused_fail = -1; /* first address whose idle connection failed */
	bool fresh_retry = false, same_again = false;
	int r = KH_ERR_CONNECT, ai = -1;
	unsigned attempts = 0;

	if (err && errsz)
		err[0] = '\0';
	if (wrong_process(p, err, errsz))
		return KH_ERR_STATE;
	pthread_mutex_lock(&p->mu);
	p->st.calls++;
	pthread_mutex_unlock(&p->mu);
	for (;;) {
		bool want_fresh = false, is_new = false, sent, hsm, drop;
		struct pool_conn *k;
		struct pool_addr *a;

		pthread_mutex_lock(&p->mu);
		if (same_again) {
			/* PRIMARY: its idle connection died before the request
			 * left; the same HSM, on a fresh connection */
			same_again = false;
			want_fresh = true;
		} else {
			ai = pick(p, flags, tried);
			if (ai < 0 && balance && reused_fail >= 0 && !fresh_retry) {
				/* every address failed, one of them on an idle
				 * connection a restarted HSM may have closed: that
				 * one once more, fresh */
				ai = reused_fail;
				want_fresh = fresh_retry = true;
			}
		}
		if (ai < 0) {
			pthread_mutex_unlock(&p->mu);
			break;
		}
		if (attempts++)
			p->st.retries++;
		a = &p->addr[ai];
		a->inflight++;
		a->calls++;
		pthread_mutex_unlock(&p->mu);
		tried |= 1u << ai;

		sent = hsm = drop = false;
		r = conn_take(p, a, want_fresh, balance, &k, &is_new, msg, sizeof(msg));
		if (r == KH_OK)
			r = exchange(p, k, req, resp, f, &sent, &hsm, &drop, msg, sizeof(msg));
		if (k && (r == KH_OK || hsm)) {
			if (drop)
				conn_close(p, k, false);
			else
				conn_release(p, k);
		}
		pthread_mutex_lock(&p->mu);
		a->inflight--;
		if (r != KH_OK)
			snprintf(p->last_err, sizeof(p->last_err), "%s", msg);
		pthread_mutex_unlock(&p->mu);
		if (r == KH_OK || hsm) {
			if (r != KH_OK)
				set_msg(err, errsz, "%s", msg);
			return r;
		}
		/* a transport failure: the connection goes, the address backs off */
		if (k)
			conn_close(p, k, false);
		trail_add(trail, sizeof(trail), msg);
		if (!balance && k && !is_new && !sent && !want_fresh) {
			same_again = true; /* not yet a reason to call the HSM down */
			continue;
		}
		fail_addr(p, a, msg);
		if (k && !is_new && reused_fail < 0)
			reused_fail = ai;
		if (!balance && sent && !(is_new && is_handshake_refusal(r))) {
			set_msg(err, errsz, "%s (the request may have run: not sent again)", msg);
			return r;
		}
	}
	if (p->naddr > 1)
		set_msg(err, errsz, "no address of the %s answered: %s", p->what, trail);
	else
		set_msg(err, errsz, "%s", trail);
	return r;
}

/* ---- login and logout ---- */

int kh_pool_login(struct kh_pool *p, const struct kh_pool_cred *creds, size_t ncreds)
{
	struct login_bufs b = {0};
	struct pool_creds *cs = NULL;
	char msg[POOL_MSG] = "";
	uint32_t tried = 0;
	int r;

	if (wrong_process(p, msg, sizeof(msg)))
		return KH_ERR_STATE;
	if ((r = creds_new(creds, ncreds, &cs)) != KH_OK)
		return r;
	if ((r = login_bufs_new(&b)) != KH_OK)
		goto out;
	r = KH_ERR_CONNECT;
	for (;;) {
		struct pool_conn *k;
		struct pool_addr *a;
		bool is_new, hsm = false;
		int ai;

		pthread_mutex_lock(&p->mu);
		ai = pick(p, KH_POOL_BALANCE, tried);
		if (ai < 0) {
			pthread_mutex_unlock(&p->mu);
			break;
		}
		a = &p->addr[ai];
		a->inflight++;
		pthread_mutex_unlock(&p->mu);
		tried |= 1u << ai;
		r = conn_take(p, a, false, false, &k, &is_new, msg, sizeof(msg));
		if (r == KH_OK && k->logged_in)
			r = send_logout(k, b.req, b.resp, b.f, msg, sizeof(msg));
		if (r == KH_OK)
			r = send_logins(k, cs, b.req, b.resp, b.f, &hsm, msg, sizeof(msg));
		if (r == KH_OK) {
			struct pool_creds *old;
			pthread_mutex_lock(&p->mu);
			a->inflight--;
			old = p->creds;
			p->creds = cs;
			p->gen++;
			k->gen = p->gen;
			k->logged_in = true;
			p->last_err[0] = '\0';
			pthread_mutex_unlock(&p->mu);
			cs = NULL;
			conn_release(p, k);
			creds_unref(p, old);
			goto out;
		}
		pthread_mutex_lock(&p->mu);
		a->inflight--;
		snprintf(p->last_err, sizeof(p->last_err), "%s", msg);
		pthread_mutex_unlock(&p->mu);
		if (k)
			conn_close(p, k, false);
		if (hsm)
			goto out; /* the HSM's answer: nothing is kept */
		fail_addr(p, a, msg);
	}
out:
	login_bufs_free(&b);
	if (cs)
		creds_unref(p, cs);
	return r;
}

void kh_pool_logout(struct kh_pool *p)
{
	struct pool_conn *drop = NULL;
	struct pool_creds *old;

	if (p == NULL || kh_pid() != p->pid)
		return;
	pthread_mutex_lock(&p->mu);
	old = p->creds;
	p->creds = NULL;
	p->gen++;
	/* idle connections that hold a login are closed now (no round trip
	 * that a hung HSM could stretch); busy ones when they come back */
	for (size_t i = 0; i < p->naddr; i++) {
		struct pool_addr *a = &p->addr[i];
		struct pool_conn **pp = &a->idle;
		while (*pp) {
			struct pool_conn *k = *pp;
			if (k->logged_in) {
				*pp = k->next_idle;
				a->nidle--;
				k->idle = false;
				k->next_idle = drop;
				drop = k;
			} else {
				pp = &k->next_idle;
			}
		}
	}
	pthread_mutex_unlock(&p->mu);
	close_list(p, drop);
	creds_unref(p, old);
}

int kh_pool_set_password(struct kh_pool *p, const char *user, const char *pw, size_t pwlen)
{
	struct kh_pool_cred in[POOL_MAX_CREDS];
	struct pool_creds *cs = NULL, *old;
	bool found = false;
	int r;

	if (pw == NULL && pwlen)
		return KH_ERR_BAD_FIELD;
	pthread_mutex_lock(&p->mu);
	old = p->creds;
	if (old == NULL) {
		pthread_mutex_unlock(&p->mu);
		return KH_ERR_NOT_LOGGED_IN;
	}
	for (size_t i = 0; i < old->n; i++) {
		bool match = strcmp(old->c[i].user, user) == 0;
		found |= match;
		in[i] = (struct kh_pool_cred){old->c[i].user, match ? pw : old->c[i].pw,
		                              match ? pwlen : old->c[i].pwlen};
	}
	r = found ? creds_new(in, old->n, &cs) : KH_ERR_NOT_FOUND;
	if (r == KH_OK)
		p->creds = cs; /* same generation: logged-in connections stay so */
	pthread_mutex_unlock(&p->mu);
	if (r == KH_OK)
		creds_unref(p, old);
	return r;
}

bool kh_pool_logged_in(struct kh_pool *p)
{
	bool in;
	pthread_mutex_lock(&p->mu);
	in = p->creds != NULL;
	pthread_mutex_unlock(&p->mu);
	return in;
}

/* ---- life cycle ---- */

static bool str_set(const char *s)
{
	return s != NULL && s[0] != '\0';
}

struct kh_pool *kh_pool_new(const struct kh_pool_cfg *cfg, char *err, size_t errsz)
{
	const char *name = str_set(cfg->name) ? cfg->name : "connection pool";
	struct kh_pool *p;
	char msg[POOL_MSG];
	bool mu = false;

	set_msg(err, errsz, "%s", "");
	if (cfg->naddr == 0 || cfg->naddr > KH_POOL_MAX_ADDRS) {
		set_msg(err, errsz, "%s: %s", name,
		        cfg->naddr ? "too many addresses" : "no address");
		return NULL;
	}
	if ((p = calloc(1, sizeof(*p))) == NULL) {
		set_msg(err, errsz, "%s: out of memory", name);
		return NULL;
	}
	snprintf(p->what, sizeof(p->what), "%s", str_set(cfg->what) ? cfg->what : "pool");
	p->balance = cfg->balance;
	p->pid = kh_pid();
	p->gen = 1;
	p->naddr = cfg->naddr;
	p->max_conn = cfg->max_connections ? cfg->max_connections : POOL_DEFAULT_MAX_CONN;
	for (size_t i = 0; i < cfg->naddr; i++) {
		const struct kh_pool_addr *in = &cfg->addr[i];
		struct pool_addr *a = &p->addr[i];
		a->port = in->port            ? in->port
		          : cfg->default_port ? cfg->default_port
		                              : KH_POOL_DEFAULT_PORT;
		if (!str_set(in->host) || strlen(in->host) > KH_POOL_HOST_MAX || a->port > 65535) {
			set_msg(err, errsz, "%s: address %zu: no host, or a bad host or port", name,
			        i + 1);
			goto fail;
		}
		snprintf(a->host, sizeof(a->host), "%s", in->host);
	}
	kh_client_opts_init(&p->base);
	p->base.tls = cfg->tls;
	p->base.check_name = true;
	p->base.connect_timeout_ms =
	    cfg->connect_timeout_ms > 0 ? cfg->connect_timeout_ms : POOL_DEFAULT_CONNECT_MS;
	p->base.io_timeout_ms =
	    cfg->request_timeout_ms > 0 ? cfg->request_timeout_ms : POOL_DEFAULT_REQUEST_MS;
	/* an HSM that takes the TCP connection but not the handshake is as
	 * good as down: the connect timeout, not the (long) request timeout */
	p->base.handshake_timeout_ms = p->base.connect_timeout_ms;
	p->base.port_name = "Excrypt";
	p->base.probe = false; /* the first request shows a refused handshake */
	if (cfg->tls && cfg->tls_ctx) {
		if (SSL_CTX_up_ref(cfg->tls_ctx) != 1) {
			set_msg(err, errsz, "%s: out of memory", name);
			goto fail;
		}
		p->ctx = cfg->tls_ctx;
		p->base.tls_ctx = p->ctx;
	} else if (cfg->tls) {
		struct kh_client_tls t = {
		    .ca_file = str_set(cfg->ca_file) ? cfg->ca_file : NULL,
		    .cert_file = !cfg->anonymous && str_set(cfg->cert_file) ? cfg->cert_file : NULL,
		    .key_file = !cfg->anonymous && str_set(cfg->key_file) ? cfg->key_file : NULL,
		    .pass = cfg->key_pass,
		    .passlen = cfg->key_pass ? strlen(cfg->key_pass) : 0,
		};
		if (kh_client_tls_ctx(&t, &p->ctx, msg, sizeof(msg)) != KH_OK) {
			set_msg(err, errsz, "%s: %s", name, msg);
			goto fail;
		}
		p->base.tls_ctx = p->ctx;
	}
	if (pthread_mutex_init(&p->mu, NULL) != 0) {
		set_msg(err, errsz, "%s: cannot make a mutex", name);
		goto fail;
	}
	mu = true;
	if (pthread_cond_init(&p->cv, NULL) != 0) {
		set_msg(err, errsz, "%s: cannot make a condition variable", name);
		goto fail;
	}
	return p;
fail:
	if (mu)
		pthread_mutex_destroy(&p->mu);
	SSL_CTX_free(p->ctx);
	free(p);
	return NULL;
}

void kh_pool_free(struct kh_pool *p)
{
	if (p == NULL)
		return;
	if (kh_pid() != p->pid) {
		kh_pool_abandon(p);
		return;
	}
	for (size_t i = 0; i < p->naddr; i++) {
		struct pool_addr *a = &p->addr[i];
		while (a->all) {
			struct pool_conn *k = a->all;
			unlink_conn(a, k);
			kh_client_free(k->c); /* close_notify */
			free(k);
		}
	}
	creds_free(p->creds);
	SSL_CTX_free(p->ctx);
	pthread_cond_destroy(&p->cv);
	pthread_mutex_destroy(&p->mu);
	kh_wipe(p->last_err, sizeof(p->last_err));
	free(p);
}

void kh_pool_abandon(struct kh_pool *p)
{
	if (p == NULL)
		return;
	/* The lock is not taken: a thread of the parent may have held it at
	 * fork() and does not exist here. Idle connections are freed without
	 * a write; those that were busy in a parent thread are mid-use, so only
	 * their descriptors are closed and their memory is left alone. */
	for (size_t i = 0; i < p->naddr; i++) {
		struct pool_addr *a = &p->addr[i];
		struct pool_conn *k = a->all;
		while (k) {
			struct pool_conn *next = k->next;
			if (k->idle) {
				kh_client_abandon(k->c);
				free(k);
			} else if (k->fd >= 0) {
				close(k->fd);
			}
			k = next;
		}
		a->all = a->idle = NULL;
	}
	creds_free(p->creds);
	SSL_CTX_free(p->ctx);
	kh_wipe(p, sizeof(*p));
	free(p);
}

/* ---- monitoring ---- */

size_t kh_pool_addresses_up(struct kh_pool *p)
{
	struct kh_buf *req = kh_buf_new(64), *resp = kh_buf_new(POOL_LOGIN_RESP_MAX);
	struct kh_frame *f = malloc(sizeof(*f));
	char msg[POOL_MSG];
	size_t up = 0;

	if (req == NULL || resp == NULL || f == NULL || kh_pid() != p->pid ||
	    kh_msg_begin(req, "ECHO") != KH_OK || kh_msg_end(req) != KH_OK)
		goto out;
	for (size_t i = 0; i < p->naddr; i++) {
		struct pool_addr *a = &p->addr[i];
		struct pool_conn *k;
		bool is_new, down;
		int r;

		pthread_mutex_lock(&p->mu);
		down = addr_down(a, now_ms());
		pthread_mutex_unlock(&p->mu);
		if (down)
			continue; /* in back-off: not hammered by every C_GetSlotInfo */
		if ((r = conn_take(p, a, false, false, &k, &is_new, msg, sizeof(msg))) != KH_OK) {
			fail_addr(p, a, msg);
			continue;
		}
		f->cmd[0] = '\0';
		r = kh_client_call(k->c, req, resp, f);
		if (r == KH_OK || !is_transport(r, f)) {
			conn_release(p, k);
			up++;
		} else {
			client_msg(a, k->c, msg, sizeof(msg));
			conn_close(p, k, false);
			fail_addr(p, a, msg);
		}
	}
out:
	kh_buf_free(req);
	kh_buf_free(resp);
	free(f);
	return up;
}

void kh_pool_stats(struct kh_pool *p, struct kh_pool_stats *st)
{
	pthread_mutex_lock(&p->mu);
	*st = p->st;
	st->open = p->nconn;
	pthread_mutex_unlock(&p->mu);
}

bool kh_pool_addr_stats(struct kh_pool *p, size_t i, struct kh_pool_addr_stats *st)
{
	memset(st, 0, sizeof(*st));
	if (i >= p->naddr)
		return false;
	pthread_mutex_lock(&p->mu);
	const struct pool_addr *a = &p->addr[i];
	st->calls = a->calls;
	st->failures = a->failures;
	for (const struct pool_conn *k = a->all; k; k = k->next)
		st->open++;
	st->idle = a->nidle;
	st->in_flight = a->inflight;
	st->down = addr_down(a, now_ms());
	pthread_mutex_unlock(&p->mu);
	return true;
}

void kh_pool_last_error(struct kh_pool *p, char *out, size_t outsz)
{
	pthread_mutex_lock(&p->mu);
	set_msg(out, outsz, "%s", p->last_err);
	pthread_mutex_unlock(&p->mu);
}

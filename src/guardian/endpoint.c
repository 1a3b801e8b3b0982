/*
 * A group's Excrypt endpoint: applications connect to it exactly as to an
 * HSM. One thread per client connection reads a frame, routes it, and
 * writes the answer (so pipelined requests are answered in order).
 *
 * Each client has, lazily, one connection per member it uses, logged in
 * as the client: a LOGN is checked on one member, then its credentials are
 * replayed on every other member connection when it opens. They sit on the
 * secure heap while the client is connected and are wiped at LOGO or
 * disconnect. Single-part requests go to the serving device with the
 * fewest requests in flight (all clients counted); a transport failure
 * sends the same request to the next serving device, then to any device
 * caught up, so a client sees no error while one device is up.
 * Key-changing requests run on the Primary and are replicated (repl.c).
 */
#include "guardian/core_int.h"
#include "common/kh_buf.h"
#include "common/kh_client.h"
#include "common/kh_frame.h"
#include "common/kh_log.h"
#include "common/kh_mem.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#define CRED_MAX 4
#define HANDSHAKE_TIMEOUT_MS 10000
#define READ_CHUNK 16384
/* Latency: while a group has no other request in flight, the thread that
 * carries one polls for the member's answer (up to MEMBER_SPIN_US) and for
 * its client's next request (up to CLIENT_SPIN_US) instead of sleeping at
 * once: on a virtual machine a sleeping thread takes 50-100 us to wake,
 * which doubled the cost of the extra hop. Under load (other requests in
 * flight) nothing spins: the CPU is the HSMs'. */
#define MEMBER_SPIN_US 2000
#define CLIENT_SPIN_US 200

struct kg_endpoint {
	struct kg_core *c;
	struct kg_group *g;
	int lfd;
	int stop_pipe[2];
	pthread_t accept_thread;
	pthread_mutex_t mu;
	pthread_cond_t idle;
	unsigned nclients;
	struct client *clients; /* list, for shutdown at stop */
	SSL_CTX *ctx;           /* NULL: Clear */
	enum kg_member_conn conn;
};

struct cred {
	char user[KH_GSTORE_NAME_MAX + 1];
	char *pw_hex; /* secure heap */
	size_t pw_len;
};

struct mconn {
	struct kg_dev *dev;
	struct kh_client *kc;
	size_t ncred; /* credentials replayed on it */
};

struct client {
	struct kg_endpoint *ep;
	struct client *next;
	int fd;
	SSL *ssl;
	struct mconn m[KG_DEVICES_MAX];
	struct cred cred[CRED_MAX];
	size_t ncred;
	char peer[64];
};

/* ---- the client's side ------------------------------------------------- */

static int io_read(struct client *cl, uint8_t *p, size_t n)
{
	if (cl->ssl) {
		int k = SSL_read(cl->ssl, p, (int)n);
		return k > 0 ? k : -1;
	}
	ssize_t k;
	do
		k = recv(cl->fd, p, n, 0);
	while (k < 0 && errno == EINTR);
	return k > 0 ? (int)k : -1;
}

static int io_write(struct client *cl, const uint8_t *p, size_t n)
{
	while (n > 0) {
		if (cl->ssl) {
			size_t w = 0;
			if (SSL_write_ex(cl->ssl, p, n, &w) != 1)
				return -1;
			p += w;
			n -= w;
		} else {
			ssize_t k = send(cl->fd, p, n, MSG_NOSIGNAL);
			if (k < 0 && errno == EINTR)
				continue;
			if (k <= 0)
				return -1;
			p += k;
			n -= (size_t)k;
		}
	}
	return 0;
}

/* Poll (without sleeping) up to us for the client's next bytes. */
static void spin_readable(struct client *cl, unsigned us)
{
	if (!(cl->ssl && SSL_has_pending(cl->ssl)))
		(void)kh_fd_spin(cl->fd, us);
}

static bool logged_in(const struct client *cl)
{
	return cl->ncred > 0;
}

/* Read one whole frame into in (its bytes at the front). 1: a frame of
 * *len bytes, 0: the client closed, <0: a kh_err (too large, malformed). */
static int read_frame(struct client *cl, struct kh_buf *in, size_t *len)
{
	for (;;) {
		size_t max = logged_in(cl) ? KH_FRAME_MAX : KH_FRAME_MAX_PRELOGIN;
		if (kh_buf_len(in) > 0) {
			int r = kh_frame_find(kh_buf_ptr(in), kh_buf_len(in), max, len);
			if (r != 0)
				return r;
		}
		uint8_t *p;
		if (kh_buf_reserve(in, READ_CHUNK, &p) != KH_OK)
			return KH_ERR_TOO_LARGE;
		if (atomic_load(&cl->ep->g->in_flight) == 0)
			spin_readable(cl, CLIENT_SPIN_US);
		int k = io_read(cl, p, READ_CHUNK);
		if (k <= 0) {
			kh_buf_commit(in, 0);
			return 0;
		}
		kh_buf_commit(in, (size_t)k);
	}
}

static int reply_error(struct client *cl, struct kh_buf *out, const char *cmd, int err,
                       const char *detail)
{
	kh_buf_reset(out);
	if (kh_msg_error(out, cmd, err, detail) != KH_OK)
		return -1;
	return io_write(cl, kh_buf_ptr(out), kh_buf_len(out));
}

/* ---- member connections ------------------------------------------------ */

static bool transport_err(int r)
{
	switch (r) {
	case KH_ERR_IO: case KH_ERR_CLOSED: case KH_ERR_TIMEOUT: case KH_ERR_CONNECT:
	case KH_ERR_TLS_HANDSHAKE: case KH_ERR_TLS_CERT_REQUIRED: case KH_ERR_TLS_CERT_UNKNOWN_CA:
	case KH_ERR_TLS_CERT_EXPIRED: case KH_ERR_TLS_CERT_REVOKED: case KH_ERR_PROTOCOL:
	case KH_ERR_TLS:
		return true;
	default:
		return false;
	}
}

static void mconn_close(struct mconn *m)
{
	kh_client_free(m->kc);
	m->kc = NULL;
	m->dev = NULL;
	m->ncred = 0;
}

static int index_of(struct client *cl, struct kg_dev *d)
{
	struct kg_group *g = cl->ep->g;
	for (int j = 0; j < KG_DEVICES_MAX; j++)
		if (g->dev[j] == d)
			return j;
	return -1;
}

static int logn_frame(struct kh_buf *b, const struct cred *cr)
{
	int r;
	if ((r = kh_msg_begin(b, "LOGN")) == KH_OK && (r = kh_msg_put(b, "ID", cr->user)) == KH_OK &&
	    (r = kh_msg_putn(b, "PW", cr->pw_hex, cr->pw_len)) == KH_OK)
		r = kh_msg_end(b);
	return r;
}

/* The client's connection to d (slot j), open and logged in as the client. */
static int mconn_get(struct client *cl, struct kg_dev *d, int j, struct kh_buf *tmp,
                     struct kh_frame *tf, struct mconn **out)
{
	struct kg_core *c = cl->ep->c;
	struct mconn *m = &cl->m[j];
	int r;

	/* an idle connection the member closed meanwhile (a restart) is
	 * replaced before a request goes on it, not after */
	if (m->dev != d || (m->kc && (!kh_client_connected(m->kc) || kh_client_stale(m->kc))))
		mconn_close(m);
	if (m->kc == NULL) {
		struct kh_client_opts o;
		kh_client_opts_init(&o);
		pthread_rwlock_rdlock(&c->mu);
		o.host = d->d.host;
		o.port = d->d.port;
		o.connect_timeout_ms = (int)d->d.ping_timeout_ms;
		pthread_rwlock_unlock(&c->mu);
		o.tls = cl->ep->conn != KG_CONN_CLEAR;
		o.tls_ctx = cl->ep->conn == KG_CONN_ANONYMOUS ? c->anon_ctx : c->cli_ctx;
		o.io_timeout_ms = c->cfg.request_timeout_ms;
		o.probe = false;
		o.port_name = "Excrypt";
		if ((m->kc = kh_client_new(&o)) == NULL)
			return KH_ERR_NOMEM;
		m->dev = d;
		if ((r = kh_client_connect(m->kc)) != KH_OK) {
			mconn_close(m);
			return r;
		}
	}
	while (m->ncred < cl->ncred) {
		kh_buf_reset(tmp);
		if ((r = logn_frame(tmp, &cl->cred[m->ncred])) != KH_OK)
			return r;
		r = kh_client_call(m->kc, tmp, tmp, tf);
		kh_buf_reset(tmp);
		if (r != KH_OK) {
			if (transport_err(r))
				mconn_close(m);
			return r;
		}
		m->ncred++;
	}
	*out = m;
	return KH_OK;
}

static void count(struct kg_dev *d, int r, uint64_t us)
{
	atomic_fetch_add(&d->requests, 1);
	atomic_fetch_add(&d->win_requests, 1);
	atomic_fetch_add(&d->win_lat_sum_us, us);
	unsigned long mx = atomic_load(&d->win_lat_max_us);
	while (us > mx && !atomic_compare_exchange_weak(&d->win_lat_max_us, &mx, us))
		;
	if (transport_err(r)) {
		atomic_fetch_add(&d->errors, 1);
		atomic_fetch_add(&d->win_errors, 1);
		atomic_store(&d->suspect, true);
	}
}

static uint64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

struct sendctx {
	struct client *cl;
	struct kh_buf *tmp;
	struct kh_frame *tf;
	bool login_failed; /* the last send_on failed replaying the client's login */
};

/* One request on d over the client's connection. A login dropped by the
 * member (an HSM restart, a replicated configuration re-created the role)
 * is replayed once. */
static int send_on(void *arg, struct kg_dev *d, const struct kh_buf *req, struct kh_buf *resp,
                   struct kh_frame *f)
{
	struct sendctx *sx = arg;
	struct client *cl = sx->cl;
	struct mconn *m;
	int j, r;

	pthread_rwlock_rdlock(&cl->ep->c->mu);
	j = index_of(cl, d);
	pthread_rwlock_unlock(&cl->ep->c->mu);
	if (j < 0)
		return KH_ERR_CONNECT;
	atomic_fetch_add(&d->in_flight, 1);
	atomic_fetch_add(&cl->ep->g->in_flight, 1);
	uint64_t t0 = now_us();
	sx->login_failed = false;
	for (int attempt = 0;; attempt++) {
		if ((r = mconn_get(cl, d, j, sx->tmp, sx->tf, &m)) != KH_OK) {
			sx->login_failed = !transport_err(r);
			break;
		}
		if ((r = kh_client_send(m->kc, req)) == KH_OK) {
			if (atomic_load(&cl->ep->g->in_flight) <= 1)
				(void)kh_client_spin(m->kc, MEMBER_SPIN_US);
			r = kh_client_recv(m->kc, resp, f);
		}
		if (transport_err(r)) {
			mconn_close(m);
			break;
		}
		if (r == KH_ERR_NOT_LOGGED_IN && cl->ncred > 0 && attempt == 0) {
			m->ncred = 0;
			continue;
		}
		break;
	}
	atomic_fetch_sub(&cl->ep->g->in_flight, 1);
	atomic_fetch_sub(&d->in_flight, 1);
	count(d, r, now_us() - t0);
	return r;
}

/* The serving device with the fewest requests in flight, not in tried;
 * failing that (every serving device tried), any device caught up. */
static struct kg_dev *pick(struct client *cl, uint32_t tried)
{
	struct kg_core *c = cl->ep->c;
	struct kg_group *g = cl->ep->g;
	struct kg_dev *best[KG_DEVICES_MAX], *spare = NULL;
	unsigned best_load = 0, nbest = 0;

	pthread_rwlock_rdlock(&c->mu);
	for (unsigned j = 0; j < KG_DEVICES_MAX; j++) {
		struct kg_dev *d = g->dev[j];
		if (d == NULL || (tried & (1u << j)))
			continue;
		if (kg_dev_serving(g, d)) {
			unsigned load = atomic_load(&d->in_flight);
			if (nbest == 0 || load < best_load) {
				nbest = 0;
				best_load = load;
			}
			if (load == best_load)
				best[nbest++] = d;
		} else if (spare == NULL && d->d.enabled && atomic_load(&d->joined) &&
		           atomic_load(&d->pending) == 0 && d->d.state != KH_GSTATE_DISABLED) {
			spare = d;
		}
	}
	pthread_rwlock_unlock(&c->mu);
	if (nbest == 0)
		return spare;
	/* equals in turn, over all clients: one client alone alternates too */
	return best[atomic_fetch_add(&g->rr, 1) % nbest];
}

static int balanced(struct client *cl, const struct kh_buf *req, struct kh_buf *resp,
                    struct kh_frame *f, struct sendctx *sx, struct kg_dev **used)
{
	uint32_t tried = 0;
	int r = KH_ERR_CONNECT, login_err = KH_OK;
	struct kg_dev *d;
	while ((d = pick(cl, tried)) != NULL) {
		pthread_rwlock_rdlock(&cl->ep->c->mu);
		int j = index_of(cl, d);
		pthread_rwlock_unlock(&cl->ep->c->mu);
		if (j < 0)
			continue;
		tried |= 1u << j;
		kh_buf_reset(resp);
		r = send_on(sx, d, req, resp, f);
		if (sx->login_failed) {
			/* the member refused the client's login (its configuration
			 * lags, or it locked the identity): another may take it */
			login_err = r;
			continue;
		}
		if (!transport_err(r)) {
			if (used)
				*used = d;
			return r;
		}
		log_debug("group %lld: %s on device %lld failed (%s), trying another",
		          (long long)cl->ep->g->g.id, f->cmd, (long long)d->d.id, kh_errname(r));
	}
	if (login_err != KH_OK) {
		kh_buf_reset(resp);
		KH_IGNORE(kh_msg_error(resp, "LOGN", login_err,
		                       "the login could not be replayed on a member"));
		return login_err;
	}
	return r;
}

/* ---- session commands -------------------------------------------------- */

static void creds_wipe(struct client *cl)
{
	for (size_t i = 0; i < cl->ncred; i++) {
		kh_secure_free(cl->cred[i].pw_hex, cl->cred[i].pw_len + 1);
		memset(&cl->cred[i], 0, sizeof(cl->cred[i]));
	}
	cl->ncred = 0;
}

static int cred_set(struct cred *cr, const struct kh_field *id, const struct kh_field *pw)
{
	if (id == NULL || pw == NULL || id->len == 0 || id->len > KH_GSTORE_NAME_MAX)
		return KH_ERR_BAD_FIELD;
	char *p = kh_secure_alloc(pw->len + 1);
	if (p == NULL)
		return KH_ERR_NOMEM;
	memcpy(p, pw->val, pw->len);
	if (cr->pw_hex)
		kh_secure_free(cr->pw_hex, cr->pw_len + 1);
	memcpy(cr->user, id->val, id->len);
	cr->user[id->len] = '\0';
	cr->pw_hex = p;
	cr->pw_len = pw->len;
	return KH_OK;
}

/* After a LOGN answered OK on d: keep the credentials (the new password
 * with NP) and count them as replayed on that connection. */
static void remember_login(struct client *cl, struct kg_dev *d, const struct kh_frame *rf)
{
	const struct kh_field *id = kh_frame_get(rf, "ID");
	const struct kh_field *pw = kh_frame_get(rf, kh_frame_has(rf, "NP") ? "NP" : "PW");
	size_t i;
	for (i = 0; i < cl->ncred; i++)
		if (id && strlen(cl->cred[i].user) == id->len &&
		    memcmp(cl->cred[i].user, id->val, id->len) == 0)
			break;
	if (i == CRED_MAX || cred_set(&cl->cred[i], id, pw) != KH_OK)
		return;
	if (i == cl->ncred)
		cl->ncred++;
	for (int j = 0; j < KG_DEVICES_MAX; j++)
		if (cl->m[j].dev == d && cl->m[j].kc)
			cl->m[j].ncred = cl->ncred;
}

static struct kg_dev *primary_of(struct client *cl)
{
	struct kg_dev *p;
	pthread_rwlock_rdlock(&cl->ep->c->mu);
	p = kg_group_primary(cl->ep->g);
	pthread_rwlock_unlock(&cl->ep->c->mu);
	return p;
}

/* Route one request; resp gets the answer to write back. */
static int route(struct client *cl, const struct kh_buf *req, const struct kh_frame *rf,
                 struct kh_buf *resp, struct kh_buf *tmp)
{
	struct kg_core *c = cl->ep->c;
	struct kh_frame f, tf;
	struct sendctx sx = {.cl = cl, .tmp = tmp, .tf = &tf};
	char why[KG_WHY_MAX] = "";
	struct kg_dev *used = NULL;
	int r;

	if (strcmp(rf->cmd, "KTIM") == 0 || strcmp(rf->cmd, "CFIM") == 0) {
		kh_buf_reset(resp);
		return kh_msg_error(resp, rf->cmd, KH_ERR_COMMAND_NOT_ALLOWED,
		                    "a group's members are changed by its guardian only");
	}
	if (strcmp(rf->cmd, "LOGO") == 0) {
		/* every member connection logs out; the answer is the first's */
		bool answered = false;
		int first = KH_OK;
		for (int j = 0; j < KG_DEVICES_MAX; j++) {
			struct mconn *m = &cl->m[j];
			if (m->kc == NULL)
				continue;
			kh_buf_reset(tmp);
			int k = kh_client_call(m->kc, req, answered ? tmp : resp, answered ? &tf : &f);
			if (transport_err(k)) {
				mconn_close(m);
				continue;
			}
			if (!answered) {
				first = k;
				answered = true;
			}
			m->ncred = 0;
		}
		if (!kh_frame_has(rf, "ID"))
			creds_wipe(cl);
		else
			for (size_t i = 0; i < cl->ncred; i++) {
				const struct kh_field *id = kh_frame_get(rf, "ID");
				if (strlen(cl->cred[i].user) == id->len &&
				    memcmp(cl->cred[i].user, id->val, id->len) == 0) {
					kh_secure_free(cl->cred[i].pw_hex, cl->cred[i].pw_len + 1);
					cl->cred[i] = cl->cred[cl->ncred - 1];
					memset(&cl->cred[cl->ncred - 1], 0, sizeof(cl->cred[0]));
					cl->ncred--;
					break;
				}
			}
		(void)first;
		if (answered)
			return KH_OK; /* the first member's answer, success or error */
		r = balanced(cl, req, resp, &f, &sx, NULL);
		return transport_err(r) ? r : KH_OK;
	}
	if (strcmp(rf->cmd, "LOGN") == 0 || strcmp(rf->cmd, "CHPW") == 0) {
		bool change = strcmp(rf->cmd, "CHPW") == 0 || kh_frame_has(rf, "NP");
		if (change) {
			/* a password change is configuration: on the Primary, then
			 * replicated before the answer */
			struct kg_dev *p = primary_of(cl);
			r = p ? send_on(&sx, p, req, resp, &f) : KH_ERR_STATE;
			used = p;
		} else {
			r = balanced(cl, req, resp, &f, &sx, &used);
		}
		if (r == KH_OK && used)
			remember_login(cl, used, rf);
		if (r == KH_OK && change)
			(void)kg_repl_config(c, cl->ep->g, true);
		if (transport_err(r) || r == KH_ERR_STATE) {
			kh_buf_reset(resp);
			return kh_msg_error(resp, rf->cmd, r, "no device of the group answered");
		}
		return KH_OK;
	}
	if (kg_key_changing(rf)) {
		r = kg_repl_key_change(c, cl->ep->g, req, rf, send_on, &sx, resp, &f, why, sizeof(why));
		if (r != KH_OK && (*why || transport_err(r))) {
			kh_buf_reset(resp);
			return kh_msg_error(resp, rf->cmd, r, *why ? why : NULL);
		}
		return KH_OK;
	}
	r = balanced(cl, req, resp, &f, &sx, NULL);
	if (transport_err(r)) {
		kh_buf_reset(resp);
		return kh_msg_error(resp, rf->cmd, r, "no device of the group answered");
	}
	return KH_OK;
}

static void client_free(struct client *cl)
{
	for (int j = 0; j < KG_DEVICES_MAX; j++)
		mconn_close(&cl->m[j]);
	creds_wipe(cl);
	if (cl->ssl) {
		SSL_shutdown(cl->ssl);
		SSL_free(cl->ssl);
	}
	if (cl->fd >= 0)
		close(cl->fd);
	free(cl);
}

static void set_timeout(int fd, int ms)
{
	struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
	(void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

static void *client_main(void *arg)
{
	struct client *cl = arg;
	struct kg_endpoint *ep = cl->ep;
	struct kh_buf *in = kh_buf_new(KH_FRAME_MAX + READ_CHUNK);
	struct kh_buf *req = kh_buf_new(KH_FRAME_MAX);
	struct kh_buf *resp = kh_buf_new(KH_FRAME_MAX);
	struct kh_buf *tmp = kh_buf_new(KH_FRAME_MAX);
	struct kh_frame *rf = malloc(sizeof(*rf));

	if (in == NULL || req == NULL || resp == NULL || tmp == NULL || rf == NULL)
		goto out;
	if (ep->ctx) {
		set_timeout(cl->fd, HANDSHAKE_TIMEOUT_MS);
		if ((cl->ssl = SSL_new(ep->ctx)) == NULL || SSL_set_fd(cl->ssl, cl->fd) != 1 ||
		    SSL_accept(cl->ssl) != 1) {
			unsigned long e = ERR_get_error();
			char es[160] = "";
			if (e)
				ERR_error_string_n(e, es, sizeof(es));
			ERR_clear_error();
			log_info("group %lld: client %s: TLS handshake failed%s%s", (long long)ep->g->g.id,
			         cl->peer, *es ? ": " : "", es);
			if (cl->ssl) {
				SSL_free(cl->ssl);
				cl->ssl = NULL;
			}
			goto out;
		}
		set_timeout(cl->fd, 0);
	}
	for (;;) {
		size_t len = 0;
		int r = read_frame(cl, in, &len);
		if (r == 0)
			break;
		if (r < 0) {
			(void)reply_error(cl, resp, "", r, r == KH_ERR_TOO_LARGE ? "frame too large" : NULL);
			break;
		}
		kh_buf_reset(req);
		if (kh_buf_put(req, kh_buf_ptr(in), len) != KH_OK)
			break;
		kh_buf_consume(in, len);
		if ((r = kh_frame_parse(kh_buf_ptr(req), kh_buf_len(req),
		                        logged_in(cl) ? KH_FIELDS_MAX : KH_FIELDS_MAX_PRELOGIN, rf)) !=
		    KH_OK) {
			if (reply_error(cl, resp, rf->cmd, r, NULL) != 0)
				break;
			continue;
		}
		kh_buf_reset(resp);
		r = route(cl, req, rf, resp, tmp);
		if (r != KH_OK && kh_buf_len(resp) == 0) {
			if (reply_error(cl, resp, rf->cmd, r, NULL) != 0)
				break;
			continue;
		}
		if (io_write(cl, kh_buf_ptr(resp), kh_buf_len(resp)) != 0)
			break;
	}
out:
	kh_buf_free(in);
	kh_buf_free(req);
	kh_buf_free(resp);
	kh_buf_free(tmp);
	free(rf);
	pthread_mutex_lock(&ep->mu);
	for (struct client **pp = &ep->clients; *pp; pp = &(*pp)->next)
		if (*pp == cl) {
			*pp = cl->next;
			break;
		}
	ep->nclients--;
	pthread_cond_broadcast(&ep->idle);
	pthread_mutex_unlock(&ep->mu);
	client_free(cl);
	return NULL;
}

/* ---- the listener ------------------------------------------------------ */

static void *accept_main(void *arg)
{
	struct kg_endpoint *ep = arg;
	for (;;) {
		struct pollfd p[2] = {{.fd = ep->lfd, .events = POLLIN},
		                      {.fd = ep->stop_pipe[0], .events = POLLIN}};
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (p[1].revents)
			break;
		struct sockaddr_storage sa;
		socklen_t sl = sizeof(sa);
		int fd = accept(ep->lfd, (struct sockaddr *)&sa, &sl);
		if (fd < 0)
			continue;
		int one = 1;
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		struct client *cl = calloc(1, sizeof(*cl));
		pthread_mutex_lock(&ep->mu);
		bool full = ep->nclients >= ep->c->cfg.max_clients;
		pthread_mutex_unlock(&ep->mu);
		if (cl == NULL || full) {
			log_warnx("group %lld: connection refused: %s", (long long)ep->g->g.id,
			          cl ? "too many clients" : "out of memory");
			free(cl);
			close(fd);
			continue;
		}
		cl->ep = ep;
		cl->fd = fd;
		char host[48] = "?", port[8] = "?";
		(void)getnameinfo((struct sockaddr *)&sa, sl, host, sizeof(host), port, sizeof(port),
		                  NI_NUMERICHOST | NI_NUMERICSERV);
		snprintf(cl->peer, sizeof(cl->peer), "%s:%s", host, port);
		pthread_attr_t at;
		pthread_t t;
		pthread_attr_init(&at);
		pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
		pthread_mutex_lock(&ep->mu);
		cl->next = ep->clients;
		ep->clients = cl;
		ep->nclients++;
		pthread_mutex_unlock(&ep->mu);
		if (pthread_create(&t, &at, client_main, cl) != 0) {
			pthread_mutex_lock(&ep->mu);
			ep->clients = cl->next;
			ep->nclients--;
			pthread_mutex_unlock(&ep->mu);
			client_free(cl);
		}
		pthread_attr_destroy(&at);
	}
	return NULL;
}

static int listen_on(const char *host, unsigned port, int *out, char *why, size_t whysz)
{
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
	                         .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
	struct addrinfo *ai = NULL;
	char ps[8];
	int fd = -1, e;

	snprintf(ps, sizeof(ps), "%u", port);
	if ((e = getaddrinfo(host, ps, &hints, &ai)) != 0) {
		snprintf(why, whysz, "listen address %s: %s", host, gai_strerror(e));
		return KH_ERR_CONNECT;
	}
	for (struct addrinfo *a = ai; a; a = a->ai_next) {
		int one = 1;
		if ((fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, 0)) < 0)
			continue;
		(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 128) == 0)
			break;
		e = errno;
		close(fd);
		fd = -1;
		errno = e;
	}
	freeaddrinfo(ai);
	if (fd < 0) {
		snprintf(why, whysz, "cannot listen on %s port %u: %s", host, port, strerror(errno));
		return KH_ERR_CONNECT;
	}
	*out = fd;
	return KH_OK;
}

int kg_endpoint_start(struct kg_core *c, struct kg_group *g, char *why, size_t whysz)
{
	struct kg_endpoint *ep = calloc(1, sizeof(*ep));
	int r;

	if (ep == NULL)
		return KH_ERR_NOMEM;
	ep->c = c;
	ep->g = g;
	ep->lfd = -1;
	ep->stop_pipe[0] = ep->stop_pipe[1] = -1;
	pthread_mutex_init(&ep->mu, NULL);
	pthread_cond_init(&ep->idle, NULL);
	pthread_rwlock_rdlock(&c->mu);
	ep->conn = kg_group_conn(g);
	unsigned port = g->g.port;
	bool allow = g->g.pairs[KH_GPAIR_EXCRYPT].allow;
	pthread_rwlock_unlock(&c->mu);
	if (!allow) {
		/* the pair is not allowed: no endpoint, nothing to serve */
		pthread_mutex_destroy(&ep->mu);
		pthread_cond_destroy(&ep->idle);
		free(ep);
		return KH_OK;
	}
	ep->ctx = ep->conn == KG_CONN_CLEAR ? NULL
	          : ep->conn == KG_CONN_ANONYMOUS ? c->srv_anon : c->srv_mutual;
	if ((r = listen_on(c->listen, port, &ep->lfd, why, whysz)) != KH_OK)
		goto fail;
	if (pipe2(ep->stop_pipe, O_CLOEXEC) != 0) {
		r = KH_ERR_INTERNAL;
		goto fail;
	}
	if (pthread_create(&ep->accept_thread, NULL, accept_main, ep) != 0) {
		r = KH_ERR_INTERNAL;
		goto fail;
	}
	pthread_rwlock_wrlock(&c->mu);
	g->ep = ep;
	pthread_rwlock_unlock(&c->mu);
	log_info("group %lld (%s): Excrypt endpoint on %s port %u (%s)", (long long)g->g.id, g->g.name,
	         c->listen, port, kh_gstore_conn_name(g->g.pairs[KH_GPAIR_EXCRYPT].conn));
	return KH_OK;
fail:
	if (ep->lfd >= 0)
		close(ep->lfd);
	if (ep->stop_pipe[0] >= 0) {
		close(ep->stop_pipe[0]);
		close(ep->stop_pipe[1]);
	}
	pthread_mutex_destroy(&ep->mu);
	pthread_cond_destroy(&ep->idle);
	free(ep);
	return r;
}

void kg_endpoint_stop(struct kg_endpoint *ep)
{
	if (ep == NULL)
		return;
	if (write(ep->stop_pipe[1], "x", 1) < 0)
		log_warn("endpoint stop");
	pthread_join(ep->accept_thread, NULL);
	close(ep->lfd);
	pthread_mutex_lock(&ep->mu);
	for (struct client *cl = ep->clients; cl; cl = cl->next)
		(void)shutdown(cl->fd, SHUT_RDWR);
	while (ep->nclients > 0)
		pthread_cond_wait(&ep->idle, &ep->mu);
	pthread_mutex_unlock(&ep->mu);
	close(ep->stop_pipe[0]);
	close(ep->stop_pipe[1]);
	pthread_mutex_destroy(&ep->mu);
	pthread_cond_destroy(&ep->idle);
	free(ep);
}

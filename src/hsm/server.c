/*
 * Connections: accept on the main thread, hand each socket to a worker
 * round-robin; a worker owns its connections for their whole life. Requests
 * on a connection are processed strictly in order, so pipelined requests are
 * answered in order. Every byte buffer holding request or response data is a
 * kh_buf (wiped on release) and TLS runs with SSL_OP_CLEANSE_PLAINTEXT.
 */
#include "hsm/server.h"
#include "hsm/backup.h"
#include "hsm/dispatch.h"
#include "hsm/majorkey.h"
#include "hsm/remote.h"
#include "hsm/tls.h"
#include "common/kh_buf.h"
#include "common/kh_log.h"
#include "common/kh_mem.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#define READ_CHUNK 16384
#define OUT_HIGH_WATER (4u * 1024 * 1024) /* stop reading requests while this much is unsent */
#define IN_CEILING (KH_FRAME_MAX + READ_CHUNK)
/* Before any login a connection may buffer only a few small frames either
 * way: an unauthenticated peer that pipelines requests and never reads the
 * answers must not make the daemon hold megabytes for it. */
#define IN_CEILING_PRELOGIN (4 * KH_FRAME_MAX_PRELOGIN)
#define OUT_HIGH_WATER_PRELOGIN (64u * 1024)
#define HANDSHAKE_SECONDS 10 /* a TLS handshake not finished by then is dropped */
#define PRELOGIN_IDLE_SECONDS 120 /* a connection with no login and no request for this long is closed */

struct worker;

struct conn {
	struct worker *w;
	struct conn *prev, *next;
	int fd;
	SSL *ssl;
	bool handshake_done;
	bool eof;
	bool closing;          /* close once the output is flushed */
	bool want_write;       /* the write event is armed */
	bool reading;          /* the read event is armed */
	bool draining;         /* refused: alert sent, discarding input until EOF */
	struct event *ev_read, *ev_write, *ev_timer;
	struct event *ev_idle; /* armed while nobody is logged in */
	struct kh_buf *in, *out;
	struct kh_session s;
};

struct pending {
	int fd;
	enum kh_port port;
	enum kh_source source;
	char peer[96];
	struct pending *next;
};

struct worker {
	struct kh_hsm *hsm;
	pthread_t thread;
	struct event_base *base;
	struct event *notify;
	pthread_mutex_t mu;
	struct pending *queue;
	struct conn *conns;
	uint64_t poll_ns; /* --poll-us; 0: sleep as soon as nothing is ready */
	uint64_t served;  /* connection events handled (this thread only) */
	atomic_bool stop; /* set before event_base_loopbreak at shutdown */
};

struct listener {
	struct evconnlistener *l;
	enum kh_port port;
	enum kh_source source;
	uint16_t portnum;
};

struct server {
	struct kh_hsm *hsm;
	int max_connections;
	const struct kh_server_opts *o;
	struct event_base *base;
	struct worker *workers;
	int nworkers;
	unsigned next_worker;
	struct listener lst[3];
	int nlst;
};

static size_t out_high_water(const struct conn *c)
{
	return c->s.nident ? OUT_HIGH_WATER : OUT_HIGH_WATER_PRELOGIN;
}

static const char *port_label(const struct kh_session *s)
{
	if (s->source == KH_SRC_USB)
		return "console";
	return s->port == KH_PORT_PROD ? "Excrypt port" : "Admin port";
}

static void conn_free(struct conn *c)
{
	struct worker *w = c->w;
	if (c->prev)
		c->prev->next = c->next;
	else
		w->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	if (c->ev_read)
		event_free(c->ev_read);
	if (c->ev_write)
		event_free(c->ev_write);
	if (c->ev_timer)
		event_free(c->ev_timer);
	if (c->ev_idle)
		event_free(c->ev_idle);
	if (c->ssl) {
		if (c->handshake_done && !SSL_in_init(c->ssl))
			(void)SSL_shutdown(c->ssl);
		SSL_free(c->ssl);
		ERR_clear_error(); /* leave nothing for the next connection on this thread */
	}
	if (c->fd >= 0)
		close(c->fd);
	kh_buf_free(c->in);
	kh_buf_free(c->out);
	kh_mk_ceremony_free(c->s.ceremony);
	kh_backup_session_end(w->hsm, &c->s); /* a dropped transfer leaves nothing behind */
	kh_remote_end(&c->s);                 /* the sealed channel's keys */
	kh_wipe(&c->s, sizeof(c->s));
	atomic_fetch_sub(&w->hsm->n_conn_open, 1);
	free(c);
}

static void log_ssl_failure(struct conn *c, const char *step)
{
	char err[256] = "connection closed";
	unsigned long e = ERR_get_error();
	if (e)
		ERR_error_string_n(e, err, sizeof(err));
	long vr = SSL_get_verify_result(c->ssl);
	if (vr != X509_V_OK)
		log_warnx("%s: %s with %s failed: client certificate refused: %s", port_label(&c->s),
			  step, c->s.peer, X509_verify_cert_error_string(vr));
	else
		log_warnx("%s: %s with %s failed: %s", port_label(&c->s), step, c->s.peer, err);
	ERR_clear_error();
}

/* Write as much pending output as the socket takes. Returns -1 on a fatal error. */
static int flush_out(struct conn *c)
{
	while (kh_buf_len(c->out) > 0) {
		size_t n = kh_buf_len(c->out);
		if (n > 1u << 20)
			n = 1u << 20;
		ssize_t w;
		if (c->ssl) {
			size_t written = 0;
			ERR_clear_error(); /* SSL_get_error reads the thread's queue */
			int r = SSL_write_ex(c->ssl, kh_buf_ptr(c->out), n, &written);
			if (r <= 0) {
				int e = SSL_get_error(c->ssl, r);
				if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ)
					return 0;
				log_ssl_failure(c, "write");
				return -1;
			}
			w = (ssize_t)written;
		} else {
			w = send(c->fd, kh_buf_ptr(c->out), n, MSG_NOSIGNAL);
			if (w < 0) {
				if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
					return 0;
				return -1;
			}
		}
		kh_buf_consume(c->out, (size_t)w);
	}
	return 0;
}

/* Read what is available. Returns -1 on a fatal error. */
static int fill_in(struct conn *c)
{
	kh_buf_set_max(c->in, c->s.nident ? IN_CEILING : IN_CEILING_PRELOGIN);
	for (;;) {
		size_t room = kh_buf_max(c->in) - kh_buf_len(c->in);
		if (room == 0)
			return 0;
		size_t want = room < READ_CHUNK ? room : READ_CHUNK;
		uint8_t *p;
		if (kh_buf_reserve(c->in, want, &p) != KH_OK)
			return -1;
		if (c->ssl) {
			size_t got = 0;
			ERR_clear_error();
			int r = SSL_read_ex(c->ssl, p, want, &got);
			if (r <= 0) {
				int e = SSL_get_error(c->ssl, r);
				if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
					return 0;
				if (e == SSL_ERROR_ZERO_RETURN) {
					c->eof = true;
					return 0;
				}
				/* a peer that closes without close_notify is an ordinary
				 * hang-up here: only complete frames are ever acted on */
				if ((e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) ||
				    (e == SSL_ERROR_SSL && ERR_GET_REASON(ERR_peek_error()) ==
								   SSL_R_UNEXPECTED_EOF_WHILE_READING)) {
					ERR_clear_error();
					c->eof = true;
					return 0;
				}
				log_ssl_failure(c, "read");
				return -1;
			}
			kh_buf_commit(c->in, got);
			/* the read event is level-triggered: stop once the TLS layer
			 * holds nothing more, instead of paying for a read() that
			 * can only fail with EAGAIN */
			if (!SSL_has_pending(c->ssl))
				return 0;
		} else {
			ssize_t r = recv(c->fd, p, want, 0);
			if (r < 0) {
				if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
					return 0;
				return -1;
			}
			if (r == 0) {
				c->eof = true;
				return 0;
			}
			kh_buf_commit(c->in, (size_t)r);
			if ((size_t)r < want)
				return 0; /* drained; the level-triggered event says when more comes */
		}
	}
}

/* Answer every complete request in the input, in order. */
static void process(struct conn *c)
{
	struct kh_hsm *hsm = c->w->hsm;
	struct kh_frame f;

	while (!c->closing && kh_buf_len(c->out) < out_high_water(c)) {
		size_t max = c->s.nident ? KH_FRAME_MAX : KH_FRAME_MAX_PRELOGIN;
		size_t fmax = c->s.nident ? KH_FIELDS_MAX : KH_FIELDS_MAX_PRELOGIN;
		size_t flen = 0;
		int r = kh_frame_find(kh_buf_ptr(c->in), kh_buf_len(c->in), max, &flen);
		if (r == 0)
			break;
		if (r < 0) {
			/* cannot delimit the next frame: answer once and hang up */
			KH_IGNORE(kh_msg_error(c->out, "", r, r == KH_ERR_TOO_LARGE ? "frame size" : "frame must start with ["));
			atomic_fetch_add(&hsm->n_errors, 1);
			kh_buf_reset(c->in);
			c->closing = true;
			log_info("%s: closing %s: %s", port_label(&c->s), c->s.peer, kh_strerror(r));
			break;
		}
		r = kh_frame_parse(kh_buf_ptr(c->in), flen, fmax, &f);
		if (r != KH_OK) {
			atomic_fetch_add(&hsm->n_requests, 1);
			atomic_fetch_add(&hsm->n_errors, 1);
			KH_IGNORE(kh_msg_error(c->out, f.cmd, r, r == KH_ERR_TOO_LARGE ? "field count" : NULL));
		} else {
			(void)kh_dispatch(hsm, &c->s, &f, c->out);
		}
		if (c->s.hangup) {
			/* the handler asked to close once this answer is out */
			kh_buf_consume(c->in, flen);
			kh_buf_reset(c->in);
			c->closing = true;
			log_info("%s: closing %s: %s", port_label(&c->s), c->s.peer, c->s.detail);
			break;
		}
		kh_buf_consume(c->in, flen); /* wipes the request bytes */
	}
}

/* Whether the connection should be told about readable data: not while
 * it is closing, at EOF, or waiting for its output to drain (the read
 * event is level-triggered: left armed, it would fire in a loop). */
static bool want_read(const struct conn *c)
{
	return !c->closing && !c->eof && kh_buf_len(c->out) < out_high_water(c);
}

/* Before any login a connection lives only while it is used: it holds a
 * slot under --max-connections, so an idle unauthenticated peer may not
 * keep it forever. Logged-in connections have no such limit. */
static void conn_touch_idle(struct conn *c)
{
	if (c->ev_idle == NULL)
		return;
	if (c->s.nident) {
		event_del(c->ev_idle);
		return;
	}
	struct timeval tv = {PRELOGIN_IDLE_SECONDS, 0};
	evtimer_add(c->ev_idle, &tv);
}

static void conn_update_events(struct conn *c)
{
	bool need_read = want_read(c);
	if (need_read && !c->reading) {
		event_add(c->ev_read, NULL);
		c->reading = true;
	} else if (!need_read && c->reading) {
		event_del(c->ev_read);
		c->reading = false;
	}
	bool need_write = kh_buf_len(c->out) > 0 || (c->ssl && SSL_want_write(c->ssl));
	if (need_write && !c->want_write) {
		event_add(c->ev_write, NULL);
		c->want_write = true;
	} else if (!need_write && c->want_write) {
		event_del(c->ev_write);
		c->want_write = false;
	}
}

static void on_drain_timeout(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	conn_free(arg);
}

/* After a refused handshake the TLS alert is already on its way. Closing
 * now, with the client's first request unread, would make the kernel send
 * a reset that can overtake the alert, and the client would see "connection
 * reset" instead of the reason. So: half-close, discard input until the
 * client closes or a short timeout, then free. */
static void conn_drain(struct conn *c)
{
	uint8_t scratch[4096];
	if (!c->draining) {
		c->draining = true;
		(void)shutdown(c->fd, SHUT_WR);
		event_del(c->ev_write);
		c->want_write = false;
		if (!c->reading) {
			event_add(c->ev_read, NULL);
			c->reading = true;
		}
		struct timeval tv = {2, 0};
		if (c->ev_timer)
			event_free(c->ev_timer);
		c->ev_timer = evtimer_new(c->w->base, on_drain_timeout, c);
		if (c->ev_timer == NULL || evtimer_add(c->ev_timer, &tv) != 0) {
			conn_free(c);
			return;
		}
	}
	for (;;) {
		ssize_t n = recv(c->fd, scratch, sizeof(scratch), 0);
		if (n > 0)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
			return;
		conn_free(c); /* EOF or error */
		return;
	}
}

/* Rounds of read-process-write one readiness event may run. A client that
 * sends its next request as soon as it has an answer would otherwise be
 * served again and again while other connections wait (bench/ saw one
 * socket served ~590 times in a row). */
#define ROUNDS_PER_EVENT 4

static void conn_io(struct conn *c)
{
	bool more = false;

	c->w->served++;
	if (c->draining) {
		conn_drain(c);
		return;
	}
	if (c->ssl && !c->handshake_done) {
		ERR_clear_error();
		int r = SSL_accept(c->ssl);
		if (r <= 0) {
			int e = SSL_get_error(c->ssl, r);
			if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
				conn_update_events(c);
				return;
			}
			log_ssl_failure(c, "TLS handshake");
			conn_drain(c);
			return;
		}
		c->handshake_done = true;
		if (c->ev_timer) {
			event_free(c->ev_timer);
			c->ev_timer = NULL;
		}
		log_debug("%s: %s connected (%s)", port_label(&c->s), c->s.peer, SSL_get_version(c->ssl));
	}
	if (flush_out(c) < 0) {
		conn_free(c);
		return;
	}
	for (int round = 1;; round++) {
		size_t before = kh_buf_len(c->in);
		if (want_read(c) && fill_in(c) < 0) {
			conn_free(c);
			return;
		}
		bool got = kh_buf_len(c->in) != before;
		size_t unprocessed = kh_buf_len(c->in);
		process(c);
		bool consumed = kh_buf_len(c->in) != unprocessed;
		if (consumed)
			conn_touch_idle(c);
		if (flush_out(c) < 0) {
			conn_free(c);
			return;
		}
		/* Go round again while the output is below its mark and there may
		 * be more to do: bytes just read, frames just answered (more may
		 * wait in the input: process() stops at the mark), or bytes OpenSSL
		 * already decrypted. No socket event announces any of those. */
		if (c->closing || c->eof || kh_buf_len(c->out) >= out_high_water(c))
			break;
		if (!got && !consumed && !(c->ssl && SSL_has_pending(c->ssl)))
			break;
		if (round == ROUNDS_PER_EVENT) {
			/* bytes already read (ours or OpenSSL's) raise no socket
			 * event: come back after the other ready connections */
			more = kh_buf_len(c->in) > 0 || (c->ssl && SSL_has_pending(c->ssl));
			break;
		}
	}
	if ((c->closing || c->eof) && kh_buf_len(c->out) == 0) {
		conn_free(c);
		return;
	}
	/* an unfinished frame larger than the input ceiling cannot happen:
	 * kh_frame_find reports TOO_LARGE first */
	conn_update_events(c);
	if (more)
		event_active(c->ev_read, EV_READ, 0);
}

static void on_conn_event(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	conn_io(arg);
}

static void on_handshake_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;
	(void)fd;
	(void)what;
	log_warnx("%s: TLS handshake with %s not finished within %d s: dropped", port_label(&c->s),
		  c->s.peer, HANDSHAKE_SECONDS);
	conn_free(c);
}

static void on_idle_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;
	(void)fd;
	(void)what;
	log_info("%s: closing %s: no login and no request for %d s", port_label(&c->s), c->s.peer,
		 PRELOGIN_IDLE_SECONDS);
	conn_free(c);
}

static void worker_adopt(struct worker *w, struct pending *p)
{
	struct kh_hsm *hsm = w->hsm;
	struct conn *c = calloc(1, sizeof(*c));
	enum kh_tls_mode mode = KH_TLS_CLEAR;
	SSL_CTX *ctx = NULL;

	if (c == NULL) {
		close(p->fd);
		return;
	}
	c->w = w;
	c->fd = p->fd;
	c->s.port = p->port;
	c->s.source = p->source;
	memcpy(c->s.peer, p->peer, sizeof(c->s.peer));
	c->in = kh_buf_new(IN_CEILING);
	c->out = kh_buf_new(KH_FRAME_MAX + OUT_HIGH_WATER);
	c->next = w->conns;
	if (w->conns)
		w->conns->prev = c;
	w->conns = c;
	atomic_fetch_add(&hsm->n_conn_open, 1);
	atomic_fetch_add(&hsm->n_conn_total, 1);
	if (c->in == NULL || c->out == NULL)
		goto drop;

	if (p->source == KH_SRC_ETHERNET) {
		ctx = kh_tls_server_ctx(hsm, p->port, &mode);
		if (ctx == NULL && mode != KH_TLS_CLEAR) {
			log_warnx("%s: refusing %s: no server certificate installed "
				  "(issue one with `keyhold tls server issue` on the console)",
				  port_label(&c->s), c->s.peer);
			goto drop;
		}
		if (ctx) {
			c->ssl = SSL_new(ctx);
			SSL_CTX_free(ctx);
			if (c->ssl == NULL || SSL_set_fd(c->ssl, c->fd) != 1)
				goto drop;
			/* record header and body in one read() */
			SSL_set_read_ahead(c->ssl, 1);
			SSL_set_accept_state(c->ssl);
		}
	}
	if (c->ssl) {
		/* a peer that connects and never finishes the handshake is dropped */
		struct timeval tv = {HANDSHAKE_SECONDS, 0};
		c->ev_timer = evtimer_new(w->base, on_handshake_timeout, c);
		if (c->ev_timer == NULL || evtimer_add(c->ev_timer, &tv) != 0)
			goto drop;
	}
	c->ev_read = event_new(w->base, c->fd, EV_READ | EV_PERSIST, on_conn_event, c);
	c->ev_write = event_new(w->base, c->fd, EV_WRITE | EV_PERSIST, on_conn_event, c);
	if (c->ev_read == NULL || c->ev_write == NULL || event_add(c->ev_read, NULL) != 0)
		goto drop;
	c->reading = true;
	if (p->source == KH_SRC_ETHERNET) {
		c->ev_idle = evtimer_new(w->base, on_idle_timeout, c);
		if (c->ev_idle == NULL)
			goto drop;
		conn_touch_idle(c);
	}
	conn_io(c); /* start the handshake at once */
	return;
drop:
	conn_free(c);
}

static void on_notify(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;
	struct pending *q;
	(void)fd;
	(void)what;
	pthread_mutex_lock(&w->mu);
	q = w->queue;
	w->queue = NULL;
	pthread_mutex_unlock(&w->mu);
	/* the queue is LIFO; adopt in arrival order */
	struct pending *rev = NULL;
	while (q) {
		struct pending *n = q->next;
		q->next = rev;
		rev = q;
		q = n;
	}
	while (rev) {
		struct pending *n = rev->next;
		worker_adopt(w, rev);
		free(rev);
		rev = n;
	}
}

static uint64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* --poll-us: after handling a connection event, look for the next one
 * without sleeping for up to poll_ns, then sleep in epoll_wait as usual.
 * A client that sends its next request soon after its answer then finds
 * the worker awake: on virtual CPUs a sleeping thread's wake-up costs tens
 * of microseconds, more than a small request itself. An idle server
 * sleeps; a busy one spends at most poll_ns per gap in polling. */
static void worker_poll(struct worker *w)
{
	uint64_t last = mono_ns();

	while (!atomic_load_explicit(&w->stop, memory_order_relaxed)) {
		uint64_t before = w->served, now;
		if (event_base_loop(w->base, EVLOOP_NONBLOCK | EVLOOP_NO_EXIT_ON_EMPTY) < 0)
			break;
		now = mono_ns();
		if (w->served != before) {
			last = now;
		} else if (now - last < w->poll_ns) {
			/* let a thread that shares this CPU (a client on the
			 * same host, another worker) run in between */
			sched_yield();
		} else {
			if (event_base_loop(w->base, EVLOOP_ONCE | EVLOOP_NO_EXIT_ON_EMPTY) < 0)
				break;
			last = mono_ns();
		}
	}
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	sigset_t all;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	if (w->poll_ns)
		worker_poll(w);
	else
		event_base_loop(w->base, EVLOOP_NO_EXIT_ON_EMPTY);
	while (w->conns)
		conn_free(w->conns);
	return NULL;
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
		      void *arg)
{
	struct server *sv = arg;
	struct listener *li = NULL;
	for (int i = 0; i < sv->nlst; i++)
		if (sv->lst[i].l == l)
			li = &sv->lst[i];
	/* the console (local, 0600) is exempt: it is the way back in when the
	 * network ports are flooded */
	if (li != NULL && li->source != KH_SRC_USB &&
	    atomic_load(&sv->hsm->n_conn_open) >= (uint64_t)sv->max_connections) {
		static _Atomic time_t last_warned;
		time_t now = time(NULL);
		if (atomic_exchange(&last_warned, now) != now)
			log_warnx("connection limit (%d) reached: refusing new connections",
				  sv->max_connections);
		close(fd);
		return;
	}
	struct pending *p = calloc(1, sizeof(*p));
	if (li == NULL || p == NULL) {
		free(p);
		close(fd);
		return;
	}
	(void)salen;
	p->fd = fd;
	p->port = li->port;
	p->source = li->source;
	if (sa->sa_family == AF_INET) {
		struct sockaddr_in *in = (struct sockaddr_in *)sa;
		char a[INET_ADDRSTRLEN];
		inet_ntop(AF_INET, &in->sin_addr, a, sizeof(a));
		snprintf(p->peer, sizeof(p->peer), "%s:%u", a, ntohs(in->sin_port));
		int one = 1;
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	} else if (sa->sa_family == AF_INET6) {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)sa;
		char a[INET6_ADDRSTRLEN];
		inet_ntop(AF_INET6, &in6->sin6_addr, a, sizeof(a));
		snprintf(p->peer, sizeof(p->peer), "[%s]:%u", a, ntohs(in6->sin6_port));
		int one = 1;
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	} else {
		snprintf(p->peer, sizeof(p->peer), "console");
	}
	struct worker *w = &sv->workers[sv->next_worker++ % (unsigned)sv->nworkers];
	pthread_mutex_lock(&w->mu);
	p->next = w->queue;
	w->queue = p;
	pthread_mutex_unlock(&w->mu);
	event_active(w->notify, EV_READ, 0);
}

static void on_accept_error(struct evconnlistener *l, void *arg)
{
	(void)l;
	(void)arg;
	log_warn("accept");
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	struct server *sv = arg;
	(void)what;
	log_info("received %s, shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
	event_base_loopbreak(sv->base);
}

static int listen_tcp(struct server *sv, const char *addr, uint16_t port, enum kh_port kind)
{
	struct sockaddr_storage ss;
	socklen_t sl;
	memset(&ss, 0, sizeof(ss));
	struct sockaddr_in *in = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
	if (inet_pton(AF_INET, addr, &in->sin_addr) == 1) {
		in->sin_family = AF_INET;
		in->sin_port = htons(port);
		sl = sizeof(*in);
	} else if (inet_pton(AF_INET6, addr, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons(port);
		sl = sizeof(*in6);
	} else {
		log_warnx("listen address %s is not an IP address", addr);
		return KH_ERR_BAD_FIELD;
	}
	struct evconnlistener *l = evconnlistener_new_bind(
		sv->base, on_accept, sv,
		LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC, 512,
		(struct sockaddr *)&ss, (int)sl);
	if (l == NULL) {
		log_warn("%s port: cannot listen on %s:%u", kind == KH_PORT_PROD ? "Excrypt" : "Admin",
			 addr, port);
		return KH_ERR_IO;
	}
	evconnlistener_set_error_cb(l, on_accept_error);
	sv->lst[sv->nlst++] = (struct listener){l, kind, KH_SRC_ETHERNET, port};
	log_info("%s port listening on %s:%u", kind == KH_PORT_PROD ? "Excrypt" : "Admin", addr, port);
	return KH_OK;
}

static int listen_unix(struct server *sv, const char *path)
{
	struct sockaddr_un su;
	memset(&su, 0, sizeof(su));
	su.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(su.sun_path)) {
		log_warnx("console socket path too long: %s", path);
		return KH_ERR_BAD_FIELD;
	}
	memcpy(su.sun_path, path, strlen(path) + 1);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return KH_ERR_IO;
	(void)unlink(path);
	mode_t old = umask(0177); /* the socket is born 0600: no window where others can connect */
	int r = bind(fd, (struct sockaddr *)&su, sizeof(su));
	umask(old);
	if (r != 0 || chmod(path, 0600) != 0 || listen(fd, 64) != 0) {
		log_warn("console: cannot listen on %s", path);
		close(fd);
		return KH_ERR_IO;
	}
	struct evconnlistener *l =
		evconnlistener_new(sv->base, on_accept, sv, LEV_OPT_CLOSE_ON_FREE, 64, fd);
	if (l == NULL) {
		close(fd);
		return KH_ERR_IO;
	}
	sv->lst[sv->nlst++] = (struct listener){l, KH_PORT_ADMIN, KH_SRC_USB, 0};
	log_info("console listening on %s", path);
	return KH_OK;
}

int kh_server_run(struct kh_hsm *hsm, const struct kh_server_opts *o)
{
	struct server sv;
	struct event *sigterm = NULL, *sigint = NULL;
	int r = KH_OK, started = 0;

	memset(&sv, 0, sizeof(sv));
	sv.hsm = hsm;
	sv.o = o;
	sv.nworkers = o->workers > 0 ? o->workers : 1;
	sv.max_connections = o->max_connections > 0 ? o->max_connections : 1024;
	if (evthread_use_pthreads() != 0)
		return KH_ERR_INTERNAL;
	signal(SIGPIPE, SIG_IGN);
	sv.base = event_base_new();
	sv.workers = calloc((size_t)sv.nworkers, sizeof(*sv.workers));
	if (sv.base == NULL || sv.workers == NULL) {
		r = KH_ERR_NOMEM;
		goto out;
	}
	if (o->prod_port && (r = listen_tcp(&sv, o->prod_addr, o->prod_port, KH_PORT_PROD)) != KH_OK)
		goto out;
	if (o->admin_port &&
	    (r = listen_tcp(&sv, o->admin_addr, o->admin_port, KH_PORT_ADMIN)) != KH_OK)
		goto out;
	if (o->console_path && (r = listen_unix(&sv, o->console_path)) != KH_OK)
		goto out;

	for (int i = 0; i < sv.nworkers; i++) {
		struct worker *w = &sv.workers[i];
		w->hsm = hsm;
		w->poll_ns = (uint64_t)o->poll_us * 1000u;
		pthread_mutex_init(&w->mu, NULL);
		w->base = event_base_new();
		if (w->base == NULL ||
		    (w->notify = event_new(w->base, -1, EV_PERSIST, on_notify, w)) == NULL ||
		    event_add(w->notify, NULL) != 0 ||
		    pthread_create(&w->thread, NULL, worker_main, w) != 0) {
			r = KH_ERR_INTERNAL;
			goto out;
		}
		started++;
	}
	sigterm = evsignal_new(sv.base, SIGTERM, on_signal, &sv);
	sigint = evsignal_new(sv.base, SIGINT, on_signal, &sv);
	if (sigterm == NULL || sigint == NULL || evsignal_add(sigterm, NULL) != 0 ||
	    evsignal_add(sigint, NULL) != 0) {
		r = KH_ERR_INTERNAL;
		goto out;
	}
	if (o->ready)
		o->ready(o->ready_arg);
	event_base_dispatch(sv.base);
out:
	for (int i = 0; i < sv.nlst; i++)
		evconnlistener_free(sv.lst[i].l);
	for (int i = 0; i < started; i++) {
		/* a polling worker may be between two loops, where a break
		 * would be forgotten: the flag is seen either way */
		atomic_store(&sv.workers[i].stop, true);
		event_base_loopbreak(sv.workers[i].base);
		pthread_join(sv.workers[i].thread, NULL);
	}
	for (int i = 0; sv.workers && i < sv.nworkers; i++) {
		struct worker *w = &sv.workers[i];
		while (w->queue) {
			struct pending *n = w->queue->next;
			close(w->queue->fd);
			free(w->queue);
			w->queue = n;
		}
		if (w->notify)
			event_free(w->notify);
		if (w->base)
			event_base_free(w->base);
		pthread_mutex_destroy(&w->mu);
	}
	free(sv.workers);
	if (sigterm)
		event_free(sigterm);
	if (sigint)
		event_free(sigint);
	if (o->console_path)
		(void)unlink(o->console_path);
	if (sv.base)
		event_base_free(sv.base);
	return r;
}

/*
 * The guardian's HTTP listener on libmicrohttpd: a thread per connection
 * (a device add may take seconds), bodies capped at KG_BODY_MAX and wiped
 * when freed, answers from the router, and the Remote Manage relay: an
 * upgraded connection pumped to the device's Admin port by a thread of its
 * own until either side closes. The relay only moves bytes: the client
 * runs TLS to the HSM inside it. Never logs a body, a token or a header.
 */
#include "guardian/http_server.h"
#include "guardian/http_json.h"
#include "common/kh_log.h"
#include "common/kh_mem.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PEM_MAX (1u << 20)
#define CONN_LIMIT 256
#define CONN_TIMEOUT_S 120
#define PUMP_BUF 16384

struct relay;

struct kg_http {
	struct MHD_Daemon *d;
	struct kg_router *rt;
	char *cert;             /* PEM, as MHD wants it */
	char *key;              /* PEM on the secure heap */
	size_t key_size;
	unsigned port;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool stopping;
	struct relay *relays[KG_RELAY_MAX];
};

struct relay {
	struct kg_http *h;
	int dev;                /* TCP to the Admin port */
	int net;                /* MHD's side of the client */
	struct MHD_UpgradeResponseHandle *urh;
	uint8_t *extra;         /* bytes the client sent before the 101 */
	size_t extra_len;
};

/* A request's body as it arrives. */
struct reqctx {
	char *buf;              /* KG_BODY_MAX bytes once data comes */
	size_t len;
	bool too_large;
};

static void mhd_log(void *cls, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	char msg[512];
	(void)cls;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	msg[strcspn(msg, "\n")] = '\0';
	log_warnx("guardian http: %s", msg);
}

/* ---- answers ------------------------------------------------------------ */

/* A response body that is wiped when MHD lets it go (the login answer
 * carries the session token). */
struct wbuf {
	size_t n;
	char data[];
};

static void wbuf_free(void *cls)
{
	struct wbuf *b = cls;
	kh_wipe(b->data, b->n);
	free(b);
}

static void add_headers(struct MHD_Response *r, const struct kg_resp *rs)
{
	KH_IGNORE(MHD_add_response_header(r, "Cache-Control", "no-store") != MHD_YES);
	KH_IGNORE(MHD_add_response_header(r, "X-Content-Type-Options", "nosniff") != MHD_YES);
	if (rs->body_len > 0)
		KH_IGNORE(MHD_add_response_header(r, "Content-Type", "application/json") !=
			  MHD_YES);
	if (rs->set_cookie[0])
		KH_IGNORE(MHD_add_response_header(r, "Set-Cookie", rs->set_cookie) != MHD_YES);
	if (rs->allow[0])
		KH_IGNORE(MHD_add_response_header(r, "Allow", rs->allow) != MHD_YES);
}

static enum MHD_Result send_json(struct MHD_Connection *conn, const struct kg_resp *rs)
{
	struct MHD_Response *r;
	struct wbuf *b = malloc(sizeof(*b) + rs->body_len + 1);
	enum MHD_Result ok;
	if (b == NULL)
		return MHD_NO;
	b->n = rs->body_len;
	if (rs->body_len)
		memcpy(b->data, rs->body, rs->body_len);
	b->data[rs->body_len] = '\0';
	r = MHD_create_response_from_buffer_with_free_callback_cls(b->n, b->data, wbuf_free, b);
	if (r == NULL) {
		wbuf_free(b);
		return MHD_NO;
	}
	add_headers(r, rs);
	ok = MHD_queue_response(conn, (unsigned)rs->status, r);
	MHD_destroy_response(r);
	return ok;
}

/* A console file: the bytes compiled in (never freed), revalidated on
 * each load by its ETag (no-cache), with the page's security headers. */
static enum MHD_Result send_asset(struct MHD_Connection *conn, const struct kg_resp *rs)
{
	const struct kg_asset *a = rs->asset;
	struct MHD_Response *r;
	enum MHD_Result ok;
	r = MHD_create_response_from_buffer(rs->status == 200 ? a->len : 0, (void *)(uintptr_t)a->data,
					    MHD_RESPMEM_PERSISTENT);
	if (r == NULL)
		return MHD_NO;
	KH_IGNORE(MHD_add_response_header(r, "Content-Type", kg_static_type(a)) != MHD_YES);
	KH_IGNORE(MHD_add_response_header(r, "Cache-Control", "no-cache") != MHD_YES);
	KH_IGNORE(MHD_add_response_header(r, "ETag", a->etag) != MHD_YES);
	KH_IGNORE(MHD_add_response_header(r, "Content-Security-Policy", KG_STATIC_CSP) != MHD_YES);
	KH_IGNORE(MHD_add_response_header(r, "X-Content-Type-Options", "nosniff") != MHD_YES);
	KH_IGNORE(MHD_add_response_header(r, "Referrer-Policy", "no-referrer") != MHD_YES);
	KH_IGNORE(MHD_add_response_header(r, "X-Frame-Options", "DENY") != MHD_YES);
	ok = MHD_queue_response(conn, (unsigned)rs->status, r);
	MHD_destroy_response(r);
	return ok;
}

/* An error answered by the server before the router (size). */
static enum MHD_Result send_error(struct MHD_Connection *conn, int status, int err,
				  const char *reason)
{
	struct kg_resp rs;
	json_t *j = kg_json_error(err, reason);
	enum MHD_Result ok;
	memset(&rs, 0, sizeof(rs));
	rs.status = status;
	rs.body = j ? kg_json_text(j, &rs.body_len) : NULL;
	json_decref(j);
	ok = send_json(conn, &rs);
	free(rs.body);
	return ok;
}

/* ---- the relay ---------------------------------------------------------- */

static bool send_all(int fd, const uint8_t *p, size_t n)
{
	while (n > 0) {
		ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return false;
		p += k;
		n -= (size_t)k;
	}
	return true;
}

static void relay_track(struct kg_http *h, struct relay *r, bool add)
{
	pthread_mutex_lock(&h->mu);
	for (size_t i = 0; i < KG_RELAY_MAX; i++) {
		if (add && h->relays[i] == NULL) {
			h->relays[i] = r;
			break;
		}
		if (!add && h->relays[i] == r) {
			h->relays[i] = NULL;
			break;
		}
	}
	pthread_cond_broadcast(&h->cv);
	pthread_mutex_unlock(&h->mu);
}

static void relay_end(struct relay *r)
{
	struct kg_http *h = r->h;
	close(r->dev);
	if (r->urh)
		KH_IGNORE(MHD_upgrade_action(r->urh, MHD_UPGRADE_ACTION_CLOSE) != MHD_YES);
	if (r->extra) {
		kh_wipe(r->extra, r->extra_len);
		free(r->extra);
	}
	/* the router first: once the relay is untracked, kg_http_stop may free
	 * h and its router at any moment */
	kg_router_relay_done(h->rt);
	relay_track(h, r, false);
	free(r);
}

/* Bytes both ways until either side closes or fails, or nothing moves for
 * RELAY_IDLE_MS. */
#define RELAY_IDLE_MS (10 * 60 * 1000)
static void *pump(void *arg)
{
	struct relay *r = arg;
	uint8_t *buf = malloc(PUMP_BUF);
	struct pollfd p[2];
	if (buf == NULL || (r->extra_len && !send_all(r->dev, r->extra, r->extra_len)))
		goto out;
	p[0].fd = r->net;
	p[1].fd = r->dev;
	for (;;) {
		p[0].events = p[1].events = POLLIN;
		p[0].revents = p[1].revents = 0;
		int n = poll(p, 2, RELAY_IDLE_MS);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (n == 0) {
			/* nothing either way for so long: a client that went away
			 * without a close MHD passes on (TLS) must not hold a slot */
			log_info("guardian http: a relay idle for %d s ended", RELAY_IDLE_MS / 1000);
			break;
		}
		for (int i = 0; i < 2; i++) {
			ssize_t k;
			if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			k = recv(p[i].fd, buf, PUMP_BUF, 0);
			if (k < 0 && errno == EINTR)
				continue;
			if (k <= 0 || !send_all(p[1 - i].fd, buf, (size_t)k))
				goto out;
		}
	}
out:
	if (buf) {
		kh_wipe(buf, PUMP_BUF);
		free(buf);
	}
	relay_end(r);
	return NULL;
}

static void on_upgraded(void *cls, struct MHD_Connection *conn, void *con_cls,
			const char *extra_in, size_t extra_in_size, MHD_socket sock,
			struct MHD_UpgradeResponseHandle *urh)
{
	struct relay *r = cls;
	pthread_attr_t attr;
	pthread_t t;
	bool started = false;
	(void)conn;
	(void)con_cls;
	pthread_mutex_lock(&r->h->mu);
	r->net = sock;
	r->urh = urh;
	pthread_mutex_unlock(&r->h->mu);
	if (extra_in_size > 0 && (r->extra = malloc(extra_in_size)) != NULL) {
		memcpy(r->extra, extra_in, extra_in_size);
		r->extra_len = extra_in_size;
	}
	/* MHD forwards TLS for this socket only after we return: pump elsewhere */
	if ((extra_in_size == 0 || r->extra) && pthread_attr_init(&attr) == 0) {
		pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
		started = pthread_create(&t, &attr, pump, r) == 0;
		pthread_attr_destroy(&attr);
	}
	if (!started) {
		log_warnx("guardian http: the relay could not start");
		relay_end(r);
	}
}

static enum MHD_Result send_upgrade(struct kg_http *h, struct MHD_Connection *conn,
				    struct kg_resp *rs)
{
	struct MHD_Response *resp;
	enum MHD_Result ok;
	struct relay *r = calloc(1, sizeof(*r));
	bool stopping;
	pthread_mutex_lock(&h->mu);
	stopping = h->stopping;
	pthread_mutex_unlock(&h->mu);
	if (r == NULL || stopping) {
		free(r);
		close(rs->relay_fd);
		kg_router_relay_done(h->rt);
		return send_error(conn, 503, KH_ERR_BUSY, "the guardian is stopping");
	}
	r->h = h;
	r->dev = rs->relay_fd;
	r->net = -1;
	rs->relay_fd = -1;
	relay_track(h, r, true);
	resp = MHD_create_response_for_upgrade(on_upgraded, r);
	if (resp == NULL) {
		relay_end(r);
		return MHD_NO;
	}
	KH_IGNORE(MHD_add_response_header(resp, "Upgrade", "keyhold-relay") != MHD_YES);
	KH_IGNORE(MHD_add_response_header(resp, "Connection", "Upgrade") != MHD_YES);
	ok = MHD_queue_response(conn, MHD_HTTP_SWITCHING_PROTOCOLS, resp);
	MHD_destroy_response(resp);
	if (ok != MHD_YES)
		relay_end(r);
	/* once queued, on_upgraded owns r; if the 101 never goes out MHD
	 * closes the connection and r stays tracked until stop */
	return ok;
}

/* ---- requests ----------------------------------------------------------- */

static const char *query_of(void *qctx, const char *key)
{
	return MHD_lookup_connection_value(qctx, MHD_GET_ARGUMENT_KIND, key);
}

static const char *header(struct MHD_Connection *conn, const char *name)
{
	return MHD_lookup_connection_value(conn, MHD_HEADER_KIND, name);
}

static void reqctx_free(struct reqctx *rc)
{
	if (rc == NULL)
		return;
	if (rc->buf) {
		kh_wipe(rc->buf, KG_BODY_MAX);
		free(rc->buf);
	}
	free(rc);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
			 enum MHD_RequestTerminationCode toe)
{
	(void)cls;
	(void)conn;
	(void)toe;
	reqctx_free(*con_cls);
	*con_cls = NULL;
}

static void take_body(struct reqctx *rc, const char *data, size_t n)
{
	if (rc->too_large)
		return;
	if (n > KG_BODY_MAX - rc->len) {
		rc->too_large = true;
		return;
	}
	if (rc->buf == NULL && (rc->buf = malloc(KG_BODY_MAX)) == NULL) {
		rc->too_large = true; /* refused either way; 413 is the honest answer */
		return;
	}
	memcpy(rc->buf + rc->len, data, n);
	rc->len += n;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
				  const char *method, const char *version, const char *upload_data,
				  size_t *upload_data_size, void **con_cls)
{
	struct kg_http *h = cls;
	struct reqctx *rc = *con_cls;
	struct kg_req req;
	struct kg_resp rs;
	enum MHD_Result ok;
	(void)version;

	if (rc == NULL) {
		const char *cl = header(conn, "Content-Length");
		if ((rc = calloc(1, sizeof(*rc))) == NULL)
			return MHD_NO;
		*con_cls = rc;
		/* a declared size over the limit is refused before it is read */
		if (cl && strtoull(cl, NULL, 10) > KG_BODY_MAX)
			return send_error(conn, 413, KH_ERR_TOO_LARGE,
					  "the body is larger than 65536 bytes");
		return MHD_YES;
	}
	if (*upload_data_size > 0) {
		take_body(rc, upload_data, *upload_data_size);
		*upload_data_size = 0;
		return MHD_YES;
	}

	memset(&req, 0, sizeof(req));
	req.method = method;
	req.path = url;
	req.query = query_of;
	req.qctx = conn;
	req.authorization = header(conn, "Authorization");
	req.cookie = MHD_lookup_connection_value(conn, MHD_COOKIE_KIND, "kh_session");
	req.csrf = header(conn, "X-CSRF-Token");
	req.upgrade = header(conn, "Upgrade");
	req.connection = header(conn, "Connection");
	req.body = rc->buf;
	req.body_len = rc->len;
	req.body_too_large = rc->too_large;
	req.if_none_match = header(conn, "If-None-Match");
	kg_router_handle(h->rt, &req, &rs);
	if (rs.status == 101 && rs.relay_fd >= 0)
		ok = send_upgrade(h, conn, &rs);
	else if (rs.asset)
		ok = send_asset(conn, &rs);
	else
		ok = send_json(conn, &rs);
	kg_resp_clear(&rs);
	return ok;
}

/* ---- start and stop ----------------------------------------------------- */

/* A whole PEM file into memory (secure: on the secure heap). */
static int read_pem(const char *path, bool secure, char **out, size_t *size, char *why,
		    size_t whysz)
{
	FILE *f = path ? fopen(path, "rbe") : NULL;
	long n;
	char *buf;
	*out = NULL;
	if (f == NULL) {
		snprintf(why, whysz, "cannot open %s: %s", path ? path : "(none)", strerror(errno));
		return KH_ERR_LOCAL_FILE;
	}
	if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) <= 0 || n > (long)PEM_MAX ||
	    fseek(f, 0, SEEK_SET) != 0) {
		fclose(f);
		snprintf(why, whysz, "%s: empty, unreadable or larger than 1 MiB", path);
		return KH_ERR_LOCAL_FILE;
	}
	buf = secure ? kh_secure_alloc((size_t)n + 1) : calloc(1, (size_t)n + 1);
	if (buf == NULL || fread(buf, 1, (size_t)n, f) != (size_t)n) {
		fclose(f);
		if (buf && secure)
			kh_secure_free(buf, (size_t)n + 1);
		else
			free(buf);
		snprintf(why, whysz, "%s: cannot read", path);
		return KH_ERR_LOCAL_FILE;
	}
	fclose(f);
	buf[n] = '\0';
	*out = buf;
	*size = (size_t)n + 1;
	return KH_OK;
}

static void free_tls(struct kg_http *h)
{
	free(h->cert);
	h->cert = NULL;
	if (h->key)
		kh_secure_free(h->key, h->key_size);
	h->key = NULL;
}

static int listen_addr(const struct kg_http_cfg *cfg, unsigned port, struct sockaddr_storage *ss,
		       bool *v6, char *why, size_t whysz)
{
	const char *a = cfg->listen ? cfg->listen : "127.0.0.1";
	struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
	memset(ss, 0, sizeof(*ss));
	*v6 = false;
	if (inet_pton(AF_INET, a, &s4->sin_addr) == 1) {
		s4->sin_family = AF_INET;
		s4->sin_port = htons((uint16_t)port);
		return KH_OK;
	}
	if (inet_pton(AF_INET6, a, &s6->sin6_addr) == 1) {
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons((uint16_t)port);
		*v6 = true;
		return KH_OK;
	}
	snprintf(why, whysz, "listen address %s: an IPv4 or IPv6 address", a);
	return KH_ERR_BAD_FIELD;
}

int kg_httpd_start(const struct kg_http_ops *ops, struct kg_core *c,
		   const struct kg_http_cfg *cfg, struct kg_http **out, char *why, size_t whysz)
{
	struct sockaddr_storage ss;
	struct kg_http *h;
	size_t cert_size = 0;
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
			 MHD_ALLOW_UPGRADE | MHD_USE_ERROR_LOG | MHD_USE_AUTO;
	const union MHD_DaemonInfo *info;
	bool v6;
	int r;

	*out = NULL;
	snprintf(why, whysz, "%s", "");
	if (cfg->port > 65535) {
		snprintf(why, whysz, "port: 1-65535");
		return KH_ERR_BAD_FIELD;
	}
	if ((r = listen_addr(cfg, cfg->port, &ss, &v6, why, whysz)) != KH_OK)
		return r;
	if ((h = calloc(1, sizeof(*h))) == NULL)
		return KH_ERR_NOMEM;
	pthread_mutex_init(&h->mu, NULL);
	pthread_cond_init(&h->cv, NULL);
	kg_json_wipe_on_free();
	if ((r = kg_router_new(ops, c, cfg->session_idle_s, cfg->tls, &h->rt)) != KH_OK) {
		snprintf(why, whysz, "out of memory");
		goto fail;
	}
	if (cfg->tls) {
		if ((r = read_pem(cfg->cert_file, false, &h->cert, &cert_size, why, whysz)) !=
			    KH_OK ||
		    (r = read_pem(cfg->key_file, true, &h->key, &h->key_size, why, whysz)) != KH_OK)
			goto fail;
		flags |= MHD_USE_TLS;
	}
	if (v6)
		flags |= MHD_USE_IPv6;
	h->d = MHD_start_daemon(
		flags, 0, NULL, NULL, on_request, h, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, h,
		MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
		MHD_OPTION_CONNECTION_LIMIT, (unsigned)CONN_LIMIT, MHD_OPTION_CONNECTION_TIMEOUT,
		(unsigned)CONN_TIMEOUT_S, MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
		cfg->tls ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, h->cert,
		MHD_OPTION_HTTPS_MEM_KEY, h->key, MHD_OPTION_HTTPS_PRIORITIES,
		"NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2", MHD_OPTION_END);
	if (h->d == NULL) {
		snprintf(why, whysz, "cannot listen on %s port %u%s",
			 cfg->listen ? cfg->listen : "127.0.0.1", cfg->port,
			 cfg->tls ? " (or the certificate or key is not usable)" : "");
		r = KH_ERR_IO;
		goto fail;
	}
	info = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
	h->port = info ? info->port : cfg->port;
	log_info("guardian http: listening on %s port %u (%s)",
		 cfg->listen ? cfg->listen : "127.0.0.1", h->port, cfg->tls ? "HTTPS" : "clear");
	*out = h;
	return KH_OK;
fail:
	free_tls(h);
	kg_router_free(h->rt);
	pthread_cond_destroy(&h->cv);
	pthread_mutex_destroy(&h->mu);
	free(h);
	return r;
}

unsigned kg_httpd_port(const struct kg_http *h)
{
	return h->port;
}

void kg_http_stop(struct kg_http *h)
{
	if (h == NULL)
		return;
	/* end the relays first: MHD stops only once upgraded sockets are closed */
	pthread_mutex_lock(&h->mu);
	h->stopping = true;
	for (size_t i = 0; i < KG_RELAY_MAX; i++)
		if (h->relays[i]) {
			shutdown(h->relays[i]->dev, SHUT_RDWR);
			if (h->relays[i]->net >= 0)
				shutdown(h->relays[i]->net, SHUT_RDWR);
		}
	/* a relay whose 101 is on its way gets its socket in a moment (and
	 * ends at once: its Admin side is shut); one whose 101 never went
	 * out never will, so those are waited for only briefly */
	struct timespec deadline;
	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += 2;
	for (;;) {
		bool upgraded = false, pending = false;
		for (size_t i = 0; i < KG_RELAY_MAX; i++) {
			upgraded |= h->relays[i] != NULL && h->relays[i]->urh != NULL;
			pending |= h->relays[i] != NULL && h->relays[i]->urh == NULL;
		}
		if (upgraded)
			pthread_cond_wait(&h->cv, &h->mu);
		else if (!pending || pthread_cond_timedwait(&h->cv, &h->mu, &deadline) != 0)
			break;
	}
	pthread_mutex_unlock(&h->mu);
	MHD_stop_daemon(h->d);
	free_tls(h);
	kg_router_free(h->rt);
	pthread_cond_destroy(&h->cv);
	pthread_mutex_destroy(&h->mu);
	free(h);
}

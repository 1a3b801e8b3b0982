/*
 * keyhold-guardian's core: starts and stops the running groups, and the
 * actions on groups and devices that the REST API calls. Each action
 * checks with the store (which holds every rule and refuses with a
 * reason), then changes the running state to match.
 */
#include "guardian/core_int.h"
#include "common/kh_buf.h"
#include "common/kh_client.h"
#include "common/kh_frame.h"
#include "common/kh_log.h"
#include "common/kh_mem.h"
#include "common/kh_pool.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

static void whyf(char *why, size_t whysz, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void whyf(char *why, size_t whysz, const char *fmt, ...)
{
	va_list ap;
	if (why == NULL || whysz == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(why, whysz, fmt, ap);
	va_end(ap);
}

int64_t kg_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void kg_event(struct kg_core *c, int64_t group, int64_t dev, enum kh_gstore_ekind k,
              const char *fmt, ...)
{
	char text[KH_GSTORE_TEXT_MAX + 1];
	struct kh_gstore_why w;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	log_info("group %lld device %lld: %s", (long long)group, (long long)dev, text);
	if (kh_gstore_event_add(c->st, kg_now_ms(), group, dev, k, text, &w) != KH_OK)
		log_warnx("event not recorded: %s", w.text);
}

void kg_wake_replicator(struct kg_core *c)
{
	pthread_mutex_lock(&c->wake_mu);
	c->wake_flag = true;
	pthread_cond_signal(&c->wake);
	pthread_mutex_unlock(&c->wake_mu);
}

struct kg_group *kg_group_by_id(struct kg_core *c, int64_t id)
{
	for (size_t i = 0; i < KG_GROUPS_MAX; i++)
		if (c->grp[i] && !c->grp[i]->removed && c->grp[i]->g.id == id)
			return c->grp[i];
	return NULL;
}

struct kg_dev *kg_dev_by_id(struct kg_core *c, int64_t id, struct kg_group **gout)
{
	for (size_t i = 0; i < KG_GROUPS_MAX; i++) {
		struct kg_group *g = c->grp[i];
		if (g == NULL || g->removed)
			continue;
		for (size_t j = 0; j < KG_DEVICES_MAX; j++)
			if (g->dev[j] && g->dev[j]->d.id == id) {
				if (gout)
					*gout = g;
				return g->dev[j];
			}
	}
	return NULL;
}

struct kg_dev *kg_group_primary(struct kg_group *g)
{
	for (size_t j = 0; j < KG_DEVICES_MAX; j++)
		if (g->dev[j] && g->dev[j]->d.role == KH_GROLE_PRIMARY)
			return g->dev[j];
	return NULL;
}

enum kg_member_conn kg_group_conn(const struct kg_group *g)
{
	switch (g->g.pairs[KH_GPAIR_EXCRYPT].conn) {
	case KH_GCONN_CLEAR: return KG_CONN_CLEAR;
	case KH_GCONN_ANON_TLS: return KG_CONN_ANONYMOUS;
	default: return KG_CONN_TLS;
	}
}

void kg_member_addr(const struct kg_core *c, const struct kg_group *g,
                    const struct kh_gstore_device *d, struct kg_member_dev *out)
{
	(void)c;
	memset(out, 0, sizeof(*out));
	out->host = d->host;
	out->excrypt_port = d->port;
	out->admin_port = d->admin_port;
	out->conn = kg_group_conn(g);
	out->timeout_ms = (int)d->ping_timeout_ms;
}

void kg_member_tls_of(const struct kg_core *c, struct kg_member_tls *out)
{
	memset(out, 0, sizeof(*out));
	out->ca_file = c->ca_file;
	out->cert_file = c->cert_file;
	out->key_file = c->key_file;
	out->tls_ctx = c->cli_ctx;
}

static bool in_service(const struct kg_dev *d)
{
	return !d->removed && d->d.enabled && atomic_load(&d->joined) &&
	       atomic_load(&d->pending) == 0 &&
	       (d->d.state == KH_GSTATE_UP || d->d.state == KH_GSTATE_DEGRADED);
}

bool kg_dev_serving(const struct kg_group *g, const struct kg_dev *d)
{
	if (!in_service(d) || !d->d.balancing)
		return false;
	if (!g->g.opt_balancing)
		return d->d.role == KH_GROLE_PRIMARY;
	if (d->d.role != KH_GROLE_BACKUP)
		return true;
	unsigned prod = 0;
	for (size_t j = 0; j < KG_DEVICES_MAX; j++) {
		const struct kg_dev *p = g->dev[j];
		if (p && p->d.role == KH_GROLE_PRODUCTION && in_service(p) && p->d.balancing)
			prod++;
	}
	return prod < g->prod_target;
}

void kg_dev_set_state(struct kg_core *c, struct kg_group *g, struct kg_dev *d,
                      enum kh_gstore_state s, const char *why)
{
	struct kh_gstore_why w;
	enum kh_gstore_state old;
	int64_t gid, did;

	pthread_rwlock_wrlock(&c->mu);
	old = d->d.state;
	if (old == s || d->removed || (old == KH_GSTATE_DISABLED && d->d.enabled == false)) {
		pthread_rwlock_unlock(&c->mu);
		return;
	}
	d->d.state = s;
	gid = g->g.id;
	did = d->d.id;
	atomic_fetch_add(&g->gen, 1);
	pthread_rwlock_unlock(&c->mu);
	if (kh_gstore_device_set_state(c->st, did, s, &w) != KH_OK)
		log_warnx("device %lld: state not stored: %s", (long long)did, w.text);
	kg_event(c, gid, did, KH_GEV_STATE, "%s -> %s%s%s", kh_gstore_state_name(old),
	         kh_gstore_state_name(s), why && *why ? ": " : "", why ? why : "");
}

/* ---- the guardian's own connections to a member ------------------------ */

static int dev_pool_open(struct kg_core *c, const struct kg_group *g, struct kg_dev *d,
                         char *why, size_t whysz)
{
	struct kh_pool_cfg pc;
	char name[64];
	char err[256];

	memset(&pc, 0, sizeof(pc));
	snprintf(name, sizeof(name), "device %lld", (long long)d->d.id);
	pc.name = name;
	pc.what = "device";
	pc.addr[0].host = d->d.host;
	pc.addr[0].port = d->d.port;
	pc.naddr = 1;
	switch (kg_group_conn(g)) {
	case KG_CONN_CLEAR: pc.tls = false; break;
	case KG_CONN_ANONYMOUS: pc.tls = true; pc.tls_ctx = c->anon_ctx; break;
	default: pc.tls = true; pc.tls_ctx = c->cli_ctx; break;
	}
	pc.connect_timeout_ms = (int)d->d.ping_timeout_ms;
	pc.request_timeout_ms = c->cfg.request_timeout_ms;
	pc.max_connections = 4;
	struct kh_pool *p = kh_pool_new(&pc, err, sizeof(err));
	if (p == NULL) {
		whyf(why, whysz, "%s", err);
		return KH_ERR_TLS;
	}
	kh_pool_free(d->gpool);
	d->gpool = p;
	return KH_OK;
}

int kg_dev_call(struct kg_core *c, struct kg_dev *d, const struct kh_buf *req, struct kh_buf *resp,
                struct kh_frame *f, char *why, size_t whysz)
{
	char err[256] = "";
	int r;
	pthread_mutex_lock(&d->login_mu);
	if (!kh_pool_logged_in(d->gpool)) {
		struct kh_pool_cred cr = {.user = c->identity, .pw = c->password,
		                          .pwlen = c->cfg.password_len};
		if ((r = kh_pool_login(d->gpool, &cr, 1)) != KH_OK) {
			pthread_mutex_unlock(&d->login_mu);
			kh_pool_last_error(d->gpool, err, sizeof(err));
			whyf(why, whysz, "%s port %u: login as %s: %s%s%s", d->d.host, d->d.port,
			     c->identity, kh_errname(r), *err ? ": " : "", err);
			return r;
		}
	}
	pthread_mutex_unlock(&d->login_mu);
	r = kh_pool_call(d->gpool, KH_POOL_PRIMARY, req, resp, f, err, sizeof(err));
	if (r != KH_OK)
		whyf(why, whysz, "%s port %u: %s: %s", d->d.host, d->d.port, kh_errname(r), err);
	return r;
}

static void dev_free(struct kg_dev *d);

static struct kg_dev *dev_new(struct kg_core *c, const struct kg_group *g,
                              const struct kh_gstore_device *row, char *why, size_t whysz)
{
	struct kg_dev *d = calloc(1, sizeof(*d));
	struct kh_gstore_why w;
	int64_t n = 0;
	if (d == NULL) {
		whyf(why, whysz, "out of memory");
		return NULL;
	}
	d->d = *row;
	d->latency_ms = -1;
	pthread_mutex_init(&d->login_mu, NULL);
	if (dev_pool_open(c, g, d, why, whysz) != KH_OK) {
		dev_free(d);
		return NULL;
	}
	if (kh_gstore_journal_count_pending(c->st, row->id, &n, &w) == KH_OK)
		atomic_store(&d->pending, n);
	return d;
}

static void dev_free(struct kg_dev *d)
{
	if (d == NULL)
		return;
	kh_pool_free(d->gpool);
	pthread_mutex_destroy(&d->login_mu);
	free(d);
}

/* ---- TLS contexts ------------------------------------------------------ */

static int server_ctx(const struct kg_core *c, bool mutual, SSL_CTX **out, char *why,
                      size_t whysz)
{
	SSL_CTX *x = SSL_CTX_new(TLS_server_method());
	const char *step = "out of memory";
	if (x == NULL)
		goto fail;
	SSL_CTX_set_min_proto_version(x, TLS1_2_VERSION);
	SSL_CTX_set_options(x, SSL_OP_NO_RENEGOTIATION | SSL_OP_CLEANSE_PLAINTEXT);
	step = "cannot load the certificate file";
	if (SSL_CTX_use_certificate_chain_file(x, c->srv_cert) != 1)
		goto fail;
	step = "cannot load the key file";
	if (SSL_CTX_use_PrivateKey_file(x, c->srv_key, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(x) != 1)
		goto fail;
	if (mutual) {
		step = "cannot load the CA file";
		if (SSL_CTX_load_verify_locations(x, c->ca_file, NULL) != 1)
			goto fail;
		STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(c->ca_file);
		if (names)
			SSL_CTX_set_client_CA_list(x, names);
		SSL_CTX_set_verify(x, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
	}
	*out = x;
	return KH_OK;
fail:
	{
		char e[160] = "";
		unsigned long ec = ERR_get_error();
		if (ec)
			ERR_error_string_n(ec, e, sizeof(e));
		ERR_clear_error();
		whyf(why, whysz, "TLS setup: %s%s%s", step, *e ? ": " : "", e);
	}
	SSL_CTX_free(x);
	return KH_ERR_TLS;
}

static char *dup_or_null(const char *s)
{
	return s ? strdup(s) : NULL;
}

/* ---- start / stop ------------------------------------------------------ */

static int group_install(struct kg_core *c, const struct kh_gstore_group *row, struct kg_group **out,
                         char *why, size_t whysz)
{
	size_t slot = KG_GROUPS_MAX;
	for (size_t i = 0; i < KG_GROUPS_MAX; i++)
		if (c->grp[i] == NULL) {
			slot = i;
			break;
		}
	if (slot == KG_GROUPS_MAX) {
		whyf(why, whysz, "at most %d groups", KG_GROUPS_MAX);
		return KH_ERR_TOO_LARGE;
	}
	struct kg_group *g = calloc(1, sizeof(*g));
	if (g == NULL) {
		whyf(why, whysz, "out of memory");
		return KH_ERR_NOMEM;
	}
	g->g = *row;
	pthread_mutex_init(&g->change_mu, NULL);
	c->grp[slot] = g;
	*out = g;
	return KH_OK;
}

/* Takes g out of the table, so that its slot serves a new group, onto
 * dead_grps. Under core mu, written. */
static void group_retire(struct kg_core *c, struct kg_group *g)
{
	for (size_t i = 0; i < KG_GROUPS_MAX; i++)
		if (c->grp[i] == g)
			c->grp[i] = NULL;
	g->removed = true;
	g->next_dead = c->dead_grps;
	c->dead_grps = g;
}

static void group_free(struct kg_group *g)
{
	kg_endpoint_stop(g->ep);
	for (size_t j = 0; j < KG_DEVICES_MAX; j++)
		dev_free(g->dev[j]);
	pthread_mutex_destroy(&g->change_mu);
	free(g);
}

static int dev_install(struct kg_group *g, struct kg_dev *d, char *why, size_t whysz)
{
	for (size_t j = 0; j < KG_DEVICES_MAX; j++)
		if (g->dev[j] == NULL) {
			g->dev[j] = d;
			if (d->d.role == KH_GROLE_PRODUCTION)
				g->prod_target++;
			atomic_fetch_add(&g->gen, 1);
			return KH_OK;
		}
	whyf(why, whysz, "a group has at most %d devices", KG_DEVICES_MAX);
	return KH_ERR_TOO_LARGE;
}

static int load_state(struct kg_core *c, char *why, size_t whysz)
{
	struct kh_gstore_group *groups = calloc(KG_GROUPS_MAX, sizeof(*groups));
	struct kh_gstore_device *devs = calloc(KG_DEVICES_MAX, sizeof(*devs));
	struct kh_gstore_why w;
	size_t ng = 0, nd = 0;
	int r;

	if (groups == NULL || devs == NULL) {
		r = KH_ERR_NOMEM;
		whyf(why, whysz, "out of memory");
		goto out;
	}
	if ((r = kh_gstore_group_list(c->st, groups, KG_GROUPS_MAX, &ng, &w)) != KH_OK) {
		whyf(why, whysz, "groups: %s", w.text);
		goto out;
	}
	for (size_t i = 0; i < ng; i++) {
		struct kg_group *g;
		if ((r = group_install(c, &groups[i], &g, why, whysz)) != KH_OK)
			goto out;
		if ((r = kh_gstore_device_list(c->st, groups[i].id, devs, KG_DEVICES_MAX, &nd, &w)) !=
		    KH_OK) {
			whyf(why, whysz, "devices: %s", w.text);
			goto out;
		}
		for (size_t j = 0; j < nd; j++) {
			struct kg_dev *d = dev_new(c, g, &devs[j], why, whysz);
			if (d == NULL) {
				r = KH_ERR_TLS;
				goto out;
			}
			/* a stored device finished its join when it was added */
			atomic_store(&d->joined, true);
			if (d->d.state != KH_GSTATE_DISABLED)
				d->d.state = KH_GSTATE_DOWN; /* until the first ping */
			if ((r = dev_install(g, d, why, whysz)) != KH_OK) {
				dev_free(d);
				goto out;
			}
		}
	}
	r = KH_OK;
out:
	free(groups);
	free(devs);
	return r;
}

int kg_core_start(const struct kg_core_cfg *cfg, struct kg_core **out, char *why, size_t whysz)
{
	struct kg_core *c = calloc(1, sizeof(*c));
	struct kh_gstore_why w;
	char err[256];
	int r;

	*out = NULL;
	if (c == NULL) {
		whyf(why, whysz, "out of memory");
		return KH_ERR_NOMEM;
	}
	c->cfg = *cfg;
	if (c->cfg.ping_interval_ms <= 0)
		c->cfg.ping_interval_ms = 2000;
	if (c->cfg.request_timeout_ms <= 0)
		c->cfg.request_timeout_ms = 60000;
	if (c->cfg.max_clients == 0)
		c->cfg.max_clients = 1024;
	pthread_rwlock_init(&c->mu, NULL);
	pthread_mutex_init(&c->wake_mu, NULL);
	pthread_cond_init(&c->wake, NULL);
	c->datadir = dup_or_null(cfg->datadir);
	c->listen = strdup(cfg->listen ? cfg->listen : "127.0.0.1");
	c->ca_file = dup_or_null(cfg->ca_file);
	c->cert_file = dup_or_null(cfg->cert_file);
	c->key_file = dup_or_null(cfg->key_file);
	c->identity = dup_or_null(cfg->identity);
	c->srv_cert = dup_or_null(cfg->server_cert_file ? cfg->server_cert_file : cfg->cert_file);
	c->srv_key = dup_or_null(cfg->server_cert_file
	                             ? (cfg->server_key_file ? cfg->server_key_file : cfg->server_cert_file)
	                             : (cfg->key_file ? cfg->key_file : cfg->cert_file));
	if (c->datadir == NULL || c->ca_file == NULL || c->cert_file == NULL || c->identity == NULL ||
	    c->srv_cert == NULL || c->srv_key == NULL || cfg->password == NULL) {
		whyf(why, whysz, "the data dir, CA, certificate, identity and password are required");
		r = KH_ERR_MISSING_FIELD;
		goto fail;
	}
	if ((c->password = kh_secure_alloc(cfg->password_len + 1)) == NULL) {
		whyf(why, whysz, "out of secure memory");
		r = KH_ERR_NOMEM;
		goto fail;
	}
	memcpy(c->password, cfg->password, cfg->password_len);
	c->cfg.password = NULL;
	{
		struct kh_client_tls t = {.ca_file = c->ca_file, .cert_file = c->cert_file,
		                          .key_file = c->key_file};
		if ((r = kh_client_tls_ctx(&t, &c->cli_ctx, err, sizeof(err))) != KH_OK) {
			whyf(why, whysz, "%s", err);
			goto fail;
		}
		struct kh_client_tls a = {.ca_file = c->ca_file};
		if ((r = kh_client_tls_ctx(&a, &c->anon_ctx, err, sizeof(err))) != KH_OK) {
			whyf(why, whysz, "%s", err);
			goto fail;
		}
	}
	if ((r = server_ctx(c, true, &c->srv_mutual, why, whysz)) != KH_OK ||
	    (r = server_ctx(c, false, &c->srv_anon, why, whysz)) != KH_OK)
		goto fail;
	if ((r = kh_gstore_open(c->datadir, &c->st, &w)) != KH_OK) {
		whyf(why, whysz, "%s", w.text);
		goto fail;
	}
	if ((r = load_state(c, why, whysz)) != KH_OK)
		goto fail;
	for (size_t i = 0; i < KG_GROUPS_MAX; i++) {
		struct kg_group *g = c->grp[i];
		if (g && g->g.enabled && (r = kg_endpoint_start(c, g, why, whysz)) != KH_OK)
			goto fail;
	}
	if (pthread_create(&c->replicator, NULL, kg_replicator_main, c) != 0) {
		whyf(why, whysz, "cannot start the replicator");
		r = KH_ERR_INTERNAL;
		goto fail;
	}
	c->replicator_started = true;
	if (pthread_create(&c->monitor, NULL, kg_monitor_main, c) != 0) {
		whyf(why, whysz, "cannot start the monitor");
		r = KH_ERR_INTERNAL;
		goto fail;
	}
	c->monitor_started = true;
	*out = c;
	return KH_OK;
fail:
	kg_core_stop(c);
	return r;
}

void kg_core_stop(struct kg_core *c)
{
	if (c == NULL)
		return;
	atomic_store(&c->stopping, true);
	kg_wake_replicator(c);
	if (c->monitor_started)
		pthread_join(c->monitor, NULL);
	if (c->replicator_started)
		pthread_join(c->replicator, NULL);
	for (size_t i = 0; i < KG_GROUPS_MAX; i++)
		if (c->grp[i] != NULL)
			group_free(c->grp[i]);
	while (c->dead_grps) {
		struct kg_group *n = c->dead_grps->next_dead;
		group_free(c->dead_grps);
		c->dead_grps = n;
	}
	while (c->dead_devs) {
		struct kg_dev *n = c->dead_devs->next_dead;
		dev_free(c->dead_devs);
		c->dead_devs = n;
	}
	kh_gstore_close(c->st);
	SSL_CTX_free(c->cli_ctx);
	SSL_CTX_free(c->anon_ctx);
	SSL_CTX_free(c->srv_mutual);
	SSL_CTX_free(c->srv_anon);
	if (c->password)
		kh_secure_free(c->password, c->cfg.password_len + 1);
	free(c->datadir);
	free(c->listen);
	free(c->ca_file);
	free(c->cert_file);
	free(c->key_file);
	free(c->srv_cert);
	free(c->srv_key);
	free(c->identity);
	pthread_rwlock_destroy(&c->mu);
	pthread_mutex_destroy(&c->wake_mu);
	pthread_cond_destroy(&c->wake);
	free(c);
}

struct kh_gstore *kg_core_store(struct kg_core *c)
{
	return c->st;
}

/* ---- groups ------------------------------------------------------------ */

static int store_err(int r, const struct kh_gstore_why *w, char *why, size_t whysz)
{
	whyf(why, whysz, "%s", w->text);
	return r;
}

/* The running group id, or NOT_FOUND with the reason. */
static int group_lookup(struct kg_core *c, int64_t id, struct kg_group **g, char *why,
                        size_t whysz)
{
	pthread_rwlock_rdlock(&c->mu);
	*g = kg_group_by_id(c, id);
	pthread_rwlock_unlock(&c->mu);
	if (*g == NULL) {
		whyf(why, whysz, "no group %lld", (long long)id);
		return KH_ERR_NOT_FOUND;
	}
	return KH_OK;
}

int kg_core_group_add(struct kg_core *c, const struct kh_gstore_group *in, int64_t *idout,
                      char *why, size_t whysz)
{
	struct kh_gstore_group row;
	struct kh_gstore_why w;
	struct kg_group *g = NULL;
	int64_t id;
	int r;

	whyf(why, whysz, "%s", "");
	if ((r = kh_gstore_group_add(c->st, in, &id, &w)) != KH_OK)
		return store_err(r, &w, why, whysz);
	if ((r = kh_gstore_group_get(c->st, id, &row, &w)) != KH_OK)
		return store_err(r, &w, why, whysz);
	pthread_rwlock_wrlock(&c->mu);
	r = group_install(c, &row, &g, why, whysz);
	pthread_rwlock_unlock(&c->mu);
	if (r == KH_OK && row.enabled)
		r = kg_endpoint_start(c, g, why, whysz);
	if (r != KH_OK) {
		/* nothing is left half made: the row goes too */
		if (g) {
			pthread_rwlock_wrlock(&c->mu);
			group_retire(c, g);
			pthread_rwlock_unlock(&c->mu);
		}
		if (kh_gstore_group_remove(c->st, id, &w) != KH_OK)
			log_warnx("group %lld: not removed after a failed start: %s", (long long)id,
			          w.text);
		return r;
	}
	kg_event(c, id, 0, KH_GEV_CONFIG, "group \"%s\" created (endpoint port %u)", row.name,
	         row.port);
	if (idout)
		*idout = id;
	return KH_OK;
}

static void reopen_pools(struct kg_core *c, struct kg_group *g)
{
	for (size_t j = 0; j < KG_DEVICES_MAX; j++) {
		struct kg_dev *d = g->dev[j];
		char w[KG_WHY_MAX];
		if (d && dev_pool_open(c, g, d, w, sizeof(w)) != KH_OK)
			log_warnx("device %lld: %s", (long long)d->d.id, w);
	}
}

int kg_core_group_modify(struct kg_core *c, int64_t id, const struct kh_gstore_group *in,
                         char *why, size_t whysz)
{
	struct kh_gstore_group row;
	struct kh_gstore_why w;
	struct kg_group *g;
	int r;

	whyf(why, whysz, "%s", "");
	if ((r = group_lookup(c, id, &g, why, whysz)) != KH_OK)
		return r;
	pthread_mutex_lock(&g->change_mu);
	if ((r = kh_gstore_group_modify(c->st, id, in, &w)) != KH_OK ||
	    (r = kh_gstore_group_get(c->st, id, &row, &w)) != KH_OK) {
		pthread_mutex_unlock(&g->change_mu);
		return store_err(r, &w, why, whysz);
	}
	struct kh_gstore_group old = g->g;
	bool restart = old.port != row.port || old.enabled != row.enabled ||
	               old.pairs[KH_GPAIR_EXCRYPT].conn != row.pairs[KH_GPAIR_EXCRYPT].conn ||
	               old.pairs[KH_GPAIR_EXCRYPT].allow != row.pairs[KH_GPAIR_EXCRYPT].allow;
	struct kg_endpoint *ep = NULL;
	if (restart) {
		pthread_rwlock_wrlock(&c->mu);
		ep = g->ep;
		g->ep = NULL;
		pthread_rwlock_unlock(&c->mu);
		kg_endpoint_stop(ep);
	}
	pthread_rwlock_wrlock(&c->mu);
	g->g = row;
	if (old.pairs[KH_GPAIR_EXCRYPT].conn != row.pairs[KH_GPAIR_EXCRYPT].conn)
		reopen_pools(c, g);
	atomic_fetch_add(&g->gen, 1);
	pthread_rwlock_unlock(&c->mu);
	if (restart && row.enabled && (r = kg_endpoint_start(c, g, why, whysz)) != KH_OK) {
		pthread_mutex_unlock(&g->change_mu);
		kg_event(c, id, 0, KH_GEV_REFUSAL, "endpoint not restarted: %s", why);
		return r;
	}
	pthread_mutex_unlock(&g->change_mu);
	kg_event(c, id, 0, KH_GEV_CONFIG, "group \"%s\" modified", row.name);
	return KH_OK;
}

int kg_core_group_remove(struct kg_core *c, int64_t id, char *why, size_t whysz)
{
	struct kh_gstore_why w;
	struct kg_group *g;
	int r;

	whyf(why, whysz, "%s", "");
	if ((r = group_lookup(c, id, &g, why, whysz)) != KH_OK)
		return r;
	pthread_mutex_lock(&g->change_mu);
	if ((r = kh_gstore_group_remove(c->st, id, &w)) != KH_OK) {
		pthread_mutex_unlock(&g->change_mu);
		return store_err(r, &w, why, whysz);
	}
	pthread_rwlock_wrlock(&c->mu);
	struct kg_endpoint *ep = g->ep;
	g->ep = NULL;
	group_retire(c, g);
	pthread_rwlock_unlock(&c->mu);
	pthread_mutex_unlock(&g->change_mu);
	kg_endpoint_stop(ep);
	kg_event(c, id, 0, KH_GEV_CONFIG, "group removed");
	return KH_OK;
}

int kg_core_group_check(struct kg_core *c, int64_t id, struct kg_check *out, char *why,
                        size_t whysz)
{
	struct kg_dev *devs[KG_DEVICES_MAX];
	size_t n = 0, prim = SIZE_MAX;
	struct kg_group *g;

	memset(out, 0, sizeof(*out));
	whyf(why, whysz, "%s", "");
	pthread_rwlock_rdlock(&c->mu);
	g = kg_group_by_id(c, id);
	if (g)
		for (size_t j = 0; j < KG_DEVICES_MAX && n < KG_CHECK_MAX; j++)
			if (g->dev[j]) {
				if (g->dev[j]->d.role == KH_GROLE_PRIMARY)
					prim = n;
				devs[n++] = g->dev[j];
			}
	pthread_rwlock_unlock(&c->mu);
	if (g == NULL) {
		whyf(why, whysz, "no group %lld", (long long)id);
		return KH_ERR_NOT_FOUND;
	}
	if (prim == SIZE_MAX) {
		whyf(why, whysz, "the group has no Primary");
		return KH_ERR_STATE;
	}
	/* one change at a time: the tables are compared between changes */
	pthread_mutex_lock(&g->change_mu);
	for (size_t i = 0; i < n; i++) {
		struct kg_check_member *m = &out->m[i];
		m->device_id = devs[i]->d.id;
		m->reached = kg_repl_ktck(c, devs[i], m->ck, &m->rows, m->msg, sizeof(m->msg)) == KH_OK;
	}
	pthread_mutex_unlock(&g->change_mu);
	out->n = n;
	out->all_agree = out->m[prim].reached;
	for (size_t i = 0; i < n; i++) {
		struct kg_check_member *m = &out->m[i];
		m->agrees = m->reached && out->m[prim].reached && strcmp(m->ck, out->m[prim].ck) == 0;
		if (m->reached && !m->agrees)
			snprintf(m->msg, sizeof(m->msg), "differs from the Primary's (%llu rows there, %llu here)",
			         (unsigned long long)out->m[prim].rows, (unsigned long long)m->rows);
		if (!m->agrees)
			out->all_agree = false;
	}
	return KH_OK;
}

/* ---- devices ----------------------------------------------------------- */

/* Copy a NUL-terminated text, cut to fit (facts are bounded on both
 * sides; the store's limits are the larger). */
static void cpy(char *dst, size_t n, const char *src)
{
	size_t l = strnlen(src, n - 1);
	memcpy(dst, src, l);
	dst[l] = '\0';
}

static void facts_from_store(const struct kh_gstore_facts *s, struct kg_member_facts *f)
{
	memset(f, 0, sizeof(*f));
	cpy(f->model, sizeof(f->model), s->model);
	cpy(f->version, sizeof(f->version), s->version);
	cpy(f->features, sizeof(f->features), s->features);
	cpy(f->kcv[KG_MK_FTK], sizeof(f->kcv[0]), s->kcv_ftk);
	cpy(f->kcv[KG_MK_PMK], sizeof(f->kcv[0]), s->kcv_pmk);
	cpy(f->kcv[KG_MK_BEK], sizeof(f->kcv[0]), s->kcv_bek);
	f->state_ok = true;
}

static void facts_to_store(const struct kg_member_facts *f, struct kh_gstore_facts *s)
{
	memset(s, 0, sizeof(*s));
	cpy(s->model, sizeof(s->model), f->model);
	cpy(s->version, sizeof(s->version), f->version);
	cpy(s->features, sizeof(s->features), f->features);
	cpy(s->kcv_ftk, sizeof(s->kcv_ftk), f->kcv[KG_MK_FTK]);
	cpy(s->kcv_pmk, sizeof(s->kcv_pmk), f->kcv[KG_MK_PMK]);
	cpy(s->kcv_bek, sizeof(s->kcv_bek), f->kcv[KG_MK_BEK]);
}

/* Drop a device from the running group and the store, after a failed add. */
static void dev_unwind(struct kg_core *c, struct kg_group *g, struct kg_dev *d, int64_t id)
{
	struct kh_gstore_why w;
	pthread_rwlock_wrlock(&c->mu);
	for (size_t j = 0; j < KG_DEVICES_MAX; j++)
		if (g->dev[j] == d) {
			g->dev[j] = NULL;
			if (d->d.role == KH_GROLE_PRODUCTION && g->prod_target > 0)
				g->prod_target--;
		}
	if (d) {
		d->removed = true;
		d->next_dead = c->dead_devs;
		c->dead_devs = d;
	}
	atomic_fetch_add(&g->gen, 1);
	pthread_rwlock_unlock(&c->mu);
	if (kh_gstore_device_remove(c->st, id, &w) != KH_OK)
		log_warnx("device %lld: not removed after a failed add: %s", (long long)id, w.text);
}

int kg_core_device_add(struct kg_core *c, const struct kh_gstore_device *in, int64_t *idout,
                       enum kg_admit *admit, char *why, size_t whysz)
{
	struct kg_member_facts pf, df;
	struct kg_member_dev md;
	struct kg_member_tls mt;
	struct kh_gstore_device row;
	struct kh_gstore_facts sf;
	struct kh_gstore_why w;
	struct kg_group *g;
	struct kg_dev *prim, *d = NULL;
	bool have_primary;
	char msg[KG_MEMBER_MSG_MAX] = "";
	int64_t id;
	int r;

	*admit = KG_ADMIT_OK;
	whyf(why, whysz, "%s", "");
	pthread_rwlock_rdlock(&c->mu);
	g = kg_group_by_id(c, in->group_id);
	prim = g ? kg_group_primary(g) : NULL;
	have_primary = prim != NULL;
	if (prim)
		facts_from_store(&prim->d.facts, &pf);
	if (g)
		kg_member_addr(c, g, in, &md);
	pthread_rwlock_unlock(&c->mu);
	if (g == NULL) {
		whyf(why, whysz, "no group %lld", (long long)in->group_id);
		return KH_ERR_NOT_FOUND;
	}
	kg_member_tls_of(c, &mt);
	struct kg_member_login lg = {.user = c->identity, .pw = c->password,
	                             .pwlen = c->cfg.password_len};
	/* the group's changes wait while a member joins: it must see them all */
	pthread_mutex_lock(&g->change_mu);
	r = kg_member_probe(&md, &mt, &lg, &df, msg, sizeof(msg));
	struct kg_member_probed pr = {.err = r, .msg = msg, .facts = &df};
	*admit = kg_member_admit(have_primary ? &pf : NULL, (enum kg_member_role)in->role, &pr, why,
	                         whysz);
	if (*admit != KG_ADMIT_OK) {
		pthread_mutex_unlock(&g->change_mu);
		kg_event(c, in->group_id, 0, KH_GEV_REFUSAL, "device %s port %u refused: %s", in->host,
		         in->port, why);
		return r != KH_OK ? r : KH_ERR_STATE;
	}
	if ((r = kh_gstore_device_add(c->st, in, &id, &w)) != KH_OK) {
		pthread_mutex_unlock(&g->change_mu);
		kg_event(c, in->group_id, 0, KH_GEV_REFUSAL, "device %s port %u refused: %s", in->host,
		         in->port, w.text);
		return store_err(r, &w, why, whysz);
	}
	facts_to_store(&df, &sf);
	if ((r = kh_gstore_device_set_facts(c->st, id, &sf, &w)) != KH_OK ||
	    (r = kh_gstore_device_get(c->st, id, &row, &w)) != KH_OK) {
		store_err(r, &w, why, whysz);
		goto unwind;
	}
	if ((d = dev_new(c, g, &row, why, whysz)) == NULL) {
		r = KH_ERR_TLS;
		goto unwind;
	}
	pthread_rwlock_wrlock(&c->mu);
	r = dev_install(g, d, why, whysz);
	pthread_rwlock_unlock(&c->mu);
	if (r != KH_OK) {
		dev_free(d);
		d = NULL;
		goto unwind;
	}
	if (row.role == KH_GROLE_PRIMARY) {
		atomic_store(&d->joined, true);
		g->last_cd[0] = '\0'; /* the config poll takes the new Primary's */
	} else if ((r = kg_repl_join(c, g, d, why, whysz)) != KH_OK) {
		goto unwind;
	}
	pthread_mutex_unlock(&g->change_mu);
	kg_event(c, row.group_id, id, KH_GEV_MEMBERSHIP, "device %s port %u added as %s%s",
	         row.host, row.port, kh_gstore_role_name(row.role),
	         row.role == KH_GROLE_PRIMARY ? "" : " (configuration and keys copied)");
	if (idout)
		*idout = id;
	kg_wake_replicator(c);
	return KH_OK;
unwind:
	pthread_mutex_unlock(&g->change_mu);
	kg_event(c, in->group_id, 0, KH_GEV_REFUSAL, "device %s port %u not added: %s", in->host,
	         in->port, why);
	dev_unwind(c, g, d, id);
	return r;
}

static int dev_lookup(struct kg_core *c, int64_t id, struct kg_group **g, struct kg_dev **d,
                      char *why, size_t whysz)
{
	pthread_rwlock_rdlock(&c->mu);
	*d = kg_dev_by_id(c, id, g);
	pthread_rwlock_unlock(&c->mu);
	if (*d == NULL) {
		whyf(why, whysz, "no device %lld", (long long)id);
		return KH_ERR_NOT_FOUND;
	}
	return KH_OK;
}

/* Reread every device row of g from the store (after promote). Under mu. */
static void reload_rows(struct kg_core *c, struct kg_group *g)
{
	for (size_t j = 0; j < KG_DEVICES_MAX; j++) {
		struct kg_dev *d = g->dev[j];
		struct kh_gstore_device row;
		struct kh_gstore_why w;
		if (d && kh_gstore_device_get(c->st, d->d.id, &row, &w) == KH_OK) {
			enum kh_gstore_state s = d->d.state;
			d->d = row;
			if (row.state != KH_GSTATE_DISABLED)
				d->d.state = s; /* the monitor's view, stored with each change */
		}
	}
	atomic_fetch_add(&g->gen, 1);
}

int kg_core_device_modify(struct kg_core *c, int64_t id, const struct kh_gstore_device *in,
                          char *why, size_t whysz)
{
	struct kh_gstore_device row;
	struct kh_gstore_why w;
	struct kg_group *g;
	struct kg_dev *d;
	int r;

	whyf(why, whysz, "%s", "");
	if ((r = dev_lookup(c, id, &g, &d, why, whysz)) != KH_OK)
		return r;
	pthread_mutex_lock(&g->change_mu);
	if ((r = kh_gstore_device_modify(c->st, id, in, &w)) != KH_OK ||
	    (r = kh_gstore_device_get(c->st, id, &row, &w)) != KH_OK) {
		pthread_mutex_unlock(&g->change_mu);
		return store_err(r, &w, why, whysz);
	}
	pthread_rwlock_wrlock(&c->mu);
	struct kh_gstore_device old = d->d;
	d->d = row;
	if (row.enabled && old.enabled)
		d->d.state = old.state;
	if (old.role == KH_GROLE_PRODUCTION && row.role == KH_GROLE_BACKUP && g->prod_target > 0)
		g->prod_target--;
	if (old.role == KH_GROLE_BACKUP && row.role == KH_GROLE_PRODUCTION)
		g->prod_target++;
	bool reopen = strcmp(old.host, row.host) != 0 || old.port != row.port ||
	              old.ping_timeout_ms != row.ping_timeout_ms;
	if (reopen && dev_pool_open(c, g, d, why, whysz) != KH_OK)
		log_warnx("device %lld: %s", (long long)id, why);
	atomic_fetch_add(&g->gen, 1);
	pthread_rwlock_unlock(&c->mu);
	pthread_mutex_unlock(&g->change_mu);
	whyf(why, whysz, "%s", "");
	if (old.enabled != row.enabled)
		kg_event(c, row.group_id, id, KH_GEV_STATE, "device %s", row.enabled ? "enabled" : "disabled");
	kg_event(c, row.group_id, id, KH_GEV_CONFIG, "device modified (%s, %s)",
	         kh_gstore_role_name(row.role), row.enabled ? "enabled" : "disabled");
	kg_wake_replicator(c);
	return KH_OK;
}

int kg_core_device_remove(struct kg_core *c, int64_t id, char *why, size_t whysz)
{
	struct kh_gstore_why w;
	struct kg_group *g;
	struct kg_dev *d;
	int r;

	whyf(why, whysz, "%s", "");
	if ((r = dev_lookup(c, id, &g, &d, why, whysz)) != KH_OK)
		return r;
	pthread_mutex_lock(&g->change_mu);
	if ((r = kh_gstore_device_remove(c->st, id, &w)) != KH_OK) {
		pthread_mutex_unlock(&g->change_mu);
		return store_err(r, &w, why, whysz);
	}
	pthread_rwlock_wrlock(&c->mu);
	for (size_t j = 0; j < KG_DEVICES_MAX; j++)
		if (g->dev[j] == d)
			g->dev[j] = NULL;
	/* a removed Production device has left service: prod_target stays,
	 * so a Backup takes its place */
	d->removed = true;
	d->next_dead = c->dead_devs;
	c->dead_devs = d;
	atomic_fetch_add(&g->gen, 1);
	pthread_rwlock_unlock(&c->mu);
	pthread_mutex_unlock(&g->change_mu);
	kg_event(c, g->g.id, id, KH_GEV_MEMBERSHIP, "device %s port %u removed", d->d.host, d->d.port);
	return KH_OK;
}

int kg_core_device_promote(struct kg_core *c, int64_t id, enum kh_gstore_role old_primary_role,
                           char *why, size_t whysz)
{
	struct kh_gstore_why w;
	struct kg_group *g;
	struct kg_dev *d;
	int r;

	whyf(why, whysz, "%s", "");
	if ((r = dev_lookup(c, id, &g, &d, why, whysz)) != KH_OK)
		return r;
	pthread_mutex_lock(&g->change_mu);
	if (!atomic_load(&d->joined) || atomic_load(&d->pending) != 0) {
		pthread_mutex_unlock(&g->change_mu);
		whyf(why, whysz, "device %lld is not caught up with the journal (%lld pending): "
		                 "synchronize it first", (long long)id, (long long)atomic_load(&d->pending));
		return KH_ERR_STATE;
	}
	if ((r = kh_gstore_device_promote(c->st, id, old_primary_role, &w)) != KH_OK) {
		pthread_mutex_unlock(&g->change_mu);
		return store_err(r, &w, why, whysz);
	}
	pthread_rwlock_wrlock(&c->mu);
	reload_rows(c, g);
	unsigned prod = 0;
	for (size_t j = 0; j < KG_DEVICES_MAX; j++)
		if (g->dev[j] && g->dev[j]->d.role == KH_GROLE_PRODUCTION)
			prod++;
	g->prod_target = prod;
	g->last_cd[0] = '\0';
	pthread_rwlock_unlock(&c->mu);
	pthread_mutex_unlock(&g->change_mu);
	kg_event(c, g->g.id, id, KH_GEV_PROMOTION, "device %s port %u promoted to Primary", d->d.host,
	         d->d.port);
	return KH_OK;
}

int kg_core_device_sync(struct kg_core *c, int64_t id, char *why, size_t whysz)
{
	struct kg_group *g;
	struct kg_dev *d;
	int r;

	whyf(why, whysz, "%s", "");
	if ((r = dev_lookup(c, id, &g, &d, why, whysz)) != KH_OK)
		return r;
	if (d->d.role == KH_GROLE_PRIMARY) {
		whyf(why, whysz, "the Primary is the source of a synchronization");
		return KH_ERR_STATE;
	}
	pthread_mutex_lock(&g->change_mu);
	r = kg_repl_join(c, g, d, why, whysz);
	pthread_mutex_unlock(&g->change_mu);
	if (r == KH_OK)
		kg_event(c, g->g.id, id, KH_GEV_MEMBERSHIP, "device synchronized again");
	return r;
}

int kg_core_device_diagnose(struct kg_core *c, int64_t id, struct kg_diag *out, char *why,
                            size_t whysz)
{
	struct kg_member_dev md;
	struct kg_member_tls mt;
	struct kh_gstore_device row;
	struct kg_group *g;
	struct kg_dev *d;
	bool genabled;
	int r;

	whyf(why, whysz, "%s", "");
	if ((r = dev_lookup(c, id, &g, &d, why, whysz)) != KH_OK)
		return r;
	pthread_rwlock_rdlock(&c->mu);
	row = d->d;
	genabled = g->g.enabled;
	kg_member_addr(c, g, &row, &md);
	pthread_rwlock_unlock(&c->mu);
	md.host = row.host;
	kg_member_tls_of(c, &mt);
	r = kg_member_diagnose(&md, &mt, genabled, row.enabled, out);
	if (out->failed >= 0)
		kg_event(c, row.group_id, id, KH_GEV_DIAGNOSE, "diagnose: %s failed: %s",
		         kg_diag_step_name((enum kg_diag_step)out->failed), out->step[out->failed].msg);
	else
		kg_event(c, row.group_id, id, KH_GEV_DIAGNOSE, "diagnose: every step passed");
	(void)r;
	return KH_OK;
}

int kg_core_device_live(struct kg_core *c, int64_t id, struct kg_live *out)
{
	struct kg_group *g;
	struct kg_dev *d;

	memset(out, 0, sizeof(*out));
	pthread_rwlock_rdlock(&c->mu);
	d = kg_dev_by_id(c, id, &g);
	if (d) {
		out->state = d->d.state;
		out->serving = kg_dev_serving(g, d);
		out->pending = atomic_load(&d->pending);
		out->synced = atomic_load(&d->joined) && out->pending == 0;
		out->in_flight = atomic_load(&d->in_flight);
		out->latency_ms = d->latency_ms;
		out->last_ping_ms = d->last_ping_ms;
		out->requests_per_s = d->rps;
		out->requests = atomic_load(&d->requests);
		out->errors = atomic_load(&d->errors);
		snprintf(out->last_error, sizeof(out->last_error), "%s", d->last_error);
	}
	pthread_rwlock_unlock(&c->mu);
	return d ? KH_OK : KH_ERR_NOT_FOUND;
}

int kg_core_device_admin_addr(struct kg_core *c, int64_t id, char *host, size_t hostsz,
                              unsigned *port)
{
	struct kg_dev *d;
	int r = KH_ERR_NOT_FOUND;
	pthread_rwlock_rdlock(&c->mu);
	d = kg_dev_by_id(c, id, NULL);
	if (d) {
		snprintf(host, hostsz, "%s", d->d.host);
		*port = d->d.admin_port;
		r = KH_OK;
	}
	pthread_rwlock_unlock(&c->mu);
	return r;
}

/* The console's relay: the guardian's own mutual-TLS context, the
 * device's Admin port, the usual name check and probe. The connection
 * carries only what the browser sealed to the HSM (RMKX, RMSG). */
int kg_core_device_admin_client(struct kg_core *c, int64_t id, struct kh_client **out, char *why,
                                size_t whysz)
{
	char host[KH_GSTORE_HOST_MAX + 1];
	struct kh_client_opts o;
	struct kh_client *cl;
	unsigned port = 0;
	int r;

	*out = NULL;
	if ((r = kg_core_device_admin_addr(c, id, host, sizeof(host), &port)) != KH_OK) {
		snprintf(why, whysz, "device %lld: no such device", (long long)id);
		return r;
	}
	kh_client_opts_init(&o);
	o.host = host;
	o.port = port;
	o.port_name = "Admin";
	o.tls = true;
	o.tls_ctx = c->cli_ctx;
	o.connect_timeout_ms = 5000;
	o.handshake_timeout_ms = 10000;
	if ((cl = kh_client_new(&o)) == NULL) {
		snprintf(why, whysz, "out of memory");
		return KH_ERR_NOMEM;
	}
	if ((r = kh_client_connect(cl)) != KH_OK) {
		snprintf(why, whysz, "%s %s", host, kh_client_error(cl));
		kh_client_free(cl);
		return r;
	}
	*out = cl;
	return KH_OK;
}

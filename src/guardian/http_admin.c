/*
 * The web console's relay of the sealed admin channel: a table of
 * Admin-port connections keyed by (HTTP session, device), each used by one
 * request at a time, and a sweeper that closes those idle too long or
 * whose session ended. It moves whole RMKX / RMSG frames and their answers;
 * the passwords and key components inside RMSG are sealed to the HSM, so
 * nothing here can read them. Session tokens are wiped when an entry goes.
 */
#include "guardian/http_admin.h"
#include "guardian/http_session.h"
#include "common/kh_buf.h"
#include "common/kh_client.h"
#include "common/kh_frame.h"
#include "common/kh_log.h"
#include "common/kh_mem.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct conn {
	char token[KG_SESS_TOKEN_HEX + 1];
	int64_t device;
	struct kh_client *cl; /* NULL until opened, and after a transport failure */
	pthread_mutex_t io;   /* one request at a time on cl */
	unsigned refs;        /* requests holding it (under the table's mu) */
	bool gone;            /* unlinked: the last holder frees it */
	int64_t last_ms;      /* under the table's mu */
	struct conn *next;
};

struct kg_admin {
	kg_admin_open_fn open;
	struct kg_core *core;
	kg_admin_live_fn live;
	void *live_arg;
	int64_t idle_ms, sweep_ms;
	pthread_mutex_t mu; /* the list, refs, gone, last_ms; then a session table's */
	pthread_cond_t cv;
	bool stopping, started;
	pthread_t sweeper;
	struct conn *list;
	unsigned n;
};

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void conn_free(struct conn *e)
{
	if (e == NULL)
		return;
	kh_client_free(e->cl); /* its TLS close, outside the table's lock */
	pthread_mutex_destroy(&e->io);
	kh_wipe(e, sizeof(*e));
	free(e);
}

/* Under mu: take e off the list; true when nobody holds it (free it then). */
static bool unlink_locked(struct kg_admin *t, struct conn *e)
{
	for (struct conn **pp = &t->list; *pp; pp = &(*pp)->next) {
		if (*pp == e) {
			*pp = e->next;
			t->n--;
			break;
		}
	}
	e->gone = true;
	e->next = NULL;
	return e->refs == 0;
}

static struct conn *find_locked(struct kg_admin *t, const char *token, int64_t device)
{
	for (struct conn *e = t->list; e; e = e->next)
		if (e->device == device && kh_ct_equal(e->token, token, KG_SESS_TOKEN_HEX))
			return e;
	return NULL;
}

static void release(struct kg_admin *t, struct conn *e)
{
	bool free_it;
	pthread_mutex_lock(&t->mu);
	e->last_ms = now_ms();
	free_it = --e->refs == 0 && e->gone;
	pthread_mutex_unlock(&t->mu);
	if (free_it)
		conn_free(e);
}

/* Drop e from the table (the caller holds a reference, released after). */
static void drop(struct kg_admin *t, struct conn *e)
{
	pthread_mutex_lock(&t->mu);
	if (!e->gone)
		(void)unlink_locked(t, e);
	pthread_mutex_unlock(&t->mu);
}

int kg_admin_call(struct kg_admin *t, const char *token, int64_t device, bool open,
                  const struct kh_buf *req, struct kh_buf *resp, struct kh_frame *f, bool *answered,
                  bool *opened, char *why, size_t whysz)
{
	struct conn *e;
	int r;

	*answered = *opened = false;
	why[0] = '\0';
	if (token == NULL || strlen(token) != KG_SESS_TOKEN_HEX)
		return KH_ERR_NOT_LOGGED_IN;
	pthread_mutex_lock(&t->mu);
	e = find_locked(t, token, device);
	if (e == NULL && !open) {
		pthread_mutex_unlock(&t->mu);
		snprintf(why, whysz, "no sealed channel to device %lld: send RMKX first",
		         (long long)device);
		return KH_ERR_STATE;
	}
	if (e == NULL) {
		if (t->n >= KG_ADMIN_MAX || (e = calloc(1, sizeof(*e))) == NULL) {
			pthread_mutex_unlock(&t->mu);
			snprintf(why, whysz,
			         "%d console connections to devices are open: try later",
			         KG_ADMIN_MAX);
			return KH_ERR_BUSY;
		}
		memcpy(e->token, token, KG_SESS_TOKEN_HEX);
		e->device = device;
		pthread_mutex_init(&e->io, NULL);
		e->next = t->list;
		t->list = e;
		t->n++;
	}
	e->refs++;
	e->last_ms = now_ms();
	pthread_mutex_unlock(&t->mu);

	pthread_mutex_lock(&e->io);
	if (e->gone) {
		r = KH_ERR_CLOSED;
		snprintf(why, whysz, "the console's connection to device %lld was closed meanwhile",
		         (long long)device);
		goto out;
	}
	if (e->cl != NULL && open && kh_client_stale(e->cl)) {
		/* the HSM closed it (idle before login, restart): a new RMKX may
		 * start afresh; an RMSG may not, its channel died with it */
		kh_client_free(e->cl);
		e->cl = NULL;
	}
	if (e->cl == NULL) {
		if (!open) {
			r = KH_ERR_STATE;
			snprintf(why, whysz, "no sealed channel to device %lld: send RMKX first",
			         (long long)device);
			drop(t, e);
			goto out;
		}
		if ((r = t->open(t->core, device, &e->cl, why, whysz)) != KH_OK) {
			e->cl = NULL;
			drop(t, e);
			goto out;
		}
		*opened = true;
	}
	kh_buf_reset(resp);
	f->cmd[0] = '\0';
	r = kh_client_call(e->cl, req, resp, f);
	*answered = r == KH_OK || (kh_buf_len(resp) > 0 && strcmp(f->cmd, "ERRO") == 0);
	if (!*answered) {
		snprintf(why, whysz, "device %lld: %s", (long long)device, kh_client_error(e->cl));
		drop(t, e);
	}
out:
	pthread_mutex_unlock(&e->io);
	release(t, e);
	return r;
}

unsigned kg_admin_close(struct kg_admin *t, const char *token, int64_t device)
{
	struct conn *dead = NULL, *next;
	unsigned n = 0;
	if (token == NULL || strlen(token) != KG_SESS_TOKEN_HEX)
		return 0;
	pthread_mutex_lock(&t->mu);
	for (struct conn *e = t->list; e; e = next) {
		next = e->next;
		if ((device == 0 || e->device == device) &&
		    kh_ct_equal(e->token, token, KG_SESS_TOKEN_HEX)) {
			n++;
			if (unlink_locked(t, e)) {
				e->next = dead;
				dead = e;
			}
		}
	}
	pthread_mutex_unlock(&t->mu);
	for (struct conn *e = dead; e; e = next) {
		next = e->next;
		conn_free(e);
	}
	return n;
}

unsigned kg_admin_count(struct kg_admin *t)
{
	unsigned n;
	pthread_mutex_lock(&t->mu);
	n = t->n;
	pthread_mutex_unlock(&t->mu);
	return n;
}

void kg_admin_sweep(struct kg_admin *t, int64_t now)
{
	struct conn *dead = NULL, *next;
	pthread_mutex_lock(&t->mu);
	for (struct conn *e = t->list; e; e = next) {
		next = e->next;
		if (e->refs > 0)
			continue; /* a request is using it now */
		if (now - e->last_ms >= t->idle_ms || !t->live(t->live_arg, e->token)) {
			(void)unlink_locked(t, e);
			e->next = dead;
			dead = e;
		}
	}
	pthread_mutex_unlock(&t->mu);
	for (struct conn *e = dead; e; e = next) {
		next = e->next;
		log_info("guardian api: console connection to device %lld closed (idle or session "
		         "ended)",
		         (long long)e->device);
		conn_free(e);
	}
}

static void *sweeper_main(void *arg)
{
	struct kg_admin *t = arg;
	pthread_mutex_lock(&t->mu);
	while (!t->stopping) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += t->sweep_ms / 1000;
		ts.tv_nsec += (long)(t->sweep_ms % 1000) * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		int w = pthread_cond_timedwait(&t->cv, &t->mu, &ts);
		if (t->stopping)
			break;
		if (w == ETIMEDOUT) {
			pthread_mutex_unlock(&t->mu);
			kg_admin_sweep(t, now_ms());
			pthread_mutex_lock(&t->mu);
		}
	}
	pthread_mutex_unlock(&t->mu);
	return NULL;
}

int kg_admin_new(kg_admin_open_fn open, struct kg_core *core, kg_admin_live_fn live, void *live_arg,
                 int64_t idle_ms, int64_t sweep_ms, struct kg_admin **out)
{
	struct kg_admin *t = calloc(1, sizeof(*t));
	*out = NULL;
	if (t == NULL)
		return KH_ERR_NOMEM;
	t->open = open;
	t->core = core;
	t->live = live;
	t->live_arg = live_arg;
	t->idle_ms = idle_ms > 0 ? idle_ms : KG_ADMIN_IDLE_MS;
	t->sweep_ms = sweep_ms > 0 ? sweep_ms : 5000;
	pthread_mutex_init(&t->mu, NULL);
	pthread_cond_init(&t->cv, NULL);
	if (pthread_create(&t->sweeper, NULL, sweeper_main, t) != 0) {
		pthread_cond_destroy(&t->cv);
		pthread_mutex_destroy(&t->mu);
		free(t);
		return KH_ERR_INTERNAL;
	}
	t->started = true;
	*out = t;
	return KH_OK;
}

void kg_admin_free(struct kg_admin *t)
{
	struct conn *e, *next;
	if (t == NULL)
		return;
	pthread_mutex_lock(&t->mu);
	t->stopping = true;
	pthread_cond_signal(&t->cv);
	pthread_mutex_unlock(&t->mu);
	if (t->started)
		pthread_join(t->sweeper, NULL);
	/* no request runs any more (the listener stopped first) */
	for (e = t->list; e; e = next) {
		next = e->next;
		conn_free(e);
	}
	pthread_cond_destroy(&t->cv);
	pthread_mutex_destroy(&t->mu);
	free(t);
}

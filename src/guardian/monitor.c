/*
 * The monitor: pings every enabled device of every group each interval
 * (sooner when a client request just failed on it), with the device's own
 * timeout; sets its state (up, degraded when slow or failing requests,
 * down when the ping fails) with an event on every change; samples
 * requests, errors and latency into the store's history; and polls the
 * Primary's configuration digest to replicate a change.
 */
#include "guardian/core_int.h"
#include "common/kh_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TICK_MS 100
#define PRUNE_EVERY_MS (600LL * 1000)
#define EVENTS_KEEP_MS (30LL * 86400 * 1000)

struct ping_job {
	struct kg_core *c;
	struct kg_group *g;
	struct kg_dev *d;
	struct kg_member_dev md;
	char host[KH_GSTORE_HOST_MAX + 1];
	pthread_t t;
	int r;
	double lat;
	char msg[KG_MEMBER_MSG_MAX];
};

static void *ping_main(void *arg)
{
	struct ping_job *j = arg;
	struct kg_member_tls mt;
	kg_member_tls_of(j->c, &mt);
	j->r = kg_member_ping(&j->md, &mt, NULL, &j->lat, j->msg, sizeof(j->msg));
	return NULL;
}

static void sleep_ms(int ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

/* Ping the devices due (all at the interval, suspects at once), in
 * parallel: a device that does not answer costs its own timeout only. */
static void ping_round(struct kg_core *c, bool all)
{
	struct ping_job *jobs = calloc(KG_GROUPS_MAX * KG_DEVICES_MAX, sizeof(*jobs));
	size_t n = 0;
	if (jobs == NULL)
		return;
	pthread_rwlock_rdlock(&c->mu);
	for (size_t i = 0; i < KG_GROUPS_MAX; i++) {
		struct kg_group *g = c->grp[i];
		if (g == NULL || g->removed)
			continue;
		for (size_t k = 0; k < KG_DEVICES_MAX; k++) {
			struct kg_dev *d = g->dev[k];
			if (d == NULL || !d->d.enabled)
				continue;
			if (!all && !atomic_load(&d->suspect))
				continue;
			struct ping_job *j = &jobs[n++];
			j->c = c;
			j->g = g;
			j->d = d;
			snprintf(j->host, sizeof(j->host), "%s", d->d.host);
			kg_member_addr(c, g, &d->d, &j->md);
			j->md.host = j->host;
		}
	}
	pthread_rwlock_unlock(&c->mu);
	for (size_t i = 0; i < n; i++)
		if (pthread_create(&jobs[i].t, NULL, ping_main, &jobs[i]) != 0)
			ping_main(&jobs[i]), jobs[i].t = 0;
	for (size_t i = 0; i < n; i++) {
		struct ping_job *j = &jobs[i];
		if (j->t)
			pthread_join(j->t, NULL);
		atomic_store(&j->d->suspect, false);
		enum kh_gstore_state s;
		char why[KG_WHY_MAX] = "";
		pthread_rwlock_wrlock(&c->mu);
		j->d->last_ping_ms = kg_now_ms();
		if (j->r == KH_OK) {
			j->d->latency_ms = j->lat;
			bool slow = j->lat * 2 > (double)j->d->d.ping_timeout_ms;
			bool failing = atomic_load(&j->d->win_errors) > 0;
			s = slow || failing ? KH_GSTATE_DEGRADED : KH_GSTATE_UP;
			if (slow)
				snprintf(why, sizeof(why), "ping %.1f ms", j->lat);
			else if (failing)
				snprintf(why, sizeof(why), "requests failing");
			j->d->last_error[0] = '\0';
		} else {
			s = KH_GSTATE_DOWN;
			snprintf(j->d->last_error, sizeof(j->d->last_error), "%s", j->msg);
			snprintf(why, sizeof(why), "%s", j->msg);
		}
		bool up_again = s != KH_GSTATE_DOWN && j->d->d.state == KH_GSTATE_DOWN;
		pthread_rwlock_unlock(&c->mu);
		kg_dev_set_state(c, j->g, j->d, s, why);
		if (up_again)
			kg_wake_replicator(c);
	}
	free(jobs);
}

/* Requests, errors and latency since the last sample, into the history. */
static void sample(struct kg_core *c, double secs)
{
	struct kh_gstore_metric m[KG_DEVICES_MAX];
	int64_t now = kg_now_ms();
	for (size_t i = 0; i < KG_GROUPS_MAX; i++) {
		size_t n = 0;
		pthread_rwlock_wrlock(&c->mu);
		struct kg_group *g = c->grp[i];
		if (g && !g->removed)
			for (size_t k = 0; k < KG_DEVICES_MAX; k++) {
				struct kg_dev *d = g->dev[k];
				if (d == NULL)
					continue;
				struct kh_gstore_metric *s = &m[n++];
				s->device_id = d->d.id;
				s->t_ms = now;
				s->requests = (int64_t)atomic_exchange(&d->win_requests, 0);
				s->errors = (int64_t)atomic_exchange(&d->win_errors, 0);
				s->lat_sum_us = (int64_t)atomic_exchange(&d->win_lat_sum_us, 0);
				s->lat_max_us = (int64_t)atomic_exchange(&d->win_lat_max_us, 0);
				d->rps = secs > 0 ? (double)s->requests / secs : 0;
			}
		pthread_rwlock_unlock(&c->mu);
		struct kh_gstore_why w;
		if (n && kh_gstore_metric_add(c->st, m, n, &w) != KH_OK)
			log_warnx("metrics not stored: %s", w.text);
	}
}

void *kg_monitor_main(void *arg)
{
	struct kg_core *c = arg;
	int64_t last_round = 0, last_prune = kg_now_ms();
	while (!atomic_load(&c->stopping)) {
		int64_t now = kg_now_ms();
		if (now - last_round >= c->cfg.ping_interval_ms) {
			double secs = last_round ? (double)(now - last_round) / 1000.0 : 0;
			ping_round(c, true);
			sample(c, secs);
			for (size_t i = 0; i < KG_GROUPS_MAX && !atomic_load(&c->stopping); i++) {
				pthread_rwlock_rdlock(&c->mu);
				struct kg_group *g = c->grp[i] && !c->grp[i]->removed ? c->grp[i] : NULL;
				pthread_rwlock_unlock(&c->mu);
				if (g)
					(void)kg_repl_config(c, g, false);
			}
			last_round = now;
		} else {
			ping_round(c, false);
		}
		if (now - last_prune >= PRUNE_EVERY_MS) {
			struct kh_gstore_why w;
			if (kh_gstore_metric_prune(c->st, now, &w) != KH_OK ||
			    kh_gstore_event_prune(c->st, now - EVENTS_KEEP_MS, &w) != KH_OK)
				log_warnx("prune: %s", w.text);
			last_prune = now;
		}
		sleep_ms(TICK_MS);
	}
	return NULL;
}

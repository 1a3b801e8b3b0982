/*
 * Inside keyhold-guardian's core: the running groups and devices shared by
 * core.c (actions), endpoint.c (client connections and routing), repl.c
 * (journal, joining, configuration) and monitor.c (pings, states, metrics).
 *
 * Locking, outermost first: a group's change_mu (one key-changing request,
 * a join or a catch-up at a time, so members apply the journal in order),
 * then the core's rwlock mu (the groups and devices arrays and each
 * device's copy of its row: readers route, writers change membership),
 * then the store's own lock. Per-device counters are atomics.
 */
#ifndef KG_CORE_INT_H
#define KG_CORE_INT_H

#include "guardian/guardian.h"

#include <pthread.h>
#include <stdatomic.h>

struct kh_buf;
struct kh_frame;
struct kh_pool;
struct ssl_ctx_st;

#define KG_GROUPS_MAX 64
#define KG_DEVICES_MAX 32 /* per group; a client's member connections are indexed by it */

struct kg_dev {
	struct kh_gstore_device d;   /* the stored row (under core mu) */
	struct kh_pool *gpool;       /* the guardian's own identity on it */
	atomic_uint in_flight;       /* client requests on it now */
	atomic_ulong requests, errors;
	/* since the monitor's last metrics sample */
	atomic_ulong win_requests, win_errors, win_lat_sum_us, win_lat_max_us;
	atomic_llong pending;        /* journal entries not applied */
	atomic_bool joined;          /* full copy made (or recorded before) */
	atomic_bool suspect;         /* a client request failed on it: ping now */
	/* under core mu */
	double latency_ms;
	int64_t last_ping_ms;
	double rps;
	char last_error[KG_WHY_MAX];
	bool removed;                /* gone: kept (on dead_devs) until stop, since
	                              * client threads may still hold it */
	struct kg_dev *next_dead;
	pthread_mutex_t login_mu;    /* one login of gpool at a time */
};

struct kg_endpoint;

struct kg_group {
	struct kh_gstore_group g;    /* under core mu */
	pthread_mutex_t change_mu;
	struct kg_dev *dev[KG_DEVICES_MAX]; /* under core mu; NULL: free */
	unsigned prod_target;        /* Production devices the group should have in service */
	atomic_uint gen;             /* bumped on every membership or state change */
	atomic_uint rr;              /* turns among equally loaded serving devices */
	atomic_uint in_flight;       /* client requests on its members now */
	char last_cd[65];            /* the Primary's configuration digest last replicated */
	struct kg_endpoint *ep;      /* NULL when the group is disabled */
	bool removed;                /* gone from grp[] (its slot free again) and kept on
	                              * dead_grps until stop: threads may still hold it */
	struct kg_group *next_dead;
};

struct kg_core {
	struct kg_core_cfg cfg;      /* strings copied; the password on the secure heap */
	char *datadir, *listen, *ca_file, *cert_file, *key_file, *srv_cert, *srv_key, *identity,
	    *password;
	struct kh_gstore *st;
	struct ssl_ctx_st *cli_ctx;  /* toward members: mutual (the guardian's certificate) */
	struct ssl_ctx_st *anon_ctx; /* toward members: server-only TLS */
	struct ssl_ctx_st *srv_mutual, *srv_anon; /* group endpoints */
	pthread_rwlock_t mu;
	struct kg_group *grp[KG_GROUPS_MAX];
	atomic_bool stopping;
	pthread_t monitor, replicator;
	bool monitor_started, replicator_started;
	pthread_mutex_t wake_mu;
	pthread_cond_t wake;         /* the replicator's: work may be due */
	bool wake_flag;
	struct kg_dev *dead_devs;    /* removed devices, freed at stop */
	struct kg_group *dead_grps;  /* removed groups, freed at stop */
};

/* core.c */
struct kg_group *kg_group_by_id(struct kg_core *c, int64_t id);      /* under mu */
struct kg_dev *kg_dev_by_id(struct kg_core *c, int64_t id, struct kg_group **g); /* under mu */
struct kg_dev *kg_group_primary(struct kg_group *g);                 /* under mu */
void kg_event(struct kg_core *c, int64_t group, int64_t dev, enum kh_gstore_ekind k,
              const char *fmt, ...) __attribute__((format(printf, 5, 6)));
void kg_wake_replicator(struct kg_core *c);
int64_t kg_now_ms(void);
/* Which Excrypt connection type the group uses toward its members. */
enum kg_member_conn kg_group_conn(const struct kg_group *g);
void kg_member_addr(const struct kg_core *c, const struct kg_group *g,
                    const struct kh_gstore_device *d, struct kg_member_dev *out);
void kg_member_tls_of(const struct kg_core *c, struct kg_member_tls *out);
/* A device serves client requests now: enabled, joined, caught up, not
 * down, balancing on, and Primary, Production, or a Backup while the
 * group lacks Production devices in service. Under mu. */
bool kg_dev_serving(const struct kg_group *g, const struct kg_dev *d);
/* Sets a device's state (stored, an event when it changes, gen bumped). */
void kg_dev_set_state(struct kg_core *c, struct kg_group *g, struct kg_dev *d,
                      enum kh_gstore_state s, const char *why);

/* One request on d as the guardian's own identity (logging in first when
 * needed); why names the device and the step on failure. */
int kg_dev_call(struct kg_core *c, struct kg_dev *d, const struct kh_buf *req, struct kh_buf *resp,
                struct kh_frame *f, char *why, size_t whysz);

/* endpoint.c */
KH_MUST_CHECK int kg_endpoint_start(struct kg_core *c, struct kg_group *g, char *why,
                                    size_t whysz);
void kg_endpoint_stop(struct kg_endpoint *ep);

/* repl.c */
/* Is this request key-changing (it runs on the Primary and is replicated)? */
bool kg_key_changing(const struct kh_frame *f);
/* Run a key-changing request on the Primary through send (the client's
 * own connection, logged in as the client) and replicate its effect:
 * journal first, then every member that is up, then the answer is
 * returned in resp. Takes the group's change_mu. */
typedef int (*kg_send_fn)(void *arg, struct kg_dev *primary, const struct kh_buf *req,
                          struct kh_buf *resp, struct kh_frame *f);
int kg_repl_key_change(struct kg_core *c, struct kg_group *g, const struct kh_buf *req,
                       const struct kh_frame *rf, kg_send_fn send, void *arg,
                       struct kh_buf *resp, struct kh_frame *f, char *why, size_t whysz);
/* A full copy of the Primary's configuration and key table to d, then the
 * table check; marks d joined and its journal synced. The caller holds
 * g's change_mu. */
int kg_repl_join(struct kg_core *c, struct kg_group *g, struct kg_dev *d, char *why, size_t whysz);
/* Apply d's due journal entries in order (change_mu taken). */
int kg_repl_catch_up(struct kg_core *c, struct kg_group *g, struct kg_dev *d);
/* Configuration: when the Primary's digest moved, export, journal, apply.
 * wait false: give up at once when the group's change lock is taken. */
int kg_repl_config(struct kg_core *c, struct kg_group *g, bool wait);
/* KTCK of the whole table on d through the guardian's identity. */
int kg_repl_ktck(struct kg_core *c, struct kg_dev *d, char ck[65], uint64_t *rows, char *why, size_t whysz);
void *kg_replicator_main(void *arg);

/* monitor.c */
void *kg_monitor_main(void *arg);

#endif

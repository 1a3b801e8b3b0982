/*
 * keyhold-guardian's core: the running state of device groups (endpoints,
 * member pools, replication, monitoring) and the actions its interfaces
 * (REST API, console, CLI through the API) call. Every action checks and
 * records through the store (store.h), probes and diagnoses through
 * member.h, and returns a kh_err with a one-line reason in why ("" on
 * success). Thread-safe: the HTTP threads, the group endpoints, the
 * replicator and the monitor all call in.
 */
#ifndef KG_GUARDIAN_H
#define KG_GUARDIAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "common/kh_err.h"
#include "guardian/member.h"
#include "guardian/store.h"

struct kg_core;

#define KG_WHY_MAX 512

/* What the daemon is started with (main.c fills it from its options). */
struct kg_core_cfg {
	const char *datadir;
	const char *listen;          /* address of the group endpoints (127.0.0.1) */
	const char *ca_file;         /* CA(s) for HSM server certificates and for
	                              * client certificates on group endpoints */
	const char *cert_file;       /* the guardian's certificate: client side
	                              * toward members, and server side unless
	                              * server_cert_file is given */
	const char *key_file;
	const char *server_cert_file; /* server side of group endpoints and HTTPS, when
	                               * another certificate than cert_file (a
	                               * client-only one, as TSGN issues) */
	const char *server_key_file;
	const char *identity;        /* the guardian's identity on every member */
	const char *password;        /* its password (wiped by main after start) */
	size_t password_len;
	int ping_interval_ms;        /* monitor period (default 2000) */
	int request_timeout_ms;      /* each member request (default 60000) */
	unsigned max_clients;        /* per group endpoint (default 1024) */
};

KH_MUST_CHECK int kg_core_start(const struct kg_core_cfg *cfg, struct kg_core **out, char *why,
                                size_t whysz);
/* Stops endpoints, replicator and monitor, wipes held passwords, frees. */
void kg_core_stop(struct kg_core *c);
struct kh_gstore *kg_core_store(struct kg_core *c);

/* ---- groups ---------------------------------------------------------- */

/* Adds (and starts its endpoint when enabled). *id may be NULL. */
KH_MUST_CHECK int kg_core_group_add(struct kg_core *c, const struct kh_gstore_group *g, int64_t *id,
                                    char *why, size_t whysz);
KH_MUST_CHECK int kg_core_group_modify(struct kg_core *c, int64_t id,
                                       const struct kh_gstore_group *g, char *why, size_t whysz);
KH_MUST_CHECK int kg_core_group_remove(struct kg_core *c, int64_t id, char *why, size_t whysz);

/* The key-table check: KTCK of every member against the Primary's. */
struct kg_check_member {
	int64_t device_id;
	bool reached;     /* KTCK answered */
	bool agrees;      /* same value as the Primary's */
	uint64_t rows;
	char ck[65];      /* hex */
	char msg[KG_WHY_MAX];
};
#define KG_CHECK_MAX 32
struct kg_check {
	size_t n;
	struct kg_check_member m[KG_CHECK_MAX];
	bool all_agree;
};
KH_MUST_CHECK int kg_core_group_check(struct kg_core *c, int64_t id, struct kg_check *out,
                                      char *why, size_t whysz);

/* ---- devices --------------------------------------------------------- */

/* Probes the device, admits it (kg_member_admit: the reason in why and
 * *admit), records it, copies the Primary's configuration and key table to
 * it (a Production or Backup device) and starts monitoring it. The device
 * serves once the copy is made and its key-table check agrees. */
KH_MUST_CHECK int kg_core_device_add(struct kg_core *c, const struct kh_gstore_device *d,
                                     int64_t *id, enum kg_admit *admit, char *why, size_t whysz);
KH_MUST_CHECK int kg_core_device_modify(struct kg_core *c, int64_t id,
                                        const struct kh_gstore_device *d, char *why,
                                        size_t whysz);
KH_MUST_CHECK int kg_core_device_remove(struct kg_core *c, int64_t id, char *why, size_t whysz);
KH_MUST_CHECK int kg_core_device_promote(struct kg_core *c, int64_t id,
                                         enum kh_gstore_role old_primary_role, char *why,
                                         size_t whysz);
/* "Synchronize again": a full copy from the Primary, then the check. */
KH_MUST_CHECK int kg_core_device_sync(struct kg_core *c, int64_t id, char *why, size_t whysz);
KH_MUST_CHECK int kg_core_device_diagnose(struct kg_core *c, int64_t id, struct kg_diag *out,
                                          char *why, size_t whysz);

/* What the guardian sees of a device now (not stored). */
struct kg_live {
	enum kh_gstore_state state;
	bool serving;          /* takes client requests now */
	bool synced;           /* caught up: no pending journal entries */
	int64_t pending;       /* journal entries not applied yet */
	unsigned in_flight;    /* client requests on it now */
	double latency_ms;     /* last ping's round trip, -1 when none */
	int64_t last_ping_ms;  /* when (ms since the epoch), 0 when never */
	double requests_per_s; /* over the last 10 s */
	uint64_t requests, errors; /* since the guardian started */
	char last_error[KG_WHY_MAX];
};
KH_MUST_CHECK int kg_core_device_live(struct kg_core *c, int64_t id, struct kg_live *out);

/* For the Remote Manage relay: where the device's Admin port is. */
KH_MUST_CHECK int kg_core_device_admin_addr(struct kg_core *c, int64_t id, char *host,
                                            size_t hostsz, unsigned *port);

/* For the console's sealed-channel relay: a client connected to the
 * device's Admin port with the guardian's client certificate (mutual TLS,
 * the server's name checked, an ECHO probe). KH_ERR_NOT_FOUND for an
 * unknown device; a connection failure names the port and step in why. */
struct kh_client;
KH_MUST_CHECK int kg_core_device_admin_client(struct kg_core *c, int64_t id,
                                              struct kh_client **out, char *why, size_t whysz);

/* ---- the HTTP listener (http.c) -------------------------------------- */

struct kg_http;
struct kg_http_cfg {
	const char *listen;    /* default 127.0.0.1 */
	unsigned port;         /* default 8080 */
	bool tls;              /* default true; false only for tests of the clear mode */
	const char *cert_file; /* server certificate (PEM chain) */
	const char *key_file;  /* its key (PEM) */
	unsigned session_idle_s; /* a session expires after this long unused (900) */
};
KH_MUST_CHECK int kg_http_start(struct kg_core *c, const struct kg_http_cfg *cfg,
                                struct kg_http **out, char *why, size_t whysz);
void kg_http_stop(struct kg_http *h);

/* ---- the guardian's own users (users.c) ------------------------------ */

/* The first user, in the Administrator role, when the store has no user
 * yet (keyhold-guardian --init-admin); KH_ERR_EXISTS when it has one. */
KH_MUST_CHECK int kg_users_bootstrap(struct kh_gstore *st, const char *name, const char *pw,
                                     size_t pwlen, char *why, size_t whysz);

#endif

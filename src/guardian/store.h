/*
 * The guardian's state store: device groups, their devices, the replication
 * journal, events and metrics, in one SQLite database in the data dir.
 * Every rule about groups and devices is enforced here, each refusal with a
 * reason; every change is one transaction, so a refused or failed change
 * leaves the database as it was. It never sees a key in clear: journal
 * payloads are opaque (wrapped rows, sealed configuration).
 */
#ifndef KH_GUARDIAN_STORE_H
#define KH_GUARDIAN_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "common/kh_err.h"

struct kh_gstore;

/* Why a call was refused: a short text naming the field or rule (never a
 * secret). Every fallible function takes one; NULL when not wanted. */
struct kh_gstore_why {
	char text[192];
};

#define KH_GSTORE_NAME_MAX 64     /* group name, owner */
#define KH_GSTORE_DESC_MAX 256    /* group description */
#define KH_GSTORE_HOST_MAX 253    /* DNS name or IP literal */
#define KH_GSTORE_FACT_MAX 64     /* model, version */
#define KH_GSTORE_FEATURES_MAX 256
#define KH_GSTORE_KCV_MAX 16      /* hex digits of a check value */
#define KH_GSTORE_TEXT_MAX 512    /* event text, journal last error */
#define KH_GSTORE_PAYLOAD_MAX (1u << 20)
#define KH_GSTORE_PING_MIN_MS 100
#define KH_GSTORE_PING_MAX_MS 60000
#define KH_GSTORE_PING_DEFAULT_MS 5000
#define KH_GSTORE_PORT_DEFAULT 9100
#define KH_GSTORE_ADMIN_PORT_DEFAULT 9009

/* Enums have a fixed text each (stored as that text, shown by the CLI/API);
 * parse returns KH_ERR_BAD_FIELD for unknown text. */
enum kh_gstore_conn { KH_GCONN_CLEAR, KH_GCONN_SSL, KH_GCONN_ANON_TLS };
enum kh_gstore_pair { KH_GPAIR_EXCRYPT, KH_GPAIR_HTTP, KH_GPAIR_INTERNATIONAL, KH_GPAIR_COUNT };
enum kh_gstore_role { KH_GROLE_PRIMARY, KH_GROLE_PRODUCTION, KH_GROLE_BACKUP };
enum kh_gstore_state { KH_GSTATE_UP, KH_GSTATE_DEGRADED, KH_GSTATE_DOWN, KH_GSTATE_DISABLED };
enum kh_gstore_jkind { KH_GJ_KEY_ROW, KH_GJ_KEY_DELETE, KH_GJ_CONFIG };
enum kh_gstore_jstate { KH_GJS_PENDING, KH_GJS_APPLIED, KH_GJS_FAILED };
enum kh_gstore_ekind {
	KH_GEV_STATE,       /* a device's state changed */
	KH_GEV_REFUSAL,     /* a change or a member was refused */
	KH_GEV_PROMOTION,
	KH_GEV_MEMBERSHIP,  /* device added / removed / synchronized */
	KH_GEV_REPLICATION,
	KH_GEV_CONFIG,
	KH_GEV_DIAGNOSE
};
enum kh_gstore_res { KH_GRES_10S, KH_GRES_1M };

const char *kh_gstore_conn_name(enum kh_gstore_conn v);   /* "Clear", "SSL", "Anonymous TLS" */
const char *kh_gstore_pair_name(enum kh_gstore_pair v);   /* "Excrypt/Standard", "HTTP", "International" */
const char *kh_gstore_role_name(enum kh_gstore_role v);   /* "Primary", "Production", "Backup" */
const char *kh_gstore_state_name(enum kh_gstore_state v); /* "up", "degraded", "down", "disabled" */
const char *kh_gstore_jkind_name(enum kh_gstore_jkind v); /* "key_row", "key_delete", "config" */
const char *kh_gstore_jstate_name(enum kh_gstore_jstate v); /* "pending", "applied", "failed" */
const char *kh_gstore_ekind_name(enum kh_gstore_ekind v); /* "state", "refusal", ... */
/* Case-insensitive. */
KH_MUST_CHECK int kh_gstore_conn_parse(const char *s, enum kh_gstore_conn *out);
KH_MUST_CHECK int kh_gstore_role_parse(const char *s, enum kh_gstore_role *out);
KH_MUST_CHECK int kh_gstore_state_parse(const char *s, enum kh_gstore_state *out);
KH_MUST_CHECK int kh_gstore_jkind_parse(const char *s, enum kh_gstore_jkind *out);
KH_MUST_CHECK int kh_gstore_ekind_parse(const char *s, enum kh_gstore_ekind *out);

/* Open (creating the 0700 dir and the 0600 file "guardian.db" in it) and
 * migrate to the newest schema. A dir or file open to group/others is
 * refused (KH_ERR_PERMISSION_DENIED) rather than silently used. */
KH_MUST_CHECK int kh_gstore_open(const char *datadir, struct kh_gstore **out,
				 struct kh_gstore_why *why);
void kh_gstore_close(struct kh_gstore *st);
int kh_gstore_schema_version(struct kh_gstore *st);

/* ---- groups ---------------------------------------------------------- */

struct kh_gstore_conn_pair {
	bool allow;
	enum kh_gstore_conn conn;
};

struct kh_gstore_group {
	int64_t id;                                /* set by the store */
	char name[KH_GSTORE_NAME_MAX + 1];         /* unique (case-insensitive) */
	char description[KH_GSTORE_DESC_MAX + 1];
	char owner[KH_GSTORE_NAME_MAX + 1];
	char type[8];                              /* "HSM", the only type */
	bool opt_configuration, opt_monitoring, opt_balancing;
	struct kh_gstore_conn_pair pairs[KH_GPAIR_COUNT];
	uint16_t port;                             /* the group's endpoint, unique */
	bool enabled;
	int64_t journal_head;                      /* read only: last journal seq */
	int64_t created_ms, changed_ms;            /* read only */
};

/* Defaults: type HSM, all three options on, Excrypt/Standard allowed and
 * HTTP/International not (the reference's advice for PKCS #11), every pair
 * SSL, enabled; name and port left for the caller. */
void kh_gstore_group_defaults(struct kh_gstore_group *g);
KH_MUST_CHECK int kh_gstore_group_add(struct kh_gstore *st, const struct kh_gstore_group *g,
				      int64_t *id, struct kh_gstore_why *why);
/* Replaces every settable field of group id with g's (a rename included). */
KH_MUST_CHECK int kh_gstore_group_modify(struct kh_gstore *st, int64_t id,
					 const struct kh_gstore_group *g,
					 struct kh_gstore_why *why);
KH_MUST_CHECK int kh_gstore_group_get(struct kh_gstore *st, int64_t id, struct kh_gstore_group *out,
				      struct kh_gstore_why *why);
KH_MUST_CHECK int kh_gstore_group_find(struct kh_gstore *st, const char *name,
				       struct kh_gstore_group *out, struct kh_gstore_why *why);
/* By name; up to max into out, *n filled. KH_ERR_TOO_LARGE if more exist. */
KH_MUST_CHECK int kh_gstore_group_list(struct kh_gstore *st, struct kh_gstore_group *out,
				       size_t max, size_t *n, struct kh_gstore_why *why);
/* Refused (KH_ERR_IN_USE) while the group has devices: remove them first,
 * the Primary last. Its journal goes with it; its events stay. */
KH_MUST_CHECK int kh_gstore_group_remove(struct kh_gstore *st, int64_t id,
					 struct kh_gstore_why *why);

/* ---- devices --------------------------------------------------------- */

/* Learned from the device (PRMD/STAT/MKST), not configured. */
struct kh_gstore_facts {
	char model[KH_GSTORE_FACT_MAX + 1];
	char version[KH_GSTORE_FACT_MAX + 1];
	char features[KH_GSTORE_FEATURES_MAX + 1];
	char kcv_ftk[KH_GSTORE_KCV_MAX + 1];   /* hex, "" when not loaded */
	char kcv_pmk[KH_GSTORE_KCV_MAX + 1];
	char kcv_bek[KH_GSTORE_KCV_MAX + 1];
};

struct kh_gstore_device {
	int64_t id;                             /* set by the store */
	int64_t group_id;                       /* fixed once added */
	char host[KH_GSTORE_HOST_MAX + 1];      /* name or IP literal */
	uint16_t port, admin_port;
	enum kh_gstore_role role;
	bool balancing;
	uint32_t ping_timeout_ms;
	bool enabled;
	/* read only through add/modify: */
	struct kh_gstore_facts facts;
	enum kh_gstore_state state;
	int64_t repl_version;                   /* highest seq applied contiguously */
	int64_t created_ms, changed_ms;
};

/* Defaults: ports 9100/9009, Production, balancing on, 5 s ping, enabled. */
void kh_gstore_device_defaults(struct kh_gstore_device *d);
/* Rules: the group exists; its first device is the Primary; one Primary
 * per group; host:port in no other group (nor twice in this one). A new
 * device starts in state "down" ("disabled" if not enabled) with its
 * replication version at the group's journal head: the full copy it gets
 * on joining covers what came before. */
KH_MUST_CHECK int kh_gstore_device_add(struct kh_gstore *st, const struct kh_gstore_device *d,
				       int64_t *id, struct kh_gstore_why *why);
/* Host, ports, balancing, ping timeout, enabled, and the role between
 * Production and Backup. To or from Primary: kh_gstore_device_promote.
 * Disabling sets the state to disabled; enabling sets it to down. */
KH_MUST_CHECK int kh_gstore_device_modify(struct kh_gstore *st, int64_t id,
					  const struct kh_gstore_device *d,
					  struct kh_gstore_why *why);
/* In one transaction: the group's Primary becomes old_primary_role
 * (Production or Backup) and device id becomes the Primary. */
KH_MUST_CHECK int kh_gstore_device_promote(struct kh_gstore *st, int64_t id,
					   enum kh_gstore_role old_primary_role,
					   struct kh_gstore_why *why);
KH_MUST_CHECK int kh_gstore_device_set_facts(struct kh_gstore *st, int64_t id,
					     const struct kh_gstore_facts *f,
					     struct kh_gstore_why *why);
KH_MUST_CHECK int kh_gstore_device_set_state(struct kh_gstore *st, int64_t id,
					     enum kh_gstore_state s, struct kh_gstore_why *why);
KH_MUST_CHECK int kh_gstore_device_get(struct kh_gstore *st, int64_t id,
				       struct kh_gstore_device *out, struct kh_gstore_why *why);
/* group_id 0: every device. By group, then id. KH_ERR_TOO_LARGE if more. */
KH_MUST_CHECK int kh_gstore_device_list(struct kh_gstore *st, int64_t group_id,
					struct kh_gstore_device *out, size_t max, size_t *n,
					struct kh_gstore_why *why);
/* The Primary is refused while other devices remain (promote another
 * first). Its journal states and metrics go with it. */
KH_MUST_CHECK int kh_gstore_device_remove(struct kh_gstore *st, int64_t id,
					  struct kh_gstore_why *why);

/* ---- journal --------------------------------------------------------- */

struct kh_gstore_jentry {
	int64_t seq, group_id, created_ms;
	enum kh_gstore_jkind kind;
	const uint8_t *payload;                 /* valid during the callback only */
	size_t payload_len;
	/* this member's state (journal_pending only) */
	enum kh_gstore_jstate state;
	int tries;
	char last_error[KH_GSTORE_TEXT_MAX + 1];
};

/* Appends an entry and one "pending" state per device of the group, in one
 * transaction. origin (0: none) is the member the change ran on: its state
 * is "applied" at once. *seq (may be NULL) gets the entry's number. */
KH_MUST_CHECK int kh_gstore_journal_append(struct kh_gstore *st, int64_t group_id,
					   enum kh_gstore_jkind kind, const void *payload,
					   size_t len, int64_t origin, int64_t *seq,
					   struct kh_gstore_why *why);
/* Idempotent; advances the member's replication version when contiguous. */
KH_MUST_CHECK int kh_gstore_journal_applied(struct kh_gstore *st, int64_t seq, int64_t device,
					    struct kh_gstore_why *why);
/* tries + 1, last error kept; the entry stays due. Refused once applied. */
KH_MUST_CHECK int kh_gstore_journal_failed(struct kh_gstore *st, int64_t seq, int64_t device,
					   const char *error, struct kh_gstore_why *why);
/* A member's due entries (pending or failed) in seq order, at most max
 * (0: all). fn returning non-zero stops the walk (the value is returned).
 * fn runs under the store's lock: do not block in it. */
typedef int (*kh_gstore_jentry_fn)(const struct kh_gstore_jentry *e, void *arg);
KH_MUST_CHECK int kh_gstore_journal_pending(struct kh_gstore *st, int64_t device, size_t max,
					    kh_gstore_jentry_fn fn, void *arg,
					    struct kh_gstore_why *why);
KH_MUST_CHECK int kh_gstore_journal_count_pending(struct kh_gstore *st, int64_t device,
						  int64_t *n, struct kh_gstore_why *why);
/* After a full copy ("synchronize again"): every due entry up to seq is
 * marked applied and the version moves to at least seq. */
KH_MUST_CHECK int kh_gstore_journal_synced(struct kh_gstore *st, int64_t device, int64_t seq,
					   struct kh_gstore_why *why);
/* Deletes entries applied by every member; *removed (may be NULL). */
KH_MUST_CHECK int kh_gstore_journal_prune(struct kh_gstore *st, int64_t *removed,
					  struct kh_gstore_why *why);

/* ---- events ---------------------------------------------------------- */

struct kh_gstore_event {
	int64_t id, t_ms, group_id, device_id;  /* 0: none */
	enum kh_gstore_ekind kind;
	char text[KH_GSTORE_TEXT_MAX + 1];
};

/* ids are not checked against the tables: events outlive what they name. */
KH_MUST_CHECK int kh_gstore_event_add(struct kh_gstore *st, int64_t t_ms, int64_t group_id,
				      int64_t device_id, enum kh_gstore_ekind kind,
				      const char *text, struct kh_gstore_why *why);
/* Newest first; group_id / device_id 0: any. skip rows, then up to max. */
KH_MUST_CHECK int kh_gstore_event_list(struct kh_gstore *st, int64_t group_id, int64_t device_id,
				       size_t skip, struct kh_gstore_event *out, size_t max,
				       size_t *n, struct kh_gstore_why *why);
KH_MUST_CHECK int kh_gstore_event_prune(struct kh_gstore *st, int64_t before_ms,
					struct kh_gstore_why *why);

/* ---- metrics --------------------------------------------------------- */

struct kh_gstore_metric {
	int64_t device_id;
	int64_t t_ms;          /* add: when; list: the bucket's start */
	int64_t requests, errors;
	int64_t lat_sum_us, lat_max_us;
};

#define KH_GSTORE_KEEP_10S_MS (3600LL * 1000)
#define KH_GSTORE_KEEP_1M_MS (86400LL * 1000)

/* Adds n samples in one transaction, each to its 10 s and its 1 min bucket
 * (sums added, maxima kept). The devices must exist. */
KH_MUST_CHECK int kh_gstore_metric_add(struct kh_gstore *st, const struct kh_gstore_metric *m,
				       size_t n, struct kh_gstore_why *why);
/* Buckets with from_ms <= start < to_ms, oldest first. */
KH_MUST_CHECK int kh_gstore_metric_list(struct kh_gstore *st, int64_t device_id,
					enum kh_gstore_res res, int64_t from_ms, int64_t to_ms,
					struct kh_gstore_metric *out, size_t max, size_t *n,
					struct kh_gstore_why *why);
/* The same range summed into one (t_ms = from_ms). */
KH_MUST_CHECK int kh_gstore_metric_sum(struct kh_gstore *st, int64_t device_id,
				       enum kh_gstore_res res, int64_t from_ms, int64_t to_ms,
				       struct kh_gstore_metric *out, struct kh_gstore_why *why);
/* Drops 10 s buckets older than an hour and minutes older than a day. */
KH_MUST_CHECK int kh_gstore_metric_prune(struct kh_gstore *st, int64_t now_ms,
					 struct kh_gstore_why *why);

/* ---- users and roles (schema 2) ---------------------------------------- */

/* The guardian's own users (REST API, console, CLI through the API). The
 * store keeps names, roles, password verifiers and lockout state; hashing
 * and checking passwords is users.c's, so a password never reaches here. */

#define KH_GSTORE_USER_MAX 64        /* user and role names */
#define KH_GSTORE_PW_HASH_LEN 32
#define KH_GSTORE_PW_SALT_LEN 16
#define KH_GSTORE_PW_PARAMS_MAX 31   /* "scrypt:32768:8:1" */

/* Permissions, a bit each. */
enum kh_gstore_perm {
	KH_GPERM_VIEW = 1u << 0,            /* every GET */
	KH_GPERM_GROUPS_MANAGE = 1u << 1,   /* group add / modify / remove */
	KH_GPERM_DEVICES_MANAGE = 1u << 2,  /* device add / modify / remove / promote */
	KH_GPERM_DEVICES_OPERATE = 1u << 3, /* enable / disable, sync, diagnose, check */
	KH_GPERM_REMOTE = 1u << 4,          /* the Remote Manage relay */
	KH_GPERM_USERS_MANAGE = 1u << 5,
};
#define KH_GPERM_COUNT 6
#define KH_GPERM_ALL ((1u << KH_GPERM_COUNT) - 1)
/* "view", "groups.manage", ...; bit i of KH_GPERM_ALL is perm_name(i). */
const char *kh_gstore_perm_name(unsigned index);

/* The built-in roles, made by the migration: Administrator (every
 * permission), Operator (view, devices.operate, remote), Auditor (view). */
#define KH_GSTORE_ROLE_ADMIN "Administrator"
#define KH_GSTORE_ROLE_OPERATOR "Operator"
#define KH_GSTORE_ROLE_AUDITOR "Auditor"

struct kh_gstore_role_rec {
	char name[KH_GSTORE_USER_MAX + 1];
	unsigned perms;          /* enum kh_gstore_perm bits */
	int logins_required;     /* 1 or 2 */
	bool builtin;
};

/* Case-insensitive name. */
KH_MUST_CHECK int kh_gstore_role_get(struct kh_gstore *st, const char *name,
				     struct kh_gstore_role_rec *out, struct kh_gstore_why *why);
/* By name; KH_ERR_TOO_LARGE if more than max. */
KH_MUST_CHECK int kh_gstore_role_list(struct kh_gstore *st, struct kh_gstore_role_rec *out,
				      size_t max, size_t *n, struct kh_gstore_why *why);
/* 1 or 2. Two is refused (KH_ERR_STATE) while the role has fewer than two
 * users: nobody could log in with it. */
KH_MUST_CHECK int kh_gstore_role_set_logins(struct kh_gstore *st, const char *name, int logins,
					    struct kh_gstore_why *why);

/* A password verifier: salted scrypt, parameters stored with it so they
 * can change. Never logged; wipe after use (it is not the password, but
 * it is what a guesser works against). */
struct kh_gstore_pwhash {
	uint8_t hash[KH_GSTORE_PW_HASH_LEN];
	uint8_t salt[KH_GSTORE_PW_SALT_LEN];
	char params[KH_GSTORE_PW_PARAMS_MAX + 1];
};

struct kh_gstore_user {
	int64_t id;                            /* set by the store */
	char name[KH_GSTORE_USER_MAX + 1];     /* letters, digits . _ -, unique
	                                        * case-insensitively */
	char role[KH_GSTORE_USER_MAX + 1];     /* an existing role */
	bool must_change;                      /* password set by someone else */
	int64_t failures;                      /* failed logins since the last success */
	int64_t locked_until_ms;               /* 0: not locked */
	int64_t created_ms, changed_ms;        /* read only */
};

/* Adds u (name, role, must_change) with verifier h. only_first: refused
 * (KH_ERR_EXISTS) unless the store has no user yet, decided in the same
 * transaction (the bootstrap of the first Administrator). */
KH_MUST_CHECK int kh_gstore_user_add(struct kh_gstore *st, const struct kh_gstore_user *u,
				     const struct kh_gstore_pwhash *h, bool only_first,
				     int64_t *id, struct kh_gstore_why *why);
KH_MUST_CHECK int kh_gstore_user_get(struct kh_gstore *st, const char *name,
				     struct kh_gstore_user *out, struct kh_gstore_why *why);
/* The stored verifier (KH_ERR_STORAGE if it is malformed). */
KH_MUST_CHECK int kh_gstore_user_verifier(struct kh_gstore *st, const char *name,
					  struct kh_gstore_pwhash *out, struct kh_gstore_why *why);
/* By name; KH_ERR_TOO_LARGE if more than max. */
KH_MUST_CHECK int kh_gstore_user_list(struct kh_gstore *st, struct kh_gstore_user *out,
				      size_t max, size_t *n, struct kh_gstore_why *why);
KH_MUST_CHECK int kh_gstore_user_count(struct kh_gstore *st, int64_t *n,
				       struct kh_gstore_why *why);
/* Refused (KH_ERR_STATE) when it would leave no Administrator, or its role
 * with fewer users than its logins required. */
KH_MUST_CHECK int kh_gstore_user_remove(struct kh_gstore *st, const char *name,
					struct kh_gstore_why *why);
/* New verifier; failures and lock are cleared. */
KH_MUST_CHECK int kh_gstore_user_set_password(struct kh_gstore *st, const char *name,
					      const struct kh_gstore_pwhash *h, bool must_change,
					      struct kh_gstore_why *why);
/* A failed login at now_ms: one more failure, and at threshold a lock
 * until now_ms + lock_ms (the count then starts again). One statement that
 * only matches while the user is not locked, so parallel guesses cannot
 * count past a lock or move it. *locked (may be NULL): this call set the
 * lock. KH_ERR_LOCKED when the user was locked already. */
KH_MUST_CHECK int kh_gstore_user_login_failed(struct kh_gstore *st, const char *name,
					      int64_t now_ms, int threshold, int64_t lock_ms,
					      bool *locked, struct kh_gstore_why *why);
/* A successful login: failures cleared; KH_ERR_LOCKED if a lock was set
 * meanwhile (parallel wrong guesses), KH_ERR_NOT_FOUND if the user went. */
KH_MUST_CHECK int kh_gstore_user_login_ok(struct kh_gstore *st, const char *name, int64_t now_ms,
					  struct kh_gstore_why *why);

#endif

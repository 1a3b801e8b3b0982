/*
 * Core types of keyhold-hsm shared by every subsystem: the device, a
 * connection's session, roles and the command-handler signature. Each
 * subsystem (db, roles, identities, audit, major keys, TLS, backup) has its
 * own header; this one only holds what they all agree on.
 */
#ifndef KH_HSM_H
#define KH_HSM_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "common/kh_err.h"
#include "common/kh_frame.h"

struct kh_buf;
struct kh_db;
struct kh_mkstore;
struct kh_tlsstate;
struct kh_mk_ceremony;
struct kh_backup_xfer;
struct kh_keycache;
struct kh_op;
struct kh_remote;

#define KH_MODEL "Keyhold KH-1"
#define KH_NAME_MAX 64          /* role and identity names, NUL included */
#define KH_MAX_LOGINS 4         /* distinct identities on one connection */
#define KH_MAX_RANGES 16        /* key-slot ranges per role */
#define KH_SLOT_MAX 999999u     /* slots are 0..KH_SLOT_MAX */
#define KH_MAX_COMMANDS 128     /* size of the command table bitmap */
#define KH_PASSWORD_MAX 256
#define KH_PASSWORD_MIN 8
#define KH_LOGIN_FAILURES_PER_CONN 10 /* then the connection is closed */

#define KH_ROLE_ADMIN "Administrator"
#define KH_ROLE_TP "Transaction Processing"
#define KH_ROLE_TP_ALIAS "Anonymous"   /* the role's former name */

/* Ports and connection sources, used as bit sets in roles. */
enum kh_port { KH_PORT_PROD = 1, KH_PORT_ADMIN = 2 };
enum kh_source { KH_SRC_ETHERNET = 1, KH_SRC_USB = 2 }; /* USB = the console socket */

/* Permission vocabulary (bit numbers). The names, ids and texts live in
 * roles.c (kh_perm_table); docs/PROTOCOL.md lists them. */
enum kh_perm {
	KH_P_KEYS = 0,
	KH_P_KEYS_ALL_SLOTS,
	KH_P_KEYS_AUTHORIZED,
	KH_P_KEYS_IMPORT_PKI,
	KH_P_KEYS_NO_USAGE_WRAP,
	KH_P_KEYS_PKCS1_DECRYPT,
	KH_P_MAJOR_KEYS_LOAD,
	KH_P_MAJOR_KEYS_ERASE,
	KH_P_ROLE_ADD,
	KH_P_ROLE_MODIFY,
	KH_P_ROLE_DELETE,
	KH_P_ROLE_ASSIGN_ALL,
	KH_P_CMD_SETTINGS_EXCRYPT,
	KH_P_IDENTITY_ADD,
	KH_P_IDENTITY_MODIFY,
	KH_P_IDENTITY_DELETE,
	KH_P_SECURITY_TLS_SIGN,
	KH_P_TLS_UPLOAD_KEY,
	KH_P_TLS_SETTINGS,
	KH_P_MGMT_CERTIFICATES,
	KH_P_MGMT_KEYS,
	KH_P_BACKUP,
	KH_P_RESTORE,
	KH_P_AUDIT_VIEW,
	KH_P_SECURITY_SETTINGS,
	KH_P_TIME_SET,
	KH_P_REPLICATION,
	KH_P_COUNT
};
#define KH_PERM(p) (UINT64_C(1) << (p))

struct kh_range {
	uint32_t lo, hi; /* inclusive */
	char kind;       /* 'S' symmetric, 'A' asymmetric, 'M' any */
};

struct kh_role {
	int64_t id;
	char name[KH_NAME_MAX];
	uint64_t perms;                       /* KH_PERM() bits */
	struct kh_range ranges[KH_MAX_RANGES];
	size_t nranges;
	uint8_t cmds[KH_MAX_COMMANDS / 8];    /* bitmap over the command table index */
	int logins_required;                  /* 1..3 (0 for Transaction Processing) */
	unsigned ports;                       /* enum kh_port bits */
	unsigned sources;                     /* enum kh_source bits */
	bool dual_factor;                     /* "Use Dual Factor": only Never (false) is supported */
	bool builtin;
};

/* One connection's state. Owned by the server; handlers may change login
 * state (session commands) and the ceremony pointer (major keys). */
struct kh_session {
	enum kh_port port;
	enum kh_source source;
	char peer[96];                        /* "127.0.0.1:5555" or "console" */
	char ident[KH_MAX_LOGINS][KH_NAME_MAX];
	size_t nident;
	struct kh_role role;                  /* role of the logged-in identities */
	uint64_t role_gen;                    /* hsm->role_gen when role was read */
	bool active;                          /* nident >= role.logins_required */
	struct kh_mk_ceremony *ceremony;      /* major-key ceremony in progress */
	struct kh_backup_xfer *bk_out;        /* BKUP export being fetched in pages */
	struct kh_backup_xfer *bk_in;         /* BKRS upload being staged in pages */
	struct kh_remote *remote;             /* sealed admin channel (RMKX), secure heap */
	struct kh_role tp;                    /* Transaction Processing role, cached */
	uint64_t tp_gen;                      /* hsm->role_gen + 1 when tp was read; 0 = none */
	char detail[160];                     /* error detail for the current reply; no secrets */
	unsigned login_failures;              /* failed LOGN/CHPW on this connection */
	unsigned quiet_audited;               /* refusal kinds already audited (cmd_session.c) */
	bool hangup;                          /* close the connection after this reply */
};

struct kh_hsm {
	char datadir[4096];
	int lock_fd;                          /* flock'd datadir/keyhold.lock: one daemon per dir */
	struct kh_db *db;
	struct kh_mkstore *mk;
	struct kh_tlsstate *tls;
	struct kh_keycache *keycache;         /* parsed keys in use (keyobj.c) */
	uint8_t *device_key;                  /* 32 bytes on the secure heap */
	uint8_t *audit_key;                   /* 32 bytes on the secure heap, HKDF of device_key */
	char serial[32];
	bool volatile_mk;                     /* major keys are not sealed to disk */
	time_t started;
	/* guards the settings copy below. Lock order, for the whole daemon: the
	 * database lock, then a major-key store lock, then mu; mu is a leaf:
	 * never touch the database or the key store while holding it. */
	pthread_mutex_t mu;
	bool fips;
	bool pkcs11;
	int lockout_threshold;
	int lockout_seconds;
	int64_t clock_offset;                 /* HSM clock = system clock + offset */
	struct kh_role tp_role;               /* cached Transaction Processing role */
	uint64_t tp_role_gen;
	_Atomic uint64_t role_gen;            /* bumped on any role change */
	_Atomic uint64_t n_requests;
	_Atomic uint64_t n_errors;
	_Atomic uint64_t n_conn_total;
	_Atomic uint64_t n_conn_open;
	_Atomic uint64_t backup_staged;       /* bytes held by paged BKUP/BKRS transfers */
	_Atomic int error_state;              /* non-zero: self-test failure, crypto refused */
};

/* Handler context. */
struct kh_cmd;
struct kh_ctx {
	struct kh_hsm *hsm;
	struct kh_session *s;
	const struct kh_cmd *cmd;
	const struct kh_role *role;           /* the effective role for this command, or NULL */
	struct kh_op *op;                     /* the keys and needs of a planned command, or NULL */
};

/* A handler appends its output fields to resp (the dispatcher has written the
 * "[AO<CMD>;" header and writes the closing "]"). It returns KH_OK or a
 * kh_err; on error the dispatcher discards what was appended and answers
 * ERRO, adding c->s->detail if set. Handlers never repeat the dispatcher's
 * checks (command allowed, permissions, slot range). */
typedef int (*kh_act_fn)(struct kh_ctx *c, const struct kh_frame *req, struct kh_buf *resp);

/* HSM clock (system clock + offset). */
time_t kh_hsm_now(struct kh_hsm *hsm);
/* Convenience for handlers: set the error detail (printf-style). */
void kh_ctx_detail(struct kh_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Actor string for audit entries: logged-in identities joined by '+', or "-". */
void kh_session_actor(const struct kh_session *s, char *out, size_t outsz);

#endif

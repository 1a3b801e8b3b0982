/*
 * The guardian's view of one member device: probe its facts (model,
 * version, feature set, serial, major-key check values), decide whether it
 * may join a group, diagnose a failing connection in the reference's
 * order, and ping it. It only reads from a device (PRMD, STAT, HASH, ECHO
 * and TLS handshakes); it never changes one, and never puts a password in
 * an error text.
 */
#ifndef KG_MEMBER_H
#define KG_MEMBER_H

#include <stdbool.h>
#include <stddef.h>
#include "common/kh_err.h"

struct ssl_ctx_st; /* SSL_CTX */

#define KG_MEMBER_EXCRYPT_PORT 9100u
#define KG_MEMBER_ADMIN_PORT 9009u
#define KG_MEMBER_TIMEOUT_MS 5000 /* default ping timeout */
#define KG_MEMBER_MSG_MAX 512     /* bytes of every message here, NUL included */

enum kg_member_role { KG_ROLE_PRIMARY = 0, KG_ROLE_PRODUCTION, KG_ROLE_BACKUP };
const char *kg_member_role_name(enum kg_member_role r); /* "Primary", ... */

/* The connection type of the group's Excrypt pair (the Admin port is
 * always mutual TLS). */
enum kg_member_conn { KG_CONN_TLS = 0, KG_CONN_ANONYMOUS, KG_CONN_CLEAR };

/* How to reach a device. The strings must outlive the calls only. */
struct kg_member_dev {
	const char *host;      /* name or IP literal (NULL: "127.0.0.1") */
	unsigned excrypt_port; /* 0: 9100 */
	unsigned admin_port;   /* 0: 9009 */
	enum kg_member_conn conn;
	int timeout_ms; /* the device's ping timeout: connect, handshake and
	                 * each answer (0: KG_MEMBER_TIMEOUT_MS) */
};

/* The guardian's TLS material toward its members. Files are PEM (cert_file
 * may be PKCS#12, see kh_client_tls); tls_ctx, when set, is used for the
 * Excrypt and Admin connections instead of loading the files (the
 * files are still read by the CA-tree check of diagnose). */
struct kg_member_tls {
	const char *ca_file;   /* the CA(s) the guardian trusts for HSM server certificates */
	const char *cert_file; /* the guardian's client certificate (NULL: none) */
	const char *key_file;  /* its key (NULL: in cert_file) */
	const char *pass;      /* for an encrypted key or PKCS#12 (NULL: none) */
	struct ssl_ctx_st *tls_ctx;
};

/* The guardian's own identity on the member, or NULL before it has one:
 * PRMD, STAT and HASH also run before login, under the Transaction
 * Processing role, as long as that role enables them. */
struct kg_member_login {
	const char *user;
	const char *pw;
	size_t pwlen;
};

enum kg_mk { KG_MK_FTK = 0, KG_MK_PMK, KG_MK_BEK, KG_MK_COUNT };
const char *kg_mk_name(enum kg_mk k); /* "FTK", "PMK", "BEK" */

/* What a device says it is (PRMD, HASH, STAT on its Excrypt port). */
struct kg_member_facts {
	char model[64];    /* PRMD/STAT MD, "Keyhold KH-1" */
	char version[32];  /* PRMD/STAT VN */
	char features[96]; /* STAT FS, "FIPS=N,PKCS11=Y,FTK=Y,PMK=Y,BEK=N" */
	char serial[64];   /* HASH/STAT SN */
	bool fips;         /* FI */
	bool pkcs11;       /* PK */
	bool state_ok;     /* STAT ST is OK (not the self-test error state) */
	/* STAT FT / PM / BK: the major key's check value (uppercase hex), ""
	 * when the key is not loaded ("N") */
	char kcv[KG_MK_COUNT][16];
};

/* Connect to the device's Excrypt port (as dev->conn says, with tls),
 * log in as login when given, and read its facts with PRMD, HASH and STAT
 * (one connection, pipelined). MKST is not used: it runs on the Admin port
 * only; STAT's FT/PM/BK carry the same check values on the Excrypt port.
 * Returns KH_OK, or the error of the step that failed with msg naming the
 * host, port and step ("127.0.0.1 port 9100 (Excrypt): TLS handshake:
 * server certificate not trusted: ..."; "...: login as guardian:
 * AUTH_FAILED"; "...: STAT: COMMAND_NOT_ALLOWED ..."). KH_ERR_PROTOCOL
 * when the answers disagree with each other or lack a field. */
KH_MUST_CHECK int kg_member_probe(const struct kg_member_dev *dev, const struct kg_member_tls *tls,
                                  const struct kg_member_login *login, struct kg_member_facts *out,
                                  char *msg, size_t msgsz);

/* Why a device may not join (or KG_ADMIT_OK). */
enum kg_admit {
	KG_ADMIT_OK = 0,
	KG_ADMIT_NO_PRIMARY,     /* the group has no Primary and this is not one */
	KG_ADMIT_SECOND_PRIMARY, /* the group has a Primary already */
	KG_ADMIT_UNREACHABLE,    /* the probe failed: port closed, TLS, login */
	KG_ADMIT_DEVICE_ERROR,   /* the device is in its self-test error state */
	KG_ADMIT_MODEL,          /* model differs from the Primary's */
	KG_ADMIT_VERSION,        /* version differs */
	KG_ADMIT_MAJOR_KEY,      /* a major key's check value differs */
	KG_ADMIT_FEATURES,       /* feature set differs */
};
const char *kg_admit_name(enum kg_admit a); /* "SECOND_PRIMARY", ... */

/* The result of kg_member_probe for kg_member_admit. */
struct kg_member_probed {
	int err;                             /* kg_member_probe's result */
	const char *msg;                     /* its message when err != KH_OK */
	const struct kg_member_facts *facts; /* valid when err == KH_OK */
};

/* May a device with the requested role and what its probe gave join a group
 * whose Primary's facts are primary (NULL: the group has no Primary yet)?
 * Checks, in this order: the role (the first device must be the Primary;
 * one Primary per group), the probe, the device's state, then against the
 * Primary: model, version, major-key check values (FTK, PMK, BEK), feature
 * set. The major keys come before the feature set because the feature set
 * also carries FTK=/PMK=/BEK= flags, and naming the key says more. why
 * gets one line naming both values, e.g. "version differs: Primary 1.4.0,
 * device 1.3.2", "PMK check value differs: Primary 1A2B3C, device
 * 4D5E6F"; "" for KG_ADMIT_OK. */
KH_MUST_CHECK enum kg_admit kg_member_admit(const struct kg_member_facts *primary,
                                            enum kg_member_role role,
                                            const struct kg_member_probed *dev, char *why,
                                            size_t whysz);

/* Diagnose: the reference's "Troubleshooting failed connections", in its
 * order. */
enum kg_diag_step {
	KG_DIAG_GROUP_ENABLED = 0,
	KG_DIAG_DEVICE_ENABLED,
	KG_DIAG_ADMIN_TCP, /* the Admin port accepts a TCP connection */
	KG_DIAG_ADMIN_TLS, /* ... and completes mutual TLS (and an ECHO) */
	KG_DIAG_EXCRYPT_TCP,
	KG_DIAG_EXCRYPT_TLS, /* as the group's connection type says (Clear: an ECHO) */
	KG_DIAG_CA_TREE,     /* the HSM's server certificate chains to the guardian's CA */
	KG_DIAG_NSTEPS
};
const char *kg_diag_step_name(enum kg_diag_step s); /* "Admin port TLS", ... */

enum kg_diag_state { KG_DIAG_OK = 0, KG_DIAG_FAILED, KG_DIAG_NOT_RUN };
const char *kg_diag_state_name(enum kg_diag_state s); /* "ok", "failed", "not run" */

struct kg_diag {
	struct {
		enum kg_diag_state state;
		char msg[KG_MEMBER_MSG_MAX]; /* what was found; for a failure, the
		                              * host, port and step, e.g. "127.0.0.1
		                              * port 9009 (Admin): TLS handshake: ..." */
	} step[KG_DIAG_NSTEPS];
	int failed; /* the first failed step, or -1 when every step passed */
};

/* Runs the steps in order and stops at the first failure: the steps after
 * it are KG_DIAG_NOT_RUN. A TLS failure over the server's certificate also
 * says where it came from (its issuer and key type, against the CA the
 * guardian trusts: "not the same CA tree"), and a TLS failure on a port
 * that answers in clear says so. Returns KH_OK when every step passed,
 * else the first failure's error (KH_ERR_STATE for a disabled group or
 * device). */
KH_MUST_CHECK int kg_member_diagnose(const struct kg_member_dev *dev,
                                     const struct kg_member_tls *tls, bool group_enabled,
                                     bool device_enabled, struct kg_diag *out);

/* Ping: connect to the Excrypt port as dev->conn says (log in as login when
 * given) and time one ECHO round trip; the connect, the handshake and the
 * answer each wait at most dev->timeout_ms.
 * *latency_ms gets the ECHO's round trip (without the connect) on KH_OK;
 * otherwise msg names host, port and step (KH_ERR_TIMEOUT when the device
 * did not answer in time). */
KH_MUST_CHECK int kg_member_ping(const struct kg_member_dev *dev, const struct kg_member_tls *tls,
                                 const struct kg_member_login *login, double *latency_ms, char *msg,
                                 size_t msgsz);

#endif

/*
 * The REST API's request router: a table of routes (method, path pattern,
 * what the caller must hold), every pre-check (route, size, session, CSRF,
 * permission, body) done once before a handler runs, and handlers that
 * call the core through a table of its actions. Production's table is the
 * real kg_core_* functions (http.c); the table is what lets the router and
 * the server be tested without a running core. No MHD in here.
 */
#ifndef KG_HTTP_ROUTER_H
#define KG_HTTP_ROUTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "common/kh_err.h"
#include "guardian/guardian.h"
#include "guardian/http_static.h"

struct kh_client;

/* The core's actions the API uses (signatures of guardian.h). */
struct kg_http_ops {
	struct kh_gstore *(*store)(struct kg_core *c);
	int (*group_add)(struct kg_core *, const struct kh_gstore_group *, int64_t *, char *, size_t);
	int (*group_modify)(struct kg_core *, int64_t, const struct kh_gstore_group *, char *,
	                    size_t);
	int (*group_remove)(struct kg_core *, int64_t, char *, size_t);
	int (*group_check)(struct kg_core *, int64_t, struct kg_check *, char *, size_t);
	int (*device_add)(struct kg_core *, const struct kh_gstore_device *, int64_t *,
	                  enum kg_admit *, char *, size_t);
	int (*device_modify)(struct kg_core *, int64_t, const struct kh_gstore_device *, char *,
	                     size_t);
	int (*device_remove)(struct kg_core *, int64_t, char *, size_t);
	int (*device_promote)(struct kg_core *, int64_t, enum kh_gstore_role, char *, size_t);
	int (*device_sync)(struct kg_core *, int64_t, char *, size_t);
	int (*device_diagnose)(struct kg_core *, int64_t, struct kg_diag *, char *, size_t);
	int (*device_live)(struct kg_core *, int64_t, struct kg_live *);
	int (*device_admin_addr)(struct kg_core *, int64_t, char *, size_t, unsigned *);
	/* a connected client to the device's Admin port (the console's relay) */
	int (*device_admin_client)(struct kg_core *, int64_t, struct kh_client **, char *, size_t);
};

/* One request as the server read it. Strings may be NULL when absent. */
struct kg_req {
	const char *method;
	const char *path;          /* decoded, without the query */
	const char *(*query)(void *qctx, const char *key);
	void *qctx;
	const char *authorization; /* "Bearer <token>" */
	const char *cookie;        /* the kh_session cookie's value */
	const char *csrf;          /* X-CSRF-Token */
	const char *upgrade, *connection;
	const char *body;
	size_t body_len;
	bool body_too_large;
	const char *if_none_match; /* a console file's ETag the browser holds */
};

#define KG_RELAY_MAX 16

struct kg_resp {
	int status;
	char *body;                /* JSON text (malloc), wipe and free with kg_resp_clear */
	size_t body_len;
	char set_cookie[256];
	char allow[64];            /* for 405 */
	int relay_fd;              /* >= 0 with status 101: connected to the Admin port */
	const struct kg_asset *asset; /* a console file (status 200, or 304 without body) */
};
void kg_resp_clear(struct kg_resp *r);

struct kg_router;
KH_MUST_CHECK int kg_router_new(const struct kg_http_ops *ops, struct kg_core *core,
                                unsigned session_idle_s, bool secure_cookie,
                                struct kg_router **out);
void kg_router_free(struct kg_router *rt);
/* Fills resp (status, body, headers); never fails: errors are answers. */
void kg_router_handle(struct kg_router *rt, const struct kg_req *req, struct kg_resp *resp);
/* A relay the router granted (status 101) has ended. */
void kg_router_relay_done(struct kg_router *rt);

/* One sweep of the console's device connections at now_ms (idle ones and
 * those of ended sessions close); a thread does it every few seconds. */
void kg_router_sweep(struct kg_router *rt, int64_t now_ms);
/* Console connections to devices open now. */
unsigned kg_router_admin_count(struct kg_router *rt);

/* The HTTP status of a kh_err (the API's table). */
int kg_http_status(int err);

#endif

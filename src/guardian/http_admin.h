/*
 * The web console's relay of the sealed admin channel (RMKX, RMSG): one
 * Admin-port connection per (HTTP session, device), mutual TLS with the
 * guardian's client certificate, opened by the first RMKX, closed on
 * request, at logout or session expiry, or after KG_ADMIN_IDLE_MS unused.
 * Frames pass through whole; what is inside RMSG's CT is never looked at.
 */
#ifndef KG_HTTP_ADMIN_H
#define KG_HTTP_ADMIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "common/kh_err.h"

struct kh_buf;
struct kh_client;
struct kh_frame;
struct kg_core;

#define KG_ADMIN_MAX 64                     /* connections at once, all sessions */
#define KG_ADMIN_IDLE_MS (10LL * 60 * 1000) /* a connection unused this long closes */

/* Opens a connected client to the Admin port of device id (the core's
 * kg_core_device_admin_client in production). */
typedef int (*kg_admin_open_fn)(struct kg_core *core, int64_t id, struct kh_client **out, char *why,
                                size_t whysz);
/* Is the HTTP session of token still live (without restarting its idle time)? */
typedef bool (*kg_admin_live_fn)(void *arg, const char *token);

struct kg_admin;

/* A table with its sweeper thread (every sweep_ms: idle and orphaned
 * connections close). idle_ms 0: KG_ADMIN_IDLE_MS. */
KH_MUST_CHECK int kg_admin_new(kg_admin_open_fn open, struct kg_core *core, kg_admin_live_fn live,
                               void *live_arg, int64_t idle_ms, int64_t sweep_ms,
                               struct kg_admin **out);
/* Stops the sweeper and closes every connection. NULL ok. */
void kg_admin_free(struct kg_admin *t);

/* Relay one request frame (already checked to be RMKX or RMSG) for
 * (token, device). open: an RMKX, which opens the connection when there is
 * none (or it went stale); an RMSG without a connection is KH_ERR_STATE.
 * *answered is true when resp holds the HSM's answer frame (f parsed; the
 * result is then KH_OK or the kh_err of its ERRO); otherwise the result
 * names what failed (why: one line) and the connection is closed.
 * *opened: a new connection was made for this request. */
KH_MUST_CHECK int kg_admin_call(struct kg_admin *t, const char *token, int64_t device, bool open,
                                const struct kh_buf *req, struct kh_buf *resp, struct kh_frame *f,
                                bool *answered, bool *opened, char *why, size_t whysz);
/* Close the connection of (token, device), or every one of token when
 * device is 0. Returns how many were closed. */
unsigned kg_admin_close(struct kg_admin *t, const char *token, int64_t device);
/* Connections open now (for tests and the event text). */
unsigned kg_admin_count(struct kg_admin *t);
/* One sweep at now_ms, as the sweeper does (exposed for tests). */
void kg_admin_sweep(struct kg_admin *t, int64_t now_ms);

#endif

/*
 * The HTTP listener itself (libmicrohttpd, TLS through its GnuTLS
 * backend): reads requests into the router, writes its answers, and runs
 * the Remote Manage relays. kg_http_start (http.c) starts it with the
 * core's real actions; tests start it with theirs.
 */
#ifndef KG_HTTP_SERVER_H
#define KG_HTTP_SERVER_H

#include "common/kh_err.h"
#include "guardian/guardian.h"
#include "guardian/http_router.h"

/* cfg->port 0 picks a free port (tests): kg_httpd_port tells which. */
KH_MUST_CHECK int kg_httpd_start(const struct kg_http_ops *ops, struct kg_core *c,
                                 const struct kg_http_cfg *cfg, struct kg_http **out, char *why,
                                 size_t whysz);
unsigned kg_httpd_port(const struct kg_http *h);

#endif

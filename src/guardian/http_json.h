/*
 * The REST API's JSON: request bodies parsed into the store's records
 * (every field checked and named in the refusal, unknown fields refused,
 * partial updates onto the current record), and records rendered for
 * answers. Pure functions over jansson; no I/O, no core.
 */
#ifndef KG_HTTP_JSON_H
#define KG_HTTP_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include "common/kh_err.h"
#include "guardian/guardian.h"
#include "guardian/store.h"

#define KG_BODY_MAX (64u * 1024)
#define KG_GROUP_TYPE_TEXT "Hardware Security Module"

/* Makes jansson wipe everything it frees (a login body's password passes
 * through its strings). Call once before any thread uses jansson. */
void kg_json_wipe_on_free(void);

/* A request body: a JSON object of at most KG_BODY_MAX bytes, no duplicate
 * keys, no NUL in strings. An empty body gives an empty object. */
KH_MUST_CHECK int kg_json_body(const char *buf, size_t len, json_t **out, char *why, size_t whysz);

/* Refuses (KH_ERR_BAD_FIELD, naming it) any key of o not in allowed
 * (NULL-terminated). */
KH_MUST_CHECK int kg_json_only(const json_t *o, const char *const *allowed, const char *where,
                               char *why, size_t whysz);

/* Applies the fields present in o to g: name, description, owner, type,
 * options{configuration,monitoring,balancing}, pairs{excrypt,http,
 * international}{allow,conn}, port, enabled. add: name and port required.
 * Range and form are checked here (the store checks again). */
KH_MUST_CHECK int kg_json_group(const json_t *o, bool add, struct kh_gstore_group *g, char *why,
                                size_t whysz);
/* host, port, admin_port, role, balancing, ping_timeout_ms, enabled; add:
 * host required. *role_given tells whether role was in o. */
KH_MUST_CHECK int kg_json_device(const json_t *o, bool add, struct kh_gstore_device *d,
                                 bool *role_given, char *why, size_t whysz);
/* {"old_primary_role": "Production"|"Backup"} (default Production). */
KH_MUST_CHECK int kg_json_promote(const json_t *o, enum kh_gstore_role *old, char *why,
                                  size_t whysz);
/* A string field: required or not; *out NULL when absent. */
KH_MUST_CHECK int kg_json_str(const json_t *o, const char *key, bool required, size_t maxlen,
                              const char **out, size_t *len, char *why, size_t whysz);

json_t *kg_json_group_out(const struct kh_gstore_group *g);
/* live may be NULL (not known to the core): shown as down, not serving. */
json_t *kg_json_device_out(const struct kh_gstore_device *d, const struct kg_live *live);
json_t *kg_json_diag_out(const struct kg_diag *dg);
json_t *kg_json_check_out(const struct kg_check *ck);
json_t *kg_json_error(int err, const char *reason);
/* j as compact text in a malloc'd buffer (free with free(); *len its
 * length), NULL when out of memory. j is not consumed. */
char *kg_json_text(const json_t *j, size_t *len);

#endif

/*
 * JSON bodies in, JSON answers out. Parsers read like the API's schema: one
 * function per object, each field checked for type and range and named in
 * the refusal; a key the schema does not have is refused, not ignored. The
 * store checks its own rules again (names, hosts, uniqueness).
 */
#include "guardian/http_json.h"
#include "common/kh_mem.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- a jansson allocator that wipes ------------------------------------- */

/* The size rides in front of each block so that free can wipe it. */
#define HDR 16

static void *wmalloc(size_t n)
{
	unsigned char *p;
	if (n > SIZE_MAX - HDR || (p = malloc(n + HDR)) == NULL)
		return NULL;
	memcpy(p, &n, sizeof(n));
	return p + HDR;
}

static void wfree(void *q)
{
	unsigned char *p;
	size_t n;
	if (q == NULL)
		return;
	p = (unsigned char *)q - HDR;
	memcpy(&n, p, sizeof(n));
	kh_wipe(p, n + HDR);
	free(p);
}

void kg_json_wipe_on_free(void)
{
	json_set_alloc_funcs(wmalloc, wfree);
}

/* ---- helpers ------------------------------------------------------------ */

static int bad(char *why, size_t whysz, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int bad(char *why, size_t whysz, const char *fmt, ...)
{
	va_list ap;
	if (why && whysz) {
		va_start(ap, fmt);
		vsnprintf(why, whysz, fmt, ap);
		va_end(ap);
	}
	return KH_ERR_BAD_FIELD;
}

int kg_json_body(const char *buf, size_t len, json_t **out, char *why, size_t whysz)
{
	json_error_t err;
	json_t *o;
	*out = NULL;
	if (len > KG_BODY_MAX) {
		if (why && whysz)
			snprintf(why, whysz, "the body is larger than %u bytes", KG_BODY_MAX);
		return KH_ERR_TOO_LARGE;
	}
	if (len == 0) {
		*out = json_object();
		return *out ? KH_OK : KH_ERR_NOMEM;
	}
	o = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &err);
	if (o == NULL)
		/* err.text describes the syntax, never echoes a whole value */
		return bad(why, whysz, "malformed JSON at line %d column %d: %.80s", err.line,
			   err.column, err.text);
	if (!json_is_object(o)) {
		json_decref(o);
		return bad(why, whysz, "the body must be a JSON object");
	}
	*out = o;
	return KH_OK;
}

static bool listed(const char *key, const char *const *allowed)
{
	for (; *allowed; allowed++)
		if (strcmp(key, *allowed) == 0)
			return true;
	return false;
}

/* A key, shown safely: printable ASCII only, cut short. */
static void show_key(const char *key, char out[static 41])
{
	size_t i = 0;
	for (; key[i] && i < 40; i++)
		out[i] = key[i] >= 0x20 && key[i] < 0x7f && key[i] != '"' ? key[i] : '?';
	out[i] = '\0';
}

int kg_json_only(const json_t *o, const char *const *allowed, const char *where, char *why,
		 size_t whysz)
{
	const char *key;
	json_t *v;
	json_object_foreach((json_t *)(uintptr_t)o, key, v) {
		char k[41];
		(void)v;
		if (listed(key, allowed))
			continue;
		show_key(key, k);
		return bad(why, whysz, "%s%sunknown field \"%s\"", where ? where : "",
			   where ? ": " : "", k);
	}
	return KH_OK;
}

int kg_json_str(const json_t *o, const char *key, bool required, size_t maxlen, const char **out,
		size_t *len, char *why, size_t whysz)
{
	json_t *v = json_object_get(o, key);
	*out = NULL;
	if (len)
		*len = 0;
	if (v == NULL)
		return required ? bad(why, whysz, "%s: required", key) : KH_OK;
	if (!json_is_string(v))
		return bad(why, whysz, "%s: must be a string", key);
	if (json_string_length(v) > maxlen)
		return bad(why, whysz, "%s: at most %zu bytes", key, maxlen);
	*out = json_string_value(v);
	if (len)
		*len = json_string_length(v);
	return KH_OK;
}

static int get_bool(const json_t *o, const char *key, const char *where, bool *out, char *why,
		    size_t whysz)
{
	json_t *v = json_object_get(o, key);
	if (v == NULL)
		return KH_OK;
	if (!json_is_boolean(v))
		return bad(why, whysz, "%s%s%s: must be true or false", where ? where : "",
			   where ? "." : "", key);
	*out = json_is_true(v);
	return KH_OK;
}

static int get_int(const json_t *o, const char *key, json_int_t lo, json_int_t hi, json_int_t *out,
		   bool *given, char *why, size_t whysz)
{
	json_t *v = json_object_get(o, key);
	if (given)
		*given = v != NULL;
	if (v == NULL)
		return KH_OK;
	if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
		return bad(why, whysz, "%s: an integer from %lld to %lld", key, (long long)lo,
			   (long long)hi);
	*out = json_integer_value(v);
	return KH_OK;
}

static int get_text(const json_t *o, const char *key, char *dst, size_t dstsz, char *why,
		    size_t whysz)
{
	const char *s;
	int r = kg_json_str(o, key, false, dstsz - 1, &s, NULL, why, whysz);
	if (r == KH_OK && s)
		snprintf(dst, dstsz, "%s", s);
	return r;
}

/* ---- groups ------------------------------------------------------------- */

static const char *const group_keys[] = {"name",  "description", "owner",   "type", "options",
					 "pairs", "port",        "enabled", NULL};
static const char *const group_ro[] = {"id", "journal_head", "created_ms", "changed_ms",
				       "devices", "warnings", NULL};
static const char *const option_keys[] = {"configuration", "monitoring", "balancing", NULL};
static const char *const pair_keys[] = {"excrypt", "http", "international", NULL};
static const char *const conn_keys[] = {"allow", "conn", NULL};

static int read_only(const json_t *o, const char *const *ro, char *why, size_t whysz)
{
	for (; *ro; ro++)
		if (json_object_get(o, *ro))
			return bad(why, whysz, "%s: read only", *ro);
	return KH_OK;
}

static int group_options(const json_t *v, struct kh_gstore_group *g, char *why, size_t whysz)
{
	int r;
	if (!json_is_object(v))
		return bad(why, whysz, "options: must be an object");
	if ((r = kg_json_only(v, option_keys, "options", why, whysz)) != KH_OK ||
	    (r = get_bool(v, "configuration", "options", &g->opt_configuration, why, whysz)) !=
		    KH_OK ||
	    (r = get_bool(v, "monitoring", "options", &g->opt_monitoring, why, whysz)) != KH_OK)
		return r;
	return get_bool(v, "balancing", "options", &g->opt_balancing, why, whysz);
}

static int group_pair(const json_t *v, const char *name, struct kh_gstore_conn_pair *p, char *why,
		      size_t whysz)
{
	char where[32];
	json_t *c;
	int r;
	snprintf(where, sizeof(where), "pairs.%s", name);
	if (!json_is_object(v))
		return bad(why, whysz, "%s: must be an object", where);
	if ((r = kg_json_only(v, conn_keys, where, why, whysz)) != KH_OK ||
	    (r = get_bool(v, "allow", where, &p->allow, why, whysz)) != KH_OK)
		return r;
	if ((c = json_object_get(v, "conn")) == NULL)
		return KH_OK;
	if (!json_is_string(c) || kh_gstore_conn_parse(json_string_value(c), &p->conn) != KH_OK)
		return bad(why, whysz, "%s.conn: \"Clear\", \"SSL\" or \"Anonymous TLS\"", where);
	return KH_OK;
}

static int group_pairs(const json_t *v, struct kh_gstore_group *g, char *why, size_t whysz)
{
	static const enum kh_gstore_pair which[] = {KH_GPAIR_EXCRYPT, KH_GPAIR_HTTP,
						    KH_GPAIR_INTERNATIONAL};
	int r;
	if (!json_is_object(v))
		return bad(why, whysz, "pairs: must be an object");
	if ((r = kg_json_only(v, pair_keys, "pairs", why, whysz)) != KH_OK)
		return r;
	for (size_t i = 0; i < 3; i++) {
		json_t *p = json_object_get(v, pair_keys[i]);
		if (p && (r = group_pair(p, pair_keys[i], &g->pairs[which[i]], why, whysz)) != KH_OK)
			return r;
	}
	return KH_OK;
}

int kg_json_group(const json_t *o, bool add, struct kh_gstore_group *g, char *why, size_t whysz)
{
	const char *type;
	json_int_t port = 0;
	bool port_given = false;
	json_t *v;
	int r;

	if ((r = read_only(o, group_ro, why, whysz)) != KH_OK ||
	    (r = kg_json_only(o, group_keys, NULL, why, whysz)) != KH_OK)
		return r;
	if (add && json_object_get(o, "name") == NULL)
		return bad(why, whysz, "name: required");
	if ((r = get_text(o, "name", g->name, sizeof(g->name), why, whysz)) != KH_OK ||
	    (r = get_text(o, "description", g->description, sizeof(g->description), why, whysz)) !=
		    KH_OK ||
	    (r = get_text(o, "owner", g->owner, sizeof(g->owner), why, whysz)) != KH_OK ||
	    (r = kg_json_str(o, "type", false, 64, &type, NULL, why, whysz)) != KH_OK)
		return r;
	if (type) {
		if (strcasecmp(type, KG_GROUP_TYPE_TEXT) != 0 && strcasecmp(type, "HSM") != 0)
			return bad(why, whysz, "type: \"" KG_GROUP_TYPE_TEXT "\" (or \"HSM\")");
		snprintf(g->type, sizeof(g->type), "HSM");
	}
	if ((v = json_object_get(o, "options")) && (r = group_options(v, g, why, whysz)) != KH_OK)
		return r;
	if ((v = json_object_get(o, "pairs")) && (r = group_pairs(v, g, why, whysz)) != KH_OK)
		return r;
	if ((r = get_int(o, "port", 1, 65535, &port, &port_given, why, whysz)) != KH_OK)
		return r;
	if (add && !port_given)
		return bad(why, whysz, "port: required");
	if (port_given)
		g->port = (uint16_t)port;
	return get_bool(o, "enabled", NULL, &g->enabled, why, whysz);
}

/* ---- devices ------------------------------------------------------------ */

static const char *const device_keys[] = {"host",  "port",           "admin_port", "role",
					  "balancing", "ping_timeout_ms", "enabled",   NULL};
static const char *const device_ro[] = {
	"id",           "group_id", "state",    "serving",     "synced",   "pending",
	"in_flight",    "latency_ms", "last_ping_ms", "requests_per_s", "requests", "errors",
	"last_error",   "repl_version", "facts", "created_ms", "changed_ms", NULL};

int kg_json_device(const json_t *o, bool add, struct kh_gstore_device *d, bool *role_given,
		   char *why, size_t whysz)
{
	json_int_t port = 0, admin = 0, ping = 0;
	bool given = false;
	const char *role;
	int r;

	*role_given = false;
	if ((r = read_only(o, device_ro, why, whysz)) != KH_OK ||
	    (r = kg_json_only(o, device_keys, NULL, why, whysz)) != KH_OK)
		return r;
	if (add && json_object_get(o, "host") == NULL)
		return bad(why, whysz, "host: required");
	if ((r = get_text(o, "host", d->host, sizeof(d->host), why, whysz)) != KH_OK)
		return r;
	if ((r = get_int(o, "port", 1, 65535, &port, &given, why, whysz)) != KH_OK)
		return r;
	if (given)
		d->port = (uint16_t)port;
	if ((r = get_int(o, "admin_port", 1, 65535, &admin, &given, why, whysz)) != KH_OK)
		return r;
	if (given)
		d->admin_port = (uint16_t)admin;
	if ((r = get_int(o, "ping_timeout_ms", KH_GSTORE_PING_MIN_MS, KH_GSTORE_PING_MAX_MS, &ping,
			 &given, why, whysz)) != KH_OK)
		return r;
	if (given)
		d->ping_timeout_ms = (uint32_t)ping;
	if ((r = kg_json_str(o, "role", false, 16, &role, NULL, why, whysz)) != KH_OK)
		return r;
	if (role) {
		if (kh_gstore_role_parse(role, &d->role) != KH_OK)
			return bad(why, whysz, "role: \"Primary\", \"Production\" or \"Backup\"");
		*role_given = true;
	}
	if ((r = get_bool(o, "balancing", NULL, &d->balancing, why, whysz)) != KH_OK)
		return r;
	return get_bool(o, "enabled", NULL, &d->enabled, why, whysz);
}

int kg_json_promote(const json_t *o, enum kh_gstore_role *old, char *why, size_t whysz)
{
	static const char *const keys[] = {"old_primary_role", NULL};
	const char *s;
	int r;
	*old = KH_GROLE_PRODUCTION;
	if ((r = kg_json_only(o, keys, NULL, why, whysz)) != KH_OK ||
	    (r = kg_json_str(o, "old_primary_role", false, 16, &s, NULL, why, whysz)) != KH_OK)
		return r;
	if (s && (kh_gstore_role_parse(s, old) != KH_OK || *old == KH_GROLE_PRIMARY))
		return bad(why, whysz, "old_primary_role: \"Production\" or \"Backup\"");
	return KH_OK;
}

/* ---- answers ------------------------------------------------------------ */

static json_t *conn_pair(const struct kh_gstore_conn_pair *p)
{
	return json_pack("{s:b, s:s}", "allow", p->allow, "conn", kh_gstore_conn_name(p->conn));
}

json_t *kg_json_group_out(const struct kh_gstore_group *g)
{
	return json_pack("{s:I, s:s, s:s, s:s, s:s, s:{s:b, s:b, s:b}, s:{s:o, s:o, s:o}, s:i, "
			 "s:b, s:I, s:I, s:I}",
			 "id", (json_int_t)g->id, "name", g->name, "description", g->description,
			 "owner", g->owner, "type",
			 strcmp(g->type, "HSM") == 0 ? KG_GROUP_TYPE_TEXT : g->type, "options",
			 "configuration", g->opt_configuration, "monitoring", g->opt_monitoring,
			 "balancing", g->opt_balancing, "pairs", "excrypt",
			 conn_pair(&g->pairs[KH_GPAIR_EXCRYPT]), "http",
			 conn_pair(&g->pairs[KH_GPAIR_HTTP]), "international",
			 conn_pair(&g->pairs[KH_GPAIR_INTERNATIONAL]), "port", (int)g->port,
			 "enabled", g->enabled, "journal_head", (json_int_t)g->journal_head,
			 "created_ms", (json_int_t)g->created_ms, "changed_ms",
			 (json_int_t)g->changed_ms);
}

json_t *kg_json_device_out(const struct kh_gstore_device *d, const struct kg_live *live)
{
	struct kg_live none;
	json_t *o;
	if (live == NULL) {
		memset(&none, 0, sizeof(none));
		none.state = d->state;
		none.latency_ms = -1;
		live = &none;
	}
	o = json_pack("{s:I, s:I, s:s, s:i, s:i, s:s, s:b, s:i, s:b, s:s, s:b, s:b, s:I, s:i}",
		      "id", (json_int_t)d->id, "group_id", (json_int_t)d->group_id, "host",
		      d->host, "port", (int)d->port, "admin_port", (int)d->admin_port, "role",
		      kh_gstore_role_name(d->role), "balancing", d->balancing, "ping_timeout_ms",
		      (int)d->ping_timeout_ms, "enabled", d->enabled, "state",
		      kh_gstore_state_name(d->enabled ? live->state : KH_GSTATE_DISABLED),
		      "serving", live->serving, "synced", live->synced, "pending",
		      (json_int_t)live->pending, "in_flight", (int)live->in_flight);
	if (o == NULL)
		return NULL;
	json_object_set_new(o, "latency_ms",
			    live->latency_ms < 0 ? json_null() : json_real(live->latency_ms));
	json_object_set_new(o, "last_ping_ms", json_integer(live->last_ping_ms));
	json_object_set_new(o, "requests_per_s", json_real(live->requests_per_s));
	json_object_set_new(o, "requests", json_integer((json_int_t)live->requests));
	json_object_set_new(o, "errors", json_integer((json_int_t)live->errors));
	json_object_set_new(o, "last_error", json_string(live->last_error));
	json_object_set_new(o, "repl_version", json_integer(d->repl_version));
	json_object_set_new(o, "facts",
			    json_pack("{s:s, s:s, s:s, s:{s:s, s:s, s:s}}", "model",
				      d->facts.model, "version", d->facts.version, "features",
				      d->facts.features, "kcv", "ftk", d->facts.kcv_ftk, "pmk",
				      d->facts.kcv_pmk, "bek", d->facts.kcv_bek));
	json_object_set_new(o, "created_ms", json_integer(d->created_ms));
	json_object_set_new(o, "changed_ms", json_integer(d->changed_ms));
	return o;
}

json_t *kg_json_diag_out(const struct kg_diag *dg)
{
	json_t *steps = json_array();
	for (int i = 0; i < KG_DIAG_NSTEPS; i++)
		json_array_append_new(steps,
				      json_pack("{s:s, s:s, s:s}", "step",
						kg_diag_step_name((enum kg_diag_step)i), "state",
						kg_diag_state_name(dg->step[i].state), "message",
						dg->step[i].msg));
	return json_pack("{s:b, s:o, s:o}", "ok", dg->failed < 0, "failed",
			 dg->failed < 0 || dg->failed >= KG_DIAG_NSTEPS
				 ? json_null()
				 : json_string(kg_diag_step_name((enum kg_diag_step)dg->failed)),
			 "steps", steps);
}

json_t *kg_json_check_out(const struct kg_check *ck)
{
	json_t *m = json_array();
	for (size_t i = 0; i < ck->n && i < KG_CHECK_MAX; i++)
		json_array_append_new(m, json_pack("{s:I, s:b, s:b, s:I, s:s, s:s}", "device_id",
						   (json_int_t)ck->m[i].device_id, "reached",
						   ck->m[i].reached, "agrees", ck->m[i].agrees,
						   "rows", (json_int_t)ck->m[i].rows, "ck",
						   ck->m[i].ck, "message", ck->m[i].msg));
	return json_pack("{s:b, s:o}", "all_agree", ck->all_agree, "members", m);
}

json_t *kg_json_error(int err, const char *reason)
{
	return json_pack("{s:s, s:s}", "error", kh_errname(err), "reason", reason ? reason : "");
}

char *kg_json_text(const json_t *j, size_t *len)
{
	json_free_t jfree = NULL;
	char *s = json_dumps(j, JSON_COMPACT), *out = NULL;
	*len = 0;
	if (s == NULL)
		return NULL;
	/* jansson's text comes from jansson's allocator: copy, then give it back */
	*len = strlen(s);
	if ((out = malloc(*len + 1)) != NULL)
		memcpy(out, s, *len + 1);
	else
		*len = 0;
	json_get_alloc_funcs(NULL, &jfree);
	if (jfree) {
		kh_wipe(s, strlen(s));
		jfree(s);
	}
	return out;
}

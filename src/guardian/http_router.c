/*
 * The REST API's routes and handlers. Routes are data: method, path
 * pattern and what the caller must hold; kg_router_handle matches, checks
 * size, session, CSRF and permission once, parses the body, then runs the
 * handler. Handlers check before they act and answer every error as JSON
 * {"error", "reason"}. Never logs or answers with a password or a token
 * (but the login answer's own).
 */
#include "guardian/http_router.h"
#include "guardian/http_admin.h"
#include "guardian/http_json.h"
#include "guardian/http_session.h"
#include "guardian/users.h"
#include "common/kh_buf.h"
#include "common/kh_frame.h"
#include "common/kh_log.h"
#include "common/kh_mem.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RELAY_CONNECT_MS 5000
#define LIST_CAP 65536 /* rows of any list answer */

struct kg_router {
	const struct kg_http_ops *ops;
	struct kg_core *core;
	struct kg_sessions *sess;
	bool secure_cookie;
	pthread_mutex_t mu;
	unsigned relays;
	struct kg_admin *admin;  /* the console's connections to devices */
};

/* What a route needs before its handler runs. */
enum need {
	NEED_NONE,    /* login */
	NEED_SESSION, /* a session, authorized or not (logout, session) */
	NEED_AUTH,    /* an authorized session (and perm, when not 0) */
};

struct call {
	struct kg_router *rt;
	const struct kg_req *req;
	struct kg_resp *resp;
	struct kg_sess s;
	bool have_session, by_cookie;
	json_t *body;
	int64_t id;         /* the path's {id} */
	char name[KH_GSTORE_USER_MAX + 1]; /* the path's {name} */
	int64_t now;        /* wall_ms() when the request came: its session time */
};

typedef void (*handler_fn)(struct call *c);

struct route {
	const char *method;
	const char *pattern; /* segments; "#" an id, "*" a name */
	handler_fn fn;
	enum need need;
	unsigned perm;
};

static int64_t wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- answers ------------------------------------------------------------ */

int kg_http_status(int err)
{
	switch (err) {
	case KH_OK:
		return 200;
	case KH_ERR_MALFORMED:
	case KH_ERR_MISSING_FIELD:
	case KH_ERR_BAD_FIELD:
	case KH_ERR_WEAK_PASSWORD:
	case KH_ERR_UNKNOWN_COMMAND:
	case KH_ERR_UNSUPPORTED:
		return 400;
	case KH_ERR_NOT_LOGGED_IN:
	case KH_ERR_AUTH_FAILED:
		return 401;
	case KH_ERR_PERMISSION_DENIED:
	case KH_ERR_COMMAND_NOT_ALLOWED:
	case KH_ERR_ROLE_MISMATCH:
	case KH_ERR_PASSWORD_CHANGE_REQUIRED:
	case KH_ERR_PORT_NOT_ALLOWED:
		return 403;
	case KH_ERR_NOT_FOUND:
		return 404;
	case KH_ERR_EXISTS:
	case KH_ERR_IN_USE:
	case KH_ERR_STATE:
	case KH_ERR_BAD_KCV:
	case KH_ERR_MAJOR_KEY_NOT_LOADED:
		return 409;
	case KH_ERR_TOO_LARGE:
		return 413;
	case KH_ERR_LOCKED:
		return 423;
	case KH_ERR_IO:
	case KH_ERR_CONNECT:
	case KH_ERR_TLS:
	case KH_ERR_TLS_HANDSHAKE:
	case KH_ERR_TLS_CERT_REQUIRED:
	case KH_ERR_TLS_CERT_UNKNOWN_CA:
	case KH_ERR_TLS_CERT_EXPIRED:
	case KH_ERR_TLS_CERT_REVOKED:
	case KH_ERR_CLOSED:
	case KH_ERR_TIMEOUT:
	case KH_ERR_PROTOCOL:
		return 502;
	case KH_ERR_BUSY:
		return 503;
	default:
		return 500;
	}
}

void kg_resp_clear(struct kg_resp *r)
{
	if (r->body) {
		kh_wipe(r->body, r->body_len);
		free(r->body);
	}
	memset(r, 0, sizeof(*r));
	r->relay_fd = -1;
}

/* Takes j (steals the reference). */
static void answer(struct call *c, int status, json_t *j)
{
	struct kg_resp *r = c->resp;
	if (r->body) {
		kh_wipe(r->body, r->body_len);
		free(r->body);
		r->body = NULL;
		r->body_len = 0;
	}
	r->status = status;
	if (j == NULL) {
		if (status == 204)
			return;
		r->status = 500;
		j = json_pack("{s:s, s:s}", "error", "INTERNAL", "reason",
			      "the answer could not be built");
		if (j == NULL)
			return;
	}
	r->body = kg_json_text(j, &r->body_len);
	json_decref(j);
}

static void fail(struct call *c, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fail(struct call *c, int err, const char *fmt, ...)
{
	char reason[KG_WHY_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(reason, sizeof(reason), fmt, ap);
	va_end(ap);
	if (reason[0] == '\0')
		snprintf(reason, sizeof(reason), "%s", kh_strerror(err));
	answer(c, kg_http_status(err), kg_json_error(err, reason));
}

/* A store refusal or a core action's result. */
static void fail_why(struct call *c, int err, const char *why)
{
	fail(c, err, "%s", why ? why : "");
}

/* ---- path and query ----------------------------------------------------- */

static bool parse_id(const char *s, size_t n, int64_t *out)
{
	int64_t v = 0;
	if (n == 0 || n > 18 || s[0] == '0')
		return false;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (s[i] - '0');
	}
	*out = v;
	return true;
}

/* Does path match pattern? Captures {id} and {name}. */
static bool match(const char *pattern, const char *path, int64_t *id, char *name, size_t namesz)
{
	const char *p = pattern, *q = path;
	while (*p && *q) {
		size_t pl = strcspn(p + 1, "/") + 1, ql = strcspn(q + 1, "/") + 1;
		if (*p != '/' || *q != '/')
			return false;
		if (pl == 2 && p[1] == '#') {
			if (!parse_id(q + 1, ql - 1, id))
				return false;
		} else if (pl == 2 && p[1] == '*') {
			if (ql - 1 == 0 || ql - 1 >= namesz)
				return false;
			memcpy(name, q + 1, ql - 1);
			name[ql - 1] = '\0';
		} else if (pl != ql || memcmp(p, q, pl) != 0) {
			return false;
		}
		p += pl;
		q += ql;
	}
	return *p == '\0' && *q == '\0';
}

static bool query_int(struct call *c, const char *key, int64_t lo, int64_t hi, int64_t *out)
{
	const char *v = c->req->query ? c->req->query(c->req->qctx, key) : NULL;
	char *end;
	long long x;
	if (v == NULL)
		return true;
	errno = 0;
	x = strtoll(v, &end, 10);
	if (*v == '\0' || *end != '\0' || errno != 0 || x < lo || x > hi) {
		fail(c, KH_ERR_BAD_FIELD, "%s: an integer from %lld to %lld", key, (long long)lo,
		     (long long)hi);
		return false;
	}
	*out = x;
	return true;
}

/* ---- sessions ----------------------------------------------------------- */

static const char *bearer(const char *auth)
{
	if (auth == NULL || strncasecmp(auth, "Bearer ", 7) != 0)
		return NULL;
	auth += 7;
	while (*auth == ' ')
		auth++;
	return auth;
}

/* The session the request carries, if any: the header first, then the cookie. */
static void find_session(struct call *c)
{
	const char *tok = bearer(c->req->authorization);
	c->by_cookie = false;
	if (tok == NULL && c->req->cookie) {
		tok = c->req->cookie;
		c->by_cookie = true;
	}
	c->have_session = tok && kg_sess_find(c->rt->sess, tok, c->now, &c->s) == KH_OK;
}

static const char *perm_text(unsigned perm)
{
	for (unsigned i = 0; i < KH_GPERM_COUNT; i++)
		if (perm == (1u << i))
			return kh_gstore_perm_name(i);
	return "?";
}

static struct kh_gstore *store(struct call *c)
{
	return c->rt->ops->store(c->rt->core);
}

static void event(struct call *c, int64_t group, int64_t device, enum kh_gstore_ekind kind,
		  const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void event(struct call *c, int64_t group, int64_t device, enum kh_gstore_ekind kind,
		  const char *fmt, ...)
{
	char text[KH_GSTORE_TEXT_MAX + 1];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	KH_IGNORE(kh_gstore_event_add(store(c), wall_ms(), group, device, kind, text, NULL));
}

static json_t *session_out(struct call *c, const struct kg_sess *s, bool secrets)
{
	json_t *logins = json_array(), *o;
	for (int i = 0; i < s->nlogins && i < 2; i++)
		json_array_append_new(logins, json_string(s->logins[i]));
	o = json_pack("{s:s, s:o, s:i, s:b, s:I}", "role", s->role, "logins", logins, "needed",
		      s->needed, "authorized", kg_sess_authorized(s), "expires_s",
		      (json_int_t)kg_sess_expires_s(c->rt->sess, s, c->now));
	if (o && secrets) {
		json_object_set_new(o, "session", json_string(s->token));
		json_object_set_new(o, "csrf", json_string(s->csrf));
	}
	return o;
}

static void set_cookie(struct call *c, const char *token)
{
	struct kg_resp *r = c->resp;
	if (token)
		snprintf(r->set_cookie, sizeof(r->set_cookie),
			 "kh_session=%s; %sHttpOnly; SameSite=Strict; Path=/", token,
			 c->rt->secure_cookie ? "Secure; " : "");
	else
		snprintf(r->set_cookie, sizeof(r->set_cookie),
			 "kh_session=; %sHttpOnly; SameSite=Strict; Path=/; Max-Age=0",
			 c->rt->secure_cookie ? "Secure; " : "");
}

/* ---- login, logout, session --------------------------------------------- */

static void h_login(struct call *c)
{
	static const char *const keys[] = {"user", "password", NULL};
	struct kh_gstore_user u;
	struct kh_gstore_role_rec role;
	struct kg_sess s;
	char why[KG_WHY_MAX] = "";
	const char *user, *pw;
	size_t pwlen;
	bool locked = false;
	int r;

	if ((r = kg_json_only(c->body, keys, NULL, why, sizeof(why))) != KH_OK ||
	    (r = kg_json_str(c->body, "user", true, KH_GSTORE_USER_MAX, &user, NULL, why,
			     sizeof(why))) != KH_OK ||
	    (r = kg_json_str(c->body, "password", true, KG_PW_MAX, &pw, &pwlen, why,
			     sizeof(why))) != KH_OK)
		return fail_why(c, r, why);
	r = kg_users_authenticate(store(c), user, (const uint8_t *)pw, pwlen, c->now, &u, &role,
				  &locked, why, sizeof(why));
	if (r != KH_OK)
		return fail_why(c, r, why);
	/* a pending session of a two-login role takes this as its second login */
	if (c->have_session && !kg_sess_authorized(&c->s)) {
		if (!kg_sess_csrf_ok(&c->s, c->req->method, c->by_cookie, c->req->csrf))
			return fail(c, KH_ERR_PERMISSION_DENIED,
				    "a request authenticated by the cookie must carry X-CSRF-Token");
		r = kg_sess_add_login(c->rt->sess, c->s.token, u.name, role.name, c->now, &s,
				      why, sizeof(why));
		if (r != KH_OK)
			return fail_why(c, r, why);
		log_info("guardian api: %s logged in as the second user of a %s session", u.name,
			 s.role);
	} else {
		if ((r = kg_sess_new(c->rt->sess, u.name, &role, c->now, &s)) != KH_OK)
			return fail(c, r, "%s", r == KH_ERR_BUSY ? "too many sessions: try later"
								: "no session could be made");
		log_info("guardian api: %s logged in (role %s)", u.name, role.name);
	}
	set_cookie(c, s.token);
	answer(c, 200, session_out(c, &s, true));
	kh_wipe(&s, sizeof(s));
}

static void h_logout(struct call *c)
{
	kg_admin_close(c->rt->admin, c->s.token, 0);
	kg_sess_end(c->rt->sess, c->s.token);
	set_cookie(c, NULL);
	answer(c, 204, NULL);
}

static void h_session(struct call *c)
{
	answer(c, 200, session_out(c, &c->s, false));
}

/* ---- users and roles ---------------------------------------------------- */

static json_t *user_out(const struct kh_gstore_user *u)
{
	return json_pack("{s:s, s:s, s:b, s:b}", "name", u->name, "role", u->role, "locked",
			 u->locked_until_ms > wall_ms(), "must_change", u->must_change);
}

static json_t *role_out(const struct kh_gstore_role_rec *r)
{
	json_t *perms = json_array();
	for (unsigned i = 0; i < KH_GPERM_COUNT; i++)
		if (r->perms & (1u << i))
			json_array_append_new(perms, json_string(kh_gstore_perm_name(i)));
	return json_pack("{s:s, s:o, s:i}", "name", r->name, "permissions", perms,
			 "logins_required", r->logins_required);
}

/* Lists through a store function that answers TOO_LARGE when max is short:
 * grow and try again. */
typedef int (*list_fn)(struct call *c, void *out, size_t max, size_t *n,
		       struct kh_gstore_why *why);

static void *list_all(struct call *c, list_fn fn, size_t recsz, size_t *n)
{
	struct kh_gstore_why why = {""};
	for (size_t max = 64; max <= LIST_CAP; max *= 4) {
		void *v = calloc(max, recsz);
		int r;
		if (v == NULL) {
			fail(c, KH_ERR_NOMEM, "out of memory");
			return NULL;
		}
		if ((r = fn(c, v, max, n, &why)) == KH_OK)
			return v;
		free(v);
		if (r != KH_ERR_TOO_LARGE) {
			fail_why(c, r, why.text);
			return NULL;
		}
	}
	fail(c, KH_ERR_TOO_LARGE, "more than %d rows", LIST_CAP);
	return NULL;
}

static int users_fn(struct call *c, void *out, size_t max, size_t *n, struct kh_gstore_why *why)
{
	return kh_gstore_user_list(store(c), out, max, n, why);
}

static void h_users(struct call *c)
{
	size_t n = 0;
	struct kh_gstore_user *u = list_all(c, users_fn, sizeof(*u), &n);
	json_t *a;
	if (u == NULL)
		return;
	a = json_array();
	for (size_t i = 0; i < n; i++)
		json_array_append_new(a, user_out(&u[i]));
	free(u);
	answer(c, 200, json_pack("{s:o}", "users", a));
}

static void h_user_add(struct call *c)
{
	static const char *const keys[] = {"name", "role", "password", NULL};
	struct kh_gstore_user u;
	struct kh_gstore_why w;
	char why[KG_WHY_MAX] = "";
	const char *name, *role, *pw;
	size_t pwlen;
	int r;
	if ((r = kg_json_only(c->body, keys, NULL, why, sizeof(why))) != KH_OK ||
	    (r = kg_json_str(c->body, "name", true, KH_GSTORE_USER_MAX, &name, NULL, why,
			     sizeof(why))) != KH_OK ||
	    (r = kg_json_str(c->body, "role", true, KH_GSTORE_USER_MAX, &role, NULL, why,
			     sizeof(why))) != KH_OK ||
	    (r = kg_json_str(c->body, "password", true, KG_PW_MAX, &pw, &pwlen, why,
			     sizeof(why))) != KH_OK)
		return fail_why(c, r, why);
	/* set by someone else: the user should choose their own */
	if ((r = kg_users_add(store(c), name, role, (const uint8_t *)pw, pwlen, true, why,
			      sizeof(why))) != KH_OK)
		return fail_why(c, r, why);
	if ((r = kh_gstore_user_get(store(c), name, &u, &w)) != KH_OK)
		return fail_why(c, r, w.text);
	event(c, 0, 0, KH_GEV_CONFIG, "user %s (role %s) added by %s", u.name, u.role,
	      c->s.logins[0]);
	answer(c, 201, user_out(&u));
}

static void h_user_remove(struct call *c)
{
	struct kh_gstore_why w;
	int r = kh_gstore_user_remove(store(c), c->name, &w);
	if (r != KH_OK)
		return fail_why(c, r, w.text);
	kg_sess_end_user(c->rt->sess, c->name);
	event(c, 0, 0, KH_GEV_CONFIG, "user %s removed by %s", c->name, c->s.logins[0]);
	answer(c, 204, NULL);
}

static void h_user_password(struct call *c)
{
	static const char *const keys[] = {"password", NULL};
	char why[KG_WHY_MAX] = "";
	const char *pw;
	size_t pwlen;
	bool own = false;
	int r;
	for (int i = 0; i < c->s.nlogins; i++)
		own |= strcasecmp(c->s.logins[i], c->name) == 0;
	if (!own && !(c->s.perms & KH_GPERM_USERS_MANAGE))
		return fail(c, KH_ERR_PERMISSION_DENIED,
			    "role %s lacks users.manage: only your own password", c->s.role);
	if ((r = kg_json_only(c->body, keys, NULL, why, sizeof(why))) != KH_OK ||
	    (r = kg_json_str(c->body, "password", true, KG_PW_MAX, &pw, &pwlen, why,
			     sizeof(why))) != KH_OK)
		return fail_why(c, r, why);
	if ((r = kg_users_set_password(store(c), c->name, (const uint8_t *)pw, pwlen, !own, why,
				       sizeof(why))) != KH_OK)
		return fail_why(c, r, why);
	if (!own)
		kg_sess_end_user(c->rt->sess, c->name);
	event(c, 0, 0, KH_GEV_CONFIG, "password of user %s set by %s", c->name, c->s.logins[0]);
	answer(c, 204, NULL);
}

static int roles_fn(struct call *c, void *out, size_t max, size_t *n, struct kh_gstore_why *why)
{
	return kh_gstore_role_list(store(c), out, max, n, why);
}

static void h_roles(struct call *c)
{
	size_t n = 0;
	struct kh_gstore_role_rec *v = list_all(c, roles_fn, sizeof(*v), &n);
	json_t *a;
	if (v == NULL)
		return;
	a = json_array();
	for (size_t i = 0; i < n; i++)
		json_array_append_new(a, role_out(&v[i]));
	free(v);
	answer(c, 200, json_pack("{s:o}", "roles", a));
}

static void h_role_modify(struct call *c)
{
	static const char *const keys[] = {"logins_required", NULL};
	struct kh_gstore_role_rec role;
	struct kh_gstore_why w;
	char why[KG_WHY_MAX] = "";
	json_t *v;
	int r;
	if ((r = kg_json_only(c->body, keys, NULL, why, sizeof(why))) != KH_OK)
		return fail_why(c, r, why);
	if ((r = kh_gstore_role_get(store(c), c->name, &role, &w)) != KH_OK)
		return fail_why(c, r, w.text);
	if ((v = json_object_get(c->body, "logins_required")) != NULL) {
		if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 2)
			return fail(c, KH_ERR_BAD_FIELD, "logins_required: 1 or 2");
		if ((r = kh_gstore_role_set_logins(store(c), role.name,
						   (int)json_integer_value(v), &w)) != KH_OK)
			return fail_why(c, r, w.text);
		event(c, 0, 0, KH_GEV_CONFIG, "role %s now needs %d login(s), set by %s", role.name,
		      (int)json_integer_value(v), c->s.logins[0]);
	}
	if ((r = kh_gstore_role_get(store(c), role.name, &role, &w)) != KH_OK)
		return fail_why(c, r, w.text);
	answer(c, 200, role_out(&role));
}

/* ---- groups ------------------------------------------------------------- */

static void add_warnings(json_t *o, const struct kh_gstore_group *g)
{
	json_t *w = json_array();
	if (g->pairs[KH_GPAIR_HTTP].allow)
		json_array_append_new(w, json_string("keyhold-hsm has no HTTP service: the pair is "
						     "kept and shown but carries nothing"));
	if (g->pairs[KH_GPAIR_INTERNATIONAL].allow)
		json_array_append_new(w, json_string("keyhold-hsm has no International service: "
						     "the pair is kept and shown but carries "
						     "nothing"));
	if (o && json_array_size(w) > 0)
		json_object_set_new(o, "warnings", w);
	else
		json_decref(w);
}

static int groups_fn(struct call *c, void *out, size_t max, size_t *n, struct kh_gstore_why *why)
{
	return kh_gstore_group_list(store(c), out, max, n, why);
}

static void h_groups(struct call *c)
{
	size_t n = 0;
	struct kh_gstore_group *g = list_all(c, groups_fn, sizeof(*g), &n);
	json_t *a;
	if (g == NULL)
		return;
	a = json_array();
	for (size_t i = 0; i < n; i++)
		json_array_append_new(a, kg_json_group_out(&g[i]));
	free(g);
	answer(c, 200, json_pack("{s:o}", "groups", a));
}

static json_t *device_json(struct call *c, const struct kh_gstore_device *d)
{
	struct kg_live live;
	memset(&live, 0, sizeof(live));
	live.latency_ms = -1;
	if (c->rt->ops->device_live(c->rt->core, d->id, &live) != KH_OK)
		return kg_json_device_out(d, NULL);
	return kg_json_device_out(d, &live);
}

static int devices_fn(struct call *c, void *out, size_t max, size_t *n, struct kh_gstore_why *why)
{
	return kh_gstore_device_list(store(c), c->id < 0 ? 0 : c->id, out, max, n, why);
}

/* The devices of group (0: all) as a JSON array, or NULL after answering. */
static json_t *devices_json(struct call *c, int64_t group)
{
	int64_t saved = c->id;
	size_t n = 0;
	struct kh_gstore_device *d;
	json_t *a;
	c->id = group;
	d = list_all(c, devices_fn, sizeof(*d), &n);
	c->id = saved;
	if (d == NULL)
		return NULL;
	a = json_array();
	for (size_t i = 0; i < n; i++)
		json_array_append_new(a, device_json(c, &d[i]));
	free(d);
	return a;
}

static void h_group_get(struct call *c)
{
	struct kh_gstore_group g;
	struct kh_gstore_why w;
	json_t *o, *devs;
	int r = kh_gstore_group_get(store(c), c->id, &g, &w);
	if (r != KH_OK)
		return fail_why(c, r, w.text);
	if ((devs = devices_json(c, g.id)) == NULL)
		return;
	if ((o = kg_json_group_out(&g)) != NULL)
		json_object_set_new(o, "devices", devs);
	else
		json_decref(devs);
	answer(c, 200, o);
}

/* The group as stored after a change, with its warnings. */
static void group_answer(struct call *c, int status, int64_t id)
{
	struct kh_gstore_group g;
	struct kh_gstore_why w;
	json_t *o;
	int r = kh_gstore_group_get(store(c), id, &g, &w);
	if (r != KH_OK)
		return fail_why(c, r, w.text);
	o = kg_json_group_out(&g);
	add_warnings(o, &g);
	answer(c, status, o);
}

static void h_group_add(struct call *c)
{
	struct kh_gstore_group g;
	char why[KG_WHY_MAX] = "";
	int64_t id = 0;
	int r;
	kh_gstore_group_defaults(&g);
	snprintf(g.owner, sizeof(g.owner), "%s", c->s.logins[0]);
	if ((r = kg_json_group(c->body, true, &g, why, sizeof(why))) != KH_OK ||
	    (r = c->rt->ops->group_add(c->rt->core, &g, &id, why, sizeof(why))) != KH_OK)
		return fail_why(c, r, why);
	group_answer(c, 201, id);
}

static void h_group_modify(struct call *c)
{
	struct kh_gstore_group g;
	struct kh_gstore_why w;
	char why[KG_WHY_MAX] = "";
	int r = kh_gstore_group_get(store(c), c->id, &g, &w);
	if (r != KH_OK)
		return fail_why(c, r, w.text);
	if ((r = kg_json_group(c->body, false, &g, why, sizeof(why))) != KH_OK ||
	    (r = c->rt->ops->group_modify(c->rt->core, c->id, &g, why, sizeof(why))) != KH_OK)
		return fail_why(c, r, why);
	group_answer(c, 200, c->id);
}

static void h_group_remove(struct call *c)
{
	char why[KG_WHY_MAX] = "";
	int r = c->rt->ops->group_remove(c->rt->core, c->id, why, sizeof(why));
	if (r != KH_OK)
		return fail_why(c, r, why);
	answer(c, 204, NULL);
}

static void h_group_check(struct call *c)
{
	char why[KG_WHY_MAX] = "";
	struct kg_check *ck = calloc(1, sizeof(*ck));
	int r;
	if (ck == NULL)
		return fail(c, KH_ERR_NOMEM, "out of memory");
	r = c->rt->ops->group_check(c->rt->core, c->id, ck, why, sizeof(why));
	if (r == KH_OK)
		answer(c, 200, kg_json_check_out(ck));
	else
		fail_why(c, r, why);
	free(ck);
}

static void h_group_replication(struct call *c)
{
	struct kh_gstore_group g;
	struct kh_gstore_why w;
	struct kh_gstore_device *d;
	size_t n = 0;
	json_t *a;
	int r = kh_gstore_group_get(store(c), c->id, &g, &w);
	if (r != KH_OK)
		return fail_why(c, r, w.text);
	if ((d = list_all(c, devices_fn, sizeof(*d), &n)) == NULL)
		return;
	a = json_array();
	for (size_t i = 0; i < n; i++) {
		int64_t pending = 0;
		if (kh_gstore_journal_count_pending(store(c), d[i].id, &pending, &w) != KH_OK)
			pending = -1;
		json_array_append_new(
			a, json_pack("{s:I, s:s, s:I, s:I, s:b}", "device_id", (json_int_t)d[i].id,
				     "role", kh_gstore_role_name(d[i].role), "repl_version",
				     (json_int_t)d[i].repl_version, "pending", (json_int_t)pending,
				     "synced", pending == 0 && d[i].repl_version >= g.journal_head));
	}
	free(d);
	answer(c, 200,
	       json_pack("{s:I, s:o}", "journal_head", (json_int_t)g.journal_head, "members", a));
}

/* ---- devices ------------------------------------------------------------ */

static void device_answer(struct call *c, int status, int64_t id)
{
	struct kh_gstore_device d;
	struct kh_gstore_why w;
	int r = kh_gstore_device_get(store(c), id, &d, &w);
	if (r != KH_OK)
		return fail_why(c, r, w.text);
	answer(c, status, device_json(c, &d));
}

static void h_group_devices(struct call *c)
{
	struct kh_gstore_group g;
	struct kh_gstore_why w;
	json_t *a;
	int r = kh_gstore_group_get(store(c), c->id, &g, &w);
	if (r != KH_OK)
		return fail_why(c, r, w.text);
	if ((a = devices_json(c, c->id)) != NULL)
		answer(c, 200, json_pack("{s:o}", "devices", a));
}

static void h_devices(struct call *c)
{
	json_t *a = devices_json(c, 0);
	if (a != NULL)
		answer(c, 200, json_pack("{s:o}", "devices", a));
}

static void h_device_get(struct call *c)
{
	device_answer(c, 200, c->id);
}

static void h_device_add(struct call *c)
{
	struct kh_gstore_device d;
	struct kh_gstore_group g;
	struct kh_gstore_why w;
	enum kg_admit admit = KG_ADMIT_OK;
	char why[KG_WHY_MAX] = "";
	bool role_given = false;
	struct kh_gstore_device first;
	int64_t id = 0;
	size_t n = 0;
	int r;

	if ((r = kh_gstore_group_get(store(c), c->id, &g, &w)) != KH_OK)
		return fail_why(c, r, w.text);
	kh_gstore_device_defaults(&d);
	d.group_id = c->id;
	if ((r = kg_json_device(c->body, true, &d, &role_given, why, sizeof(why))) != KH_OK)
		return fail_why(c, r, why);
	/* no role given: the first device of a group is its Primary */
	if (!role_given) {
		/* max 0: KH_OK only when the group has no device */
		r = kh_gstore_device_list(store(c), c->id, &first, 0, &n, &w);
		if (r == KH_OK)
			d.role = KH_GROLE_PRIMARY;
		else if (r != KH_ERR_TOO_LARGE)
			return fail_why(c, r, w.text);
	}
	r = c->rt->ops->device_add(c->rt->core, &d, &id, &admit, why, sizeof(why));
	if (r != KH_OK && admit != KG_ADMIT_OK) {
		json_t *e;
		int status = admit == KG_ADMIT_UNREACHABLE ? kg_http_status(r) : 422;
		if (admit == KG_ADMIT_UNREACHABLE && status != 502)
			status = 502;
		e = json_pack("{s:s, s:s, s:s}", "error",
			      admit == KG_ADMIT_UNREACHABLE ? kh_errname(r) : "REFUSED", "reason",
			      why, "admit", kg_admit_name(admit));
		return answer(c, status, e);
	}
	if (r != KH_OK)
		return fail_why(c, r, why);
	device_answer(c, 201, id);
}

static void h_device_modify(struct call *c)
{
	struct kh_gstore_device d;
	struct kh_gstore_why w;
	char why[KG_WHY_MAX] = "";
	bool role_given;
	int r = kh_gstore_device_get(store(c), c->id, &d, &w);
	if (r != KH_OK)
		return fail_why(c, r, w.text);
	if ((r = kg_json_device(c->body, false, &d, &role_given, why, sizeof(why))) != KH_OK ||
	    (r = c->rt->ops->device_modify(c->rt->core, c->id, &d, why, sizeof(why))) != KH_OK)
		return fail_why(c, r, why);
	device_answer(c, 200, c->id);
}

static void set_enabled(struct call *c, bool on)
{
	static const char *const none[] = {NULL};
	struct kh_gstore_device d;
	struct kh_gstore_why w;
	char why[KG_WHY_MAX] = "";
	int r;
	if ((r = kg_json_only(c->body, none, NULL, why, sizeof(why))) != KH_OK)
		return fail_why(c, r, why);
	if ((r = kh_gstore_device_get(store(c), c->id, &d, &w)) != KH_OK)
		return fail_why(c, r, w.text);
	d.enabled = on;
	if ((r = c->rt->ops->device_modify(c->rt->core, c->id, &d, why, sizeof(why))) != KH_OK)
		return fail_why(c, r, why);
	device_answer(c, 200, c->id);
}

static void h_device_enable(struct call *c)
{
	set_enabled(c, true);
}

static void h_device_disable(struct call *c)
{
	set_enabled(c, false);
}

static void h_device_remove(struct call *c)
{
	char why[KG_WHY_MAX] = "";
	int r = c->rt->ops->device_remove(c->rt->core, c->id, why, sizeof(why));
	if (r != KH_OK)
		return fail_why(c, r, why);
	answer(c, 204, NULL);
}

static void h_device_promote(struct call *c)
{
	enum kh_gstore_role old;
	char why[KG_WHY_MAX] = "";
	int r;
	if ((r = kg_json_promote(c->body, &old, why, sizeof(why))) != KH_OK ||
	    (r = c->rt->ops->device_promote(c->rt->core, c->id, old, why, sizeof(why))) != KH_OK)
		return fail_why(c, r, why);
	device_answer(c, 200, c->id);
}

static void h_device_sync(struct call *c)
{
	static const char *const none[] = {NULL};
	char why[KG_WHY_MAX] = "";
	int r;
	if ((r = kg_json_only(c->body, none, NULL, why, sizeof(why))) != KH_OK ||
	    (r = c->rt->ops->device_sync(c->rt->core, c->id, why, sizeof(why))) != KH_OK)
		return fail_why(c, r, why);
	device_answer(c, 200, c->id);
}

static void h_device_diagnose(struct call *c)
{
	char why[KG_WHY_MAX] = "";
	struct kg_diag *dg = calloc(1, sizeof(*dg));
	int r;
	if (dg == NULL)
		return fail(c, KH_ERR_NOMEM, "out of memory");
	dg->failed = -2; /* not run at all, unless the core fills it */
	r = c->rt->ops->device_diagnose(c->rt->core, c->id, dg, why, sizeof(why));
	/* a failed step is a result, not an error of the request */
	if (r == KH_OK || (r != KH_ERR_NOT_FOUND && dg->failed >= 0))
		answer(c, 200, kg_json_diag_out(dg));
	else
		fail_why(c, r, why);
	free(dg);
}

#define METRICS_MAX 1500

static void h_device_metrics(struct call *c)
{
	struct kh_gstore_device d;
	struct kh_gstore_why w;
	struct kh_gstore_metric *m;
	enum kh_gstore_res res = KH_GRES_10S;
	const char *rs = c->req->query ? c->req->query(c->req->qctx, "res") : NULL;
	int64_t to = wall_ms(), from;
	size_t n = 0;
	json_t *a;
	int r;
	if (rs && strcmp(rs, "1m") == 0)
		res = KH_GRES_1M;
	else if (rs && strcmp(rs, "10s") != 0)
		return fail(c, KH_ERR_BAD_FIELD, "res: \"10s\" or \"1m\"");
	if (!query_int(c, "to", 0, INT64_MAX / 2, &to))
		return;
	from = to - 3600 * 1000;
	if (!query_int(c, "from", 0, INT64_MAX / 2, &from))
		return;
	if ((r = kh_gstore_device_get(store(c), c->id, &d, &w)) != KH_OK)
		return fail_why(c, r, w.text);
	if ((m = calloc(METRICS_MAX, sizeof(*m))) == NULL)
		return fail(c, KH_ERR_NOMEM, "out of memory");
	r = kh_gstore_metric_list(store(c), c->id, res, from, to, m, METRICS_MAX, &n, &w);
	if (r != KH_OK) {
		free(m);
		if (r == KH_ERR_TOO_LARGE)
			return fail(c, KH_ERR_BAD_FIELD,
				    "from, to: the range holds more than %d buckets", METRICS_MAX);
		return fail_why(c, r, w.text);
	}
	a = json_array();
	for (size_t i = 0; i < n; i++)
		json_array_append_new(
			a, json_pack("{s:I, s:I, s:I, s:f, s:f}", "t_ms", (json_int_t)m[i].t_ms,
				     "requests", (json_int_t)m[i].requests, "errors",
				     (json_int_t)m[i].errors, "lat_avg_ms",
				     m[i].requests > 0 ? (double)m[i].lat_sum_us /
								 (double)m[i].requests / 1000.0
						       : 0.0,
				     "lat_max_ms", (double)m[i].lat_max_us / 1000.0));
	free(m);
	answer(c, 200,
	       json_pack("{s:I, s:s, s:o}", "device_id", (json_int_t)c->id, "res",
			 res == KH_GRES_1M ? "1m" : "10s", "buckets", a));
}

static void h_events(struct call *c)
{
	struct kh_gstore_why w;
	struct kh_gstore_event *ev;
	int64_t group = 0, device = 0, skip = 0, max = 100;
	size_t n = 0;
	json_t *a;
	int r;
	if (!query_int(c, "group", 0, INT64_MAX, &group) ||
	    !query_int(c, "device", 0, INT64_MAX, &device) ||
	    !query_int(c, "skip", 0, INT32_MAX, &skip) || !query_int(c, "max", 1, 1000, &max))
		return;
	if ((ev = calloc((size_t)max, sizeof(*ev))) == NULL)
		return fail(c, KH_ERR_NOMEM, "out of memory");
	r = kh_gstore_event_list(store(c), group, device, (size_t)skip, ev, (size_t)max, &n, &w);
	if (r != KH_OK && r != KH_ERR_TOO_LARGE) {
		free(ev);
		return fail_why(c, r, w.text);
	}
	a = json_array();
	for (size_t i = 0; i < n; i++)
		json_array_append_new(a, json_pack("{s:I, s:I, s:I, s:I, s:s, s:s}", "id",
						   (json_int_t)ev[i].id, "t_ms",
						   (json_int_t)ev[i].t_ms, "group_id",
						   (json_int_t)ev[i].group_id, "device_id",
						   (json_int_t)ev[i].device_id, "kind",
						   kh_gstore_ekind_name(ev[i].kind), "text",
						   ev[i].text));
	free(ev);
	answer(c, 200, json_pack("{s:o}", "events", a));
}

/* ---- Remote Manage ------------------------------------------------------ */

static bool has_token(const char *list, const char *tok)
{
	size_t n = strlen(tok);
	while (list && *list) {
		while (*list == ' ' || *list == ',' || *list == '\t')
			list++;
		size_t k = strcspn(list, ", \t");
		if (k == n && strncasecmp(list, tok, n) == 0)
			return true;
		list += k;
	}
	return false;
}

/* A TCP connection to host:port within RELAY_CONNECT_MS, or -1. */
static int connect_to(const char *host, unsigned port, char *why, size_t whysz)
{
	struct addrinfo hints, *res = NULL, *ai;
	char sport[8];
	int fd = -1, rc;
	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;
	snprintf(sport, sizeof(sport), "%u", port);
	if ((rc = getaddrinfo(host, sport, &hints, &res)) != 0) {
		snprintf(why, whysz, "%s: %s", host, gai_strerror(rc));
		return -1;
	}
	snprintf(why, whysz, "%s port %u (Admin): no address", host, port);
	for (ai = res; ai && fd < 0; ai = ai->ai_next) {
		struct pollfd p;
		int err = 0;
		socklen_t len = sizeof(err);
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
			    ai->ai_protocol);
		if (fd < 0)
			continue;
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
			if (errno != EINPROGRESS) {
				err = errno;
			} else {
				p.fd = fd;
				p.events = POLLOUT;
				if (poll(&p, 1, RELAY_CONNECT_MS) != 1)
					err = ETIMEDOUT;
				else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
					err = errno;
			}
		}
		if (err != 0) {
			snprintf(why, whysz, "%s port %u (Admin): TCP connect: %s", host, port,
				 strerror(err));
			close(fd);
			fd = -1;
		}
	}
	freeaddrinfo(res);
	if (fd >= 0) {
		int fl = fcntl(fd, F_GETFL);
		if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) {
			close(fd);
			snprintf(why, whysz, "socket setup failed");
			return -1;
		}
	}
	return fd;
}

static void h_relay(struct call *c)
{
	char host[KH_GSTORE_HOST_MAX + 1], why[KG_WHY_MAX] = "";
	unsigned port = 0;
	bool granted = false;
	int fd, r;
	if (!has_token(c->req->connection, "upgrade") || c->req->upgrade == NULL ||
	    strcasecmp(c->req->upgrade, "keyhold-relay") != 0)
		return fail(c, KH_ERR_BAD_FIELD,
			    "the relay needs headers Connection: Upgrade and Upgrade: keyhold-relay");
	if ((r = c->rt->ops->device_admin_addr(c->rt->core, c->id, host, sizeof(host), &port)) !=
	    KH_OK)
		return fail(c, r, "device %lld: %s", (long long)c->id,
			    r == KH_ERR_NOT_FOUND ? "no such device" : kh_strerror(r));
	pthread_mutex_lock(&c->rt->mu);
	if (c->rt->relays < KG_RELAY_MAX) {
		c->rt->relays++;
		granted = true;
	}
	pthread_mutex_unlock(&c->rt->mu);
	if (!granted)
		return fail(c, KH_ERR_BUSY, "%d relays are open already: try later", KG_RELAY_MAX);
	if ((fd = connect_to(host, port, why, sizeof(why))) < 0) {
		kg_router_relay_done(c->rt);
		return fail(c, KH_ERR_CONNECT, "%s", why);
	}
	event(c, 0, c->id, KH_GEV_CONFIG, "remote manage of device %lld by %s", (long long)c->id,
	      c->s.logins[0]);
	log_info("guardian api: remote manage of device %lld by %s", (long long)c->id,
		 c->s.logins[0]);
	c->resp->status = 101;
	c->resp->relay_fd = fd;
}

void kg_router_relay_done(struct kg_router *rt)
{
	pthread_mutex_lock(&rt->mu);
	if (rt->relays > 0)
		rt->relays--;
	pthread_mutex_unlock(&rt->mu);
}

/* ---- the console's sealed admin channel ---------------------------------- */

/* One RMKX or RMSG to the device's Admin port over this session's own
 * connection, and the HSM's answer as it came. Nothing inside CT is read:
 * it is sealed to the HSM (PROTOCOL.md, RMSG). */
static void h_admin(struct call *c)
{
	static const char *const keys[] = {"frame", NULL};
	char why[KG_WHY_MAX] = "";
	const char *text;
	size_t n = 0, flen = 0;
	struct kh_frame *f = calloc(1, sizeof(*f));
	struct kh_buf *req = kh_buf_new(KG_BODY_MAX), *resp = kh_buf_new(KH_FRAME_MAX);
	bool answered = false, opened = false, open;
	int r;

	if (f == NULL || req == NULL || resp == NULL) {
		fail(c, KH_ERR_NOMEM, "out of memory");
		goto out;
	}
	if ((r = kg_json_only(c->body, keys, NULL, why, sizeof(why))) != KH_OK ||
	    (r = kg_json_str(c->body, "frame", true, KG_BODY_MAX, &text, &n, why, sizeof(why))) !=
		KH_OK) {
		fail_why(c, r, why);
		goto out;
	}
	if (kh_frame_find((const uint8_t *)text, n, KG_BODY_MAX, &flen) != 1 || flen != n ||
	    kh_frame_parse((const uint8_t *)text, n, KH_FIELDS_MAX, f) != KH_OK ||
	    (strcmp(f->cmd, "RMKX") != 0 && strcmp(f->cmd, "RMSG") != 0)) {
		fail(c, KH_ERR_BAD_FIELD, "frame: only RMKX and RMSG pass through the console's relay");
		goto out;
	}
	open = strcmp(f->cmd, "RMKX") == 0;
	if ((r = kh_buf_put(req, text, n)) != KH_OK) {
		fail(c, r, "%s", kh_strerror(r));
		goto out;
	}
	r = kg_admin_call(c->rt->admin, c->s.token, c->id, open, req, resp, f, &answered, &opened,
			  why, sizeof(why));
	if (opened) {
		event(c, 0, c->id, KH_GEV_CONFIG, "console remote manage of device %lld by %s",
		      (long long)c->id, c->s.logins[0]);
		log_info("guardian api: console remote manage of device %lld by %s",
			 (long long)c->id, c->s.logins[0]);
	}
	if (!answered) {
		fail(c, r, "%s", why);
		goto out;
	}
	/* the HSM's answer, an ERRO too: it is the HSM's to give */
	answer(c, 200,
	       json_pack("{s:s%}", "frame", (const char *)kh_buf_ptr(resp), kh_buf_len(resp)));
out:
	kh_buf_free(resp);
	kh_buf_free(req);
	free(f);
}

static void h_admin_close(struct call *c)
{
	kg_admin_close(c->rt->admin, c->s.token, c->id);
	answer(c, 204, NULL);
}

static bool admin_live(void *arg, const char *token)
{
	struct kg_router *rt = arg;
	return kg_sess_live(rt->sess, token, wall_ms());
}

static int admin_open(struct kg_core *core, int64_t id, struct kh_client **out, char *why,
		      size_t whysz)
{
	(void)core;
	(void)id;
	*out = NULL;
	snprintf(why, whysz, "this guardian cannot open device connections");
	return KH_ERR_UNSUPPORTED;
}

void kg_router_sweep(struct kg_router *rt, int64_t now_ms)
{
	kg_admin_sweep(rt->admin, now_ms);
}

unsigned kg_router_admin_count(struct kg_router *rt)
{
	return kg_admin_count(rt->admin);
}

/* ---- the web console ---------------------------------------------------- */

/* GET / and GET /console/<file>: the files compiled in, no login needed
 * (the page logs in through the API). Unknown names are 404 as JSON. */
static void h_console(struct call *c)
{
	const struct kg_asset *a = kg_static_find(c->name[0] ? c->name : "index.html");
	if (a == NULL)
		return fail(c, KH_ERR_NOT_FOUND, "no such console file");
	c->resp->asset = a;
	c->resp->status =
		c->req->if_none_match && strcmp(c->req->if_none_match, a->etag) == 0 ? 304 : 200;
}

/* ---- the table ---------------------------------------------------------- */

#define V KH_GPERM_VIEW
#define GM KH_GPERM_GROUPS_MANAGE
#define DM KH_GPERM_DEVICES_MANAGE
#define DO KH_GPERM_DEVICES_OPERATE
#define RM KH_GPERM_REMOTE
#define UM KH_GPERM_USERS_MANAGE

static const struct route routes[] = {
	{"GET", "/", h_console, NEED_NONE, 0},
	{"GET", "/console/*", h_console, NEED_NONE, 0},
	{"POST", "/api/login", h_login, NEED_NONE, 0},
	{"POST", "/api/logout", h_logout, NEED_SESSION, 0},
	{"GET", "/api/session", h_session, NEED_SESSION, 0},
	{"GET", "/api/users", h_users, NEED_AUTH, V},
	{"POST", "/api/users", h_user_add, NEED_AUTH, UM},
	{"DELETE", "/api/users/*", h_user_remove, NEED_AUTH, UM},
	{"POST", "/api/users/*/password", h_user_password, NEED_AUTH, 0},
	{"GET", "/api/roles", h_roles, NEED_AUTH, V},
	{"PUT", "/api/roles/*", h_role_modify, NEED_AUTH, UM},
	{"GET", "/api/groups", h_groups, NEED_AUTH, V},
	{"POST", "/api/groups", h_group_add, NEED_AUTH, GM},
	{"GET", "/api/groups/#", h_group_get, NEED_AUTH, V},
	{"PUT", "/api/groups/#", h_group_modify, NEED_AUTH, GM},
	{"DELETE", "/api/groups/#", h_group_remove, NEED_AUTH, GM},
	{"POST", "/api/groups/#/check", h_group_check, NEED_AUTH, DO},
	{"GET", "/api/groups/#/replication", h_group_replication, NEED_AUTH, V},
	{"GET", "/api/groups/#/devices", h_group_devices, NEED_AUTH, V},
	{"POST", "/api/groups/#/devices", h_device_add, NEED_AUTH, DM},
	{"GET", "/api/devices", h_devices, NEED_AUTH, V},
	{"GET", "/api/devices/#", h_device_get, NEED_AUTH, V},
	{"PUT", "/api/devices/#", h_device_modify, NEED_AUTH, DM},
	{"DELETE", "/api/devices/#", h_device_remove, NEED_AUTH, DM},
	{"POST", "/api/devices/#/enable", h_device_enable, NEED_AUTH, DO},
	{"POST", "/api/devices/#/disable", h_device_disable, NEED_AUTH, DO},
	{"POST", "/api/devices/#/promote", h_device_promote, NEED_AUTH, DM},
	{"POST", "/api/devices/#/sync", h_device_sync, NEED_AUTH, DO},
	{"POST", "/api/devices/#/diagnose", h_device_diagnose, NEED_AUTH, DO},
	{"GET", "/api/devices/#/metrics", h_device_metrics, NEED_AUTH, V},
	{"POST", "/api/devices/#/relay", h_relay, NEED_AUTH, RM},
	{"POST", "/api/devices/#/admin", h_admin, NEED_AUTH, RM},
	{"DELETE", "/api/devices/#/admin", h_admin_close, NEED_AUTH, RM},
	{"GET", "/api/events", h_events, NEED_AUTH, V},
};

#define NROUTES (sizeof(routes) / sizeof(routes[0]))

/* The route for method and path; NULL after answering 404 or 405. */
static const struct route *route_of(struct call *c)
{
	const struct route *hit = NULL;
	char allow[64] = "";
	for (size_t i = 0; i < NROUTES; i++) {
		if (!match(routes[i].pattern, c->req->path, &c->id, c->name, sizeof(c->name)))
			continue;
		if (strcmp(routes[i].method, c->req->method) == 0)
			hit = &routes[i];
		else if (strlen(allow) + strlen(routes[i].method) + 3 < sizeof(allow))
			snprintf(allow + strlen(allow), sizeof(allow) - strlen(allow), "%s%s",
				 allow[0] ? ", " : "", routes[i].method);
	}
	if (hit) {
		/* the captures of the route that matched the method */
		(void)match(hit->pattern, c->req->path, &c->id, c->name, sizeof(c->name));
		return hit;
	}
	if (allow[0] == '\0') {
		fail(c, KH_ERR_NOT_FOUND, "no such resource");
		return NULL;
	}
	snprintf(c->resp->allow, sizeof(c->resp->allow), "%s", allow);
	answer(c, 405,
	       json_pack("{s:s, s:s}", "error", kh_errname(KH_ERR_UNSUPPORTED), "reason",
			 "method not allowed here"));
	return NULL;
}

/* Session, CSRF and permission: false after answering. */
static bool allowed(struct call *c, const struct route *rt)
{
	find_session(c);
	if (rt->need == NEED_NONE)
		return true;
	if (!c->have_session) {
		fail(c, KH_ERR_NOT_LOGGED_IN, "log in first (POST /api/login); sessions end after "
					      "%u s unused",
		     kg_sess_idle_s(c->rt->sess));
		return false;
	}
	if (!kg_sess_csrf_ok(&c->s, c->req->method, c->by_cookie, c->req->csrf)) {
		fail(c, KH_ERR_PERMISSION_DENIED,
		     "a request authenticated by the cookie must carry X-CSRF-Token");
		return false;
	}
	if (rt->need == NEED_SESSION)
		return true;
	if (!kg_sess_authorized(&c->s)) {
		int more = c->s.needed - c->s.nlogins;
		fail(c, KH_ERR_NOT_LOGGED_IN, "role %s needs %d more login%s", c->s.role, more,
		     more == 1 ? "" : "s");
		return false;
	}
	if (rt->perm && !(c->s.perms & rt->perm)) {
		fail(c, KH_ERR_PERMISSION_DENIED, "role %s lacks the permission %s", c->s.role,
		     perm_text(rt->perm));
		return false;
	}
	return true;
}

void kg_router_handle(struct kg_router *rt, const struct kg_req *req, struct kg_resp *resp)
{
	struct call c;
	const struct route *r;
	char why[KG_WHY_MAX] = "";
	int e;

	memset(resp, 0, sizeof(*resp));
	resp->relay_fd = -1;
	memset(&c, 0, sizeof(c));
	c.rt = rt;
	c.req = req;
	c.resp = resp;
	/* one reading of the clock: a session made by this request and the
	 * expiry it reports agree to the second */
	c.now = wall_ms();
	if (req->method == NULL || req->path == NULL) {
		fail(&c, KH_ERR_BAD_FIELD, "no method or path");
		return;
	}
	if ((r = route_of(&c)) == NULL)
		return;
	if (req->body_too_large) {
		fail(&c, KH_ERR_TOO_LARGE, "the body is larger than %u bytes", KG_BODY_MAX);
		return;
	}
	if (!allowed(&c, r))
		goto out;
	if ((e = kg_json_body(req->body, req->body_len, &c.body, why, sizeof(why))) != KH_OK) {
		fail(&c, e, "%s", why);
		goto out;
	}
	r->fn(&c);
	json_decref(c.body);
out:
	kh_wipe(&c.s, sizeof(c.s));
}

int kg_router_new(const struct kg_http_ops *ops, struct kg_core *core, unsigned session_idle_s,
		  bool secure_cookie, struct kg_router **out)
{
	struct kg_router *rt = calloc(1, sizeof(*rt));
	int r;
	*out = NULL;
	if (rt == NULL)
		return KH_ERR_NOMEM;
	if ((r = kg_sess_table_new(session_idle_s, &rt->sess)) != KH_OK) {
		free(rt);
		return r;
	}
	pthread_mutex_init(&rt->mu, NULL);
	rt->ops = ops;
	rt->core = core;
	rt->secure_cookie = secure_cookie;
	if ((r = kg_admin_new(ops->device_admin_client ? ops->device_admin_client : admin_open, core,
			      admin_live, rt, KG_ADMIN_IDLE_MS, 0, &rt->admin)) != KH_OK) {
		pthread_mutex_destroy(&rt->mu);
		kg_sess_table_free(rt->sess);
		free(rt);
		return r;
	}
	*out = rt;
	return KH_OK;
}

void kg_router_free(struct kg_router *rt)
{
	if (rt == NULL)
		return;
	kg_admin_free(rt->admin); /* before the sessions its sweeper asks about */
	kg_sess_table_free(rt->sess);
	pthread_mutex_destroy(&rt->mu);
	free(rt);
}

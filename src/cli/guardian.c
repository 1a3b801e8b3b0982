/*
 * keyhold-guardian's REST API from the CLI: where the guardian is, the login
 * (one or two users) once per process and the logout at exit, one call with
 * its error reporting, and the relay that carries the CLI's own TLS to an
 * HSM's Admin port. Passwords and the session live on the secure heap or in
 * wiped memory; neither is ever printed or put in an error text.
 */
#include "cli/cli.h"
#include "common/kh_buf.h"
#include "common/kh_http.h"
#include "common/kh_mem.h"

#include <stdalign.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define RELAY_PROTOCOL "keyhold-relay"

/* ---- jansson's memory, wiped on free ---- */

#define WIPE_HDR 16
_Static_assert(sizeof(size_t) <= WIPE_HDR && alignof(max_align_t) <= WIPE_HDR,
	       "allocation header too small");

static void *wipe_malloc(size_t n)
{
	unsigned char *p;
	if (n > SIZE_MAX - WIPE_HDR || (p = malloc(n + WIPE_HDR)) == NULL)
		return NULL;
	memcpy(p, &n, sizeof(n));
	return p + WIPE_HDR;
}

static void wipe_free(void *q)
{
	unsigned char *p;
	size_t n;
	if (q == NULL)
		return;
	p = (unsigned char *)q - WIPE_HDR;
	memcpy(&n, p, sizeof(n));
	kh_wipe(p, n + WIPE_HDR);
	free(p);
}

void gd_json_init(void)
{
	json_set_alloc_funcs(wipe_malloc, wipe_free);
}

/* ---- options ---- */

static void set_str(char **slot, const char *v)
{
	free(*slot);
	*slot = v ? strdup(v) : NULL;
}

/* HOST, HOST:PORT, [V6], [V6]:PORT */
static int parse_addr(struct cli *cli, const char *v)
{
	const char *host = v, *colon = NULL;
	size_t hlen;
	unsigned long port = GD_DEFAULT_PORT;

	if (*v == '[') {
		const char *e = strchr(v, ']');
		if (e == NULL || e == v + 1 || (e[1] != '\0' && e[1] != ':'))
			return cli_usage(cli, "--guardian: bad address '%s' (HOST[:PORT])", v);
		host = v + 1;
		hlen = (size_t)(e - host);
		colon = e[1] == ':' ? e + 1 : NULL;
	} else {
		colon = strchr(v, ':');
		if (colon && strchr(colon + 1, ':'))
			return cli_usage(cli, "--guardian: write an IPv6 address as [ADDR]:PORT");
		hlen = colon ? (size_t)(colon - v) : strlen(v);
	}
	if (hlen == 0 || hlen > 253)
		return cli_usage(cli, "--guardian: bad address '%s' (HOST[:PORT])", v);
	for (size_t i = 0; i < hlen; i++)
		if ((unsigned char)host[i] <= ' ' || (unsigned char)host[i] >= 0x7f ||
		    host[i] == '/' || host[i] == '@')
			return cli_usage(cli, "--guardian: bad host in '%s'", v);
	if (colon) {
		char *end = NULL;
		if (colon[1] < '0' || colon[1] > '9')
			return cli_usage(cli, "--guardian: bad port in '%s'", v);
		port = strtoul(colon + 1, &end, 10);
		if (*end != '\0' || port < 1 || port > 65535)
			return cli_usage(cli, "--guardian: port must be a number from 1 to 65535");
	}
	free(cli->g.host);
	cli->g.host = strndup(host, hlen);
	if (cli->g.host == NULL)
		return cli_fail(cli, KH_ERR_NOMEM, "out of memory");
	cli->g.port = (unsigned)port;
	return CLI_OK;
}

int gd_set_opts(struct cli *cli, struct cli_args *a)
{
	const char *addr = cli_arg(a, "guardian");
	int rc;

	if (addr == NULL && getenv("KEYHOLD_GUARDIAN") && *getenv("KEYHOLD_GUARDIAN"))
		addr = getenv("KEYHOLD_GUARDIAN");
	if (addr && (rc = parse_addr(cli, addr)) != CLI_OK)
		return rc;
	if (cli_arg(a, "password-fd") && cli_arg(a, "password-file"))
		return cli_usage(cli, "give --password-fd or --password-file, not both");
	if (cli_arg(a, "password2-fd") && cli_arg(a, "password2-file"))
		return cli_usage(cli, "give --password2-fd or --password2-file, not both");
	if (cli_arg(a, "user") && *cli_arg(a, "user") == '\0')
		return cli_usage(cli, "--user: empty name");
	if (cli_arg(a, "user2") && *cli_arg(a, "user2") == '\0')
		return cli_usage(cli, "--user2: empty name");
	set_str(&cli->g.ca, cli_arg(a, "guardian-ca"));
	set_str(&cli->g.user, cli_arg(a, "user"));
	set_str(&cli->g.pw_fd, cli_arg(a, "password-fd"));
	set_str(&cli->g.pw_file, cli_arg(a, "password-file"));
	set_str(&cli->g.user2, cli_arg(a, "user2"));
	set_str(&cli->g.pw2_fd, cli_arg(a, "password2-fd"));
	set_str(&cli->g.pw2_file, cli_arg(a, "password2-file"));
	return CLI_OK;
}

/* ---- JSON helpers ---- */

long long gd_jint(json_t *o, const char *key, long long dflt)
{
	json_t *v = json_object_get(o, key);
	if (json_is_integer(v))
		return (long long)json_integer_value(v);
	if (json_is_real(v))
		return (long long)json_real_value(v);
	return dflt;
}

const char *gd_jstr(json_t *o, const char *key, const char *dflt)
{
	json_t *v = json_object_get(o, key);
	return json_is_string(v) ? json_string_value(v) : dflt;
}

bool gd_jbool(json_t *o, const char *key)
{
	return json_is_true(json_object_get(o, key));
}

void gd_time_text(long long ms, char *out, size_t outsz)
{
	time_t t = (time_t)(ms / 1000);
	struct tm tm;
	if (ms <= 0 || gmtime_r(&t, &tm) == NULL || strftime(out, outsz, "%Y-%m-%d %H:%M:%S", &tm) == 0)
		snprintf(out, outsz, "-");
}

bool gd_id_arg(struct cli *cli, struct cli_args *a, const char *name, long long *id)
{
	uint64_t v = 0;
	if (!cli_arg_u64(cli, a, name, 1, (uint64_t)1 << 53, &v))
		return false;
	*id = (long long)v;
	return true;
}

/* ---- the connection and one exchange ---- */

/* A usable connection in cli->g.conn (kept alive, or new): a kh_err. */
static int conn_open(struct cli *cli)
{
	struct kh_client_opts o;

	if (cli->g.conn && kh_client_connected(cli->g.conn) && !kh_client_stale(cli->g.conn))
		return KH_OK;
	kh_client_free(cli->g.conn);
	kh_client_opts_init(&o);
	o.host = cli->g.host;
	o.port = cli->g.port;
	o.tls = true;
	o.ca_file = cli->g.ca ? cli->g.ca : cli->ca;
	o.port_name = "guardian";
	o.probe = false;
	o.connect_timeout_ms = cli->copts.connect_timeout_ms;
	o.io_timeout_ms = cli->copts.io_timeout_ms;
	if ((cli->g.conn = kh_client_new(&o)) == NULL)
		return KH_ERR_NOMEM;
	return kh_client_connect(cli->g.conn);
}

static int ensure_conn(struct cli *cli)
{
	int r = conn_open(cli);
	if (r == KH_ERR_NOMEM && cli->g.conn == NULL)
		return cli_fail(cli, r, "out of memory");
	if (r != KH_OK)
		return cli_fail(cli, r, "%s", kh_client_error(cli->g.conn));
	return CLI_OK;
}

static void host_header(struct cli *cli, char *out, size_t outsz)
{
	bool v6 = strchr(cli->g.host, ':') != NULL;
	snprintf(out, outsz, "%s%s%s:%u", v6 ? "[" : "", cli->g.host, v6 ? "]" : "", cli->g.port);
}

/* The kh_err of a guardian error answer: its name, else its status. */
static int err_of(const char *name, int status)
{
	for (int e = KH_ERR_INTERNAL; e > KH_ERR_LAST; e--)
		if (name && strcmp(kh_errname(e), name) == 0)
			return e;
	switch (status) {
	case 400: return KH_ERR_BAD_FIELD;
	case 401: return KH_ERR_NOT_LOGGED_IN;
	case 403: return KH_ERR_PERMISSION_DENIED;
	case 404: return KH_ERR_NOT_FOUND;
	case 405: return KH_ERR_UNSUPPORTED;
	case 409: return KH_ERR_STATE;
	case 413: return KH_ERR_TOO_LARGE;
	case 422: return KH_ERR_STATE;
	case 423: return KH_ERR_LOCKED;
	case 502: return KH_ERR_CONNECT;
	case 503: return KH_ERR_BUSY;
	case 500: return KH_ERR_INTERNAL;
	default: return KH_ERR_PROTOCOL;
	}
}

/* Report a non-2xx answer with the server's own words. */
static int report_answer(struct cli *cli, struct kh_http_resp *rs)
{
	json_t *o = json_loadb((const char *)kh_buf_ptr(rs->body), kh_buf_len(rs->body), 0, NULL);
	const char *name = gd_jstr(o, "error", NULL), *reason = gd_jstr(o, "reason", NULL);
	char st[160];
	int rc;

	if (reason == NULL) {
		snprintf(st, sizeof(st), "HTTP %d %s", rs->status, rs->reason);
		reason = st;
	}
	if (name == NULL)
		name = kh_errname(err_of(NULL, rs->status));
	rc = cli_fail_guardian(cli, err_of(name, rs->status), name, rs->status, reason,
			       gd_jstr(o, "admit", NULL));
	json_decref(o);
	return rc;
}

/* One request; *rs holds the answer (any status) on CLI_OK. A reused
 * connection the server closed meanwhile is re-made once. */
static int exchange(struct cli *cli, const char *method, const char *target, const char *bearer,
		    const struct kh_buf *body, struct kh_http_resp *rs)
{
	char host[300], why[800];
	struct kh_http_req rq = {
		.method = method, .target = target, .host = host, .bearer = bearer,
		.body = body ? kh_buf_ptr(body) : NULL, .body_len = body ? kh_buf_len(body) : 0,
	};
	int rc, r;

	host_header(cli, host, sizeof(host));
	if ((rc = ensure_conn(cli)) != CLI_OK)
		return rc;
	if ((r = kh_http_resp_init(rs, 0)) != KH_OK)
		return cli_fail(cli, r, "out of memory");
	r = kh_http_exchange(cli->g.conn, &rq, rs, why, sizeof(why));
	if (r == KH_OK)
		return CLI_OK;
	kh_http_resp_free(rs);
	if (r == KH_ERR_BAD_FIELD)
		return cli_usage(cli, "%s", why);
	if (r <= KH_ERR_IO && r >= KH_ERR_PROTOCOL && r != KH_ERR_TIMEOUT &&
	    r != KH_ERR_PROTOCOL) {
		/* a kept-alive connection may have been closed between the stale
		 * check and our request: once more on a fresh one */
		kh_client_disconnect(cli->g.conn);
		if ((rc = ensure_conn(cli)) != CLI_OK)
			return rc;
		if ((r = kh_http_resp_init(rs, 0)) != KH_OK)
			return cli_fail(cli, r, "out of memory");
		r = kh_http_exchange(cli->g.conn, &rq, rs, why, sizeof(why));
		if (r == KH_OK)
			return CLI_OK;
		kh_http_resp_free(rs);
	}
	if (r == KH_ERR_PROTOCOL || r == KH_ERR_TOO_LARGE)
		return cli_fail(cli, r, "port %u (guardian): answer: %s", cli->g.port, why);
	return cli_fail(cli, r, "%s", why);
}

static int json_body(struct cli *cli, json_t *body, struct kh_buf **out)
{
	char *s;
	int r;

	*out = NULL;
	if (body == NULL)
		return CLI_OK;
	if ((s = json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER)) == NULL)
		return cli_fail(cli, KH_ERR_NOMEM, "out of memory");
	*out = kh_buf_new(KH_HTTP_BODY_MAX);
	r = *out ? kh_buf_put_str(*out, s) : KH_ERR_NOMEM;
	wipe_free(s); /* json_dumps allocates through wipe_malloc */
	if (r != KH_OK)
		return cli_fail(cli, r, "out of memory");
	return CLI_OK;
}

/* ---- login ---- */

static int login_one(struct cli *cli, const char *user, const char *fd, const char *file,
		     json_t **answer)
{
	struct cli_secret pw = {0};
	struct kh_http_resp rs = {0};
	struct kh_buf *body = NULL;
	json_t *req = NULL;
	char prompt[192];
	int rc;

	snprintf(prompt, sizeof(prompt), "Password for %s at the guardian: ", user);
	if ((rc = secret_get(cli, &pw, fd, file, prompt, false)) != CLI_OK)
		return rc;
	req = json_pack("{s:s, s:s%}", "user", user, "password", pw.p, pw.len);
	if (req == NULL) {
		rc = cli_usage(cli, "the user name or password is not valid UTF-8");
		goto out;
	}
	if ((rc = json_body(cli, req, &body)) != CLI_OK)
		goto out;
	if ((rc = exchange(cli, "POST", "/api/login", cli->g.session, body, &rs)) != CLI_OK)
		goto out;
	if (rs.status != 200) {
		rc = report_answer(cli, &rs);
		goto out;
	}
	*answer = json_loadb((const char *)kh_buf_ptr(rs.body), kh_buf_len(rs.body), 0, NULL);
	if (!json_is_object(*answer)) {
		json_decref(*answer);
		*answer = NULL;
		rc = cli_fail(cli, KH_ERR_PROTOCOL, "the guardian's login answer is not a JSON object");
	}
out:
	json_decref(req);
	kh_buf_free(body);
	kh_http_resp_free(&rs);
	secret_free(&pw);
	return rc;
}

static int ask_user(struct cli *cli, const char *given, const char *prompt, char *out, size_t sz)
{
	if (given) {
		if (strlen(given) >= sz)
			return cli_usage(cli, "user name too long");
		snprintf(out, sz, "%s", given);
		return CLI_OK;
	}
	return cli_prompt_line(cli, prompt, out, sz);
}

int gd_begin(struct cli *cli)
{
	char user[128];
	json_t *ans = NULL;
	const char *sess;
	int rc;

	if (cli->g.host == NULL)
		return cli_usage(cli, "no guardian: give --guardian HOST[:PORT] or set "
			       "KEYHOLD_GUARDIAN");
	if (cli->g.session)
		return CLI_OK;
	if ((rc = ask_user(cli, cli->g.user, "Guardian user: ", user, sizeof(user))) != CLI_OK)
		return rc;
	/* connect before asking for the password */
	if ((rc = ensure_conn(cli)) != CLI_OK)
		return rc;
	if ((rc = login_one(cli, user, cli->g.pw_fd, cli->g.pw_file, &ans)) != CLI_OK)
		return rc;
	sess = gd_jstr(ans, "session", NULL);
	if (sess == NULL || strlen(sess) == 0 || strlen(sess) >= GD_SESSION_MAX) {
		json_decref(ans);
		return cli_fail(cli, KH_ERR_PROTOCOL, "the guardian's login answer has no session");
	}
	if ((cli->g.session = kh_secure_alloc(GD_SESSION_MAX)) == NULL) {
		json_decref(ans);
		return cli_fail(cli, KH_ERR_NOMEM, "out of secure memory");
	}
	memcpy(cli->g.session, sess, strlen(sess) + 1);
	snprintf(cli->g.login_user, sizeof(cli->g.login_user), "%s", user);
	snprintf(cli->g.role, sizeof(cli->g.role), "%s", gd_jstr(ans, "role", ""));
	/* a role with Logins Required 2 (or more): the next users on the session */
	for (int k = 2; !gd_jbool(ans, "authorized"); k++) {
		long long needed = gd_jint(ans, "needed", 0);
		char prompt[96];
		if (k > 8) {
			json_decref(ans);
			return cli_fail(cli, KH_ERR_PROTOCOL, "the guardian keeps asking for logins");
		}
		json_decref(ans);
		ans = NULL;
		if (k == 2 && cli->g.user2 == NULL && !cli_have_tty())
			return cli_usage(cli, "role %s needs %lld logins: give --user2 NAME and "
				       "--password2-file F (or --password2-fd N)", cli->g.role, needed);
		snprintf(prompt, sizeof(prompt), "Guardian user %d of %lld: ", k, needed);
		if ((rc = ask_user(cli, k == 2 ? cli->g.user2 : NULL, prompt, user, sizeof(user))) !=
		    CLI_OK)
			return rc;
		if ((rc = login_one(cli, user, k == 2 ? cli->g.pw2_fd : NULL,
				    k == 2 ? cli->g.pw2_file : NULL, &ans)) != CLI_OK)
			return rc;
	}
	json_decref(ans);
	return CLI_OK;
}

void gd_end(struct cli *cli)
{
	if (cli->g.session && cli->g.host) {
		struct kh_http_resp rs = {0};
		char host[300], why[800];
		struct kh_http_req rq = {.method = "POST", .target = "/api/logout", .host = host,
					 .bearer = cli->g.session};
		/* quietly: nothing is left to report to at exit */
		host_header(cli, host, sizeof(host));
		if (conn_open(cli) == KH_OK && kh_http_resp_init(&rs, 0) == KH_OK) {
			KH_IGNORE(kh_http_exchange(cli->g.conn, &rq, &rs, why, sizeof(why)));
			kh_http_resp_free(&rs);
		}
	}
	if (cli->g.session)
		kh_secure_free(cli->g.session, GD_SESSION_MAX);
	kh_client_free(cli->g.conn);
	free(cli->g.host);
	free(cli->g.ca);
	free(cli->g.user);
	free(cli->g.pw_fd);
	free(cli->g.pw_file);
	free(cli->g.user2);
	free(cli->g.pw2_fd);
	free(cli->g.pw2_file);
	memset(&cli->g, 0, sizeof(cli->g));
}

/* ---- calls ---- */

int gd_call(struct cli *cli, const char *method, const char *target, json_t *body, json_t **out)
{
	struct kh_http_resp rs = {0};
	struct kh_buf *b = NULL;
	int rc;

	if (out)
		*out = NULL;
	if ((rc = gd_begin(cli)) != CLI_OK)
		return rc;
	if ((rc = json_body(cli, body, &b)) != CLI_OK)
		return rc;
	rc = exchange(cli, method, target, cli->g.session, b, &rs);
	kh_buf_free(b);
	if (rc != CLI_OK)
		return rc;
	if (rs.status < 200 || rs.status > 299) {
		rc = report_answer(cli, &rs);
		goto out;
	}
	if (out && kh_buf_len(rs.body) > 0) {
		json_error_t je;
		*out = json_loadb((const char *)kh_buf_ptr(rs.body), kh_buf_len(rs.body), 0, &je);
		if (!json_is_object(*out)) {
			json_decref(*out);
			*out = NULL;
			rc = cli_fail(cli, KH_ERR_PROTOCOL,
				      "port %u (guardian): answer: the body is not a JSON object",
				      cli->g.port);
		}
	}
out:
	kh_http_resp_free(&rs);
	return rc;
}

int gd_group_id(struct cli *cli, const char *v, long long *id)
{
	json_t *ans = NULL, *arr;
	size_t i;
	int rc;
	bool digits = *v != '\0';

	for (const char *p = v; *p; p++)
		if (*p < '0' || *p > '9')
			digits = false;
	if (digits && strlen(v) < 16) {
		*id = strtoll(v, NULL, 10);
		if (*id < 1)
			return cli_usage(cli, "--group: ids start at 1");
		return CLI_OK;
	}
	if ((rc = gd_call(cli, "GET", "/api/groups", NULL, &ans)) != CLI_OK)
		return rc;
	arr = json_object_get(ans, "groups");
	for (i = 0; i < json_array_size(arr); i++) {
		json_t *g = json_array_get(arr, i);
		if (strcasecmp(gd_jstr(g, "name", ""), v) == 0) {
			*id = gd_jint(g, "id", 0);
			json_decref(ans);
			return CLI_OK;
		}
	}
	json_decref(ans);
	return cli_fail_guardian(cli, KH_ERR_NOT_FOUND, "NOT_FOUND", 404, "no group of that name",
				 NULL);
}

/* ---- the relay ---- */

int gd_relay(struct cli *cli, long long id, const char *host, unsigned admin_port)
{
	struct kh_client_opts o = cli->copts;
	struct kh_client *relay = NULL, *hsm = NULL, *keep;
	struct kh_http_resp rs = {0};
	char target[96], hosthdr[300], why[800];
	int rc, r;

	if ((rc = gd_begin(cli)) != CLI_OK)
		return rc;
	/* the relay consumes its connection: a new one, the API's stays */
	keep = cli->g.conn;
	cli->g.conn = NULL;
	if ((rc = ensure_conn(cli)) != CLI_OK)
		goto out;
	relay = cli->g.conn;
	cli->g.conn = keep;
	keep = NULL;
	snprintf(target, sizeof(target), "/api/devices/%lld/relay", id);
	host_header(cli, hosthdr, sizeof(hosthdr));
	struct kh_http_req rq = {.method = "POST", .target = target, .host = hosthdr,
				 .bearer = cli->g.session, .upgrade = RELAY_PROTOCOL};
	if ((r = kh_http_resp_init(&rs, 0)) != KH_OK) {
		rc = cli_fail(cli, r, "out of memory");
		goto out;
	}
	if ((r = kh_http_exchange(relay, &rq, &rs, why, sizeof(why))) != KH_OK) {
		rc = cli_fail(cli, r, "%s", why);
		goto out;
	}
	if (rs.status != 101) {
		rc = rs.status >= 300 ? report_answer(cli, &rs)
				      : cli_fail(cli, KH_ERR_PROTOCOL,
						 "port %u (guardian): relay: HTTP %d instead of 101",
						 cli->g.port, rs.status);
		goto out;
	}
	if (!rs.conn_upgrade || strcasecmp(rs.upgrade, RELAY_PROTOCOL) != 0) {
		rc = cli_fail(cli, KH_ERR_PROTOCOL,
			      "port %u (guardian): relay: the 101 answer does not upgrade to "
			      RELAY_PROTOCOL, cli->g.port);
		goto out;
	}
	/* the HSM's Admin port, as if connected directly: its name check, the
	 * CLI's CA and client certificate */
	o.unix_path = NULL;
	o.host = host;
	o.port = admin_port;
	o.port_name = "Admin, through the guardian";
	if ((hsm = kh_client_new(&o)) == NULL) {
		rc = cli_fail(cli, KH_ERR_NOMEM, "out of memory");
		goto out;
	}
	if ((r = kh_client_connect_over(hsm, relay)) != KH_OK) {
		rc = cli_fail(cli, r, "%s", kh_client_error(hsm));
		goto out;
	}
	kh_client_free(cli->client);
	cli->client = hsm;
	hsm = NULL;
	cli->ever_connected = true;
	rc = CLI_OK;
out:
	if (keep) {
		kh_client_free(cli->g.conn);
		cli->g.conn = keep;
	}
	kh_http_resp_free(&rs);
	kh_client_free(hsm);
	kh_client_free(relay);
	return rc;
}

/*
 * Session table for the REST API. Lookups walk the table comparing every
 * token in constant time (a table of at most KG_SESS_MAX, under one mutex),
 * so timing does not tell how much of a guessed token matched. Nothing here
 * is logged: a token is as good as a password while it lives.
 */
#include "guardian/http_session.h"
#include "common/kh_mem.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/rand.h>

struct kg_sessions {
	pthread_mutex_t mu;
	unsigned idle_s;
	size_t n;
	struct kg_sess v[KG_SESS_MAX];
};

int kg_sess_table_new(unsigned idle_s, struct kg_sessions **out)
{
	struct kg_sessions *t = calloc(1, sizeof(*t));
	*out = NULL;
	if (t == NULL)
		return KH_ERR_NOMEM;
	pthread_mutex_init(&t->mu, NULL);
	t->idle_s = idle_s ? idle_s : KG_SESS_IDLE_DEFAULT_S;
	*out = t;
	return KH_OK;
}

void kg_sess_table_free(struct kg_sessions *t)
{
	if (t == NULL)
		return;
	kh_wipe(t->v, sizeof(t->v));
	pthread_mutex_destroy(&t->mu);
	free(t);
}

unsigned kg_sess_idle_s(const struct kg_sessions *t)
{
	return t->idle_s;
}

static bool expired(const struct kg_sessions *t, const struct kg_sess *s, int64_t now)
{
	return now - s->last_ms >= (int64_t)t->idle_s * 1000 ||
	       now - s->created_ms >= KG_SESS_ABSOLUTE_MS || now < s->created_ms;
}

static void drop(struct kg_sessions *t, size_t i)
{
	t->v[i] = t->v[t->n - 1];
	kh_wipe(&t->v[t->n - 1], sizeof(t->v[0]));
	t->n--;
}

static void sweep(struct kg_sessions *t, int64_t now)
{
	for (size_t i = 0; i < t->n;)
		if (expired(t, &t->v[i], now))
			drop(t, i);
		else
			i++;
}

/* Index of token, or t->n. Every entry is compared, in constant time. */
static size_t lookup(const struct kg_sessions *t, const char *token)
{
	size_t found = t->n;
	if (token == NULL || strnlen(token, KG_SESS_TOKEN_HEX + 1) != KG_SESS_TOKEN_HEX)
		return t->n;
	for (size_t i = 0; i < t->n; i++)
		if (kh_ct_equal(t->v[i].token, token, KG_SESS_TOKEN_HEX))
			found = i;
	return found;
}

static int random_hex(char out[static KG_SESS_TOKEN_HEX + 1])
{
	uint8_t b[KG_SESS_TOKEN_HEX / 2];
	if (RAND_bytes(b, sizeof(b)) != 1)
		return KH_ERR_CRYPTO;
	kh_hex_encode(b, sizeof(b), out);
	kh_wipe(b, sizeof(b));
	/* lower case, as the API shows it */
	for (char *p = out; *p; p++)
		if (*p >= 'A' && *p <= 'F')
			*p = (char)(*p - 'A' + 'a');
	return KH_OK;
}

int kg_sess_new(struct kg_sessions *t, const char *user, const struct kh_gstore_role_rec *role,
		int64_t now, struct kg_sess *out)
{
	struct kg_sess s;
	int r;
	memset(&s, 0, sizeof(s));
	if ((r = random_hex(s.token)) != KH_OK || (r = random_hex(s.csrf)) != KH_OK)
		goto out;
	snprintf(s.role, sizeof(s.role), "%s", role->name);
	snprintf(s.logins[0], sizeof(s.logins[0]), "%s", user);
	s.perms = role->perms;
	s.needed = role->logins_required < 1 ? 1 : role->logins_required > 2 ? 2 : role->logins_required;
	s.nlogins = 1;
	s.created_ms = s.last_ms = now;
	pthread_mutex_lock(&t->mu);
	sweep(t, now);
	if (t->n == KG_SESS_MAX) {
		r = KH_ERR_BUSY;
	} else {
		t->v[t->n++] = s;
		*out = s;
	}
	pthread_mutex_unlock(&t->mu);
out:
	kh_wipe(&s, sizeof(s));
	return r;
}

/* Under the lock: the live entry of token, or NULL (an expired one is dropped). */
static struct kg_sess *live(struct kg_sessions *t, const char *token, int64_t now)
{
	size_t i = lookup(t, token);
	if (i == t->n)
		return NULL;
	if (expired(t, &t->v[i], now)) {
		drop(t, i);
		return NULL;
	}
	return &t->v[i];
}

int kg_sess_find(struct kg_sessions *t, const char *token, int64_t now, struct kg_sess *out)
{
	int r = KH_ERR_NOT_LOGGED_IN;
	pthread_mutex_lock(&t->mu);
	struct kg_sess *s = live(t, token, now);
	if (s) {
		s->last_ms = now;
		*out = *s;
		r = KH_OK;
	}
	pthread_mutex_unlock(&t->mu);
	return r;
}

bool kg_sess_live(struct kg_sessions *t, const char *token, int64_t now)
{
	bool r;
	pthread_mutex_lock(&t->mu);
	r = live(t, token, now) != NULL; /* its idle time does not restart */
	pthread_mutex_unlock(&t->mu);
	return r;
}

static void say(char *why, size_t whysz, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void say(char *why, size_t whysz, const char *fmt, ...)
{
	va_list ap;
	if (why == NULL || whysz == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(why, whysz, fmt, ap);
	va_end(ap);
}

int kg_sess_add_login(struct kg_sessions *t, const char *token, const char *user, const char *role,
		      int64_t now, struct kg_sess *out, char *why, size_t whysz)
{
	int r = KH_OK;
	pthread_mutex_lock(&t->mu);
	struct kg_sess *s = live(t, token, now);
	if (s == NULL) {
		r = KH_ERR_NOT_LOGGED_IN;
		say(why, whysz, "no session, or it expired: log in again");
	} else if (kg_sess_authorized(s)) {
		r = KH_ERR_STATE;
		say(why, whysz, "the session needs no more logins");
	} else if (strcasecmp(s->role, role) != 0) {
		r = KH_ERR_ROLE_MISMATCH;
		say(why, whysz, "the second login must be a user in role %s", s->role);
	} else {
		for (int i = 0; i < s->nlogins; i++)
			if (strcasecmp(s->logins[i], user) == 0) {
				r = KH_ERR_STATE;
				say(why, whysz, "%s is logged in already: the second login must be "
						"another user",
				    s->logins[i]);
			}
	}
	if (r == KH_OK) {
		snprintf(s->logins[s->nlogins], sizeof(s->logins[0]), "%s", user);
		s->nlogins++;
		s->last_ms = now;
		*out = *s;
		say(why, whysz, "%s", "");
	}
	pthread_mutex_unlock(&t->mu);
	return r;
}

void kg_sess_end(struct kg_sessions *t, const char *token)
{
	pthread_mutex_lock(&t->mu);
	size_t i = lookup(t, token);
	if (i < t->n)
		drop(t, i);
	pthread_mutex_unlock(&t->mu);
}

void kg_sess_end_user(struct kg_sessions *t, const char *user)
{
	pthread_mutex_lock(&t->mu);
	for (size_t i = 0; i < t->n;) {
		bool his = false;
		for (int k = 0; k < t->v[i].nlogins; k++)
			his |= strcasecmp(t->v[i].logins[k], user) == 0;
		if (his)
			drop(t, i);
		else
			i++;
	}
	pthread_mutex_unlock(&t->mu);
}

int64_t kg_sess_expires_s(const struct kg_sessions *t, const struct kg_sess *s, int64_t now)
{
	int64_t idle = s->last_ms + (int64_t)t->idle_s * 1000 - now;
	int64_t abs = s->created_ms + KG_SESS_ABSOLUTE_MS - now;
	int64_t ms = idle < abs ? idle : abs;
	return ms <= 0 ? 0 : ms / 1000;
}

bool kg_sess_csrf_ok(const struct kg_sess *s, const char *method, bool by_cookie,
		     const char *csrf_header)
{
	if (!by_cookie || strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0)
		return true;
	return csrf_header != NULL &&
	       strnlen(csrf_header, KG_SESS_TOKEN_HEX + 1) == KG_SESS_TOKEN_HEX &&
	       kh_ct_equal(s->csrf, csrf_header, KG_SESS_TOKEN_HEX);
}

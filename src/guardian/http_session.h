/*
 * The REST API's sessions: a token (32 random bytes, hex) per login, a CSRF
 * token with it, one or two logged-in users (a role may need two), idle and
 * absolute expiry. Tokens are compared in constant time and never logged.
 */
#ifndef KG_HTTP_SESSION_H
#define KG_HTTP_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "common/kh_err.h"
#include "guardian/store.h"

#define KG_SESS_TOKEN_HEX 64
#define KG_SESS_MAX 1024                       /* sessions at once */
#define KG_SESS_ABSOLUTE_MS (8LL * 3600 * 1000) /* at most 8 h in all */
#define KG_SESS_IDLE_DEFAULT_S 900

struct kg_sess {
	char token[KG_SESS_TOKEN_HEX + 1];
	char csrf[KG_SESS_TOKEN_HEX + 1];
	char role[KH_GSTORE_USER_MAX + 1];
	unsigned perms;
	int needed;                                  /* logins the role requires */
	int nlogins;
	char logins[2][KH_GSTORE_USER_MAX + 1];
	int64_t created_ms, last_ms;
};

struct kg_sessions;

KH_MUST_CHECK int kg_sess_table_new(unsigned idle_s, struct kg_sessions **out);
void kg_sess_table_free(struct kg_sessions *t); /* wipes every token */
unsigned kg_sess_idle_s(const struct kg_sessions *t);

/* A new session for user, in role (its permissions and logins required),
 * at now_ms; *out gets a copy. Expired sessions are dropped first;
 * KH_ERR_BUSY when KG_SESS_MAX are live. */
KH_MUST_CHECK int kg_sess_new(struct kg_sessions *t, const char *user,
                              const struct kh_gstore_role_rec *role, int64_t now_ms,
                              struct kg_sess *out);
/* The session of token at now_ms (its idle time restarts); KH_ERR_NOT_LOGGED_IN
 * when unknown or expired (an expired one is dropped). */
KH_MUST_CHECK int kg_sess_find(struct kg_sessions *t, const char *token, int64_t now_ms,
                               struct kg_sess *out);
/* The second login of a two-login role: user must be another user in the
 * same role (KH_ERR_ROLE_MISMATCH, KH_ERR_STATE for the same user or a
 * session that needs no more). why gets a reason. */
KH_MUST_CHECK int kg_sess_add_login(struct kg_sessions *t, const char *token, const char *user,
                                    const char *role, int64_t now_ms, struct kg_sess *out,
                                    char *why, size_t whysz);
/* Is the session of token still live at now_ms? Unlike kg_sess_find, its
 * idle time does not restart (for sweeping what belongs to sessions). */
bool kg_sess_live(struct kg_sessions *t, const char *token, int64_t now_ms);
void kg_sess_end(struct kg_sessions *t, const char *token);
/* Ends every session user is logged in to (removed user, new password). */
void kg_sess_end_user(struct kg_sessions *t, const char *user);

static inline bool kg_sess_authorized(const struct kg_sess *s)
{
	return s->nlogins >= s->needed;
}
/* Seconds until the session expires if unused from now_ms. */
int64_t kg_sess_expires_s(const struct kg_sessions *t, const struct kg_sess *s, int64_t now_ms);

/* The CSRF rule: a request that changes state (any method but GET/HEAD)
 * and was authenticated by the cookie, not the Authorization header, must
 * carry the session's CSRF token in X-CSRF-Token. */
bool kg_sess_csrf_ok(const struct kg_sess *s, const char *method, bool by_cookie,
                     const char *csrf_header);

#endif

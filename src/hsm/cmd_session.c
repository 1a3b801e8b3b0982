/*
 * Session commands: LOGN, LOGO, CHPW. They run before login, so they trust
 * nothing on the connection; passwords are decoded into the secure heap,
 * wiped on every path, and never appear in a reply, a log or the audit trail.
 */
#include "hsm/cmds.h"
#include "hsm/audit.h"
#include "hsm/db.h"
#include "hsm/identity.h"
#include "hsm/roles.h"
#include "common/kh_buf.h"
#include "common/kh_mem.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* A password from a hex tag, on the secure heap. */
struct secret {
	uint8_t *p;
	size_t n;
};

static void secret_free(struct secret *s)
{
	kh_secure_free(s->p, s->n);
	s->p = NULL;
	s->n = 0;
}

/* tag holds a password; a value longer than the policy allows is a weak new
 * password (new_pw) or a bad field (an old one). */
static int get_password(struct kh_ctx *c, const struct kh_frame *req, const char *tag, bool new_pw,
			struct secret *out)
{
	const struct kh_field *f = kh_frame_get(req, tag);
	int r;
	if (f == NULL) {
		kh_ctx_detail(c, "%s", tag);
		return KH_ERR_MISSING_FIELD;
	}
	if (new_pw && f->len / 2 > KH_PASSWORD_MAX) {
		kh_ctx_detail(c, "%s: longer than %d bytes", tag, KH_PASSWORD_MAX);
		return KH_ERR_WEAK_PASSWORD;
	}
	if ((r = kh_frame_hex_secure(req, tag, KH_PASSWORD_MAX, &out->p, &out->n)) != KH_OK)
		kh_ctx_detail(c, "%s", tag);
	return r;
}

static const char *port_word(const struct kh_session *s)
{
	if (s->port == KH_PORT_PROD)
		return "prod";
	return s->source == KH_SRC_USB ? "console" : "admin";
}

/* Record a refused login of an authenticated identity (not a password failure). */
static void audit_refused(struct kh_ctx *c, const char *ident, const char *why)
{
	char detail[400];
	snprintf(detail, sizeof(detail), "identity %s refused: %s, port %s from %s", ident, why,
		 port_word(c->s), c->s->peer);
	KH_IGNORE(kh_audit_append(c->hsm, ident, "login.fail", detail));
}

/*
 * Attempts answered without counting anything (unknown identity, a role not
 * allowed on this port or source, an identity already locked) are audited
 * once per connection and kind, not per attempt: each audit row is an
 * fsync'd write, and an unauthenticated peer may send such attempts as fast
 * as the dummy scrypt lets it. The session remembers which it has recorded.
 */
static bool once_first(struct kh_session *s, int kind)
{
	unsigned bit = 1u << (kind & 31);
	if (s->quiet_audited & bit)
		return false;
	s->quiet_audited |= bit;
	return true;
}

/* Audit a refusal kh_ident_authenticate left to the caller (a->quiet), at
 * most once per connection and identity. what: "login" or "password change". */
static void audit_quiet(struct kh_ctx *c, const struct kh_auth *a, const char *what)
{
	char detail[400];
	const char *ident = a->id.name, *event = "login.fail";
	switch (a->quiet) {
	case KH_AUTH_UNKNOWN:
		/* the name may be a mistyped password: it is not recorded */
		if (!once_first(c->s, KH_AUTH_UNKNOWN))
			return;
		snprintf(detail, sizeof(detail),
			 "%s: unknown identity, port %s from %s (further attempts on this "
			 "connection not recorded)",
			 what, port_word(c->s), c->s->peer);
		ident = "-";
		break;
	case KH_AUTH_CONN_REFUSED:
		if (!once_first(c->s, KH_AUTH_CONN_REFUSED))
			return;
		snprintf(detail, sizeof(detail),
			 "identity %s %s refused: role %s not allowed on port %s from %s, password "
			 "not checked (further attempts on this connection not recorded)",
			 a->id.name, what, a->role.name, port_word(c->s), c->s->peer);
		break;
	case KH_AUTH_LOCKED_QUIET:
		if (!once_first(c->s, KH_AUTH_LOCKED_QUIET))
			return;
		snprintf(detail, sizeof(detail),
			 "identity %s is locked, %s attempt on port %s from %s (further attempts "
			 "on this connection not recorded)",
			 a->id.name, what, port_word(c->s), c->s->peer);
		event = "login.locked";
		break;
	default:
		return;
	}
	KH_IGNORE(kh_audit_append(c->hsm, ident, event, detail));
}

/* Authenticate for this connection, auditing a quiet refusal. A connection
 * that fails KH_LOGIN_FAILURES_PER_CONN times is closed after the answer:
 * guessing costs a new TCP and TLS handshake every few tries, on top of the
 * scrypt every try costs. */
static int authenticate(struct kh_ctx *c, const char *name, const struct secret *pw,
			const char *what, struct kh_auth *a)
{
	int r = kh_ident_authenticate(c->hsm, name, pw->p, pw->n, c->s->port, c->s->source,
				      c->s->peer, a);
	if (r != KH_OK)
		audit_quiet(c, a, what);
	if (r == KH_ERR_AUTH_FAILED || r == KH_ERR_LOCKED) {
		if (++c->s->login_failures >= KH_LOGIN_FAILURES_PER_CONN) {
			c->s->hangup = true;
			kh_ctx_detail(c, "too many failed logins on this connection: closing it");
		}
	}
	return r;
}

/* Inside the caller's transaction: record the success (kh_ident_login_ok
 * re-checks the lock and that the identity did not change since the
 * password check) and re-read the role, which must still allow this
 * connection. A refusal here is a race with an administrator or a lock
 * set by parallel attempts; it answers LOCKED or AUTH_FAILED like any other
 * failed attempt and writes nothing. */
static int commit_login(struct kh_ctx *c, const struct kh_auth *a, const struct kh_pwhash *nh,
			int64_t now, struct kh_role *role)
{
	int r;
	if ((r = kh_ident_login_ok(c->hsm, a, nh, now)) != KH_OK)
		return r;
	if ((r = kh_role_load_by_id(c->hsm, a->id.role_id, role)) != KH_OK)
		return r == KH_ERR_NOT_FOUND ? KH_ERR_AUTH_FAILED : r;
	if (!kh_role_allows_conn(role, c->s->port, c->s->source))
		return KH_ERR_AUTH_FAILED;
	return KH_OK;
}

static int session_find(const struct kh_session *s, const char *name)
{
	for (size_t i = 0; i < s->nident; i++)
		if (strcasecmp(s->ident[i], name) == 0)
			return (int)i;
	return -1;
}

KH_ACT(kh_cmd_logn)
{
	struct kh_session *s = c->s;
	struct secret pw = {0}, np = {0};
	struct kh_pwhash nh;
	struct kh_auth a;
	struct kh_role role;
	char name[KH_NAME_MAX], detail[400];
	bool changed = false, again;
	int64_t now;
	int r;

	memset(&nh, 0, sizeof(nh));
	memset(&a, 0, sizeof(a));
	if ((r = kh_cmd_ident_name(c, req, name)) != KH_OK)
		goto out;
	if ((r = get_password(c, req, "PW", false, &pw)) != KH_OK)
		goto out;
	if (kh_frame_has(req, "NP") && (r = get_password(c, req, "NP", true, &np)) != KH_OK)
		goto out;
	/* the port and source rule, the lock and the password, in that order:
	 * an identity whose role may not log in here answers AUTH_FAILED
	 * whatever the password, and nothing is counted */
	if ((r = authenticate(c, name, &pw, "login", &a)) != KH_OK)
		goto out;

	/* the password was right: from here on nothing counts as a failure */
	role = a.role;
	if (s->nident > 0 && s->role.id != role.id) {
		kh_ctx_detail(c, "connection is logged in under role %s", s->role.name);
		audit_refused(c, a.id.name, "role mismatch");
		r = KH_ERR_ROLE_MISMATCH;
		goto out;
	}
	again = session_find(s, a.id.name) >= 0;
	if (!again && s->nident >= KH_MAX_LOGINS) {
		kh_ctx_detail(c, "at most %d identities per connection", KH_MAX_LOGINS);
		r = KH_ERR_TOO_LARGE;
		goto out;
	}
	if (np.p == NULL && a.id.must_change) {
		kh_ctx_detail(c, "NP");
		r = KH_ERR_PASSWORD_CHANGE_REQUIRED;
		goto out;
	}
	if (np.p != NULL) {
		if ((r = kh_ident_password_policy(np.p, np.n, pw.p, pw.n)) != KH_OK) {
			kh_ctx_detail(c, "NP: %d to %d bytes, different from the old password",
				      KH_PASSWORD_MIN, KH_PASSWORD_MAX);
			goto out;
		}
		if ((r = kh_ident_hash_password(np.p, np.n, &nh)) != KH_OK)
			goto out;
		changed = true;
	}

	now = (int64_t)kh_hsm_now(c->hsm);
	if ((r = kh_db_begin(c->hsm->db)) != KH_OK)
		goto out;
	if ((r = commit_login(c, &a, changed ? &nh : NULL, now, &role)) != KH_OK) {
		kh_db_rollback(c->hsm->db);
		goto out;
	}
	snprintf(detail, sizeof(detail), "identity %s role %s port %s from %s", a.id.name,
		 role.name, port_word(s), s->peer);
	if ((changed && (r = kh_audit_append(c->hsm, a.id.name, "password.change",
					     "changed at login")) != KH_OK) ||
	    (r = kh_audit_append(c->hsm, a.id.name, "login", detail)) != KH_OK) {
		kh_db_rollback(c->hsm->db);
		goto out;
	}
	if ((r = kh_db_commit(c->hsm->db)) != KH_OK)
		goto out;

	if (!again) {
		snprintf(s->ident[s->nident], KH_NAME_MAX, "%s", a.id.name);
		s->nident++;
	}
	s->role = role;
	/* read before the identity and role: a change since makes the
	 * dispatcher re-check this session */
	s->role_gen = a.gen;
	s->active = s->nident >= (size_t)role.logins_required;

	if ((r = kh_msg_put(resp, "BB", "Y")) != KH_OK || (r = kh_msg_put(resp, "RO", role.name)) ||
	    (r = kh_msg_put_u64(resp, "LC", s->nident)) ||
	    (r = kh_msg_put_u64(resp, "LQ", (uint64_t)role.logins_required)) ||
	    (r = kh_msg_put(resp, "AC", s->active ? "Y" : "N")) ||
	    (r = kh_msg_put(resp, "MC", changed ? "Y" : "N")))
		goto out;
out:
	kh_ident_pwhash_wipe(&nh);
	secret_free(&pw);
	secret_free(&np);
	return r;
}

KH_ACT(kh_cmd_logo)
{
	struct kh_session *s = c->s;
	char name[KH_NAME_MAX], detail[400], actor[KH_MAX_LOGINS * KH_NAME_MAX];
	int r;

	kh_session_actor(s, actor, sizeof(actor));
	if (kh_frame_has(req, "ID")) {
		if ((r = kh_cmd_ident_name(c, req, name)) != KH_OK)
			return r;
		int i = session_find(s, name);
		if (i < 0) {
			kh_ctx_detail(c, "ID: not logged in on this connection");
			return KH_ERR_NOT_FOUND;
		}
		snprintf(detail, sizeof(detail), "identity %s from %s", s->ident[i], s->peer);
		for (size_t j = (size_t)i; j + 1 < s->nident; j++)
			memcpy(s->ident[j], s->ident[j + 1], KH_NAME_MAX);
		s->nident--;
		memset(s->ident[s->nident], 0, KH_NAME_MAX);
	} else {
		snprintf(detail, sizeof(detail), "all identities (%zu) from %s", s->nident, s->peer);
		memset(s->ident, 0, sizeof(s->ident));
		s->nident = 0;
	}
	if (s->nident == 0) {
		memset(&s->role, 0, sizeof(s->role));
		s->role_gen = 0;
		s->active = false;
	} else {
		s->active = s->nident >= (size_t)s->role.logins_required;
	}
	/* the logout has happened whatever the audit trail says; report its failure */
	if (strcmp(actor, "-") != 0 && (r = kh_audit_append(c->hsm, actor, "logout", detail)) != KH_OK)
		return r;
	if ((r = kh_msg_put(resp, "BB", "Y")) != KH_OK)
		return r;
	return kh_msg_put_u64(resp, "LC", s->nident);
}

KH_ACT(kh_cmd_chpw)
{
	struct secret pw = {0}, np = {0};
	struct kh_pwhash nh;
	struct kh_auth a;
	struct kh_role role;
	char name[KH_NAME_MAX], detail[400];
	int64_t now;
	int r;

	memset(&nh, 0, sizeof(nh));
	memset(&a, 0, sizeof(a));
	if ((r = kh_cmd_ident_name(c, req, name)) != KH_OK)
		goto out;
	if ((r = get_password(c, req, "PW", false, &pw)) != KH_OK)
		goto out;
	if ((r = get_password(c, req, "NP", true, &np)) != KH_OK)
		goto out;
	/* the same rules as LOGN: port and source first, then lock, then password */
	if ((r = authenticate(c, name, &pw, "password change", &a)) != KH_OK)
		goto out;
	if ((r = kh_ident_password_policy(np.p, np.n, pw.p, pw.n)) != KH_OK) {
		kh_ctx_detail(c, "NP: %d to %d bytes, different from the old password",
			      KH_PASSWORD_MIN, KH_PASSWORD_MAX);
		goto out;
	}
	if ((r = kh_ident_hash_password(np.p, np.n, &nh)) != KH_OK)
		goto out;
	now = (int64_t)kh_hsm_now(c->hsm);
	snprintf(detail, sizeof(detail), "identity %s changed its password from %s", a.id.name,
		 c->s->peer);
	if ((r = kh_db_begin(c->hsm->db)) != KH_OK)
		goto out;
	if ((r = commit_login(c, &a, &nh, now, &role)) != KH_OK ||
	    (r = kh_audit_append(c->hsm, a.id.name, "password.change", detail)) != KH_OK) {
		kh_db_rollback(c->hsm->db);
		goto out;
	}
	if ((r = kh_db_commit(c->hsm->db)) != KH_OK)
		goto out;
	r = kh_msg_put(resp, "BB", "Y");
out:
	kh_ident_pwhash_wipe(&nh);
	secret_free(&pw);
	secret_free(&np);
	return r;
}

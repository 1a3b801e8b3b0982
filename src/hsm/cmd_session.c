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

#include <stdio.h>
#include <string.h>
#include <strings.h>

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
	struct kh_ident id;
	struct kh_role role;
	char name[KH_NAME_MAX], detail[400];
	bool changed = false, again;
	uint64_t gen;
	int64_t now;
	int r;

	memset(&nh, 0, sizeof(nh));
	if ((r = kh_cmd_ident_name(c, req, name)) != KH_OK)
		goto out;
	if ((r = get_password(c, req, "PW", false, &pw)) != KH_OK)
		goto out;
	if (kh_frame_has(req, "NP") && (r = get_password(c, req, "NP", true, &np)) != KH_OK)
		goto out;
	if ((r = kh_ident_authenticate(c->hsm, name, pw.p, pw.n, s->peer, &id)) != KH_OK)
		goto out;

	/* the password was right: from here on nothing counts as a failure */
	gen = atomic_load(&c->hsm->role_gen);
	if ((r = kh_role_load_by_id(c->hsm, id.role_id, &role)) != KH_OK)
		goto out;
	if (!kh_role_allows_conn(&role, s->port, s->source)) {
		kh_ctx_detail(c, "role %s not allowed on the %s port from this source", role.name,
			      port_word(s));
		audit_refused(c, id.name, "port or source not allowed");
		r = KH_ERR_PORT_NOT_ALLOWED;
		goto out;
	}
	if (s->nident > 0 && s->role.id != role.id) {
		kh_ctx_detail(c, "connection is logged in under role %s", s->role.name);
		audit_refused(c, id.name, "role mismatch");
		r = KH_ERR_ROLE_MISMATCH;
		goto out;
	}
	again = session_find(s, id.name) >= 0;
	if (!again && s->nident >= KH_MAX_LOGINS) {
		kh_ctx_detail(c, "at most %d identities per connection", KH_MAX_LOGINS);
		r = KH_ERR_TOO_LARGE;
		goto out;
	}
	if (np.p == NULL && id.must_change) {
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
	snprintf(detail, sizeof(detail), "identity %s role %s port %s from %s", id.name, role.name,
		 port_word(s), s->peer);
	if ((r = kh_db_begin(c->hsm->db)) != KH_OK)
		goto out;
	if ((r = kh_ident_login_ok(c->hsm, id.id, changed ? &nh : NULL, now)) != KH_OK ||
	    (changed && (r = kh_audit_append(c->hsm, id.name, "password.change",
					     "changed at login")) != KH_OK) ||
	    (r = kh_audit_append(c->hsm, id.name, "login", detail)) != KH_OK) {
		kh_db_rollback(c->hsm->db);
		goto out;
	}
	if ((r = kh_db_commit(c->hsm->db)) != KH_OK)
		goto out;

	if (!again) {
		snprintf(s->ident[s->nident], KH_NAME_MAX, "%s", id.name);
		s->nident++;
	}
	s->role = role;
	s->role_gen = gen;
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
	struct kh_ident id;
	struct kh_role role;
	char name[KH_NAME_MAX], detail[400];
	int64_t now;
	int r;

	memset(&nh, 0, sizeof(nh));
	if ((r = kh_cmd_ident_name(c, req, name)) != KH_OK)
		goto out;
	if ((r = get_password(c, req, "PW", false, &pw)) != KH_OK)
		goto out;
	if ((r = get_password(c, req, "NP", true, &np)) != KH_OK)
		goto out;
	if ((r = kh_ident_authenticate(c->hsm, name, pw.p, pw.n, c->s->peer, &id)) != KH_OK)
		goto out;
	if ((r = kh_role_load_by_id(c->hsm, id.role_id, &role)) != KH_OK)
		goto out;
	if (!kh_role_allows_conn(&role, c->s->port, c->s->source)) {
		kh_ctx_detail(c, "role %s not allowed on the %s port from this source", role.name,
			      port_word(c->s));
		audit_refused(c, id.name, "password change: port or source not allowed");
		r = KH_ERR_PORT_NOT_ALLOWED;
		goto out;
	}
	if ((r = kh_ident_password_policy(np.p, np.n, pw.p, pw.n)) != KH_OK) {
		kh_ctx_detail(c, "NP: %d to %d bytes, different from the old password",
			      KH_PASSWORD_MIN, KH_PASSWORD_MAX);
		goto out;
	}
	if ((r = kh_ident_hash_password(np.p, np.n, &nh)) != KH_OK)
		goto out;
	now = (int64_t)kh_hsm_now(c->hsm);
	snprintf(detail, sizeof(detail), "identity %s changed its password from %s", id.name,
		 c->s->peer);
	if ((r = kh_db_begin(c->hsm->db)) != KH_OK)
		goto out;
	if ((r = kh_ident_login_ok(c->hsm, id.id, &nh, now)) != KH_OK ||
	    (r = kh_audit_append(c->hsm, id.name, "password.change", detail)) != KH_OK) {
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

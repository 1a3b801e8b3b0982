/*
 * Identity commands: IDAD, IDMD, IDDL, IDLS. Passwords set here are decoded
 * into the secure heap, hashed before the transaction starts and wiped; they
 * never reach a reply, a log or the audit trail. Each change is one
 * transaction with its audit entry.
 */
#include "hsm/cmds.h"
#include "hsm/audit.h"
#include "hsm/db.h"
#include "hsm/identity.h"
#include "hsm/roles.h"
#include "common/kh_buf.h"
#include "common/kh_mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define IDENT_LIST_MAX (1024u * 1024)

int kh_cmd_ident_name(struct kh_ctx *c, const struct kh_frame *req, char name[KH_NAME_MAX])
{
	int r = kh_frame_str(req, "ID", name, KH_NAME_MAX);
	if (r == KH_OK && !kh_ident_name_valid(name))
		r = KH_ERR_BAD_FIELD;
	if (r != KH_OK)
		kh_ctx_detail(c, "ID");
	return r;
}

/* The role an identity may be given: exists, and is not Transaction Processing. */
static int target_role(struct kh_ctx *c, const struct kh_frame *req, struct kh_role *role)
{
	char name[KH_NAME_MAX];
	int r = kh_frame_str(req, "RN", name, sizeof(name));
	if (r == KH_OK && !kh_role_name_valid(name))
		r = KH_ERR_BAD_FIELD;
	if (r == KH_OK)
		r = kh_role_load(c->hsm, name, role);
	if (r != KH_OK) {
		kh_ctx_detail(c, "RN");
		return r;
	}
	if (kh_role_name_is_tp(role->name)) {
		kh_ctx_detail(c, "RN: %s has no identities", KH_ROLE_TP);
		return KH_ERR_STATE;
	}
	return KH_OK;
}

/* A new password from PW, checked against the policy and hashed. */
static int new_password(struct kh_ctx *c, const struct kh_frame *req, struct kh_pwhash *h)
{
	const struct kh_field *f = kh_frame_get(req, "PW");
	uint8_t *pw = NULL;
	size_t n = 0;
	int r;

	if (f == NULL) {
		kh_ctx_detail(c, "PW");
		return KH_ERR_MISSING_FIELD;
	}
	if (f->len / 2 > KH_PASSWORD_MAX) {
		kh_ctx_detail(c, "PW: %d to %d bytes", KH_PASSWORD_MIN, KH_PASSWORD_MAX);
		return KH_ERR_WEAK_PASSWORD;
	}
	if ((r = kh_frame_hex_secure(req, "PW", KH_PASSWORD_MAX, &pw, &n)) != KH_OK) {
		kh_ctx_detail(c, "PW");
		return r;
	}
	if ((r = kh_ident_password_policy(pw, n, NULL, 0)) != KH_OK)
		kh_ctx_detail(c, "PW: %d to %d bytes", KH_PASSWORD_MIN, KH_PASSWORD_MAX);
	else
		r = kh_ident_hash_password(pw, n, h);
	kh_secure_free(pw, n);
	return r;
}

/* May the caller act on identities of this role? Only on roles whose
 * permissions its own role holds too, unless it holds role.assign_all:
 * otherwise identity.add / identity.modify would let a helpdesk role create,
 * move or take over identities of a more privileged role. */
static int check_reach(struct kh_ctx *c, const struct kh_role *role)
{
	if (kh_role_may_manage(c->role, role))
		return KH_OK;
	kh_ctx_detail(c, "role %s holds permissions yours lacks", role->name);
	return KH_ERR_PERMISSION_DENIED;
}

/* check_reach on the role with this id, read afresh (inside the caller's
 * transaction, so the decision holds for what is written). */
static int check_reach_id(struct kh_ctx *c, int64_t role_id)
{
	struct kh_role role;
	int r = kh_role_load_by_id(c->hsm, role_id, &role);
	if (r != KH_OK)
		return r;
	return check_reach(c, &role);
}

/* Would taking one identity out of role leave it unable to become active?
 * Only the Administrator role is guarded: losing it locks everyone out. */
static int check_admin_quorum(struct kh_ctx *c, int64_t role_id)
{
	struct kh_role role;
	int64_t count = 0;
	int r = kh_role_load_by_id(c->hsm, role_id, &role);
	if (r != KH_OK)
		return r;
	if (!kh_role_is_builtin_admin(&role))
		return KH_OK;
	if ((r = kh_role_identity_count(c->hsm, role_id, &count)) != KH_OK)
		return r;
	if (count - 1 < role.logins_required) {
		kh_ctx_detail(c, "%s would have fewer identities than its Logins Required",
			      KH_ROLE_ADMIN);
		return KH_ERR_STATE;
	}
	return KH_OK;
}

KH_ACT(kh_cmd_idad)
{
	struct kh_role role;
	struct kh_pwhash h;
	char name[KH_NAME_MAX], detail[400], actor[KH_MAX_LOGINS * KH_NAME_MAX];
	bool mc = false;
	int64_t now;
	int r;

	memset(&h, 0, sizeof(h));
	if ((r = kh_cmd_ident_name(c, req, name)) != KH_OK)
		goto out;
	if ((r = target_role(c, req, &role)) != KH_OK)
		goto out;
	/* refused before the slow hash; checked again inside the transaction */
	if ((r = check_reach(c, &role)) != KH_OK)
		goto out;
	if (kh_frame_has(req, "MC") && (r = kh_frame_yn(req, "MC", &mc)) != KH_OK) {
		kh_ctx_detail(c, "MC");
		goto out;
	}
	if ((r = new_password(c, req, &h)) != KH_OK)
		goto out;
	now = (int64_t)kh_hsm_now(c->hsm);
	kh_session_actor(c->s, actor, sizeof(actor));
	snprintf(detail, sizeof(detail), "identity %s role %s must_change=%s", name, role.name,
		 mc ? "Y" : "N");
	if ((r = kh_db_begin(c->hsm->db)) != KH_OK)
		goto out;
	if ((r = check_reach_id(c, role.id)) != KH_OK) {
		kh_db_rollback(c->hsm->db);
		if (r == KH_ERR_NOT_FOUND)
			kh_ctx_detail(c, "RN");
		goto out;
	}
	if ((r = kh_ident_insert(c->hsm, name, role.id, &h, mc, false, now)) != KH_OK ||
	    (r = kh_audit_append(c->hsm, actor, "identity.add", detail)) != KH_OK) {
		kh_db_rollback(c->hsm->db);
		if (r == KH_ERR_EXISTS)
			kh_ctx_detail(c, "ID");
		goto out;
	}
	if ((r = kh_db_commit(c->hsm->db)) != KH_OK)
		goto out;
	r = kh_msg_put(resp, "BB", "Y");
out:
	kh_ident_pwhash_wipe(&h);
	return r;
}

KH_ACT(kh_cmd_idmd)
{
	struct kh_role role;
	struct kh_ident id;
	struct kh_pwhash h;
	char name[KH_NAME_MAX], detail[300], actor[KH_MAX_LOGINS * KH_NAME_MAX];
	bool has_rn = kh_frame_has(req, "RN"), has_pw = kh_frame_has(req, "PW");
	bool has_mc = kh_frame_has(req, "MC"), mc = false, unlock = false;
	size_t pos;
	int64_t now;
	int r;

	memset(&h, 0, sizeof(h));
	memset(&role, 0, sizeof(role));
	if ((r = kh_cmd_ident_name(c, req, name)) != KH_OK)
		goto out;
	if (has_rn && (r = target_role(c, req, &role)) != KH_OK)
		goto out;
	if (has_rn && (r = check_reach(c, &role)) != KH_OK)
		goto out;
	if (has_mc && (r = kh_frame_yn(req, "MC", &mc)) != KH_OK) {
		kh_ctx_detail(c, "MC");
		goto out;
	}
	if (kh_frame_has(req, "UL") && (r = kh_frame_yn(req, "UL", &unlock)) != KH_OK) {
		kh_ctx_detail(c, "UL");
		goto out;
	}
	/* refused before the slow hash; decided again inside the transaction */
	if ((r = kh_ident_load(c->hsm, name, &id)) != KH_OK) {
		kh_ctx_detail(c, "ID");
		goto out;
	}
	if ((r = check_reach_id(c, id.role_id)) != KH_OK)
		goto out;
	if (has_pw && (r = new_password(c, req, &h)) != KH_OK)
		goto out;
	now = (int64_t)kh_hsm_now(c->hsm);
	kh_session_actor(c->s, actor, sizeof(actor));

	if ((r = kh_db_begin(c->hsm->db)) != KH_OK)
		goto out;
	if ((r = kh_ident_load(c->hsm, name, &id)) != KH_OK) {
		kh_ctx_detail(c, "ID");
		goto fail;
	}
	/* the identity's current role, whatever is changed (a password reset
	 * or unlock is a takeover of that role), and the new one */
	if ((r = check_reach_id(c, id.role_id)) != KH_OK ||
	    (has_rn && (r = check_reach_id(c, role.id)) != KH_OK))
		goto fail;
	pos = (size_t)snprintf(detail, sizeof(detail), "identity %s:", id.name);
	if (has_rn && role.id != id.role_id) {
		if ((r = check_admin_quorum(c, id.role_id)) != KH_OK ||
		    (r = kh_ident_set_role(c->hsm, id.id, role.id, now)) != KH_OK)
			goto fail;
		pos += (size_t)snprintf(detail + pos, sizeof(detail) - pos, " role %s", role.name);
	}
	if (has_pw) {
		/* an administrator's reset is a one-time password unless MC=N */
		bool must = has_mc ? mc : true;
		if ((r = kh_ident_set_password(c->hsm, id.id, &h, must, now)) != KH_OK)
			goto fail;
		pos += (size_t)snprintf(detail + pos, sizeof(detail) - pos, " password reset");
	}
	if (has_mc && !has_pw) {
		if ((r = kh_ident_set_must_change(c->hsm, id.id, mc, now)) != KH_OK)
			goto fail;
	}
	if (has_mc && pos < sizeof(detail))
		pos += (size_t)snprintf(detail + pos, sizeof(detail) - pos, " must_change=%s",
					mc ? "Y" : "N");
	if (unlock) {
		char ul[120];
		snprintf(ul, sizeof(ul), "identity %s", id.name);
		if ((r = kh_ident_unlock(c->hsm, id.id, now)) != KH_OK ||
		    (r = kh_audit_append(c->hsm, actor, "identity.unlock", ul)) != KH_OK)
			goto fail;
	}
	if ((r = kh_audit_append(c->hsm, actor, "identity.modify", detail)) != KH_OK)
		goto fail;
	if ((r = kh_db_commit(c->hsm->db)) != KH_OK)
		goto out;
	/* sessions re-check their identities: a moved identity leaves, one that
	 * must change its password (a reset) is logged out */
	if (has_rn || has_pw || has_mc || unlock)
		atomic_fetch_add(&c->hsm->role_gen, 1);
	r = kh_msg_put(resp, "BB", "Y");
	goto out;
fail:
	kh_db_rollback(c->hsm->db);
out:
	kh_ident_pwhash_wipe(&h);
	return r;
}

KH_ACT(kh_cmd_iddl)
{
	struct kh_ident id;
	char name[KH_NAME_MAX], detail[120], actor[KH_MAX_LOGINS * KH_NAME_MAX];
	int r;

	if ((r = kh_cmd_ident_name(c, req, name)) != KH_OK)
		return r;
	for (size_t i = 0; i < c->s->nident; i++)
		if (strcasecmp(c->s->ident[i], name) == 0) {
			kh_ctx_detail(c, "ID: logged in on this connection");
			return KH_ERR_STATE;
		}
	kh_session_actor(c->s, actor, sizeof(actor));
	if ((r = kh_db_begin(c->hsm->db)) != KH_OK)
		return r;
	if ((r = kh_ident_load(c->hsm, name, &id)) != KH_OK) {
		kh_ctx_detail(c, "ID");
		goto fail;
	}
	if ((r = check_reach_id(c, id.role_id)) != KH_OK ||
	    (r = check_admin_quorum(c, id.role_id)) != KH_OK)
		goto fail;
	snprintf(detail, sizeof(detail), "identity %s", id.name);
	if ((r = kh_ident_delete(c->hsm, id.id)) != KH_OK ||
	    (r = kh_audit_append(c->hsm, actor, "identity.delete", detail)) != KH_OK)
		goto fail;
	if ((r = kh_db_commit(c->hsm->db)) != KH_OK)
		return r;
	atomic_fetch_add(&c->hsm->role_gen, 1); /* sessions re-check their identities */
	return kh_msg_put(resp, "BB", "Y");
fail:
	kh_db_rollback(c->hsm->db);
	return r;
}

KH_ACT(kh_cmd_idls)
{
	char *list = malloc(IDENT_LIST_MAX);
	int r;
	if (list == NULL)
		return KH_ERR_NOMEM;
	if ((r = kh_ident_list(c->hsm, (int64_t)kh_hsm_now(c->hsm), list, IDENT_LIST_MAX)) == KH_OK)
		r = kh_msg_put(resp, "IL", list);
	free(list);
	return r;
}

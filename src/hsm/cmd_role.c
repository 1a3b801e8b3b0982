/*
 * Role commands: RLAD, RLMD, RLLS, RLSH, RLDL. Every field is parsed and
 * every rule checked before anything is written, and each change lands in one
 * transaction together with its audit entry: bad input never half-changes a
 * role. The dispatcher has already checked the command's own permission.
 */
#include "hsm/cmds.h"
#include "hsm/audit.h"
#include "hsm/db.h"
#include "hsm/roles.h"
#include "common/kh_buf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define ROLE_LIST_MAX (256u * 1024)

static bool fips_mode(struct kh_hsm *hsm)
{
	pthread_mutex_lock(&hsm->mu);
	bool f = hsm->fips;
	pthread_mutex_unlock(&hsm->mu);
	return f;
}

/* Optional text tag: 0 absent, 1 present (value in buf), or a kh_err. */
static int opt_field(struct kh_ctx *c, const struct kh_frame *req, const char *tag, char *buf,
		     size_t bufsz)
{
	if (!kh_frame_has(req, tag))
		return 0;
	int r = kh_frame_str(req, tag, buf, bufsz);
	if (r != KH_OK) {
		kh_ctx_detail(c, "%s", tag);
		return r;
	}
	return 1;
}

/* Apply the optional role fields of req onto r. */
static int parse_fields(struct kh_ctx *c, const struct kh_frame *req, struct kh_role *r)
{
	char buf[KH_ROLE_FIELD_MAX];
	int have, e;

	if ((have = opt_field(c, req, "PM", buf, sizeof(buf))) < 0)
		return have;
	if (have && (e = kh_perms_parse(buf, strlen(buf), &r->perms)) != KH_OK) {
		kh_ctx_detail(c, "PM: unknown permission");
		return e;
	}
	if ((have = opt_field(c, req, "KR", buf, sizeof(buf))) < 0)
		return have;
	if (have && (e = kh_ranges_parse(buf, strlen(buf), r->ranges, &r->nranges)) != KH_OK) {
		kh_ctx_detail(c, "KR: K:LO-HI with K in S,A,M, LO<=HI<=%u, at most %d, no overlap",
			      KH_SLOT_MAX, KH_MAX_RANGES);
		return e;
	}
	if ((have = opt_field(c, req, "CM", buf, sizeof(buf))) < 0)
		return have;
	if (have && (e = kh_cmds_parse(buf, strlen(buf), r->cmds)) != KH_OK) {
		kh_ctx_detail(c, "CM: not an Excrypt command");
		return e;
	}
	if (kh_frame_has(req, "LQ")) {
		uint64_t lq;
		if ((e = kh_frame_u64(req, "LQ", 1, 3, &lq)) != KH_OK) {
			kh_ctx_detail(c, "LQ: 1 to 3");
			return e;
		}
		r->logins_required = (int)lq;
	}
	if ((have = opt_field(c, req, "PT", buf, sizeof(buf))) < 0)
		return have;
	if (have && (e = kh_ports_parse(buf, strlen(buf), &r->ports)) != KH_OK) {
		kh_ctx_detail(c, "PT: prod, admin");
		return e;
	}
	if ((have = opt_field(c, req, "CS", buf, sizeof(buf))) < 0)
		return have;
	if (have && (e = kh_sources_parse(buf, strlen(buf), &r->sources)) != KH_OK) {
		kh_ctx_detail(c, "CS: ethernet, usb");
		return e;
	}
	if ((have = opt_field(c, req, "DF", buf, sizeof(buf))) < 0)
		return have;
	if (have && (e = kh_df_parse(buf, strlen(buf), &r->dual_factor)) != KH_OK) {
		kh_ctx_detail(c, "DF: only never is supported");
		return e;
	}
	return KH_OK;
}

/* The rules that depend on who asks and on the device mode. */
static int check_rules(struct kh_ctx *c, const struct kh_role *old, const struct kh_role *nw,
		       bool fips)
{
	uint64_t caller = c->role ? c->role->perms : 0;
	uint64_t granted = nw->perms & ~old->perms & ~caller;

	if (granted && !(caller & KH_PERM(KH_P_ROLE_ASSIGN_ALL))) {
		kh_ctx_detail(c, "needs %s to grant permissions the caller's role lacks",
			      "role.assign_all");
		return KH_ERR_PERMISSION_DENIED;
	}
	if (memcmp(nw->cmds, old->cmds, sizeof(nw->cmds)) != 0 &&
	    !(caller & KH_PERM(KH_P_CMD_SETTINGS_EXCRYPT))) {
		kh_ctx_detail(c, "needs %s to change CM", "command_settings.excrypt");
		return KH_ERR_PERMISSION_DENIED;
	}
	if (fips && !kh_role_name_is_tp(nw->name) && nw->logins_required < 2) {
		kh_ctx_detail(c, "LQ: at least 2 in FIPS mode");
		return KH_ERR_FIPS;
	}
	if (caller & KH_PERM(KH_P_ROLE_ASSIGN_ALL))
		return KH_OK;
	/* Without Role:Assign All a caller shapes roles only within its own
	 * reach: not its own role, no slots or commands it lacks, no weaker
	 * dual control, no ports or sources beyond the role's and its own. */
	if (old->id != 0 && c->role && old->id == c->role->id) {
		kh_ctx_detail(c, "a role cannot change itself without role.assign_all");
		return KH_ERR_PERMISSION_DENIED;
	}
	if (!kh_role_may_manage(c->role, nw)) {
		kh_ctx_detail(c, "the role would reach slots or commands yours lacks");
		return KH_ERR_PERMISSION_DENIED;
	}
	if (old->id != 0 && nw->logins_required < old->logins_required) {
		kh_ctx_detail(c, "lowering LQ needs role.assign_all");
		return KH_ERR_PERMISSION_DENIED;
	}
	/* (a new role's ports are its own business: a partition made on the
	 * Admin port serves the Prod port) */
	unsigned cports = c->role ? c->role->ports : 0, csrc = c->role ? c->role->sources : 0;
	if (old->id != 0 &&
	    ((nw->ports & ~(old->ports | cports)) || (nw->sources & ~(old->sources | csrc)))) {
		kh_ctx_detail(c, "the role would gain ports or sources yours lacks");
		return KH_ERR_PERMISSION_DENIED;
	}
	return KH_OK;
}

/* May the caller change or delete this role? Not one more privileged than
 * its own, unless it holds role.assign_all. */
static int check_reach(struct kh_ctx *c, const struct kh_role *target)
{
	if (kh_role_may_manage(c->role, target))
		return KH_OK;
	kh_ctx_detail(c, "role %s holds permissions yours lacks", target->name);
	return KH_ERR_PERMISSION_DENIED;
}

/* What the built-in roles must keep, whoever asks. The Administrator is the
 * only way back into the device: it keeps every permission, the Admin port,
 * a connection source, and a Logins Required that its identities can meet
 * (at least 1; the FIPS minimum is check_rules'). Transaction Processing has
 * no identities: it keeps Logins Required 0 and the Prod port only. Runs
 * inside the transaction that writes nw. */
static int check_builtin(struct kh_ctx *c, const struct kh_role *nw)
{
	if (kh_role_is_builtin_admin(nw)) {
		int64_t count = 0;
		int r;
		if ((nw->perms & KH_PERMS_ALL) != KH_PERMS_ALL) {
			kh_ctx_detail(c, "PM: %s keeps every permission", KH_ROLE_ADMIN);
			return KH_ERR_STATE;
		}
		if (!(nw->ports & KH_PORT_ADMIN)) {
			kh_ctx_detail(c, "PT: %s keeps the admin port", KH_ROLE_ADMIN);
			return KH_ERR_STATE;
		}
		if (nw->sources == 0) {
			kh_ctx_detail(c, "CS: %s needs a connection source", KH_ROLE_ADMIN);
			return KH_ERR_STATE;
		}
		if ((r = kh_role_identity_count(c->hsm, nw->id, &count)) != KH_OK)
			return r;
		if (nw->logins_required < 1 || nw->logins_required > count) {
			kh_ctx_detail(c, "LQ: %s needs 1 to %lld (its identities)", KH_ROLE_ADMIN,
				      (long long)count);
			return KH_ERR_STATE;
		}
	} else if (kh_role_is_builtin_tp(nw)) {
		if (nw->logins_required != 0) {
			kh_ctx_detail(c, "LQ: %s has no identities and keeps 0", KH_ROLE_TP);
			return KH_ERR_STATE;
		}
		if (nw->ports != KH_PORT_PROD) {
			kh_ctx_detail(c, "PT: %s is the prod port's pre-login role", KH_ROLE_TP);
			return KH_ERR_STATE;
		}
	}
	return KH_OK;
}

static int get_name(struct kh_ctx *c, const struct kh_frame *req, const char *tag,
		    char name[KH_NAME_MAX])
{
	int r = kh_frame_str(req, tag, name, KH_NAME_MAX);
	if (r == KH_OK && !kh_role_name_valid(name))
		r = KH_ERR_BAD_FIELD;
	if (r != KH_OK)
		kh_ctx_detail(c, "%s", tag);
	return r;
}

static void describe(const struct kh_role *r, char *out, size_t outsz)
{
	char perms[KH_PERMS_TEXT_MAX], ranges[KH_RANGES_TEXT_MAX], cmds[KH_CMDS_TEXT_MAX];
	char ports[32], sources[32];
	kh_perms_format(r->perms, perms, sizeof(perms));
	kh_ranges_format(r->ranges, r->nranges, ranges, sizeof(ranges));
	kh_cmds_format(r->cmds, cmds, sizeof(cmds));
	kh_ports_format(r->ports, ports, sizeof(ports));
	kh_sources_format(r->sources, sources, sizeof(sources));
	snprintf(out, outsz, "role %s LQ=%d PT=%s CS=%s KR=%s PM=%s CM=%s", r->name,
		 r->logins_required, ports, sources, ranges, perms, cmds);
}

/* Write r and its audit entry; runs inside the caller's transaction. */
static int store_role(struct kh_ctx *c, const struct kh_role *r, bool add, const char *oldname)
{
	char detail[KH_AUDIT_DETAIL_MAX + KH_NAME_MAX + 32], actor[KH_MAX_LOGINS * KH_NAME_MAX];
	char desc[KH_AUDIT_DETAIL_MAX + 1]; /* kh_audit_append cuts the detail to its maximum */
	int e;

	kh_session_actor(c->s, actor, sizeof(actor));
	describe(r, desc, sizeof(desc));
	if (oldname && strcmp(oldname, r->name) != 0)
		snprintf(detail, sizeof(detail), "renamed from %s; %s", oldname, desc);
	else
		snprintf(detail, sizeof(detail), "%s", desc);
	e = add ? kh_role_insert(c->hsm, r, NULL) : kh_role_update(c->hsm, r);
	if (e == KH_OK)
		e = kh_audit_append(c->hsm, actor, add ? "role.add" : "role.modify", detail);
	if (e == KH_ERR_EXISTS)
		kh_ctx_detail(c, "%s", add ? "RN" : "NN");
	return e;
}

KH_ACT(kh_cmd_rlad)
{
	struct kh_role old, nw;
	bool fips = fips_mode(c->hsm);
	int r;

	memset(&old, 0, sizeof(old));
	memset(&nw, 0, sizeof(nw));
	if ((r = get_name(c, req, "RN", nw.name)) != KH_OK)
		return r;
	if (kh_role_name_is_tp(nw.name)) {
		kh_ctx_detail(c, "RN");
		return KH_ERR_EXISTS;
	}
	/* defaults of docs/PROTOCOL.md; in FIPS mode LQ starts at its minimum there */
	nw.logins_required = fips ? 2 : 1;
	nw.ports = KH_PORT_PROD;
	nw.sources = KH_SRC_ETHERNET;
	if ((r = parse_fields(c, req, &nw)) != KH_OK)
		return r;
	if ((r = check_rules(c, &old, &nw, fips)) != KH_OK)
		return r;
	if ((r = kh_db_begin(c->hsm->db)) != KH_OK)
		return r;
	if ((r = store_role(c, &nw, true, NULL)) != KH_OK) {
		kh_db_rollback(c->hsm->db);
		return r;
	}
	if ((r = kh_db_commit(c->hsm->db)) != KH_OK)
		return r;
	atomic_fetch_add(&c->hsm->role_gen, 1);
	return kh_msg_put(resp, "BB", "Y");
}

KH_ACT(kh_cmd_rlmd)
{
	struct kh_role old, nw;
	char name[KH_NAME_MAX], newname[KH_NAME_MAX];
	bool fips = fips_mode(c->hsm); /* hsm->mu before the database lock */
	int r;

	if ((r = get_name(c, req, "RN", name)) != KH_OK)
		return r;
	/* read, decide and write in one transaction: the rules hold for what
	 * is written */
	if ((r = kh_db_begin(c->hsm->db)) != KH_OK)
		return r;
	if ((r = kh_role_load(c->hsm, name, &old)) != KH_OK) {
		kh_ctx_detail(c, "RN");
		goto fail;
	}
	if ((r = check_reach(c, &old)) != KH_OK)
		goto fail;
	nw = old;
	if (kh_frame_has(req, "NN")) {
		if ((r = get_name(c, req, "NN", newname)) != KH_OK)
			goto fail;
		if (strcmp(newname, old.name) != 0) {
			if (old.builtin) {
				kh_ctx_detail(c, "NN: built-in roles cannot be renamed");
				r = KH_ERR_STATE;
				goto fail;
			}
			if (kh_role_name_is_tp(newname)) {
				kh_ctx_detail(c, "NN");
				r = KH_ERR_EXISTS;
				goto fail;
			}
			snprintf(nw.name, sizeof(nw.name), "%s", newname);
		}
	}
	if ((r = parse_fields(c, req, &nw)) != KH_OK ||
	    (r = check_rules(c, &old, &nw, fips)) != KH_OK ||
	    (r = check_builtin(c, &nw)) != KH_OK ||
	    (r = store_role(c, &nw, false, old.name)) != KH_OK)
		goto fail;
	if ((r = kh_db_commit(c->hsm->db)) != KH_OK)
		return r;
	atomic_fetch_add(&c->hsm->role_gen, 1);
	return kh_msg_put(resp, "BB", "Y");
fail:
	kh_db_rollback(c->hsm->db);
	return r;
}

KH_ACT(kh_cmd_rlls)
{
	char *list = malloc(ROLE_LIST_MAX);
	int r;
	if (list == NULL)
		return KH_ERR_NOMEM;
	if ((r = kh_role_list(c->hsm, list, ROLE_LIST_MAX)) == KH_OK)
		r = kh_msg_put(resp, "RL", list);
	free(list);
	return r;
}

KH_ACT(kh_cmd_rlsh)
{
	struct kh_role role;
	char name[KH_NAME_MAX], perms[KH_PERMS_TEXT_MAX], ranges[KH_RANGES_TEXT_MAX];
	char cmds[KH_CMDS_TEXT_MAX], ports[32], sources[32];
	int64_t count = 0;
	int r;

	if ((r = get_name(c, req, "RN", name)) != KH_OK)
		return r;
	if ((r = kh_role_load(c->hsm, name, &role)) != KH_OK) {
		kh_ctx_detail(c, "RN");
		return r;
	}
	if ((r = kh_role_identity_count(c->hsm, role.id, &count)) != KH_OK)
		return r;
	kh_perms_format(role.perms, perms, sizeof(perms));
	kh_ranges_format(role.ranges, role.nranges, ranges, sizeof(ranges));
	kh_cmds_format(role.cmds, cmds, sizeof(cmds));
	kh_ports_format(role.ports, ports, sizeof(ports));
	kh_sources_format(role.sources, sources, sizeof(sources));
	if ((r = kh_msg_put(resp, "RN", role.name)) != KH_OK ||
	    (r = kh_msg_put(resp, "PM", perms)) != KH_OK ||
	    (r = kh_msg_put(resp, "KR", ranges)) != KH_OK ||
	    (r = kh_msg_put(resp, "CM", cmds)) != KH_OK ||
	    (r = kh_msg_put_u64(resp, "LQ", (uint64_t)role.logins_required)) != KH_OK ||
	    (r = kh_msg_put(resp, "PT", ports)) != KH_OK ||
	    (r = kh_msg_put(resp, "CS", sources)) != KH_OK ||
	    (r = kh_msg_put(resp, "DF", role.dual_factor ? "always" : "never")) != KH_OK ||
	    (r = kh_msg_put(resp, "BI", role.builtin ? "Y" : "N")) != KH_OK)
		return r;
	return kh_msg_put_u64(resp, "IC", (uint64_t)count);
}

KH_ACT(kh_cmd_rldl)
{
	struct kh_role role;
	char name[KH_NAME_MAX], detail[400], actor[KH_MAX_LOGINS * KH_NAME_MAX];
	int64_t count = 0;
	int r;

	if ((r = get_name(c, req, "RN", name)) != KH_OK)
		return r;
	kh_session_actor(c->s, actor, sizeof(actor));
	if ((r = kh_db_begin(c->hsm->db)) != KH_OK)
		return r;
	if ((r = kh_role_load(c->hsm, name, &role)) != KH_OK) {
		kh_ctx_detail(c, "RN");
		goto fail;
	}
	if ((r = check_reach(c, &role)) != KH_OK)
		goto fail;
	if (role.builtin) {
		kh_ctx_detail(c, "RN: built-in roles cannot be deleted");
		r = KH_ERR_STATE;
		goto fail;
	}
	if ((r = kh_role_identity_count(c->hsm, role.id, &count)) != KH_OK)
		goto fail;
	if (count > 0) {
		kh_ctx_detail(c, "RN: %lld identities belong to the role", (long long)count);
		r = KH_ERR_IN_USE;
		goto fail;
	}
	snprintf(detail, sizeof(detail), "role %s", role.name);
	if ((r = kh_role_delete(c->hsm, role.id)) != KH_OK ||
	    (r = kh_audit_append(c->hsm, actor, "role.delete", detail)) != KH_OK)
		goto fail;
	if ((r = kh_db_commit(c->hsm->db)) != KH_OK)
		return r;
	atomic_fetch_add(&c->hsm->role_gen, 1);
	return kh_msg_put(resp, "BB", "Y");
fail:
	kh_db_rollback(c->hsm->db);
	return r;
}

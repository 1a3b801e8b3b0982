/*
 * The one dispatcher. All access control happens here, before a handler
 * runs: command exists, port, login state, the role's enabled commands,
 * permissions, slot range. A handler that fails leaves no partial output.
 */
#include "hsm/dispatch.h"
#include "hsm/roles.h"
#include "hsm/identity.h"
#include "hsm/keyobj.h"
#include "common/kh_mem.h"
#include "common/kh_buf.h"
#include "common/kh_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>

bool kh_role_has_slot(const struct kh_role *r, uint32_t slot)
{
	for (size_t i = 0; i < r->nranges; i++)
		if (slot >= r->ranges[i].lo && slot <= r->ranges[i].hi)
			return true;
	return false;
}

bool kh_role_has_cmd(const struct kh_role *r, int index)
{
	if (index < 0 || index >= KH_MAX_COMMANDS)
		return false;
	return (r->cmds[index / 8] >> (index % 8)) & 1;
}

void kh_role_set_cmd(struct kh_role *r, int index, bool on)
{
	if (index < 0 || index >= KH_MAX_COMMANDS)
		return;
	if (on)
		r->cmds[index / 8] |= (uint8_t)(1u << (index % 8));
	else
		r->cmds[index / 8] &= (uint8_t)~(1u << (index % 8));
}

void kh_ctx_detail(struct kh_ctx *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->s->detail, sizeof(c->s->detail), fmt, ap);
	va_end(ap);
}

void kh_session_actor(const struct kh_session *s, char *out, size_t outsz)
{
	size_t n = 0;
	out[0] = '\0';
	for (size_t i = 0; i < s->nident && n + 1 < outsz; i++) {
		int w = snprintf(out + n, outsz - n, "%s%s", i ? "+" : "", s->ident[i]);
		if (w < 0)
			break;
		n += (size_t)w;
	}
	if (s->nident == 0)
		snprintf(out, outsz, "-");
}

/* The Transaction Processing role, cached in the session and re-read only
 * when some role changed: the common path is one atomic load, no lock. The
 * device-wide copy spares a database read per connection. The database is
 * never read while holding hsm->mu (lock order: db, then hsm->mu). */
static int tp_role(struct kh_hsm *hsm, struct kh_session *s, const struct kh_role **out)
{
	uint64_t gen = atomic_load(&hsm->role_gen);
	if (s->tp_gen == gen + 1) {
		*out = &s->tp;
		return KH_OK;
	}
	pthread_mutex_lock(&hsm->mu);
	bool fresh = hsm->tp_role_gen == gen + 1;
	if (fresh)
		s->tp = hsm->tp_role;
	pthread_mutex_unlock(&hsm->mu);
	if (!fresh) {
		int r = kh_role_load(hsm, KH_ROLE_TP, &s->tp);
		if (r != KH_OK)
			return r;
		pthread_mutex_lock(&hsm->mu);
		hsm->tp_role = s->tp;
		hsm->tp_role_gen = gen + 1;
		pthread_mutex_unlock(&hsm->mu);
	}
	s->tp_gen = gen + 1;
	*out = &s->tp;
	return KH_OK;
}

/* The logged-in role, refreshed if roles or identities changed since login.
 * An identity is logged out of the session when it was deleted or moved to
 * another role, is now locked, or must change its password (an
 * administrator's reset: the old password may be compromised); every login
 * goes when the role no longer allows this port and source. The role is
 * then re-read. KH_ERR_NOT_FOUND when no login remains. Never called with
 * hsm->mu held (kh_hsm_now takes it). */
static int session_role(struct kh_hsm *hsm, struct kh_session *s)
{
	uint64_t gen = atomic_load(&hsm->role_gen);
	if (s->role_gen == gen)
		return KH_OK;
	int64_t now = (int64_t)kh_hsm_now(hsm);
	struct kh_role fresh;
	bool allowed = false;
	int r = kh_role_load_by_id(hsm, s->role.id, &fresh);
	if (r == KH_OK)
		allowed = kh_role_allows_conn(&fresh, s->port, s->source);
	else if (r != KH_ERR_NOT_FOUND)
		return r;
	size_t keep = 0;
	for (size_t i = 0; allowed && i < s->nident; i++) {
		struct kh_ident id;
		r = kh_ident_load(hsm, s->ident[i], &id);
		if (r == KH_OK && id.role_id == s->role.id && !id.must_change &&
		    id.locked_until <= now) {
			if (keep != i)
				memcpy(s->ident[keep], s->ident[i], KH_NAME_MAX);
			keep++;
		} else if (r != KH_OK && r != KH_ERR_NOT_FOUND) {
			return r;
		}
	}
	for (size_t i = keep; i < s->nident; i++)
		kh_wipe(s->ident[i], KH_NAME_MAX);
	s->nident = keep;
	if (keep == 0) {
		memset(&s->role, 0, sizeof(s->role));
		s->active = false;
		s->role_gen = gen;
		return KH_ERR_NOT_FOUND;
	}
	s->role = fresh;
	s->role_gen = gen;
	s->active = s->nident >= (size_t)s->role.logins_required;
	return KH_OK;
}

static const char *missing_perm(uint64_t need)
{
	for (int i = 0; i < KH_P_COUNT; i++)
		if (need & KH_PERM(i))
			return kh_perm_table[i].id;
	return "?";
}

int kh_dispatch(struct kh_hsm *hsm, struct kh_session *s, const struct kh_frame *req,
		struct kh_buf *out)
{
	const struct kh_cmd *cmd = kh_cmd_find(req->cmd);
	struct kh_op op = {0};
	struct kh_ctx c = {.hsm = hsm, .s = s, .cmd = cmd, .role = NULL, .op = NULL};
	size_t mark = kh_buf_len(out);
	int r;

	atomic_fetch_add(&hsm->n_requests, 1);
	s->detail[0] = '\0';
	if (cmd == NULL) {
		r = KH_ERR_UNKNOWN_COMMAND;
		goto fail;
	}
	if (!(cmd->flags & (s->port == KH_PORT_PROD ? KH_CF_PROD : KH_CF_ADMIN))) {
		r = KH_ERR_COMMAND_NOT_ALLOWED;
		snprintf(s->detail, sizeof(s->detail), "not available on the %s port",
			 s->port == KH_PORT_PROD ? "Excrypt" : "Admin");
		goto fail;
	}
	if ((cmd->flags & KH_CF_SESSION) && s->nident > 0) {
		/* a session command starts from a current session too: a LOGN must
		 * not carry a stale login forward by recording the new generation */
		r = session_role(hsm, s);
		if (r != KH_OK && r != KH_ERR_NOT_FOUND)
			goto fail;
	}
	if (!(cmd->flags & KH_CF_SESSION)) {
		if (s->nident > 0 && (r = session_role(hsm, s)) != KH_OK) {
			snprintf(s->detail, sizeof(s->detail),
				 "the logged-in identities or their role changed: log in again");
			r = KH_ERR_NOT_LOGGED_IN;
			goto fail;
		}
		if (s->active) {
			c.role = &s->role;
		} else if (s->port == KH_PORT_PROD) {
			if ((r = tp_role(hsm, s, &c.role)) != KH_OK)
				goto fail;
		} else if (!(cmd->flags & KH_CF_PREADMIN)) {
			r = KH_ERR_NOT_LOGGED_IN;
			goto fail;
		}
		if (c.role) {
			if ((cmd->flags & KH_CF_EXCRYPT) &&
			    !kh_role_has_cmd(c.role, (int)(cmd - kh_cmd_table))) {
				r = KH_ERR_COMMAND_NOT_ALLOWED;
				snprintf(s->detail, sizeof(s->detail), "%s not enabled for role %s",
					 cmd->name, c.role->name);
				goto fail;
			}
			if (cmd->perms & ~c.role->perms) {
				r = KH_ERR_PERMISSION_DENIED;
				snprintf(s->detail, sizeof(s->detail), "needs %s",
					 missing_perm(cmd->perms & ~c.role->perms));
				goto fail;
			}
			if (cmd->flags & KH_CF_SLOT) {
				uint64_t slot;
				r = kh_frame_u64(req, "SL", 0, KH_SLOT_MAX, &slot);
				if (r != KH_OK) {
					snprintf(s->detail, sizeof(s->detail), "SL");
					goto fail;
				}
				if (!kh_role_has_slot(c.role, (uint32_t)slot)) {
					r = KH_ERR_SLOT_OUT_OF_RANGE;
					goto fail;
				}
			}
		}
	}
	/* access is decided first, so a role's command list reads the same for
	 * catalogue entries that have no handler yet */
	if (cmd->act == NULL) {
		r = KH_ERR_UNKNOWN_COMMAND;
		snprintf(s->detail, sizeof(s->detail), "%s is not implemented by this firmware",
			 cmd->name);
		goto fail;
	}
	if ((cmd->flags & KH_CF_CRYPTO) && atomic_load(&hsm->error_state)) {
		r = KH_ERR_STATE;
		snprintf(s->detail, sizeof(s->detail), "self-test failed: cryptography is refused");
		goto fail;
	}
	/* the request's keys, usage, extra permissions, FIPS limits and
	 * destination slots, checked here so that handlers never do */
	if (cmd->plan != NULL) {
		if (c.role == NULL) {
			r = KH_ERR_NOT_LOGGED_IN;
			goto fail;
		}
		c.op = &op;
		if ((r = cmd->plan(&c, req, &op)) != KH_OK || (r = kh_op_resolve(&c, req, &op)) != KH_OK)
			goto fail;
	}
	if ((r = kh_msg_begin(out, cmd->name)) != KH_OK)
		goto fail;
	/* (a failed login that sets a lock bumps role_gen in identity.c, so
	 * sessions where that identity is logged in re-check it) */
	if ((r = cmd->act(&c, req, out)) != KH_OK)
		goto fail;
	if ((r = kh_msg_end(out)) != KH_OK)
		goto fail;
	kh_op_release(&op);
	/* a parse attempt may leave OpenSSL errors queued on success too; a
	 * stale entry would make the connection's next SSL call look failed */
	ERR_clear_error();
	return KH_OK;
fail:
	kh_op_release(&op);
	ERR_clear_error();
	atomic_fetch_add(&hsm->n_errors, 1);
	kh_buf_truncate(out, mark);
	if (kh_msg_error(out, req->cmd, r, s->detail) != KH_OK) {
		/* the output buffer is full: answer with the bare minimum */
		kh_buf_truncate(out, mark);
		KH_IGNORE(kh_msg_error(out, "", KH_ERR_TOO_LARGE, NULL));
	}
	return r;
}

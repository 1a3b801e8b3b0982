/*
 * The command table and the one dispatcher. Every request passes through
 * kh_dispatch, which checks (in this order) that the command exists, that it
 * may run on this port, that the session may run it (login state, the
 * role's allowed commands), that the role holds the permissions, and that
 * any slot named is in the role's ranges; only then does a handler run.
 */
#ifndef KH_DISPATCH_H
#define KH_DISPATCH_H

#include "hsm/hsm.h"

/* Command flags. */
#define KH_CF_PROD 0x01      /* may run on the Excrypt (production) port */
#define KH_CF_ADMIN 0x02     /* may run on the Admin port and the console */
#define KH_CF_SESSION 0x04   /* session command: runs before login, no role checks */
#define KH_CF_EXCRYPT 0x08   /* an Excrypt command: subject to the role's allowed-command list */
#define KH_CF_SLOT 0x10      /* carries a slot in tag SL that must be in the role's ranges */
#define KH_CF_PREADMIN 0x20  /* may run on the Admin port before login (ECHO) */
#define KH_CF_CRYPTO 0x40    /* uses keys or cryptography: refused while self-tests have failed */

struct kh_cmd {
	const char *name;     /* four characters */
	kh_act_fn act;        /* NULL: in the catalogue, not implemented yet */
	unsigned flags;
	uint64_t perms;       /* KH_PERM() bits all required */
	const char *summary;  /* one line, as in docs/PROTOCOL.md */
	/* reads the request's mode and names the keys, usage, permissions and
	 * destination slots it needs (keyobj.h); the dispatcher checks and
	 * resolves them before act runs. NULL: the command uses no keys. */
	int (*plan)(struct kh_ctx *c, const struct kh_frame *req, struct kh_op *op);
};

/* The table, in index order; kh_cmd_index() is stable for a given build and
 * is what role command bitmaps use (roles store names in the database). */
extern const struct kh_cmd kh_cmd_table[];
extern const size_t kh_cmd_count;
const struct kh_cmd *kh_cmd_find(const char *name);
int kh_cmd_index(const char *name); /* -1 if unknown */

/* Run one parsed request; always appends exactly one response frame to out
 * (the command's or ERRO). Returns the kh_err of the command. */
int kh_dispatch(struct kh_hsm *hsm, struct kh_session *s, const struct kh_frame *req,
		struct kh_buf *out);

/* Is slot within the role's ranges? */
bool kh_role_has_slot(const struct kh_role *r, uint32_t slot);
bool kh_role_has_cmd(const struct kh_role *r, int index);
void kh_role_set_cmd(struct kh_role *r, int index, bool on);

#endif

/* TEMPORARY placeholders so the tree links while roles/identities/audit are
 * written. Owned by the roles helper: delete this file when done. */
#include "hsm/cmds.h"
#include "hsm/roles.h"
#include "hsm/audit.h"
#include <string.h>

const struct kh_perm_desc kh_perm_table[KH_P_COUNT];
int kh_role_load(struct kh_hsm *hsm, const char *name, struct kh_role *out) { return KH_ERR_NOT_FOUND; }
int kh_role_load_by_id(struct kh_hsm *hsm, int64_t id, struct kh_role *out) { return KH_ERR_NOT_FOUND; }
int kh_roles_bootstrap(struct kh_hsm *hsm) { return KH_OK; }
int kh_audit_append(struct kh_hsm *hsm, const char *a, const char *e, const char *d) { return KH_OK; }
int kh_audit_verify(struct kh_hsm *hsm, struct kh_audit_result *res) { return KH_ERR_UNSUPPORTED; }
#define U(fn) KH_ACT(fn) { return KH_ERR_UNSUPPORTED; }
U(kh_cmd_logn) U(kh_cmd_logo) U(kh_cmd_chpw) U(kh_cmd_rlad) U(kh_cmd_rlmd) U(kh_cmd_rlls)
U(kh_cmd_rlsh) U(kh_cmd_rldl) U(kh_cmd_idad) U(kh_cmd_idmd) U(kh_cmd_iddl) U(kh_cmd_idls)
U(kh_cmd_auds) U(kh_cmd_audv)

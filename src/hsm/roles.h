/*
 * Roles (application partitions): the permission vocabulary, parsing and
 * formatting of role fields, storage, and the built-in roles and identities
 * created on first start.
 */
#ifndef KH_ROLES_H
#define KH_ROLES_H

#include "hsm/hsm.h"

struct kh_perm_desc {
	int bit;           /* enum kh_perm */
	const char *id;    /* "major_keys.load" */
	const char *name;  /* "Major Keys:Load" (the reference's words) */
};
extern const struct kh_perm_desc kh_perm_table[KH_P_COUNT];

/* Every permission of this firmware (the built-in Administrator holds them all). */
#define KH_PERMS_ALL ((UINT64_C(1) << KH_P_COUNT) - 1)

/* Text sizes that always hold a formatted field (NUL included). */
#define KH_PERMS_TEXT_MAX 1024
#define KH_RANGES_TEXT_MAX 512
#define KH_CMDS_TEXT_MAX (KH_MAX_COMMANDS * 5 + 1)
#define KH_ROLE_FIELD_MAX 2048 /* largest accepted request value for a role field */

/* Load a role by name (case-insensitive; "Anonymous" names Transaction
 * Processing). KH_ERR_NOT_FOUND if absent. */
KH_MUST_CHECK int kh_role_load(struct kh_hsm *hsm, const char *name, struct kh_role *out);
KH_MUST_CHECK int kh_role_load_by_id(struct kh_hsm *hsm, int64_t id, struct kh_role *out);
/* Create the built-in roles and identities if the role table is empty. */
KH_MUST_CHECK int kh_roles_bootstrap(struct kh_hsm *hsm);

/* Field codecs shared by the daemon and the CLI's display. Parsers take
 * (s, n) without needing a NUL, answer KH_ERR_BAD_FIELD on any invalid
 * element and leave *out untouched on failure. */
KH_MUST_CHECK int kh_perms_parse(const char *s, size_t n, uint64_t *out);
void kh_perms_format(uint64_t perms, char *out, size_t outsz);
KH_MUST_CHECK int kh_ranges_parse(const char *s, size_t n, struct kh_range *out, size_t *count);
void kh_ranges_format(const struct kh_range *r, size_t count, char *out, size_t outsz);
/* Excrypt command names (KH_CF_EXCRYPT entries of kh_cmd_table) <-> bitmap. */
KH_MUST_CHECK int kh_cmds_parse(const char *s, size_t n, uint8_t bitmap[KH_MAX_COMMANDS / 8]);
void kh_cmds_format(const uint8_t bitmap[KH_MAX_COMMANDS / 8], char *out, size_t outsz);
/* "prod,admin" <-> enum kh_port bits; "ethernet,usb" <-> enum kh_source bits. */
KH_MUST_CHECK int kh_ports_parse(const char *s, size_t n, unsigned *out);
void kh_ports_format(unsigned ports, char *out, size_t outsz);
KH_MUST_CHECK int kh_sources_parse(const char *s, size_t n, unsigned *out);
void kh_sources_format(unsigned sources, char *out, size_t outsz);
/* Use Dual Factor: only "never" is supported (KH_ERR_UNSUPPORTED otherwise). */
KH_MUST_CHECK int kh_df_parse(const char *s, size_t n, bool *out);
/* Permission by id or reference name (case-insensitive), or NULL. */
const struct kh_perm_desc *kh_perm_find(const char *s, size_t n);

/* Role name syntax: 1-63 of A-Za-z0-9 space _ . - */
bool kh_role_name_valid(const char *name);
/* Is name the Transaction Processing role or its alias? */
bool kh_role_name_is_tp(const char *name);
/* May an identity of this role log in on this port and source? (The
 * console counts as the Admin port.) */
bool kh_role_allows_conn(const struct kh_role *r, enum kh_port port, enum kh_source source);

/* The built-in Administrator / Transaction Processing role? */
bool kh_role_is_builtin_admin(const struct kh_role *r);
bool kh_role_is_builtin_tp(const struct kh_role *r);
/* May a caller of role caller manage (modify, delete, give or take
 * identities of) the role target? Only if target's permissions are a subset
 * of the caller's, or the caller holds role.assign_all. A NULL caller may
 * manage nothing. */
bool kh_role_may_manage(const struct kh_role *caller, const struct kh_role *target);

/* Storage. Writers must run inside the caller's kh_db_begin/kh_db_commit
 * (together with the audit entry); they do not bump hsm->role_gen, the
 * caller does that after the commit. */
KH_MUST_CHECK int kh_role_insert(struct kh_hsm *hsm, const struct kh_role *r, int64_t *id);
KH_MUST_CHECK int kh_role_update(struct kh_hsm *hsm, const struct kh_role *r);
KH_MUST_CHECK int kh_role_delete(struct kh_hsm *hsm, int64_t id);
KH_MUST_CHECK int kh_role_identity_count(struct kh_hsm *hsm, int64_t id, int64_t *count);
/* Comma list of all role names (by id order); KH_ERR_TOO_LARGE if it does not fit. */
KH_MUST_CHECK int kh_role_list(struct kh_hsm *hsm, char *out, size_t outsz);

#endif

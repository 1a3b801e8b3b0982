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

/* Load a role by name (case-insensitive; "Anonymous" names Transaction
 * Processing). KH_ERR_NOT_FOUND if absent. */
KH_MUST_CHECK int kh_role_load(struct kh_hsm *hsm, const char *name, struct kh_role *out);
KH_MUST_CHECK int kh_role_load_by_id(struct kh_hsm *hsm, int64_t id, struct kh_role *out);
/* Create the built-in roles and identities if the role table is empty. */
KH_MUST_CHECK int kh_roles_bootstrap(struct kh_hsm *hsm);

/* Field codecs shared by the daemon and the CLI's display. */
KH_MUST_CHECK int kh_perms_parse(const char *s, size_t n, uint64_t *out);
void kh_perms_format(uint64_t perms, char *out, size_t outsz);
KH_MUST_CHECK int kh_ranges_parse(const char *s, size_t n, struct kh_range *out, size_t *count);
void kh_ranges_format(const struct kh_range *r, size_t count, char *out, size_t outsz);

#endif

/*
 * The hash-chained audit log. Each entry's MAC covers the previous entry's
 * MAC and the entry's own fields under a key derived from the device key, so
 * an edited, deleted, reordered or truncated log is detected by kh_audit_verify.
 */
#ifndef KH_AUDIT_H
#define KH_AUDIT_H

#include "hsm/hsm.h"

/* Append one entry. Joins the caller's open transaction if there is one
 * (call it between kh_db_begin and kh_db_commit so that the change and its
 * record land together). event is a short word ("login", "role.add"),
 * detail a short text without secrets. */
KH_MUST_CHECK int kh_audit_append(struct kh_hsm *hsm, const char *actor, const char *event,
				  const char *detail);

struct kh_audit_result {
	bool ok;
	uint64_t checked;
	uint64_t bad_seq;    /* first bad sequence number when !ok */
	const char *reason;  /* "edited", "missing", "reordered", "truncated" */
};
KH_MUST_CHECK int kh_audit_verify(struct kh_hsm *hsm, struct kh_audit_result *res);

#endif

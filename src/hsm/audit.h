/*
 * The hash-chained audit log. Each entry's MAC covers the previous entry's
 * MAC and the entry's own fields under a key derived from the device key, so
 * an edited, deleted, reordered or truncated log is detected by kh_audit_verify.
 */
#ifndef KH_AUDIT_H
#define KH_AUDIT_H

#include "hsm/hsm.h"

#define KH_AUDIT_ACTOR_MAX 127   /* longer texts are cut (bytes, NUL excluded) */
#define KH_AUDIT_EVENT_MAX 63
#define KH_AUDIT_DETAIL_MAX 511

/* Append one entry. Joins the caller's open transaction if there is one
 * (call it between kh_db_begin and kh_db_commit so that the change and its
 * record land together). event is a short word ("login", "role.add"),
 * detail a short text without secrets. Never takes hsm->mu (the entry's time
 * is the system clock plus the stored clock offset), so it is safe to call
 * while holding the database lock. */
KH_MUST_CHECK int kh_audit_append(struct kh_hsm *hsm, const char *actor, const char *event,
				  const char *detail);

struct kh_audit_result {
	bool ok;
	uint64_t checked;
	uint64_t bad_seq;    /* first bad sequence number when !ok */
	const char *reason;  /* "edited", "missing", "reordered", "truncated" */
};
KH_MUST_CHECK int kh_audit_verify(struct kh_hsm *hsm, struct kh_audit_result *res);

/* Reading the log (AUDS). */
struct kh_audit_entry {
	uint64_t seq;
	int64_t ts;
	char actor[KH_AUDIT_ACTOR_MAX + 1];
	char event[KH_AUDIT_EVENT_MAX + 1];
	char detail[KH_AUDIT_DETAIL_MAX + 1];
};
typedef int (*kh_audit_visit_fn)(void *arg, const struct kh_audit_entry *e);
KH_MUST_CHECK int kh_audit_count(struct kh_hsm *hsm, uint64_t *count);
/* Visit up to max entries with seq >= first, in order; *next is the seq to
 * ask for next, or 0 when no entry follows. Stops at the first visitor error. */
KH_MUST_CHECK int kh_audit_read(struct kh_hsm *hsm, uint64_t first, size_t max,
				kh_audit_visit_fn fn, void *arg, uint64_t *next);

#endif

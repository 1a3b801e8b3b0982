/*
 * Audit commands: AUDS (show a page of the log) and AUDV (verify the chain).
 * Read-only: nothing here may write the log or change its order. Details
 * travel as hex, and actor/event texts are reduced to a safe alphabet, so a
 * tampered row cannot inject fields into the reply.
 */
#include "hsm/cmds.h"
#include "hsm/audit.h"
#include "common/kh_buf.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#define AUDS_DEFAULT 100
#define AUDS_MAX 500

static void safe_text(const char *in, char *out, size_t outsz)
{
	size_t i;
	for (i = 0; in[i] && i + 1 < outsz; i++) {
		char ch = in[i];
		bool ok = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
			  (ch >= '0' && ch <= '9') || ch == '_' || ch == '.' || ch == '-' ||
			  ch == '+';
		out[i] = ok ? ch : '?';
	}
	out[i] = '\0';
}

struct page {
	struct kh_buf *b;
	size_t n;
};

static int put_entry(void *arg, const struct kh_audit_entry *e)
{
	struct page *pg = arg;
	char actor[sizeof(e->actor)], event[sizeof(e->event)], when[32];
	struct tm tm;
	time_t t = (time_t)e->ts;
	int r;

	if (gmtime_r(&t, &tm) == NULL)
		snprintf(when, sizeof(when), "00000000000000");
	else
		strftime(when, sizeof(when), "%Y%m%d%H%M%S", &tm);
	safe_text(e->actor, actor, sizeof(actor));
	safe_text(e->event, event, sizeof(event));
	if ((r = kh_buf_putf(pg->b, "%s%llu/%s/%s/%s/", pg->n ? "," : "", (unsigned long long)e->seq,
			     when, actor, event)) != KH_OK)
		return r;
	if ((r = kh_buf_put_hex(pg->b, (const uint8_t *)e->detail, strlen(e->detail))) != KH_OK)
		return r;
	pg->n++;
	return KH_OK;
}

KH_ACT(kh_cmd_auds)
{
	uint64_t first = 1, count = AUDS_DEFAULT, total = 0, next = 0;
	struct page pg = {0};
	int r;

	if (kh_frame_has(req, "SQ") && (r = kh_frame_u64(req, "SQ", 1, INT64_MAX, &first)) != KH_OK) {
		kh_ctx_detail(c, "SQ");
		return r;
	}
	if (kh_frame_has(req, "NM") && (r = kh_frame_u64(req, "NM", 1, AUDS_MAX, &count)) != KH_OK) {
		kh_ctx_detail(c, "NM: 1 to %d", AUDS_MAX);
		return r;
	}
	if ((r = kh_audit_count(c->hsm, &total)) != KH_OK)
		return r;
	pg.b = kh_buf_new(KH_FRAME_MAX / 2);
	if (pg.b == NULL)
		return KH_ERR_NOMEM;
	if ((r = kh_audit_read(c->hsm, first, (size_t)count, put_entry, &pg, &next)) != KH_OK)
		goto out;
	if ((r = kh_msg_put_u64(resp, "AN", total)) != KH_OK ||
	    (r = kh_msg_putn(resp, "AL", (const char *)kh_buf_ptr(pg.b), kh_buf_len(pg.b))) != KH_OK)
		goto out;
	if (next != 0)
		r = kh_msg_put_u64(resp, "NX", next);
out:
	kh_buf_free(pg.b);
	return r;
}

KH_ACT(kh_cmd_audv)
{
	struct kh_audit_result res;
	int r = kh_audit_verify(c->hsm, &res);
	if (r != KH_OK)
		return r;
	if ((r = kh_msg_put(resp, "BB", res.ok ? "Y" : "N")) != KH_OK ||
	    (r = kh_msg_put_u64(resp, "AN", res.checked)) != KH_OK)
		return r;
	if (!res.ok) {
		if ((r = kh_msg_put_u64(resp, "BS", res.bad_seq)) != KH_OK ||
		    (r = kh_msg_put(resp, "ET", res.reason)) != KH_OK)
			return r;
	}
	return KH_OK;
}

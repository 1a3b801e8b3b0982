/*
 * BKUP and BKRS: the wire side of backups. The backup travels as hex of its
 * ciphertext only, whole in one frame or in pages; these handlers never see
 * key material in clear, and a paged restore changes nothing before its last
 * page has arrived and the whole backup has authenticated.
 */
#include "hsm/cmds.h"
#include "hsm/backup.h"
#include "common/kh_buf.h"
#include "common/kh_mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define XI_LEN 16 /* hex digits of an export's name */

static int parse_scope(struct kh_ctx *c, const struct kh_frame *req, unsigned *scope)
{
	char sc[8];
	int r;

	*scope = KH_BACKUP_ALL;
	if (!kh_frame_has(req, "SC"))
		return KH_OK;
	if ((r = kh_frame_str(req, "SC", sc, sizeof(sc))) == KH_OK) {
		if (strcmp(sc, "config") == 0)
			*scope = KH_BACKUP_CONFIG;
		else if (strcmp(sc, "keys") == 0)
			*scope = KH_BACKUP_KEYS;
		else if (strcmp(sc, "all") != 0)
			r = KH_ERR_BAD_FIELD;
	}
	if (r != KH_OK)
		kh_ctx_detail(c, "SC");
	return r;
}

static void bek_detail(struct kh_ctx *c)
{
	struct kh_mk_info bek;
	kh_mk_info(c->hsm, KH_MK_BEK, &bek);
	kh_ctx_detail(c, "%s", bek.loaded ? "a key's major key" : "BEK");
}

/* One page of an export: BBY KV XI BZ HS OF BD [NX]. */
static int put_page(struct kh_ctx *c, struct kh_buf *resp, const struct kh_backup_page *pg)
{
	char hs[65];
	int r;

	kh_hex_encode(pg->sha256, sizeof(pg->sha256), hs);
	if ((r = kh_msg_put(resp, "BB", "Y")) != KH_OK || (r = kh_msg_put(resp, "KV", pg->kcv)) != KH_OK ||
	    (r = kh_msg_put(resp, "XI", pg->id)) != KH_OK ||
	    (r = kh_msg_put_u64(resp, "BZ", pg->total)) != KH_OK ||
	    (r = kh_msg_put(resp, "HS", hs)) != KH_OK ||
	    (r = kh_msg_put_u64(resp, "OF", pg->off)) != KH_OK ||
	    (r = kh_msg_put_hex(resp, "BD", pg->p, pg->n)) != KH_OK)
		return r;
	if (pg->next && (r = kh_msg_put_u64(resp, "NX", pg->next)) != KH_OK)
		return r;
	kh_backup_export_served(c->hsm, c->s, pg);
	return KH_OK;
}

KH_ACT(kh_cmd_bkup)
{
	char actor[KH_MAX_LOGINS * KH_NAME_MAX], xi[XI_LEN + 1];
	struct kh_backup_counts cnt;
	struct kh_backup_page pg;
	struct kh_mk_info bek;
	unsigned scope;
	uint64_t page = 0, off = 0;
	uint8_t *data = NULL;
	size_t len = 0;
	int r;

	kh_session_actor(c->s, actor, sizeof(actor));
	if (kh_frame_has(req, "XI") || kh_frame_has(req, "OF")) {
		/* the next page of this connection's export */
		if (kh_frame_has(req, "SC") || kh_frame_has(req, "PS")) {
			kh_ctx_detail(c, "%s: only when starting an export",
			              kh_frame_has(req, "SC") ? "SC" : "PS");
			return KH_ERR_BAD_FIELD;
		}
		if ((r = kh_frame_str(req, "XI", xi, sizeof(xi))) != KH_OK) {
			kh_ctx_detail(c, "XI");
			return r;
		}
		if ((r = kh_frame_u64(req, "OF", 0, KH_BACKUP_MAX, &off)) != KH_OK) {
			kh_ctx_detail(c, "OF");
			return r;
		}
		if ((r = kh_backup_export_page(c->hsm, c->s, xi, off, actor, &pg, c->s->detail,
		                               sizeof(c->s->detail))) != KH_OK)
			return r;
		return put_page(c, resp, &pg);
	}
	if ((r = parse_scope(c, req, &scope)) != KH_OK)
		return r;
	if (kh_frame_has(req, "PS")) {
		if ((r = kh_frame_u64(req, "PS", KH_BACKUP_PAGE_MIN, KH_BACKUP_PAGE_MAX, &page)) !=
		    KH_OK) {
			kh_ctx_detail(c, "PS");
			return r;
		}
		r = kh_backup_export_start(c->hsm, c->s, scope, (size_t)page, actor, &cnt);
		if (r == KH_ERR_MAJOR_KEY_NOT_LOADED)
			bek_detail(c);
		else if (r == KH_ERR_BUSY)
			kh_ctx_detail(c, "other backup transfers hold too much memory");
		if (r != KH_OK)
			return r;
		if ((r = kh_backup_export_page(c->hsm, c->s, NULL, 0, actor, &pg, c->s->detail,
		                               sizeof(c->s->detail))) != KH_OK)
			return r;
		return put_page(c, resp, &pg);
	}
	/* the single-frame form, as before paging */
	r = kh_backup_create(c->hsm, scope, actor, &data, &len, &cnt);
	if (r == KH_ERR_MAJOR_KEY_NOT_LOADED)
		bek_detail(c);
	if (r != KH_OK)
		return r;
	if (len > KH_BACKUP_FRAME_MAX) {
		kh_ctx_detail(c, "the backup (%zu bytes) exceeds one frame: fetch it in pages (PS)",
		              len);
		r = KH_ERR_TOO_LARGE;
		goto out;
	}
	kh_mk_info(c->hsm, KH_MK_BEK, &bek);
	if ((r = kh_msg_put(resp, "BB", "Y")) == KH_OK &&
	    (r = kh_msg_put_hex(resp, "BD", data, len)) == KH_OK)
		r = kh_msg_put(resp, "KV", bek.kcv);
out:
	free(data);
	return r;
}

/* A configuration restore replaces every role and identity, so it can bring
 * back deleted administrators or old passwords: only a role that may grant
 * everything (Role:Assign All Permissions) may do it. */
static int may_restore(struct kh_ctx *c, const struct kh_backup_hdr *hdr)
{
	if ((hdr->scope & KH_BACKUP_CONFIG) && !(c->role->perms & KH_PERM(KH_P_ROLE_ASSIGN_ALL))) {
		kh_ctx_detail(c, "restoring roles and identities needs role.assign_all");
		return KH_ERR_PERMISSION_DENIED;
	}
	return KH_OK;
}

static int put_restored(struct kh_buf *resp, const struct kh_backup_counts *cnt)
{
	int r;
	if ((r = kh_msg_put(resp, "BB", "Y")) == KH_OK &&
	    (r = kh_msg_put_u64(resp, "RC", cnt->roles)) == KH_OK &&
	    (r = kh_msg_put_u64(resp, "IC", cnt->identities)) == KH_OK)
		r = kh_msg_put_u64(resp, "KC", cnt->keys);
	return r;
}

/* Pages of a restore: OF0 with BZ starts, each next page starts where the
 * last ended, the page that completes BZ restores. Any refusal drops the
 * upload: what was staged is wiped and the client starts again. */
static int bkrs_paged(struct kh_ctx *c, const struct kh_frame *req, struct kh_buf *resp,
                      const char *actor)
{
	const struct kh_field *bd = kh_frame_get(req, "BD");
	struct kh_backup_counts cnt;
	struct kh_backup_stage *st;
	struct kh_backup_hdr hdr;
	struct kh_mk_info bek;
	uint64_t off = 0, total = 0;
	uint8_t *page = NULL;
	size_t n = 0;
	int r;

	if ((r = kh_frame_u64(req, "OF", 0, KH_BACKUP_MAX, &off)) != KH_OK) {
		kh_ctx_detail(c, "OF");
		goto drop;
	}
	if (kh_frame_has(req, "BZ") &&
	    (r = kh_frame_u64(req, "BZ", 1, UINT64_MAX, &total)) != KH_OK) {
		kh_ctx_detail(c, "BZ");
		goto drop;
	}
	if (bd == NULL) {
		kh_ctx_detail(c, "BD");
		r = KH_ERR_MISSING_FIELD;
		goto drop;
	}
	if (bd->len == 0 || bd->len % 2 || bd->len / 2 > KH_BACKUP_PAGE_MAX) {
		kh_ctx_detail(c, "BD");
		r = bd->len / 2 > KH_BACKUP_PAGE_MAX ? KH_ERR_TOO_LARGE : KH_ERR_BAD_FIELD;
		goto drop;
	}
	if ((page = malloc(bd->len / 2)) == NULL) {
		r = KH_ERR_NOMEM;
		goto drop;
	}
	if ((r = kh_frame_hex(req, "BD", page, bd->len / 2, &n)) != KH_OK) {
		kh_ctx_detail(c, "BD");
		goto drop;
	}
	if (off == 0) {
		if (total == 0) {
			kh_ctx_detail(c, "BZ");
			r = KH_ERR_MISSING_FIELD;
			goto drop;
		}
		if ((r = kh_backup_upload_start(c->hsm, c->s, total, page, n, actor, &hdr,
		                                c->s->detail, sizeof(c->s->detail))) != KH_OK)
			goto drop;
		if ((r = may_restore(c, &hdr)) != KH_OK)
			goto drop;
		/* refuse a foreign backup now, not after a gigabyte of pages */
		kh_mk_info(c->hsm, KH_MK_BEK, &bek);
		if (!bek.loaded) {
			kh_ctx_detail(c, "BEK");
			r = KH_ERR_MAJOR_KEY_NOT_LOADED;
			goto drop;
		}
		if (!kh_ct_equal(bek.kcv, hdr.kcv, 6)) {
			kh_ctx_detail(c, "made under a BEK with KCV %s; the loaded BEK has KCV %s",
			              hdr.kcv, bek.kcv);
			r = KH_ERR_BACKUP_INVALID;
			goto drop;
		}
		st = kh_backup_upload(c->hsm, c->s, actor, c->s->detail, sizeof(c->s->detail));
	} else {
		if ((st = kh_backup_upload(c->hsm, c->s, actor, c->s->detail,
		                           sizeof(c->s->detail))) == NULL) {
			r = KH_ERR_STATE;
			goto out; /* nothing left to drop */
		}
		if (total != 0 && total != st->total) {
			kh_ctx_detail(c, "BZ: the upload started with %zu", st->total);
			r = KH_ERR_BAD_FIELD;
			goto drop;
		}
		if (off != st->have) {
			kh_ctx_detail(c, "OF: expected %zu; upload dropped, start again with OF0",
			              st->have);
			r = KH_ERR_BAD_FIELD;
			goto drop;
		}
		if ((r = kh_backup_stage_add(st, off, page, n)) != KH_OK) {
			kh_ctx_detail(c, "BD: goes past BZ; upload dropped, start again with OF0");
			goto drop;
		}
	}
	if (st == NULL) {
		r = KH_ERR_INTERNAL;
		goto drop;
	}
	if (!kh_backup_stage_done(st)) {
		if ((r = kh_msg_put(resp, "BB", "Y")) == KH_OK)
			r = kh_msg_put_u64(resp, "NX", st->have);
		goto out;
	}
	/* the last page: restore as a whole, in one transaction, or not at all */
	if ((r = may_restore(c, &st->hdr)) == KH_OK &&
	    (r = kh_backup_restore(c->hsm, st->data, st->total, actor, &cnt, c->s->detail,
	                           sizeof(c->s->detail))) == KH_OK)
		r = put_restored(resp, &cnt);
drop:
	kh_backup_upload_drop(c->hsm, c->s);
out:
	free(page);
	return r;
}

KH_ACT(kh_cmd_bkrs)
{
	char actor[KH_MAX_LOGINS * KH_NAME_MAX];
	const struct kh_field *bd = kh_frame_get(req, "BD");
	struct kh_backup_counts cnt;
	struct kh_backup_hdr hdr;
	uint8_t *data = NULL;
	size_t len = 0;
	int r;

	kh_session_actor(c->s, actor, sizeof(actor));
	if (kh_frame_has(req, "OF") || kh_frame_has(req, "BZ"))
		return bkrs_paged(c, req, resp, actor);
	/* the single-frame form, as before paging */
	if (bd == NULL) {
		kh_ctx_detail(c, "BD");
		return KH_ERR_MISSING_FIELD;
	}
	if (bd->len == 0 || bd->len % 2 || bd->len / 2 > KH_BACKUP_FRAME_MAX) {
		kh_ctx_detail(c, "BD");
		return bd->len / 2 > KH_BACKUP_FRAME_MAX ? KH_ERR_TOO_LARGE : KH_ERR_BAD_FIELD;
	}
	if ((data = malloc(bd->len / 2)) == NULL)
		return KH_ERR_NOMEM;
	if ((r = kh_frame_hex(req, "BD", data, bd->len / 2, &len)) != KH_OK) {
		kh_ctx_detail(c, "BD");
		goto out;
	}
	if (kh_backup_parse_header(data, len, &hdr) == KH_OK && (r = may_restore(c, &hdr)) != KH_OK)
		goto out;
	if ((r = kh_backup_restore(c->hsm, data, len, actor, &cnt, c->s->detail,
	                           sizeof(c->s->detail))) != KH_OK)
		goto out;
	r = put_restored(resp, &cnt);
out:
	free(data);
	return r;
}

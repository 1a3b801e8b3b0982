/*
 * BKUP and BKRS: the wire side of backups. The backup travels as hex of its
 * ciphertext only; these handlers never see key material in clear.
 */
#include "hsm/cmds.h"
#include "hsm/backup.h"
#include "common/kh_buf.h"

#include <stdlib.h>
#include <string.h>

KH_ACT(kh_cmd_bkup)
{
	char actor[KH_MAX_LOGINS * KH_NAME_MAX], sc[8];
	struct kh_backup_counts cnt;
	struct kh_mk_info bek;
	unsigned scope = KH_BACKUP_ALL;
	uint8_t *data = NULL;
	size_t len = 0;
	int r;

	if (kh_frame_has(req, "SC")) {
		if ((r = kh_frame_str(req, "SC", sc, sizeof(sc))) == KH_OK) {
			if (strcmp(sc, "config") == 0)
				scope = KH_BACKUP_CONFIG;
			else if (strcmp(sc, "keys") == 0)
				scope = KH_BACKUP_KEYS;
			else if (strcmp(sc, "all") != 0)
				r = KH_ERR_BAD_FIELD;
		}
		if (r != KH_OK) {
			kh_ctx_detail(c, "SC");
			return r;
		}
	}
	kh_session_actor(c->s, actor, sizeof(actor));
	r = kh_backup_create(c->hsm, scope, actor, &data, &len, &cnt);
	if (r == KH_ERR_MAJOR_KEY_NOT_LOADED) {
		kh_mk_info(c->hsm, KH_MK_BEK, &bek);
		kh_ctx_detail(c, "%s", bek.loaded ? "a key's major key" : "BEK");
	}
	if (r != KH_OK)
		return r;
	kh_mk_info(c->hsm, KH_MK_BEK, &bek);
	if ((r = kh_msg_put(resp, "BB", "Y")) == KH_OK &&
	    (r = kh_msg_put_hex(resp, "BD", data, len)) == KH_OK)
		r = kh_msg_put(resp, "KV", bek.kcv);
	free(data);
	return r;
}

KH_ACT(kh_cmd_bkrs)
{
	char actor[KH_MAX_LOGINS * KH_NAME_MAX];
	const struct kh_field *bd = kh_frame_get(req, "BD");
	struct kh_backup_counts cnt;
	uint8_t *data = NULL;
	size_t len = 0;
	int r;

	if (bd == NULL) {
		kh_ctx_detail(c, "BD");
		return KH_ERR_MISSING_FIELD;
	}
	if (bd->len == 0 || bd->len % 2 || bd->len / 2 > KH_BACKUP_MAX) {
		kh_ctx_detail(c, "BD");
		return bd->len / 2 > KH_BACKUP_MAX ? KH_ERR_TOO_LARGE : KH_ERR_BAD_FIELD;
	}
	if ((data = malloc(bd->len / 2)) == NULL)
		return KH_ERR_NOMEM;
	if ((r = kh_frame_hex(req, "BD", data, bd->len / 2, &len)) != KH_OK) {
		kh_ctx_detail(c, "BD");
		goto out;
	}
	/* A configuration restore replaces every role and identity, so it can
	 * bring back deleted administrators or old passwords: only a role that
	 * may grant everything (Role:Assign All Permissions) may do it. */
	struct kh_backup_hdr hdr;
	if (kh_backup_parse_header(data, len, &hdr) == KH_OK && (hdr.scope & KH_BACKUP_CONFIG) &&
	    !(c->role->perms & KH_PERM(KH_P_ROLE_ASSIGN_ALL))) {
		kh_ctx_detail(c, "restoring roles and identities needs role.assign_all");
		r = KH_ERR_PERMISSION_DENIED;
		goto out;
	}
	kh_session_actor(c->s, actor, sizeof(actor));
	if ((r = kh_backup_restore(c->hsm, data, len, actor, &cnt, c->s->detail,
	                           sizeof(c->s->detail))) != KH_OK)
		goto out;
	if ((r = kh_msg_put(resp, "BB", "Y")) == KH_OK &&
	    (r = kh_msg_put_u64(resp, "RC", cnt.roles)) == KH_OK &&
	    (r = kh_msg_put_u64(resp, "IC", cnt.identities)) == KH_OK)
		r = kh_msg_put_u64(resp, "KC", cnt.keys);
out:
	free(data);
	return r;
}

/*
 * Roles: the permission vocabulary, the codecs for every role field, role
 * storage and the first-start bootstrap. Parsers reject a whole field on any
 * bad element and never half-fill their output; nothing here checks who may
 * change a role (cmd_role.c and the dispatcher do).
 */
#include "hsm/roles.h"
#include "hsm/audit.h"
#include "hsm/db.h"
#include "hsm/dispatch.h"
#include "hsm/identity.h"
#include "common/kh_log.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

const struct kh_perm_desc kh_perm_table[KH_P_COUNT] = {
	{KH_P_KEYS, "keys", "Keys"},
	{KH_P_KEYS_ALL_SLOTS, "keys.all_slots", "Keys:All Slots"},
	{KH_P_KEYS_AUTHORIZED, "keys.authorized", "Keys:Authorized"},
	{KH_P_KEYS_IMPORT_PKI, "keys.import_pki", "Keys:Import PKI"},
	{KH_P_KEYS_NO_USAGE_WRAP, "keys.no_usage_wrap", "Keys:No Usage Wrap"},
	{KH_P_KEYS_PKCS1_DECRYPT, "keys.pkcs1_decrypt", "Keys:PKCS#1 v1.5 Decrypt"},
	{KH_P_MAJOR_KEYS_LOAD, "major_keys.load", "Major Keys:Load"},
	{KH_P_MAJOR_KEYS_ERASE, "major_keys.erase", "Major Keys:Erase"},
	{KH_P_ROLE_ADD, "role.add", "Role:Add"},
	{KH_P_ROLE_MODIFY, "role.modify", "Role:Modify"},
	{KH_P_ROLE_DELETE, "role.delete", "Role:Delete"},
	{KH_P_ROLE_ASSIGN_ALL, "role.assign_all", "Role:Assign All Permissions"},
	{KH_P_CMD_SETTINGS_EXCRYPT, "command_settings.excrypt", "Command Settings:Excrypt"},
	{KH_P_IDENTITY_ADD, "identity.add", "Identity:Add"},
	{KH_P_IDENTITY_MODIFY, "identity.modify", "Identity:Modify"},
	{KH_P_IDENTITY_DELETE, "identity.delete", "Identity:Delete"},
	{KH_P_SECURITY_TLS_SIGN, "security.tls_sign", "Security:TLS Sign"},
	{KH_P_TLS_UPLOAD_KEY, "tls_settings.upload_key", "TLS Settings:Upload Key"},
	{KH_P_TLS_SETTINGS, "tls_settings.ports", "TLS Settings:Ports"},
	{KH_P_MGMT_CERTIFICATES, "mgmt.certificates", "Management Commands:Certificates"},
	{KH_P_MGMT_KEYS, "mgmt.keys", "Management Commands:Keys"},
	{KH_P_BACKUP, "backup.create", "Backup:Create"},
	{KH_P_RESTORE, "backup.restore", "Backup:Restore"},
	{KH_P_AUDIT_VIEW, "audit.view", "Audit:View"},
	{KH_P_SECURITY_SETTINGS, "security.settings", "Security:Settings"},
	{KH_P_TIME_SET, "time.set", "Time:Set"},
	{KH_P_REPLICATION, "replication", "Replication"},
};

#define ALL_PERMS KH_PERMS_ALL

/* ---- tokenizing ---- */

/* Next comma-separated element of [*p, end), surrounding spaces trimmed.
 * Returns false at the end. An empty element is returned as length 0. */
static bool next_token(const char **p, const char *end, const char **tok, size_t *len)
{
	if (*p == NULL || *p > end)
		return false;
	const char *s = *p, *e = s;
	while (e < end && *e != ',')
		e++;
	*p = (e < end) ? e + 1 : NULL; /* NULL: no more elements after this one */
	while (s < e && *s == ' ')
		s++;
	while (e > s && e[-1] == ' ')
		e--;
	*tok = s;
	*len = (size_t)(e - s);
	return true;
}

/* A field is "empty" when it holds only spaces. */
static bool blank(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (s[i] != ' ')
			return false;
	return true;
}

static bool tok_eq(const char *tok, size_t n, const char *word)
{
	return strlen(word) == n && strncasecmp(tok, word, n) == 0;
}

/* ---- permissions ---- */

const struct kh_perm_desc *kh_perm_find(const char *s, size_t n)
{
	for (size_t i = 0; i < KH_P_COUNT; i++)
		if (tok_eq(s, n, kh_perm_table[i].id) || tok_eq(s, n, kh_perm_table[i].name))
			return &kh_perm_table[i];
	return NULL;
}

int kh_perms_parse(const char *s, size_t n, uint64_t *out)
{
	const char *p = s, *tok;
	size_t len;
	uint64_t v = 0;

	if (blank(s, n)) {
		*out = 0;
		return KH_OK;
	}
	while (next_token(&p, s + n, &tok, &len)) {
		const struct kh_perm_desc *d = kh_perm_find(tok, len);
		if (d == NULL)
			return KH_ERR_BAD_FIELD;
		v |= KH_PERM(d->bit);
	}
	*out = v;
	return KH_OK;
}

/* Append "sep word" to out without overrunning it. */
static void append(char *out, size_t outsz, size_t *pos, const char *word)
{
	int w = snprintf(out + *pos, outsz - *pos, "%s%s", *pos ? "," : "", word);
	if (w < 0 || (size_t)w >= outsz - *pos)
		return; /* does not fit: stop at the last whole element */
	*pos += (size_t)w;
}

void kh_perms_format(uint64_t perms, char *out, size_t outsz)
{
	size_t pos = 0;
	if (outsz == 0)
		return;
	out[0] = '\0';
	for (size_t i = 0; i < KH_P_COUNT; i++)
		if (perms & KH_PERM(kh_perm_table[i].bit))
			append(out, outsz, &pos, kh_perm_table[i].id);
}

/* ---- ranges ---- */

static bool parse_u32(const char *s, size_t n, uint32_t max, uint32_t *v)
{
	uint64_t x = 0;
	if (n == 0 || n > 10)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		x = x * 10 + (uint64_t)(s[i] - '0');
	}
	if (x > max)
		return false;
	*v = (uint32_t)x;
	return true;
}

int kh_ranges_parse(const char *s, size_t n, struct kh_range *out, size_t *count)
{
	struct kh_range tmp[KH_MAX_RANGES];
	const char *p = s, *tok;
	size_t len, k = 0;

	if (blank(s, n)) {
		*count = 0;
		return KH_OK;
	}
	while (next_token(&p, s + n, &tok, &len)) {
		size_t dash = 0;
		char kind;
		if (k == KH_MAX_RANGES || len < 5 || tok[1] != ':')
			return KH_ERR_BAD_FIELD;
		kind = tok[0];
		if (kind >= 'a' && kind <= 'z')
			kind = (char)(kind - 'a' + 'A');
		if (kind != 'S' && kind != 'A' && kind != 'M')
			return KH_ERR_BAD_FIELD;
		for (size_t i = 2; i < len; i++)
			if (tok[i] == '-') {
				dash = i;
				break;
			}
		if (dash == 0)
			return KH_ERR_BAD_FIELD;
		if (!parse_u32(tok + 2, dash - 2, KH_SLOT_MAX, &tmp[k].lo) ||
		    !parse_u32(tok + dash + 1, len - dash - 1, KH_SLOT_MAX, &tmp[k].hi) ||
		    tmp[k].lo > tmp[k].hi)
			return KH_ERR_BAD_FIELD;
		tmp[k].kind = kind;
		/* a slot holds one key: no two ranges of a role may share a slot */
		for (size_t j = 0; j < k; j++)
			if (tmp[k].lo <= tmp[j].hi && tmp[j].lo <= tmp[k].hi)
				return KH_ERR_BAD_FIELD;
		k++;
	}
	memcpy(out, tmp, k * sizeof(tmp[0]));
	*count = k;
	return KH_OK;
}

void kh_ranges_format(const struct kh_range *r, size_t count, char *out, size_t outsz)
{
	size_t pos = 0;
	char one[32];
	if (outsz == 0)
		return;
	out[0] = '\0';
	for (size_t i = 0; i < count; i++) {
		snprintf(one, sizeof(one), "%c:%u-%u", r[i].kind, r[i].lo, r[i].hi);
		append(out, outsz, &pos, one);
	}
}

/* ---- commands ---- */

int kh_cmds_parse(const char *s, size_t n, uint8_t bitmap[KH_MAX_COMMANDS / 8])
{
	struct kh_role tmp;
	const char *p = s, *tok;
	size_t len;

	memset(tmp.cmds, 0, sizeof(tmp.cmds));
	if (!blank(s, n)) {
		while (next_token(&p, s + n, &tok, &len)) {
			char name[5];
			if (len != 4)
				return KH_ERR_BAD_FIELD;
			for (size_t i = 0; i < 4; i++)
				name[i] = (tok[i] >= 'a' && tok[i] <= 'z') ? (char)(tok[i] - 'a' + 'A')
									  : tok[i];
			name[4] = '\0';
			int idx = kh_cmd_index(name);
			if (idx < 0 || !(kh_cmd_table[idx].flags & KH_CF_EXCRYPT))
				return KH_ERR_BAD_FIELD;
			kh_role_set_cmd(&tmp, idx, true);
		}
	}
	memcpy(bitmap, tmp.cmds, sizeof(tmp.cmds));
	return KH_OK;
}

void kh_cmds_format(const uint8_t bitmap[KH_MAX_COMMANDS / 8], char *out, size_t outsz)
{
	struct kh_role tmp;
	size_t pos = 0;
	if (outsz == 0)
		return;
	out[0] = '\0';
	memcpy(tmp.cmds, bitmap, sizeof(tmp.cmds));
	for (size_t i = 0; i < kh_cmd_count; i++)
		if (kh_role_has_cmd(&tmp, (int)i))
			append(out, outsz, &pos, kh_cmd_table[i].name);
}

/* ---- ports, sources, dual factor ---- */

struct word_bit {
	const char *word;
	unsigned bit;
};
static const struct word_bit port_words[] = {{"prod", KH_PORT_PROD}, {"admin", KH_PORT_ADMIN}};
static const struct word_bit source_words[] = {{"ethernet", KH_SRC_ETHERNET}, {"usb", KH_SRC_USB}};

static int words_parse(const struct word_bit *w, size_t nw, const char *s, size_t n, unsigned *out)
{
	const char *p = s, *tok;
	size_t len;
	unsigned v = 0;

	if (blank(s, n)) {
		*out = 0;
		return KH_OK;
	}
	while (next_token(&p, s + n, &tok, &len)) {
		size_t i;
		for (i = 0; i < nw; i++)
			if (tok_eq(tok, len, w[i].word))
				break;
		if (i == nw)
			return KH_ERR_BAD_FIELD;
		v |= w[i].bit;
	}
	*out = v;
	return KH_OK;
}

static void words_format(const struct word_bit *w, size_t nw, unsigned v, char *out, size_t outsz)
{
	size_t pos = 0;
	if (outsz == 0)
		return;
	out[0] = '\0';
	for (size_t i = 0; i < nw; i++)
		if (v & w[i].bit)
			append(out, outsz, &pos, w[i].word);
}

int kh_ports_parse(const char *s, size_t n, unsigned *out)
{
	return words_parse(port_words, 2, s, n, out);
}

void kh_ports_format(unsigned ports, char *out, size_t outsz)
{
	words_format(port_words, 2, ports, out, outsz);
}

int kh_sources_parse(const char *s, size_t n, unsigned *out)
{
	return words_parse(source_words, 2, s, n, out);
}

void kh_sources_format(unsigned sources, char *out, size_t outsz)
{
	words_format(source_words, 2, sources, out, outsz);
}

int kh_df_parse(const char *s, size_t n, bool *out)
{
	if (!tok_eq(s, n, "never"))
		return KH_ERR_UNSUPPORTED;
	*out = false;
	return KH_OK;
}

/* ---- names and connection rules ---- */

bool kh_role_name_valid(const char *name)
{
	size_t n = strlen(name);
	if (n == 0 || n >= KH_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char ch = name[i];
		if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
		      ch == ' ' || ch == '_' || ch == '.' || ch == '-'))
			return false;
	}
	return true;
}

bool kh_role_name_is_tp(const char *name)
{
	return strcasecmp(name, KH_ROLE_TP) == 0 || strcasecmp(name, KH_ROLE_TP_ALIAS) == 0;
}

bool kh_role_allows_conn(const struct kh_role *r, enum kh_port port, enum kh_source source)
{
	/* the console socket is an Admin-port connection with source USB */
	unsigned need = port == KH_PORT_PROD ? KH_PORT_PROD : KH_PORT_ADMIN;
	return (r->ports & need) && (r->sources & (unsigned)source);
}

bool kh_role_is_builtin_admin(const struct kh_role *r)
{
	return r->builtin && strcasecmp(r->name, KH_ROLE_ADMIN) == 0;
}

bool kh_role_is_builtin_tp(const struct kh_role *r)
{
	return r->builtin && kh_role_name_is_tp(r->name);
}

/* Is every slot of r inside the caller's ranges? */
static bool ranges_within(const struct kh_role *r, const struct kh_role *caller)
{
	for (size_t i = 0; i < r->nranges; i++) {
		uint64_t cur = r->ranges[i].lo;
		while (cur <= r->ranges[i].hi) {
			size_t j;
			for (j = 0; j < caller->nranges; j++)
				if (cur >= caller->ranges[j].lo && cur <= caller->ranges[j].hi)
					break;
			if (j == caller->nranges)
				return false;
			cur = (uint64_t)caller->ranges[j].hi + 1;
		}
	}
	return true;
}

bool kh_role_may_manage(const struct kh_role *caller, const struct kh_role *target)
{
	if (caller == NULL)
		return false;
	if (caller->perms & KH_PERM(KH_P_ROLE_ASSIGN_ALL))
		return true;
	/* nothing the caller could not do itself: permissions, slots, commands */
	if (target->perms & ~caller->perms)
		return false;
	if (!ranges_within(target, caller))
		return false;
	for (size_t i = 0; i < sizeof(target->cmds); i++)
		if (target->cmds[i] & ~caller->cmds[i])
			return false;
	return true;
}

/* ---- storage ---- */

#define ROLE_COLS "id,name,perms,ranges,commands,logins_required,ports,sources,dual_factor,builtin"

static const char *col_text(sqlite3_stmt *st, int i)
{
	const unsigned char *t = sqlite3_column_text(st, i);
	return t ? (const char *)t : "";
}

/* Rebuild a role from its row. Unknown permission ids and command names
 * (left by a newer or older build) are dropped, which only narrows the role. */
static int role_from_row(sqlite3_stmt *st, struct kh_role *out)
{
	struct kh_role r;
	const char *p, *tok, *txt;
	size_t len;

	memset(&r, 0, sizeof(r));
	r.id = sqlite3_column_int64(st, 0);
	snprintf(r.name, sizeof(r.name), "%s", col_text(st, 1));
	txt = col_text(st, 2);
	p = txt;
	if (!blank(txt, strlen(txt)))
		while (next_token(&p, txt + strlen(txt), &tok, &len)) {
			const struct kh_perm_desc *d = kh_perm_find(tok, len);
			if (d)
				r.perms |= KH_PERM(d->bit);
			else
				log_warnx("role %s: unknown permission ignored", r.name);
		}
	txt = col_text(st, 3);
	if (kh_ranges_parse(txt, strlen(txt), r.ranges, &r.nranges) != KH_OK) {
		log_warnx("role %s: stored key ranges are invalid", r.name);
		return KH_ERR_STORAGE;
	}
	txt = col_text(st, 4);
	p = txt;
	if (!blank(txt, strlen(txt)))
		while (next_token(&p, txt + strlen(txt), &tok, &len)) {
			char name[5];
			int idx = -1;
			if (len == 4) {
				memcpy(name, tok, 4);
				name[4] = '\0';
				idx = kh_cmd_index(name);
			}
			if (idx >= 0 && (kh_cmd_table[idx].flags & KH_CF_EXCRYPT))
				kh_role_set_cmd(&r, idx, true);
			else
				log_warnx("role %s: unknown command ignored", r.name);
		}
	r.logins_required = sqlite3_column_int(st, 5);
	r.ports = (unsigned)sqlite3_column_int(st, 6) & (KH_PORT_PROD | KH_PORT_ADMIN);
	r.sources = (unsigned)sqlite3_column_int(st, 7) & (KH_SRC_ETHERNET | KH_SRC_USB);
	r.dual_factor = sqlite3_column_int(st, 8) != 0;
	r.builtin = sqlite3_column_int(st, 9) != 0;
	if (r.logins_required < 0 || r.logins_required > 3)
		return KH_ERR_STORAGE;
	*out = r;
	return KH_OK;
}

static int load_where(struct kh_hsm *hsm, const char *sql, const char *name, int64_t id,
		      struct kh_role *out)
{
	sqlite3_stmt *st = NULL;
	int r, rc;

	kh_db_lock(hsm->db);
	if ((r = kh_db_prepare(hsm->db, sql, &st)) != KH_OK)
		goto out;
	if (name)
		sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
	else
		sqlite3_bind_int64(st, 1, id);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		r = role_from_row(st, out);
	else if (rc == SQLITE_DONE)
		r = KH_ERR_NOT_FOUND;
	else
		r = kh_db_err(hsm->db, rc);
out:
	sqlite3_finalize(st);
	kh_db_unlock(hsm->db);
	return r;
}

int kh_role_load(struct kh_hsm *hsm, const char *name, struct kh_role *out)
{
	if (strcasecmp(name, KH_ROLE_TP_ALIAS) == 0)
		name = KH_ROLE_TP;
	return load_where(hsm, "SELECT " ROLE_COLS " FROM roles WHERE name=?", name, 0, out);
}

int kh_role_load_by_id(struct kh_hsm *hsm, int64_t id, struct kh_role *out)
{
	return load_where(hsm, "SELECT " ROLE_COLS " FROM roles WHERE id=?", NULL, id, out);
}

/* Bind the stored form of r to parameters 1..9 (name .. builtin). */
static void bind_role(sqlite3_stmt *st, const struct kh_role *r)
{
	char perms[KH_PERMS_TEXT_MAX], ranges[KH_RANGES_TEXT_MAX], cmds[KH_CMDS_TEXT_MAX];
	kh_perms_format(r->perms, perms, sizeof(perms));
	kh_ranges_format(r->ranges, r->nranges, ranges, sizeof(ranges));
	kh_cmds_format(r->cmds, cmds, sizeof(cmds));
	sqlite3_bind_text(st, 1, r->name, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 2, perms, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 3, ranges, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 4, cmds, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int(st, 5, r->logins_required);
	sqlite3_bind_int(st, 6, (int)r->ports);
	sqlite3_bind_int(st, 7, (int)r->sources);
	sqlite3_bind_int(st, 8, r->dual_factor ? 1 : 0);
	sqlite3_bind_int(st, 9, r->builtin ? 1 : 0);
}

int kh_role_insert(struct kh_hsm *hsm, const struct kh_role *role, int64_t *id)
{
	sqlite3_stmt *st = NULL;
	int r;
	kh_db_lock(hsm->db);
	if ((r = kh_db_prepare(hsm->db,
	                       "INSERT INTO roles(name,perms,ranges,commands,logins_required,ports,"
	                       "sources,dual_factor,builtin) VALUES(?,?,?,?,?,?,?,?,?)",
	                       &st)) != KH_OK)
		goto out;
	bind_role(st, role);
	r = kh_db_err(hsm->db, sqlite3_step(st));
	if (r == KH_OK && id)
		*id = sqlite3_last_insert_rowid(kh_db_sqlite(hsm->db));
out:
	sqlite3_finalize(st);
	kh_db_unlock(hsm->db);
	return r;
}

int kh_role_update(struct kh_hsm *hsm, const struct kh_role *role)
{
	sqlite3_stmt *st = NULL;
	int r;
	kh_db_lock(hsm->db);
	if ((r = kh_db_prepare(
	         hsm->db,
	         "UPDATE roles SET name=?,perms=?,ranges=?,commands=?,logins_required=?,"
	         "ports=?,sources=?,dual_factor=?,builtin=? WHERE id=?",
	         &st)) != KH_OK)
		goto out;
	bind_role(st, role);
	sqlite3_bind_int64(st, 10, role->id);
	r = kh_db_err(hsm->db, sqlite3_step(st));
	if (r == KH_OK && sqlite3_changes(kh_db_sqlite(hsm->db)) != 1)
		r = KH_ERR_NOT_FOUND;
out:
	sqlite3_finalize(st);
	kh_db_unlock(hsm->db);
	return r;
}

int kh_role_delete(struct kh_hsm *hsm, int64_t id)
{
	sqlite3_stmt *st = NULL;
	int r;
	kh_db_lock(hsm->db);
	if ((r = kh_db_prepare(hsm->db, "DELETE FROM roles WHERE id=?", &st)) != KH_OK)
		goto out;
	sqlite3_bind_int64(st, 1, id);
	r = kh_db_err(hsm->db, sqlite3_step(st));
	if (r == KH_OK && sqlite3_changes(kh_db_sqlite(hsm->db)) != 1)
		r = KH_ERR_NOT_FOUND;
out:
	sqlite3_finalize(st);
	kh_db_unlock(hsm->db);
	return r;
}

int kh_role_identity_count(struct kh_hsm *hsm, int64_t id, int64_t *count)
{
	return kh_db_int(hsm->db, "SELECT COUNT(*) FROM identities WHERE role_id=?", &id, 1, count);
}

static int role_item(sqlite3_stmt *st, void *arg, const char *sep, char *out, size_t room)
{
	(void)arg;
	return snprintf(out, room, "%s%s", sep, col_text(st, 0));
}

int kh_role_list(struct kh_hsm *hsm, char *out, size_t outsz)
{
	return kh_db_list(hsm->db, "SELECT name FROM roles ORDER BY id", role_item, NULL, out,
	                  outsz);
}

/* ---- bootstrap ---- */

static int role_count(struct kh_hsm *hsm, int64_t *n)
{
	return kh_db_int(hsm->db, "SELECT COUNT(*) FROM roles", NULL, 0, n);
}

static void builtin_roles(struct kh_role *admin, struct kh_role *tp)
{
	static const char *const admin_cmds[] = {"ECHO", "PRMD", "RAND", "HASH", "STAT",
						 "TIME", "GPKM", "GPKS", "GPKR"};
	memset(admin, 0, sizeof(*admin));
	snprintf(admin->name, sizeof(admin->name), "%s", KH_ROLE_ADMIN);
	admin->perms = ALL_PERMS;
	admin->ranges[0] = (struct kh_range){.lo = 0, .hi = KH_SLOT_MAX, .kind = 'M'};
	admin->nranges = 1;
	for (size_t i = 0; i < sizeof(admin_cmds) / sizeof(admin_cmds[0]); i++)
		kh_role_set_cmd(admin, kh_cmd_index(admin_cmds[i]), true);
	admin->logins_required = 2;
	admin->ports = KH_PORT_ADMIN;
	admin->sources = KH_SRC_ETHERNET | KH_SRC_USB;
	admin->builtin = true;

	memset(tp, 0, sizeof(*tp));
	snprintf(tp->name, sizeof(tp->name), "%s", KH_ROLE_TP);
	tp->perms = KH_PERM(KH_P_KEYS) | KH_PERM(KH_P_KEYS_ALL_SLOTS);
	tp->ranges[0] = (struct kh_range){.lo = 0, .hi = KH_SLOT_MAX, .kind = 'M'};
	tp->nranges = 1;
	for (size_t i = 0; i < kh_cmd_count; i++)
		if (kh_cmd_table[i].flags & KH_CF_EXCRYPT)
			kh_role_set_cmd(tp, (int)i, true);
	tp->logins_required = 0;
	tp->ports = KH_PORT_PROD;
	tp->sources = KH_SRC_ETHERNET;
	tp->builtin = true;
}

int kh_roles_bootstrap(struct kh_hsm *hsm)
{
	static const uint8_t default_pw[] = {'s', 'a', 'f', 'e', 's', 't'};
	struct kh_role admin, tp;
	struct kh_pwhash h1, h2;
	int64_t n = 0, admin_id = 0;
	int64_t now;
	int r;

	if ((r = role_count(hsm, &n)) != KH_OK || n > 0)
		return r;
	memset(&h1, 0, sizeof(h1));
	memset(&h2, 0, sizeof(h2));
	builtin_roles(&admin, &tp);
	now = (int64_t)kh_hsm_now(hsm);
	/* scrypt is slow: hash before taking the database lock */
	if ((r = kh_ident_hash_password(default_pw, sizeof(default_pw), &h1)) != KH_OK ||
	    (r = kh_ident_hash_password(default_pw, sizeof(default_pw), &h2)) != KH_OK)
		goto out;
	if ((r = kh_db_begin(hsm->db)) != KH_OK)
		goto out;
	if ((r = kh_role_insert(hsm, &admin, &admin_id)) != KH_OK ||
	    (r = kh_role_insert(hsm, &tp, NULL)) != KH_OK ||
	    (r = kh_ident_insert(hsm, "Admin1", admin_id, &h1, true, true, now)) != KH_OK ||
	    (r = kh_ident_insert(hsm, "Admin2", admin_id, &h2, true, true, now)) != KH_OK ||
	    (r = kh_audit_append(hsm, "system", "bootstrap",
				 "roles Administrator, Transaction Processing; identities Admin1, "
				 "Admin2")) != KH_OK) {
		kh_db_rollback(hsm->db);
		goto out;
	}
	if ((r = kh_db_commit(hsm->db)) != KH_OK)
		goto out;
	atomic_fetch_add(&hsm->role_gen, 1);
	log_info("created the built-in roles and identities Admin1, Admin2");
out:
	kh_ident_pwhash_wipe(&h1);
	kh_ident_pwhash_wipe(&h2);
	return r;
}

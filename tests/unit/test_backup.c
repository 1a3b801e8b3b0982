/* Unit tests for backups: a backup made on one device restores onto a
 * second device holding the same BEK and other PMK/FTK (keys re-wrapped
 * and usable); a wrong BEK, a truncated or garbled backup, or a missing
 * major key changes nothing; the decoders refuse every malformed input;
 * data objects and the largest generic secrets travel too. */
#include "kh_testutil.h"
#include "hsm/audit.h"
#include "hsm/backup.h"
#include "hsm/db.h"
#include "hsm/keystore.h"
#include "hsm/majorkey.h"
#include "common/kh_mem.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char resp[1 << 20];
static char req[1 << 20];
static uint8_t kb[32], kb_other[32], kp1[32], kp2[32], kf1[32], kf2[32];
static uint8_t m1[32], m2[24], m3[1];

static int call(struct kh_hsm *hsm, struct kh_session *s)
{
	int r = kh_test_call(hsm, s, req, resp, sizeof(resp));
	/* a config restore bumps role_gen; this test session is not a real login */
	s->role_gen = atomic_load(&hsm->role_gen);
	return r;
}

static void load(struct kh_hsm *hsm, enum kh_mk_id id, const uint8_t *k)
{
	assert_int_equal(kh_mk_load(hsm, id, k, 32, "unit", "majorkey.load", "t", NULL), KH_OK);
}

static int64_t db_int(struct kh_hsm *hsm, const char *sql)
{
	sqlite3_stmt *st;
	int64_t v;
	assert_int_equal(sqlite3_prepare_v2(kh_db_sqlite(hsm->db), sql, -1, &st, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return v;
}

/* SHA-256 over every row of the tables a restore may change. */
static void fingerprint(struct kh_hsm *hsm, uint8_t out[32])
{
	static const char *const q[] = {
	    "SELECT * FROM settings WHERE key <> 'audit_head' ORDER BY key",
	    "SELECT * FROM roles ORDER BY id",
	    "SELECT * FROM identities ORDER BY id",
	    "SELECT * FROM keys ORDER BY slot",
	    "SELECT * FROM major_keys ORDER BY name",
	};
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned int len = 0;
	assert_int_equal(EVP_DigestInit_ex(md, EVP_sha256(), NULL), 1);
	for (size_t i = 0; i < sizeof(q) / sizeof(q[0]); i++) {
		sqlite3_stmt *st;
		assert_int_equal(sqlite3_prepare_v2(kh_db_sqlite(hsm->db), q[i], -1, &st, NULL),
		                 SQLITE_OK);
		while (sqlite3_step(st) == SQLITE_ROW) {
			for (int c = 0; c < sqlite3_column_count(st); c++) {
				int n = sqlite3_column_bytes(st, c);
				const void *b = sqlite3_column_blob(st, c);
				EVP_DigestUpdate(md, &n, sizeof(n));
				if (n)
					EVP_DigestUpdate(md, b, (size_t)n);
			}
		}
		sqlite3_finalize(st);
	}
	assert_int_equal(EVP_DigestFinal_ex(md, out, &len), 1);
	EVP_MD_CTX_free(md);
}

static void put_key(struct kh_hsm *hsm, uint32_t slot, enum kh_mk_id major, const uint8_t *m,
                    size_t n, const char *label)
{
	static uint8_t attrs[] = {0x10, 0x20, 0x30};
	struct kh_key_row t;
	memset(&t, 0, sizeof(t));
	t.slot = slot;
	t.major = major;
	strcpy(t.cls, slot == 3 ? "data" : "secret");
	strcpy(t.ktype, slot == 2 ? "HMAC" : "AES");
	t.bits = (uint32_t)n * 8;
	t.attrs = slot == 3 ? NULL : attrs;
	t.attrs_len = slot == 3 ? 0 : sizeof(attrs);
	t.label = (uint8_t *)(uintptr_t)label;
	t.label_len = label ? strlen(label) : 0;
	assert_int_equal(kh_keystore_put(hsm, &t, m, n, KH_KS_NEW_ID, "unit"), KH_OK);
}

/* Device A: BEK kb, PMK kp1, FTK kf1, three keys, an extra role and identity. */
static void setup_a(struct kh_hsm *a)
{
	load(a, KH_MK_BEK, kb);
	load(a, KH_MK_PMK, kp1);
	load(a, KH_MK_FTK, kf1);
	put_key(a, 1, KH_MK_PMK, m1, sizeof(m1), "first");
	put_key(a, 2, KH_MK_FTK, m2, sizeof(m2), NULL);
	put_key(a, 3, KH_MK_PMK, m3, sizeof(m3), "third");
	assert_int_equal(
	    kh_test_db_exec(a, "INSERT INTO roles(name, perms, ranges, commands, "
	                       "logins_required, ports, sources) VALUES('App One', 'keys', "
	                       "'S:1000-1999', 'ECHO,RAND', 1, 1, 1)"),
	    SQLITE_OK);
	assert_int_equal(
	    kh_test_db_exec(a, "INSERT INTO identities(name, role_id, pw_hash, pw_salt, "
	                       "pw_params, must_change, created, changed) SELECT 'app.user', id, "
	                       "x'00112233445566778899AABBCCDDEEFF00112233445566778899AABBCCDDEEFF', x'AABBCCDDEEFF00112233445566778899', 'scrypt:16384:8:1', 0, 1, 2 FROM roles "
	                       "WHERE name='App One'"),
	    SQLITE_OK);
	assert_int_equal(kh_db_setting_put_int(a->db, "lockout_threshold", 7), KH_OK);
	assert_int_equal(kh_db_setting_put_int(a->db, "clock_offset", 5000), KH_OK);
}

static void backup(struct kh_hsm *a, struct kh_session *s, const char *scope, char **bd)
{
	if (scope)
		snprintf(req, sizeof(req), "[AOBKUP;SC%s;]", scope);
	else
		snprintf(req, sizeof(req), "[AOBKUP;]");
	assert_int_equal(call(a, s), KH_OK);
	*bd = strdup(kh_test_field(resp, "BD"));
	assert_non_null(*bd);
	assert_true(strlen(*bd) > 2 * (KH_BACKUP_HDR_LEN + KH_MK_SEAL_OVERHEAD));
}

static int restore(struct kh_hsm *b, struct kh_session *s, const char *bd)
{
	int n = snprintf(req, sizeof(req), "[AOBKRS;BD%s;]", bd);
	assert_true(n > 0 && (size_t)n < sizeof(req));
	return call(b, s);
}

struct events {
	char last[8][64];
	size_t n;
};

static int collect(void *arg, const struct kh_audit_entry *e)
{
	struct events *ev = arg;
	snprintf(ev->last[ev->n % 8], 64, "%s", e->event);
	ev->n++;
	return KH_OK;
}

static bool audited(struct kh_hsm *hsm, const char *event)
{
	struct events ev = {0};
	uint64_t count = 0, next = 0;
	assert_int_equal(kh_audit_count(hsm, &count), KH_OK);
	assert_int_equal(kh_audit_read(hsm, count > 8 ? count - 7 : 1, 8, collect, &ev, &next),
	                 KH_OK);
	for (size_t i = 0; i < 8 && i < ev.n; i++)
		if (strcmp(ev.last[i], event) == 0)
			return true;
	return false;
}

static void test_backup_restore_other_device(void **state)
{
	struct kh_hsm a, b;
	struct kh_session sa, sb;
	char da[256], db[256], kcv[7], serial_b[32], serial_after[32];
	char *bd = NULL;
	struct kh_key_row ra, rb;
	uint64_t gen;

	kh_test_hsm_open(&a, da);
	kh_test_hsm_open(&b, db);
	kh_test_admin_session(&a, &sa);
	kh_test_admin_session(&b, &sb);
	setup_a(&a);
	backup(&a, &sa, NULL, &bd);
	assert_int_equal(kh_mk_kcv(kb, 32, kcv), KH_OK);
	assert_string_equal(kh_test_field(resp, "KV"), kcv);
	assert_true(audited(&a, "backup.create"));
	/* the backup carries no key material in clear */
	{
		char hx[65];
		kh_hex_encode(m1, sizeof(m1), hx);
		assert_null(strstr(bd, hx));
		kh_hex_encode(m2, sizeof(m2), hx);
		assert_null(strstr(bd, hx));
	}

	/* device B: same BEK, other PMK and FTK, a key of its own */
	load(&b, KH_MK_BEK, kb);
	load(&b, KH_MK_PMK, kp2);
	load(&b, KH_MK_FTK, kf2);
	put_key(&b, 9, KH_MK_PMK, m1, sizeof(m1), "b only");
	assert_int_equal(kh_db_setting_get_str(b.db, "serial", serial_b, sizeof(serial_b)), KH_OK);
	assert_int_equal(b.lockout_threshold, 5);
	gen = atomic_load(&b.role_gen);

	assert_int_equal(restore(&b, &sb, bd), KH_OK);
	assert_string_equal(kh_test_field(resp, "KC"), "3");
	assert_string_equal(kh_test_field(resp, "RC"), "3");
	assert_string_equal(kh_test_field(resp, "IC"), "3");
	assert_true(audited(&b, "backup.restore"));
	assert_true(atomic_load(&b.role_gen) > gen);

	/* keys: same ids and material, re-wrapped under B's PMK/FTK */
	assert_int_equal(kh_keystore_get(&b, 9, &rb), KH_ERR_NOT_FOUND);
	kh_test_assert_key(&b, 1, m1, sizeof(m1));
	kh_test_assert_key(&b, 2, m2, sizeof(m2));
	kh_test_assert_key(&b, 3, m3, sizeof(m3));
	for (uint32_t slot = 1; slot <= 3; slot++) {
		assert_int_equal(kh_keystore_get(&a, slot, &ra), KH_OK);
		assert_int_equal(kh_keystore_get(&b, slot, &rb), KH_OK);
		assert_memory_equal(ra.key_id, rb.key_id, KH_KEY_ID_LEN);
		assert_int_equal(ra.major, rb.major);
		assert_string_equal(ra.cls, rb.cls);
		assert_string_equal(ra.ktype, rb.ktype);
		assert_int_equal(ra.attrs_len, rb.attrs_len);
		assert_int_equal(ra.label_len, rb.label_len);
		assert_int_equal(ra.created, rb.created);
		assert_int_equal(ra.wrapped_len, rb.wrapped_len);
		assert_memory_not_equal(ra.wrapped, rb.wrapped, ra.wrapped_len);
		/* A's wrapped form means nothing under B's major keys */
		assert_int_equal(kh_keystore_put_wrapped(&b, &ra, KH_KS_REPLACE, "unit"),
		                 KH_ERR_CRYPTO);
		kh_keystore_row_free(&ra);
		kh_keystore_row_free(&rb);
	}
	/* config: roles, identities and settings, but not device settings */
	assert_int_equal(db_int(&b, "SELECT count(*) FROM roles WHERE name='App One' AND "
	                            "ranges='S:1000-1999'"),
	                 1);
	assert_int_equal(db_int(&b, "SELECT count(*) FROM identities i JOIN roles r ON "
	                            "i.role_id=r.id WHERE i.name='app.user' AND r.name='App One' "
	                            "AND i.pw_hash=x'00112233445566778899AABBCCDDEEFF00112233445566778899AABBCCDDEEFF'"),
	                 1);
	assert_int_equal(b.lockout_threshold, 7);
	assert_int_equal(kh_db_setting_get_int(b.db, "clock_offset", 0), 0);
	assert_int_equal(kh_db_setting_get_str(b.db, "serial", serial_after, sizeof(serial_after)),
	                 KH_OK);
	assert_string_equal(serial_after, serial_b);

	/* a keys-only backup leaves config alone, and the reverse */
	free(bd);
	assert_int_equal(kh_db_setting_put_int(b.db, "lockout_threshold", 9), KH_OK);
	backup(&a, &sa, "keys", &bd);
	assert_int_equal(restore(&b, &sb, bd), KH_OK);
	assert_string_equal(kh_test_field(resp, "RC"), "0");
	assert_string_equal(kh_test_field(resp, "KC"), "3");
	assert_int_equal(kh_db_setting_get_int(b.db, "lockout_threshold", 0), 9);
	free(bd);
	put_key(&b, 50, KH_MK_FTK, m2, sizeof(m2), NULL);
	backup(&a, &sa, "config", &bd);
	assert_int_equal(restore(&b, &sb, bd), KH_OK);
	assert_string_equal(kh_test_field(resp, "KC"), "0");
	kh_test_assert_key(&b, 50, m2, sizeof(m2));
	assert_int_equal(kh_db_setting_get_int(b.db, "lockout_threshold", 0), 7);
	free(bd);

	snprintf(req, sizeof(req), "[AOBKUP;SCeverything;]");
	assert_int_equal(call(&a, &sa), KH_ERR_BAD_FIELD);
	kh_test_hsm_close(&b, db);
	kh_test_hsm_close(&a, da);
	(void)state;
}

static void test_refusals_change_nothing(void **state)
{
	struct kh_hsm a, c;
	struct kh_session sa, sc;
	char da[256], dc[256], *bd = NULL, *bad;
	uint8_t before[32], after[32];
	size_t len;

	kh_test_hsm_open(&a, da);
	kh_test_hsm_open(&c, dc);
	kh_test_admin_session(&a, &sa);
	kh_test_admin_session(&c, &sc);
	setup_a(&a);
	backup(&a, &sa, NULL, &bd);
	len = strlen(bd);
	bad = malloc(len + 3);
	assert_non_null(bad);

	/* C: no BEK at all */
	load(&c, KH_MK_PMK, kp2);
	put_key(&c, 4, KH_MK_PMK, m1, sizeof(m1), "c");
	fingerprint(&c, before);
	assert_int_equal(restore(&c, &sc, bd), KH_ERR_MAJOR_KEY_NOT_LOADED);
	assert_non_null(strstr(resp, "BEK"));
	snprintf(req, sizeof(req), "[AOBKUP;]");
	assert_int_equal(call(&c, &sc), KH_ERR_MAJOR_KEY_NOT_LOADED);

	fingerprint(&c, after);
	assert_memory_equal(before, after, 32);

	/* C: another BEK */
	load(&c, KH_MK_BEK, kb_other);
	fingerprint(&c, before);
	assert_int_equal(restore(&c, &sc, bd), KH_ERR_BACKUP_INVALID);
	{
		char k1[7], k2[7];
		assert_int_equal(kh_mk_kcv(kb, 32, k1), KH_OK);
		assert_int_equal(kh_mk_kcv(kb_other, 32, k2), KH_OK);
		assert_non_null(strstr(resp, k1));
		assert_non_null(strstr(resp, k2));
	}
	fingerprint(&c, after);
	assert_memory_equal(before, after, 32);

	/* C: the right BEK but no FTK for key 2 */
	assert_int_equal(kh_mk_erase(&c, KH_MK_BEK, "unit"), KH_OK);
	load(&c, KH_MK_BEK, kb);
	fingerprint(&c, before);
	assert_int_equal(restore(&c, &sc, bd), KH_ERR_MAJOR_KEY_NOT_LOADED);
	assert_non_null(strstr(resp, "FTK"));
	fingerprint(&c, after);
	assert_memory_equal(before, after, 32);

	/* truncated and garbled backups */
	const size_t hdr = 2 * KH_BACKUP_HDR_LEN;
	const size_t cuts[] = {0,       2,      8, hdr, hdr + 24, hdr + 2 * KH_MK_SEAL_OVERHEAD,
	                       (len / 4) * 2, len - 2}; /* even: whole hex bytes */
	for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
		memcpy(bad, bd, cuts[i]);
		bad[cuts[i]] = '\0';
		int r = restore(&c, &sc, bad);
		assert_true(r == KH_ERR_BACKUP_INVALID || (cuts[i] == 0 && r == KH_ERR_BAD_FIELD));
	}
	/* one flipped nibble: magic, version, scope, KCV, time, nonce, body, tag */
	const size_t flips[] = {0, 8, 10, 13, 30, hdr + 3, hdr + 30, len / 2, len - 1};
	for (size_t i = 0; i < sizeof(flips) / sizeof(flips[0]); i++) {
		memcpy(bad, bd, len + 1);
		bad[flips[i]] = bad[flips[i]] == 'A' ? 'B' : 'A';
		assert_int_equal(restore(&c, &sc, bad), KH_ERR_BACKUP_INVALID);
		assert_non_null(strstr(resp, "EC29;"));
	}
	/* a byte appended */
	memcpy(bad, bd, len);
	memcpy(bad + len, "00", 3);
	assert_int_equal(restore(&c, &sc, bad), KH_ERR_BACKUP_INVALID);
	/* not hex, odd length, missing */
	memcpy(bad, bd, len + 1);
	bad[len / 2] = 'Z';
	assert_int_equal(restore(&c, &sc, bad), KH_ERR_BAD_FIELD);
	memcpy(bad, bd, len - 1);
	bad[len - 1] = '\0';
	assert_int_equal(restore(&c, &sc, bad), KH_ERR_BAD_FIELD);
	snprintf(req, sizeof(req), "[AOBKRS;]");
	assert_int_equal(call(&c, &sc), KH_ERR_MISSING_FIELD);
	fingerprint(&c, after);
	assert_memory_equal(before, after, 32);

	/* a backup whose role this firmware could not use (an inverted range,
	 * as from another version) is refused as a whole before any write */
	load(&c, KH_MK_FTK, kf2);
	{
		char *bd2 = NULL;
		kh_test_db_exec(&a, "UPDATE roles SET ranges = 'S:20-10' WHERE builtin = 0");
		backup(&a, &sa, NULL, &bd2);
		fingerprint(&c, before);
		assert_int_equal(restore(&c, &sc, bd2), KH_ERR_BACKUP_INVALID);
		assert_non_null(strstr(resp, "cannot use"));
		fingerprint(&c, after);
		assert_memory_equal(before, after, 32);
		free(bd2);
		bd2 = NULL;
		/* valid fields, but FIPS mode with a one-login role: the rule RLMD
		 * and SETS enforce holds for a restore too */
		kh_test_db_exec(&a, "UPDATE roles SET ranges = 'S:1000-1999' WHERE builtin = 0");
		assert_int_equal(kh_db_setting_put_int(a.db, "fips", 1), KH_OK);
		backup(&a, &sa, NULL, &bd2);
		assert_int_equal(restore(&c, &sc, bd2), KH_ERR_BACKUP_INVALID);
		assert_non_null(strstr(resp, "FIPS mode with a role"));
		fingerprint(&c, after);
		assert_memory_equal(before, after, 32);
		free(bd2);
	}

	/* a role that may restore but not grant everything cannot replace the
	 * roles and identities */
	{
		struct kh_session weak = sc;
		weak.role.perms = KH_PERM(KH_P_RESTORE);
		fingerprint(&c, before);
		assert_int_equal(restore(&c, &weak, bd), KH_ERR_PERMISSION_DENIED);
		assert_non_null(strstr(resp, "role.assign_all"));
		fingerprint(&c, after);
		assert_memory_equal(before, after, 32);
	}

	/* with the FTK loaded the same backup goes in */
	assert_int_equal(restore(&c, &sc, bd), KH_OK);
	kh_test_assert_key(&c, 2, m2, sizeof(m2));
	free(bad);
	free(bd);
	kh_test_hsm_close(&c, dc);
	kh_test_hsm_close(&a, da);
	(void)state;
}

/* The decoders on their own, as a fuzz target calls them. */
static void test_decoders(void **state)
{
	struct kh_hsm a;
	struct kh_backup_hdr h;
	struct kh_backup_counts cnt;
	char da[256];
	uint8_t *file = NULL, *pt = NULL, *mut = NULL;
	size_t flen = 0, ptlen = 0;

	kh_test_hsm_open(&a, da);
	setup_a(&a);
	assert_int_equal(kh_backup_create(&a, KH_BACKUP_ALL, "unit", &file, &flen, &cnt), KH_OK);
	assert_int_equal(cnt.keys, 3);
	assert_int_equal(cnt.roles, 3);
	assert_int_equal(kh_backup_parse_header(file, flen, &h), KH_OK);
	assert_int_equal(h.scope, KH_BACKUP_ALL);
	assert_int_equal(h.version, 1);
	assert_true(h.created > 0);
	/* header: every field */
	{
		uint8_t hb[KH_BACKUP_HDR_LEN + KH_MK_SEAL_OVERHEAD];
		memcpy(hb, file, sizeof(hb));
		assert_int_equal(kh_backup_parse_header(hb, sizeof(hb), &h), KH_OK);
		assert_int_equal(kh_backup_parse_header(hb, sizeof(hb) - 1, &h),
		                 KH_ERR_BACKUP_INVALID);
		hb[4] = 2;
		assert_int_equal(kh_backup_parse_header(hb, sizeof(hb), &h), KH_ERR_BACKUP_INVALID);
		hb[4] = 1;
		hb[5] = 0;
		assert_int_equal(kh_backup_parse_header(hb, sizeof(hb), &h), KH_ERR_BACKUP_INVALID);
		hb[5] = 4;
		assert_int_equal(kh_backup_parse_header(hb, sizeof(hb), &h), KH_ERR_BACKUP_INVALID);
		hb[5] = 3;
		hb[6] = 'g';
		assert_int_equal(kh_backup_parse_header(hb, sizeof(hb), &h), KH_ERR_BACKUP_INVALID);
		hb[6] = '0';
		hb[0] = 'X';
		assert_int_equal(kh_backup_parse_header(hb, sizeof(hb), &h), KH_ERR_BACKUP_INVALID);
		assert_int_equal(kh_backup_parse_header(NULL, 0, &h), KH_ERR_BACKUP_INVALID);
	}
	/* body: decrypt it here (as restore does) and attack the decoder */
	pt = malloc(flen);
	assert_non_null(pt);
	assert_int_equal(kh_mk_open_ex(&a, KH_MK_BEK, "keyhold backup v1", file, KH_BACKUP_HDR_LEN,
	                               file + KH_BACKUP_HDR_LEN, flen - KH_BACKUP_HDR_LEN, pt,
	                               &ptlen),
	                 KH_OK);
	assert_int_equal(kh_backup_decode(pt, ptlen, KH_BACKUP_ALL, NULL, NULL, &cnt), KH_OK);
	assert_int_equal(cnt.keys, 3);
	assert_int_equal(cnt.identities, 3);
	assert_true(cnt.needs[KH_MK_PMK] && cnt.needs[KH_MK_FTK] && !cnt.needs[KH_MK_BEK]);
	assert_non_null(memmem(pt, ptlen, m1, sizeof(m1)));
	/* wrong scope, every truncation, a trailing byte */
	assert_int_equal(kh_backup_decode(pt, ptlen, KH_BACKUP_KEYS, NULL, NULL, NULL),
	                 KH_ERR_BACKUP_INVALID);
	assert_int_equal(kh_backup_decode(pt, ptlen, KH_BACKUP_CONFIG, NULL, NULL, NULL),
	                 KH_ERR_BACKUP_INVALID);
	assert_int_equal(kh_backup_decode(pt, ptlen, 0, NULL, NULL, NULL), KH_ERR_BACKUP_INVALID);
	assert_int_equal(kh_backup_decode(pt, ptlen, 8, NULL, NULL, NULL), KH_ERR_BACKUP_INVALID);
	for (size_t n = 0; n < ptlen; n++) {
		mut = malloc(n ? n : 1); /* exact-size copies let ASan see any overread */
		memcpy(mut, pt, n);
		assert_int_equal(kh_backup_decode(mut, n, KH_BACKUP_ALL, NULL, NULL, NULL),
		                 KH_ERR_BACKUP_INVALID);
		free(mut);
	}
	mut = malloc(ptlen + 1);
	memcpy(mut, pt, ptlen);
	mut[ptlen] = 0;
	assert_int_equal(kh_backup_decode(mut, ptlen + 1, KH_BACKUP_ALL, NULL, NULL, NULL),
	                 KH_ERR_BACKUP_INVALID);
	/* every byte changed in turn: never a crash; length and count fields
	 * set to their maximum must be refused */
	size_t refused = 0;
	for (size_t i = 0; i < ptlen; i++) {
		memcpy(mut, pt, ptlen);
		mut[i] = 0xFF;
		if (kh_backup_decode(mut, ptlen, KH_BACKUP_ALL, NULL, NULL, NULL) != KH_OK)
			refused++;
		mut[i] ^= 0x5A;
		KH_IGNORE(kh_backup_decode(mut, ptlen, KH_BACKUP_ALL, NULL, NULL, NULL) != KH_OK);
	}
	assert_true(refused > 0);
	/* a minimal valid body of each scope */
	{
		static const uint8_t keys0[] = {'K', 'H', 'B', 'P', 0, 0, 0, 0};
		static const uint8_t cfg0[] = {'K', 'H', 'B', 'P', 0, 0, 0, 0,
		                               0,   0,   0,   0,   0, 0, 0, 0};
		static const uint8_t huge[] = {'K', 'H', 'B', 'P', 0xFF, 0xFF, 0xFF, 0xFF};
		assert_int_equal(
		    kh_backup_decode(keys0, sizeof(keys0), KH_BACKUP_KEYS, NULL, NULL, &cnt),
		    KH_OK);
		assert_int_equal(cnt.keys, 0);
		assert_int_equal(
		    kh_backup_decode(cfg0, sizeof(cfg0), KH_BACKUP_CONFIG, NULL, NULL, NULL),
		    KH_OK);
		assert_int_equal(
		    kh_backup_decode(huge, sizeof(huge), KH_BACKUP_KEYS, NULL, NULL, NULL),
		    KH_ERR_BACKUP_INVALID);
	}
	free(mut);
	kh_wipe(pt, flen);
	free(pt);
	free(file);
	kh_test_hsm_close(&a, da);
	(void)state;
}


/* Objects made through the dispatcher, as large as they come: a data
 * object of 16320 bytes, an empty one, a generic secret of 16320 bytes. */
static void test_data_objects_travel(void **state)
{
	struct kh_hsm a, b;
	struct kh_session sa, sb, pa, pb;
	char da[256], db[256], *bd = NULL, value[2 * 16320 + 1], *dv = NULL, *ae = NULL;

	(void)state;
	kh_test_hsm_open(&a, da);
	kh_test_hsm_open(&b, db);
	kh_test_admin_session(&a, &sa);
	kh_test_admin_session(&b, &sb);
	kh_test_session(&pa, KH_PORT_PROD);
	kh_test_session(&pb, KH_PORT_PROD);
	load(&a, KH_MK_BEK, kb);
	load(&a, KH_MK_PMK, kp1);
	load(&b, KH_MK_BEK, kb);
	load(&b, KH_MK_PMK, kp2);
	memset(value, '5', sizeof(value) - 1);
	value[sizeof(value) - 1] = '\0';
	snprintf(req, sizeof(req), "[AOGPKA;CLdata;KV%s;KFM;SL7;]", value);
	assert_int_equal(call(&a, &pa), KH_OK);
	snprintf(req, sizeof(req), "[AOGPKA;CLdata;KV;SL8;]");
	assert_int_equal(call(&a, &pa), KH_OK);
	snprintf(req, sizeof(req), "[AOGPGS;CT7;LN16320;SL9;]");
	assert_int_equal(call(&a, &pa), KH_OK);
	ae = strdup(kh_test_field(resp, "AE"));
	backup(&a, &sa, "keys", &bd);
	assert_int_equal(restore(&b, &sb, bd), KH_OK);
	assert_string_equal(kh_test_field(resp, "KC"), "3");
	snprintf(req, sizeof(req), "[AOGPKR;SL7;]");
	assert_int_equal(call(&b, &pb), KH_OK);
	assert_non_null(strstr(resp, ";CLdata;TYGENERIC;BT130560;CZ;KFM;FSPMK;DV"));
	dv = strdup(kh_test_field(resp, "DV"));
	assert_string_equal(dv, value);
	snprintf(req, sizeof(req), "[AOGPKR;SL8;]");
	assert_int_equal(call(&b, &pb), KH_OK);
	assert_non_null(strstr(resp, ";CLdata;TYGENERIC;BT0;CZ;KF;FSPMK;DV;]"));
	snprintf(req, sizeof(req), "[AOGPKR;SL9;]");
	assert_int_equal(call(&b, &pb), KH_OK);
	assert_non_null(strstr(resp, ";CLsecret;TYGENERIC;BT130560;"));
	assert_string_equal(kh_test_field(resp, "AE"), ae);
	free(bd);
	free(dv);
	free(ae);
	kh_test_hsm_close(&a, da);
	kh_test_hsm_close(&b, db);
}

/* ---- paging ------------------------------------------------------------- */

/* A paged BKUP through the dispatcher: every page, in order, assembled and
 * checked against HS. Returns the file (malloc'd). */
static uint8_t *fetch_paged(struct kh_hsm *hsm, struct kh_session *s, const char *scope,
                            unsigned ps, size_t *len, unsigned *pages)
{
	char xi[32], hs[65], got[65];
	uint8_t md[32], *file;
	size_t total, at = 0;

	if (scope)
		snprintf(req, sizeof(req), "[AOBKUP;SC%s;PS%u;]", scope, ps);
	else
		snprintf(req, sizeof(req), "[AOBKUP;PS%u;]", ps);
	assert_int_equal(call(hsm, s), KH_OK);
	snprintf(xi, sizeof(xi), "%s", kh_test_field(resp, "XI"));
	snprintf(hs, sizeof(hs), "%s", kh_test_field(resp, "HS"));
	assert_int_equal(strlen(xi), 16);
	total = strtoull(kh_test_field(resp, "BZ"), NULL, 10);
	assert_true(total > 0);
	file = malloc(total);
	assert_non_null(file);
	*pages = 0;
	for (;;) {
		const char *nx;
		assert_int_equal(strtoull(kh_test_field(resp, "OF"), NULL, 10), at);
		assert_string_equal(kh_test_field(resp, "XI"), xi);
		size_t n = kh_test_unhex(kh_test_field(resp, "BD"), file + at, total - at);
		assert_true(n > 0 && n <= ps);
		at += n;
		(*pages)++;
		nx = kh_test_field(resp, "NX");
		if (*nx == '\0')
			break;
		assert_int_equal(strtoull(nx, NULL, 10), at);
		snprintf(req, sizeof(req), "[AOBKUP;XI%s;OF%zu;]", xi, at);
		assert_int_equal(call(hsm, s), KH_OK);
	}
	assert_int_equal(at, total);
	assert_int_equal(EVP_Digest(file, total, md, NULL, EVP_sha256(), NULL), 1);
	kh_hex_encode(md, sizeof(md), got);
	assert_string_equal(got, hs);
	/* the last page ended the export */
	assert_null(s->bk_out);
	*len = total;
	return file;
}

/* One BKRS page: bytes [off, off + n) of file, BZ on the first. */
static int put_page(struct kh_hsm *hsm, struct kh_session *s, const uint8_t *file, size_t total,
                    size_t off, size_t n)
{
	int k = off == 0 ? snprintf(req, sizeof(req), "[AOBKRS;BZ%zu;OF%zu;BD", total, off)
	                 : snprintf(req, sizeof(req), "[AOBKRS;OF%zu;BD", off);
	assert_true(k > 0 && (size_t)k + 2 * n + 3 < sizeof(req));
	kh_hex_encode_raw(file + off, n, req + k);
	memcpy(req + k + 2 * n, ";]", 3);
	return call(hsm, s);
}

/* Every page in order; the result of the last call. */
static int upload(struct kh_hsm *hsm, struct kh_session *s, const uint8_t *file, size_t total,
                  size_t ps, unsigned *pages)
{
	int r = KH_OK;
	*pages = 0;
	for (size_t at = 0; at < total && r == KH_OK; at += ps) {
		size_t n = total - at < ps ? total - at : ps;
		r = put_page(hsm, s, file, total, at, n);
		(*pages)++;
		if (r == KH_OK && at + n < total)
			assert_int_equal(strtoull(kh_test_field(resp, "NX"), NULL, 10), at + n);
	}
	return r;
}

/* A key table larger than one frame: the single-frame form refuses it,
 * pages carry it, the same file restores onto another device in pages,
 * and a small backup travels either way (the file is the same kind). */
static void test_paged_round_trip(void **state)
{
	/* many small keys and a few big objects: past one frame, yet quick
	 * under ASan */
	enum { NKEYS = 12000, NBIG = 200, BIG = 16320, PS = 128 * 1024 };
	struct kh_hsm a, b;
	struct kh_session sa, sb;
	char da[256], db[256];
	uint8_t *file, *small;
	size_t len, slen;
	unsigned pages;
	char *bd;

	(void)state;
	kh_test_hsm_open(&a, da);
	kh_test_hsm_open(&b, db);
	kh_test_admin_session(&a, &sa);
	kh_test_admin_session(&b, &sb);
	setup_a(&a);
	assert_int_equal(kh_test_fill_keys(&a, 1000, NKEYS), 0);
	{
		static uint8_t big[BIG];
		struct kh_key_row t;
		for (uint32_t i = 0; i < NBIG; i++) {
			memset(big, (int)(i + 1), sizeof(big));
			memset(&t, 0, sizeof(t));
			t.slot = 100000 + i;
			t.major = KH_MK_PMK;
			strcpy(t.cls, "data");
			strcpy(t.ktype, "GENERIC");
			t.bits = BIG * 8;
			assert_int_equal(kh_keystore_put(&a, &t, big, sizeof(big),
			                                 KH_KS_NEW_ID | KH_KS_QUIET, "unit"),
			                 KH_OK);
		}
	}

	snprintf(req, sizeof(req), "[AOBKUP;SCkeys;]");
	assert_int_equal(call(&a, &sa), KH_ERR_TOO_LARGE);
	assert_non_null(strstr(resp, "pages"));
	file = fetch_paged(&a, &sa, NULL, PS, &len, &pages);
	assert_true(len > KH_BACKUP_FRAME_MAX);
	assert_true(pages >= 16);
	assert_int_equal(atomic_load(&a.backup_staged), 0);

	load(&b, KH_MK_BEK, kb);
	load(&b, KH_MK_PMK, kp2);
	load(&b, KH_MK_FTK, kf2);
	put_key(&b, 9, KH_MK_PMK, m1, sizeof(m1), "b only");
	assert_int_equal(upload(&b, &sb, file, len, PS, &pages), KH_OK);
	assert_true(pages >= 16);
	{
		char kc[16];
		snprintf(kc, sizeof(kc), "%u", NKEYS + NBIG + 3);
		assert_string_equal(kh_test_field(resp, "KC"), kc);
	}
	assert_int_equal(atomic_load(&b.backup_staged), 0);
	assert_null(sb.bk_in);
	kh_test_assert_key(&b, 1, m1, sizeof(m1));
	kh_test_assert_key(&b, 2, m2, sizeof(m2));
	{
		uint8_t one[32] = {1};
		kh_test_assert_key(&b, 1000, one, sizeof(one));
		kh_test_assert_key(&b, 1000 + NKEYS - 1, one, sizeof(one));
		static uint8_t big[BIG];
		memset(big, NBIG, sizeof(big));
		kh_test_assert_key(&b, 100000 + NBIG - 1, big, sizeof(big));
	}
	assert_int_equal(db_int(&b, "SELECT count(*) FROM keys"), NKEYS + NBIG + 3);
	assert_int_equal(db_int(&b, "SELECT count(*) FROM keys WHERE slot = 9"), 0);
	assert_true(audited(&b, "backup.restore"));
	free(file);

	/* small: a single-frame backup restores in pages, a paged one in one frame */
	kh_test_db_exec(&a, "DELETE FROM keys WHERE slot >= 1010");
	/* (the big objects too: slots from 100000) */
	backup(&a, &sa, "keys", &bd);
	small = kh_test_unhex_dup(bd, &slen);
	assert_int_equal(upload(&b, &sb, small, slen, 64, &pages), KH_OK);
	assert_true(pages > 1);
	assert_string_equal(kh_test_field(resp, "KC"), "13");
	free(small);
	free(bd);
	small = fetch_paged(&a, &sa, "keys", KH_BACKUP_PAGE_MIN, &slen, &pages);
	assert_true(pages > 1);
	bd = kh_test_hex(small, slen);
	assert_int_equal(restore(&b, &sb, bd), KH_OK);
	assert_string_equal(kh_test_field(resp, "KC"), "13");
	free(bd);
	free(small);
	kh_backup_session_end(&a, &sa);
	kh_backup_session_end(&b, &sb);
	kh_test_hsm_close(&b, db);
	kh_test_hsm_close(&a, da);
}

/* A paged restore changes nothing until its last page has arrived and the
 * whole backup authenticates: abandoned, tampered, out of order,
 * duplicated, missing or overlong pages leave the device as it was and
 * free what was staged. */
static void test_paged_atomic(void **state)
{
	enum { PS = 4096 };
	struct kh_hsm a, b;
	struct kh_session sa, sb;
	char da[256], db[256];
	uint8_t before[32], after[32], *file, *bad;
	size_t len;
	unsigned pages;

	(void)state;
	kh_test_hsm_open(&a, da);
	kh_test_hsm_open(&b, db);
	kh_test_admin_session(&a, &sa);
	kh_test_admin_session(&b, &sb);
	setup_a(&a);
	assert_int_equal(kh_test_fill_keys(&a, 1000, 600), 0);
	file = fetch_paged(&a, &sa, NULL, PS, &len, &pages);
	assert_true(pages >= 8);
	bad = malloc(len);
	assert_non_null(bad);

	load(&b, KH_MK_BEK, kb);
	load(&b, KH_MK_PMK, kp2);
	load(&b, KH_MK_FTK, kf2);
	put_key(&b, 9, KH_MK_PMK, m1, sizeof(m1), "b only");
	fingerprint(&b, before);

	/* the connection drops mid-upload */
	assert_int_equal(put_page(&b, &sb, file, len, 0, PS), KH_OK);
	assert_int_equal(put_page(&b, &sb, file, len, PS, PS), KH_OK);
	assert_int_equal(atomic_load(&b.backup_staged), len);
	kh_backup_session_end(&b, &sb);
	assert_null(sb.bk_in);
	assert_int_equal(atomic_load(&b.backup_staged), 0);
	assert_int_equal(put_page(&b, &sb, file, len, 2 * PS, PS), KH_ERR_STATE);
	fingerprint(&b, after);
	assert_memory_equal(before, after, 32);

	/* a tampered page: every page is taken, the last one is refused */
	memcpy(bad, file, len);
	bad[3 * PS + 17] ^= 0x01;
	assert_int_equal(upload(&b, &sb, bad, len, PS, &pages), KH_ERR_BACKUP_INVALID);
	assert_int_equal(pages, (len + PS - 1) / PS);
	assert_non_null(strstr(resp, "authentication failed"));
	assert_null(sb.bk_in);
	assert_int_equal(atomic_load(&b.backup_staged), 0);
	fingerprint(&b, after);
	assert_memory_equal(before, after, 32);

	/* out of order, duplicated, missing: refused, and the upload is gone */
	assert_int_equal(put_page(&b, &sb, file, len, 0, PS), KH_OK);
	assert_int_equal(put_page(&b, &sb, file, len, 2 * PS, PS), KH_ERR_BAD_FIELD);
	assert_non_null(strstr(resp, "expected 4096"));
	assert_int_equal(put_page(&b, &sb, file, len, PS, PS), KH_ERR_STATE);
	assert_int_equal(put_page(&b, &sb, file, len, 0, PS), KH_OK);
	assert_int_equal(put_page(&b, &sb, file, len, PS, PS), KH_OK);
	assert_int_equal(put_page(&b, &sb, file, len, PS, PS), KH_ERR_BAD_FIELD);
	assert_null(sb.bk_in);
	/* all pages but one, then the end: the last page lands at the wrong offset */
	assert_int_equal(put_page(&b, &sb, file, len, 0, PS), KH_OK);
	assert_int_equal(put_page(&b, &sb, file, len, PS, PS), KH_OK);
	assert_int_equal(put_page(&b, &sb, file, len, 3 * PS, len - 3 * PS), KH_ERR_BAD_FIELD);
	/* a page past BZ, BZ changed midway, the first page without BZ or too short */
	assert_int_equal(put_page(&b, &sb, file, len - 1, 0, PS), KH_OK);
	assert_int_equal(upload(&b, &sb, file, len, PS, &pages), KH_OK);
	assert_string_equal(kh_test_field(resp, "KC"), "603");
	/* (a new OF0 replaced the upload of len - 1 bytes above) */
	kh_test_db_exec(&b, "DELETE FROM keys WHERE slot >= 1000");
	fingerprint(&b, before);
	assert_int_equal(put_page(&b, &sb, file, len - 1, 0, PS), KH_OK);
	{
		size_t at = PS;
		for (; at + PS < len - 1; at += PS)
			assert_int_equal(put_page(&b, &sb, file, len - 1, at, PS), KH_OK);
		/* the real last page holds one byte more than BZ leaves room for */
		int k = snprintf(req, sizeof(req), "[AOBKRS;OF%zu;BD", at);
		kh_hex_encode_raw(file + at, len - at, req + k);
		memcpy(req + k + 2 * (len - at), ";]", 3);
		assert_int_equal(call(&b, &sb), KH_ERR_BAD_FIELD);
		assert_non_null(strstr(resp, "past BZ"));
	}
	assert_int_equal(put_page(&b, &sb, file, len, 0, PS), KH_OK);
	snprintf(req, sizeof(req), "[AOBKRS;BZ%zu;OF%u;BD00;]", len + 1, PS);
	assert_int_equal(call(&b, &sb), KH_ERR_BAD_FIELD);
	assert_null(sb.bk_in);
	snprintf(req, sizeof(req), "[AOBKRS;OF0;BD00;]");
	assert_int_equal(call(&b, &sb), KH_ERR_MISSING_FIELD);
	assert_int_equal(put_page(&b, &sb, file, len, 0, KH_BACKUP_HDR_LEN - 1), KH_ERR_BAD_FIELD);
	snprintf(req, sizeof(req), "[AOBKRS;BZ%zu;OF0;]", len);
	assert_int_equal(call(&b, &sb), KH_ERR_MISSING_FIELD);
	/* a tampered header is refused on the first page */
	memcpy(bad, file, len);
	bad[4] = 9;
	assert_int_equal(put_page(&b, &sb, bad, len, 0, PS), KH_ERR_BACKUP_INVALID);
	assert_null(sb.bk_in);
	fingerprint(&b, after);
	assert_memory_equal(before, after, 32);
	assert_int_equal(atomic_load(&b.backup_staged), 0);

	/* the config scope needs role.assign_all from the first page on */
	{
		struct kh_session weak = sb;
		weak.role.perms = KH_PERM(KH_P_RESTORE);
		assert_int_equal(put_page(&b, &weak, file, len, 0, PS), KH_ERR_PERMISSION_DENIED);
		assert_null(weak.bk_in);
	}
	/* another identity cannot continue an upload */
	assert_int_equal(put_page(&b, &sb, file, len, 0, PS), KH_OK);
	{
		char saved[KH_NAME_MAX];
		memcpy(saved, sb.ident[0], sizeof(saved));
		snprintf(sb.ident[0], sizeof(sb.ident[0]), "Other");
		assert_int_equal(put_page(&b, &sb, file, len, PS, PS), KH_ERR_STATE);
		assert_non_null(strstr(resp, "other identities"));
		memcpy(sb.ident[0], saved, sizeof(saved));
	}
	assert_null(sb.bk_in);
	fingerprint(&b, after);
	assert_memory_equal(before, after, 32);
	free(bad);
	free(file);
	kh_backup_session_end(&a, &sa);
	kh_backup_session_end(&b, &sb);
	kh_test_hsm_close(&b, db);
	kh_test_hsm_close(&a, da);
}

/* Limits: page sizes, backup size, the daemon's staging budget, and an
 * export's name, offsets and end. */
static void test_paged_limits(void **state)
{
	struct kh_hsm a;
	struct kh_session sa, s2, s3;
	char da[256], xi[32];
	uint8_t *file;
	size_t len;
	unsigned pages;

	(void)state;
	kh_test_hsm_open(&a, da);
	kh_test_admin_session(&a, &sa);
	setup_a(&a);
	snprintf(req, sizeof(req), "[AOBKUP;PS%u;]", KH_BACKUP_PAGE_MIN - 1);
	assert_int_equal(call(&a, &sa), KH_ERR_BAD_FIELD);
	snprintf(req, sizeof(req), "[AOBKUP;PS%u;]", KH_BACKUP_PAGE_MAX + 1);
	assert_int_equal(call(&a, &sa), KH_ERR_BAD_FIELD);
	file = fetch_paged(&a, &sa, NULL, KH_BACKUP_PAGE_MIN, &len, &pages);

	/* an export: wrong name, past the end, SC on a continuation, ended */
	snprintf(req, sizeof(req), "[AOBKUP;PS%u;]", KH_BACKUP_PAGE_MIN);
	assert_int_equal(call(&a, &sa), KH_OK);
	snprintf(xi, sizeof(xi), "%s", kh_test_field(resp, "XI"));
	snprintf(req, sizeof(req), "[AOBKUP;XI0000000000000000;OF0;]");
	assert_int_equal(call(&a, &sa), KH_ERR_NOT_FOUND);
	snprintf(req, sizeof(req), "[AOBKUP;XI%s;OF%zu;]", xi, len);
	assert_int_equal(call(&a, &sa), KH_ERR_BAD_FIELD);
	snprintf(req, sizeof(req), "[AOBKUP;XI%s;OF0;SCkeys;]", xi);
	assert_int_equal(call(&a, &sa), KH_ERR_BAD_FIELD);
	snprintf(req, sizeof(req), "[AOBKUP;XI%s;OF%zu;]", xi, len - 1);
	assert_int_equal(call(&a, &sa), KH_OK); /* the last page ends it */
	assert_string_equal(kh_test_field(resp, "NX"), "");
	snprintf(req, sizeof(req), "[AOBKUP;XI%s;OF0;]", xi);
	assert_int_equal(call(&a, &sa), KH_ERR_STATE);
	assert_int_equal(atomic_load(&a.backup_staged), 0);

	/* a backup is at most 1 GiB; all uploads together at most 2 GiB */
	assert_int_equal(put_page(&a, &sa, file, (size_t)KH_BACKUP_MAX + 1, 0, KH_BACKUP_HDR_LEN),
	                 KH_ERR_TOO_LARGE);
	assert_non_null(strstr(resp, "at most"));
	kh_test_admin_session(&a, &s2);
	kh_test_admin_session(&a, &s3);
	assert_int_equal(put_page(&a, &sa, file, KH_BACKUP_MAX, 0, KH_BACKUP_HDR_LEN), KH_OK);
	assert_int_equal(put_page(&a, &s2, file, KH_BACKUP_MAX, 0, KH_BACKUP_HDR_LEN), KH_OK);
	assert_int_equal(put_page(&a, &s3, file, len, 0, KH_BACKUP_HDR_LEN), KH_ERR_BUSY);
	kh_backup_session_end(&a, &s2);
	assert_int_equal(put_page(&a, &s3, file, len, 0, KH_BACKUP_HDR_LEN), KH_OK);
	kh_backup_session_end(&a, &sa);
	kh_backup_session_end(&a, &s3);
	assert_int_equal(atomic_load(&a.backup_staged), 0);

	/* the stage on its own */
	{
		struct kh_backup_stage st;
		assert_int_equal(kh_backup_stage_begin(&st, len, file, KH_BACKUP_HDR_LEN - 1),
		                 KH_ERR_BAD_FIELD);
		assert_null(st.data);
		assert_int_equal(kh_backup_stage_begin(&st, 10, file, 10), KH_ERR_BAD_FIELD);
		assert_int_equal(kh_backup_stage_begin(&st, len, file, 100), KH_OK);
		assert_int_equal(kh_backup_stage_add(&st, 99, file + 99, 10), KH_ERR_BAD_FIELD);
		assert_int_equal(kh_backup_stage_add(&st, 100, file + 100, 0), KH_ERR_BAD_FIELD);
		assert_int_equal(kh_backup_stage_add(&st, 100, file + 100, len - 99), KH_ERR_BAD_FIELD);
		assert_false(kh_backup_stage_done(&st));
		assert_int_equal(kh_backup_stage_add(&st, 100, file + 100, len - 100), KH_OK);
		assert_true(kh_backup_stage_done(&st));
		assert_memory_equal(st.data, file, len);
		kh_backup_stage_free(&st);
		assert_null(st.data);
	}
	free(file);
	kh_test_hsm_close(&a, da);
}

int main(void)
{
	for (int i = 0; i < 32; i++) {
		kb[i] = (uint8_t)(0xB0 + i);
		kb_other[i] = (uint8_t)(0xB1 + i);
		kp1[i] = (uint8_t)(0x10 + i * 3);
		kp2[i] = (uint8_t)(0x20 + i * 5);
		kf1[i] = (uint8_t)(0x30 + i * 7);
		kf2[i] = (uint8_t)(0x40 + i * 9);
		m1[i] = (uint8_t)(0xD1 ^ (i * 37));
	}
	for (int i = 0; i < 24; i++)
		m2[i] = (uint8_t)(0x6B ^ (i * 41));
	m3[0] = 0x99;
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_backup_restore_other_device),
	    cmocka_unit_test(test_refusals_change_nothing),
	    cmocka_unit_test(test_decoders),
	    cmocka_unit_test(test_data_objects_travel),
	    cmocka_unit_test(test_paged_round_trip),
	    cmocka_unit_test(test_paged_atomic),
	    cmocka_unit_test(test_paged_limits),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

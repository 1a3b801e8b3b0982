/*
 * Identities and their passwords: scrypt verifiers with per-identity salts,
 * failure counting and lockout. A password is only ever held on the secure
 * heap by the caller; it never reaches the database, a log or the audit trail.
 */
#include "hsm/identity.h"
#include "hsm/audit.h"
#include "hsm/db.h"
#include "hsm/roles.h"
#include "common/kh_log.h"
#include "common/kh_mem.h"
#include "common/kh_scrypt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

/* Current parameters; stored with each verifier so that they can change. */
#define SCRYPT_N 16384
#define SCRYPT_R 8
#define SCRYPT_P 1

bool kh_ident_name_valid(const char *name)
{
	size_t n = strlen(name);
	if (n == 0 || n >= KH_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char ch = name[i];
		if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
		      ch == '_' || ch == '.' || ch == '-'))
			return false;
	}
	return true;
}

int kh_ident_password_policy(const uint8_t *pw, size_t n, const uint8_t *old, size_t oldn)
{
	if (n < KH_PASSWORD_MIN || n > KH_PASSWORD_MAX)
		return KH_ERR_WEAK_PASSWORD;
	if (old != NULL && oldn == n && kh_ct_equal(pw, old, n))
		return KH_ERR_WEAK_PASSWORD;
	return KH_OK;
}

/* Stored parameters are accepted up to these (OpenSSL's 32 MiB memory limit
 * still applies when the KDF runs). */
static const struct kh_scrypt_params scrypt_max = {.N = 1u << 20, .r = 32, .p = 16};
static const struct kh_scrypt_params scrypt_now = {.N = SCRYPT_N, .r = SCRYPT_R, .p = SCRYPT_P};

int kh_ident_hash_password(const uint8_t *pw, size_t n, struct kh_pwhash *out)
{
	memset(out, 0, sizeof(*out));
	if (RAND_bytes(out->salt, sizeof(out->salt)) != 1)
		return KH_ERR_CRYPTO;
	kh_scrypt_format(&scrypt_now, out->params, sizeof(out->params));
	return kh_scrypt(pw, n, out->salt, sizeof(out->salt), &scrypt_now, 0, out->hash,
	                 sizeof(out->hash));
}

void kh_ident_pwhash_wipe(struct kh_pwhash *h)
{
	kh_wipe(h, sizeof(*h));
}

/* ---- storage ---- */

#define IDENT_COLS "id,name,role_id,must_change,failures,locked_until,builtin"

static void ident_from_row(sqlite3_stmt *st, struct kh_ident *out)
{
	const unsigned char *name = sqlite3_column_text(st, 1);
	memset(out, 0, sizeof(*out));
	out->id = sqlite3_column_int64(st, 0);
	snprintf(out->name, sizeof(out->name), "%s", name ? (const char *)name : "");
	out->role_id = sqlite3_column_int64(st, 2);
	out->must_change = sqlite3_column_int(st, 3) != 0;
	out->failures = sqlite3_column_int64(st, 4);
	out->locked_until = sqlite3_column_int64(st, 5);
	out->builtin = sqlite3_column_int(st, 6) != 0;
}

int kh_ident_load(struct kh_hsm *hsm, const char *name, struct kh_ident *out)
{
	sqlite3_stmt *st = NULL;
	int r, rc;
	kh_db_lock(hsm->db);
	if ((r = kh_db_prepare(hsm->db, "SELECT " IDENT_COLS " FROM identities WHERE name=?",
	                       &st)) != KH_OK)
		goto out;
	sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		ident_from_row(st, out);
	else
		r = rc == SQLITE_DONE ? KH_ERR_NOT_FOUND : kh_db_err(hsm->db, rc);
out:
	sqlite3_finalize(st);
	kh_db_unlock(hsm->db);
	return r;
}

/* The stored verifier of an identity. */
struct verifier {
	uint8_t hash[KH_PW_HASH_LEN];
	uint8_t salt[64];
	size_t saltlen;
	struct kh_scrypt_params k;
};

static int load_verifier(struct kh_hsm *hsm, int64_t id, struct verifier *v)
{
	sqlite3_stmt *st = NULL;
	int r, rc;
	kh_db_lock(hsm->db);
	if ((r = kh_db_prepare(hsm->db,
	                       "SELECT pw_hash,pw_salt,pw_params FROM identities WHERE id=?",
	                       &st)) != KH_OK)
		goto out;
	sqlite3_bind_int64(st, 1, id);
	rc = sqlite3_step(st);
	if (rc != SQLITE_ROW) {
		r = rc == SQLITE_DONE ? KH_ERR_NOT_FOUND : kh_db_err(hsm->db, rc);
		goto out;
	}
	const unsigned char *params = sqlite3_column_text(st, 2);
	size_t hl = (size_t)sqlite3_column_bytes(st, 0);
	size_t sl = (size_t)sqlite3_column_bytes(st, 1);
	if (hl != KH_PW_HASH_LEN || sl == 0 || sl > sizeof(v->salt) || params == NULL ||
	    !kh_scrypt_parse((const char *)params, &scrypt_max, &v->k)) {
		log_warnx("identity %lld: stored password verifier is invalid", (long long)id);
		r = KH_ERR_STORAGE;
		goto out;
	}
	memcpy(v->hash, sqlite3_column_blob(st, 0), hl);
	memcpy(v->salt, sqlite3_column_blob(st, 1), sl);
	v->saltlen = sl;
out:
	sqlite3_finalize(st);
	kh_db_unlock(hsm->db);
	return r;
}

static void lockout_settings(struct kh_hsm *hsm, int64_t *threshold, int64_t *seconds)
{
	pthread_mutex_lock(&hsm->mu);
	*threshold = hsm->lockout_threshold > 0 ? hsm->lockout_threshold : 1;
	*seconds = hsm->lockout_seconds > 0 ? hsm->lockout_seconds : 1;
	pthread_mutex_unlock(&hsm->mu);
}

/* Count one failure and, at the threshold, lock -- one UPDATE that only
 * matches while the identity is not locked, so that parallel wrong guesses
 * cannot count past a lock or move it, and the lock is decided on the count
 * this very statement produced. Audited in the same transaction: each
 * counted failure as "login.fail", the one that sets the lock as
 * "login.locked". Returns the answer for the client: AUTH_FAILED, LOCKED,
 * or a storage error. */
static int record_failure(struct kh_hsm *hsm, const struct kh_ident *id, const char *peer,
			  int64_t now, int64_t threshold, int64_t seconds)
{
	sqlite3_stmt *st = NULL;
	char detail[400];
	int64_t failures = 0, locked_until = 0;
	bool counted = false;
	int r, rc;

	if ((r = kh_db_begin(hsm->db)) != KH_OK)
		return r;
	if ((r = kh_db_prepare(hsm->db,
	                       "UPDATE identities SET failures=failures+1,"
	                       " locked_until=CASE WHEN failures+1>=?1 THEN ?2 ELSE locked_until END"
	                       " WHERE id=?3 AND locked_until<=?4 RETURNING failures,locked_until",
	                       &st)) != KH_OK)
		goto fail;
	sqlite3_bind_int64(st, 1, threshold);
	sqlite3_bind_int64(st, 2, now + seconds);
	sqlite3_bind_int64(st, 3, id->id);
	sqlite3_bind_int64(st, 4, now);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		counted = true;
		failures = sqlite3_column_int64(st, 0);
		locked_until = sqlite3_column_int64(st, 1);
		rc = sqlite3_step(st);
	}
	if (rc != SQLITE_DONE) {
		r = kh_db_err(hsm->db, rc);
		goto fail;
	}
	sqlite3_finalize(st);
	st = NULL;
	if (!counted) {
		/* locked by a parallel attempt since we read it (or deleted):
		 * nothing to count, nothing new to record */
		kh_db_rollback(hsm->db);
		struct kh_ident cur;
		r = kh_ident_load(hsm, id->name, &cur);
		if (r == KH_OK && cur.id == id->id && cur.locked_until > now)
			return KH_ERR_LOCKED;
		return r == KH_OK || r == KH_ERR_NOT_FOUND ? KH_ERR_AUTH_FAILED : r;
	}
	if (locked_until > now) {
		snprintf(detail, sizeof(detail), "identity %s locked after %lld failures from %s",
			 id->name, (long long)failures, peer);
		if ((r = kh_audit_append(hsm, id->name, "login.locked", detail)) != KH_OK)
			goto fail;
	} else {
		snprintf(detail, sizeof(detail), "identity %s wrong password (%lld) from %s", id->name,
			 (long long)failures, peer);
		if ((r = kh_audit_append(hsm, id->name, "login.fail", detail)) != KH_OK)
			goto fail;
	}
	if ((r = kh_db_commit(hsm->db)) != KH_OK)
		return r;
	if (locked_until > now) {
		/* sessions where the identity is logged in re-check it */
		atomic_fetch_add(&hsm->role_gen, 1);
		return KH_ERR_LOCKED;
	}
	return KH_ERR_AUTH_FAILED;
fail:
	sqlite3_finalize(st);
	kh_db_rollback(hsm->db);
	return r;
}

/*
 * Ordering (M1): hsm->role_gen is read before the identity row and its role.
 * Every writer that moves an identity or changes a role bumps role_gen after
 * its commit, so if such a change lands after our reads, the generation the
 * session stores is already stale and the dispatcher re-checks the session's
 * identities and role before its next command. A change that lands between
 * our reads and the login's commit is in addition caught by
 * kh_ident_login_ok, which only succeeds while role_id, must_change and the
 * verifier are still those read here.
 */
int kh_ident_authenticate(struct kh_hsm *hsm, const char *name, const uint8_t *pw, size_t pwlen,
			  enum kh_port port, enum kh_source source, const char *peer,
			  struct kh_auth *out)
{
	struct verifier v;
	uint8_t calc[KH_PW_HASH_LEN];
	int64_t now, threshold, seconds;
	bool real = false, match;
	int r;

	memset(out, 0, sizeof(*out));
	memset(&v, 0, sizeof(v));
	/* settings under hsm->mu before any database lock (lock order) */
	lockout_settings(hsm, &threshold, &seconds);
	now = (int64_t)kh_hsm_now(hsm);
	out->gen = atomic_load(&hsm->role_gen);
	r = kh_ident_load(hsm, name, &out->id);
	if (r == KH_OK) {
		r = kh_role_load_by_id(hsm, out->id.role_id, &out->role);
		if (r == KH_ERR_NOT_FOUND)
			out->quiet = KH_AUTH_UNKNOWN;
		else if (r != KH_OK)
			return r;
		else if (!kh_role_allows_conn(&out->role, port, source))
			/* before the lock and the password: from a port its role
			 * may not use, an identity can be neither guessed at nor
			 * locked out */
			out->quiet = KH_AUTH_CONN_REFUSED;
		else if (out->id.locked_until > now)
			out->quiet = KH_AUTH_LOCKED_QUIET;
		else
			real = true;
	} else if (r == KH_ERR_NOT_FOUND) {
		out->quiet = KH_AUTH_UNKNOWN;
	} else {
		return r;
	}

	if (real) {
		if ((r = load_verifier(hsm, out->id.id, &v)) != KH_OK)
			return r;
	} else {
		/* the same work as a real check, against a verifier nothing
		 * matches: uniform timing, and the cost limits the rate */
		if (RAND_bytes(v.salt, KH_PW_SALT_LEN) != 1 || RAND_bytes(v.hash, sizeof(v.hash)) != 1)
			return KH_ERR_CRYPTO;
		v.saltlen = KH_PW_SALT_LEN;
		v.k = scrypt_now;
	}
	r = kh_scrypt(pw, pwlen, v.salt, v.saltlen, &v.k, 0, calc, sizeof(calc));
	match = r == KH_OK && CRYPTO_memcmp(calc, v.hash, sizeof(calc)) == 0;
	if (real && match)
		memcpy(out->verifier, v.hash, sizeof(out->verifier));
	kh_wipe(calc, sizeof(calc));
	kh_wipe(&v, sizeof(v));
	if (r != KH_OK)
		return r;
	if (!real)
		return out->quiet == KH_AUTH_LOCKED_QUIET ? KH_ERR_LOCKED : KH_ERR_AUTH_FAILED;
	if (!match)
		return record_failure(hsm, &out->id, peer, now, threshold, seconds);
	return KH_OK;
}

int kh_ident_insert(struct kh_hsm *hsm, const char *name, int64_t role_id,
		    const struct kh_pwhash *pw, bool must_change, bool builtin, int64_t now)
{
	sqlite3_stmt *st = NULL;
	int r;
	kh_db_lock(hsm->db);
	if ((r = kh_db_prepare(
	         hsm->db,
	         "INSERT INTO identities(name,role_id,pw_hash,pw_salt,pw_params,must_change,"
	         "failures,locked_until,builtin,created,changed) VALUES(?,?,?,?,?,?,0,0,?,?,?)",
	         &st)) != KH_OK)
		goto out;
	sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 2, role_id);
	sqlite3_bind_blob(st, 3, pw->hash, sizeof(pw->hash), SQLITE_TRANSIENT);
	sqlite3_bind_blob(st, 4, pw->salt, sizeof(pw->salt), SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 5, pw->params, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int(st, 6, must_change ? 1 : 0);
	sqlite3_bind_int(st, 7, builtin ? 1 : 0);
	sqlite3_bind_int64(st, 8, now);
	sqlite3_bind_int64(st, 9, now);
	r = kh_db_err(hsm->db, sqlite3_step(st));
out:
	sqlite3_finalize(st);
	kh_db_unlock(hsm->db);
	return r;
}

/* Run one UPDATE ... WHERE id=? whose other parameters are int64s. */
static int update_ints(struct kh_hsm *hsm, const char *sql, int64_t id, const int64_t *vals,
		       int nvals)
{
	sqlite3_stmt *st = NULL;
	int r;
	kh_db_lock(hsm->db);
	if ((r = kh_db_prepare(hsm->db, sql, &st)) != KH_OK)
		goto out;
	for (int i = 0; i < nvals; i++)
		sqlite3_bind_int64(st, i + 1, vals[i]);
	sqlite3_bind_int64(st, nvals + 1, id);
	r = kh_db_err(hsm->db, sqlite3_step(st));
	if (r == KH_OK && sqlite3_changes(kh_db_sqlite(hsm->db)) != 1)
		r = KH_ERR_NOT_FOUND;
out:
	sqlite3_finalize(st);
	kh_db_unlock(hsm->db);
	return r;
}

int kh_ident_set_password(struct kh_hsm *hsm, int64_t id, const struct kh_pwhash *pw,
			  bool must_change, int64_t now)
{
	sqlite3_stmt *st = NULL;
	int r;
	kh_db_lock(hsm->db);
	if ((r = kh_db_prepare(
	         hsm->db,
	         "UPDATE identities SET pw_hash=?,pw_salt=?,pw_params=?,must_change=?,"
	         "changed=? WHERE id=?",
	         &st)) != KH_OK)
		goto out;
	sqlite3_bind_blob(st, 1, pw->hash, sizeof(pw->hash), SQLITE_TRANSIENT);
	sqlite3_bind_blob(st, 2, pw->salt, sizeof(pw->salt), SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 3, pw->params, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int(st, 4, must_change ? 1 : 0);
	sqlite3_bind_int64(st, 5, now);
	sqlite3_bind_int64(st, 6, id);
	r = kh_db_err(hsm->db, sqlite3_step(st));
	if (r == KH_OK && sqlite3_changes(kh_db_sqlite(hsm->db)) != 1)
		r = KH_ERR_NOT_FOUND;
out:
	sqlite3_finalize(st);
	kh_db_unlock(hsm->db);
	return r;
}

int kh_ident_login_ok(struct kh_hsm *hsm, const struct kh_auth *a, const struct kh_pwhash *pw,
		      int64_t now)
{
	sqlite3_stmt *st = NULL;
	int64_t locked_until = 0;
	int r, rc, changes = 0;

	kh_db_lock(hsm->db);
	if ((r = kh_db_prepare(hsm->db,
	                       "UPDATE identities SET failures=0,locked_until=0 WHERE id=? AND"
	                       " role_id=? AND must_change=? AND pw_hash=? AND locked_until<=?",
	                       &st)) != KH_OK)
		goto out;
	sqlite3_bind_int64(st, 1, a->id.id);
	sqlite3_bind_int64(st, 2, a->id.role_id);
	sqlite3_bind_int(st, 3, a->id.must_change ? 1 : 0);
	sqlite3_bind_blob(st, 4, a->verifier, sizeof(a->verifier), SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 5, now);
	if ((r = kh_db_err(hsm->db, sqlite3_step(st))) != KH_OK)
		goto out;
	changes = sqlite3_changes(kh_db_sqlite(hsm->db));
	sqlite3_finalize(st);
	st = NULL;
	if (changes != 1) {
		/* locked since the check, or changed or deleted: tell which */
		if ((r = kh_db_prepare(hsm->db, "SELECT locked_until FROM identities WHERE id=?",
		                       &st)) != KH_OK)
			goto out;
		sqlite3_bind_int64(st, 1, a->id.id);
		rc = sqlite3_step(st);
		if (rc == SQLITE_ROW)
			locked_until = sqlite3_column_int64(st, 0);
		else if (rc != SQLITE_DONE) {
			r = kh_db_err(hsm->db, rc);
			goto out;
		}
		r = locked_until > now ? KH_ERR_LOCKED : KH_ERR_AUTH_FAILED;
		goto out;
	}
	if (pw != NULL)
		r = kh_ident_set_password(hsm, a->id.id, pw, false, now);
out:
	sqlite3_finalize(st);
	kh_db_unlock(hsm->db);
	return r;
}

int kh_ident_set_role(struct kh_hsm *hsm, int64_t id, int64_t role_id, int64_t now)
{
	int64_t v[2] = {role_id, now};
	return update_ints(hsm, "UPDATE identities SET role_id=?,changed=? WHERE id=?", id, v, 2);
}

int kh_ident_set_must_change(struct kh_hsm *hsm, int64_t id, bool must_change, int64_t now)
{
	int64_t v[2] = {must_change ? 1 : 0, now};
	return update_ints(hsm, "UPDATE identities SET must_change=?,changed=? WHERE id=?", id, v, 2);
}

int kh_ident_unlock(struct kh_hsm *hsm, int64_t id, int64_t now)
{
	int64_t v[1] = {now};
	return update_ints(hsm, "UPDATE identities SET failures=0,locked_until=0,changed=? WHERE id=?",
			   id, v, 1);
}

int kh_ident_delete(struct kh_hsm *hsm, int64_t id)
{
	return update_ints(hsm, "DELETE FROM identities WHERE id=?", id, NULL, 0);
}

static int ident_item(sqlite3_stmt *st, void *arg, const char *sep, char *out, size_t room)
{
	const int64_t *now = arg;
	char role[KH_NAME_MAX];
	const unsigned char *iname = sqlite3_column_text(st, 0);
	const unsigned char *rname = sqlite3_column_text(st, 1);
	const char *state = sqlite3_column_int64(st, 2) > *now ? "locked"
	                    : sqlite3_column_int(st, 3)        ? "change"
	                                                       : "ok";
	snprintf(role, sizeof(role), "%s", rname ? (const char *)rname : "");
	for (char *p = role; *p; p++)
		if (*p == ' ')
			*p = '_';
	return snprintf(out, room, "%s%s:%s:%s", sep, iname ? (const char *)iname : "", role,
	                state);
}

int kh_ident_list(struct kh_hsm *hsm, int64_t now, char *out, size_t outsz)
{
	return kh_db_list(hsm->db,
	                  "SELECT i.name, r.name, i.locked_until, i.must_change FROM identities i "
	                  "JOIN roles r ON r.id = i.role_id ORDER BY i.id",
	                  ident_item, &now, out, outsz);
}

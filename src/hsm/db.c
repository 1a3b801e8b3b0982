/*
 * SQLite storage: WAL, synchronous=FULL and secure_delete=ON so that an
 * acknowledged change survives kill -9 and power loss and deleted secrets do
 * not linger in free pages. Schema changes are numbered migrations applied
 * in one transaction each; PRAGMA user_version records where a file stands.
 */
#include "hsm/db.h"
#include "common/kh_log.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct kh_db {
	sqlite3 *h;
	pthread_mutex_t mu; /* recursive */
	int depth;          /* transaction nesting on the owning thread */
};

/* Migration N brings the schema from version N to N+1. Never edit a
 * migration once released: add a new one. */
static const char *const migrations[] = {
	/* 0 -> 1: the first schema */
	"CREATE TABLE settings (key TEXT PRIMARY KEY, value BLOB NOT NULL);"
	"CREATE TABLE roles ("
	"  id INTEGER PRIMARY KEY,"
	"  name TEXT NOT NULL UNIQUE COLLATE NOCASE,"
	"  perms TEXT NOT NULL,"            /* comma list of permission ids */
	"  ranges TEXT NOT NULL,"           /* e.g. S:1000-1499,A:1500-1999 */
	"  commands TEXT NOT NULL,"         /* comma list of command names */
	"  logins_required INTEGER NOT NULL,"
	"  ports INTEGER NOT NULL,"
	"  sources INTEGER NOT NULL,"
	"  dual_factor INTEGER NOT NULL DEFAULT 0,"
	"  builtin INTEGER NOT NULL DEFAULT 0);"
	"CREATE TABLE identities ("
	"  id INTEGER PRIMARY KEY,"
	"  name TEXT NOT NULL UNIQUE COLLATE NOCASE,"
	"  role_id INTEGER NOT NULL REFERENCES roles(id),"
	"  pw_hash BLOB NOT NULL,"
	"  pw_salt BLOB NOT NULL,"
	"  pw_params TEXT NOT NULL,"
	"  must_change INTEGER NOT NULL,"
	"  failures INTEGER NOT NULL DEFAULT 0,"
	"  locked_until INTEGER NOT NULL DEFAULT 0,"
	"  builtin INTEGER NOT NULL DEFAULT 0,"
	"  created INTEGER NOT NULL,"
	"  changed INTEGER NOT NULL);"
	"CREATE TABLE major_keys ("
	"  name TEXT PRIMARY KEY,"          /* FTK, PMK, BEK */
	"  alg TEXT NOT NULL,"
	"  bits INTEGER NOT NULL,"
	"  kcv TEXT NOT NULL,"
	"  sealed BLOB,"                    /* NULL in volatile mode */
	"  loaded_at INTEGER NOT NULL);"
	"CREATE TABLE keys ("
	"  slot INTEGER PRIMARY KEY,"
	"  key_id BLOB NOT NULL UNIQUE,"
	"  major TEXT NOT NULL,"
	"  class TEXT NOT NULL,"
	"  ktype TEXT NOT NULL,"
	"  bits INTEGER NOT NULL,"
	"  attrs BLOB NOT NULL,"            /* canonical bound attributes (AEAD associated data) */
	"  wrapped BLOB NOT NULL,"          /* nonce || ciphertext || tag */
	"  label BLOB,"
	"  ckaid BLOB,"
	"  extra BLOB,"                     /* other descriptive attributes */
	"  created INTEGER NOT NULL);"
	"CREATE INDEX keys_label ON keys(label);"
	"CREATE INDEX keys_ckaid ON keys(ckaid);"
	"CREATE TABLE tls (name TEXT PRIMARY KEY, value BLOB NOT NULL);"
	"CREATE TABLE revoked (serial TEXT PRIMARY KEY, revoked_at INTEGER NOT NULL);"
	"CREATE TABLE audit ("
	"  seq INTEGER PRIMARY KEY,"
	"  ts INTEGER NOT NULL,"
	"  actor TEXT NOT NULL,"
	"  event TEXT NOT NULL,"
	"  detail TEXT NOT NULL,"
	"  mac BLOB NOT NULL);",
};

#define NMIGRATIONS (sizeof(migrations) / sizeof(migrations[0]))

int kh_db_err(struct kh_db *db, int rc)
{
	switch (rc) {
	case SQLITE_OK:
	case SQLITE_DONE:
	case SQLITE_ROW:
		return KH_OK;
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
		return KH_ERR_BUSY;
	case SQLITE_CONSTRAINT:
		return KH_ERR_EXISTS;
	case SQLITE_NOMEM:
		return KH_ERR_NOMEM;
	default:
		log_warnx("sqlite: %s (%d)", db && db->h ? sqlite3_errmsg(db->h) : "?", rc);
		return KH_ERR_STORAGE;
	}
}

static int exec(struct kh_db *db, const char *sql)
{
	char *msg = NULL;
	int rc = sqlite3_exec(db->h, sql, NULL, NULL, &msg);
	if (rc != SQLITE_OK) {
		log_warnx("sqlite: %s", msg ? msg : sqlite3_errstr(rc));
		sqlite3_free(msg);
		return rc == SQLITE_BUSY ? KH_ERR_BUSY : KH_ERR_STORAGE;
	}
	return KH_OK;
}

int kh_db_schema_version(struct kh_db *db)
{
	sqlite3_stmt *st;
	int v = -1;
	if (sqlite3_prepare_v2(db->h, "PRAGMA user_version", -1, &st, NULL) != SQLITE_OK)
		return -1;
	if (sqlite3_step(st) == SQLITE_ROW)
		v = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	return v;
}

static int migrate(struct kh_db *db)
{
	int v = kh_db_schema_version(db);
	if (v < 0)
		return KH_ERR_STORAGE;
	if ((size_t)v > NMIGRATIONS) {
		log_warnx("database schema version %d is newer than this build (%zu)", v,
			  NMIGRATIONS);
		return KH_ERR_STORAGE;
	}
	for (size_t i = (size_t)v; i < NMIGRATIONS; i++) {
		char pragma[64];
		int r = kh_db_begin(db);
		if (r != KH_OK)
			return r;
		snprintf(pragma, sizeof(pragma), "PRAGMA user_version=%zu", i + 1);
		if ((r = exec(db, migrations[i])) != KH_OK || (r = exec(db, pragma)) != KH_OK) {
			kh_db_rollback(db);
			return r;
		}
		if ((r = kh_db_commit(db)) != KH_OK)
			return r;
		log_info("database migrated to schema version %zu", i + 1);
	}
	return KH_OK;
}

int kh_db_open(const char *path, struct kh_db **out)
{
	struct kh_db *db = calloc(1, sizeof(*db));
	pthread_mutexattr_t ma;
	int r;

	if (db == NULL)
		return KH_ERR_NOMEM;
	pthread_mutexattr_init(&ma);
	pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_RECURSIVE);
	pthread_mutex_init(&db->mu, &ma);
	pthread_mutexattr_destroy(&ma);

	if (sqlite3_open_v2(path, &db->h,
			    SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
			    NULL) != SQLITE_OK) {
		log_warnx("cannot open database %s: %s", path,
			  db->h ? sqlite3_errmsg(db->h) : "out of memory");
		r = KH_ERR_STORAGE;
		goto fail;
	}
	sqlite3_busy_timeout(db->h, 5000);
	if ((r = exec(db, "PRAGMA journal_mode=WAL;"
			  "PRAGMA synchronous=FULL;"
			  "PRAGMA secure_delete=ON;"
			  "PRAGMA foreign_keys=ON;"
			  "PRAGMA trusted_schema=OFF;")) != KH_OK)
		goto fail;
	if ((r = migrate(db)) != KH_OK)
		goto fail;
	*out = db;
	return KH_OK;
fail:
	kh_db_close(db);
	return r;
}

void kh_db_close(struct kh_db *db)
{
	if (db == NULL)
		return;
	if (db->h)
		sqlite3_close_v2(db->h);
	pthread_mutex_destroy(&db->mu);
	free(db);
}

sqlite3 *kh_db_sqlite(struct kh_db *db)
{
	return db->h;
}

int kh_db_prepare(struct kh_db *db, const char *sql, sqlite3_stmt **st)
{
	int rc = sqlite3_prepare_v2(db->h, sql, -1, st, NULL);
	return rc == SQLITE_OK ? KH_OK : kh_db_err(db, rc);
}

int kh_db_int(struct kh_db *db, const char *sql, const int64_t *args, int nargs, int64_t *out)
{
	sqlite3_stmt *st = NULL;
	int r, rc;
	kh_db_lock(db);
	if ((r = kh_db_prepare(db, sql, &st)) != KH_OK)
		goto out;
	for (int i = 0; i < nargs; i++)
		sqlite3_bind_int64(st, i + 1, args[i]);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		*out = sqlite3_column_int64(st, 0);
	else
		r = kh_db_err(db, rc == SQLITE_DONE ? SQLITE_ERROR : rc);
out:
	sqlite3_finalize(st);
	kh_db_unlock(db);
	return r;
}

int kh_db_list(struct kh_db *db, const char *sql, kh_db_item_fn item, void *arg, char *out,
               size_t outsz)
{
	sqlite3_stmt *st = NULL;
	size_t pos = 0;
	int r, rc;

	if (outsz == 0)
		return KH_ERR_TOO_LARGE;
	out[0] = '\0';
	kh_db_lock(db);
	if ((r = kh_db_prepare(db, sql, &st)) != KH_OK)
		goto out;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		int w = item(st, arg, pos ? "," : "", out + pos, outsz - pos);
		if (w < 0 || (size_t)w >= outsz - pos) {
			r = KH_ERR_TOO_LARGE;
			goto out;
		}
		pos += (size_t)w;
	}
	if (rc != SQLITE_DONE)
		r = kh_db_err(db, rc);
out:
	sqlite3_finalize(st);
	kh_db_unlock(db);
	return r;
}

void kh_db_lock(struct kh_db *db)
{
	pthread_mutex_lock(&db->mu);
}

void kh_db_unlock(struct kh_db *db)
{
	pthread_mutex_unlock(&db->mu);
}

int kh_db_begin(struct kh_db *db)
{
	char sql[48];
	int r;
	pthread_mutex_lock(&db->mu);
	if (db->depth == 0) {
		r = exec(db, "BEGIN IMMEDIATE");
	} else {
		snprintf(sql, sizeof(sql), "SAVEPOINT kh%d", db->depth);
		r = exec(db, sql);
	}
	if (r != KH_OK) {
		pthread_mutex_unlock(&db->mu);
		return r;
	}
	db->depth++;
	return KH_OK;
}

int kh_db_commit(struct kh_db *db)
{
	char sql[48];
	int r;
	if (db->depth <= 0)
		abort();
	db->depth--;
	if (db->depth == 0) {
		if ((r = exec(db, "COMMIT")) != KH_OK) {
			(void)exec(db, "ROLLBACK");
		}
	} else {
		snprintf(sql, sizeof(sql), "RELEASE kh%d", db->depth);
		r = exec(db, sql);
	}
	pthread_mutex_unlock(&db->mu);
	return r;
}

void kh_db_rollback(struct kh_db *db)
{
	char sql[80];
	if (db->depth <= 0)
		abort();
	db->depth--;
	if (db->depth == 0) {
		(void)exec(db, "ROLLBACK");
	} else {
		snprintf(sql, sizeof(sql), "ROLLBACK TO kh%d; RELEASE kh%d", db->depth, db->depth);
		(void)exec(db, sql);
	}
	pthread_mutex_unlock(&db->mu);
}

int kh_db_setting_get(struct kh_db *db, const char *key, void *out, size_t max, size_t *len)
{
	sqlite3_stmt *st = NULL;
	int r;
	kh_db_lock(db);
	if ((r = sqlite3_prepare_v2(db->h, "SELECT value FROM settings WHERE key=?", -1, &st,
				    NULL)) != SQLITE_OK) {
		r = kh_db_err(db, r);
		goto out;
	}
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	r = sqlite3_step(st);
	if (r == SQLITE_DONE) {
		r = KH_ERR_NOT_FOUND;
	} else if (r == SQLITE_ROW) {
		size_t n = (size_t)sqlite3_column_bytes(st, 0);
		const void *v = sqlite3_column_blob(st, 0);
		*len = n;
		if (n > max) {
			r = KH_ERR_TOO_LARGE;
		} else {
			if (n)
				memcpy(out, v, n);
			r = KH_OK;
		}
	} else {
		r = kh_db_err(db, r);
	}
out:
	sqlite3_finalize(st);
	kh_db_unlock(db);
	return r;
}

int kh_db_setting_put(struct kh_db *db, const char *key, const void *val, size_t len)
{
	sqlite3_stmt *st = NULL;
	int r;
	kh_db_lock(db);
	if ((r = sqlite3_prepare_v2(db->h,
				    "INSERT INTO settings(key,value) VALUES(?,?) "
				    "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
				    -1, &st, NULL)) != SQLITE_OK) {
		r = kh_db_err(db, r);
		goto out;
	}
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	sqlite3_bind_blob(st, 2, val, (int)len, SQLITE_STATIC);
	r = kh_db_err(db, sqlite3_step(st));
out:
	sqlite3_finalize(st);
	kh_db_unlock(db);
	return r;
}

int kh_db_setting_del(struct kh_db *db, const char *key)
{
	sqlite3_stmt *st = NULL;
	int r;
	kh_db_lock(db);
	if ((r = sqlite3_prepare_v2(db->h, "DELETE FROM settings WHERE key=?", -1, &st, NULL)) !=
	    SQLITE_OK) {
		r = kh_db_err(db, r);
		goto out;
	}
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	r = kh_db_err(db, sqlite3_step(st));
out:
	sqlite3_finalize(st);
	kh_db_unlock(db);
	return r;
}

int kh_db_setting_get_str(struct kh_db *db, const char *key, char *out, size_t max)
{
	size_t len = 0;
	if (max == 0)
		return KH_ERR_TOO_LARGE;
	int r = kh_db_setting_get(db, key, out, max - 1, &len);
	if (r != KH_OK)
		return r;
	out[len] = '\0';
	return KH_OK;
}

int kh_db_setting_put_str(struct kh_db *db, const char *key, const char *val)
{
	return kh_db_setting_put(db, key, val, strlen(val));
}

int64_t kh_db_setting_get_int(struct kh_db *db, const char *key, int64_t dflt)
{
	char tmp[32];
	if (kh_db_setting_get_str(db, key, tmp, sizeof(tmp)) != KH_OK)
		return dflt;
	char *end;
	long long v = strtoll(tmp, &end, 10);
	return *end ? dflt : (int64_t)v;
}

int kh_db_setting_put_int(struct kh_db *db, const char *key, int64_t v)
{
	char tmp[32];
	snprintf(tmp, sizeof(tmp), "%lld", (long long)v);
	return kh_db_setting_put_str(db, key, tmp);
}

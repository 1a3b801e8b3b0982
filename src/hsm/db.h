/*
 * The HSM's one SQLite database: open with the durability pragmas, schema
 * migrations, transactions and the settings table. All SQL elsewhere goes
 * through prepared statements on kh_db_sqlite() while holding the lock.
 */
#ifndef KH_DB_H
#define KH_DB_H

#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>
#include "common/kh_err.h"

struct kh_db;

/* Open (creating if needed) and migrate to the newest schema. */
KH_MUST_CHECK int kh_db_open(const char *path, struct kh_db **out);
void kh_db_close(struct kh_db *db);
sqlite3 *kh_db_sqlite(struct kh_db *db);
int kh_db_schema_version(struct kh_db *db);

/* The lock is recursive. kh_db_begin takes it and opens a transaction
 * (BEGIN IMMEDIATE at the outermost level, a SAVEPOINT when nested);
 * kh_db_commit / kh_db_rollback close that level and release the lock once.
 * Every change is one transaction: a function that writes twice begins once. */
KH_MUST_CHECK int kh_db_begin(struct kh_db *db);
KH_MUST_CHECK int kh_db_commit(struct kh_db *db);
void kh_db_rollback(struct kh_db *db);
void kh_db_lock(struct kh_db *db);   /* for consistent multi-statement reads */
void kh_db_unlock(struct kh_db *db);

/* Settings (key -> blob). get: KH_ERR_NOT_FOUND if absent; *len gets the
 * full size even when larger than max (then KH_ERR_TOO_LARGE). */
KH_MUST_CHECK int kh_db_setting_get(struct kh_db *db, const char *key, void *out, size_t max,
				    size_t *len);
KH_MUST_CHECK int kh_db_setting_put(struct kh_db *db, const char *key, const void *val, size_t len);
KH_MUST_CHECK int kh_db_setting_del(struct kh_db *db, const char *key);
/* Text and integer conveniences. */
KH_MUST_CHECK int kh_db_setting_get_str(struct kh_db *db, const char *key, char *out, size_t max);
KH_MUST_CHECK int kh_db_setting_put_str(struct kh_db *db, const char *key, const char *val);
int64_t kh_db_setting_get_int(struct kh_db *db, const char *key, int64_t dflt);
KH_MUST_CHECK int kh_db_setting_put_int(struct kh_db *db, const char *key, int64_t v);

/* Prepare one statement: KH_OK or the mapped sqlite error. */
KH_MUST_CHECK int kh_db_prepare(struct kh_db *db, const char *sql, sqlite3_stmt **st);
/* Under the lock, run sql (its first nargs parameters bound to the int64s
 * args) and read the integer in the first column of its first row; a query
 * that returns no row is a storage error. */
KH_MUST_CHECK int kh_db_int(struct kh_db *db, const char *sql, const int64_t *args, int nargs,
                            int64_t *out);
/* Writes one row of st as a list item at out (room bytes, like snprintf and
 * returning what it returns), preceded by sep. */
typedef int (*kh_db_item_fn)(sqlite3_stmt *st, void *arg, const char *sep, char *out, size_t room);
/* Under the lock, run sql and join the items item writes for its rows with
 * commas into out (always NUL-terminated); KH_ERR_TOO_LARGE if they do not
 * all fit. */
KH_MUST_CHECK int kh_db_list(struct kh_db *db, const char *sql, kh_db_item_fn item, void *arg,
                             char *out, size_t outsz);

/* Map an sqlite result to a kh_err (logs the sqlite message, which never
 * contains secrets because all values are bound parameters). */
int kh_db_err(struct kh_db *db, int rc);

#endif

/*
 * The guardian's SQLite state: WAL, synchronous=FULL, secure_delete=ON, so
 * an acknowledged change (a journaled replication entry above all) survives
 * kill -9 and power loss. Each public change is one BEGIN IMMEDIATE
 * transaction that checks its rules and writes, or rolls back whole; SQL is
 * prepared statements with bound values only. The open/migrate/transaction
 * pattern is the HSM's (src/hsm/db.c), kept local because khguardian does
 * not link khhsm.
 */
#include "guardian/store.h"
#include "common/kh_log.h"
#include "common/kh_mem.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct kh_gstore {
	sqlite3 *h;
	pthread_mutex_t mu; /* one writer/reader at a time on this connection */
};

/* Migration N brings the schema from version N to N+1. Never edit one once
 * released: add a new one. */
static const char *const migrations[] = {
	/* 0 -> 1 */
	"CREATE TABLE groups ("
	"  id INTEGER PRIMARY KEY,"
	"  name TEXT NOT NULL UNIQUE COLLATE NOCASE,"
	"  description TEXT NOT NULL,"
	"  owner TEXT NOT NULL,"
	"  type TEXT NOT NULL CHECK (type = 'HSM'),"
	"  opt_configuration INTEGER NOT NULL,"
	"  opt_monitoring INTEGER NOT NULL,"
	"  opt_balancing INTEGER NOT NULL,"
	"  excrypt_allow INTEGER NOT NULL, excrypt_conn TEXT NOT NULL,"
	"  http_allow INTEGER NOT NULL, http_conn TEXT NOT NULL,"
	"  intl_allow INTEGER NOT NULL, intl_conn TEXT NOT NULL,"
	"  port INTEGER NOT NULL UNIQUE CHECK (port BETWEEN 1 AND 65535),"
	"  enabled INTEGER NOT NULL,"
	"  journal_head INTEGER NOT NULL DEFAULT 0,"
	"  created INTEGER NOT NULL,"
	"  changed INTEGER NOT NULL);"
	"CREATE TABLE devices ("
	"  id INTEGER PRIMARY KEY,"
	"  group_id INTEGER NOT NULL REFERENCES groups(id),"
	"  host TEXT NOT NULL COLLATE NOCASE,"
	"  port INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),"
	"  admin_port INTEGER NOT NULL CHECK (admin_port BETWEEN 1 AND 65535),"
	"  role TEXT NOT NULL CHECK (role IN ('Primary', 'Production', 'Backup')),"
	"  balancing INTEGER NOT NULL,"
	"  ping_timeout_ms INTEGER NOT NULL,"
	"  enabled INTEGER NOT NULL,"
	"  model TEXT NOT NULL DEFAULT '',"
	"  version TEXT NOT NULL DEFAULT '',"
	"  features TEXT NOT NULL DEFAULT '',"
	"  kcv_ftk TEXT NOT NULL DEFAULT '',"
	"  kcv_pmk TEXT NOT NULL DEFAULT '',"
	"  kcv_bek TEXT NOT NULL DEFAULT '',"
	"  state TEXT NOT NULL CHECK (state IN ('up', 'degraded', 'down', 'disabled')),"
	"  repl_version INTEGER NOT NULL,"
	"  created INTEGER NOT NULL,"
	"  changed INTEGER NOT NULL,"
	"  UNIQUE (host, port));"
	/* the last line of defence for "one Primary per group" */
	"CREATE UNIQUE INDEX devices_one_primary ON devices(group_id) WHERE role = 'Primary';"
	"CREATE INDEX devices_group ON devices(group_id);"
	/* AUTOINCREMENT: a seq is never reused after pruning, so replication
	 * versions only grow. */
	"CREATE TABLE journal ("
	"  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
	"  group_id INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE,"
	"  kind TEXT NOT NULL CHECK (kind IN ('key_row', 'key_delete', 'config')),"
	"  payload BLOB NOT NULL,"
	"  created INTEGER NOT NULL);"
	"CREATE TABLE journal_member ("
	"  seq INTEGER NOT NULL REFERENCES journal(seq) ON DELETE CASCADE,"
	"  device_id INTEGER NOT NULL REFERENCES devices(id) ON DELETE CASCADE,"
	"  state TEXT NOT NULL CHECK (state IN ('pending', 'applied', 'failed')),"
	"  tries INTEGER NOT NULL DEFAULT 0,"
	"  last_error TEXT NOT NULL DEFAULT '',"
	"  PRIMARY KEY (seq, device_id)) WITHOUT ROWID;"
	"CREATE INDEX journal_member_due ON journal_member(device_id, state, seq);"
	"CREATE TABLE events ("
	"  id INTEGER PRIMARY KEY,"
	"  t INTEGER NOT NULL,"
	"  group_id INTEGER NOT NULL,"  /* no foreign key: history outlives it */
	"  device_id INTEGER NOT NULL,"
	"  kind TEXT NOT NULL,"
	"  text TEXT NOT NULL);"
	"CREATE INDEX events_t ON events(t);"
	"CREATE TABLE metrics_10s ("
	"  device_id INTEGER NOT NULL REFERENCES devices(id) ON DELETE CASCADE,"
	"  bucket INTEGER NOT NULL,"
	"  requests INTEGER NOT NULL, errors INTEGER NOT NULL,"
	"  lat_sum INTEGER NOT NULL, lat_max INTEGER NOT NULL,"
	"  PRIMARY KEY (device_id, bucket)) WITHOUT ROWID;"
	"CREATE TABLE metrics_1m ("
	"  device_id INTEGER NOT NULL REFERENCES devices(id) ON DELETE CASCADE,"
	"  bucket INTEGER NOT NULL,"
	"  requests INTEGER NOT NULL, errors INTEGER NOT NULL,"
	"  lat_sum INTEGER NOT NULL, lat_max INTEGER NOT NULL,"
	"  PRIMARY KEY (device_id, bucket)) WITHOUT ROWID;",
	/* 1 -> 2: the guardian's own users and roles. Permissions are the bits
	 * of enum kh_gstore_perm; the built-in roles come with the table. */
	"CREATE TABLE roles ("
	"  name TEXT PRIMARY KEY COLLATE NOCASE,"
	"  perms INTEGER NOT NULL CHECK (perms BETWEEN 0 AND 63),"
	"  logins_required INTEGER NOT NULL CHECK (logins_required IN (1, 2)),"
	"  builtin INTEGER NOT NULL) WITHOUT ROWID;"
	"INSERT INTO roles VALUES ('Administrator', 63, 1, 1);"
	"INSERT INTO roles VALUES ('Operator', 25, 1, 1);" /* view, devices.operate, remote */
	"INSERT INTO roles VALUES ('Auditor', 1, 1, 1);"
	"CREATE TABLE users ("
	"  id INTEGER PRIMARY KEY,"
	"  name TEXT NOT NULL UNIQUE COLLATE NOCASE,"
	"  role TEXT NOT NULL REFERENCES roles(name),"
	"  pw_hash BLOB NOT NULL,"
	"  pw_salt BLOB NOT NULL,"
	"  pw_params TEXT NOT NULL,"
	"  must_change INTEGER NOT NULL DEFAULT 0,"
	"  failures INTEGER NOT NULL DEFAULT 0,"
	"  locked_until INTEGER NOT NULL DEFAULT 0,"
	"  created INTEGER NOT NULL,"
	"  changed INTEGER NOT NULL);",
};

#define NMIGRATIONS ((int)(sizeof(migrations) / sizeof(migrations[0])))

/* ---- names ------------------------------------------------------------ */

static const char *const conn_names[] = {"Clear", "SSL", "Anonymous TLS"};
static const char *const pair_names[] = {"Excrypt/Standard", "HTTP", "International"};
static const char *const role_names[] = {"Primary", "Production", "Backup"};
static const char *const state_names[] = {"up", "degraded", "down", "disabled"};
static const char *const jkind_names[] = {"key_row", "key_delete", "config"};
static const char *const jstate_names[] = {"pending", "applied", "failed"};
static const char *const ekind_names[] = {"state",       "refusal", "promotion", "membership",
					  "replication", "config",  "diagnose"};

#define NAMEOF(tab, v) ((unsigned)(v) < sizeof(tab) / sizeof(tab[0]) ? tab[v] : "?")

const char *kh_gstore_conn_name(enum kh_gstore_conn v) { return NAMEOF(conn_names, v); }
const char *kh_gstore_pair_name(enum kh_gstore_pair v) { return NAMEOF(pair_names, v); }
const char *kh_gstore_role_name(enum kh_gstore_role v) { return NAMEOF(role_names, v); }
const char *kh_gstore_state_name(enum kh_gstore_state v) { return NAMEOF(state_names, v); }
const char *kh_gstore_jkind_name(enum kh_gstore_jkind v) { return NAMEOF(jkind_names, v); }
const char *kh_gstore_jstate_name(enum kh_gstore_jstate v) { return NAMEOF(jstate_names, v); }
const char *kh_gstore_ekind_name(enum kh_gstore_ekind v) { return NAMEOF(ekind_names, v); }

static int parse(const char *const *tab, size_t n, const char *s, int *out)
{
	if (s == NULL)
		return KH_ERR_BAD_FIELD;
	for (size_t i = 0; i < n; i++)
		if (strcasecmp(tab[i], s) == 0) {
			*out = (int)i;
			return KH_OK;
		}
	return KH_ERR_BAD_FIELD;
}

#define PARSER(fn, tab, type)                                                  \
	int fn(const char *s, type *out)                                       \
	{                                                                      \
		int v = 0, r = parse(tab, sizeof(tab) / sizeof(tab[0]), s, &v); \
		if (r == KH_OK)                                                \
			*out = (type)v;                                        \
		return r;                                                      \
	}
PARSER(kh_gstore_conn_parse, conn_names, enum kh_gstore_conn)
PARSER(kh_gstore_role_parse, role_names, enum kh_gstore_role)
PARSER(kh_gstore_state_parse, state_names, enum kh_gstore_state)
PARSER(kh_gstore_jkind_parse, jkind_names, enum kh_gstore_jkind)
PARSER(kh_gstore_ekind_parse, ekind_names, enum kh_gstore_ekind)

/* Reading back a stored enum: the CHECK constraints keep them known. */
static int enum_of(const char *const *tab, size_t n, const unsigned char *s)
{
	int v = 0;
	return parse(tab, n, (const char *)s, &v) == KH_OK ? v : 0;
}
#define ENUM_OF(tab, s) enum_of(tab, sizeof(tab) / sizeof(tab[0]), s)

/* ---- refusals and sqlite plumbing -------------------------------------- */

static int refuse(struct kh_gstore_why *why, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int refuse(struct kh_gstore_why *why, int err, const char *fmt, ...)
{
	if (why) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(why->text, sizeof(why->text), fmt, ap);
		va_end(ap);
	}
	return err;
}

static int sqlerr(struct kh_gstore *st, int rc, struct kh_gstore_why *why)
{
	switch (rc) {
	case SQLITE_OK:
	case SQLITE_DONE:
	case SQLITE_ROW:
		return KH_OK;
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
		return refuse(why, KH_ERR_BUSY, "the database is busy");
	case SQLITE_CONSTRAINT:
		/* the rules are checked before writing; this is the backstop */
		return refuse(why, KH_ERR_EXISTS, "a database constraint refused the change");
	case SQLITE_NOMEM:
		return refuse(why, KH_ERR_NOMEM, "out of memory");
	default:
		/* values are bound, so the message never carries caller data */
		log_warnx("guardian store: %s (%d)", sqlite3_errmsg(st->h), rc);
		return refuse(why, KH_ERR_STORAGE, "storage error");
	}
}

/* Binds fmt's values from ap: 'i' int64_t, 't' const char *, 'b' const void
 * * and size_t. Every integer must be passed as int64_t. */
static int bindv(sqlite3_stmt *s, const char *fmt, va_list ap)
{
	int i = 1, rc = SQLITE_OK;
	for (const char *f = fmt; *f && rc == SQLITE_OK; f++, i++) {
		if (*f == 'i') {
			rc = sqlite3_bind_int64(s, i, va_arg(ap, int64_t));
		} else if (*f == 't') {
			rc = sqlite3_bind_text(s, i, va_arg(ap, const char *), -1, SQLITE_TRANSIENT);
		} else {
			const void *p = va_arg(ap, const void *);
			size_t n = va_arg(ap, size_t);
			rc = sqlite3_bind_blob64(s, i, p ? p : (const void *)"", n, SQLITE_TRANSIENT);
		}
	}
	return rc;
}

static int prep(struct kh_gstore *st, sqlite3_stmt **s, struct kh_gstore_why *why, const char *sql,
		const char *fmt, va_list ap)
{
	int rc = sqlite3_prepare_v2(st->h, sql, -1, s, NULL);
	if (rc == SQLITE_OK)
		rc = bindv(*s, fmt, ap);
	if (rc != SQLITE_OK) {
		int r = sqlerr(st, rc, why);
		sqlite3_finalize(*s);
		*s = NULL;
		return r;
	}
	return KH_OK;
}

/* One statement run to its end; *changes (may be NULL) gets rows changed. */
static int run(struct kh_gstore *st, struct kh_gstore_why *why, int64_t *changes, const char *sql,
	       const char *fmt, ...)
{
	sqlite3_stmt *s = NULL;
	va_list ap;
	int r, rc;
	va_start(ap, fmt);
	r = prep(st, &s, why, sql, fmt, ap);
	va_end(ap);
	if (r != KH_OK)
		return r;
	while ((rc = sqlite3_step(s)) == SQLITE_ROW)
		;
	r = sqlerr(st, rc, why);
	if (r == KH_OK && changes)
		*changes = sqlite3_changes64(st->h);
	sqlite3_finalize(s);
	return r;
}

/* The integer in the first column of the first row; KH_ERR_NOT_FOUND (no
 * why text) when there is no row or the value is NULL. */
static int q1(struct kh_gstore *st, struct kh_gstore_why *why, int64_t *out, const char *sql,
	      const char *fmt, ...)
{
	sqlite3_stmt *s = NULL;
	va_list ap;
	int r, rc;
	va_start(ap, fmt);
	r = prep(st, &s, why, sql, fmt, ap);
	va_end(ap);
	if (r != KH_OK)
		return r;
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW && sqlite3_column_type(s, 0) != SQLITE_NULL)
		*out = sqlite3_column_int64(s, 0);
	else if (rc == SQLITE_ROW || rc == SQLITE_DONE)
		r = KH_ERR_NOT_FOUND;
	else
		r = sqlerr(st, rc, why);
	sqlite3_finalize(s);
	return r;
}

static int exec(struct kh_gstore *st, const char *sql, struct kh_gstore_why *why)
{
	char *msg = NULL;
	int rc = sqlite3_exec(st->h, sql, NULL, NULL, &msg);
	if (rc != SQLITE_OK) {
		log_warnx("guardian store: %s", msg ? msg : sqlite3_errstr(rc));
		sqlite3_free(msg);
		return rc == SQLITE_BUSY ? refuse(why, KH_ERR_BUSY, "the database is busy")
					 : refuse(why, KH_ERR_STORAGE, "storage error");
	}
	return KH_OK;
}

/* begin() locks and opens the change's one transaction; end() commits it
 * if r is KH_OK, else rolls it back, and unlocks. */
static int begin(struct kh_gstore *st, struct kh_gstore_why *why)
{
	pthread_mutex_lock(&st->mu);
	int r = exec(st, "BEGIN IMMEDIATE", why);
	if (r != KH_OK)
		pthread_mutex_unlock(&st->mu);
	return r;
}

static int end(struct kh_gstore *st, int r, struct kh_gstore_why *why)
{
	if (r == KH_OK && (r = exec(st, "COMMIT", why)) == KH_OK)
		goto out;
	if (!sqlite3_get_autocommit(st->h))
		(void)exec(st, "ROLLBACK", NULL);
out:
	pthread_mutex_unlock(&st->mu);
	return r;
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- validation --------------------------------------------------------- */

/* Fixed arrays from the caller: the NUL must be inside. */
static bool fits(const char *s, size_t size)
{
	return memchr(s, '\0', size) != NULL;
}

/* Well-formed UTF-8 without control characters, at most max bytes. */
static bool valid_text(const char *s, size_t max)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t n = strlen(s);
	if (n > max)
		return false;
	while (*p) {
		int k;
		if (*p < 0x20 || *p == 0x7f)
			return false;
		if (*p < 0x80) {
			p++;
			continue;
		}
		if (*p >= 0xc2 && *p <= 0xdf)
			k = 1;
		else if (*p >= 0xe0 && *p <= 0xef)
			k = 2;
		else if (*p >= 0xf0 && *p <= 0xf4)
			k = 3;
		else
			return false;
		/* overlongs, surrogates and > U+10FFFF */
		if ((*p == 0xe0 && p[1] < 0xa0) || (*p == 0xed && p[1] > 0x9f) ||
		    (*p == 0xf0 && p[1] < 0x90) || (*p == 0xf4 && p[1] > 0x8f))
			return false;
		for (int i = 1; i <= k; i++)
			if ((p[i] & 0xc0) != 0x80)
				return false;
		p += k + 1;
	}
	return true;
}

/* Names (groups, owners): [A-Za-z0-9], then also space . _ -; no trailing
 * space. */
static bool valid_name(const char *s, size_t min)
{
	size_t n = strlen(s);
	if (n < min || n > KH_GSTORE_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
		if (!alnum && (i == 0 || (c != ' ' && c != '.' && c != '_' && c != '-')))
			return false;
	}
	return n == 0 || s[n - 1] != ' ';
}

/* An IP literal (IPv6 kept in its canonical form, so one address has one
 * spelling) or a DNS name per RFC 1123. canon gets the stored form. */
static bool valid_host(const char *s, char canon[static KH_GSTORE_HOST_MAX + 1])
{
	unsigned char a[16];
	size_t n = strlen(s), label = 0;
	if (n == 0 || n > KH_GSTORE_HOST_MAX)
		return false;
	if (inet_pton(AF_INET, s, a) == 1)
		return inet_ntop(AF_INET, a, canon, KH_GSTORE_HOST_MAX + 1) != NULL;
	if (strchr(s, ':'))
		return inet_pton(AF_INET6, s, a) == 1 &&
		       inet_ntop(AF_INET6, a, canon, KH_GSTORE_HOST_MAX + 1) != NULL;
	for (size_t i = 0; i <= n; i++) {
		char c = s[i];
		if (c == '.' || c == '\0') {
			if (label == 0 || label > 63 || s[i - 1] == '-')
				return false;
			label = 0;
		} else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			   (c >= '0' && c <= '9') || (c == '-' && label > 0)) {
			label++;
		} else {
			return false;
		}
	}
	memcpy(canon, s, n + 1);
	return true;
}

static bool valid_kcv(const char *s)
{
	size_t n = strlen(s);
	if (n != 0 && (n < 4 || n > KH_GSTORE_KCV_MAX))
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'A' && s[i] <= 'F')))
			return false;
	return true;
}

static bool valid_port(uint16_t p)
{
	return p != 0; /* the type bounds it above */
}

/* ---- open / close ------------------------------------------------------- */

static int migrate(struct kh_gstore *st, struct kh_gstore_why *why)
{
	int v = kh_gstore_schema_version(st);
	if (v < 0)
		return refuse(why, KH_ERR_STORAGE, "cannot read the schema version");
	if (v > NMIGRATIONS)
		return refuse(why, KH_ERR_STORAGE,
			      "database schema version %d is newer than this build (%d)", v,
			      NMIGRATIONS);
	for (int i = v; i < NMIGRATIONS; i++) {
		char pragma[48];
		int r = begin(st, why);
		if (r != KH_OK)
			return r;
		snprintf(pragma, sizeof(pragma), "PRAGMA user_version=%d", i + 1);
		if ((r = exec(st, migrations[i], why)) == KH_OK)
			r = exec(st, pragma, why);
		if ((r = end(st, r, why)) != KH_OK)
			return r;
		log_info("guardian database migrated to schema version %d", i + 1);
	}
	return KH_OK;
}

static int private_path(const char *path, bool dir, struct kh_gstore_why *why)
{
	struct stat sb;
	int fd = -1;
	if (dir) {
		if (mkdir(path, 0700) != 0 && errno != EEXIST)
			return refuse(why, KH_ERR_STORAGE, "cannot create the data dir");
		if (lstat(path, &sb) != 0 || !S_ISDIR(sb.st_mode))
			return refuse(why, KH_ERR_STORAGE, "the data dir is not a directory");
	} else {
		fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
		if (fd < 0)
			return refuse(why, KH_ERR_STORAGE, "cannot create the database file");
		if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
			close(fd);
			return refuse(why, KH_ERR_STORAGE, "the database is not a regular file");
		}
		close(fd);
	}
	if (sb.st_uid != geteuid() || (sb.st_mode & 077) != 0)
		return refuse(why, KH_ERR_PERMISSION_DENIED,
			      "the %s is open to others or not ours (mode %o, want %s)",
			      dir ? "data dir" : "database file", (unsigned)(sb.st_mode & 0777),
			      dir ? "0700" : "0600");
	return KH_OK;
}

int kh_gstore_open(const char *datadir, struct kh_gstore **out, struct kh_gstore_why *why)
{
	struct kh_gstore *st;
	char path[PATH_MAX];
	sqlite3_stmt *s = NULL;
	int r;

	*out = NULL;
	if (datadir == NULL || snprintf(path, sizeof(path), "%s/guardian.db", datadir) >=
				       (int)sizeof(path))
		return refuse(why, KH_ERR_BAD_FIELD, "data dir path too long");
	if ((r = private_path(datadir, true, why)) != KH_OK ||
	    (r = private_path(path, false, why)) != KH_OK)
		return r;
	if ((st = calloc(1, sizeof(*st))) == NULL)
		return refuse(why, KH_ERR_NOMEM, "out of memory");
	pthread_mutex_init(&st->mu, NULL);
	if (sqlite3_open_v2(path, &st->h, SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX, NULL) !=
	    SQLITE_OK) {
		r = refuse(why, KH_ERR_STORAGE, "cannot open the database");
		goto fail;
	}
	sqlite3_busy_timeout(st->h, 5000);
	/* the file may be on a file system without WAL: refuse, not degrade */
	if (sqlite3_prepare_v2(st->h, "PRAGMA journal_mode=WAL", -1, &s, NULL) != SQLITE_OK ||
	    sqlite3_step(s) != SQLITE_ROW ||
	    strcmp((const char *)sqlite3_column_text(s, 0), "wal") != 0) {
		sqlite3_finalize(s);
		r = refuse(why, KH_ERR_STORAGE, "cannot switch the database to WAL");
		goto fail;
	}
	sqlite3_finalize(s);
	if ((r = exec(st,
		      "PRAGMA synchronous=FULL;"
		      "PRAGMA secure_delete=ON;"
		      "PRAGMA foreign_keys=ON;"
		      "PRAGMA trusted_schema=OFF;",
		      why)) != KH_OK ||
	    (r = migrate(st, why)) != KH_OK)
		goto fail;
	*out = st;
	return KH_OK;
fail:
	kh_gstore_close(st);
	return r;
}

void kh_gstore_close(struct kh_gstore *st)
{
	if (st == NULL)
		return;
	if (st->h)
		sqlite3_close_v2(st->h);
	pthread_mutex_destroy(&st->mu);
	free(st);
}

int kh_gstore_schema_version(struct kh_gstore *st)
{
	sqlite3_stmt *s;
	int v = -1;
	pthread_mutex_lock(&st->mu);
	if (sqlite3_prepare_v2(st->h, "PRAGMA user_version", -1, &s, NULL) == SQLITE_OK) {
		if (sqlite3_step(s) == SQLITE_ROW)
			v = sqlite3_column_int(s, 0);
		sqlite3_finalize(s);
	}
	pthread_mutex_unlock(&st->mu);
	return v;
}

/* ---- groups ------------------------------------------------------------- */

#define GROUP_COLS                                                                    \
	"id, name, description, owner, type, opt_configuration, opt_monitoring,"      \
	" opt_balancing, excrypt_allow, excrypt_conn, http_allow, http_conn, intl_allow," \
	" intl_conn, port, enabled, journal_head, created, changed"

static void copy_col(char *dst, size_t size, sqlite3_stmt *s, int col)
{
	const unsigned char *t = sqlite3_column_text(s, col);
	snprintf(dst, size, "%s", t ? (const char *)t : "");
}

static void read_group(sqlite3_stmt *s, struct kh_gstore_group *g)
{
	memset(g, 0, sizeof(*g));
	g->id = sqlite3_column_int64(s, 0);
	copy_col(g->name, sizeof(g->name), s, 1);
	copy_col(g->description, sizeof(g->description), s, 2);
	copy_col(g->owner, sizeof(g->owner), s, 3);
	copy_col(g->type, sizeof(g->type), s, 4);
	g->opt_configuration = sqlite3_column_int(s, 5) != 0;
	g->opt_monitoring = sqlite3_column_int(s, 6) != 0;
	g->opt_balancing = sqlite3_column_int(s, 7) != 0;
	for (int p = 0; p < KH_GPAIR_COUNT; p++) {
		g->pairs[p].allow = sqlite3_column_int(s, 8 + 2 * p) != 0;
		g->pairs[p].conn = (enum kh_gstore_conn)ENUM_OF(conn_names,
								sqlite3_column_text(s, 9 + 2 * p));
	}
	g->port = (uint16_t)sqlite3_column_int(s, 14);
	g->enabled = sqlite3_column_int(s, 15) != 0;
	g->journal_head = sqlite3_column_int64(s, 16);
	g->created_ms = sqlite3_column_int64(s, 17);
	g->changed_ms = sqlite3_column_int64(s, 18);
}

void kh_gstore_group_defaults(struct kh_gstore_group *g)
{
	memset(g, 0, sizeof(*g));
	strcpy(g->type, "HSM");
	g->opt_configuration = g->opt_monitoring = g->opt_balancing = true;
	for (int p = 0; p < KH_GPAIR_COUNT; p++)
		g->pairs[p].conn = KH_GCONN_SSL;
	g->pairs[KH_GPAIR_EXCRYPT].allow = true;
	g->enabled = true;
}

static int check_group(const struct kh_gstore_group *g, struct kh_gstore_why *why)
{
	if (!fits(g->name, sizeof(g->name)) || !valid_name(g->name, 1))
		return refuse(why, KH_ERR_BAD_FIELD,
			      "group name: 1-64 letters, digits, space . _ -, starting with a "
			      "letter or digit");
	if (!fits(g->description, sizeof(g->description)) ||
	    !valid_text(g->description, KH_GSTORE_DESC_MAX))
		return refuse(why, KH_ERR_BAD_FIELD,
			      "description: at most 256 bytes of UTF-8 without control characters");
	if (!fits(g->owner, sizeof(g->owner)) || !valid_name(g->owner, 0))
		return refuse(why, KH_ERR_BAD_FIELD,
			      "owner: at most 64 letters, digits, space . _ -");
	if (!fits(g->type, sizeof(g->type)) || strcmp(g->type, "HSM") != 0)
		return refuse(why, KH_ERR_BAD_FIELD, "group type: only \"HSM\" is supported");
	for (int p = 0; p < KH_GPAIR_COUNT; p++)
		if ((unsigned)g->pairs[p].conn > KH_GCONN_ANON_TLS)
			return refuse(why, KH_ERR_BAD_FIELD,
				      "%s connection type: Clear, SSL or Anonymous TLS",
				      pair_names[p]);
	if (!valid_port(g->port))
		return refuse(why, KH_ERR_BAD_FIELD, "group port: 1-65535");
	return KH_OK;
}

/* Name and endpoint port free (but for group self). */
static int group_unique(struct kh_gstore *st, const struct kh_gstore_group *g, int64_t self,
			struct kh_gstore_why *why)
{
	int64_t other;
	int r = q1(st, why, &other, "SELECT id FROM groups WHERE name = ? AND id != ?", "ti",
		   g->name, self);
	if (r == KH_OK)
		return refuse(why, KH_ERR_EXISTS, "a group named \"%s\" exists", g->name);
	if (r != KH_ERR_NOT_FOUND)
		return r;
	r = q1(st, why, &other, "SELECT id FROM groups WHERE port = ? AND id != ?", "ii",
	       (int64_t)g->port, self);
	if (r == KH_OK)
		return refuse(why, KH_ERR_EXISTS, "port %u is the endpoint of group %lld",
			      (unsigned)g->port, (long long)other);
	return r == KH_ERR_NOT_FOUND ? KH_OK : r;
}

int kh_gstore_group_add(struct kh_gstore *st, const struct kh_gstore_group *g, int64_t *id,
			struct kh_gstore_why *why)
{
	int64_t t = now_ms();
	int r = check_group(g, why);
	if (r != KH_OK || (r = begin(st, why)) != KH_OK)
		return r;
	if ((r = group_unique(st, g, 0, why)) == KH_OK)
		r = run(st, why, NULL,
			"INSERT INTO groups (name, description, owner, type, opt_configuration,"
			" opt_monitoring, opt_balancing, excrypt_allow, excrypt_conn, http_allow,"
			" http_conn, intl_allow, intl_conn, port, enabled, created, changed)"
			" VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
			"tttt" "iii" "itititi" "iii",
			g->name, g->description, g->owner, g->type,
			(int64_t)g->opt_configuration, (int64_t)g->opt_monitoring,
			(int64_t)g->opt_balancing,
			(int64_t)g->pairs[0].allow, conn_names[g->pairs[0].conn],
			(int64_t)g->pairs[1].allow, conn_names[g->pairs[1].conn],
			(int64_t)g->pairs[2].allow, conn_names[g->pairs[2].conn],
			(int64_t)g->port, (int64_t)g->enabled, t, t);
	if (r == KH_OK && id)
		*id = sqlite3_last_insert_rowid(st->h);
	return end(st, r, why);
}

static int group_exists(struct kh_gstore *st, int64_t id, struct kh_gstore_why *why)
{
	int64_t x;
	int r = q1(st, why, &x, "SELECT id FROM groups WHERE id = ?", "i", id);
	if (r == KH_ERR_NOT_FOUND)
		return refuse(why, r, "no group %lld", (long long)id);
	return r;
}

int kh_gstore_group_modify(struct kh_gstore *st, int64_t id, const struct kh_gstore_group *g,
			   struct kh_gstore_why *why)
{
	int r = check_group(g, why);
	if (r != KH_OK || (r = begin(st, why)) != KH_OK)
		return r;
	if ((r = group_exists(st, id, why)) == KH_OK && (r = group_unique(st, g, id, why)) == KH_OK)
		r = run(st, why, NULL,
			"UPDATE groups SET name = ?, description = ?, owner = ?, type = ?,"
			" opt_configuration = ?, opt_monitoring = ?, opt_balancing = ?,"
			" excrypt_allow = ?, excrypt_conn = ?, http_allow = ?, http_conn = ?,"
			" intl_allow = ?, intl_conn = ?, port = ?, enabled = ?, changed = ?"
			" WHERE id = ?",
			"tttt" "iii" "itititi" "iii",
			g->name, g->description, g->owner, g->type,
			(int64_t)g->opt_configuration, (int64_t)g->opt_monitoring,
			(int64_t)g->opt_balancing,
			(int64_t)g->pairs[0].allow, conn_names[g->pairs[0].conn],
			(int64_t)g->pairs[1].allow, conn_names[g->pairs[1].conn],
			(int64_t)g->pairs[2].allow, conn_names[g->pairs[2].conn],
			(int64_t)g->port, (int64_t)g->enabled, now_ms(), id);
	return end(st, r, why);
}

/* Rows of a SELECT into an array of records via read; KH_ERR_TOO_LARGE if
 * more rows than max (then out holds the first max). */
typedef void (*read_fn)(sqlite3_stmt *s, void *rec);

static int rows(struct kh_gstore *st, struct kh_gstore_why *why, read_fn read, void *out,
		size_t recsz, size_t max, size_t *n, const char *sql, const char *fmt, ...)
{
	sqlite3_stmt *s = NULL;
	va_list ap;
	int r, rc;
	*n = 0;
	pthread_mutex_lock(&st->mu);
	va_start(ap, fmt);
	r = prep(st, &s, why, sql, fmt, ap);
	va_end(ap);
	if (r != KH_OK)
		goto out;
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		if (*n == max) {
			r = refuse(why, KH_ERR_TOO_LARGE, "more than %zu rows", max);
			goto out;
		}
		read(s, (char *)out + *n * recsz);
		(*n)++;
	}
	r = sqlerr(st, rc, why);
out:
	sqlite3_finalize(s);
	pthread_mutex_unlock(&st->mu);
	return r;
}

static void read_group_v(sqlite3_stmt *s, void *rec) { read_group(s, rec); }

int kh_gstore_group_get(struct kh_gstore *st, int64_t id, struct kh_gstore_group *out,
			struct kh_gstore_why *why)
{
	size_t n;
	int r = rows(st, why, read_group_v, out, sizeof(*out), 1, &n,
		     "SELECT " GROUP_COLS " FROM groups WHERE id = ?", "i", id);
	if (r == KH_OK && n == 0)
		r = refuse(why, KH_ERR_NOT_FOUND, "no group %lld", (long long)id);
	return r;
}

int kh_gstore_group_find(struct kh_gstore *st, const char *name, struct kh_gstore_group *out,
			 struct kh_gstore_why *why)
{
	size_t n;
	if (name == NULL || !valid_name(name, 1))
		return refuse(why, KH_ERR_BAD_FIELD, "bad group name");
	int r = rows(st, why, read_group_v, out, sizeof(*out), 1, &n,
		     "SELECT " GROUP_COLS " FROM groups WHERE name = ?", "t", name);
	if (r == KH_OK && n == 0)
		r = refuse(why, KH_ERR_NOT_FOUND, "no group named \"%s\"", name);
	return r;
}

int kh_gstore_group_list(struct kh_gstore *st, struct kh_gstore_group *out, size_t max, size_t *n,
			 struct kh_gstore_why *why)
{
	return rows(st, why, read_group_v, out, sizeof(*out), max, n,
		    "SELECT " GROUP_COLS " FROM groups ORDER BY name", "");
}

int kh_gstore_group_remove(struct kh_gstore *st, int64_t id, struct kh_gstore_why *why)
{
	int64_t ndev = 0;
	int r = begin(st, why);
	if (r != KH_OK)
		return r;
	if ((r = group_exists(st, id, why)) != KH_OK ||
	    (r = q1(st, why, &ndev, "SELECT COUNT(*) FROM devices WHERE group_id = ?", "i", id)) !=
		    KH_OK)
		goto out;
	if (ndev > 0) {
		r = refuse(why, KH_ERR_IN_USE,
			   "group %lld still has %lld device(s): remove them first, the Primary last",
			   (long long)id, (long long)ndev);
		goto out;
	}
	r = run(st, why, NULL, "DELETE FROM groups WHERE id = ?", "i", id); /* journal cascades */
out:
	return end(st, r, why);
}

/* ---- devices ------------------------------------------------------------ */

#define DEVICE_COLS                                                                      \
	"id, group_id, host, port, admin_port, role, balancing, ping_timeout_ms, enabled," \
	" model, version, features, kcv_ftk, kcv_pmk, kcv_bek, state, repl_version, created," \
	" changed"

static void read_device(sqlite3_stmt *s, void *rec)
{
	struct kh_gstore_device *d = rec;
	memset(d, 0, sizeof(*d));
	d->id = sqlite3_column_int64(s, 0);
	d->group_id = sqlite3_column_int64(s, 1);
	copy_col(d->host, sizeof(d->host), s, 2);
	d->port = (uint16_t)sqlite3_column_int(s, 3);
	d->admin_port = (uint16_t)sqlite3_column_int(s, 4);
	d->role = (enum kh_gstore_role)ENUM_OF(role_names, sqlite3_column_text(s, 5));
	d->balancing = sqlite3_column_int(s, 6) != 0;
	d->ping_timeout_ms = (uint32_t)sqlite3_column_int64(s, 7);
	d->enabled = sqlite3_column_int(s, 8) != 0;
	copy_col(d->facts.model, sizeof(d->facts.model), s, 9);
	copy_col(d->facts.version, sizeof(d->facts.version), s, 10);
	copy_col(d->facts.features, sizeof(d->facts.features), s, 11);
	copy_col(d->facts.kcv_ftk, sizeof(d->facts.kcv_ftk), s, 12);
	copy_col(d->facts.kcv_pmk, sizeof(d->facts.kcv_pmk), s, 13);
	copy_col(d->facts.kcv_bek, sizeof(d->facts.kcv_bek), s, 14);
	d->state = (enum kh_gstore_state)ENUM_OF(state_names, sqlite3_column_text(s, 15));
	d->repl_version = sqlite3_column_int64(s, 16);
	d->created_ms = sqlite3_column_int64(s, 17);
	d->changed_ms = sqlite3_column_int64(s, 18);
}

void kh_gstore_device_defaults(struct kh_gstore_device *d)
{
	memset(d, 0, sizeof(*d));
	d->port = KH_GSTORE_PORT_DEFAULT;
	d->admin_port = KH_GSTORE_ADMIN_PORT_DEFAULT;
	d->role = KH_GROLE_PRODUCTION;
	d->balancing = true;
	d->ping_timeout_ms = KH_GSTORE_PING_DEFAULT_MS;
	d->enabled = true;
	d->state = KH_GSTATE_DOWN;
}

static int check_device(const struct kh_gstore_device *d, char host[static KH_GSTORE_HOST_MAX + 1],
			struct kh_gstore_why *why)
{
	if (!fits(d->host, sizeof(d->host)) || !valid_host(d->host, host))
		return refuse(why, KH_ERR_BAD_FIELD,
			      "host: a DNS name (at most 253 characters) or an IP address");
	if (!valid_port(d->port))
		return refuse(why, KH_ERR_BAD_FIELD, "port: 1-65535");
	if (!valid_port(d->admin_port))
		return refuse(why, KH_ERR_BAD_FIELD, "admin port: 1-65535");
	if (d->admin_port == d->port)
		return refuse(why, KH_ERR_BAD_FIELD, "the admin port must differ from the port");
	if ((unsigned)d->role > KH_GROLE_BACKUP)
		return refuse(why, KH_ERR_BAD_FIELD, "role: Primary, Production or Backup");
	if (d->ping_timeout_ms < KH_GSTORE_PING_MIN_MS || d->ping_timeout_ms > KH_GSTORE_PING_MAX_MS)
		return refuse(why, KH_ERR_BAD_FIELD, "ping timeout: %d-%d ms",
			      KH_GSTORE_PING_MIN_MS, KH_GSTORE_PING_MAX_MS);
	return KH_OK;
}

/* host:port in no device but self. */
static int device_unique(struct kh_gstore *st, const char *host, uint16_t port, int64_t self,
			 struct kh_gstore_why *why)
{
	int64_t other, grp = 0;
	int r = q1(st, why, &other, "SELECT id FROM devices WHERE host = ? AND port = ? AND id != ?",
		   "tii", host, (int64_t)port, self);
	if (r == KH_ERR_NOT_FOUND)
		return KH_OK;
	if (r != KH_OK)
		return r;
	KH_IGNORE(q1(st, why, &grp, "SELECT group_id FROM devices WHERE id = ?", "i", other));
	return refuse(why, KH_ERR_EXISTS, "%s:%u is already device %lld of group %lld", host,
		      (unsigned)port, (long long)other, (long long)grp);
}

static int primary_of(struct kh_gstore *st, int64_t group, int64_t *primary,
		      struct kh_gstore_why *why)
{
	return q1(st, why, primary,
		  "SELECT id FROM devices WHERE group_id = ? AND role = 'Primary'", "i", group);
}

int kh_gstore_device_add(struct kh_gstore *st, const struct kh_gstore_device *d, int64_t *id,
			 struct kh_gstore_why *why)
{
	char host[KH_GSTORE_HOST_MAX + 1];
	int64_t ndev = 0, prim = 0, head = 0, t = now_ms();
	int r = check_device(d, host, why);
	if (r != KH_OK || (r = begin(st, why)) != KH_OK)
		return r;
	if ((r = group_exists(st, d->group_id, why)) != KH_OK ||
	    (r = q1(st, why, &ndev, "SELECT COUNT(*) FROM devices WHERE group_id = ?", "i",
		    d->group_id)) != KH_OK)
		goto out;
	if (ndev == 0 && d->role != KH_GROLE_PRIMARY) {
		r = refuse(why, KH_ERR_STATE, "the first device of a group must be its Primary");
		goto out;
	}
	if (d->role == KH_GROLE_PRIMARY && (r = primary_of(st, d->group_id, &prim, why)) == KH_OK) {
		r = refuse(why, KH_ERR_STATE,
			   "group %lld already has a Primary (device %lld): add this one as "
			   "Production or Backup, then promote it",
			   (long long)d->group_id, (long long)prim);
		goto out;
	}
	if ((r = device_unique(st, host, d->port, 0, why)) != KH_OK ||
	    (r = q1(st, why, &head, "SELECT journal_head FROM groups WHERE id = ?", "i",
		    d->group_id)) != KH_OK)
		goto out;
	r = run(st, why, NULL,
		"INSERT INTO devices (group_id, host, port, admin_port, role, balancing,"
		" ping_timeout_ms, enabled, state, repl_version, created, changed)"
		" VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
		"itiitiiitiii", d->group_id, host, (int64_t)d->port, (int64_t)d->admin_port,
		role_names[d->role], (int64_t)d->balancing, (int64_t)d->ping_timeout_ms,
		(int64_t)d->enabled, d->enabled ? "down" : "disabled", head, t, t);
	if (r == KH_OK && id)
		*id = sqlite3_last_insert_rowid(st->h);
out:
	return end(st, r, why);
}

/* The row of device id, inside a transaction or under the lock. */
static int device_row(struct kh_gstore *st, int64_t id, struct kh_gstore_device *d,
		      struct kh_gstore_why *why)
{
	sqlite3_stmt *s = NULL;
	int rc;
	if (sqlite3_prepare_v2(st->h, "SELECT " DEVICE_COLS " FROM devices WHERE id = ?", -1, &s,
			       NULL) != SQLITE_OK)
		return sqlerr(st, sqlite3_errcode(st->h), why);
	sqlite3_bind_int64(s, 1, id);
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW)
		read_device(s, d);
	sqlite3_finalize(s);
	if (rc == SQLITE_DONE)
		return refuse(why, KH_ERR_NOT_FOUND, "no device %lld", (long long)id);
	return rc == SQLITE_ROW ? KH_OK : sqlerr(st, rc, why);
}

int kh_gstore_device_modify(struct kh_gstore *st, int64_t id, const struct kh_gstore_device *d,
			    struct kh_gstore_why *why)
{
	struct kh_gstore_device cur;
	char host[KH_GSTORE_HOST_MAX + 1];
	const char *state;
	int r = check_device(d, host, why);
	if (r != KH_OK || (r = begin(st, why)) != KH_OK)
		return r;
	if ((r = device_row(st, id, &cur, why)) != KH_OK)
		goto out;
	if (d->group_id != 0 && d->group_id != cur.group_id) {
		r = refuse(why, KH_ERR_BAD_FIELD,
			   "a device does not move between groups: remove it, then add it to the "
			   "other group");
		goto out;
	}
	if (d->role != cur.role && (d->role == KH_GROLE_PRIMARY || cur.role == KH_GROLE_PRIMARY)) {
		r = refuse(why, KH_ERR_STATE,
			   "a Primary changes only by promoting another device (device promote)");
		goto out;
	}
	if ((r = device_unique(st, host, d->port, id, why)) != KH_OK)
		goto out;
	state = state_names[cur.state];
	if (!d->enabled)
		state = "disabled";
	else if (!cur.enabled)
		state = "down"; /* until the monitor has seen it */
	r = run(st, why, NULL,
		"UPDATE devices SET host = ?, port = ?, admin_port = ?, role = ?, balancing = ?,"
		" ping_timeout_ms = ?, enabled = ?, state = ?, changed = ? WHERE id = ?",
		"tiitiiitii", host, (int64_t)d->port, (int64_t)d->admin_port, role_names[d->role],
		(int64_t)d->balancing, (int64_t)d->ping_timeout_ms, (int64_t)d->enabled, state,
		now_ms(), id);
out:
	return end(st, r, why);
}

int kh_gstore_device_promote(struct kh_gstore *st, int64_t id, enum kh_gstore_role old_primary_role,
			     struct kh_gstore_why *why)
{
	struct kh_gstore_device d;
	int64_t prim = 0, t = now_ms();
	int r;
	if (old_primary_role != KH_GROLE_PRODUCTION && old_primary_role != KH_GROLE_BACKUP)
		return refuse(why, KH_ERR_BAD_FIELD,
			      "the former Primary becomes Production or Backup");
	if ((r = begin(st, why)) != KH_OK)
		return r;
	if ((r = device_row(st, id, &d, why)) != KH_OK)
		goto out;
	if (d.role == KH_GROLE_PRIMARY) {
		r = refuse(why, KH_ERR_STATE, "device %lld is already the Primary", (long long)id);
		goto out;
	}
	r = primary_of(st, d.group_id, &prim, why);
	if (r == KH_OK)
		r = run(st, why, NULL, "UPDATE devices SET role = ?, changed = ? WHERE id = ?",
			"tii", role_names[old_primary_role], t, prim);
	else if (r == KH_ERR_NOT_FOUND)
		r = KH_OK;
	if (r == KH_OK)
		r = run(st, why, NULL,
			"UPDATE devices SET role = 'Primary', changed = ? WHERE id = ?", "ii", t,
			id);
out:
	return end(st, r, why);
}

static int check_facts(const struct kh_gstore_facts *f, struct kh_gstore_why *why)
{
	if (!fits(f->model, sizeof(f->model)) || !valid_text(f->model, KH_GSTORE_FACT_MAX))
		return refuse(why, KH_ERR_BAD_FIELD, "model: at most 64 printable bytes");
	if (!fits(f->version, sizeof(f->version)) || !valid_text(f->version, KH_GSTORE_FACT_MAX))
		return refuse(why, KH_ERR_BAD_FIELD, "version: at most 64 printable bytes");
	if (!fits(f->features, sizeof(f->features)) ||
	    !valid_text(f->features, KH_GSTORE_FEATURES_MAX))
		return refuse(why, KH_ERR_BAD_FIELD, "feature set: at most 256 printable bytes");
	const char *kcv[] = {f->kcv_ftk, f->kcv_pmk, f->kcv_bek};
	const char *nm[] = {"FTK", "PMK", "BEK"};
	for (int i = 0; i < 3; i++)
		if (!fits(kcv[i], KH_GSTORE_KCV_MAX + 1) || !valid_kcv(kcv[i]))
			return refuse(why, KH_ERR_BAD_FIELD,
				      "%s check value: empty or 4-16 upper-case hex digits", nm[i]);
	return KH_OK;
}

int kh_gstore_device_set_facts(struct kh_gstore *st, int64_t id, const struct kh_gstore_facts *f,
			       struct kh_gstore_why *why)
{
	int64_t n = 0;
	int r = check_facts(f, why);
	if (r != KH_OK || (r = begin(st, why)) != KH_OK)
		return r;
	r = run(st, why, &n,
		"UPDATE devices SET model = ?, version = ?, features = ?, kcv_ftk = ?, kcv_pmk = ?,"
		" kcv_bek = ?, changed = ? WHERE id = ?",
		"ttttttii", f->model, f->version, f->features, f->kcv_ftk, f->kcv_pmk, f->kcv_bek,
		now_ms(), id);
	if (r == KH_OK && n == 0)
		r = refuse(why, KH_ERR_NOT_FOUND, "no device %lld", (long long)id);
	return end(st, r, why);
}

int kh_gstore_device_set_state(struct kh_gstore *st, int64_t id, enum kh_gstore_state s,
			       struct kh_gstore_why *why)
{
	struct kh_gstore_device d;
	int r;
	if ((unsigned)s > KH_GSTATE_DISABLED)
		return refuse(why, KH_ERR_BAD_FIELD, "state: up, degraded, down or disabled");
	if ((r = begin(st, why)) != KH_OK)
		return r;
	if ((r = device_row(st, id, &d, why)) != KH_OK)
		goto out;
	/* a disabled device stays disabled whatever a late ping says */
	if (!d.enabled && s != KH_GSTATE_DISABLED)
		r = refuse(why, KH_ERR_STATE, "device %lld is disabled", (long long)id);
	else if (d.enabled && s == KH_GSTATE_DISABLED)
		r = refuse(why, KH_ERR_STATE, "disable a device by modifying it (enabled off)");
	else
		r = run(st, why, NULL, "UPDATE devices SET state = ? WHERE id = ?", "ti",
			state_names[s], id);
out:
	return end(st, r, why);
}

int kh_gstore_device_get(struct kh_gstore *st, int64_t id, struct kh_gstore_device *out,
			 struct kh_gstore_why *why)
{
	pthread_mutex_lock(&st->mu);
	int r = device_row(st, id, out, why);
	pthread_mutex_unlock(&st->mu);
	return r;
}

int kh_gstore_device_list(struct kh_gstore *st, int64_t group_id, struct kh_gstore_device *out,
			  size_t max, size_t *n, struct kh_gstore_why *why)
{
	return rows(st, why, read_device, out, sizeof(*out), max, n,
		    "SELECT " DEVICE_COLS " FROM devices WHERE ?1 = 0 OR group_id = ?1"
		    " ORDER BY group_id, id",
		    "i", group_id);
}

int kh_gstore_device_remove(struct kh_gstore *st, int64_t id, struct kh_gstore_why *why)
{
	struct kh_gstore_device d;
	int64_t ndev = 0;
	int r = begin(st, why);
	if (r != KH_OK)
		return r;
	if ((r = device_row(st, id, &d, why)) != KH_OK ||
	    (r = q1(st, why, &ndev, "SELECT COUNT(*) FROM devices WHERE group_id = ?", "i",
		    d.group_id)) != KH_OK)
		goto out;
	if (d.role == KH_GROLE_PRIMARY && ndev > 1) {
		r = refuse(why, KH_ERR_STATE,
			   "device %lld is the Primary of a group with other devices: promote "
			   "another first",
			   (long long)id);
		goto out;
	}
	r = run(st, why, NULL, "DELETE FROM devices WHERE id = ?", "i", id);
out:
	return end(st, r, why);
}

/* ---- journal ------------------------------------------------------------ */

int kh_gstore_journal_append(struct kh_gstore *st, int64_t group_id, enum kh_gstore_jkind kind,
			     const void *payload, size_t len, int64_t origin, int64_t *seq,
			     struct kh_gstore_why *why)
{
	int64_t s = 0, og = 0;
	int r;
	if ((unsigned)kind > KH_GJ_CONFIG)
		return refuse(why, KH_ERR_BAD_FIELD, "journal kind: key_row, key_delete or config");
	if (len == 0 || payload == NULL)
		return refuse(why, KH_ERR_BAD_FIELD, "journal payload: empty");
	if (len > KH_GSTORE_PAYLOAD_MAX)
		return refuse(why, KH_ERR_TOO_LARGE, "journal payload: more than %u bytes",
			      KH_GSTORE_PAYLOAD_MAX);
	if ((r = begin(st, why)) != KH_OK)
		return r;
	if ((r = group_exists(st, group_id, why)) != KH_OK)
		goto out;
	if (origin != 0) {
		r = q1(st, why, &og, "SELECT group_id FROM devices WHERE id = ?", "i", origin);
		if (r == KH_OK && og != group_id)
			r = KH_ERR_NOT_FOUND;
		if (r == KH_ERR_NOT_FOUND)
			r = refuse(why, KH_ERR_NOT_FOUND, "device %lld is not in group %lld",
				   (long long)origin, (long long)group_id);
		if (r != KH_OK)
			goto out;
	}
	if ((r = run(st, why, NULL,
		     "INSERT INTO journal (group_id, kind, payload, created) VALUES (?,?,?,?)",
		     "itbi", group_id, jkind_names[kind], payload, len, now_ms())) != KH_OK)
		goto out;
	s = sqlite3_last_insert_rowid(st->h);
	if ((r = run(st, why, NULL,
		     "INSERT INTO journal_member (seq, device_id, state, tries)"
		     " SELECT ?1, id, CASE id WHEN ?2 THEN 'applied' ELSE 'pending' END,"
		     " CASE id WHEN ?2 THEN 1 ELSE 0 END FROM devices WHERE group_id = ?3",
		     "iii", s, origin, group_id)) != KH_OK ||
	    (r = run(st, why, NULL, "UPDATE groups SET journal_head = ? WHERE id = ?", "ii", s,
		     group_id)) != KH_OK)
		goto out;
	/* the origin's version moves only if it had nothing due before */
	if (origin != 0)
		r = run(st, why, NULL,
			"UPDATE devices SET repl_version = ?1 WHERE id = ?2 AND NOT EXISTS"
			" (SELECT 1 FROM journal_member WHERE device_id = ?2 AND seq < ?1"
			"  AND state != 'applied')",
			"ii", s, origin);
	if (r == KH_OK && seq)
		*seq = s;
out:
	return end(st, r, why);
}

/* The member's version: the highest applied seq below its first due one. */
static int advance_version(struct kh_gstore *st, int64_t device, struct kh_gstore_why *why)
{
	int64_t due = INT64_MAX, hi = 0;
	int r = q1(st, why, &due,
		   "SELECT MIN(seq) FROM journal_member WHERE device_id = ? AND state != 'applied'",
		   "i", device);
	if (r != KH_OK && r != KH_ERR_NOT_FOUND)
		return r;
	r = q1(st, why, &hi,
	       "SELECT MAX(seq) FROM journal_member WHERE device_id = ? AND state = 'applied'"
	       " AND seq < ?",
	       "ii", device, due);
	if (r == KH_ERR_NOT_FOUND)
		return KH_OK;
	if (r != KH_OK)
		return r;
	return run(st, why, NULL,
		   "UPDATE devices SET repl_version = MAX(repl_version, ?) WHERE id = ?", "ii", hi,
		   device);
}

static int member_state(struct kh_gstore *st, int64_t seq, int64_t device, int64_t *applied,
			struct kh_gstore_why *why)
{
	int r = q1(st, why, applied,
		   "SELECT state = 'applied' FROM journal_member WHERE seq = ? AND device_id = ?",
		   "ii", seq, device);
	if (r == KH_ERR_NOT_FOUND)
		r = refuse(why, r, "no journal entry %lld for device %lld", (long long)seq,
			   (long long)device);
	return r;
}

int kh_gstore_journal_applied(struct kh_gstore *st, int64_t seq, int64_t device,
			      struct kh_gstore_why *why)
{
	int64_t applied = 0;
	int r = begin(st, why);
	if (r != KH_OK)
		return r;
	if ((r = member_state(st, seq, device, &applied, why)) != KH_OK || applied)
		goto out;
	if ((r = run(st, why, NULL,
		     "UPDATE journal_member SET state = 'applied', tries = tries + 1"
		     " WHERE seq = ? AND device_id = ?",
		     "ii", seq, device)) == KH_OK)
		r = advance_version(st, device, why);
out:
	return end(st, r, why);
}

int kh_gstore_journal_failed(struct kh_gstore *st, int64_t seq, int64_t device, const char *error,
			     struct kh_gstore_why *why)
{
	int64_t applied = 0;
	int r;
	if (error == NULL || !valid_text(error, KH_GSTORE_TEXT_MAX))
		return refuse(why, KH_ERR_BAD_FIELD,
			      "error text: at most 512 bytes of UTF-8 without control characters");
	if ((r = begin(st, why)) != KH_OK)
		return r;
	if ((r = member_state(st, seq, device, &applied, why)) != KH_OK)
		goto out;
	if (applied) {
		r = refuse(why, KH_ERR_STATE, "journal entry %lld is already applied on device %lld",
			   (long long)seq, (long long)device);
		goto out;
	}
	r = run(st, why, NULL,
		"UPDATE journal_member SET state = 'failed', tries = tries + 1, last_error = ?"
		" WHERE seq = ? AND device_id = ?",
		"tii", error, seq, device);
out:
	return end(st, r, why);
}

int kh_gstore_journal_pending(struct kh_gstore *st, int64_t device, size_t max,
			      kh_gstore_jentry_fn fn, void *arg, struct kh_gstore_why *why)
{
	sqlite3_stmt *s = NULL;
	struct kh_gstore_jentry e;
	int r = KH_OK, rc;
	pthread_mutex_lock(&st->mu);
	if ((rc = sqlite3_prepare_v2(st->h,
				     "SELECT j.seq, j.group_id, j.created, j.kind, j.payload, m.state,"
				     " m.tries, m.last_error FROM journal_member m"
				     " JOIN journal j ON j.seq = m.seq"
				     " WHERE m.device_id = ? AND m.state != 'applied'"
				     " ORDER BY m.seq LIMIT ?",
				     -1, &s, NULL)) != SQLITE_OK) {
		r = sqlerr(st, rc, why);
		goto out;
	}
	sqlite3_bind_int64(s, 1, device);
	sqlite3_bind_int64(s, 2, max == 0 || max > INT64_MAX ? -1 : (int64_t)max);
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		memset(&e, 0, sizeof(e));
		e.seq = sqlite3_column_int64(s, 0);
		e.group_id = sqlite3_column_int64(s, 1);
		e.created_ms = sqlite3_column_int64(s, 2);
		e.kind = (enum kh_gstore_jkind)ENUM_OF(jkind_names, sqlite3_column_text(s, 3));
		e.payload = sqlite3_column_blob(s, 4);
		e.payload_len = (size_t)sqlite3_column_bytes(s, 4);
		e.state = (enum kh_gstore_jstate)ENUM_OF(jstate_names, sqlite3_column_text(s, 5));
		e.tries = sqlite3_column_int(s, 6);
		copy_col(e.last_error, sizeof(e.last_error), s, 7);
		if ((r = fn(&e, arg)) != 0)
			goto out;
	}
	r = sqlerr(st, rc, why);
out:
	sqlite3_finalize(s);
	pthread_mutex_unlock(&st->mu);
	return r;
}

int kh_gstore_journal_count_pending(struct kh_gstore *st, int64_t device, int64_t *n,
				    struct kh_gstore_why *why)
{
	pthread_mutex_lock(&st->mu);
	int r = q1(st, why, n,
		   "SELECT COUNT(*) FROM journal_member WHERE device_id = ? AND state != 'applied'",
		   "i", device);
	pthread_mutex_unlock(&st->mu);
	return r;
}

int kh_gstore_journal_synced(struct kh_gstore *st, int64_t device, int64_t seq,
			     struct kh_gstore_why *why)
{
	struct kh_gstore_device d;
	int r = begin(st, why);
	if (r != KH_OK)
		return r;
	if ((r = device_row(st, device, &d, why)) == KH_OK &&
	    (r = run(st, why, NULL,
		     "UPDATE journal_member SET state = 'applied' WHERE device_id = ? AND seq <= ?"
		     " AND state != 'applied'",
		     "ii", device, seq)) == KH_OK &&
	    (r = run(st, why, NULL,
		     "UPDATE devices SET repl_version = MAX(repl_version, ?) WHERE id = ?", "ii",
		     seq, device)) == KH_OK)
		r = advance_version(st, device, why);
	return end(st, r, why);
}

int kh_gstore_journal_prune(struct kh_gstore *st, int64_t *removed, struct kh_gstore_why *why)
{
	int64_t n = 0;
	int r = begin(st, why);
	if (r != KH_OK)
		return r;
	r = run(st, why, &n,
		"DELETE FROM journal WHERE NOT EXISTS (SELECT 1 FROM journal_member m"
		" WHERE m.seq = journal.seq AND m.state != 'applied')",
		"");
	if (r == KH_OK && removed)
		*removed = n;
	return end(st, r, why);
}

/* ---- events ------------------------------------------------------------- */

int kh_gstore_event_add(struct kh_gstore *st, int64_t t_ms, int64_t group_id, int64_t device_id,
			enum kh_gstore_ekind kind, const char *text, struct kh_gstore_why *why)
{
	int r;
	if (t_ms < 0 || group_id < 0 || device_id < 0)
		return refuse(why, KH_ERR_BAD_FIELD, "event time and ids: not negative");
	if ((unsigned)kind > KH_GEV_DIAGNOSE)
		return refuse(why, KH_ERR_BAD_FIELD, "unknown event kind");
	if (text == NULL || text[0] == '\0' || !valid_text(text, KH_GSTORE_TEXT_MAX))
		return refuse(why, KH_ERR_BAD_FIELD,
			      "event text: 1-512 bytes of UTF-8 without control characters");
	if ((r = begin(st, why)) != KH_OK)
		return r;
	r = run(st, why, NULL,
		"INSERT INTO events (t, group_id, device_id, kind, text) VALUES (?,?,?,?,?)",
		"iiitt", t_ms, group_id, device_id, ekind_names[kind], text);
	return end(st, r, why);
}

static void read_event(sqlite3_stmt *s, void *rec)
{
	struct kh_gstore_event *e = rec;
	memset(e, 0, sizeof(*e));
	e->id = sqlite3_column_int64(s, 0);
	e->t_ms = sqlite3_column_int64(s, 1);
	e->group_id = sqlite3_column_int64(s, 2);
	e->device_id = sqlite3_column_int64(s, 3);
	e->kind = (enum kh_gstore_ekind)ENUM_OF(ekind_names, sqlite3_column_text(s, 4));
	copy_col(e->text, sizeof(e->text), s, 5);
}

int kh_gstore_event_list(struct kh_gstore *st, int64_t group_id, int64_t device_id, size_t skip,
			 struct kh_gstore_event *out, size_t max, size_t *n,
			 struct kh_gstore_why *why)
{
	if (skip > INT32_MAX || max > INT32_MAX)
		return refuse(why, KH_ERR_BAD_FIELD, "page out of range");
	return rows(st, why, read_event, out, sizeof(*out), max, n,
		    "SELECT id, t, group_id, device_id, kind, text FROM events"
		    " WHERE (?1 = 0 OR group_id = ?1) AND (?2 = 0 OR device_id = ?2)"
		    " ORDER BY t DESC, id DESC LIMIT ?3 OFFSET ?4",
		    "iiii", group_id, device_id, (int64_t)max, (int64_t)skip);
}

int kh_gstore_event_prune(struct kh_gstore *st, int64_t before_ms, struct kh_gstore_why *why)
{
	int r = begin(st, why);
	if (r == KH_OK)
		r = end(st, run(st, why, NULL, "DELETE FROM events WHERE t < ?", "i", before_ms),
			why);
	return r;
}

/* ---- metrics ------------------------------------------------------------ */

#define METRIC_MAX 1000000000000000LL /* far above any real count or sum */

static const char *const metric_add_sql[] = {
	"INSERT INTO metrics_10s (device_id, bucket, requests, errors, lat_sum, lat_max)"
	" VALUES (?,?,?,?,?,?) ON CONFLICT (device_id, bucket) DO UPDATE SET"
	" requests = requests + excluded.requests, errors = errors + excluded.errors,"
	" lat_sum = lat_sum + excluded.lat_sum, lat_max = MAX(lat_max, excluded.lat_max)",
	"INSERT INTO metrics_1m (device_id, bucket, requests, errors, lat_sum, lat_max)"
	" VALUES (?,?,?,?,?,?) ON CONFLICT (device_id, bucket) DO UPDATE SET"
	" requests = requests + excluded.requests, errors = errors + excluded.errors,"
	" lat_sum = lat_sum + excluded.lat_sum, lat_max = MAX(lat_max, excluded.lat_max)",
};
static const int64_t bucket_ms[] = {10000, 60000};

int kh_gstore_metric_add(struct kh_gstore *st, const struct kh_gstore_metric *m, size_t n,
			 struct kh_gstore_why *why)
{
	int64_t x;
	int r;
	for (size_t i = 0; i < n; i++)
		if (m[i].t_ms < 0 || m[i].requests < 0 || m[i].errors < 0 || m[i].lat_sum_us < 0 ||
		    m[i].lat_max_us < 0 || m[i].requests > METRIC_MAX || m[i].errors > METRIC_MAX ||
		    m[i].lat_sum_us > METRIC_MAX || m[i].lat_max_us > METRIC_MAX)
			return refuse(why, KH_ERR_BAD_FIELD,
				      "metric %zu: time and counts from 0 to 10^15", i);
	if ((r = begin(st, why)) != KH_OK)
		return r;
	for (size_t i = 0; i < n && r == KH_OK; i++) {
		r = q1(st, why, &x, "SELECT id FROM devices WHERE id = ?", "i", m[i].device_id);
		if (r == KH_ERR_NOT_FOUND)
			r = refuse(why, r, "no device %lld", (long long)m[i].device_id);
		for (int k = 0; k < 2 && r == KH_OK; k++)
			r = run(st, why, NULL, metric_add_sql[k], "iiiiii", m[i].device_id,
				m[i].t_ms - m[i].t_ms % bucket_ms[k], m[i].requests, m[i].errors,
				m[i].lat_sum_us, m[i].lat_max_us);
	}
	return end(st, r, why);
}

static void read_metric(sqlite3_stmt *s, void *rec)
{
	struct kh_gstore_metric *m = rec;
	m->device_id = sqlite3_column_int64(s, 0);
	m->t_ms = sqlite3_column_int64(s, 1);
	m->requests = sqlite3_column_int64(s, 2);
	m->errors = sqlite3_column_int64(s, 3);
	m->lat_sum_us = sqlite3_column_int64(s, 4);
	m->lat_max_us = sqlite3_column_int64(s, 5);
}

int kh_gstore_metric_list(struct kh_gstore *st, int64_t device_id, enum kh_gstore_res res,
			  int64_t from_ms, int64_t to_ms, struct kh_gstore_metric *out, size_t max,
			  size_t *n, struct kh_gstore_why *why)
{
	*n = 0;
	if ((unsigned)res > KH_GRES_1M)
		return refuse(why, KH_ERR_BAD_FIELD, "resolution: 10 s or 1 min");
	return rows(st, why, read_metric, out, sizeof(*out), max, n,
		    res == KH_GRES_10S
			    ? "SELECT device_id, bucket, requests, errors, lat_sum, lat_max FROM"
			      " metrics_10s WHERE device_id = ? AND bucket >= ? AND bucket < ?"
			      " ORDER BY bucket"
			    : "SELECT device_id, bucket, requests, errors, lat_sum, lat_max FROM"
			      " metrics_1m WHERE device_id = ? AND bucket >= ? AND bucket < ?"
			      " ORDER BY bucket",
		    "iii", device_id, from_ms, to_ms);
}

int kh_gstore_metric_sum(struct kh_gstore *st, int64_t device_id, enum kh_gstore_res res,
			 int64_t from_ms, int64_t to_ms, struct kh_gstore_metric *out,
			 struct kh_gstore_why *why)
{
	size_t n;
	if ((unsigned)res > KH_GRES_1M)
		return refuse(why, KH_ERR_BAD_FIELD, "resolution: 10 s or 1 min");
	int r = rows(st, why, read_metric, out, sizeof(*out), 1, &n,
		     res == KH_GRES_10S
			     ? "SELECT ?1, ?2, IFNULL(SUM(requests), 0), IFNULL(SUM(errors), 0),"
			       " IFNULL(SUM(lat_sum), 0),"
			       " IFNULL(MAX(lat_max), 0) FROM metrics_10s"
			       " WHERE device_id = ?1 AND bucket >= ?2 AND bucket < ?3"
			     : "SELECT ?1, ?2, IFNULL(SUM(requests), 0), IFNULL(SUM(errors), 0),"
			       " IFNULL(SUM(lat_sum), 0),"
			       " IFNULL(MAX(lat_max), 0) FROM metrics_1m"
			       " WHERE device_id = ?1 AND bucket >= ?2 AND bucket < ?3",
		     "iii", device_id, from_ms, to_ms);
	return r;
}

int kh_gstore_metric_prune(struct kh_gstore *st, int64_t now, struct kh_gstore_why *why)
{
	int r = begin(st, why);
	if (r != KH_OK)
		return r;
	if ((r = run(st, why, NULL, "DELETE FROM metrics_10s WHERE bucket < ?", "i",
		     now - KH_GSTORE_KEEP_10S_MS)) == KH_OK)
		r = run(st, why, NULL, "DELETE FROM metrics_1m WHERE bucket < ?", "i",
			now - KH_GSTORE_KEEP_1M_MS);
	return end(st, r, why);
}

/* ---- users and roles ---------------------------------------------------- */

static const char *const perm_names[] = {"view",           "groups.manage", "devices.manage",
					 "devices.operate", "remote",        "users.manage"};
_Static_assert(sizeof(perm_names) / sizeof(perm_names[0]) == KH_GPERM_COUNT,
	       "permission names out of sync");

const char *kh_gstore_perm_name(unsigned index) { return NAMEOF(perm_names, index); }

/* User names: 1-64 of letters, digits . _ -, starting with a letter or
 * digit (so a user name is also a valid group owner). */
static bool valid_user(const char *s)
{
	size_t n = s ? strnlen(s, KH_GSTORE_USER_MAX + 1) : 0;
	if (n == 0 || n > KH_GSTORE_USER_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
		if (!alnum && (i == 0 || (c != '.' && c != '_' && c != '-')))
			return false;
	}
	return true;
}

static void read_role(sqlite3_stmt *s, void *rec)
{
	struct kh_gstore_role_rec *r = rec;
	memset(r, 0, sizeof(*r));
	copy_col(r->name, sizeof(r->name), s, 0);
	r->perms = (unsigned)sqlite3_column_int(s, 1) & KH_GPERM_ALL;
	r->logins_required = sqlite3_column_int(s, 2);
	r->builtin = sqlite3_column_int(s, 3) != 0;
}

#define ROLE_COLS "name, perms, logins_required, builtin"

int kh_gstore_role_get(struct kh_gstore *st, const char *name, struct kh_gstore_role_rec *out,
		       struct kh_gstore_why *why)
{
	size_t n;
	if (!valid_user(name))
		return refuse(why, KH_ERR_NOT_FOUND, "no such role");
	int r = rows(st, why, read_role, out, sizeof(*out), 1, &n,
		     "SELECT " ROLE_COLS " FROM roles WHERE name = ?", "t", name);
	if (r == KH_OK && n == 0)
		r = refuse(why, KH_ERR_NOT_FOUND, "no role \"%s\"", name);
	return r;
}

int kh_gstore_role_list(struct kh_gstore *st, struct kh_gstore_role_rec *out, size_t max,
			size_t *n, struct kh_gstore_why *why)
{
	return rows(st, why, read_role, out, sizeof(*out), max, n,
		    "SELECT " ROLE_COLS " FROM roles ORDER BY builtin DESC, name", "");
}

int kh_gstore_role_set_logins(struct kh_gstore *st, const char *name, int logins,
			      struct kh_gstore_why *why)
{
	int64_t users = 0, changes = 0;
	int r;
	if (logins != 1 && logins != 2)
		return refuse(why, KH_ERR_BAD_FIELD, "logins_required: 1 or 2");
	if (!valid_user(name))
		return refuse(why, KH_ERR_NOT_FOUND, "no such role");
	if ((r = begin(st, why)) != KH_OK)
		return r;
	if ((r = q1(st, why, &users, "SELECT COUNT(*) FROM users WHERE role = ?", "t", name)) !=
	    KH_OK)
		goto out;
	if (logins == 2 && users < 2) {
		r = refuse(why, KH_ERR_STATE,
			   "role \"%s\" has %lld user(s): add a second before requiring two logins",
			   name, (long long)users);
		goto out;
	}
	r = run(st, why, &changes, "UPDATE roles SET logins_required = ? WHERE name = ?", "it",
		(int64_t)logins, name);
	if (r == KH_OK && changes == 0)
		r = refuse(why, KH_ERR_NOT_FOUND, "no role \"%s\"", name);
out:
	return end(st, r, why);
}

#define USER_COLS "id, name, role, must_change, failures, locked_until, created, changed"

static void read_user(sqlite3_stmt *s, void *rec)
{
	struct kh_gstore_user *u = rec;
	memset(u, 0, sizeof(*u));
	u->id = sqlite3_column_int64(s, 0);
	copy_col(u->name, sizeof(u->name), s, 1);
	copy_col(u->role, sizeof(u->role), s, 2);
	u->must_change = sqlite3_column_int(s, 3) != 0;
	u->failures = sqlite3_column_int64(s, 4);
	u->locked_until_ms = sqlite3_column_int64(s, 5);
	u->created_ms = sqlite3_column_int64(s, 6);
	u->changed_ms = sqlite3_column_int64(s, 7);
}

/* Parameters as users.c writes them: "scrypt:N:r:p". */
static bool valid_params(const char *p)
{
	size_t n = strnlen(p, KH_GSTORE_PW_PARAMS_MAX + 1);
	if (n < 8 || n > KH_GSTORE_PW_PARAMS_MAX || strncmp(p, "scrypt:", 7) != 0)
		return false;
	for (size_t i = 7; i < n; i++)
		if (!((p[i] >= '0' && p[i] <= '9') || p[i] == ':'))
			return false;
	return true;
}

int kh_gstore_user_add(struct kh_gstore *st, const struct kh_gstore_user *u,
		       const struct kh_gstore_pwhash *h, bool only_first, int64_t *id,
		       struct kh_gstore_why *why)
{
	int64_t x = 0, t = now_ms();
	int r;
	if (!valid_user(u->name))
		return refuse(why, KH_ERR_BAD_FIELD,
			      "user name: 1-64 letters, digits . _ -, starting with a letter or "
			      "digit");
	if (!valid_user(u->role))
		return refuse(why, KH_ERR_BAD_FIELD, "role: no such role");
	if (!valid_params(h->params))
		return refuse(why, KH_ERR_BAD_FIELD, "password verifier: bad parameters");
	if ((r = begin(st, why)) != KH_OK)
		return r;
	if (only_first && (r = q1(st, why, &x, "SELECT COUNT(*) FROM users", "")) == KH_OK &&
	    x > 0) {
		r = refuse(why, KH_ERR_EXISTS, "the guardian has users already");
		goto out;
	}
	if (r != KH_OK)
		goto out;
	r = q1(st, why, &x, "SELECT 1 FROM roles WHERE name = ?", "t", u->role);
	if (r == KH_ERR_NOT_FOUND)
		r = refuse(why, KH_ERR_BAD_FIELD, "role: no role \"%s\"", u->role);
	if (r != KH_OK)
		goto out;
	r = q1(st, why, &x, "SELECT id FROM users WHERE name = ?", "t", u->name);
	if (r == KH_OK) {
		r = refuse(why, KH_ERR_EXISTS, "a user named \"%s\" exists", u->name);
		goto out;
	}
	if (r != KH_ERR_NOT_FOUND)
		goto out;
	/* the role's stored spelling, so listings show "Administrator" however
	 * it was typed */
	r = run(st, why, NULL,
		"INSERT INTO users (name, role, pw_hash, pw_salt, pw_params, must_change, created,"
		" changed) VALUES (?, (SELECT name FROM roles WHERE name = ?), ?, ?, ?, ?, ?, ?)",
		"ttbbtiii", u->name, u->role, (const void *)h->hash, sizeof(h->hash),
		(const void *)h->salt, sizeof(h->salt), h->params, (int64_t)u->must_change, t, t);
	if (r == KH_OK && id)
		*id = sqlite3_last_insert_rowid(st->h);
out:
	return end(st, r, why);
}

int kh_gstore_user_get(struct kh_gstore *st, const char *name, struct kh_gstore_user *out,
		       struct kh_gstore_why *why)
{
	size_t n;
	if (!valid_user(name))
		return refuse(why, KH_ERR_NOT_FOUND, "no such user");
	int r = rows(st, why, read_user, out, sizeof(*out), 1, &n,
		     "SELECT " USER_COLS " FROM users WHERE name = ?", "t", name);
	if (r == KH_OK && n == 0)
		r = refuse(why, KH_ERR_NOT_FOUND, "no user \"%s\"", name);
	return r;
}

struct verifier_rec {
	struct kh_gstore_pwhash h;
	bool ok;
};

static void read_verifier(sqlite3_stmt *s, void *rec)
{
	struct verifier_rec *v = rec;
	const unsigned char *params = sqlite3_column_text(s, 2);
	memset(v, 0, sizeof(*v));
	if (sqlite3_column_bytes(s, 0) != KH_GSTORE_PW_HASH_LEN ||
	    sqlite3_column_bytes(s, 1) != KH_GSTORE_PW_SALT_LEN || params == NULL ||
	    !valid_params((const char *)params))
		return;
	memcpy(v->h.hash, sqlite3_column_blob(s, 0), KH_GSTORE_PW_HASH_LEN);
	memcpy(v->h.salt, sqlite3_column_blob(s, 1), KH_GSTORE_PW_SALT_LEN);
	snprintf(v->h.params, sizeof(v->h.params), "%s", (const char *)params);
	v->ok = true;
}

int kh_gstore_user_verifier(struct kh_gstore *st, const char *name, struct kh_gstore_pwhash *out,
			    struct kh_gstore_why *why)
{
	struct verifier_rec v;
	size_t n;
	if (!valid_user(name))
		return refuse(why, KH_ERR_NOT_FOUND, "no such user");
	int r = rows(st, why, read_verifier, &v, sizeof(v), 1, &n,
		     "SELECT pw_hash, pw_salt, pw_params FROM users WHERE name = ?", "t", name);
	if (r == KH_OK && n == 0)
		r = refuse(why, KH_ERR_NOT_FOUND, "no user \"%s\"", name);
	else if (r == KH_OK && !v.ok) {
		log_warnx("guardian store: user %s has a malformed password verifier", name);
		r = refuse(why, KH_ERR_STORAGE, "the stored password verifier is malformed");
	}
	if (r == KH_OK)
		*out = v.h;
	kh_wipe(&v, sizeof(v));
	return r;
}

int kh_gstore_user_list(struct kh_gstore *st, struct kh_gstore_user *out, size_t max, size_t *n,
			struct kh_gstore_why *why)
{
	return rows(st, why, read_user, out, sizeof(*out), max, n,
		    "SELECT " USER_COLS " FROM users ORDER BY name", "");
}

int kh_gstore_user_count(struct kh_gstore *st, int64_t *n, struct kh_gstore_why *why)
{
	pthread_mutex_lock(&st->mu);
	int r = q1(st, why, n, "SELECT COUNT(*) FROM users", "");
	pthread_mutex_unlock(&st->mu);
	return r;
}

int kh_gstore_user_remove(struct kh_gstore *st, const char *name, struct kh_gstore_why *why)
{
	struct kh_gstore_role_rec role;
	sqlite3_stmt *s = NULL;
	int64_t left = 0, admins = 0;
	size_t n = 0;
	int r;
	if (!valid_user(name))
		return refuse(why, KH_ERR_NOT_FOUND, "no such user");
	if ((r = begin(st, why)) != KH_OK)
		return r;
	/* re-read inside the transaction: the role may have changed since */
	if ((r = q1(st, why, &left, "SELECT COUNT(*) FROM users WHERE role ="
				    " (SELECT role FROM users WHERE name = ?) AND name != ?",
		    "tt", name, name)) != KH_OK ||
	    (r = q1(st, why, &admins,
		    "SELECT COUNT(*) FROM users WHERE role = 'Administrator' AND name != ?", "t",
		    name)) != KH_OK)
		goto out;
	if (sqlite3_prepare_v2(st->h, "SELECT " ROLE_COLS " FROM roles WHERE name = "
				      "(SELECT role FROM users WHERE name = ?)",
			       -1, &s, NULL) != SQLITE_OK) {
		r = sqlerr(st, sqlite3_errcode(st->h), why);
		goto out;
	}
	sqlite3_bind_text(s, 1, name, -1, SQLITE_TRANSIENT);
	if (sqlite3_step(s) == SQLITE_ROW) {
		read_role(s, &role);
		n = 1;
	}
	sqlite3_finalize(s);
	if (n == 0) {
		r = refuse(why, KH_ERR_NOT_FOUND, "no user \"%s\"", name);
		goto out;
	}
	if (admins == 0) {
		r = refuse(why, KH_ERR_STATE, "\"%s\" is the last Administrator", name);
		goto out;
	}
	/* an empty role is fine; one user alone in a two-login role is stuck */
	if (left > 0 && left < role.logins_required) {
		r = refuse(why, KH_ERR_STATE,
			   "role \"%s\" needs %d logins: it would keep %lld user(s)", role.name,
			   role.logins_required, (long long)left);
		goto out;
	}
	r = run(st, why, NULL, "DELETE FROM users WHERE name = ?", "t", name);
out:
	return end(st, r, why);
}

int kh_gstore_user_set_password(struct kh_gstore *st, const char *name,
				const struct kh_gstore_pwhash *h, bool must_change,
				struct kh_gstore_why *why)
{
	int64_t changes = 0;
	int r;
	if (!valid_user(name))
		return refuse(why, KH_ERR_NOT_FOUND, "no such user");
	if (!valid_params(h->params))
		return refuse(why, KH_ERR_BAD_FIELD, "password verifier: bad parameters");
	if ((r = begin(st, why)) != KH_OK)
		return r;
	r = run(st, why, &changes,
		"UPDATE users SET pw_hash = ?, pw_salt = ?, pw_params = ?, must_change = ?,"
		" failures = 0, locked_until = 0, changed = ? WHERE name = ?",
		"bbtiit", (const void *)h->hash, sizeof(h->hash), (const void *)h->salt,
		sizeof(h->salt), h->params, (int64_t)must_change, now_ms(), name);
	if (r == KH_OK && changes == 0)
		r = refuse(why, KH_ERR_NOT_FOUND, "no user \"%s\"", name);
	return end(st, r, why);
}

int kh_gstore_user_login_failed(struct kh_gstore *st, const char *name, int64_t now, int threshold,
				int64_t lock_ms, bool *locked, struct kh_gstore_why *why)
{
	int64_t changes = 0, until = 0;
	int r;
	if (locked)
		*locked = false;
	if (threshold < 1 || lock_ms < 1)
		return refuse(why, KH_ERR_BAD_FIELD, "lockout: threshold and time at least 1");
	if (!valid_user(name))
		return refuse(why, KH_ERR_NOT_FOUND, "no such user");
	if ((r = begin(st, why)) != KH_OK)
		return r;
	/* SQLite evaluates every right-hand side on the row as it was */
	r = run(st, why, &changes,
		"UPDATE users SET"
		" locked_until = CASE WHEN failures + 1 >= ?1 THEN ?2 ELSE locked_until END,"
		" failures = CASE WHEN failures + 1 >= ?1 THEN 0 ELSE failures + 1 END"
		" WHERE name = ?3 AND locked_until <= ?4",
		"iiti", (int64_t)threshold, now + lock_ms, name, now);
	if (r != KH_OK)
		goto out;
	if (changes == 0) {
		r = q1(st, why, &until, "SELECT locked_until FROM users WHERE name = ?", "t", name);
		r = r == KH_OK ? refuse(why, KH_ERR_LOCKED, "user \"%s\" is locked", name)
			       : refuse(why, KH_ERR_NOT_FOUND, "no user \"%s\"", name);
		goto out;
	}
	if (locked && (r = q1(st, why, &until, "SELECT locked_until FROM users WHERE name = ?",
			      "t", name)) == KH_OK)
		*locked = until > now;
out:
	return end(st, r, why);
}

int kh_gstore_user_login_ok(struct kh_gstore *st, const char *name, int64_t now,
			    struct kh_gstore_why *why)
{
	int64_t changes = 0, x = 0;
	int r;
	if (!valid_user(name))
		return refuse(why, KH_ERR_NOT_FOUND, "no such user");
	if ((r = begin(st, why)) != KH_OK)
		return r;
	r = run(st, why, &changes,
		"UPDATE users SET failures = 0 WHERE name = ? AND locked_until <= ?", "ti", name,
		now);
	if (r == KH_OK && changes == 0) {
		r = q1(st, why, &x, "SELECT id FROM users WHERE name = ?", "t", name);
		r = r == KH_OK ? refuse(why, KH_ERR_LOCKED, "user \"%s\" is locked", name)
			       : refuse(why, KH_ERR_NOT_FOUND, "no user \"%s\"", name);
	}
	return end(st, r, why);
}

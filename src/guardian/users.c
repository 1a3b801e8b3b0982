/*
 * The guardian's users: scrypt verifiers, login with lockout, and the first
 * Administrator. Passwords stay in the caller's wiped buffers; verifiers are
 * wiped after use. A login costs one scrypt (32 MiB) whether or not the user
 * exists, and at most KG_SCRYPT_PARALLEL run at once, so a burst of logins
 * over many connections cannot exhaust memory.
 */
#include "guardian/users.h"
#include "guardian/guardian.h"
#include "common/kh_log.h"
#include "common/kh_mem.h"
#include "common/kh_scrypt.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#define KG_SCRYPT_PARALLEL 2
#define KG_SCRYPT_MAXMEM (64ull * 1024 * 1024)

static pthread_mutex_t scrypt_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t scrypt_cv = PTHREAD_COND_INITIALIZER;
static int scrypt_running;

static void say(char *why, size_t whysz, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void say(char *why, size_t whysz, const char *fmt, ...)
{
	va_list ap;
	if (why == NULL || whysz == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(why, whysz, fmt, ap);
	va_end(ap);
}

static int64_t wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Stored parameters are accepted up to these; KG_SCRYPT_MAXMEM bounds the
 * memory of one derivation. */
static const struct kh_scrypt_params scrypt_max = {.N = 1u << 17, .r = 16, .p = 4};
static const struct kh_scrypt_params scrypt_now = {
    .N = KG_SCRYPT_N, .r = KG_SCRYPT_R, .p = KG_SCRYPT_P};

/* kh_scrypt, at most KG_SCRYPT_PARALLEL at once. */
static int scrypt(const uint8_t *pw, size_t n, const uint8_t salt[static KH_GSTORE_PW_SALT_LEN],
		  const struct kh_scrypt_params *k, uint8_t out[static KH_GSTORE_PW_HASH_LEN])
{
	int rc;

	pthread_mutex_lock(&scrypt_mu);
	while (scrypt_running >= KG_SCRYPT_PARALLEL)
		pthread_cond_wait(&scrypt_cv, &scrypt_mu);
	scrypt_running++;
	pthread_mutex_unlock(&scrypt_mu);
	rc = kh_scrypt(pw, n, salt, KH_GSTORE_PW_SALT_LEN, k, KG_SCRYPT_MAXMEM, out,
		       KH_GSTORE_PW_HASH_LEN);
	pthread_mutex_lock(&scrypt_mu);
	scrypt_running--;
	pthread_cond_signal(&scrypt_cv);
	pthread_mutex_unlock(&scrypt_mu);
	return rc;
}

int kg_users_password_ok(size_t pwlen, char *why, size_t whysz)
{
	if (pwlen < KG_PW_MIN || pwlen > KG_PW_MAX) {
		say(why, whysz, "password: %d-%d bytes", KG_PW_MIN, KG_PW_MAX);
		return KH_ERR_BAD_FIELD;
	}
	return KH_OK;
}

int kg_users_hash(const uint8_t *pw, size_t pwlen, struct kh_gstore_pwhash *out)
{
	memset(out, 0, sizeof(*out));
	if (RAND_bytes(out->salt, sizeof(out->salt)) != 1)
		return KH_ERR_CRYPTO;
	kh_scrypt_format(&scrypt_now, out->params, sizeof(out->params));
	return scrypt(pw, pwlen, out->salt, &scrypt_now, out->hash);
}

int kg_users_verify(const uint8_t *pw, size_t pwlen, const struct kh_gstore_pwhash *h)
{
	uint8_t got[KH_GSTORE_PW_HASH_LEN];
	struct kh_scrypt_params k;
	int rc;
	if (!kh_scrypt_parse(h->params, &scrypt_max, &k))
		return KH_ERR_STORAGE;
	if ((rc = scrypt(pw, pwlen, h->salt, &k, got)) == KH_OK &&
	    CRYPTO_memcmp(got, h->hash, sizeof(got)) != 0)
		rc = KH_ERR_AUTH_FAILED;
	kh_wipe(got, sizeof(got));
	return rc;
}

/* The same work as a real check, for a name that does not exist. */
static void dummy_verify(const uint8_t *pw, size_t pwlen)
{
	static const uint8_t salt[KH_GSTORE_PW_SALT_LEN] = {0};
	uint8_t got[KH_GSTORE_PW_HASH_LEN];
	KH_IGNORE(scrypt(pw, pwlen, salt, &scrypt_now, got));
	kh_wipe(got, sizeof(got));
}

static int failed(struct kh_gstore *st, const char *name, int64_t now, bool *locked_now, char *why,
		  size_t whysz)
{
	struct kh_gstore_why w;
	bool locked = false;
	int r = kh_gstore_user_login_failed(st, name, now, KG_LOCK_THRESHOLD, KG_LOCK_MS, &locked,
					    &w);
	if (r == KH_OK && locked) {
		char text[KH_GSTORE_TEXT_MAX + 1];
		if (locked_now)
			*locked_now = true;
		snprintf(text, sizeof(text), "user %s locked for %d s after %d failed logins", name,
			 KG_LOCK_MS / 1000, KG_LOCK_THRESHOLD);
		log_warnx("guardian: %s", text);
		KH_IGNORE(kh_gstore_event_add(st, now, 0, 0, KH_GEV_REFUSAL, text, NULL));
		r = KH_ERR_LOCKED;
	}
	if (r == KH_ERR_LOCKED) {
		say(why, whysz, "the user is locked after %d failed logins: try again later",
		    KG_LOCK_THRESHOLD);
		return r;
	}
	if (r != KH_OK && r != KH_ERR_NOT_FOUND) {
		say(why, whysz, "%s", w.text);
		return r;
	}
	say(why, whysz, "wrong user name or password");
	return KH_ERR_AUTH_FAILED;
}

int kg_users_authenticate(struct kh_gstore *st, const char *name, const uint8_t *pw, size_t pwlen,
			  int64_t now, struct kh_gstore_user *u, struct kh_gstore_role_rec *role,
			  bool *locked_now, char *why, size_t whysz)
{
	struct kh_gstore_pwhash h;
	struct kh_gstore_why w;
	int r;

	if (locked_now)
		*locked_now = false;
	r = kh_gstore_user_get(st, name, u, &w);
	if (r == KH_ERR_NOT_FOUND) {
		dummy_verify(pw, pwlen);
		say(why, whysz, "wrong user name or password");
		return KH_ERR_AUTH_FAILED;
	}
	if (r != KH_OK) {
		say(why, whysz, "%s", w.text);
		return r;
	}
	if (u->locked_until_ms > now) {
		say(why, whysz, "the user is locked after %d failed logins: try again in %lld s",
		    KG_LOCK_THRESHOLD, (long long)((u->locked_until_ms - now + 999) / 1000));
		return KH_ERR_LOCKED;
	}
	if ((r = kh_gstore_user_verifier(st, name, &h, &w)) != KH_OK) {
		say(why, whysz, "%s", w.text);
		return r;
	}
	r = kg_users_verify(pw, pwlen, &h);
	kh_wipe(&h, sizeof(h));
	if (r == KH_ERR_AUTH_FAILED)
		return failed(st, name, now, locked_now, why, whysz);
	if (r != KH_OK) {
		say(why, whysz, "the password could not be checked");
		return r;
	}
	if ((r = kh_gstore_user_login_ok(st, name, now, &w)) != KH_OK ||
	    (r = kh_gstore_role_get(st, u->role, role, &w)) != KH_OK) {
		/* a lock set by parallel wrong guesses, or the user just removed */
		say(why, whysz, "%s", r == KH_ERR_LOCKED ? "the user is locked" : "wrong user name or password");
		return r == KH_ERR_LOCKED ? r : KH_ERR_AUTH_FAILED;
	}
	u->failures = 0;
	say(why, whysz, "%s", "");
	return KH_OK;
}

int kg_users_add(struct kh_gstore *st, const char *name, const char *role, const uint8_t *pw,
		 size_t pwlen, bool must_change, char *why, size_t whysz)
{
	struct kh_gstore_pwhash h;
	struct kh_gstore_user u;
	struct kh_gstore_why w;
	int r;
	if ((r = kg_users_password_ok(pwlen, why, whysz)) != KH_OK)
		return r;
	memset(&u, 0, sizeof(u));
	if (snprintf(u.name, sizeof(u.name), "%s", name) >= (int)sizeof(u.name) ||
	    snprintf(u.role, sizeof(u.role), "%s", role) >= (int)sizeof(u.role)) {
		say(why, whysz, "user or role name: at most %d characters", KH_GSTORE_USER_MAX);
		return KH_ERR_BAD_FIELD;
	}
	u.must_change = must_change;
	if ((r = kg_users_hash(pw, pwlen, &h)) != KH_OK) {
		say(why, whysz, "the password could not be hashed");
		return r;
	}
	r = kh_gstore_user_add(st, &u, &h, false, NULL, &w);
	kh_wipe(&h, sizeof(h));
	say(why, whysz, "%s", r == KH_OK ? "" : w.text);
	return r;
}

int kg_users_set_password(struct kh_gstore *st, const char *name, const uint8_t *pw, size_t pwlen,
			  bool must_change, char *why, size_t whysz)
{
	struct kh_gstore_pwhash h;
	struct kh_gstore_why w;
	int r;
	if ((r = kg_users_password_ok(pwlen, why, whysz)) != KH_OK)
		return r;
	if ((r = kg_users_hash(pw, pwlen, &h)) != KH_OK) {
		say(why, whysz, "the password could not be hashed");
		return r;
	}
	r = kh_gstore_user_set_password(st, name, &h, must_change, &w);
	kh_wipe(&h, sizeof(h));
	say(why, whysz, "%s", r == KH_OK ? "" : w.text);
	return r;
}

int kg_users_bootstrap(struct kh_gstore *st, const char *name, const char *pw, size_t pwlen,
		       char *why, size_t whysz)
{
	struct kh_gstore_pwhash h;
	struct kh_gstore_user u;
	struct kh_gstore_why w;
	int r;
	if ((r = kg_users_password_ok(pwlen, why, whysz)) != KH_OK)
		return r;
	memset(&u, 0, sizeof(u));
	if (name == NULL || snprintf(u.name, sizeof(u.name), "%s", name) >= (int)sizeof(u.name)) {
		say(why, whysz, "user name: at most %d characters", KH_GSTORE_USER_MAX);
		return KH_ERR_BAD_FIELD;
	}
	snprintf(u.role, sizeof(u.role), "%s", KH_GSTORE_ROLE_ADMIN);
	if ((r = kg_users_hash((const uint8_t *)pw, pwlen, &h)) != KH_OK) {
		say(why, whysz, "the password could not be hashed");
		return r;
	}
	r = kh_gstore_user_add(st, &u, &h, true, NULL, &w);
	kh_wipe(&h, sizeof(h));
	if (r == KH_OK) {
		char text[KH_GSTORE_TEXT_MAX + 1];
		snprintf(text, sizeof(text), "first Administrator %s created", u.name);
		KH_IGNORE(kh_gstore_event_add(st, wall_ms(), 0, 0, KH_GEV_CONFIG, text, NULL));
	}
	say(why, whysz, "%s", r == KH_OK ? "" : w.text);
	return r;
}

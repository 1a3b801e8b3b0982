/*
 * Identities: storage, password hashing (scrypt), password policy, and the
 * authentication step with failure counting and lockout. Passwords exist only
 * on the secure heap while a request runs; only salted scrypt hashes are kept.
 */
#ifndef KH_IDENTITY_H
#define KH_IDENTITY_H

#include "hsm/hsm.h"

#define KH_PW_HASH_LEN 32
#define KH_PW_SALT_LEN 16

struct kh_ident {
	int64_t id;
	char name[KH_NAME_MAX];
	int64_t role_id;
	bool must_change;
	int64_t failures;
	int64_t locked_until;
	bool builtin;
};

/* A freshly computed password verifier (not a secret by itself, but wiped
 * by kh_ident_pwhash_wipe all the same). */
struct kh_pwhash {
	uint8_t hash[KH_PW_HASH_LEN];
	uint8_t salt[KH_PW_SALT_LEN];
	char params[32]; /* "scrypt:N:r:p" */
};

/* Identity name syntax: 1-63 of A-Za-z0-9 _ . - */
bool kh_ident_name_valid(const char *name);
/* Policy: KH_PASSWORD_MIN..KH_PASSWORD_MAX bytes and, when old is given,
 * different from it (compared in constant time). KH_ERR_WEAK_PASSWORD. */
KH_MUST_CHECK int kh_ident_password_policy(const uint8_t *pw, size_t n, const uint8_t *old,
					   size_t oldn);
/* scrypt with a new random salt and the current parameters. Slow: call it
 * outside any transaction. */
KH_MUST_CHECK int kh_ident_hash_password(const uint8_t *pw, size_t n, struct kh_pwhash *out);
void kh_ident_pwhash_wipe(struct kh_pwhash *h);

KH_MUST_CHECK int kh_ident_load(struct kh_hsm *hsm, const char *name, struct kh_ident *out);

/* What an authentication decided and what the decision rested on. */
enum kh_auth_quiet {
	KH_AUTH_LOUD = 0,      /* nothing left to record by the caller */
	KH_AUTH_UNKNOWN,       /* no such identity: AUTH_FAILED, not counted */
	KH_AUTH_CONN_REFUSED,  /* the role may not log in on this port/source: AUTH_FAILED, not counted */
	KH_AUTH_LOCKED_QUIET,  /* already locked: LOCKED, not counted */
};
struct kh_auth {
	uint64_t gen;                      /* hsm->role_gen, read before id and role */
	struct kh_ident id;                /* the row as read before the password check */
	struct kh_role role;               /* its role, read after id */
	uint8_t verifier[KH_PW_HASH_LEN];  /* the stored hash the password matched */
	enum kh_auth_quiet quiet;          /* on a refusal the caller may audit (at most once
	                                      per connection): which kind it was */
};

/* Check name and password for a connection on port/source. In this order:
 * read hsm->role_gen, the identity and its role; then
 *  - unknown identity, or a role that may not log in on port/source: the
 *    same scrypt work against a dummy verifier, KH_ERR_AUTH_FAILED, nothing
 *    counted, nothing written (out->quiet says which);
 *  - locked identity: the same dummy work, KH_ERR_LOCKED, nothing counted,
 *    nothing written (out->quiet = KH_AUTH_LOCKED_QUIET);
 *  - otherwise the real check. A wrong password is counted in one UPDATE
 *    that also sets the lock at the threshold, only while the identity is
 *    not locked, and audited ("login.fail", or "login.locked" once, when this
 *    failure set the lock), answering AUTH_FAILED or LOCKED.
 * On KH_OK *out holds the snapshot to pass to kh_ident_login_ok; nothing has
 * been written. The dummy and real checks cost the same, which also limits
 * the rate of attempts per worker. */
KH_MUST_CHECK int kh_ident_authenticate(struct kh_hsm *hsm, const char *name, const uint8_t *pw,
					size_t pwlen, enum kh_port port, enum kh_source source,
					const char *peer, struct kh_auth *out);

/* Writers: run inside the caller's transaction. */
KH_MUST_CHECK int kh_ident_insert(struct kh_hsm *hsm, const char *name, int64_t role_id,
				  const struct kh_pwhash *pw, bool must_change, bool builtin,
				  int64_t now);
/* A successful authentication, inside the caller's transaction: clear
 * failures and lock, and if pw is not NULL store it as the new password
 * (must_change cleared) -- but only if the identity is still as a->id saw
 * it (same role, must_change and password verifier) and is not locked at
 * now. Otherwise nothing is written and the answer is KH_ERR_LOCKED (locked
 * since the check) or KH_ERR_AUTH_FAILED (changed or deleted since). This
 * closes the windows of the unlocked scrypt: a lock set by parallel guesses
 * is never erased by a right guess in flight, and an identity moved to
 * another role meanwhile never logs in under its old one. */
KH_MUST_CHECK int kh_ident_login_ok(struct kh_hsm *hsm, const struct kh_auth *a,
				    const struct kh_pwhash *pw, int64_t now);
KH_MUST_CHECK int kh_ident_set_password(struct kh_hsm *hsm, int64_t id, const struct kh_pwhash *pw,
					bool must_change, int64_t now);
KH_MUST_CHECK int kh_ident_set_role(struct kh_hsm *hsm, int64_t id, int64_t role_id, int64_t now);
KH_MUST_CHECK int kh_ident_set_must_change(struct kh_hsm *hsm, int64_t id, bool must_change,
					   int64_t now);
KH_MUST_CHECK int kh_ident_unlock(struct kh_hsm *hsm, int64_t id, int64_t now);
KH_MUST_CHECK int kh_ident_delete(struct kh_hsm *hsm, int64_t id);

/* IDLS output: comma list of name:role:state (role spaces shown as '_'). */
KH_MUST_CHECK int kh_ident_list(struct kh_hsm *hsm, int64_t now, char *out, size_t outsz);

#endif

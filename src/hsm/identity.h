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

/* Check name and password. Unknown identity and wrong password both answer
 * KH_ERR_AUTH_FAILED after the same scrypt work; a locked identity answers
 * KH_ERR_LOCKED without checking the password. A wrong password is counted
 * (and may lock the identity) and audited in its own transaction, with
 * actor/peer naming the connection. On KH_OK *out holds the identity; nothing
 * has been written (the caller records the login with kh_ident_login_ok). */
KH_MUST_CHECK int kh_ident_authenticate(struct kh_hsm *hsm, const char *name, const uint8_t *pw,
					size_t pwlen, const char *peer, struct kh_ident *out);

/* Writers: run inside the caller's transaction. */
KH_MUST_CHECK int kh_ident_insert(struct kh_hsm *hsm, const char *name, int64_t role_id,
				  const struct kh_pwhash *pw, bool must_change, bool builtin,
				  int64_t now);
/* A successful authentication: clear failures and lock, and if pw is not
 * NULL store it as the new password (must_change cleared). */
KH_MUST_CHECK int kh_ident_login_ok(struct kh_hsm *hsm, int64_t id, const struct kh_pwhash *pw,
				    int64_t now);
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

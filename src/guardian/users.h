/*
 * The guardian's own users: password verifiers (salted scrypt), login with
 * lockout, adding users and changing passwords, over the store's users and
 * roles tables. A password only passes through here in the caller's wiped
 * buffer; it never reaches the store, a log or an error text.
 */
#ifndef KG_USERS_H
#define KG_USERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "common/kh_err.h"
#include "guardian/store.h"

#define KG_PW_MIN 8
#define KG_PW_MAX 256
#define KG_LOCK_THRESHOLD 5   /* failed logins in a row ... */
#define KG_LOCK_MS 60000      /* ... lock the user this long */
#define KG_SCRYPT_N 32768
#define KG_SCRYPT_R 8
#define KG_SCRYPT_P 1

/* 8-256 bytes (KH_ERR_BAD_FIELD with a reason otherwise). */
KH_MUST_CHECK int kg_users_password_ok(size_t pwlen, char *why, size_t whysz);
/* A fresh verifier: 16 random bytes of salt, scrypt N=2^15 r=8 p=1. */
KH_MUST_CHECK int kg_users_hash(const uint8_t *pw, size_t pwlen, struct kh_gstore_pwhash *out);
/* KH_OK when pw matches h (constant-time compare), else KH_ERR_AUTH_FAILED
 * (KH_ERR_STORAGE for parameters out of bounds). */
KH_MUST_CHECK int kg_users_verify(const uint8_t *pw, size_t pwlen,
                                  const struct kh_gstore_pwhash *h);

/* A login at now_ms. KH_OK with the user and its role; KH_ERR_AUTH_FAILED
 * for a wrong password or an unknown user (same reason, and an unknown user
 * costs a scrypt too); KH_ERR_LOCKED while locked, and on the failure that
 * sets the lock (KG_LOCK_THRESHOLD in a row lock for KG_LOCK_MS). *locked_now
 * (may be NULL): this attempt set the lock. */
KH_MUST_CHECK int kg_users_authenticate(struct kh_gstore *st, const char *name, const uint8_t *pw,
                                        size_t pwlen, int64_t now_ms, struct kh_gstore_user *u,
                                        struct kh_gstore_role_rec *role, bool *locked_now,
                                        char *why, size_t whysz);
KH_MUST_CHECK int kg_users_add(struct kh_gstore *st, const char *name, const char *role,
                               const uint8_t *pw, size_t pwlen, bool must_change, char *why,
                               size_t whysz);
KH_MUST_CHECK int kg_users_set_password(struct kh_gstore *st, const char *name, const uint8_t *pw,
                                        size_t pwlen, bool must_change, char *why, size_t whysz);

#endif

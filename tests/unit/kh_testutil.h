/* Helpers for unit tests: a throwaway device in a temporary data dir. */
#ifndef KH_TESTUTIL_H
#define KH_TESTUTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "hsm/hsm.h"

/* Opens a fresh device in a new temporary directory (path in dir, 256 bytes). */
void kh_test_hsm_open(struct kh_hsm *hsm, char dir[static 256]);
/* Closes it and removes the directory. */
void kh_test_hsm_close(struct kh_hsm *hsm, const char *dir);
/* A session on the given port, logged out. */
void kh_test_session(struct kh_session *s, enum kh_port port);
/* Run one request text through the dispatcher; the response is copied to
 * out (NUL-terminated). Returns the dispatcher's result. */
int kh_test_call(struct kh_hsm *hsm, struct kh_session *s, const char *req, char *out, size_t outsz);

/* The passwords kh_test_admin_login gives the two administrators in place
 * of the default one. */
#define KH_TEST_ADMIN1_PW "first-secret-1"
#define KH_TEST_ADMIN2_PW "second-secret-2"

/* Uppercase hex of the text s into out (2 * strlen(s) + 1 bytes). */
void kh_test_hexstr(const char *s, char *out);
/* LOGN as id with password pw, changing it to np unless np is NULL. */
int kh_test_logn(struct kh_hsm *hsm, struct kh_session *s, const char *id, const char *pw,
                 const char *np, char *out, size_t outsz);
/* A new admin-port session s on which Admin1 and Admin2 log in, changing
 * the default password to KH_TEST_ADMIN1_PW / KH_TEST_ADMIN2_PW; s is then
 * active. */
void kh_test_admin_login(struct kh_hsm *hsm, struct kh_session *s);

/* The dispatcher tests' fixture: a device, an admin session and the last
 * response. */
struct kh_test_fx {
	struct kh_hsm hsm;
	char dir[256];
	struct kh_session admin;
	char out[262144];
};
/* cmocka setup: a fresh device in a new kh_test_fx, nobody logged in. */
int kh_test_fx_setup(void **state);
/* cmocka setup: as kh_test_fx_setup, then kh_test_admin_login on admin. */
int kh_test_fx_setup_admin(void **state);
/* cmocka teardown for both. */
int kh_test_fx_teardown(void **state);

/* Request text through the dispatcher on a fixture x; response in x->out. */
#define KH_CALL(x, s, req) kh_test_call(&(x)->hsm, (s), (req), (x)->out, sizeof((x)->out))
#define KH_LOGN(x, s, id, pw, np)                                                                  \
	kh_test_logn(&(x)->hsm, (s), (id), (pw), (np), (x)->out, sizeof((x)->out))

/* A session on the admin port that stands for Admin1 and Admin2 logged in
 * as Administrator, without going through LOGN. */
void kh_test_admin_session(struct kh_hsm *hsm, struct kh_session *s);
/* The value of tag in the response resp ("" if absent), in a static buffer. */
const char *kh_test_field(const char *resp, const char *tag);

/* The key in slot unwraps to exactly the n bytes m. */
void kh_test_assert_key(struct kh_hsm *hsm, uint32_t slot, const uint8_t *m, size_t n);
/* One SQL statement straight on the device's database (to tamper with it):
 * SQLITE_OK, or the sqlite result code. */
int kh_test_db_exec(struct kh_hsm *hsm, const char *sql);

#endif

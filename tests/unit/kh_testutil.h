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

#endif

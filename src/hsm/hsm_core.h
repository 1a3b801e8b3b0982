/*
 * Opening and closing a device: data dir, device key, database, built-in
 * roles, major keys and TLS state, in that order.
 */
#ifndef KH_HSM_CORE_H
#define KH_HSM_CORE_H

#include "hsm/hsm.h"

/* Open the device in datadir (created 0700 if missing). */
KH_MUST_CHECK int kh_hsm_open(struct kh_hsm *hsm, const char *datadir, bool volatile_mk);
void kh_hsm_close(struct kh_hsm *hsm);
/* Run the known-answer self-tests; a failure puts the device in the error
 * state (hsm->error_state: cryptographic commands refused) and is audited.
 * A pass does not clear an earlier failure: only a restart does. */
struct kh_selftest_result;
KH_MUST_CHECK int kh_hsm_selftest(struct kh_hsm *hsm, struct kh_selftest_result *res);
/* Re-read the settings copy (after SETS or a restore). */
void kh_hsm_reload_settings(struct kh_hsm *hsm);

#endif

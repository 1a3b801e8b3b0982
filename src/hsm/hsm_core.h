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
/* Re-read the settings copy (after SETS or a restore). */
void kh_hsm_reload_settings(struct kh_hsm *hsm);

#endif

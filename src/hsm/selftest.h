/*
 * Known-answer self-tests (FIPS 140 style) of every algorithm the HSM uses,
 * for power-up and on demand. A failure here means the crypto library cannot
 * be trusted: the caller must refuse cryptographic service, never carry on.
 */
#ifndef KH_SELFTEST_H
#define KH_SELFTEST_H

#include "common/kh_err.h"

struct kh_selftest_result {
	unsigned run;          /* tests run (all of them, even after a failure) */
	unsigned failed;       /* tests that failed */
	char first_failed[32]; /* name of the first failed test, "" if none */
};

/* Run every known-answer test; fills res. Returns KH_OK when all pass,
 * KH_ERR_CRYPTO otherwise (KH_ERR_INTERNAL for a NULL res). Logs each
 * failed test by name and leaves nothing on the thread's OpenSSL error
 * queue. */
KH_MUST_CHECK int kh_selftest_run(struct kh_selftest_result *res);

#ifdef KH_FAULT_INJECTION
/* Test hook: name of one test to force to fail ("AES-ECB", ... or "all");
 * NULL clears. Not thread-safe: call it only while no self-test runs. */
void kh_selftest_force_failure(const char *name);
#endif

#endif

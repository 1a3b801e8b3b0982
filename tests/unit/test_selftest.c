/* Unit tests for the known-answer self-tests: every test passes on a sound
 * library, and (with fault injection) every one of them can fail, alone,
 * through its own comparison. */
#include "kh_testutil.h"
#include "hsm/selftest.h"
#include "common/kh_log.h"

#include <string.h>

#include <openssl/err.h>

static const char *const names[] = {
    "AES-ECB",     "AES-CBC",     "AES-CTR", "AES-GCM",   "AES-CMAC", "AES-KW",  "AES-KWP",
    "HMAC-SHA256", "HMAC-SHA512", "SHA-1",   "SHA-256",   "SHA-384",  "SHA-512", "SHA3-256",
    "RSA-SIGN",    "ECDSA-P256",  "ED25519", "ECDH-P256", "DRBG",
};
#define NTESTS (sizeof(names) / sizeof(names[0]))

static void test_all_pass(void **state)
{
	struct kh_selftest_result res;

	memset(&res, 0xA5, sizeof(res));
	assert_int_equal(kh_selftest_run(&res), KH_OK);
	assert_int_equal(res.run, NTESTS);
	assert_int_equal(res.failed, 0);
	assert_string_equal(res.first_failed, "");
	assert_int_equal(ERR_peek_error(), 0);
	/* a second run (on demand, after power-up) is as good as the first */
	assert_int_equal(kh_selftest_run(&res), KH_OK);
	assert_int_equal(res.run, NTESTS);
	assert_int_equal(res.failed, 0);
	(void)state;
}

static void test_null_result(void **state)
{
	assert_int_equal(kh_selftest_run(NULL), KH_ERR_INTERNAL);
	(void)state;
}

#ifdef KH_FAULT_INJECTION
static void test_each_forced_failure(void **state)
{
	for (size_t i = 0; i < NTESTS; i++) {
		struct kh_selftest_result res;

		kh_selftest_force_failure(names[i]);
		assert_int_equal(kh_selftest_run(&res), KH_ERR_CRYPTO);
		assert_int_equal(res.run, NTESTS);
		assert_int_equal(res.failed, 1);
		assert_string_equal(res.first_failed, names[i]);
		assert_int_equal(ERR_peek_error(), 0);
	}
	kh_selftest_force_failure(NULL);
	(void)state;
}

static void test_all_forced(void **state)
{
	struct kh_selftest_result res;

	kh_selftest_force_failure("all");
	assert_int_equal(kh_selftest_run(&res), KH_ERR_CRYPTO);
	assert_int_equal(res.run, NTESTS);
	assert_int_equal(res.failed, NTESTS);
	assert_string_equal(res.first_failed, names[0]);
	kh_selftest_force_failure(NULL);
	(void)state;
}

static void test_clear_restores(void **state)
{
	struct kh_selftest_result res;

	kh_selftest_force_failure("SHA-256");
	assert_int_equal(kh_selftest_run(&res), KH_ERR_CRYPTO);
	kh_selftest_force_failure(NULL);
	assert_int_equal(kh_selftest_run(&res), KH_OK);
	assert_int_equal(res.failed, 0);
	assert_string_equal(res.first_failed, "");
	/* a name that is no test's forces nothing */
	kh_selftest_force_failure("SHA-3");
	assert_int_equal(kh_selftest_run(&res), KH_OK);
	kh_selftest_force_failure("");
	assert_int_equal(kh_selftest_run(&res), KH_OK);
	kh_selftest_force_failure(NULL);
	(void)state;
}
#endif

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_all_pass),
	    cmocka_unit_test(test_null_result),
#ifdef KH_FAULT_INJECTION
	    cmocka_unit_test(test_each_forced_failure),
	    cmocka_unit_test(test_all_forced),
	    cmocka_unit_test(test_clear_restores),
#endif
	};
	/* forced failures are logged by name; keep the output to cmocka's */
	kh_log_init("test_selftest", KH_LOG_ERR, NULL);
	return cmocka_run_group_tests(tests, NULL, NULL);
}

/* The shared scrypt verifier code: the KDF against RFC 7914, the stored
 * parameter string and its bounds, and the memory limit. */
#include "kh_testutil.h"
#include "common/kh_scrypt.h"

#include <string.h>

static void test_rfc7914_vector(void **state)
{
	/* RFC 7914 section 12, second vector */
	static const uint8_t want[64] = {
	    0xfd, 0xba, 0xbe, 0x1c, 0x9d, 0x34, 0x72, 0x00, 0x78, 0x56, 0xe7, 0x19, 0x0d,
	    0x01, 0xe9, 0xfe, 0x7c, 0x6a, 0xd7, 0xcb, 0xc8, 0x23, 0x78, 0x30, 0xe7, 0x73,
	    0x76, 0x63, 0x4b, 0x37, 0x31, 0x62, 0x2e, 0xaf, 0x30, 0xd9, 0x2e, 0x22, 0xa3,
	    0x88, 0x6f, 0xf1, 0x09, 0x27, 0x9d, 0x98, 0x30, 0xda, 0xc7, 0x27, 0xaf, 0xb9,
	    0x4a, 0x83, 0xee, 0x6d, 0x83, 0x60, 0xcb, 0xdf, 0xa2, 0xcc, 0x06, 0x40};
	const struct kh_scrypt_params k = {.N = 1024, .r = 8, .p = 16};
	uint8_t out[64];
	(void)state;
	assert_int_equal(kh_scrypt((const uint8_t *)"password", 8, (const uint8_t *)"NaCl", 4, &k,
	                           0, out, sizeof(out)),
	                 KH_OK);
	assert_memory_equal(out, want, sizeof(want));
	/* an empty password is a password too */
	assert_int_equal(kh_scrypt(NULL, 0, (const uint8_t *)"NaCl", 4, &k, 0, out, 32), KH_OK);
	/* above the memory limit (128 * r * N bytes = 32 MiB > 16 MiB): refused */
	const struct kh_scrypt_params big = {.N = 32768, .r = 8, .p = 1};
	assert_int_equal(kh_scrypt((const uint8_t *)"pw", 2, (const uint8_t *)"salt", 4, &big,
	                           16u << 20, out, 32),
	                 KH_ERR_CRYPTO);
}

static void test_params(void **state)
{
	const struct kh_scrypt_params max = {.N = 1u << 17, .r = 16, .p = 4};
	const struct kh_scrypt_params now = {.N = 32768, .r = 8, .p = 1};
	struct kh_scrypt_params k;
	char s[32];
	(void)state;
	kh_scrypt_format(&now, s, sizeof(s));
	assert_string_equal(s, "scrypt:32768:8:1");
	assert_true(kh_scrypt_parse(s, &max, &k));
	assert_true(k.N == 32768 && k.r == 8 && k.p == 1);
	assert_true(kh_scrypt_parse("scrypt:131072:16:4", &max, &k)); /* the bounds themselves */
	static const char *const bad[] = {
	    "",
	    "scrypt",
	    "scrypt:32768:8",
	    "scrypt:32768:8:1x", /* trailing bytes */
	    "scrypt:32768:8:1:2",
	    "pbkdf2:32768:8:1",
	    "scrypt:512:8:1",        /* below 1024 */
	    "scrypt:30000:8:1",      /* not a power of two */
	    "scrypt:262144:8:1",     /* above max N */
	    "scrypt:1073741824:8:1", /* a gigabyte */
	    "scrypt:32768:0:1",
	    "scrypt:32768:17:1", /* above max r */
	    "scrypt:32768:8:0",
	    "scrypt:32768:8:5", /* above max p */
	    "scrypt:-32768:8:1",
	    "scrypt:18446744073709551616:8:1",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		k = now;
		if (kh_scrypt_parse(bad[i], &max, &k))
			fail_msg("accepted \"%s\"", bad[i]);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_rfc7914_vector),
	    cmocka_unit_test(test_params),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

/* The bounded buffer: ceiling, consume/truncate, growth without realloc. */
#include "kh_testutil.h"
#include "common/kh_buf.h"

#include <string.h>

static void test_limits(void **state)
{
	struct kh_buf *b = kh_buf_new(10);
	(void)state;
	assert_int_equal(kh_buf_put(b, "0123456789", 10), KH_OK);
	assert_int_equal(kh_buf_put(b, "x", 1), KH_ERR_TOO_LARGE);
	assert_int_equal(kh_buf_len(b), 10);
	kh_buf_consume(b, 4);
	assert_memory_equal(kh_buf_ptr(b), "456789", 6);
	assert_int_equal(kh_buf_put(b, "abcd", 4), KH_OK); /* slides, no growth past max */
	assert_memory_equal(kh_buf_ptr(b), "456789abcd", 10);
	kh_buf_truncate(b, 3);
	assert_memory_equal(kh_buf_ptr(b), "456", 3);
	assert_int_equal(kh_buf_find(b, 0, '6'), 2);
	assert_int_equal(kh_buf_find(b, 0, 'z'), -1);
	kh_buf_reset(b);
	assert_int_equal(kh_buf_len(b), 0);
	kh_buf_free(b);
}

static void test_growth(void **state)
{
	struct kh_buf *b = kh_buf_new(1 << 20);
	uint8_t chunk[1000];
	(void)state;
	for (size_t i = 0; i < sizeof(chunk); i++)
		chunk[i] = (uint8_t)i;
	for (int i = 0; i < 500; i++)
		assert_int_equal(kh_buf_put(b, chunk, sizeof(chunk)), KH_OK);
	assert_int_equal(kh_buf_len(b), 500000);
	assert_memory_equal(kh_buf_ptr(b) + 499000, chunk, sizeof(chunk));
	assert_int_equal(kh_buf_putf(b, "%d-%s", 7, "x"), KH_OK);
	assert_memory_equal(kh_buf_ptr(b) + 500000, "7-x", 3);
	assert_int_equal(kh_buf_put_hex(b, (const uint8_t *)"\xde\xad", 2), KH_OK);
	assert_memory_equal(kh_buf_ptr(b) + 500003, "DEAD", 4);
	kh_buf_free(b);
	kh_buf_free(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {cmocka_unit_test(test_limits), cmocka_unit_test(test_growth)};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

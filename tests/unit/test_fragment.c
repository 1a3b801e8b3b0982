/* Unit tests for fragment files: round trip, strict parsing of every field
 * and length, and authentication of header and share. */
#include "kh_testutil.h"
#include "hsm/fragment.h"
#include "common/kh_mem.h"

#include <string.h>

static const uint8_t pass[] = "correct horse battery";
#define PASSLEN (sizeof(pass) - 1)

static void meta(struct kh_fragment_hdr *h, unsigned bits)
{
	memset(h, 0, sizeof(*h));
	strcpy(h->name, "PMK");
	strcpy(h->alg, "AES");
	h->bits = bits;
	h->m = 2;
	h->n = 3;
	h->number = 2;
	strcpy(h->kcv, "A1B2C3");
}

static void make(uint8_t *file, size_t *len, uint8_t *share, unsigned bits)
{
	struct kh_fragment_hdr h;
	meta(&h, bits);
	for (size_t i = 0; i < bits / 8; i++)
		share[i] = (uint8_t)(0x40 + i);
	assert_int_equal(kh_fragment_seal(&h, share, pass, PASSLEN, file, len), KH_OK);
}

static void test_round_trip(void **state)
{
	static const unsigned sizes[] = {128, 192, 256};
	for (size_t k = 0; k < 3; k++) {
		uint8_t file[KH_FRAGMENT_MAX_LEN], share[32], got[32];
		size_t len = 0, glen = 0;
		struct kh_fragment_hdr h;
		make(file, &len, share, sizes[k]);
		assert_true(len <= KH_FRAGMENT_MAX_LEN);
		assert_int_equal(kh_fragment_parse(file, len, &h), KH_OK);
		assert_string_equal(h.name, "PMK");
		assert_string_equal(h.alg, "AES");
		assert_int_equal(h.bits, sizes[k]);
		assert_int_equal(h.m, 2);
		assert_int_equal(h.n, 3);
		assert_int_equal(h.number, 2);
		assert_string_equal(h.kcv, "A1B2C3");
		assert_int_equal(h.ctlen, sizes[k] / 8 + KH_FRAGMENT_TAG_LEN);
		memset(got, 0, sizeof(got));
		assert_int_equal(kh_fragment_open(file, len, pass, PASSLEN, &h, got, &glen), KH_OK);
		assert_int_equal(glen, sizes[k] / 8);
		assert_memory_equal(got, share, glen);
		/* the share itself is not in the file */
		assert_null(memmem(file, len, share, glen));
	}
	(void)state;
}

static void test_wrong_passphrase(void **state)
{
	uint8_t file[KH_FRAGMENT_MAX_LEN], share[32], got[32];
	size_t len = 0, glen = 0;
	struct kh_fragment_hdr h;
	make(file, &len, share, 256);
	assert_int_equal(kh_fragment_open(file, len, (const uint8_t *)"correct horse batterx",
	                                  PASSLEN, &h, got, &glen),
	                 KH_ERR_FRAGMENT_INVALID);
	assert_int_equal(kh_fragment_open(file, len, pass, PASSLEN - 1, &h, got, &glen),
	                 KH_ERR_FRAGMENT_INVALID);
	(void)state;
}

static void test_every_truncation(void **state)
{
	uint8_t file[KH_FRAGMENT_MAX_LEN + 1], share[32];
	size_t len = 0;
	struct kh_fragment_hdr h;
	make(file, &len, share, 192);
	for (size_t n = 0; n < len; n++)
		assert_int_equal(kh_fragment_parse(file, n, &h), KH_ERR_FRAGMENT_INVALID);
	file[len] = 0;
	assert_int_equal(kh_fragment_parse(file, len + 1, &h), KH_ERR_FRAGMENT_INVALID);
	assert_int_equal(kh_fragment_parse(NULL, 0, &h), KH_ERR_FRAGMENT_INVALID);
	assert_int_equal(kh_fragment_parse(file, len, &h), KH_OK);
	(void)state;
}

/* Offsets in a version-1 file with name "PMK" and alg "AES". */
enum {
	O_MAGIC = 0,
	O_VER = 4,
	O_NAMELEN = 5,
	O_NAME = 6,
	O_ALGLEN = 9,
	O_ALG = 10,
	O_BITS = 13,
	O_M = 15,
	O_N = 16,
	O_NUM = 17,
	O_KCV = 18,
	O_SALT = 24,
	O_NONCE = 40,
	O_CT = 52
};

static int parse_with(const uint8_t *orig, size_t len, size_t off, uint8_t v)
{
	uint8_t f[KH_FRAGMENT_MAX_LEN];
	struct kh_fragment_hdr h;
	memcpy(f, orig, len);
	f[off] = v;
	return kh_fragment_parse(f, len, &h);
}

static void test_bad_fields(void **state)
{
	uint8_t file[KH_FRAGMENT_MAX_LEN], share[32];
	size_t len = 0;
	make(file, &len, share, 256);
	assert_int_equal(file[O_NAMELEN], 3);
	assert_memory_equal(file + O_NAME, "PMK", 3);
	assert_memory_equal(file + O_ALG, "AES", 3);
	assert_int_equal(len, O_CT + 32 + 16);

	assert_int_equal(parse_with(file, len, O_MAGIC, 'X'), KH_ERR_FRAGMENT_INVALID);
	assert_int_equal(parse_with(file, len, O_VER, 2), KH_ERR_FRAGMENT_INVALID);
	assert_int_equal(parse_with(file, len, O_VER, 0), KH_ERR_FRAGMENT_INVALID);
	assert_int_equal(parse_with(file, len, O_NAMELEN, 0), KH_ERR_FRAGMENT_INVALID);
	assert_int_equal(parse_with(file, len, O_NAMELEN, 200), KH_ERR_FRAGMENT_INVALID);
	assert_int_equal(parse_with(file, len, O_NAME, 'X'), KH_ERR_FRAGMENT_INVALID);
	assert_int_equal(parse_with(file, len, O_NAME, 'p'), KH_ERR_FRAGMENT_INVALID);
	assert_int_equal(parse_with(file, len, O_ALGLEN, 4), KH_ERR_FRAGMENT_INVALID);
	assert_int_equal(parse_with(file, len, O_ALG, 'D'), KH_ERR_FRAGMENT_INVALID);
	assert_int_equal(parse_with(file, len, O_BITS, 0x02), KH_ERR_FRAGMENT_INVALID);
	assert_int_equal(parse_with(file, len, O_BITS + 1, 0x80),
	                 KH_ERR_FRAGMENT_INVALID); /* 384 */
	assert_int_equal(parse_with(file, len, O_BITS + 1, 0xC0),
	                 KH_ERR_FRAGMENT_INVALID); /* 448 */
	{
		/* a valid length (128) that does not match the share's size */
		uint8_t f[KH_FRAGMENT_MAX_LEN];
		struct kh_fragment_hdr h;
		memcpy(f, file, len);
		f[O_BITS] = 0x00;
		f[O_BITS + 1] = 0x80;
		assert_int_equal(kh_fragment_parse(f, len, &h), KH_ERR_FRAGMENT_INVALID);
		assert_int_equal(kh_fragment_parse(f, len - 16, &h), KH_OK);
	}
	assert_int_equal(parse_with(file, len, O_M, 1), KH_ERR_FRAGMENT_INVALID);
	assert_int_equal(parse_with(file, len, O_M, 4), KH_ERR_FRAGMENT_INVALID); /* M > N */
	assert_int_equal(parse_with(file, len, O_N, 10), KH_ERR_FRAGMENT_INVALID);
	assert_int_equal(parse_with(file, len, O_N, 1), KH_ERR_FRAGMENT_INVALID);
	assert_int_equal(parse_with(file, len, O_NUM, 0), KH_ERR_FRAGMENT_INVALID);
	assert_int_equal(parse_with(file, len, O_NUM, 4), KH_ERR_FRAGMENT_INVALID); /* > N */
	assert_int_equal(parse_with(file, len, O_KCV, 'a'), KH_ERR_FRAGMENT_INVALID);
	assert_int_equal(parse_with(file, len, O_KCV + 5, 'G'), KH_ERR_FRAGMENT_INVALID);
	/* values that parse but are still valid shapes */
	assert_int_equal(parse_with(file, len, O_NUM, 3), KH_OK);
	assert_int_equal(parse_with(file, len, O_KCV, '0'), KH_OK);
	(void)state;
}

/* Every part of the file is authenticated: an edit that still parses makes
 * opening fail. One edit per field keeps the scrypt count small. */
static void test_header_is_authenticated(void **state)
{
	static const size_t offs[] = {O_NUM, O_KCV, O_SALT + 3, O_NONCE + 5, O_CT, O_CT + 32 + 15};
	uint8_t file[KH_FRAGMENT_MAX_LEN], f[KH_FRAGMENT_MAX_LEN], share[32], got[32];
	size_t len = 0, glen = 0;
	struct kh_fragment_hdr h;
	make(file, &len, share, 256);
	for (size_t i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
		memcpy(f, file, len);
		f[offs[i]] = offs[i] == O_NUM   ? 3
		             : offs[i] == O_KCV ? (f[O_KCV] == '0' ? '1' : '0')
		                                : (uint8_t)(f[offs[i]] ^ 0x01);
		assert_int_equal(kh_fragment_parse(f, len, &h), KH_OK);
		assert_int_equal(kh_fragment_open(f, len, pass, PASSLEN, &h, got, &glen),
		                 KH_ERR_FRAGMENT_INVALID);
	}
	(void)state;
}

static void test_seal_refuses_bad_input(void **state)
{
	uint8_t file[KH_FRAGMENT_MAX_LEN], share[32] = {0};
	size_t len = 0;
	struct kh_fragment_hdr h;
	meta(&h, 256);
	assert_int_equal(kh_fragment_seal(&h, share, pass, 7, file, &len), KH_ERR_BAD_FIELD);
	meta(&h, 256);
	h.m = 1;
	assert_int_not_equal(kh_fragment_seal(&h, share, pass, PASSLEN, file, &len), KH_OK);
	meta(&h, 256);
	strcpy(h.kcv, "ABC");
	assert_int_not_equal(kh_fragment_seal(&h, share, pass, PASSLEN, file, &len), KH_OK);
	(void)state;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_round_trip),
	    cmocka_unit_test(test_wrong_passphrase),
	    cmocka_unit_test(test_every_truncation),
	    cmocka_unit_test(test_bad_fields),
	    cmocka_unit_test(test_header_is_authenticated),
	    cmocka_unit_test(test_seal_refuses_bad_input),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

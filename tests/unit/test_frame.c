/* The Excrypt codec: valid frames, every rejection rule, limits, builders. */
#include "kh_testutil.h"
#include "common/kh_buf.h"
#include "common/kh_frame.h"
#include "common/kh_mem.h"

#include <stdio.h>
#include <string.h>

static int parse(const char *s, size_t maxf, struct kh_frame *f)
{
	return kh_frame_parse((const uint8_t *)s, strlen(s), maxf, f);
}

static void test_parse_valid(void **state)
{
	struct kh_frame f;
	char out[64];
	uint64_t v;
	bool yn;
	(void)state;
	assert_int_equal(parse("[AOECHO;AGhello world;NB12;YNY;EM;]", 16, &f), KH_OK);
	assert_string_equal(f.cmd, "ECHO");
	assert_int_equal(f.nfields, 4);
	assert_int_equal(kh_frame_str(&f, "AG", out, sizeof(out)), KH_OK);
	assert_string_equal(out, "hello world");
	assert_int_equal(kh_frame_u64(&f, "NB", 1, 100, &v), KH_OK);
	assert_int_equal(v, 12);
	assert_int_equal(kh_frame_u64(&f, "NB", 13, 100, &v), KH_ERR_BAD_FIELD);
	assert_int_equal(kh_frame_yn(&f, "YN", &yn), KH_OK);
	assert_true(yn);
	assert_int_equal(kh_frame_str(&f, "EM", out, sizeof(out)), KH_OK);
	assert_string_equal(out, "");
	assert_int_equal(kh_frame_str(&f, "ZZ", out, sizeof(out)), KH_ERR_MISSING_FIELD);
	assert_int_equal(kh_frame_str(&f, "AG", out, 5), KH_ERR_BAD_FIELD);
	assert_int_equal(parse("[AOSTAT;]", 16, &f), KH_OK);
	assert_int_equal(f.nfields, 0);
}

static void test_parse_rejects(void **state)
{
	struct kh_frame f;
	(void)state;
	const char *bad[] = {
		"",                      /* empty */
		"[AOECHO]",              /* no ; after the command */
		"[AOECH;]",              /* short command */
		"[AOecho;]",             /* lower-case command */
		"[XXECHO;]",             /* not AO */
		"[AOECHO;AGx]",          /* value not closed by ; */
		"[AOECHO;A;]",           /* short tag */
		"[AOECHO;aGx;]",         /* lower-case tag */
		"[AOECHO;AGx;AGy;]",     /* duplicate tag */
		"[AOECHO;AGa[b;]",       /* reserved byte in value */
		"[AOECHO;AG\x01;]",      /* control byte */
		"[AOECHO;AG\xc3\xa9;]",  /* high bytes */
		"[AOECHO;AGx;",          /* no closing ] */
		"AOECHO;]",              /* no opening [ */
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int r = parse(bad[i], 16, &f);
		if (r != KH_ERR_MALFORMED)
			fail_msg("case %zu (%s) gave %d", i, bad[i], r);
	}
	/* the command name is reported when the header was readable */
	assert_int_equal(parse("[AOLOGN;IDx;IDy;]", 16, &f), KH_ERR_MALFORMED);
	assert_string_equal(f.cmd, "LOGN");
}

static void test_field_limit(void **state)
{
	struct kh_frame f;
	char req[512] = "[AOECHO;";
	(void)state;
	for (int i = 0; i < 17; i++) {
		char fld[8];
		snprintf(fld, sizeof(fld), "A%c1;", 'A' + i);
		strcat(req, fld);
	}
	strcat(req, "]");
	assert_int_equal(parse(req, KH_FIELDS_MAX_PRELOGIN, &f), KH_ERR_TOO_LARGE);
	assert_int_equal(parse(req, KH_FIELDS_MAX, &f), KH_OK);
	assert_int_equal(f.nfields, 17);
}

static void test_find(void **state)
{
	size_t n = 0;
	(void)state;
	const uint8_t two[] = "[AOECHO;][AOSTAT;]";
	assert_int_equal(kh_frame_find(two, sizeof(two) - 1, 4096, &n), 1);
	assert_int_equal(n, 9);
	assert_int_equal(kh_frame_find(two, 5, 4096, &n), 0);
	assert_int_equal(kh_frame_find((const uint8_t *)"x[AO", 4, 4096, &n), KH_ERR_MALFORMED);
	uint8_t big[5000];
	memset(big, 'A', sizeof(big));
	big[0] = '[';
	assert_int_equal(kh_frame_find(big, sizeof(big), 4096, &n), KH_ERR_TOO_LARGE);
	assert_int_equal(kh_frame_find(big, 4095, 4096, &n), 0);
	/* a ] beyond the limit does not count */
	big[4500] = ']';
	assert_int_equal(kh_frame_find(big, sizeof(big), 4096, &n), KH_ERR_TOO_LARGE);
}

static void test_hex(void **state)
{
	struct kh_frame f;
	uint8_t out[8], *sec = NULL;
	size_t len = 0;
	(void)state;
	assert_int_equal(parse("[AOLOGN;PW00ff7A;PXabc;PYZZ;]", 16, &f), KH_OK);
	assert_int_equal(kh_frame_hex(&f, "PW", out, sizeof(out), &len), KH_OK);
	assert_int_equal(len, 3);
	assert_memory_equal(out, "\x00\xff\x7a", 3);
	assert_int_equal(kh_frame_hex(&f, "PX", out, sizeof(out), &len), KH_ERR_BAD_FIELD);
	assert_int_equal(kh_frame_hex(&f, "PY", out, sizeof(out), &len), KH_ERR_BAD_FIELD);
	assert_int_equal(kh_frame_hex(&f, "PW", out, 2, &len), KH_ERR_BAD_FIELD);
	assert_int_equal(kh_frame_hex_secure(&f, "PW", 16, &sec, &len), KH_OK);
	assert_int_equal(len, 3);
	assert_memory_equal(sec, "\x00\xff\x7a", 3);
	kh_secure_free(sec, len);
	assert_int_equal(kh_frame_hex_secure(&f, "PY", 16, &sec, &len), KH_ERR_BAD_FIELD);
	char enc[7];
	kh_hex_encode((const uint8_t *)"\x01\xab\xff", 3, enc);
	assert_string_equal(enc, "01ABFF");
	uint8_t all[256], back[256];
	char hx[513];
	for (int i = 0; i < 256; i++)
		all[i] = (uint8_t)i;
	kh_hex_encode(all, 256, hx);
	assert_int_equal(kh_hex_decode(hx, 512, back, sizeof(back)), 256);
	assert_memory_equal(all, back, 256);
}

static void test_build_roundtrip(void **state)
{
	struct kh_buf *b = kh_buf_new(4096);
	struct kh_frame f;
	uint8_t out[4];
	size_t len;
	(void)state;
	assert_int_equal(kh_msg_begin(b, "RAND"), KH_OK);
	assert_int_equal(kh_msg_put(b, "AG", "text"), KH_OK);
	assert_int_equal(kh_msg_put_u64(b, "NB", 42), KH_OK);
	assert_int_equal(kh_msg_put_hex(b, "RN", (const uint8_t *)"\x01\x02", 2), KH_OK);
	assert_int_equal(kh_msg_put(b, "XX", "a;b"), KH_ERR_INTERNAL); /* refused: use hex */
	assert_int_equal(kh_msg_end(b), KH_OK);
	assert_int_equal(kh_frame_parse(kh_buf_ptr(b), kh_buf_len(b), 16, &f), KH_OK);
	assert_string_equal(f.cmd, "RAND");
	assert_int_equal(kh_frame_hex(&f, "RN", out, sizeof(out), &len), KH_OK);
	assert_int_equal(len, 2);
	kh_buf_reset(b);
	assert_int_equal(kh_msg_error(b, "LOGN", KH_ERR_AUTH_FAILED, "x;y]z"), KH_OK);
	assert_int_equal(kh_frame_parse(kh_buf_ptr(b), kh_buf_len(b), 16, &f), KH_OK);
	assert_string_equal(f.cmd, "ERRO");
	char t[128];
	assert_int_equal(kh_frame_str(&f, "EC", t, sizeof(t)), KH_OK);
	assert_string_equal(t, "12");
	assert_int_equal(kh_frame_str(&f, "ET", t, sizeof(t)), KH_OK);
	assert_string_equal(t, "invalid identity or password: x_y_z");
	kh_buf_free(b);
}

static void test_errors(void **state)
{
	(void)state;
	for (int e = 0; e > KH_ERR_LAST; e--) {
		assert_non_null(kh_strerror(e));
		if (e < 0)
			assert_int_equal(kh_err_from_wire(kh_err_to_wire(e)), e);
	}
	assert_int_equal(kh_err_from_wire(0), KH_ERR_PROTOCOL);
	assert_int_equal(kh_err_from_wire(9999), KH_ERR_PROTOCOL);
	assert_string_equal(kh_errname(KH_ERR_LOCKED), "LOCKED");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_valid), cmocka_unit_test(test_parse_rejects),
		cmocka_unit_test(test_field_limit), cmocka_unit_test(test_find),
		cmocka_unit_test(test_hex),         cmocka_unit_test(test_build_roundtrip),
		cmocka_unit_test(test_errors),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

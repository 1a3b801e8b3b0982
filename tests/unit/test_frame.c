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
	    "",                     /* empty */
	    "[AOECHO]",             /* no ; after the command */
	    "[AOECH;]",             /* short command */
	    "[AOecho;]",            /* lower-case command */
	    "[XXECHO;]",            /* not AO */
	    "[AOECHO;AGx]",         /* value not closed by ; */
	    "[AOECHO;A;]",          /* short tag */
	    "[AOECHO;aGx;]",        /* lower-case tag */
	    "[AOECHO;AGx;AGy;]",    /* duplicate tag */
	    "[AOECHO;AGa[b;]",      /* reserved byte in value */
	    "[AOECHO;AG\x01;]",     /* control byte */
	    "[AOECHO;AG\xc3\xa9;]", /* high bytes */
	    "[AOECHO;AGx;",         /* no closing ] */
	    "AOECHO;]",             /* no opening [ */
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

/* The codec converts 16 bytes or digits per step where it can, and the rest
 * one at a time: every byte value at every position, at lengths on both
 * sides of the step, gives what the plain definition says. */
static int ref_digit(uint8_t c)
{
	static const char digits[] = "0123456789ABCDEFabcdef";
	const char *at = c != 0 ? strchr(digits, c) : NULL;
	int i = at != NULL ? (int)(at - digits) : -1;
	return i < 16 ? i : i - 6;
}

static void test_hex_every_byte(void **state)
{
	static const size_t lens[] = {0, 1, 7, 8, 9, 15, 16, 17, 23, 24, 33, 40};
	uint8_t bytes[40], back[40];
	char hx[81], want[81];
	(void)state;
	for (size_t li = 0; li < sizeof(lens) / sizeof(lens[0]); li++) {
		size_t n = lens[li];
		for (unsigned fill = 0; fill < 256; fill += 51) {
			/* encode: any bytes */
			for (size_t i = 0; i < n; i++)
				bytes[i] = (uint8_t)(fill + 37 * i);
			kh_hex_encode(bytes, n, hx);
			for (size_t i = 0; i < n; i++)
				snprintf(want + 2 * i, 3, "%02X", bytes[i]);
			want[2 * n] = '\0';
			assert_string_equal(hx, want);
			assert_int_equal(kh_hex_decode(hx, 2 * n, back, sizeof(back)), (int)n);
			assert_memory_equal(back, bytes, n);
		}
		if (n == 0)
			continue;
		/* decode: one digit replaced by each byte value, everywhere */
		for (size_t i = 0; i < n; i++)
			bytes[i] = (uint8_t)(0xA5 ^ (17 * i));
		kh_hex_encode(bytes, n, hx);
		for (size_t pos = 0; pos < 2 * n; pos++) {
			char keep = hx[pos];
			for (int c = 0; c < 256; c++) {
				hx[pos] = (char)c;
				int r = kh_hex_decode(hx, 2 * n, back, sizeof(back)),
				    d = ref_digit((uint8_t)c);
				if (d < 0) {
					assert_int_equal(r, KH_ERR_BAD_FIELD);
					continue;
				}
				assert_int_equal(r, (int)n);
				uint8_t b = bytes[pos / 2];
				b = pos % 2 ? (uint8_t)((b & 0xf0) | d)
				            : (uint8_t)((b & 0x0f) | (d << 4));
				assert_int_equal(back[pos / 2], b);
			}
			hx[pos] = keep;
		}
	}
}

/* A value ends at its ';' whatever byte stops it and wherever: the parser
 * scans 16 bytes per step where it can. */
static void test_value_every_byte(void **state)
{
	char req[80];
	struct kh_frame f;
	(void)state;
	for (size_t vlen = 1; vlen <= 40; vlen += 13) {
		for (size_t pos = 0; pos < vlen; pos++) {
			for (int c = 1; c < 256; c++) {
				int n = snprintf(req, sizeof(req), "[AOECHO;AG%.*s;]", (int)vlen,
				                 "0123456789abcdefghijklmnopqrstuvwxyz!#$%&");
				req[10 + pos] = (char)c;
				bool ok =
				    c >= 0x20 && c <= 0x7e && c != ';' && c != '[' && c != ']';
				assert_int_equal(kh_frame_text_ok(req + 10, vlen), ok);
				int r = kh_frame_parse((const uint8_t *)req, (size_t)n, 16, &f);
				if (c == ';' && pos > 0) {
					/* splits the value: the rest is not a tag and value */
					assert_int_not_equal(r, KH_OK);
					continue;
				}
				assert_int_equal(r, ok ? KH_OK : KH_ERR_MALFORMED);
				if (ok) {
					assert_int_equal(f.nfields, 1);
					assert_int_equal(f.fields[0].len, vlen);
				}
			}
		}
	}
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
	    cmocka_unit_test(test_parse_valid),
	    cmocka_unit_test(test_parse_rejects),
	    cmocka_unit_test(test_field_limit),
	    cmocka_unit_test(test_find),
	    cmocka_unit_test(test_hex),
	    cmocka_unit_test(test_build_roundtrip),
	    cmocka_unit_test(test_errors),
	    cmocka_unit_test(test_hex_every_byte),
	    cmocka_unit_test(test_value_every_byte),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

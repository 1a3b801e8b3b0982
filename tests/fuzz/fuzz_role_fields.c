/*
 * libFuzzer target for the role field codecs (hsm/roles.h): permissions,
 * key-slot ranges, allowed commands, ports, sources and dual factor, each
 * fed the whole input as text. Accept/reject must match a plain reading of
 * the syntax; what parses must be in bounds, format back to text that parses
 * to the same value, and a refused field must leave the output untouched.
 */
#include "hsm/dispatch.h"
#include "hsm/roles.h"
#include "common/kh_err.h"

#include "fuzz_check.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ALL_PERMS ((UINT64_C(1) << KH_P_COUNT) - 1)
#define WORDS_TEXT_MAX 32 /* "prod,admin", "ethernet,usb" */
#define CMD_BYTES (KH_MAX_COMMANDS / 8)

/* ---- a reference reading of the field syntax ---- */

static char lower(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

static bool word_eq(const char *t, size_t n, const char *w)
{
	if (strlen(w) != n)
		return false;
	for (size_t i = 0; i < n; i++)
		if (lower(t[i]) != lower(w[i]))
			return false;
	return true;
}

static bool ref_blank(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (s[i] != ' ')
			return false;
	return true;
}

/* Calls each(tok, len) for every comma-separated element, spaces around
 * it trimmed; false as soon as one is refused. */
static bool ref_each(const char *s, size_t n, bool (*each)(void *, const char *, size_t), void *a)
{
	size_t start = 0;
	for (size_t i = 0; i <= n; i++) {
		if (i < n && s[i] != ',')
			continue;
		size_t b = start, e = i;
		while (b < e && s[b] == ' ')
			b++;
		while (e > b && s[e - 1] == ' ')
			e--;
		if (!each(a, s + b, e - b))
			return false;
		start = i + 1;
	}
	return true;
}

static bool perm_tok(void *a, const char *t, size_t n)
{
	uint64_t *v = a;
	for (size_t i = 0; i < KH_P_COUNT; i++) {
		if (word_eq(t, n, kh_perm_table[i].id) || word_eq(t, n, kh_perm_table[i].name)) {
			*v |= KH_PERM(kh_perm_table[i].bit);
			return true;
		}
	}
	return false;
}

struct words {
	const char *w[2];
	unsigned bit[2];
	unsigned v;
};

static bool word_tok(void *a, const char *t, size_t n)
{
	struct words *ws = a;
	for (size_t i = 0; i < 2; i++) {
		if (word_eq(t, n, ws->w[i])) {
			ws->v |= ws->bit[i];
			return true;
		}
	}
	return false;
}

static bool cmd_tok(void *a, const char *t, size_t n)
{
	uint8_t *bm = a;
	if (n != 4)
		return false;
	for (size_t i = 0; i < kh_cmd_count; i++) {
		if ((kh_cmd_table[i].flags & KH_CF_EXCRYPT) &&
		    word_eq(t, n, kh_cmd_table[i].name)) {
			bm[i / 8] |= (uint8_t)(1u << (i % 8));
			return true;
		}
	}
	return false;
}

/* ---- the fields ---- */

static void check_perms(const char *s, size_t n)
{
	char text[KH_PERMS_TEXT_MAX], again[KH_PERMS_TEXT_MAX];
	uint64_t v = UINT64_MAX, w = UINT64_MAX, ref = 0;
	bool ok = ref_blank(s, n) || ref_each(s, n, perm_tok, &ref);
	int r = kh_perms_parse(s, n, &v);

	CHECK(r == (ok ? KH_OK : KH_ERR_BAD_FIELD));
	if (!ok) {
		CHECK(v == UINT64_MAX);
		return;
	}
	CHECK(v == ref && (v & ~ALL_PERMS) == 0);
	kh_perms_format(v, text, sizeof(text));
	CHECK(strlen(text) < sizeof(text) - 1);
	CHECK(kh_perms_parse(text, strlen(text), &w) == KH_OK && w == v);
	kh_perms_format(w, again, sizeof(again));
	CHECK(strcmp(text, again) == 0);
}

static void check_ranges(const char *s, size_t n)
{
	struct kh_range r1[KH_MAX_RANGES], r2[KH_MAX_RANGES];
	char text[KH_RANGES_TEXT_MAX];
	size_t c1 = SIZE_MAX, c2 = 0;
	int r;

	memset(r1, 0xa5, sizeof(r1));
	r = kh_ranges_parse(s, n, r1, &c1);
	CHECK(r == KH_OK || r == KH_ERR_BAD_FIELD);
	if (r != KH_OK) {
		CHECK(c1 == SIZE_MAX);
		for (size_t i = 0; i < sizeof(r1); i++)
			CHECK(((const uint8_t *)r1)[i] == 0xa5);
		return;
	}
	CHECK(c1 <= KH_MAX_RANGES);
	CHECK(c1 > 0 || ref_blank(s, n));
	for (size_t i = 0; i < c1; i++) {
		CHECK(r1[i].lo <= r1[i].hi && r1[i].hi <= KH_SLOT_MAX);
		CHECK(r1[i].kind == 'S' || r1[i].kind == 'A' || r1[i].kind == 'M');
		for (size_t j = 0; j < i; j++)
			CHECK(r1[i].hi < r1[j].lo || r1[j].hi < r1[i].lo);
	}
	kh_ranges_format(r1, c1, text, sizeof(text));
	CHECK(strlen(text) < sizeof(text) - 1);
	CHECK(kh_ranges_parse(text, strlen(text), r2, &c2) == KH_OK && c2 == c1);
	for (size_t i = 0; i < c1; i++)
		CHECK(r2[i].lo == r1[i].lo && r2[i].hi == r1[i].hi && r2[i].kind == r1[i].kind);
}

static bool cmd_ok(size_t i)
{
	return i < kh_cmd_count && (kh_cmd_table[i].flags & KH_CF_EXCRYPT);
}

static void check_cmds_value(const uint8_t bm[CMD_BYTES])
{
	char text[KH_CMDS_TEXT_MAX];
	uint8_t again[CMD_BYTES];

	kh_cmds_format(bm, text, sizeof(text));
	CHECK(strlen(text) < sizeof(text) - 1);
	CHECK(kh_cmds_parse(text, strlen(text), again) == KH_OK);
	CHECK(memcmp(again, bm, CMD_BYTES) == 0);
}

static void check_cmds(const char *s, size_t n)
{
	uint8_t bm[CMD_BYTES], ref[CMD_BYTES] = {0};
	bool ok = ref_blank(s, n) || ref_each(s, n, cmd_tok, ref);
	int r;

	memset(bm, 0xa5, sizeof(bm));
	r = kh_cmds_parse(s, n, bm);
	CHECK(r == (ok ? KH_OK : KH_ERR_BAD_FIELD));
	if (!ok) {
		for (size_t i = 0; i < sizeof(bm); i++)
			CHECK(bm[i] == 0xa5);
		return;
	}
	CHECK(memcmp(bm, ref, sizeof(bm)) == 0);
	for (size_t i = 0; i < KH_MAX_COMMANDS; i++)
		if ((bm[i / 8] >> (i % 8)) & 1)
			CHECK(cmd_ok(i));
	check_cmds_value(bm);
}

static void check_words(const char *s, size_t n, bool ports)
{
	struct words ref = {
	    {ports ? "prod" : "ethernet", ports ? "admin" : "usb"},
	    {ports ? KH_PORT_PROD : KH_SRC_ETHERNET, ports ? KH_PORT_ADMIN : KH_SRC_USB},
	    0};
	char text[WORDS_TEXT_MAX];
	unsigned v = 0xa5a5, w = 0;
	bool ok = ref_blank(s, n) || ref_each(s, n, word_tok, &ref);
	int r = ports ? kh_ports_parse(s, n, &v) : kh_sources_parse(s, n, &v);

	CHECK(r == (ok ? KH_OK : KH_ERR_BAD_FIELD));
	if (!ok) {
		CHECK(v == 0xa5a5);
		return;
	}
	CHECK(v == ref.v && (v & ~3u) == 0);
	if (ports)
		kh_ports_format(v, text, sizeof(text));
	else
		kh_sources_format(v, text, sizeof(text));
	r = ports ? kh_ports_parse(text, strlen(text), &w)
	          : kh_sources_parse(text, strlen(text), &w);
	CHECK(r == KH_OK && w == v);
}

static void check_df(const char *s, size_t n)
{
	bool v = true;
	int r = kh_df_parse(s, n, &v);

	if (word_eq(s, n, "never")) {
		CHECK(r == KH_OK && v == false);
	} else {
		CHECK(r == KH_ERR_UNSUPPORTED && v == true);
	}
}

static void check_perm_find(const char *s, size_t n)
{
	const struct kh_perm_desc *d = kh_perm_find(s, n);
	uint64_t ref = 0;

	CHECK((d != NULL) == perm_tok(&ref, s, n));
	if (d != NULL)
		CHECK(ref == KH_PERM(d->bit) && (word_eq(s, n, d->id) || word_eq(s, n, d->name)));
}

/* Values made from the input, not parsed from it, must survive the trip. */
static void check_values(const uint8_t *d, size_t size)
{
	uint64_t pv = 0, got = 0;
	uint8_t bm[CMD_BYTES] = {0};
	char text[KH_PERMS_TEXT_MAX];

	for (size_t i = 0; i < 8 && i < size; i++)
		pv = pv << 8 | d[i];
	pv &= ALL_PERMS;
	kh_perms_format(pv, text, sizeof(text));
	CHECK(kh_perms_parse(text, strlen(text), &got) == KH_OK && got == pv);

	for (size_t i = 0; i < KH_MAX_COMMANDS; i++)
		if (cmd_ok(i) && i / 8 < size && ((d[size - 1 - i / 8] >> (i % 8)) & 1))
			bm[i / 8] |= (uint8_t)(1u << (i % 8));
	check_cmds_value(bm);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* an exact-size copy without a NUL: the parsers take (s, n) */
	char *s = malloc(size ? size : 1);

	if (s == NULL)
		abort();
	if (size)
		memcpy(s, data, size);
	check_perms(s, size);
	check_ranges(s, size);
	check_cmds(s, size);
	check_words(s, size, true);
	check_words(s, size, false);
	check_df(s, size);
	check_perm_find(s, size);
	check_values(data, size);
	free(s);
	return 0;
}

/*
 * libFuzzer target for the replication layouts: the key-table row that
 * KTEX/KTIM carry (hsm/replica.h) and the configuration blob's header that
 * CFIM reads first (hsm/backup.h; its body is the backup body, which
 * fuzz_backup reaches). The first input byte picks the parser; the rest is
 * its input.
 *
 * Properties: an accepted row is within every documented bound, re-encodes
 * to exactly its bytes (so no two encodings decode alike), and its parts
 * point inside the input; an accepted header has version 1, six uppercase
 * hex digits and its fixed length.
 */
#include "hsm/backup.h"
#include "hsm/keystore.h"
#include "hsm/majorkey.h"
#include "hsm/replica.h"
#include "common/kh_err.h"

#include "fuzz_check.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool inside(const uint8_t *p, size_t n, const uint8_t *base, size_t size)
{
	return n == 0 || (p >= base && p + n <= base + size);
}

static void row(const uint8_t *p, size_t n)
{
	struct kh_key_row r;
	if (kh_ktrow_decode(p, n, &r) != KH_OK)
		return;
	CHECK(r.slot <= KH_SLOT_MAX);
	CHECK(r.major == KH_MK_FTK || r.major == KH_MK_PMK);
	CHECK(r.bits <= KH_KS_BITS_MAX);
	CHECK(r.created > 0);
	CHECK(r.attrs_len <= KH_KS_ATTRS_MAX);
	CHECK(r.wrapped_len > KH_MK_SEAL_OVERHEAD &&
	      r.wrapped_len <= KH_KS_MATERIAL_MAX + KH_MK_SEAL_OVERHEAD);
	CHECK(r.label_len <= KH_KS_DESC_MAX && r.ckaid_len <= KH_KS_DESC_MAX &&
	      r.extra_len <= KH_KS_DESC_MAX);
	CHECK(inside(r.attrs, r.attrs_len, p, n) && inside(r.wrapped, r.wrapped_len, p, n) &&
	      inside(r.label, r.label_len, p, n) && inside(r.ckaid, r.ckaid_len, p, n) &&
	      inside(r.extra, r.extra_len, p, n));
	CHECK(n <= KH_KTROW_MAX);
	size_t m = kh_ktrow_len(&r);
	CHECK(m == n);
	uint8_t *enc = malloc(m);
	if (enc == NULL)
		abort();
	kh_ktrow_encode(&r, enc);
	CHECK(memcmp(enc, p, n) == 0);
	free(enc);
}

static void config_header(const uint8_t *p, size_t n)
{
	struct kh_backup_hdr h;
	if (kh_config_parse_header(p, n, &h) != KH_OK)
		return;
	CHECK(h.version == KH_CONFIG_VERSION);
	CHECK(h.scope == KH_BACKUP_CONFIG);
	CHECK(n >= KH_CONFIG_HDR_LEN + KH_MK_SEAL_OVERHEAD && n <= KH_CONFIG_MAX);
	CHECK(strlen(h.kcv) == 6);
	for (int i = 0; i < 6; i++)
		CHECK((h.kcv[i] >= '0' && h.kcv[i] <= '9') || (h.kcv[i] >= 'A' && h.kcv[i] <= 'F'));
	CHECK(memcmp(p, "KHCF", 4) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	if (data[0] & 1)
		config_header(data + 1, size - 1);
	else
		row(data + 1, size - 1);
	return 0;
}

/*
 * Replication of the key table between group members that hold the same
 * major keys (KTEX, KTIM, KTCK): a key-table row in its wrapped form, as a
 * strict binary layout, and the table check value. Nothing here unwraps a
 * key or sees key material; the decoder is pure so that a fuzz target can
 * call it.
 */
#ifndef KH_REPLICA_H
#define KH_REPLICA_H

#include "hsm/hsm.h"
#include "hsm/keystore.h"

/*
 * One row (integers big-endian; lpN = an N-bit length, then the bytes):
 *   version u8 (=1) | slot u32 | key id (16) | lp8 major ("FTK" or "PMK") |
 *   lp8 class | lp8 type | bits u32 | created i64 | lp16 attrs |
 *   lp16 wrapped (nonce || ciphertext || tag) | lp32 label | lp32 ckaid |
 *   lp32 extra
 * exactly consumed; names 1-15 of A-Za-z0-9_.-; bounds as keystore.h.
 */
#define KH_KTROW_VERSION 1
/* The longest row: 121 bytes of fixed fields and prefixes, the attributes,
 * the wrapped key and three descriptive fields at their maxima. */
#define KH_KTROW_MAX                                                                               \
	(128 + KH_KS_ATTRS_MAX + KH_KS_MATERIAL_MAX + KH_MK_SEAL_OVERHEAD + 3 * KH_KS_DESC_MAX)

/* Size of row's encoding; 0 when the row cannot be encoded (a field over
 * its bound, a name that is not one). */
size_t kh_ktrow_len(const struct kh_key_row *row);
/* Encode row into out (kh_ktrow_len(row) bytes, non-zero). */
void kh_ktrow_encode(const struct kh_key_row *row, uint8_t *out);
/* Decode one row of exactly n bytes. out borrows p: its buffers point
 * into p (never free them); mk_gen is 0. KH_ERR_BAD_FIELD on any deviation
 * from the layout. */
KH_MUST_CHECK int kh_ktrow_decode(const uint8_t *p, size_t n, struct kh_key_row *out);

/* The table check value of the rows with lo <= slot <= hi:
 *   SHA-256("keyhold ktck v1" || for each row in slot order:
 *           u32 length || its encoding || ... || u64 row count)
 * and the row count. */
#define KH_KTCK_LEN 32
KH_MUST_CHECK int kh_ktck(struct kh_hsm *hsm, uint32_t lo, uint32_t hi,
                          uint8_t out[static KH_KTCK_LEN], uint64_t *count);

#endif

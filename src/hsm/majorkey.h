/*
 * Major keys (FTK, PMK, BEK): ceremonies, sealing across restarts, and the
 * only functions that use a major key's bytes. Major keys never leave this
 * module in clear.
 */
#ifndef KH_MAJORKEY_H
#define KH_MAJORKEY_H

#include "hsm/hsm.h"

enum kh_mk_id { KH_MK_FTK = 0, KH_MK_PMK = 1, KH_MK_BEK = 2, KH_MK_COUNT };

struct kh_mk_info {
	bool loaded;
	char alg[8];   /* "AES" */
	int bits;      /* 128, 192, 256 */
	char kcv[7];   /* six hex digits */
};

/* Start-up: restore sealed major keys (unless volatile). */
KH_MUST_CHECK int kh_mk_init(struct kh_hsm *hsm);
void kh_mk_free(struct kh_hsm *hsm);
void kh_mk_ceremony_free(struct kh_mk_ceremony *c);
void kh_mk_info(struct kh_hsm *hsm, enum kh_mk_id id, struct kh_mk_info *out);
const char *kh_mk_name(enum kh_mk_id id);

/* AEAD under a major key (AES-256-GCM under a key derived from it). out
 * must hold ptlen + KH_MK_SEAL_OVERHEAD bytes. */
#define KH_MK_SEAL_OVERHEAD 28
KH_MUST_CHECK int kh_mk_seal(struct kh_hsm *hsm, enum kh_mk_id id, const uint8_t *aad,
			     size_t aadlen, const uint8_t *pt, size_t ptlen, uint8_t *out,
			     size_t *outlen);
KH_MUST_CHECK int kh_mk_open(struct kh_hsm *hsm, enum kh_mk_id id, const uint8_t *aad,
			     size_t aadlen, const uint8_t *ct, size_t ctlen, uint8_t *out,
			     size_t *outlen);

#endif

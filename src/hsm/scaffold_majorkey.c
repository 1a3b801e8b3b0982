/* TEMPORARY placeholders so the tree links while major keys and backup are
 * written. Owned by the major-key helper: delete this file when done. */
#include "hsm/cmds.h"
#include "hsm/majorkey.h"
#include <string.h>

int kh_mk_init(struct kh_hsm *hsm) { return KH_OK; }
void kh_mk_free(struct kh_hsm *hsm) { }
void kh_mk_ceremony_free(struct kh_mk_ceremony *c) { }
void kh_mk_info(struct kh_hsm *hsm, enum kh_mk_id id, struct kh_mk_info *out) { memset(out, 0, sizeof(*out)); }
const char *kh_mk_name(enum kh_mk_id id) { return id == KH_MK_FTK ? "FTK" : id == KH_MK_PMK ? "PMK" : "BEK"; }
int kh_mk_seal(struct kh_hsm *hsm, enum kh_mk_id id, const uint8_t *aad, size_t aadlen, const uint8_t *pt, size_t ptlen, uint8_t *out, size_t *outlen) { return KH_ERR_MAJOR_KEY_NOT_LOADED; }
int kh_mk_open(struct kh_hsm *hsm, enum kh_mk_id id, const uint8_t *aad, size_t aadlen, const uint8_t *ct, size_t ctlen, uint8_t *out, size_t *outlen) { return KH_ERR_MAJOR_KEY_NOT_LOADED; }
#define U(fn) KH_ACT(fn) { return KH_ERR_UNSUPPORTED; }
U(kh_cmd_mkst) U(kh_cmd_mklb) U(kh_cmd_mklc) U(kh_cmd_mkla) U(kh_cmd_mkgn) U(kh_cmd_mker)
U(kh_cmd_bkup) U(kh_cmd_bkrs)

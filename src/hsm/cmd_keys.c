/*
 * Key-table commands for symmetric keys and any key's slot: GPGS (generate),
 * GPKA (add from clear material or a cryptogram, or a data object), GPKD
 * (delete), GPGC (a slot's key as a cryptogram). The dispatcher has
 * resolved and checked the keys and destination slots the plans name.
 */
#include "hsm/cmds.h"
#include "hsm/db.h"
#include "hsm/keyobj.h"
#include "common/kh_buf.h"
#include "common/kh_mem.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#define GENERIC_DEFAULT_LEN 32

KH_PLAN(kh_plan_gpgs)
{
	op->dest[op->ndest++] = (struct kh_dest){"SL", KH_SK_SYMMETRIC};
	return kh_req_flags(c, req, &op->new_flags);
}

KH_ACT(kh_cmd_gpgs)
{
	struct kh_keyattr a = {.cls = KH_KC_SECRET};
	struct kh_key *k = NULL;
	uint8_t *bytes = NULL;
	size_t len = 0;
	uint16_t flags;
	int r;

	if ((r = kh_req_ct(c, req, GENERIC_DEFAULT_LEN, &a.type, &len)) != KH_OK ||
	    (r = kh_req_usage(c, req, "CZ",
	                      a.type == KH_KT_AES ? KH_U_ENCRYPT | KH_U_DECRYPT
	                                          : KH_U_SIGN | KH_U_VERIFY,
	                      &a.usage)) != KH_OK ||
	    (r = kh_req_flags(c, req, &flags)) != KH_OK || (r = kh_req_major(c, req, &a.major)) != KH_OK)
		return r;
	a.flags = kh_key_new_flags(flags, true);
	if ((bytes = kh_secure_alloc(len)) == NULL)
		return KH_ERR_NOMEM;
	if (RAND_priv_bytes(bytes, (int)len) != 1)
		r = KH_ERR_CRYPTO;
	else
		r = kh_key_from_secret(c, &a, bytes, len, &k);
	kh_secure_free(bytes, len);
	if (r == KH_OK)
		r = kh_msg_put(resp, "BB", "Y");
	if (r == KH_OK)
		r = kh_key_emit(c, req, k, "SL", "KD", NULL, resp);
	if (r == KH_OK)
		r = kh_msg_put_kcv(resp, k);
	kh_key_unref(k);
	return r;
}

/* GPKA names either a cryptogram (CG) or clear material (KV with CL, KT). */
KH_PLAN(kh_plan_gpka)
{
	char v[16];
	enum kh_kclass cls;
	enum kh_ktype type;
	int r;

	if ((r = kh_req_flags(c, req, &op->new_flags)) != KH_OK)
		return r;
	if (kh_frame_has(req, "CG")) {
		if (kh_frame_has(req, "KV")) {
			kh_ctx_detail(c, "CG or KV, not both");
			return KH_ERR_BAD_FIELD;
		}
		if ((r = kh_req_cg_type(c, req, "CG", &type)) != KH_OK)
			return r;
		op->ref[op->nref++] = (struct kh_keyref){
			.cg_tag = "CG", .flags = KH_KR_REQUIRED,
			.classes = 1u << KH_KC_SECRET | 1u << KH_KC_PRIVATE | 1u << KH_KC_PUBLIC};
		op->dest[op->ndest++] =
		    (struct kh_dest){"SL", kh_slot_kind_of(kh_ktype_symmetric(type))};
		return KH_OK;
	}
	if (!kh_frame_has(req, "KV")) {
		kh_ctx_detail(c, "KV or CG");
		return KH_ERR_MISSING_FIELD;
	}
	if (kh_frame_str(req, "CL", v, sizeof(v)) != KH_OK || kh_kclass_parse(v, &cls) != KH_OK ||
	    cls == KH_KC_CERT) {
		kh_ctx_detail(c, "CL (secret, private, public or data)");
		return kh_frame_has(req, "CL") ? KH_ERR_BAD_FIELD : KH_ERR_MISSING_FIELD;
	}
	if (cls == KH_KC_DATA) {
		/* a data object: not secret, stored in a slot of any range kind */
		if (kh_frame_has(req, "KT") &&
		    (kh_frame_str(req, "KT", v, sizeof(v)) != KH_OK || strcmp(v, "GENERIC") != 0)) {
			kh_ctx_detail(c, "KT (GENERIC for a data object)");
			return KH_ERR_BAD_FIELD;
		}
		if (!kh_frame_has(req, "SL")) {
			kh_ctx_detail(c, "SL (data objects are stored, they have no cryptogram)");
			return KH_ERR_MISSING_FIELD;
		}
		op->dest[op->ndest++] = (struct kh_dest){"SL", KH_SK_ANY};
		return KH_OK;
	}
	if (kh_frame_str(req, "KT", v, sizeof(v)) != KH_OK || kh_ktype_parse(v, &type) != KH_OK ||
	    type == KH_KT_X509 || kh_ktype_symmetric(type) != (cls == KH_KC_SECRET)) {
		kh_ctx_detail(c, "KT (a type of class %s)", kh_kclass_name(cls));
		return kh_frame_has(req, "KT") ? KH_ERR_BAD_FIELD : KH_ERR_MISSING_FIELD;
	}
	if (cls == KH_KC_PUBLIC)
		op->perms |= KH_PERM(KH_P_KEYS_IMPORT_PKI);
	else
		op->fips_refusal = "clear import of secret or private keys (unwrap them with GPKU/GPUK)";
	op->dest[op->ndest++] = (struct kh_dest){"SL", kh_slot_kind_of(cls == KH_KC_SECRET)};
	return KH_OK;
}

/* A data object from KV (0-16320 bytes, may be empty): no usage, flags A
 * and M only, not made on the HSM. */
static int gpka_data(struct kh_ctx *c, const struct kh_frame *req, struct kh_key **out)
{
	struct kh_keyattr a = {.cls = KH_KC_DATA, .type = KH_KT_GENERIC};
	const struct kh_field *cz = kh_frame_get(req, "CZ");
	uint16_t flags;
	uint8_t *v = NULL;
	size_t n = 0;
	int r;

	if (cz != NULL && cz->len != 0) {
		kh_ctx_detail(c, "CZ (a data object has no usage)");
		return KH_ERR_BAD_FIELD;
	}
	if ((r = kh_req_flags(c, req, &flags)) != KH_OK ||
	    (r = kh_req_major(c, req, &a.major)) != KH_OK)
		return r;
	if (flags & ~KH_KF_DATA) {
		kh_ctx_detail(c, "KF (letters of AM for a data object)");
		return KH_ERR_BAD_FIELD;
	}
	a.flags = kh_key_new_flags(flags, false);
	if ((r = kh_frame_hex_secure(req, "KV", KH_DATA_MAX_LEN, &v, &n)) != KH_OK) {
		kh_ctx_detail(c, "KV (hex, at most %d bytes)", KH_DATA_MAX_LEN);
		return r;
	}
	r = kh_key_from_data(c, &a, v, n, out);
	kh_secure_free(v, n);
	return r;
}

static int gpka_clear(struct kh_ctx *c, const struct kh_frame *req, struct kh_key **out)
{
	struct kh_keyattr a = {0};
	uint16_t flags;
	uint8_t *m = NULL;
	size_t mlen = 0;
	char v[16];
	int r;

	/* the plan has validated CL and KT */
	if (kh_frame_str(req, "CL", v, sizeof(v)) != KH_OK || kh_kclass_parse(v, &a.cls) != KH_OK)
		return KH_ERR_INTERNAL;
	if (a.cls == KH_KC_DATA)
		return gpka_data(c, req, out);
	if (kh_frame_str(req, "KT", v, sizeof(v)) != KH_OK || kh_ktype_parse(v, &a.type) != KH_OK)
		return KH_ERR_INTERNAL;
	if ((r = kh_req_usage(c, req, "CZ", kh_key_default_usage(a.cls, a.type), &a.usage)) != KH_OK ||
	    (r = kh_req_flags(c, req, &flags)) != KH_OK || (r = kh_req_major(c, req, &a.major)) != KH_OK)
		return r;
	a.flags = kh_key_new_flags(flags, false);
	if ((r = kh_frame_hex_secure(req, "KV", KH_KS_MATERIAL_MAX, &m, &mlen)) != KH_OK) {
		kh_ctx_detail(c, "KV (hex, at most %d bytes)", KH_KS_MATERIAL_MAX);
		return r;
	}
	if (a.cls == KH_KC_SECRET)
		r = kh_key_from_secret(c, &a, m, mlen, out);
	else
		r = kh_key_from_der(c, &a, m, mlen, out);
	kh_secure_free(m, mlen);
	return r;
}

KH_ACT(kh_cmd_gpka)
{
	struct kh_key *k = NULL;
	bool fresh = false;
	int r;

	if (c->op->key[0] != NULL) {
		/* a cryptogram made persistent keeps its attributes and identifier,
		 * unless NI=Y asks for a new identifier (a copy) */
		if (!kh_frame_has(req, "SL")) {
			kh_ctx_detail(c, "SL (where to store the cryptogram's key)");
			return KH_ERR_MISSING_FIELD;
		}
		if (kh_frame_has(req, "NI") && (r = kh_frame_yn(req, "NI", &fresh)) != KH_OK) {
			kh_ctx_detail(c, "NI");
			return r;
		}
		const struct kh_key *src = c->op->key[0];
		uint8_t *m = NULL;
		size_t mlen = 0;
		struct kh_keyattr a = src->a;
		if ((r = kh_key_material(src, &m, &mlen)) != KH_OK)
			return r;
		r = a.cls == KH_KC_SECRET ? kh_key_from_secret(c, &a, m, mlen, &k)
		                          : kh_key_from_der(c, &a, m, mlen, &k);
		kh_secure_free(m, mlen);
		if (r != KH_OK)
			return r;
		k->a = src->a;
		if (!fresh) {
			memcpy(k->key_id, src->key_id, KH_KEY_ID_LEN);
			k->has_id = true;
		}
	} else if ((r = gpka_clear(c, req, &k)) != KH_OK) {
		return r;
	}
	r = kh_msg_put(resp, "BB", "Y");
	if (r == KH_OK)
		r = kh_key_emit(c, req, k, "SL", "KD", NULL, resp);
	if (r == KH_OK && k->a.cls == KH_KC_SECRET)
		r = kh_msg_put_kcv(resp, k);
	kh_key_unref(k);
	return r;
}

/* GPKD does not open the key: a slot whose stored form was altered can
 * still be cleared. The slot range is the dispatcher's (KH_CF_SLOT); the
 * identifier check and the delete are one transaction. */
KH_ACT(kh_cmd_gpkd)
{
	struct kh_hsm *hsm = c->hsm;
	struct kh_key_row row = {0};
	uint8_t id[KH_KEY_ID_LEN];
	size_t n = 0;
	uint64_t slot;
	int r;

	if ((r = kh_frame_u64(req, "SL", 0, KH_SLOT_MAX, &slot)) != KH_OK)
		return r;
	if (kh_frame_has(req, "KD") &&
	    (kh_frame_hex(req, "KD", id, sizeof(id), &n) != KH_OK || n != KH_KEY_ID_LEN)) {
		kh_ctx_detail(c, "KD (16 bytes, hex)");
		return KH_ERR_BAD_FIELD;
	}
	if ((r = kh_db_begin(hsm->db)) != KH_OK)
		return r;
	if ((r = kh_keystore_get(hsm, (uint32_t)slot, &row)) == KH_OK && n != 0 &&
	    !kh_ct_equal(id, row.key_id, KH_KEY_ID_LEN)) {
		kh_ctx_detail(c, "key identifier differs from slot %u's key", (unsigned)slot);
		r = KH_ERR_NOT_FOUND;
	}
	kh_keystore_row_free(&row);
	if (r == KH_OK)
		r = kh_key_delete(c, (uint32_t)slot);
	if (r != KH_OK) {
		kh_db_rollback(hsm->db);
		return r;
	}
	if ((r = kh_db_commit(hsm->db)) != KH_OK)
		return r;
	return kh_msg_put(resp, "BB", "Y");
}

KH_PLAN(kh_plan_gpgc)
{
	op->ref[op->nref++] = (struct kh_keyref){
		.slot_tag = "SL", .id_tag = "KD", .flags = KH_KR_REQUIRED,
		.classes = 1u << KH_KC_SECRET | 1u << KH_KC_PRIVATE | 1u << KH_KC_PUBLIC};
	return KH_OK;
}

KH_ACT(kh_cmd_gpgc)
{
	struct kh_key *k = c->op->key[0];
	uint8_t *cg = NULL;
	size_t n = 0;
	int r;

	if ((r = kh_key_cryptogram(c->hsm, k, &cg, &n)) != KH_OK)
		return r;
	r = kh_msg_put(resp, "BB", "Y");
	if (r == KH_OK)
		r = kh_msg_put_hex(resp, "KD", k->key_id, KH_KEY_ID_LEN);
	if (r == KH_OK)
		r = kh_msg_put_hex(resp,
		                   k->a.cls == KH_KC_SECRET    ? "BG"
		                   : k->a.cls == KH_KC_PRIVATE ? "RC"
		                                               : "SD",
		                   cg, n);
	free(cg);
	return r;
}

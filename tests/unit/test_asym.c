/* Asymmetric keys through the dispatcher: generated pairs of every size and
 * curve (stored and as cryptograms) that really belong together, loading
 * clear keys, public halves and RSA components, certificates, and the rules:
 * import_pki, FIPS mode, range kinds, all-or-nothing slot writes, bad fields
 * changing nothing. Signatures are made with OpenSSL directly on the key the
 * HSM holds and checked against the public key it returned. */
#include "kh_testutil.h"
#include "hsm/keyobj.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

static EVP_PKEY *spki_key(const char *hex)
{
	size_t n;
	uint8_t *der = kh_test_unhex_dup(hex, &n);
	const uint8_t *p = der;
	EVP_PKEY *pk = d2i_PUBKEY(NULL, &p, (long)n);
	assert_non_null(pk);
	assert_ptr_equal(p, der + n);
	free(der);
	return pk;
}

static void derive(EVP_PKEY *priv, EVP_PKEY *peer, uint8_t out[32])
{
	EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(priv, NULL);
	size_t n = 32;
	assert_non_null(c);
	assert_int_equal(EVP_PKEY_derive_init(c), 1);
	assert_int_equal(EVP_PKEY_derive_set_peer(c, peer), 1);
	assert_int_equal(EVP_PKEY_derive(c, out, &n), 1);
	assert_int_equal(n, 32);
	EVP_PKEY_CTX_free(c);
}

/* The private key the HSM holds and the public key it returned (SPKI hex)
 * are a pair: a signature made with the one verifies with the other (or,
 * for X25519, both agree on a secret with a third key). */
static void assert_pair(const struct kh_key *k, const char *rd)
{
	EVP_PKEY *pub = spki_key(rd);
	assert_int_equal(k->a.cls, KH_KC_PRIVATE);
	if (k->a.type == KH_KT_X25519) {
		EVP_PKEY *peer = EVP_PKEY_Q_keygen(NULL, NULL, "X25519");
		uint8_t s1[32], s2[32];
		assert_non_null(peer);
		derive(k->pkey, peer, s1);
		derive(peer, pub, s2);
		assert_memory_equal(s1, s2, 32);
		EVP_PKEY_free(peer);
	} else {
		static const uint8_t msg[] = "signed outside the HSM";
		const EVP_MD *md = k->a.type == KH_KT_ED25519 ? NULL : EVP_sha256();
		EVP_MD_CTX *m = EVP_MD_CTX_new();
		uint8_t sig[1024];
		size_t n = sizeof(sig);
		assert_int_equal(EVP_DigestSignInit(m, NULL, md, NULL, k->pkey), 1);
		assert_int_equal(EVP_DigestSign(m, sig, &n, msg, sizeof(msg)), 1);
		assert_int_equal(EVP_MD_CTX_reset(m), 1);
		assert_int_equal(EVP_DigestVerifyInit(m, NULL, md, NULL, pub), 1);
		assert_int_equal(EVP_DigestVerify(m, sig, n, msg, sizeof(msg)), 1);
		/* and not with an unrelated message */
		assert_int_equal(EVP_MD_CTX_reset(m), 1);
		assert_int_equal(EVP_DigestVerifyInit(m, NULL, md, NULL, pub), 1);
		assert_int_not_equal(EVP_DigestVerify(m, sig, n, msg, sizeof(msg) - 1), 1);
		EVP_MD_CTX_free(m);
	}
	EVP_PKEY_free(pub);
}

static void assert_slot_pair(struct kh_test_fx *x, uint32_t slot, const char *rd)
{
	struct kh_key *k = NULL;
	assert_int_equal(kh_key_load_slot(&x->hsm, slot, &k), KH_OK);
	assert_pair(k, rd);
	kh_key_unref(k);
}

static struct kh_key *cg_key(struct kh_test_fx *x, const char *hex)
{
	size_t n;
	uint8_t *cg = kh_test_unhex_dup(hex, &n);
	struct kh_key *k = NULL;
	assert_int_equal(kh_key_from_cryptogram(&x->hsm, cg, n, &k), KH_OK);
	free(cg);
	return k;
}

static void assert_cg_pair(struct kh_test_fx *x, const char *rc, const char *rd)
{
	struct kh_key *k = cg_key(x, rc);
	assert_pair(k, rd);
	kh_key_unref(k);
}

static void assert_empty(struct kh_test_fx *x, uint32_t slot)
{
	struct kh_key *k = NULL;
	assert_int_equal(kh_key_load_slot(&x->hsm, slot, &k), KH_ERR_NOT_FOUND);
}

static void test_grsa(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	struct kh_key *k = NULL;
	char req[8192];
	kh_test_session(&p, KH_PORT_PROD);

	/* stored: RSA-2048 with sign and decrypt (the pairwise check then
	 * also runs OAEP) */
	assert_int_equal(KH_CALL(x, &p, "[AOGRSA;RB2048;CZGD;SL10;PS11;KFS;LB6B6579;]"), KH_OK);
	assert_non_null(strstr(x->out, "[AOGRSA;BBY;"));
	char *kd = kh_test_fx_field(x, "KD"), *pd = kh_test_fx_field(x, "PD"),
	     *rd = kh_test_fx_field(x, "RD");
	assert_int_equal(strlen(kd), 32);
	assert_int_equal(strlen(pd), 32);
	assert_string_not_equal(kd, pd);
	assert_string_equal(kh_test_field(x->out, "RC"), "");
	assert_string_equal(kh_test_field(x->out, "SD"), "");
	assert_slot_pair(x, 10, rd);
	assert_int_equal(kh_key_load_slot(&x->hsm, 10, &k), KH_OK);
	assert_int_equal(k->a.bits, 2048);
	assert_int_equal(k->a.usage, KH_U_SIGN | KH_U_DECRYPT);
	assert_int_equal(k->a.flags, KH_KF_SENSITIVE | KH_KF_LOCAL | KH_KF_NEVER_EXPORTABLE |
	                                 KH_KF_ALWAYS_SENSITIVE);
	kh_key_unref(k);
	/* the public half: default usage from CZ, never sensitive */
	assert_int_equal(kh_key_load_slot(&x->hsm, 11, &k), KH_OK);
	assert_int_equal(k->a.cls, KH_KC_PUBLIC);
	assert_int_equal(k->a.usage, KH_U_VERIFY | KH_U_ENCRYPT);
	assert_int_equal(k->a.flags, KH_KF_LOCAL | KH_KF_NEVER_EXPORTABLE);
	char *spki = kh_test_hex(k->der, k->der_len);
	assert_string_equal(spki, rd);
	free(spki);
	kh_key_unref(k);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKR;SL11;]"), KH_OK);
	assert_non_null(strstr(x->out, "LB6B6579;"));
	assert_non_null(strstr(x->out, "CLpublic;TYRSA;BT2048;"));

	/* RPFP: modulus and exponent of the key RD carries */
	EVP_PKEY *pub = spki_key(rd);
	BIGNUM *n = NULL, *e = NULL;
	uint8_t mod[256];
	assert_int_equal(EVP_PKEY_get_bn_param(pub, OSSL_PKEY_PARAM_RSA_N, &n), 1);
	assert_int_equal(EVP_PKEY_get_bn_param(pub, OSSL_PKEY_PARAM_RSA_E, &e), 1);
	assert_int_equal(BN_bn2binpad(n, mod, sizeof(mod)), sizeof(mod));
	assert_int_equal(BN_get_word(e), 65537);
	char *mo = kh_test_hex(mod, sizeof(mod));
	snprintf(req, sizeof(req), "[AORPFP;SL10;KD%s;]", kd);
	assert_int_equal(KH_CALL(x, &p, req), KH_OK);
	assert_string_equal(kh_test_field(x->out, "RB"), "2048");
	assert_string_equal(kh_test_field(x->out, "MO"), mo);
	assert_string_equal(kh_test_field(x->out, "PE"), "010001");
	assert_int_equal(KH_CALL(x, &p, "[AORPFP;SL11;]"), KH_OK);
	assert_string_equal(kh_test_field(x->out, "MO"), mo);
	snprintf(req, sizeof(req), "[AORPFP;SL10;KD%s;]", pd);
	assert_int_equal(KH_CALL(x, &p, req), KH_ERR_NOT_FOUND);
	free(mo);
	BN_free(n);
	BN_free(e);
	EVP_PKEY_free(pub);

	/* cryptograms: RSA-3072, exponent 3 (allowed outside FIPS mode) */
	assert_int_equal(KH_CALL(x, &p, "[AOGRSA;RB3072;RA3;KFX;]"), KH_OK);
	char *rc = kh_test_fx_field(x, "RC"), *sd = kh_test_fx_field(x, "SD"),
	     *rd3 = kh_test_fx_field(x, "RD");
	char *kd3 = kh_test_fx_field(x, "KD"), *pd3 = kh_test_fx_field(x, "PD");
	assert_cg_pair(x, rc, rd3);
	k = cg_key(x, rc);
	assert_int_equal(k->a.bits, 3072);
	assert_int_equal(k->a.flags, KH_KF_EXPORTABLE | KH_KF_LOCAL);
	char *id = kh_test_hex(k->key_id, KH_KEY_ID_LEN);
	assert_string_equal(id, kd3);
	free(id);
	kh_key_unref(k);
	snprintf(req, sizeof(req), "[AORPFP;CG%s;]", rc);
	assert_int_equal(KH_CALL(x, &p, req), KH_OK);
	assert_string_equal(kh_test_field(x->out, "PE"), "03");
	assert_int_equal(strlen(kh_test_field(x->out, "MO")), 768);
	/* RDPK reads the public key out of either cryptogram */
	snprintf(req, sizeof(req), "[AORDPK;CG%s;]", rc);
	assert_int_equal(KH_CALL(x, &p, req), KH_OK);
	assert_string_equal(kh_test_field(x->out, "RD"), rd3);
	assert_non_null(strstr(x->out, ";KTRSA;BT3072;"));
	snprintf(req, sizeof(req), "[AORDPK;CG%s;]", sd);
	assert_int_equal(KH_CALL(x, &p, req), KH_OK);
	assert_string_equal(kh_test_field(x->out, "RD"), rd3);
	/* ADPK: a trusted public key with its attributes */
	snprintf(req, sizeof(req), "[AOADPK;CG%s;]", sd);
	assert_int_equal(KH_CALL(x, &p, req), KH_OK);
	assert_string_equal(kh_test_field(x->out, "RD"), rd3);
	assert_non_null(strstr(x->out, ";KTRSA;BT3072;CZV;KFXL;"));
	assert_string_equal(kh_test_field(x->out, "KD"), pd3);
	/* ...and nothing else */
	snprintf(req, sizeof(req), "[AOADPK;CG%s;]", rc);
	assert_int_equal(KH_CALL(x, &p, req), KH_ERR_KEY_USAGE);
	assert_int_equal(KH_CALL(x, &p, "[AOADPK;]"), KH_ERR_MISSING_FIELD);
	/* a flipped bit: not this HSM's cryptogram */
	sd[100] = sd[100] == '0' ? '1' : '0';
	snprintf(req, sizeof(req), "[AOADPK;CG%s;]", sd);
	assert_int_equal(KH_CALL(x, &p, req), KH_ERR_CRYPTO);
	/* RDPK names a key by cryptogram only */
	assert_int_equal(KH_CALL(x, &p, "[AORDPK;SL10;]"), KH_ERR_MISSING_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;]"), KH_OK);
	snprintf(req, sizeof(req), "[AORDPK;CG%s;]", kh_test_field(x->out, "BG"));
	assert_int_equal(KH_CALL(x, &p, req), KH_ERR_KEY_USAGE);

	/* RSA-1024 outside FIPS mode, public usage asked for */
	assert_int_equal(KH_CALL(x, &p, "[AOGRSA;RB1024;CZU;PZWV;SL12;]"), KH_OK);
	char *rd1 = kh_test_fx_field(x, "RD");
	assert_slot_pair(x, 12, rd1);
	k = cg_key(x, kh_test_field(x->out, "SD"));
	assert_int_equal(k->a.usage, KH_U_WRAP | KH_U_VERIFY);
	kh_key_unref(k);

	/* bad fields change nothing */
	assert_int_equal(KH_CALL(x, &p, "[AOGRSA;SL20;]"), KH_ERR_MISSING_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGRSA;RB2000;SL20;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGRSA;RB512;SL20;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGRSA;RB2048;RA10000;SL20;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGRSA;RB2048;RA1;SL20;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGRSA;RB2048;RA-3;SL20;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGRSA;RB2048;RA;SL20;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGRSA;RB2048;CZV;SL20;]"), KH_ERR_BAD_FIELD);
	assert_non_null(strstr(x->out, "CZ (letters of DGU"));
	assert_int_equal(KH_CALL(x, &p, "[AOGRSA;RB2048;CZX;SL20;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGRSA;RB2048;PZG;SL20;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGRSA;RB2048;KFL;SL20;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGRSA;RB2048;FSXYZ;SL20;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGRSA;RB2048;SL20;PS20;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGRSA;RB2048;SL20;PS9999999;]"), KH_ERR_BAD_FIELD);
	assert_empty(x, 20);
	free(kd);
	free(pd);
	free(rd);
	free(rc);
	free(sd);
	free(rd3);
	free(kd3);
	free(pd3);
	free(rd1);
}

static void test_gecc(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	struct kh_key *k = NULL;
	char req[4096];
	static const struct {
		const char *ra;
		enum kh_ktype type;
		uint32_t bits;
		uint16_t usage, pub_usage;
	} cv[] = {
	    {"2", KH_KT_EC, 256, KH_U_SIGN, KH_U_VERIFY},
	    {"P-384", KH_KT_EC, 384, KH_U_SIGN, KH_U_VERIFY},
	    {"4", KH_KT_EC, 521, KH_U_SIGN, KH_U_VERIFY},
	    {"ED25519", KH_KT_ED25519, 255, KH_U_SIGN, KH_U_VERIFY},
	    {"6", KH_KT_X25519, 255, KH_U_DERIVE, KH_U_DERIVE},
	};
	kh_test_session(&p, KH_PORT_PROD);

	for (size_t i = 0; i < sizeof(cv) / sizeof(cv[0]); i++) {
		uint32_t sl = 100 + 2 * (uint32_t)i;
		/* stored */
		snprintf(req, sizeof(req), "[AOGECC;RA%s;SL%u;PS%u;]", cv[i].ra, sl, sl + 1);
		assert_int_equal(KH_CALL(x, &p, req), KH_OK);
		char *rd = kh_test_fx_field(x, "RD");
		assert_slot_pair(x, sl, rd);
		assert_int_equal(kh_key_load_slot(&x->hsm, sl, &k), KH_OK);
		assert_int_equal(k->a.type, cv[i].type);
		assert_int_equal(k->a.bits, cv[i].bits);
		assert_int_equal(k->a.usage, cv[i].usage);
		kh_key_unref(k);
		assert_int_equal(kh_key_load_slot(&x->hsm, sl + 1, &k), KH_OK);
		assert_int_equal(k->a.usage, cv[i].pub_usage);
		kh_key_unref(k);
		free(rd);
		/* cryptograms */
		snprintf(req, sizeof(req), "[AOGECC;RA%s;]", cv[i].ra);
		assert_int_equal(KH_CALL(x, &p, req), KH_OK);
		char *rc = kh_test_fx_field(x, "RC"), *sd = kh_test_fx_field(x, "SD");
		rd = kh_test_fx_field(x, "RD");
		assert_cg_pair(x, rc, rd);
		k = cg_key(x, sd);
		char *spki = kh_test_hex(k->der, k->der_len);
		assert_string_equal(spki, rd);
		assert_int_equal(k->a.type, cv[i].type);
		free(spki);
		kh_key_unref(k);
		free(rc);
		free(sd);
		free(rd);
	}
	/* ECDH on a NIST curve */
	assert_int_equal(KH_CALL(x, &p, "[AOGECC;RAP-256;CZGX;]"), KH_OK);
	k = cg_key(x, kh_test_field(x->out, "SD"));
	assert_int_equal(k->a.usage, KH_U_VERIFY | KH_U_DERIVE);
	kh_key_unref(k);
	/* RPFP is for RSA keys */
	assert_int_equal(KH_CALL(x, &p, "[AORPFP;SL100;]"), KH_ERR_KEY_USAGE);
	/* bad fields change nothing */
	assert_int_equal(KH_CALL(x, &p, "[AOGECC;SL20;]"), KH_ERR_MISSING_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGECC;RA1;SL20;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGECC;RA7;SL20;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGECC;RAp-256;SL20;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGECC;RA5;CZX;SL20;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGECC;RA6;CZG;SL20;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGECC;RA2;CZD;SL20;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGECC;RA2;PZE;SL20;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGECC;RA2;SL20;PS20;]"), KH_ERR_BAD_FIELD);
	assert_empty(x, 20);
}

/* A pair is stored whole or not at all. */
static void test_pair_all_or_nothing(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	kh_test_session(&p, KH_PORT_PROD);
	assert_int_equal(KH_CALL(x, &p, "[AOGECC;RA2;SL30;PS31;]"), KH_OK);
	char *kd = kh_test_fx_field(x, "KD");
	/* the public key's slot is taken: the private key is not stored either */
	assert_int_equal(KH_CALL(x, &p, "[AOGECC;RA2;SL32;PS31;]"), KH_ERR_EXISTS);
	assert_empty(x, 32);
	/* the private key's slot is taken: no public key */
	assert_int_equal(KH_CALL(x, &p, "[AOGECC;RA2;SL30;PS33;]"), KH_ERR_EXISTS);
	assert_empty(x, 33);
	/* a replacement that fails leaves the old key */
	assert_int_equal(KH_CALL(x, &p, "[AOGECC;RA2;SL30;PS31;RPY;FSFTK;]"),
	                 KH_ERR_MAJOR_KEY_NOT_LOADED);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGC;SL30;]"), KH_OK);
	assert_string_equal(kh_test_field(x->out, "KD"), kd);
	/* RP=Y replaces both */
	assert_int_equal(KH_CALL(x, &p, "[AOGECC;RA3;SL30;PS31;RPY;]"), KH_OK);
	char *rd = kh_test_fx_field(x, "RD");
	assert_slot_pair(x, 30, rd);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKR;SL31;]"), KH_OK);
	assert_non_null(strstr(x->out, "TYEC;BT384;"));
	free(kd);
	free(rd);
}

static void test_asyl_lrsa(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	struct kh_key *k = NULL;
	uint8_t *der = NULL;
	static char req[16384];
	kh_test_session(&p, KH_PORT_PROD);

	EVP_PKEY *rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
	EVP_PKEY *ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
	assert_non_null(rsa);
	assert_non_null(ec);
	char *rsa_p8 = kh_test_pkcs8_hex(rsa);
	char *rsa_p1 = kh_test_der_hex(i2d_PrivateKey(rsa, &der), &der);
	char *rsa_pub = kh_test_der_hex(i2d_PUBKEY(rsa, &der), &der);
	char *ec_p8 = kh_test_pkcs8_hex(ec);
	char *ec_pub = kh_test_der_hex(i2d_PUBKEY(ec, &der), &der);

	/* a private key (PKCS#8) into a slot: the same key, RD its public key */
	snprintf(req, sizeof(req), "[AOASYL;KV%s;SL40;CZGD;]", rsa_p8);
	assert_int_equal(KH_CALL(x, &p, req), KH_OK);
	assert_non_null(strstr(x->out, "[AOASYL;BBY;KD"));
	assert_string_equal(kh_test_field(x->out, "RD"), rsa_pub);
	assert_int_equal(kh_key_load_slot(&x->hsm, 40, &k), KH_OK);
	assert_int_equal(EVP_PKEY_eq(k->pkey, rsa), 1);
	assert_int_equal(k->a.usage, KH_U_SIGN | KH_U_DECRYPT);
	assert_int_equal(k->a.flags, 0); /* not generated here: no L, N, Y */
	kh_key_unref(k);
	assert_slot_pair(x, 40, rsa_pub);
	/* LRSA, PKCS#1, as a cryptogram */
	snprintf(req, sizeof(req), "[AOLRSA;KV%s;KFS;]", rsa_p1);
	assert_int_equal(KH_CALL(x, &p, req), KH_OK);
	assert_string_equal(kh_test_field(x->out, "RB"), "1024");
	assert_string_equal(kh_test_field(x->out, "RD"), rsa_pub);
	k = cg_key(x, kh_test_field(x->out, "RC"));
	assert_int_equal(EVP_PKEY_eq(k->pkey, rsa), 1);
	assert_int_equal(k->a.usage, KH_U_SIGN);
	assert_int_equal(k->a.flags, KH_KF_SENSITIVE);
	kh_key_unref(k);
	/* an EC private key: ASYL yes, LRSA no */
	snprintf(req, sizeof(req), "[AOLRSA;KV%s;SL41;]", ec_p8);
	assert_int_equal(KH_CALL(x, &p, req), KH_ERR_UNSUPPORTED);
	assert_empty(x, 41);
	snprintf(req, sizeof(req), "[AOASYL;KV%s;SL41;CZX;]", ec_p8);
	assert_int_equal(KH_CALL(x, &p, req), KH_OK);
	assert_string_equal(kh_test_field(x->out, "RD"), ec_pub);
	assert_slot_pair(x, 41, ec_pub);
	/* APFP's default usage leaves out what the public key cannot do (GPKA
	 * takes any letters) */
	snprintf(req, sizeof(req), "[AOGPKA;CLprivate;KTRSA;KV%s;CZGX;]", rsa_p8);
	assert_int_equal(KH_CALL(x, &p, req), KH_OK);
	snprintf(req, sizeof(req), "[AOAPFP;CG%s;]", kh_test_field(x->out, "RC"));
	assert_int_equal(KH_CALL(x, &p, req), KH_OK);
	k = cg_key(x, kh_test_field(x->out, "SD"));
	assert_int_equal(k->a.usage, KH_U_VERIFY);
	kh_key_unref(k);
	/* usage the key cannot have */
	snprintf(req, sizeof(req), "[AOASYL;KV%s;SL42;CZD;]", ec_p8);
	assert_int_equal(KH_CALL(x, &p, req), KH_ERR_BAD_FIELD);

	/* a clear public key needs keys.import_pki */
	snprintf(req, sizeof(req), "[AOASYL;KV%s;SL42;]", ec_pub);
	assert_int_equal(KH_CALL(x, &p, req), KH_ERR_PERMISSION_DENIED);
	assert_non_null(strstr(x->out, "keys.import_pki"));
	snprintf(req, sizeof(req), "[AOLRSA;KV%s;]", rsa_pub);
	assert_int_equal(KH_CALL(x, &p, req), KH_ERR_PERMISSION_DENIED);
	assert_empty(x, 42);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNAnonymous;PMkeys,keys.import_pki;]"),
	                 KH_OK);
	snprintf(req, sizeof(req), "[AOASYL;KV%s;SL42;KFS;]", ec_pub);
	assert_int_equal(KH_CALL(x, &p, req), KH_OK);
	assert_string_equal(kh_test_field(x->out, "RD"), ec_pub);
	assert_int_equal(kh_key_load_slot(&x->hsm, 42, &k), KH_OK);
	assert_int_equal(k->a.cls, KH_KC_PUBLIC);
	assert_int_equal(k->a.usage, KH_U_VERIFY);
	assert_int_equal(k->a.flags, 0); /* public keys are never sensitive */
	kh_key_unref(k);
	/* a clear public key made a trusted one */
	snprintf(req, sizeof(req), "[AOLRSA;KV%s;CZEW;]", rsa_pub);
	assert_int_equal(KH_CALL(x, &p, req), KH_OK);
	assert_string_equal(kh_test_field(x->out, "RB"), "1024");
	snprintf(req, sizeof(req), "[AOADPK;CG%s;]", kh_test_field(x->out, "SD"));
	assert_int_equal(KH_CALL(x, &p, req), KH_OK);
	assert_string_equal(kh_test_field(x->out, "RD"), rsa_pub);
	assert_non_null(strstr(x->out, ";CZEW;KF;"));
	snprintf(req, sizeof(req), "[AOASYL;KV%s;CZG;]", rsa_pub);
	assert_int_equal(KH_CALL(x, &p, req), KH_ERR_BAD_FIELD);

	/* bad fields change nothing */
	assert_int_equal(KH_CALL(x, &p, "[AOASYL;SL43;]"), KH_ERR_MISSING_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOASYL;KV;SL43;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOASYL;KV3003020100;SL43;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOASYL;KV300530030201;SL43;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOASYL;KVZZ;SL43;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOASYL;KV0400;SL43;]"), KH_ERR_BAD_FIELD);
	/* a private key truncated, or with trailing bytes */
	snprintf(req, sizeof(req), "[AOASYL;KV%.*s;SL43;]", (int)strlen(ec_p8) - 2, ec_p8);
	assert_int_equal(KH_CALL(x, &p, req), KH_ERR_BAD_FIELD);
	snprintf(req, sizeof(req), "[AOASYL;KV%s00;SL43;]", ec_p8);
	assert_int_equal(KH_CALL(x, &p, req), KH_ERR_BAD_FIELD);
	snprintf(req, sizeof(req), "[AOASYL;KV%s;SL43;KFL;]", ec_p8);
	assert_int_equal(KH_CALL(x, &p, req), KH_ERR_BAD_FIELD);
	assert_empty(x, 43);

	EVP_PKEY_free(rsa);
	EVP_PKEY_free(ec);
	free(rsa_p8);
	free(rsa_p1);
	free(rsa_pub);
	free(ec_p8);
	free(ec_pub);
}

static void test_apfp(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	struct kh_key *k = NULL;
	char req[4096];
	kh_test_session(&p, KH_PORT_PROD);

	assert_int_equal(KH_CALL(x, &p, "[AOGECC;RA2;CZGX;KFXA;SL50;]"), KH_ERR_PERMISSION_DENIED);
	assert_int_equal(KH_CALL(x, &p, "[AOGECC;RA2;CZGX;KFXS;SL50;]"), KH_OK);
	char *kd = kh_test_fx_field(x, "KD"), *rd = kh_test_fx_field(x, "RD");
	/* the public key again, from the slot: same key, a new identifier */
	snprintf(req, sizeof(req), "[AOAPFP;SL50;KD%s;PS51;]", kd);
	assert_int_equal(KH_CALL(x, &p, req), KH_OK);
	assert_non_null(strstr(x->out, "[AOAPFP;BBY;PD"));
	assert_string_equal(kh_test_field(x->out, "RD"), rd);
	assert_string_not_equal(kh_test_field(x->out, "PD"), kd);
	assert_int_equal(kh_key_load_slot(&x->hsm, 51, &k), KH_OK);
	assert_int_equal(k->a.cls, KH_KC_PUBLIC);
	assert_int_equal(k->a.usage, KH_U_VERIFY | KH_U_DERIVE);
	assert_int_equal(k->a.flags, KH_KF_EXPORTABLE | KH_KF_LOCAL);
	kh_key_unref(k);
	/* from a cryptogram, as a trusted public key with the usage asked for */
	assert_int_equal(KH_CALL(x, &p, "[AOGRSA;RB2048;CZDU;]"), KH_OK);
	char *rc = kh_test_fx_field(x, "RC"), *rd2 = kh_test_fx_field(x, "RD");
	snprintf(req, sizeof(req), "[AOAPFP;CG%s;PZW;]", rc);
	assert_int_equal(KH_CALL(x, &p, req), KH_OK);
	assert_string_equal(kh_test_field(x->out, "RD"), rd2);
	k = cg_key(x, kh_test_field(x->out, "SD"));
	assert_int_equal(k->a.usage, KH_U_WRAP);
	assert_int_equal(k->a.flags, KH_KF_LOCAL | KH_KF_NEVER_EXPORTABLE);
	kh_key_unref(k);
	/* only from a private key; usage a public key can have */
	assert_int_equal(KH_CALL(x, &p, "[AOAPFP;SL51;]"), KH_ERR_KEY_USAGE);
	snprintf(req, sizeof(req), "[AOAPFP;CG%s;PZD;]", rc);
	assert_int_equal(KH_CALL(x, &p, req), KH_ERR_BAD_FIELD);
	snprintf(req, sizeof(req), "[AOAPFP;SL50;KD%s;]", rc + 64);
	assert_int_equal(KH_CALL(x, &p, req), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOAPFP;SL50;KD00000000000000000000000000000000;PS52;]"),
	                 KH_ERR_NOT_FOUND);
	assert_int_equal(KH_CALL(x, &p, "[AOAPFP;SL50;PS50;]"), KH_ERR_EXISTS);
	assert_int_equal(KH_CALL(x, &p, "[AOAPFP;PS52;]"), KH_ERR_MISSING_FIELD);
	assert_empty(x, 52);
	free(kd);
	free(rd);
	free(rc);
	free(rd2);
}

/* A certificate for key pk signed by signer (SHA-256). */
static X509 *make_cert_by(EVP_PKEY *pk, EVP_PKEY *signer)
{
	X509 *c = X509_new();
	X509_NAME *n = X509_NAME_new();
	assert_non_null(c);
	assert_int_equal(X509_set_version(c, 2), 1);
	assert_int_equal(ASN1_INTEGER_set(X509_get_serialNumber(c), 7), 1);
	assert_int_equal(X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC,
	                                            (const unsigned char *)"unit", -1, -1, 0),
	                 1);
	assert_int_equal(X509_set_subject_name(c, n), 1);
	assert_int_equal(X509_set_issuer_name(c, n), 1);
	assert_non_null(X509_gmtime_adj(X509_getm_notBefore(c), 0));
	assert_non_null(X509_gmtime_adj(X509_getm_notAfter(c), 3600));
	assert_int_equal(X509_set_pubkey(c, pk), 1);
	assert_true(X509_sign(c, signer, EVP_get_digestbyname("SHA256")) > 0);
	X509_NAME_free(n);
	return c;
}

/* A self-signed certificate for key pk. */
static X509 *make_cert(EVP_PKEY *pk)
{
	return make_cert_by(pk, pk);
}

static void test_gpca(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	struct kh_key *k = NULL;
	uint8_t *der = NULL;
	static char req[16384];
	kh_test_session(&p, KH_PORT_PROD);

	EVP_PKEY *ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	X509 *cert = make_cert(ec);
	char *cert_der = kh_test_der_hex(i2d_X509(cert, &der), &der);
	char *pub = kh_test_der_hex(i2d_PUBKEY(ec, &der), &der);
	BIO *b = BIO_new(BIO_s_mem());
	BUF_MEM *bm;
	assert_int_equal(PEM_write_bio_X509(b, cert), 1);
	BIO_get_mem_ptr(b, &bm);
	char *cert_pem = kh_test_hex((const uint8_t *)bm->data, bm->length);
	BIO_free(b);

	snprintf(req, sizeof(req), "[AOGPCA;SL60;CE%s;LB6361;]", cert_der);
	/* a certificate from outside is an external PKI: keys.import_pki */
	assert_int_equal(KH_CALL(x, &p, req), KH_ERR_PERMISSION_DENIED);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNAnonymous;PMkeys,keys.import_pki;]"),
	                 KH_OK);
	assert_int_equal(KH_CALL(x, &p, req), KH_OK);
	assert_non_null(strstr(x->out, "[AOGPCA;BBY;KD"));
	assert_string_equal(kh_test_field(x->out, "RD"), pub);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKR;SL60;]"), KH_OK);
	assert_non_null(strstr(x->out, "LB6361;"));
	assert_non_null(strstr(x->out, "CLcert;TYX509;BT256;"));
	assert_int_equal(kh_key_load_slot(&x->hsm, 60, &k), KH_OK);
	assert_int_equal(k->a.usage, KH_U_VERIFY | KH_U_DERIVE);
	char *stored = kh_test_hex(k->der, k->der_len);
	assert_string_equal(stored, cert_der);
	free(stored);
	kh_key_unref(k);
	/* PEM gives the same certificate */
	snprintf(req, sizeof(req), "[AOGPCA;SL61;CE%s;CZV;]", cert_pem);
	assert_int_equal(KH_CALL(x, &p, req), KH_OK);
	assert_string_equal(kh_test_field(x->out, "RD"), pub);
	assert_int_equal(kh_key_load_slot(&x->hsm, 61, &k), KH_OK);
	stored = kh_test_hex(k->der, k->der_len);
	assert_string_equal(stored, cert_der);
	assert_int_equal(k->a.usage, KH_U_VERIFY);
	free(stored);
	kh_key_unref(k);
	/* bad fields change nothing */
	snprintf(req, sizeof(req), "[AOGPCA;CE%s;]", cert_der);
	assert_int_equal(KH_CALL(x, &p, req), KH_ERR_MISSING_FIELD);
	snprintf(req, sizeof(req), "[AOGPCA;SL60;CE%s;]", cert_der);
	assert_int_equal(KH_CALL(x, &p, req), KH_ERR_EXISTS);
	assert_int_equal(KH_CALL(x, &p, "[AOGPCA;SL62;]"), KH_ERR_MISSING_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGPCA;SL62;CE3003020100;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGPCA;SL62;CE2D2D2D2D;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGPCA;SL62;CEXY;]"), KH_ERR_BAD_FIELD);
	snprintf(req, sizeof(req), "[AOGPCA;SL62;CE%s;CZE;]", cert_der);
	assert_int_equal(KH_CALL(x, &p, req), KH_ERR_BAD_FIELD);
	snprintf(req, sizeof(req), "[AOGPCA;SL62;CE%s00;]", cert_der);
	assert_int_equal(KH_CALL(x, &p, req), KH_ERR_BAD_FIELD);
	assert_empty(x, 62);

	X509_free(cert);
	EVP_PKEY_free(ec);
	free(cert_der);
	free(cert_pem);
	free(pub);
}

static void test_fips(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	static char req[8192];
	uint8_t *der = NULL;
	kh_test_session(&p, KH_PORT_PROD);

	EVP_PKEY *rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
	EVP_PKEY *ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	char *ec_p8 = kh_test_pkcs8_hex(ec);
	char *rsa_pub = kh_test_der_hex(i2d_PUBKEY(rsa, &der), &der);
	char *rsa_p8 = kh_test_pkcs8_hex(rsa);

	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNAnonymous;PMkeys,keys.import_pki;]"),
	                 KH_OK);
	/* a trusted RSA-1024 public key made before FIPS mode */
	snprintf(req, sizeof(req), "[AOASYL;KV%s;]", rsa_pub);
	assert_int_equal(KH_CALL(x, &p, req), KH_OK);
	char *sd = kh_test_fx_field(x, "SD");
	assert_int_equal(KH_CALL(x, &x->admin, "[AOSETS;FIY;]"), KH_OK);

	assert_int_equal(KH_CALL(x, &p, "[AOGRSA;RB1024;SL70;]"), KH_ERR_FIPS);
	assert_non_null(strstr(x->out, "under 2048"));
	/* Ed25519 and X25519 are not approved: not made, not imported */
	assert_int_equal(KH_CALL(x, &p, "[AOGECC;RA5;SL70;PS71;]"), KH_ERR_FIPS);
	assert_non_null(strstr(x->out, "Ed25519"));
	assert_int_equal(KH_CALL(x, &p, "[AOGECC;RAED25519;]"), KH_ERR_FIPS);
	assert_int_equal(KH_CALL(x, &p, "[AOGECC;RA6;SL70;PS71;]"), KH_ERR_FIPS);
	assert_non_null(strstr(x->out, "X25519"));
	assert_int_equal(KH_CALL(x, &p, "[AOGECC;RAX25519;]"), KH_ERR_FIPS);
	for (int i = 0; i < 2; i++) {
		EVP_PKEY *pk = EVP_PKEY_Q_keygen(NULL, NULL, i == 0 ? "ED25519" : "X25519");
		char *spki = kh_test_der_hex(i2d_PUBKEY(pk, &der), &der);
		snprintf(req, sizeof(req), "[AOASYL;KV%s;SL70;]", spki);
		assert_int_equal(KH_CALL(x, &p, req), KH_ERR_FIPS);
		assert_non_null(strstr(x->out, "not an approved algorithm"));
		snprintf(req, sizeof(req), "[AOGPKA;CLpublic;KT%s;KV%s;SL70;]",
		         i == 0 ? "ED25519" : "X25519", spki);
		assert_int_equal(KH_CALL(x, &p, req), KH_ERR_FIPS);
		/* a certificate for such a key, signed by an approved one */
		X509 *cert = make_cert_by(pk, ec);
		char *cd = kh_test_der_hex(i2d_X509(cert, &der), &der);
		snprintf(req, sizeof(req), "[AOGPCA;SL70;CE%s;]", cd);
		assert_int_equal(KH_CALL(x, &p, req), KH_ERR_FIPS);
		assert_non_null(strstr(x->out, "not an approved algorithm"));
		X509_free(cert);
		free(cd);
		free(spki);
		EVP_PKEY_free(pk);
	}
	/* RSA 1024-2047 verifies legacy signatures but is not imported, not
	 * even a public key or certificate for verification only */
	snprintf(req, sizeof(req), "[AOASYL;KV%s;CZV;SL70;]", rsa_pub);
	assert_int_equal(KH_CALL(x, &p, req), KH_ERR_FIPS);
	{
		X509 *cert = make_cert(rsa);
		char *cd = kh_test_der_hex(i2d_X509(cert, &der), &der);
		snprintf(req, sizeof(req), "[AOGPCA;SL70;CE%s;CZV;]", cd);
		assert_int_equal(KH_CALL(x, &p, req), KH_ERR_FIPS);
		X509_free(cert);
		free(cd);
	}
	assert_int_equal(KH_CALL(x, &p, "[AOGRSA;RB2048;RA3;SL70;]"), KH_ERR_FIPS);
	assert_int_equal(KH_CALL(x, &p, "[AOGRSA;RB2048;RAFFFF;SL70;]"), KH_ERR_FIPS);
	snprintf(req, sizeof(req), "[AOASYL;KV%s;SL70;]", ec_p8);
	assert_int_equal(KH_CALL(x, &p, req), KH_ERR_FIPS);
	snprintf(req, sizeof(req), "[AOLRSA;KV%s;SL70;]", rsa_p8);
	assert_int_equal(KH_CALL(x, &p, req), KH_ERR_FIPS);
	/* a public RSA-1024 key is refused too: too small to use */
	snprintf(req, sizeof(req), "[AOLRSA;KV%s;SL70;]", rsa_pub);
	assert_int_equal(KH_CALL(x, &p, req), KH_ERR_FIPS);
	snprintf(req, sizeof(req), "[AORDPK;CG%s;]", sd);
	assert_int_equal(KH_CALL(x, &p, req), KH_ERR_FIPS);
	assert_empty(x, 70);
	/* what FIPS mode allows */
	assert_int_equal(KH_CALL(x, &p, "[AOGECC;RA2;SL70;PS71;]"), KH_OK);
	char *rd = kh_test_fx_field(x, "RD");
	assert_slot_pair(x, 70, rd);
	free(rd);
	assert_int_equal(KH_CALL(x, &p, "[AOAPFP;SL70;]"), KH_OK);

	EVP_PKEY_free(rsa);
	EVP_PKEY_free(ec);
	free(ec_p8);
	free(rsa_pub);
	free(rsa_p8);
	free(sd);
}

/* A role with a symmetric and an asymmetric range: key pairs and
 * certificates go to the asymmetric one only. */
static void test_range_kinds(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	kh_test_app_login(x, &p, "GRSA,GECC,ASYL,APFP,GPCA,RPFP");

	assert_int_equal(KH_CALL(x, &p, "[AOGECC;RA2;SL150;]"), KH_ERR_SLOT_OUT_OF_RANGE);
	assert_non_null(strstr(x->out, "range kind"));
	assert_int_equal(KH_CALL(x, &p, "[AOGECC;RA2;SL250;PS150;]"), KH_ERR_SLOT_OUT_OF_RANGE);
	assert_int_equal(KH_CALL(x, &p, "[AOGECC;RA2;SL250;PS350;]"), KH_ERR_SLOT_OUT_OF_RANGE);
	assert_int_equal(KH_CALL(x, &p, "[AOGRSA;RB2048;PS150;]"), KH_ERR_SLOT_OUT_OF_RANGE);
	assert_empty(x, 250);
	assert_int_equal(KH_CALL(x, &p, "[AOGECC;RA5;SL250;PS251;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOAPFP;SL250;PS150;]"), KH_ERR_SLOT_OUT_OF_RANGE);
	assert_int_equal(KH_CALL(x, &p, "[AOAPFP;SL250;PS252;]"), KH_OK);
	/* (GPCA: the missing keys.import_pki is refused before the slot) */
	assert_int_equal(KH_CALL(x, &p, "[AOGPCA;SL150;CE3003020100;]"), KH_ERR_PERMISSION_DENIED);
	assert_int_equal(KH_CALL(x, &p, "[AOASYL;KV3003020100;SL150;]"), KH_ERR_SLOT_OUT_OF_RANGE);
	/* the role has no keys.import_pki */
	assert_int_equal(KH_CALL(x, &p, "[AOASYL;KV30033001;SL260;]"), KH_ERR_PERMISSION_DENIED);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    KH_FX_TEST(test_grsa, kh_test_fx_setup_pmk),
	    KH_FX_TEST(test_gecc, kh_test_fx_setup_pmk),
	    KH_FX_TEST(test_pair_all_or_nothing, kh_test_fx_setup_pmk),
	    KH_FX_TEST(test_asyl_lrsa, kh_test_fx_setup_pmk),
	    KH_FX_TEST(test_apfp, kh_test_fx_setup_pmk),
	    KH_FX_TEST(test_gpca, kh_test_fx_setup_pmk),
	    KH_FX_TEST(test_fips, kh_test_fx_setup_pmk),
	    KH_FX_TEST(test_range_kinds, kh_test_fx_setup_pmk),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

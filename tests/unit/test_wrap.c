/* Key wrap, unwrap and derivation through the dispatcher: GPKW/GPKU (AES
 * KW, KWP, RSA-OAEP), GPWK/GPUK (usage preserved), GPDK (ECDH, X25519,
 * X9.63, HKDF). Known answers from RFC 3394, RFC 5649 and RFC 5869 and from
 * OpenSSL's EVP API run here, round trips, uniform unwrap failures, and the
 * usage and permission rules. */
#include "kh_testutil.h"
#include "hsm/keyobj.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#define ALL_PERMS "keys,keys.all_slots,keys.no_usage_wrap,keys.import_pki"

static int set_perms(struct kh_test_fx *x, const char *perms)
{
	return KH_CALLF(x, &x->admin, "[AORLMD;RNAnonymous;PM%s;]", perms);
}

static int setup(void **state)
{
	int r = kh_test_fx_setup_pmk(state);
	struct kh_test_fx *x = *state;
	if (r == 0)
		r = set_perms(x, ALL_PERMS);
	return r;
}

/* Store a private key (clear, through GPKA) in slot with usage cz, flags kf. */
static void put_private(struct kh_test_fx *x, struct kh_session *p, unsigned slot, EVP_PKEY *pk,
                        const char *type, const char *cz, const char *kf)
{
	char *h = kh_test_pkcs8_hex(pk);
	assert_int_equal(KH_CALLF(x, p, "[AOGPKA;CLprivate;KT%s;KV%s;CZ%s;%s%s%sSL%u;]", type, h,
	                          cz, *kf ? "KF" : "", kf, *kf ? ";" : "", slot),
	                 KH_OK);
	free(h);
}

/* The secret bytes of the key in slot. */
static size_t slot_secret(struct kh_test_fx *x, unsigned slot, uint8_t *out, size_t max)
{
	struct kh_key *k = NULL;
	assert_int_equal(kh_key_load_slot(&x->hsm, slot, &k), KH_OK);
	assert_int_equal(k->a.cls, KH_KC_SECRET);
	assert_true(k->secret_len <= max);
	memcpy(out, k->secret, k->secret_len);
	size_t n = k->secret_len;
	kh_key_unref(k);
	return n;
}

/* AES key wrap (KW or KWP) with OpenSSL directly. */
static size_t evp_kw(const uint8_t *kek, size_t keklen, bool pad, int enc, const uint8_t *in,
                     size_t inl, uint8_t *out)
{
	const EVP_CIPHER *c = keklen == 16 ? (pad ? EVP_aes_128_wrap_pad() : EVP_aes_128_wrap())
	                                   : (pad ? EVP_aes_256_wrap_pad() : EVP_aes_256_wrap());
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	int n = 0, m = 0;
	EVP_CIPHER_CTX_set_flags(ctx, EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
	assert_int_equal(EVP_CipherInit_ex(ctx, c, NULL, kek, NULL, enc), 1);
	assert_int_equal(EVP_CipherUpdate(ctx, out, &n, in, (int)inl), 1);
	assert_int_equal(EVP_CipherFinal_ex(ctx, out + n, &m), 1);
	EVP_CIPHER_CTX_free(ctx);
	return (size_t)(n + m);
}

/* RSA-2048 made once for the whole run (key generation is slow under ASan). */
static EVP_PKEY *rsa2048;

static EVP_PKEY *rsa_key(void)
{
	if (rsa2048 == NULL)
		rsa2048 = EVP_RSA_gen(2048);
	assert_non_null(rsa2048);
	return rsa2048;
}

/* ---- AES key wrap ------------------------------------------------------------ */

#define KEK256 "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F"

static void test_kw_kwp_round_trips(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	kh_test_session(&p, KH_PORT_PROD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKA;CLsecret;KTAES;KV%s;CZWU;SL100;]", KEK256),
	                 KH_OK);
	/* secret keys of several sizes, KW where the size allows it, KWP always */
	static const char *const gen[] = {"CT4", "CT5", "CT6", "CT7;LN20", "CT7;LN24", "CT7;LN1"};
	for (size_t i = 0; i < sizeof(gen) / sizeof(gen[0]); i++) {
		assert_int_equal(KH_CALLF(x, &p, "[AOGPGS;%s;KFX;SL%zu;]", gen[i], 110 + i), KH_OK);
		char *ae = kh_test_fx_field(x, "AE");
		bool kw_ok = i != 3 && i != 5;
		for (int kwp = 0; kwp < 2; kwp++) {
			int r = KH_CALLF(x, &p, "[AOGPKW;SL100;AL%s;S2%zu;]", kwp ? "KWP" : "KW",
			                 110 + i);
			if (!kwp && !kw_ok) {
				assert_int_equal(r, KH_ERR_BAD_FIELD);
				assert_non_null(strstr(x->out, "AL KW"));
				continue;
			}
			assert_int_equal(r, KH_OK);
			assert_string_equal(kh_test_field(x->out, "BB"), "Y");
			char *wk = kh_test_fx_field(x, "WK");
			assert_int_equal(KH_CALLF(x, &p, "[AOGPKU;SL100;AL%s;WK%s;KT%s;KFX;]",
			                          kwp ? "KWP" : "KW", wk,
			                          i < 3 ? "AES" : "GENERIC"),
			                 KH_OK);
			assert_string_equal(kh_test_field(x->out, "AE"), ae);
			assert_true(strlen(kh_test_field(x->out, "BG")) > 0);
			free(wk);
		}
		free(ae);
	}
	/* the KEK as a cryptogram and the target as a cryptogram */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPGC;SL100;]"), KH_OK);
	char *kek_cg = kh_test_fx_field(x, "BG");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPGS;CT6;KFX;]"), KH_OK);
	char *bg = kh_test_fx_field(x, "BG"), *ae = kh_test_fx_field(x, "AE");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKW;CG%s;ALKW;C2%s;]", kek_cg, bg), KH_OK);
	char *wk = kh_test_fx_field(x, "WK");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKU;CG%s;ALKW;WK%s;KTAES;DS130;]", kek_cg, wk),
	                 KH_OK);
	assert_string_equal(kh_test_field(x->out, "AE"), ae);
	assert_string_equal(kh_test_field(x->out, "BG"), "");
	/* an unwrapped key is not local; not exportable unless asked */
	struct kh_key *k = NULL;
	assert_int_equal(kh_key_load_slot(&x->hsm, 130, &k), KH_OK);
	assert_int_equal(k->a.flags, 0);
	assert_int_equal(k->a.usage, KH_U_ENCRYPT | KH_U_DECRYPT);
	kh_key_unref(k);
	free(wk);
	free(bg);
	free(ae);
	free(kek_cg);

	/* a private key leaves as PKCS#8 under KWP, never under KW */
	EVP_PKEY *ec = EVP_EC_gen("P-256");
	put_private(x, &p, 140, ec, "EC", "G", "X");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKW;SL100;ALKW;S2140;]"), KH_ERR_KEY_USAGE);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKW;SL100;ALKWP;S2140;]"), KH_OK);
	wk = kh_test_fx_field(x, "WK");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKU;SL100;ALKW;WK%s;CLprivate;]", wk),
	                 KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKU;SL100;ALKWP;WK%s;CLprivate;KTRSA;]", wk),
	                 KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKU;SL100;ALKWP;WK%s;CLprivate;CZX;DS141;]", wk),
	                 KH_OK);
	assert_true(strlen(kh_test_field(x->out, "KD")) == 32);
	assert_int_equal(kh_key_load_slot(&x->hsm, 141, &k), KH_OK);
	assert_int_equal(k->a.cls, KH_KC_PRIVATE);
	assert_int_equal(k->a.type, KH_KT_EC);
	assert_int_equal(k->a.usage, KH_U_DERIVE);
	assert_int_equal(EVP_PKEY_eq(k->pkey, ec), 1);
	kh_key_unref(k);
	free(wk);
	EVP_PKEY_free(ec);
}

/* RFC 3394 section 4.1 and RFC 5649 section 6 (20 octets) through GPKU,
 * then the same key wrapped again by GPKW gives the published value. */
static void test_rfc_vectors(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	uint8_t k[64];
	kh_test_session(&p, KH_PORT_PROD);
	assert_int_equal(
	    KH_CALLF(x, &p,
	             "[AOGPKA;CLsecret;KTAES;KV000102030405060708090A0B0C0D0E0F;CZWU;SL200;]"),
	    KH_OK);
	const char *w1 = "1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5";
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKU;SL200;ALKW;WK%s;KTAES;KFX;DS201;]", w1), KH_OK);
	uint8_t want1[16];
	kh_test_unhex("00112233445566778899AABBCCDDEEFF", want1, sizeof(want1));
	assert_int_equal(slot_secret(x, 201, k, sizeof(k)), 16);
	assert_memory_equal(k, want1, 16);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKW;SL200;ALKW;S2201;]"), KH_OK);
	assert_string_equal(kh_test_field(x->out, "WK"), w1);

	assert_int_equal(KH_CALLF(x, &p,
	                          "[AOGPKA;CLsecret;KTAES;CZWU;SL202;"
	                          "KV5840DF6E29B02AF1AB493B705BF16EA1AE8338F4DCC176A8;]"),
	                 KH_OK);
	const char *w2 = "138BDEAA9B8FA7FC61F97742E72248EE5AE6AE5360D1AE6A5F54F373FA543B6A";
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKU;SL202;ALKWP;WK%s;KFX;DS203;]", w2), KH_OK);
	uint8_t want2[20];
	kh_test_unhex("C37B7E6492584340BED12207808941155068F738", want2, sizeof(want2));
	assert_int_equal(slot_secret(x, 203, k, sizeof(k)), 20);
	assert_memory_equal(k, want2, 20);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKW;SL202;ALKWP;S2203;]"), KH_OK);
	assert_string_equal(kh_test_field(x->out, "WK"), w2);
}

/* GPKW output opened by OpenSSL, and OpenSSL's output opened by GPKU. */
static void test_interop_openssl(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	uint8_t kek[32], key[24], w[64], m[64];
	kh_test_session(&p, KH_PORT_PROD);
	kh_test_unhex(KEK256, kek, sizeof(kek));
	for (size_t i = 0; i < sizeof(key); i++)
		key[i] = (uint8_t)(0xA0 + i);
	char *kh = kh_test_hex(key, sizeof(key));
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKA;CLsecret;KTAES;KV%s;CZWU;SL300;]", KEK256),
	                 KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKA;CLsecret;KTGENERIC;KV%s;KFX;SL301;]", kh), KH_OK);
	for (int pad = 0; pad < 2; pad++) {
		assert_int_equal(KH_CALLF(x, &p, "[AOGPKW;SL300;AL%s;S2301;]", pad ? "KWP" : "KW"),
		                 KH_OK);
		size_t wl = kh_test_unhex(kh_test_field(x->out, "WK"), w, sizeof(w));
		assert_int_equal(evp_kw(kek, 32, pad, 0, w, wl, m), sizeof(key));
		assert_memory_equal(m, key, sizeof(key));
	}
	/* 13 bytes: only KWP */
	size_t wl = evp_kw(kek, 32, true, 1, key, 13, w);
	char *wh = kh_test_hex(w, wl);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKU;SL300;ALKWP;WK%s;DS302;]", wh), KH_OK);
	assert_int_equal(slot_secret(x, 302, m, sizeof(m)), 13);
	assert_memory_equal(m, key, 13);
	free(wh);
	free(kh);
}

/* Every unwrap failure is the same answer, without detail, and stores
 * nothing. */
static void test_unwrap_failures_uniform(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	char *first = NULL;
	kh_test_session(&p, KH_PORT_PROD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKA;CLsecret;KTAES;KV%s;CZWU;SL400;]", KEK256),
	                 KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPGS;CT6;CZWU;SL401;]"), KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPGS;CT6;KFX;SL402;]"), KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKW;SL400;ALKW;S2402;]"), KH_OK);
	char *kw = kh_test_fx_field(x, "WK");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKW;SL400;ALKWP;S2402;]"), KH_OK);
	char *kwp = kh_test_fx_field(x, "WK");
	/* after a good unwrap, a key that does not fit CL/KT is the request's error */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKU;SL400;ALKWP;WK%s;CLprivate;DS403;]", kwp),
	                 KH_ERR_BAD_FIELD);

	/* the wrong KEK */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKU;SL401;ALKW;WK%s;KTAES;DS403;]", kw),
	                 KH_ERR_DECRYPT_FAILED);
	first = strdup(x->out);
	assert_null(strstr(first, ": "));
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKU;SL401;ALKWP;WK%s;KTAES;DS403;]", kwp),
	                 KH_ERR_DECRYPT_FAILED);
	assert_string_equal(x->out, first);
	/* KWP blob read as KW and the reverse */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKU;SL400;ALKW;WK%s;KTAES;DS403;]", kwp),
	                 KH_ERR_DECRYPT_FAILED);
	assert_string_equal(x->out, first);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKU;SL400;ALKWP;WK%s;KTAES;DS403;]", kw),
	                 KH_ERR_DECRYPT_FAILED);
	assert_string_equal(x->out, first);
	/* a flipped bit anywhere, a truncated blob, a length not a multiple of 8 */
	for (size_t i = 0; i < strlen(kwp); i += 5) {
		char *t = strdup(kwp);
		t[i] = t[i] == '0' ? '8' : '0';
		assert_int_equal(KH_CALLF(x, &p, "[AOGPKU;SL400;ALKWP;WK%s;KTAES;DS403;]", t),
		                 KH_ERR_DECRYPT_FAILED);
		assert_string_equal(x->out, first);
		free(t);
	}
	kwp[strlen(kwp) - 16] = '\0';
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKU;SL400;ALKWP;WK%s;KTAES;DS403;]", kwp),
	                 KH_ERR_DECRYPT_FAILED);
	assert_string_equal(x->out, first);
	kwp[strlen(kwp) - 2] = '\0';
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKU;SL400;ALKWP;WK%s;KTAES;DS403;]", kwp),
	                 KH_ERR_DECRYPT_FAILED);
	assert_string_equal(x->out, first);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKU;SL400;ALKW;WK0011223344556677;KTAES;DS403;]"),
	                 KH_ERR_DECRYPT_FAILED);
	assert_string_equal(x->out, first);
	/* not hex is a bad field, not an unwrap */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKU;SL400;ALKW;WKXYZ;DS403;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKU;SL400;ALKW;DS403;]"), KH_ERR_MISSING_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKR;SL403;]"), KH_ERR_NOT_FOUND);
	free(first);
	free(kw);
	free(kwp);
}

static void test_usage_and_permissions(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	kh_test_session(&p, KH_PORT_PROD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKA;CLsecret;KTAES;KV%s;CZW;SL500;]", KEK256), KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPGS;CT6;CZEDU;SL501;]"), KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPGS;CT6;SL502;]"), KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPGS;CT6;KFX;SL503;]"), KH_OK);
	/* not exportable */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKW;SL500;ALKWP;S2502;]"), KH_ERR_KEY_USAGE);
	assert_non_null(strstr(x->out, "not exportable"));
	assert_int_equal(KH_CALLF(x, &p, "[AOGPWK;SL500;ALKWP;S2502;]"), KH_ERR_KEY_USAGE);
	/* a KEK without W, without U */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKW;SL501;ALKWP;S2503;]"), KH_ERR_KEY_USAGE);
	assert_non_null(strstr(x->out, "lacks W"));
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKW;SL500;ALKWP;S2503;]"), KH_OK);
	char *wk = kh_test_fx_field(x, "WK");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKU;SL500;ALKWP;WK%s;]", wk), KH_ERR_KEY_USAGE);
	assert_non_null(strstr(x->out, "lacks U"));
	/* an RSA key cannot do AES key wrap, an AES key cannot do OAEP */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKW;SL500;ALOAEP;S2503;]"), KH_ERR_KEY_USAGE);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKW;SL500;ALXX;S2503;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKW;SL500;S2503;]"), KH_ERR_MISSING_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPWK;SL500;ALKW;S2503;]"), KH_ERR_BAD_FIELD);
	/* keys.no_usage_wrap gates GPKW and GPKU, not GPWK / GPUK */
	assert_int_equal(set_perms(x, "keys,keys.all_slots"), KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKW;SL500;ALKWP;S2503;]"), KH_ERR_PERMISSION_DENIED);
	assert_non_null(strstr(x->out, "keys.no_usage_wrap"));
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKU;SL501;ALKWP;WK%s;]", wk),
	                 KH_ERR_PERMISSION_DENIED);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPWK;SL500;ALKWP;S2503;]"), KH_OK);
	free(wk);
}

/* ---- RSA-OAEP -------------------------------------------------------------------- */

static void test_oaep(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	EVP_PKEY *rsa = rsa_key();
	uint8_t w[512], m[512], key[32];
	kh_test_session(&p, KH_PORT_PROD);
	put_private(x, &p, 600, rsa, "RSA", "U", "");
	char *pu = kh_test_spki_hex(rsa);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKA;CLpublic;KTRSA;KV%s;CZW;SL601;]", pu), KH_OK);
	for (size_t i = 0; i < sizeof(key); i++)
		key[i] = (uint8_t)(3 * i + 1);
	char *kh = kh_test_hex(key, sizeof(key));
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKA;CLsecret;KTAES;KV%s;KFX;SL602;]", kh), KH_OK);
	char *ae = kh_test_fx_field(x, "AE");

	/* public key from a slot; unwrap with the private key */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKW;SL601;ALOAEP;S2602;]"), KH_OK);
	char *wk = kh_test_fx_field(x, "WK");
	assert_int_equal(strlen(wk), 512);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKU;SL600;ALOAEP;WK%s;KTAES;]", wk), KH_OK);
	assert_string_equal(kh_test_field(x->out, "AE"), ae);
	/* ...and by OpenSSL (SHA-256, MGF1-SHA-256, empty label) */
	size_t wl = kh_test_unhex(wk, w, sizeof(w)), ml = sizeof(m);
	EVP_PKEY_CTX *px = EVP_PKEY_CTX_new(rsa, NULL);
	assert_int_equal(EVP_PKEY_decrypt_init(px), 1);
	assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(px, RSA_PKCS1_OAEP_PADDING), 1);
	assert_int_equal(EVP_PKEY_CTX_set_rsa_oaep_md(px, EVP_sha256()), 1);
	assert_int_equal(EVP_PKEY_decrypt(px, m, &ml, w, wl), 1);
	EVP_PKEY_CTX_free(px);
	assert_int_equal(ml, sizeof(key));
	assert_memory_equal(m, key, sizeof(key));
	free(wk);

	/* OpenSSL's wrap (SHA-384, MGF1-SHA-1, a label) unwrapped by GPKU */
	px = EVP_PKEY_CTX_new(rsa, NULL);
	wl = sizeof(w);
	assert_int_equal(EVP_PKEY_encrypt_init(px), 1);
	assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(px, RSA_PKCS1_OAEP_PADDING), 1);
	assert_int_equal(EVP_PKEY_CTX_set_rsa_oaep_md(px, EVP_sha384()), 1);
	assert_int_equal(EVP_PKEY_CTX_set_rsa_mgf1_md(px, EVP_sha1()), 1);
	assert_int_equal(EVP_PKEY_CTX_set0_rsa_oaep_label(px, OPENSSL_memdup("lbl", 3), 3), 1);
	assert_int_equal(EVP_PKEY_encrypt(px, w, &wl, key, sizeof(key)), 1);
	EVP_PKEY_CTX_free(px);
	wk = kh_test_hex(w, wl);
	assert_int_equal(
	    KH_CALLF(x, &p, "[AOGPKU;SL600;ALOAEP;HASHA-384;MGSHA-1;OL6C626C;WK%s;KTAES;]", wk),
	    KH_OK);
	assert_string_equal(kh_test_field(x->out, "AE"), ae);
	/* a wrong label or hash: the same uniform failure */
	assert_int_equal(
	    KH_CALLF(x, &p, "[AOGPKU;SL600;ALOAEP;HASHA-384;MGSHA-1;OL6C626D;WK%s;KTAES;]", wk),
	    KH_ERR_DECRYPT_FAILED);
	char *first = strdup(x->out);
	assert_null(strstr(first, ": "));
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKU;SL600;ALOAEP;WK%s;KTAES;]", wk),
	                 KH_ERR_DECRYPT_FAILED);
	assert_string_equal(x->out, first);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKU;SL600;ALOAEP;WK00%s;KTAES;]", wk),
	                 KH_ERR_DECRYPT_FAILED);
	assert_string_equal(x->out, first);
	free(first);
	free(wk);

	/* a clear public key in PU needs keys.import_pki */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKW;PU%s;ALOAEP;HASHA-512;OL00;S2602;]", pu), KH_OK);
	wk = kh_test_fx_field(x, "WK");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKU;SL600;ALOAEP;HASHA-512;OL00;WK%s;KTAES;]", wk),
	                 KH_OK);
	assert_string_equal(kh_test_field(x->out, "AE"), ae);
	free(wk);
	/* a generic key too long for OAEP with this key and hash */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPGS;CT7;LN200;KFX;SL603;]"), KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKW;SL601;ALOAEP;S2603;]"), KH_ERR_BAD_FIELD);
	/* the private key does not wrap (class), a public key does not unwrap */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKW;SL600;ALOAEP;S2602;]"), KH_ERR_KEY_USAGE);
	assert_int_equal(set_perms(x, "keys,keys.all_slots,keys.no_usage_wrap"), KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKW;PU%s;ALOAEP;S2602;]", pu),
	                 KH_ERR_PERMISSION_DENIED);
	assert_non_null(strstr(x->out, "keys.import_pki"));
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKW;SL601;ALOAEP;S2602;]"), KH_OK);
	free(ae);
	free(kh);
	free(pu);
}

/* ---- GPWK / GPUK ------------------------------------------------------------------ */

static void test_usage_preserving(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	EVP_PKEY *rsa = rsa_key();
	struct kh_key *k = NULL;
	uint8_t kek[32], blob[128], w[160];
	kh_test_session(&p, KH_PORT_PROD);
	kh_test_unhex(KEK256, kek, sizeof(kek));
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKA;CLsecret;KTAES;KV%s;CZWU;SL700;]", KEK256),
	                 KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPGS;CT5;CZE;KFXS;SL701;]"), KH_OK);
	char *ae = kh_test_fx_field(x, "AE");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPWK;SL700;ALKWP;S2701;]"), KH_OK);
	char *wk = kh_test_fx_field(x, "WK");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPUK;SL700;ALKWP;WK%s;DS702;]", wk), KH_OK);
	assert_string_equal(kh_test_field(x->out, "AE"), ae);
	assert_int_equal(kh_key_load_slot(&x->hsm, 702, &k), KH_OK);
	assert_int_equal(k->a.type, KH_KT_AES);
	assert_int_equal(k->a.bits, 192);
	assert_int_equal(k->a.usage, KH_U_ENCRYPT);
	/* X and S travel; L and Y (history on the first HSM) do not */
	assert_int_equal(k->a.flags, KH_KF_EXPORTABLE | KH_KF_SENSITIVE);
	kh_key_unref(k);
	/* the restored key cannot wrap: its usage is E only */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKW;SL702;ALKWP;S2701;]"), KH_ERR_KEY_USAGE);
	/* the blob is not a GPKU form, and a GPKW result is not a GPUK form */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKU;SL700;ALKWP;WK%s;KTAES;]", wk), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKW;SL700;ALKWP;S2701;]"), KH_OK);
	char *plain = kh_test_fx_field(x, "WK");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPUK;SL700;ALKWP;WK%s;]", plain),
	                 KH_ERR_DECRYPT_FAILED);
	assert_null(strstr(x->out, ": "));
	assert_int_equal(KH_CALLF(x, &p, "[AOGPUK;SL700;ALKW;WK%s;]", wk), KH_ERR_BAD_FIELD);
	free(plain);
	free(wk);

	/* a private key, and OAEP for a secret key */
	EVP_PKEY *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	put_private(x, &p, 703, ed, "ED25519", "G", "X");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPWK;SL700;ALKWP;S2703;]"), KH_OK);
	wk = kh_test_fx_field(x, "WK");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPUK;SL700;ALKWP;WK%s;DS704;]", wk), KH_OK);
	assert_true(strlen(kh_test_field(x->out, "KD")) == 32);
	assert_int_equal(kh_key_load_slot(&x->hsm, 704, &k), KH_OK);
	assert_int_equal(k->a.type, KH_KT_ED25519);
	assert_int_equal(k->a.usage, KH_U_SIGN);
	assert_int_equal(EVP_PKEY_eq(k->pkey, ed), 1);
	kh_key_unref(k);
	free(wk);
	EVP_PKEY_free(ed);
	put_private(x, &p, 705, rsa, "RSA", "U", "");
	char *pu = kh_test_spki_hex(rsa);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPWK;PU%s;ALOAEP;S2701;]", pu), KH_OK);
	wk = kh_test_fx_field(x, "WK");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPUK;SL705;ALOAEP;WK%s;]", wk), KH_OK);
	assert_string_equal(kh_test_field(x->out, "AE"), ae);
	assert_true(strlen(kh_test_field(x->out, "BG")) > 0);
	free(wk);
	free(pu);

	/* blobs made here with the KEK: unsupported attributes, a size that
	 * lies, an Authorized key for a role without keys.authorized */
	static const uint8_t hdr[][14] = {
	    {'K', 'H', 'W', '1', 1, 3, 0, 0, 0, 128, 0, 1, 0, 1},    /* secret RSA */
	    {'K', 'H', 'W', '1', 1, 1, 0, 0, 0, 128, 0x80, 0, 0, 1}, /* usage bit 15 */
	    {'K', 'H', 'W', '1', 1, 1, 0, 0, 0, 192, 0, 1, 0, 1},    /* 192 bits, 16 bytes */
	    {'K', 'H', 'W', '1', 1, 1, 0, 0, 0, 128, 0, 1, 0, 5},    /* X and A */
	};
	static const int want[] = {KH_ERR_BAD_FIELD, KH_ERR_BAD_FIELD, KH_ERR_BAD_FIELD,
	                           KH_ERR_PERMISSION_DENIED};
	for (size_t i = 0; i < sizeof(hdr) / sizeof(hdr[0]); i++) {
		memcpy(blob, hdr[i], 14);
		memset(blob + 14, 0x5A, 16);
		size_t wl = evp_kw(kek, 32, true, 1, blob, 30, w);
		char *h = kh_test_hex(w, wl);
		assert_int_equal(KH_CALLF(x, &p, "[AOGPUK;SL700;ALKWP;WK%s;DS706;]", h), want[i]);
		free(h);
	}
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKR;SL706;]"), KH_ERR_NOT_FOUND);
	/* a destination outside the role's ranges is refused before unwrapping */
	assert_int_equal(KH_CALLF(x, &x->admin, "[AORLMD;RNAnonymous;KRM:0-799;]"), KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPUK;SL700;ALKWP;WK00;DS900;]"),
	                 KH_ERR_SLOT_OUT_OF_RANGE);
	free(ae);
}

/* ---- GPDK ----------------------------------------------------------------------------- */

static size_t evp_derive(EVP_PKEY *a, EVP_PKEY *b, uint8_t *z)
{
	EVP_PKEY_CTX *dx = EVP_PKEY_CTX_new(a, NULL);
	size_t n = 128;
	assert_int_equal(EVP_PKEY_derive_init(dx), 1);
	assert_int_equal(EVP_PKEY_derive_set_peer(dx, b), 1);
	assert_int_equal(EVP_PKEY_derive(dx, z, &n), 1);
	EVP_PKEY_CTX_free(dx);
	return n;
}

/* The public value as GPDK's PP takes it. */
static char *pp_hex(EVP_PKEY *pk, bool x25519)
{
	uint8_t b[160];
	size_t n = sizeof(b);
	if (x25519)
		assert_int_equal(EVP_PKEY_get_raw_public_key(pk, b, &n), 1);
	else
		assert_int_equal(
		    EVP_PKEY_get_octet_string_param(pk, OSSL_PKEY_PARAM_PUB_KEY, b, sizeof(b), &n),
		    1);
	return kh_test_hex(b, n);
}

static void test_ecdh_curves(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	static const char *const curves[] = {"P-256", "P-384", "P-521", "X25519"};
	uint8_t z[160], k[160];
	kh_test_session(&p, KH_PORT_PROD);
	for (unsigned i = 0; i < 4; i++) {
		bool xc = i == 3;
		EVP_PKEY *a = xc ? EVP_PKEY_Q_keygen(NULL, NULL, "X25519") : EVP_EC_gen(curves[i]);
		EVP_PKEY *b = xc ? EVP_PKEY_Q_keygen(NULL, NULL, "X25519") : EVP_EC_gen(curves[i]);
		unsigned sa = 800 + 10 * i, sb = sa + 1;
		put_private(x, &p, sa, a, xc ? "X25519" : "EC", "X", "");
		put_private(x, &p, sb, b, xc ? "X25519" : "EC", "X", "");
		char *pua = kh_test_spki_hex(a), *pub = kh_test_spki_hex(b), *ppb = pp_hex(b, xc);
		/* both sides agree (compared by check value) */
		assert_int_equal(KH_CALLF(x, &p, "[AOGPDK;SL%u;PU%s;CT6;]", sa, pub), KH_OK);
		char *ae = kh_test_fx_field(x, "AE");
		assert_true(strlen(kh_test_field(x->out, "BG")) > 0);
		assert_int_equal(KH_CALLF(x, &p, "[AOGPDK;SL%u;PU%s;CT6;]", sb, pua), KH_OK);
		assert_string_equal(kh_test_field(x->out, "AE"), ae);
		assert_int_equal(KH_CALLF(x, &p, "[AOGPDK;SL%u;PP%s;CT6;]", sa, ppb), KH_OK);
		assert_string_equal(kh_test_field(x->out, "AE"), ae);
		/* NULL: the leading bytes of Z; generic by default the whole of Z */
		size_t zl = evp_derive(a, b, z);
		assert_int_equal(KH_CALLF(x, &p, "[AOGPDK;SL%u;PP%s;CT4;DS%u;]", sa, ppb, sa + 2),
		                 KH_OK);
		assert_int_equal(slot_secret(x, sa + 2, k, sizeof(k)), 16);
		assert_memory_equal(k, z, 16);
		assert_int_equal(
		    KH_CALLF(x, &p, "[AOGPDK;SL%u;PU%s;CT7;CZX;NFX;DS%u;]", sa, pub, sa + 3),
		    KH_OK);
		assert_int_equal(slot_secret(x, sa + 3, k, sizeof(k)), zl);
		assert_memory_equal(k, z, zl);
		assert_int_equal(KH_CALLF(x, &p, "[AOGPDK;SL%u;PU%s;CT7;LN%zu;]", sa, pub, zl + 1),
		                 KH_ERR_BAD_FIELD);
		free(ae);
		free(pua);
		free(pub);
		free(ppb);
		EVP_PKEY_free(a);
		EVP_PKEY_free(b);
	}
	/* X9.63 against OpenSSL's X963KDF */
	EVP_PKEY *a = EVP_EC_gen("P-256"), *b = EVP_EC_gen("P-384"), *c = EVP_EC_gen("P-256");
	put_private(x, &p, 850, a, "EC", "X", "");
	char *puc = kh_test_spki_hex(c), *pub = kh_test_spki_hex(b);
	size_t zl = evp_derive(a, c, z);
	uint8_t okm[48];
	EVP_KDF *kdf = EVP_KDF_fetch(NULL, "X963KDF", NULL);
	EVP_KDF_CTX *kx = EVP_KDF_CTX_new(kdf);
	OSSL_PARAM prm[] = {OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, "SHA384", 0),
	                    OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, z, zl),
	                    OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, "abc", 3),
	                    OSSL_PARAM_construct_end()};
	assert_int_equal(EVP_KDF_derive(kx, okm, sizeof(okm), prm), 1);
	EVP_KDF_CTX_free(kx);
	EVP_KDF_free(kdf);
	assert_int_equal(
	    KH_CALLF(x, &p, "[AOGPDK;SL850;PU%s;KFX963-SHA384;SI616263;CT7;LN48;DS851;]", puc),
	    KH_OK);
	assert_int_equal(slot_secret(x, 851, k, sizeof(k)), 48);
	assert_memory_equal(k, okm, 48);
	/* HKDF over an ECDH secret */
	kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
	kx = EVP_KDF_CTX_new(kdf);
	OSSL_PARAM hp[] = {OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, "SHA512", 0),
	                   OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, z, zl),
	                   OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, "s", 1),
	                   OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, "i", 1),
	                   OSSL_PARAM_construct_end()};
	assert_int_equal(EVP_KDF_derive(kx, okm, 40, hp), 1);
	EVP_KDF_CTX_free(kx);
	EVP_KDF_free(kdf);
	assert_int_equal(
	    KH_CALLF(x, &p, "[AOGPDK;SL850;PU%s;KFHKDF-SHA512;SA73;IN69;CT7;LN40;DS853;]", puc),
	    KH_OK);
	assert_int_equal(slot_secret(x, 853, k, sizeof(k)), 40);
	assert_memory_equal(k, okm, 40);
	/* a KDF needs LN for a generic key; parameters belong to their KDF */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPDK;SL850;PU%s;KFX963-SHA256;CT7;]", puc),
	                 KH_ERR_MISSING_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPDK;SL850;PU%s;KFX963-SHA256;IN00;CT6;]", puc),
	                 KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPDK;SL850;PU%s;KFMD5;CT6;]", puc), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPDK;SL850;CT6;]"), KH_ERR_MISSING_FIELD);
	/* a peer on another curve, off the curve, of small order: CRYPTO */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPDK;SL850;PU%s;CT6;]", pub), KH_ERR_CRYPTO);
	char *ppc = pp_hex(c, false);
	ppc[strlen(ppc) - 1] = ppc[strlen(ppc) - 1] == '0' ? '1' : '0';
	assert_int_equal(KH_CALLF(x, &p, "[AOGPDK;SL850;PP%s;CT6;]", ppc), KH_ERR_CRYPTO);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPDK;SL850;PP%s;CT6;]", ppc + 2), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPDK;SL830;PP%064d;CT6;]", 0), KH_ERR_CRYPTO);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPDK;SL810;PU%s;CT6;]", puc), KH_ERR_CRYPTO);
	/* usage X is needed */
	put_private(x, &p, 852, c, "EC", "G", "");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPDK;SL852;PU%s;CT6;]", puc), KH_ERR_KEY_USAGE);
	free(ppc);
	free(puc);
	free(pub);
	EVP_PKEY_free(a);
	EVP_PKEY_free(b);
	EVP_PKEY_free(c);
}

/* RFC 5869 test case 1 from a generic secret base key. */
static void test_hkdf(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	uint8_t okm[42], k[64];
	kh_test_session(&p, KH_PORT_PROD);
	assert_int_equal(KH_CALLF(x, &p,
	                          "[AOGPKA;CLsecret;KTGENERIC;CZX;SL900;"
	                          "KV0B0B0B0B0B0B0B0B0B0B0B0B0B0B0B0B0B0B0B0B0B0B;]"),
	                 KH_OK);
	assert_int_equal(KH_CALLF(x, &p,
	                          "[AOGPDK;SL900;KFHKDF-SHA256;SA000102030405060708090A0B0C;"
	                          "INF0F1F2F3F4F5F6F7F8F9;CT7;LN42;NFX;DS901;]"),
	                 KH_OK);
	kh_test_unhex(
	    "3CB25F25FAACD57A90434F64D0362F2A2D2D0A90CF1A5A4C5DB02D56ECC4C5BF34007208D5B887185865",
	    okm, sizeof(okm));
	assert_int_equal(slot_secret(x, 901, k, sizeof(k)), 42);
	assert_memory_equal(k, okm, 42);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKR;SL901;]"), KH_OK);
	/* a secret base key: no NULL KDF, no peer */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPDK;SL900;CT6;]"), KH_ERR_KEY_USAGE);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPDK;SL900;KFHKDF-SHA256;PP00;CT6;]"),
	                 KH_ERR_BAD_FIELD);
	/* the new key's flags: Authorized needs keys.authorized */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPDK;SL900;KFHKDF-SHA512;CT6;NFA;]"),
	                 KH_ERR_PERMISSION_DENIED);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPDK;SL900;KFHKDF-SHA512;CT6;NFL;]"),
	                 KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPDK;SL900;KFHKDF-SHA384;CT6;]"), KH_OK);
	assert_true(strlen(kh_test_field(x->out, "BG")) > 0);
	assert_int_equal(strlen(kh_test_field(x->out, "AE")), 6);
}

/* FIPS mode: GPKU is the way keys come in; small RSA keys do not wrap. */
static void test_fips(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	kh_test_session(&p, KH_PORT_PROD);
	EVP_PKEY *small = EVP_RSA_gen(1024);
	char *pu = kh_test_spki_hex(small);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKA;CLsecret;KTAES;KV%s;CZWU;SL950;]", KEK256),
	                 KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPGS;CT6;KFX;SL951;]"), KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKW;SL950;ALKWP;S2951;]"), KH_OK);
	char *wk = kh_test_fx_field(x, "WK");
	/* an ECDH pair, an X25519 one, and X25519 / Ed25519 keys wrapped out */
	EVP_PKEY *a = EVP_EC_gen("P-256"), *b = EVP_EC_gen("P-256");
	EVP_PKEY *xa = EVP_PKEY_Q_keygen(NULL, NULL, "X25519");
	EVP_PKEY *xb = EVP_PKEY_Q_keygen(NULL, NULL, "X25519");
	EVP_PKEY *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	put_private(x, &p, 960, a, "EC", "X", "");
	put_private(x, &p, 961, xa, "X25519", "X", "X");
	put_private(x, &p, 962, ed, "ED25519", "G", "X");
	char *pub = kh_test_spki_hex(b), *xpub = kh_test_spki_hex(xb);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKW;SL950;ALKWP;S2961;]"), KH_OK);
	char *wkx = kh_test_fx_field(x, "WK");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPWK;SL950;ALKWP;S2962;]"), KH_OK);
	char *wked = kh_test_fx_field(x, "WK");

	assert_int_equal(KH_CALLF(x, &x->admin, "[AOSETS;FIY;]"), KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKA;CLsecret;KTAES;KV%s;SL952;]", KEK256),
	                 KH_ERR_FIPS);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKU;SL950;ALKWP;WK%s;KTAES;DS952;]", wk), KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKW;PU%s;ALOAEP;S2951;]", pu), KH_ERR_FIPS);
	/* GPDK: the raw shared secret is no key in FIPS mode (SP 800-56A), named
	 * or by default; a KDF is */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPDK;SL960;PU%s;KFNULL;CT6;]", pub), KH_ERR_FIPS);
	assert_non_null(strstr(x->out, "KDF"));
	assert_int_equal(KH_CALLF(x, &p, "[AOGPDK;SL960;PU%s;CT6;]", pub), KH_ERR_FIPS);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPDK;SL960;PU%s;KFX963-SHA256;CT6;]", pub), KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPDK;SL960;PU%s;KFHKDF-SHA256;CT6;]", pub), KH_OK);
	/* X25519 is not approved: no agreement, with a KDF or a peer's key
	 * alone, and no X25519 or Ed25519 key unwrapped or wrapped out */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPDK;SL961;PU%s;KFHKDF-SHA256;CT6;]", xpub),
	                 KH_ERR_FIPS);
	assert_non_null(strstr(x->out, "X25519"));
	assert_int_equal(KH_CALLF(x, &p, "[AOGPDK;SL960;PU%s;KFHKDF-SHA256;CT6;]", xpub),
	                 KH_ERR_CRYPTO);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKU;SL950;ALKWP;WK%s;CLprivate;CZX;]", wkx),
	                 KH_ERR_FIPS);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPUK;SL950;ALKWP;WK%s;]", wked), KH_ERR_FIPS);
	assert_non_null(strstr(x->out, "Ed25519"));
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKW;SL950;ALKWP;S2961;]"), KH_ERR_FIPS);
	free(wk);
	free(wkx);
	free(wked);
	free(pu);
	free(pub);
	free(xpub);
	EVP_PKEY_free(small);
	EVP_PKEY_free(a);
	EVP_PKEY_free(b);
	EVP_PKEY_free(xa);
	EVP_PKEY_free(xb);
	EVP_PKEY_free(ed);
}

static int teardown_all(void **state)
{
	(void)state;
	EVP_PKEY_free(rsa2048);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    KH_FX_TEST(test_kw_kwp_round_trips, setup),
	    KH_FX_TEST(test_rfc_vectors, setup),
	    KH_FX_TEST(test_interop_openssl, setup),
	    KH_FX_TEST(test_unwrap_failures_uniform, setup),
	    KH_FX_TEST(test_usage_and_permissions, setup),
	    KH_FX_TEST(test_oaep, setup),
	    KH_FX_TEST(test_usage_preserving, setup),
	    KH_FX_TEST(test_ecdh_curves, setup),
	    KH_FX_TEST(test_hkdf, setup),
	    KH_FX_TEST(test_fips, setup),
	};
	return cmocka_run_group_tests(tests, NULL, teardown_all);
}

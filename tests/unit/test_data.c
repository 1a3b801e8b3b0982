/* The data commands through the dispatcher: GPSE/GPSD in every AES mode and
 * with RSA OAEP and PKCS#1 v1.5, GPMC and HMAC, GHSH and GPSR. Known answers
 * come from the published vectors (NIST SP 800-38A, McGrew-Viega GCM,
 * RFC 4493, RFC 4231, FIPS 180); RSA results are checked against OpenSSL's
 * EVP API in the test. Negative tests for usage, permissions, FIPS mode and
 * malformed parameters. */
#include "kh_testutil.h"
#include "common/kh_mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

/* One RSA-2048 key for the whole file (key generation is slow under ASan). */
static EVP_PKEY *rsa;
static char *rsa_priv_hex, *rsa_pub_hex;

static int group_setup(void **state)
{
	(void)state;
	rsa = EVP_RSA_gen(2048);
	assert_non_null(rsa);
	rsa_priv_hex = kh_test_pkcs8_hex(rsa);
	rsa_pub_hex = kh_test_spki_hex(rsa);
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	EVP_PKEY_free(rsa);
	free(rsa_priv_hex);
	free(rsa_pub_hex);
	return 0;
}

static void assert_field(struct kh_test_fx *x, const char *tag, const char *hex)
{
	const char *v = kh_test_field(x->out, tag);
	if (strcasecmp(v, hex) != 0)
		fail_msg("%s: got %s, want %s", tag, v, hex);
}

/* The error text carries no detail: just the code's own words. */
static void assert_bare_error(struct kh_test_fx *x, int err)
{
	char want[128];
	snprintf(want, sizeof(want), "ET%s;]", kh_strerror(err));
	assert_non_null(strstr(x->out, want));
}

/* ---- AES ------------------------------------------------------------------ */

static const char *const sp_pt = "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
                                 "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710";

static void test_aes_round_trips(void **state)
{
	static const char *const modes[] = {"ECB", "CBC", "CBCP", "CTR", "GCM"};
	struct kh_test_fx *x = *state;
	struct kh_session p;
	uint8_t key[32], pt[37];
	char kh[65], pth[75], iv[] = "000102030405060708090A0B0C0D0E0F";
	kh_test_session(&p, KH_PORT_PROD);

	assert_int_equal(RAND_bytes(pt, sizeof(pt)), 1);
	kh_hex_encode(pt, sizeof(pt), pth);
	for (size_t ks = 16; ks <= 32; ks += 8) {
		unsigned slot = (unsigned)(10 + ks);
		assert_int_equal(RAND_bytes(key, (int)ks), 1);
		kh_hex_encode(key, ks, kh);
		assert_int_equal(
		    KH_CALLF(x, &p, "[AOGPKA;CLsecret;KTAES;KV%s;SL%u;CZED;]", kh, slot), KH_OK);
		for (size_t m = 0; m < sizeof(modes) / sizeof(modes[0]); m++) {
			/* ECB and CBC take whole blocks: 32 of the 37 bytes */
			bool blocks = m < 2;
			char data[75];
			snprintf(data, sizeof(data), "%.*s", blocks ? 64 : 74, pth);
			bool gcm = m == 4;
			int r =
			    KH_CALLF(x, &p, "[AOGPSE;SL%u;AL%s;DT%s;%s%s%s]", slot, modes[m], data,
			             m == 0 ? "" : "IV", m == 0 ? "" : iv, m == 0 ? "" : ";");
			assert_int_equal(r, KH_OK);
			char *ct = kh_test_fx_field(x, "DT"), *tg = kh_test_fx_field(x, "TG");
			assert_string_equal(kh_test_field(x->out, "BB"), "Y");
			assert_int_equal(strlen(ct), m == 2 ? 96 : strlen(data));
			assert_int_equal(strlen(tg), gcm ? 32 : 0);
			assert_string_not_equal(ct, data);
			r = KH_CALLF(x, &p, "[AOGPSD;SL%u;AL%s;DT%s;%s%s%s%s%s%s]", slot, modes[m],
			             ct, m == 0 ? "" : "IV", m == 0 ? "" : iv, m == 0 ? "" : ";",
			             gcm ? "TG" : "", gcm ? tg : "", gcm ? ";" : "");
			assert_int_equal(r, KH_OK);
			assert_field(x, "DT", data);
			free(ct);
			free(tg);
		}
	}
	/* GCM without an IV: 12 random bytes come back; AD and a short tag */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL42;ALGCM;DT%s;AD0102;TL12;]", pth), KH_OK);
	char *ct = kh_test_fx_field(x, "DT"), *gi = kh_test_fx_field(x, "IV"),
	     *tg = kh_test_fx_field(x, "TG");
	assert_int_equal(strlen(gi), 24);
	assert_int_equal(strlen(tg), 24);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;SL42;ALGCM;DT%s;IV%s;TG%s;AD0102;]", ct, gi, tg),
	                 KH_OK);
	assert_field(x, "DT", pth);
	/* the same without the associated data, or with a tampered tag */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;SL42;ALGCM;DT%s;IV%s;TG%s;]", ct, gi, tg),
	                 KH_ERR_DECRYPT_FAILED);
	assert_bare_error(x, KH_ERR_DECRYPT_FAILED);
	tg[0] = tg[0] == '0' ? '1' : '0';
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;SL42;ALGCM;DT%s;IV%s;TG%s;AD0102;]", ct, gi, tg),
	                 KH_ERR_DECRYPT_FAILED);
	assert_bare_error(x, KH_ERR_DECRYPT_FAILED);
	free(ct);
	free(gi);
	free(tg);
	/* a key named by cryptogram; empty data */
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;]"), KH_OK);
	char *bg = kh_test_fx_field(x, "BG");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;CG%s;ALCBCP;IV%s;DT;]", bg, iv), KH_OK);
	ct = kh_test_fx_field(x, "DT");
	assert_int_equal(strlen(ct), 32);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;CG%s;ALCBCP;IV%s;DT%s;]", bg, iv, ct), KH_OK);
	assert_field(x, "DT", "");
	free(ct);
	free(bg);
}

static void test_aes_known_answers(void **state)
{
	static const struct {
		const char *key, *mode, *iv, *ct;
	} v[] = {
	    /* NIST SP 800-38A F.1.1, F.2.1, F.5.1 (AES-128), F.1.3, F.2.3, F.5.3
	     * (AES-192), F.1.5, F.2.5, F.5.5 (AES-256) */
	    {"2b7e151628aed2a6abf7158809cf4f3c", "ECB", NULL,
	     "3ad77bb40d7a3660a89ecaf32466ef97f5d3d58503b9699de785895a96fdbaaf"
	     "43b1cd7f598ece23881b00e3ed0306887b0c785e27e8ad3f8223207104725dd4"},
	    {"2b7e151628aed2a6abf7158809cf4f3c", "CBC", "000102030405060708090a0b0c0d0e0f",
	     "7649abac8119b246cee98e9b12e9197d5086cb9b507219ee95db113a917678b2"
	     "73bed6b8e3c1743b7116e69e222295163ff1caa1681fac09120eca307586e1a7"},
	    {"2b7e151628aed2a6abf7158809cf4f3c", "CTR", "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff",
	     "874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff"
	     "5ae4df3edbd5d35e5b4f09020db03eab1e031dda2fbe03d1792170a0f3009cee"},
	    {"8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b", "ECB", NULL,
	     "bd334f1d6e45f25ff712a214571fa5cc974104846d0ad3ad7734ecb3ecee4eef"
	     "ef7afd2270e2e60adce0ba2face6444e9a4b41ba738d6c72fb16691603c18e0e"},
	    {"8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b", "CBC",
	     "000102030405060708090a0b0c0d0e0f",
	     "4f021db243bc633d7178183a9fa071e8b4d9ada9ad7dedf4e5e738763f69145a"
	     "571b242012fb7ae07fa9baac3df102e008b0e27988598881d920a9e64f5615cd"},
	    {"8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b", "CTR",
	     "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff",
	     "1abc932417521ca24f2b0459fe7e6e0b090339ec0aa6faefd5ccc2c6f4ce8e94"
	     "1e36b26bd1ebc670d1bd1d665620abf74f78a7f6d29809585a97daec58c6b050"},
	    {"603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4", "ECB", NULL,
	     "f3eed1bdb5d2a03c064b5a7e3db181f8591ccb10d410ed26dc5ba74a31362870"
	     "b6ed21b99ca6f4f9f153e7b1beafed1d23304b7a39f9f3ff067d8d8f9e24ecc7"},
	    {"603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4", "CBC",
	     "000102030405060708090a0b0c0d0e0f",
	     "f58c4c04d6e5f1ba779eabfb5f7bfbd69cfc4e967edb808d679f777bc6702c7d"
	     "39f23369a9d9bacfa530e26304231461b2eb05e2c39be9fcda6c19078c6a9d1b"},
	    {"603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4", "CTR",
	     "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff",
	     "601ec313775789a5b7a7f504bbf3d228f443e3ca4d62b59aca84e990cacaf5c5"
	     "2b0930daa23de94ce87017ba2d84988ddfc9c58db67aada613c2dd08457941a6"},
	};
	struct kh_test_fx *x = *state;
	struct kh_session p;
	kh_test_session(&p, KH_PORT_PROD);

	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		assert_int_equal(
		    KH_CALLF(x, &p, "[AOGPKA;CLsecret;KTAES;KV%s;SL60;CZED;RPY;]", v[i].key),
		    KH_OK);
		assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL60;AL%s;DT%s;%s%s%s]", v[i].mode, sp_pt,
		                          v[i].iv ? "IV" : "", v[i].iv ? v[i].iv : "",
		                          v[i].iv ? ";" : ""),
		                 KH_OK);
		assert_field(x, "DT", v[i].ct);
		assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;SL60;AL%s;DT%s;%s%s%s]", v[i].mode,
		                          v[i].ct, v[i].iv ? "IV" : "", v[i].iv ? v[i].iv : "",
		                          v[i].iv ? ";" : ""),
		                 KH_OK);
		assert_field(x, "DT", sp_pt);
	}

	/* McGrew-Viega test cases 4 (96-bit IV) and 6 (60-byte IV) */
	static const char gk[] = "feffe9928665731c6d6a8f9467308308",
	                  gp[] = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
	                         "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
	                  ga[] = "feedfacedeadbeeffeedfacedeadbeefabaddad2";
	static const struct {
		const char *iv, *ct, *tag;
	} g[] = {
	    {"cafebabefacedbaddecaf888",
	     "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
	     "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091",
	     "5bc94fbc3221a5db94fae95ae7121a47"},
	    {"9313225df88406e555909c5aff5269aa6a7a9538534f7da1e4c303d2a318a728"
	     "c3c0c95156809539fcf0e2429a6b525416aedbf5a0de6a57a637b39b",
	     "8ce24998625615b603a033aca13fb894be9112a5c3a211a8ba262a3cca7e2ca7"
	     "01e4a9a4fba43c90ccdcb281d48c7c6fd62875d2aca417034c34aee5",
	     "619cc5aefffe0bfa462af43c1699d050"},
	};
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKA;CLsecret;KTAES;KV%s;SL61;CZED;]", gk), KH_OK);
	for (size_t i = 0; i < 2; i++) {
		assert_int_equal(
		    KH_CALLF(x, &p, "[AOGPSE;SL61;ALGCM;DT%s;IV%s;AD%s;]", gp, g[i].iv, ga), KH_OK);
		assert_field(x, "DT", g[i].ct);
		assert_field(x, "TG", g[i].tag);
		assert_field(x, "IV", g[i].iv);
		assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;SL61;ALGCM;DT%s;IV%s;AD%s;TG%s;]",
		                          g[i].ct, g[i].iv, ga, g[i].tag),
		                 KH_OK);
		assert_field(x, "DT", gp);
	}
	/* a truncated tag is the tag's first bytes */
	assert_int_equal(
	    KH_CALLF(x, &p, "[AOGPSE;SL61;ALGCM;DT%s;IV%s;AD%s;TL8;]", gp, g[0].iv, ga), KH_OK);
	assert_field(x, "TG", "5bc94fbc3221a5db");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;SL61;ALGCM;DT%s;IV%s;AD%s;TG5bc94fbc3221a5db;]",
	                          g[0].ct, g[0].iv, ga),
	                 KH_OK);
	assert_int_equal(KH_CALLF(x, &p,
	                          "[AOGPSD;SL61;ALGCM;DT%s;IV%s;AD%s;TG5bc94fbc3221a5db;TL8;]",
	                          g[0].ct, g[0].iv, ga),
	                 KH_OK);
	assert_int_equal(KH_CALLF(x, &p,
	                          "[AOGPSD;SL61;ALGCM;DT%s;IV%s;AD%s;TG5bc94fbc3221a5db;TL16;]",
	                          g[0].ct, g[0].iv, ga),
	                 KH_ERR_BAD_FIELD);
}

static void test_aes_refusals(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	static const char iv[] = "000102030405060708090a0b0c0d0e0f";
	kh_test_session(&p, KH_PORT_PROD);
	assert_int_equal(
	    KH_CALL(x, &p, "[AOGPKA;CLsecret;KTAES;KV2b7e151628aed2a6abf7158809cf4f3c;SL70;CZED;]"),
	    KH_OK);
	assert_int_equal(
	    KH_CALL(x, &p, "[AOGPKA;CLsecret;KTAES;KV2b7e151628aed2a6abf7158809cf4f3c;SL71;CZE;]"),
	    KH_OK);

	/* usage and type */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;SL71;ALCBC;IV%s;DT%s;]", iv, sp_pt),
	                 KH_ERR_KEY_USAGE);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL70;PDOAEP;DT00;]"), KH_ERR_KEY_USAGE);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;ALCBC;IV%s;DT00;]", iv), KH_ERR_MISSING_FIELD);
	/* modes */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL70;ALOFB;IV%s;DT%s;]", iv, sp_pt),
	                 KH_ERR_BAD_FIELD);
	assert_non_null(strstr(x->out, "AL ("));
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL70;DT%s;]", sp_pt), KH_ERR_MISSING_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL70;ALCBC;PDOAEP;IV%s;DT%s;]", iv, sp_pt),
	                 KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL70;PDNONE;DT00;]"), KH_ERR_BAD_FIELD);
	/* IVs */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL70;ALCBC;DT%s;]", sp_pt), KH_ERR_MISSING_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL70;ALCBC;IV0001020304050607;DT%s;]", sp_pt),
	                 KH_ERR_BAD_FIELD);
	assert_non_null(strstr(x->out, "IV (16 bytes"));
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL70;ALCTR;IV%s00;DT%s;]", iv, sp_pt),
	                 KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL70;ALECB;IV%s;DT%s;]", iv, sp_pt),
	                 KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL70;ALGCM;IV;DT%s;]", sp_pt), KH_ERR_BAD_FIELD);
	/* IVs of 1-512 bytes: up to 128 through OpenSSL, longer through the
	 * GHASH path (checked against Wycheproof's long-IV vectors) */
	char big[2 * 513 + 1];
	memset(big, 'A', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL70;ALGCM;IV%s;DT%s;]", big, sp_pt),
	                 KH_ERR_BAD_FIELD);
	big[2 * 512] = '\0';
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL70;ALGCM;IV%s;DT%s;]", big, sp_pt), KH_OK);
	char *tg = kh_test_fx_field(x, "TG"), *lct = kh_test_fx_field(x, "DT");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;SL70;ALGCM;IV%s;TG%s;DT%s;]", big, tg, lct), KH_OK);
	assert_int_equal(strcasecmp(kh_test_field(x->out, "DT"), sp_pt), 0);
	tg[0] = tg[0] == '0' ? '1' : '0';
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;SL70;ALGCM;IV%s;TG%s;DT%s;]", big, tg, lct),
	                 KH_ERR_DECRYPT_FAILED);
	free(tg);
	free(lct);
	big[2 * 128] = '\0';
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL70;ALGCM;IV%s;DT%s;]", big, sp_pt), KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL70;ALCBC;IV%s;DTXY;]", iv), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL70;ALCBC;IV%s;DT123;]", iv), KH_ERR_BAD_FIELD);
	/* whole blocks for ECB and CBC (and for CBCP decryption) */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL70;ALCBC;IV%s;DT%.62s;]", iv, sp_pt),
	                 KH_ERR_BAD_FIELD);
	assert_non_null(strstr(x->out, "whole 16-byte blocks"));
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL70;ALECB;DT%.34s;]", sp_pt), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;SL70;ALCBCP;IV%s;DT%.62s;]", iv, sp_pt),
	                 KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL70;ALCTR;IV%s;DT%.62s;]", iv, sp_pt), KH_OK);
	/* GCM's fields elsewhere, GCM's own limits */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL70;ALCBC;IV%s;DT%s;AD00;]", iv, sp_pt),
	                 KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;SL70;ALCTR;IV%s;DT%s;TG00000000;]", iv, sp_pt),
	                 KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL70;ALGCM;DT%s;TL3;]", sp_pt), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL70;ALGCM;DT%s;TL17;]", sp_pt),
	                 KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;SL70;ALGCM;DT%s;TG00000000;]", sp_pt),
	                 KH_ERR_MISSING_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;SL70;ALGCM;IV%s;DT%s;]", iv, sp_pt),
	                 KH_ERR_MISSING_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;SL70;ALGCM;IV%s;DT%s;TG000000;]", iv, sp_pt),
	                 KH_ERR_BAD_FIELD);
	/* a CBC block whose last byte is 00 is not PKCS#7: the bare answer */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL70;ALCBC;IV%s;DT%032d;]", iv, 0), KH_OK);
	char *ct = kh_test_fx_field(x, "DT");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;SL70;ALCBCP;IV%s;DT%s;]", iv, ct),
	                 KH_ERR_DECRYPT_FAILED);
	assert_bare_error(x, KH_ERR_DECRYPT_FAILED);
	free(ct);
}

/* ---- MACs and digests ----------------------------------------------------- */

static void test_cmac(void **state)
{
	static const struct {
		size_t len;
		const char *mac;
	} v[] = {
	    /* RFC 4493 section 4, AES-128 */
	    {0, "bb1d6929e95937287fa37d129b756746"},
	    {16, "070a16b46b4d4144f79bdd9dd04a287c"},
	    {40, "dfa66747de9ae63030ca32611497c827"},
	    {64, "51f0bebf7e3b9d92fc49741779363cfe"},
	};
	struct kh_test_fx *x = *state;
	struct kh_session p;
	kh_test_session(&p, KH_PORT_PROD);
	assert_int_equal(
	    KH_CALL(x, &p, "[AOGPKA;CLsecret;KTAES;KV2b7e151628aed2a6abf7158809cf4f3c;SL80;CZGV;]"),
	    KH_OK);
	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		assert_int_equal(
		    KH_CALLF(x, &p, "[AOGPMC;SL80;DT%.*s;]", (int)(2 * v[i].len), sp_pt), KH_OK);
		assert_string_equal(kh_test_field(x->out, "BB"), "Y");
		assert_field(x, "MC", v[i].mac);
		assert_int_equal(KH_CALLF(x, &p, "[AOGPMC;SL80;DT%.*s;MC%s;]", (int)(2 * v[i].len),
		                          sp_pt, v[i].mac),
		                 KH_OK);
		assert_string_equal(kh_test_field(x->out, "MC"), "");
	}
	/* truncation, and a verified MAC must have exactly ML bytes */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPMC;SL80;DT%s;ML8;]", sp_pt), KH_OK);
	assert_field(x, "MC", "51f0bebf7e3b9d92");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPMC;SL80;DT%s;ML8;MC51f0bebf7e3b9d92;]", sp_pt),
	                 KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPMC;SL80;DT%s;MC51f0bebf7e3b9d92;]", sp_pt),
	                 KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPMC;SL80;DT%s;ML8;MC51f0bebf7e3b9d93;]", sp_pt),
	                 KH_ERR_VERIFY_FAILED);
	assert_int_equal(
	    KH_CALLF(x, &p, "[AOGPMC;SL80;DT%s;MC51f0bebf7e3b9d92fc49741779363cff;]", sp_pt),
	    KH_ERR_VERIFY_FAILED);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPMC;SL80;DT%s;ML17;]", sp_pt), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPMC;SL80;DT%s;ML0;]", sp_pt), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPMC;SL80;]"), KH_ERR_MISSING_FIELD);
	/* usage: G to make, V to verify; AES keys only */
	assert_int_equal(
	    KH_CALL(x, &p, "[AOGPKA;CLsecret;KTAES;KV2b7e151628aed2a6abf7158809cf4f3c;SL81;CZG;]"),
	    KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPMC;SL81;DT;]"), KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPMC;SL81;DT;MCbb1d6929e95937287fa37d129b756746;]"),
	                 KH_ERR_KEY_USAGE);
	assert_int_equal(
	    KH_CALL(x, &p, "[AOGPKA;CLsecret;KTAES;KV2b7e151628aed2a6abf7158809cf4f3c;SL82;CZED;]"),
	    KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPMC;SL82;DT;]"), KH_ERR_KEY_USAGE);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKA;CLsecret;KTGENERIC;KV0b0b0b0b;SL83;CZGV;]"),
	                 KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPMC;SL83;DT;]"), KH_ERR_KEY_USAGE);
	assert_int_equal(KH_CALLF(x, &p, "[AOHMAC;SL80;DT;]"), KH_ERR_KEY_USAGE);
	/* AES-256 CMAC, checked against OpenSSL's EVP_MAC */
	static const uint8_t k256[32] = {0x60, 0x3d, 0xeb, 0x10, 0x15, 0xca, 0x71, 0xbe,
	                                 0x2b, 0x73, 0xae, 0xf0, 0x85, 0x7d, 0x77, 0x81,
	                                 0x1f, 0x35, 0x2c, 0x07, 0x3b, 0x61, 0x08, 0xd7,
	                                 0x2d, 0x98, 0x10, 0xa3, 0x09, 0x14, 0xdf, 0xf4};
	uint8_t msg[3] = {'a', 'b', 'c'}, mac[16];
	size_t n = 0;
	char kh[65], mh[33];
	assert_non_null(EVP_Q_mac(NULL, "CMAC", NULL, "AES-256-CBC", NULL, k256, sizeof(k256), msg,
	                          sizeof(msg), mac, sizeof(mac), &n));
	kh_hex_encode(k256, sizeof(k256), kh);
	kh_hex_encode(mac, n, mh);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKA;CLsecret;KTAES;KV%s;SL84;CZGV;]", kh), KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPMC;SL84;DT616263;]"), KH_OK);
	assert_field(x, "MC", mh);
}

static void test_hmac(void **state)
{
	static const struct {
		const char *ha, *key, *data, *mac;
	} v[] = {
	    /* RFC 4231 test cases 1, 2 and 5 (truncated to 128 bits: ML16) */
	    {"SHA-224", "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b", "4869205468657265",
	     "896fb1128abbdf196832107cd49df33f47b4b1169912ba4f53684b22"},
	    {NULL, "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b", "4869205468657265",
	     "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"},
	    {"SHA-384", "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b", "4869205468657265",
	     "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59c"
	     "faea9ea9076ede7f4af152e8b2fa9cb6"},
	    {"SHA-512", "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b", "4869205468657265",
	     "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde"
	     "daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854"},
	    {"SHA-256", "4a656665", "7768617420646f2079612077616e7420666f72206e6f7468696e673f",
	     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"},
	    {"SHA-256", "0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c",
	     "546573742057697468205472756e636174696f6e", "a3b6167473100ee06e0c796c2955552b"},
	};
	struct kh_test_fx *x = *state;
	struct kh_session p;
	char ha[16];
	kh_test_session(&p, KH_PORT_PROD);
	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		size_t ml = strlen(v[i].mac) / 2;
		snprintf(ha, sizeof(ha), "%s%s%s", v[i].ha ? "HA" : "", v[i].ha ? v[i].ha : "",
		         v[i].ha ? ";" : "");
		assert_int_equal(
		    KH_CALLF(x, &p, "[AOGPKA;CLsecret;KTGENERIC;KV%s;SL90;CZGV;RPY;]", v[i].key),
		    KH_OK);
		assert_int_equal(KH_CALLF(x, &p, "[AOHMAC;SL90;%sDT%s;ML%zu;]", ha, v[i].data, ml),
		                 KH_OK);
		assert_string_equal(kh_test_field(x->out, "BB"), "Y");
		assert_field(x, "MC", v[i].mac);
		assert_int_equal(KH_CALLF(x, &p, "[AOHMAC;SL90;%sDT%s;ML%zu;MC%s;]", ha, v[i].data,
		                          ml, v[i].mac),
		                 KH_OK);
	}
	/* the default length is the hash's */
	assert_int_equal(KH_CALLF(x, &p, "[AOHMAC;SL90;DT%s;]", v[5].data), KH_OK);
	assert_int_equal(strlen(kh_test_field(x->out, "MC")), 64);
	assert_int_equal(KH_CALLF(x, &p, "[AOHMAC;SL90;DT%s;MC%s;]", v[5].data, v[5].mac),
	                 KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p,
	                          "[AOHMAC;SL90;DT%s;ML16;MCa3b6167473100ee06e0c796c2955552c;]",
	                          v[5].data),
	                 KH_ERR_VERIFY_FAILED);
	assert_int_equal(KH_CALLF(x, &p, "[AOHMAC;SL90;DT00;ML33;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOHMAC;SL90;DT00;HASHA-512;ML64;]"), KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOHMAC;SL90;DT00;HAMD5;]"), KH_ERR_BAD_FIELD);
	/* SHA-1 and SHA-3, against OpenSSL's EVP_MAC */
	static const char *const names[][2] = {
	    {"SHA-1", "SHA1"}, {"SHA3-256", "SHA3-256"}, {"SHA3-512", "SHA3-512"}};
	static const uint8_t key[4] = {'J', 'e', 'f', 'e'}, msg[3] = {'a', 'b', 'c'};
	for (size_t i = 0; i < 3; i++) {
		uint8_t mac[64];
		char mh[129];
		size_t n = 0;
		assert_non_null(EVP_Q_mac(NULL, "HMAC", NULL, names[i][1], NULL, key, sizeof(key),
		                          msg, sizeof(msg), mac, sizeof(mac), &n));
		kh_hex_encode(mac, n, mh);
		assert_int_equal(
		    KH_CALLF(x, &p, "[AOGPKA;CLsecret;KTGENERIC;KV4a656665;SL91;RPY;]"), KH_OK);
		assert_int_equal(KH_CALLF(x, &p, "[AOHMAC;SL91;HA%s;DT616263;]", names[i][0]),
		                 KH_OK);
		assert_field(x, "MC", mh);
	}
	/* usage G to make, V to verify */
	assert_int_equal(KH_CALL(x, &p, "[AOGPKA;CLsecret;KTGENERIC;KV4a656665;SL92;CZV;]"), KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOHMAC;SL92;DT00;]"), KH_ERR_KEY_USAGE);
	assert_int_equal(KH_CALLF(x, &p, "[AOHMAC;SL92;DT%s;MC%s;]", v[4].data, v[4].mac), KH_OK);
}

static void test_ghsh(void **state)
{
	static const struct {
		const char *ha, *hs;
	} v[] = {
	    /* FIPS 180-4 and FIPS 202 examples: "abc" */
	    {"SHA-1", "a9993e364706816aba3e25717850c26c9cd0d89d"},
	    {"SHA-224", "23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7"},
	    {"SHA-256", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
	    {"SHA-384", "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed"
	                "8086072ba1e7cc2358baeca134c825a7"},
	    {"SHA-512", "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
	                "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"},
	    {"SHA3-224", "e642824c3f8cf24ad09234ee7d3c766fc9a3a5168d0c94ad73b46fdf"},
	    {"SHA3-256", "3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532"},
	    {"SHA3-384", "ec01498288516fc926459f58e2c6ad8df9b473cb0fc08c2596da7cf0e49be4b2"
	                 "98d88cea927ac7f539f1edf228376d25"},
	    {"SHA3-512", "b751850b1a57168a5693cd924b6b096e08f621827444f70d884f5d0240d2712e"
	                 "10e116e9192af3c91a7ec57647e3934057340b4cf408d5a56592f8274eec53f0"},
	};
	struct kh_test_fx *x = *state;
	struct kh_session p;
	kh_test_session(&p, KH_PORT_PROD);
	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		assert_int_equal(KH_CALLF(x, &p, "[AOGHSH;HA%s;DT616263;]", v[i].ha), KH_OK);
		assert_string_equal(kh_test_field(x->out, "BB"), "Y");
		assert_field(x, "HS", v[i].hs);
	}
	assert_int_equal(KH_CALL(x, &p, "[AOGHSH;DT616263;]"), KH_OK);
	assert_field(x, "HS", v[2].hs);
	assert_int_equal(KH_CALL(x, &p, "[AOGHSH;DT;]"), KH_OK);
	assert_field(x, "HS", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
	assert_int_equal(KH_CALL(x, &p, "[AOGHSH;HASHA-257;DT00;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGHSH;DT0;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGHSH;]"), KH_ERR_MISSING_FIELD);
	/* no keys permission needed */
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNAnonymous;PM;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGHSH;DT00;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGPMC;SL1;DT00;]"), KH_ERR_PERMISSION_DENIED);
}

/* ---- RSA ------------------------------------------------------------------ */

static void import_rsa(struct kh_test_fx *x, struct kh_session *p, unsigned slot, const char *cz)
{
	assert_int_equal(
	    KH_CALLF(x, p, "[AOGPKA;CLprivate;KTRSA;KV%s;CZ%s;SL%u;]", rsa_priv_hex, cz, slot),
	    KH_OK);
}

static void set_tp_perms(struct kh_test_fx *x, const char *perms)
{
	assert_int_equal(
	    KH_CALLF(x, &x->admin, "[AORLMD;RNAnonymous;PMkeys,keys.all_slots%s;]", perms), KH_OK);
}

/* OpenSSL's RSA operation on in (pad, OAEP with SHA-256 and label). */
static size_t ossl_rsa(bool dec, int pad, const char *label, const uint8_t *in, size_t n,
                       uint8_t out[256])
{
	EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new_from_pkey(NULL, rsa, NULL);
	size_t len = 256;
	assert_non_null(pc);
	assert_int_equal(dec ? EVP_PKEY_decrypt_init(pc) : EVP_PKEY_encrypt_init(pc), 1);
	assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(pc, pad), 1);
	if (label != NULL) {
		assert_int_equal(EVP_PKEY_CTX_set_rsa_oaep_md(pc, EVP_sha256()), 1);
		char *l = OPENSSL_strdup(label);
		assert_int_equal(EVP_PKEY_CTX_set0_rsa_oaep_label(pc, l, (int)strlen(l)), 1);
	}
	int r =
	    dec ? EVP_PKEY_decrypt(pc, out, &len, in, n) : EVP_PKEY_encrypt(pc, out, &len, in, n);
	assert_int_equal(r, 1);
	EVP_PKEY_CTX_free(pc);
	return len;
}

static void test_rsa_oaep(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	uint8_t ct[256], pt[256];
	char ch[513];
	kh_test_session(&p, KH_PORT_PROD);
	import_rsa(x, &p, 100, "DEGV");

	/* round trip with the defaults, and with other hashes */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL100;PDOAEP;DT48656C6C6F;]"), KH_OK);
	char *c1 = kh_test_fx_field(x, "DT");
	assert_int_equal(strlen(c1), 512);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;SL100;PDOAEP;DT%s;]", c1), KH_OK);
	assert_field(x, "DT", "48656C6C6F");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;SL100;PDOAEP;HASHA-1;DT%s;]", c1),
	                 KH_ERR_DECRYPT_FAILED);
	assert_bare_error(x, KH_ERR_DECRYPT_FAILED);
	free(c1);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL100;PDOAEP;HASHA-512;MGSHA-1;OL6C;DT00;]"),
	                 KH_OK);
	c1 = kh_test_fx_field(x, "DT");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;SL100;PDOAEP;HASHA-512;MGSHA-1;OL6C;DT%s;]", c1),
	                 KH_OK);
	assert_field(x, "DT", "00");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;SL100;PDOAEP;HASHA-512;DT%s;OL6C;]", c1),
	                 KH_ERR_DECRYPT_FAILED);
	free(c1);
	/* a ciphertext OpenSSL made with a label, and the other way round */
	size_t n =
	    ossl_rsa(false, RSA_PKCS1_OAEP_PADDING, "label", (const uint8_t *)"secret", 6, ct);
	kh_hex_encode(ct, n, ch);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;SL100;PDOAEP;OL6C6162656C;DT%s;]", ch), KH_OK);
	assert_field(x, "DT", "736563726574");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;SL100;PDOAEP;OL6C6162656D;DT%s;]", ch),
	                 KH_ERR_DECRYPT_FAILED);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;SL100;PDOAEP;DT%s;]", ch), KH_ERR_DECRYPT_FAILED);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL100;PDOAEP;OL6C6162656C;DT736563726574;]"),
	                 KH_OK);
	n = kh_test_unhex(kh_test_field(x->out, "DT"), ct, sizeof(ct));
	assert_int_equal(ossl_rsa(true, RSA_PKCS1_OAEP_PADDING, "label", ct, n, pt), 6);
	assert_memory_equal(pt, "secret", 6);
	/* the longest message: 256 - 2 * 32 - 2 bytes */
	char longest[2 * 190 + 1];
	memset(longest, '4', sizeof(longest) - 1);
	longest[sizeof(longest) - 1] = '\0';
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL100;PDOAEP;DT%s;]", longest), KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL100;PDOAEP;DT%s44;]", longest),
	                 KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL100;PDOAEP;HAMD5;DT00;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL100;PDOAEP;OLXX;DT00;]"), KH_ERR_BAD_FIELD);
	/* garbage of every shape: one answer */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;SL100;PDOAEP;DT00;]"), KH_ERR_DECRYPT_FAILED);
	assert_bare_error(x, KH_ERR_DECRYPT_FAILED);
	memset(ch, 'F', 512);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;SL100;PDOAEP;DT%s;]", ch), KH_ERR_DECRYPT_FAILED);
	assert_bare_error(x, KH_ERR_DECRYPT_FAILED);

	/* usage: an E-only key encrypts but does not decrypt; a key without E
	 * does not encrypt; AES modes need an AES key */
	import_rsa(x, &p, 101, "E");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL101;PDOAEP;DT00;]"), KH_OK);
	c1 = kh_test_fx_field(x, "DT");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;SL101;PDOAEP;DT%s;]", c1), KH_ERR_KEY_USAGE);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;SL100;PDOAEP;DT%s;]", c1), KH_OK);
	free(c1);
	import_rsa(x, &p, 102, "DG");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL102;PDOAEP;DT00;]"), KH_ERR_KEY_USAGE);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL100;ALECB;DT%032d;]", 0), KH_ERR_KEY_USAGE);
	/* a public key encrypts (importing it needs keys.import_pki) */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKA;CLpublic;KTRSA;KV%s;CZE;SL103;]", rsa_pub_hex),
	                 KH_ERR_PERMISSION_DENIED);
	set_tp_perms(x, ",keys.import_pki");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKA;CLpublic;KTRSA;KV%s;CZE;SL103;]", rsa_pub_hex),
	                 KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL103;PDOAEP;DT0102;]"), KH_OK);
	c1 = kh_test_fx_field(x, "DT");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;SL100;PDOAEP;DT%s;]", c1), KH_OK);
	assert_field(x, "DT", "0102");
	free(c1);
}

static void test_rsa_pkcs1(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	uint8_t ct[256], pt[256];
	kh_test_session(&p, KH_PORT_PROD);
	import_rsa(x, &p, 110, "DE");

	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL110;PDPKCS1;DT0102030405;]"), KH_OK);
	char *c1 = kh_test_fx_field(x, "DT");
	size_t n = kh_test_unhex(c1, ct, sizeof(ct));
	assert_int_equal(ossl_rsa(true, RSA_PKCS1_PADDING, NULL, ct, n, pt), 5);
	assert_memory_equal(pt, "\x01\x02\x03\x04\x05", 5);
	/* decryption is an oracle: keys.pkcs1_decrypt */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;SL110;PDPKCS1;DT%s;]", c1),
	                 KH_ERR_PERMISSION_DENIED);
	assert_non_null(strstr(x->out, "keys.pkcs1_decrypt"));
	set_tp_perms(x, ",keys.pkcs1_decrypt");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;SL110;PDPKCS1;DT%s;]", c1), KH_OK);
	assert_field(x, "DT", "0102030405");
	/* a ciphertext OpenSSL made */
	n = ossl_rsa(false, RSA_PKCS1_PADDING, NULL, (const uint8_t *)"abc", 3, ct);
	char ch[513];
	kh_hex_encode(ct, n, ch);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;SL110;PDPKCS1;DT%s;]", ch), KH_OK);
	assert_field(x, "DT", "616263");
	/* bad ciphertexts: a flipped bit, OAEP's, zeros, short, too long: all
	 * the same bare answer */
	char *bad[5];
	c1[100] = c1[100] == '0' ? '1' : '0';
	bad[0] = strdup(c1);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL110;PDOAEP;DT0102;]"), KH_OK);
	bad[1] = kh_test_fx_field(x, "DT");
	bad[2] = calloc(513, 1);
	memset(bad[2], '0', 512);
	bad[3] = strdup("0102");
	bad[4] = calloc(515, 1);
	memset(bad[4], '1', 514);
	for (size_t i = 0; i < 5; i++) {
		assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;SL110;PDPKCS1;DT%s;]", bad[i]),
		                 KH_ERR_DECRYPT_FAILED);
		assert_bare_error(x, KH_ERR_DECRYPT_FAILED);
		/* nothing left for the connection's TLS calls to trip on */
		assert_int_equal(ERR_peek_error(), 0);
		free(bad[i]);
	}
	/* the longest message: 256 - 11 bytes */
	char longest[2 * 245 + 1];
	memset(longest, '4', sizeof(longest) - 1);
	longest[sizeof(longest) - 1] = '\0';
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL110;PDPKCS1;DT%s;]", longest), KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL110;PDPKCS1;DT%s00;]", longest),
	                 KH_ERR_BAD_FIELD);
	free(c1);
}

static void test_gpsr(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	uint8_t sig[256];
	char h[513];
	kh_test_session(&p, KH_PORT_PROD);
	import_rsa(x, &p, 120, "EDGV");
	import_rsa(x, &p, 121, "GV");

	/* S and V: PKCS#1 type 1 of the data itself, as OpenSSL's sign without
	 * a digest */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSR;SL121;OPS;DT0A0B0C;]"), KH_OK);
	char *s1 = kh_test_fx_field(x, "DT");
	EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new_from_pkey(NULL, rsa, NULL);
	size_t n = sizeof(sig);
	assert_int_equal(EVP_PKEY_sign_init(pc), 1);
	assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PADDING), 1);
	assert_int_equal(EVP_PKEY_sign(pc, sig, &n, (const uint8_t *)"\x0a\x0b\x0c", 3), 1);
	EVP_PKEY_CTX_free(pc);
	kh_hex_encode(sig, n, h);
	assert_string_equal(s1, h);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSR;SL121;OPV;PDPKCS1;DT%s;]", s1), KH_OK);
	assert_field(x, "DT", "0A0B0C");
	s1[10] = s1[10] == '0' ? '1' : '0';
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSR;SL121;OPV;DT%s;]", s1), KH_ERR_VERIFY_FAILED);
	assert_bare_error(x, KH_ERR_VERIFY_FAILED);
	free(s1);
	/* E and D (D needs keys.pkcs1_decrypt) */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSR;SL120;OPE;DT0102;]"), KH_OK);
	char *c1 = kh_test_fx_field(x, "DT");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSR;SL120;OPD;DT%s;]", c1), KH_ERR_PERMISSION_DENIED);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSR;SL121;OPE;DT0102;]"), KH_ERR_KEY_USAGE);
	/* raw: S with NONE is an oracle too, E and V with NONE are not */
	memset(h, '0', 512);
	h[511] = '7';
	h[512] = '\0';
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSR;SL121;OPS;PDNONE;DT%s;]", h),
	                 KH_ERR_PERMISSION_DENIED);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSR;SL120;OPE;PDNONE;DT%s;]", h), KH_OK);
	char *r1 = kh_test_fx_field(x, "DT");
	set_tp_perms(x, ",keys.pkcs1_decrypt");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSR;SL120;OPD;DT%s;]", c1), KH_OK);
	assert_field(x, "DT", "0102");
	c1[4] = c1[4] == '0' ? '1' : '0';
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSR;SL120;OPD;DT%s;]", c1), KH_ERR_DECRYPT_FAILED);
	assert_bare_error(x, KH_ERR_DECRYPT_FAILED);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSR;SL121;OPD;DT%s;]", c1), KH_ERR_KEY_USAGE);
	/* raw private of the raw public is the value again, and the other way */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSR;SL120;OPD;PDNONE;DT%s;]", r1), KH_OK);
	assert_field(x, "DT", h);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSR;SL121;OPS;PDNONE;DT%s;]", h), KH_OK);
	char *r2 = kh_test_fx_field(x, "DT");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSR;SL121;OPV;PDNONE;DT%s;]", r2), KH_OK);
	assert_field(x, "DT", h);
	free(r1);
	free(r2);
	free(c1);
	/* raw input is exactly the modulus length and under the modulus */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSR;SL120;OPE;PDNONE;DT0102;]"), KH_ERR_BAD_FIELD);
	memset(h, 'F', 512);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSR;SL120;OPE;PDNONE;DT%s;]", h), KH_ERR_BAD_FIELD);
	assert_non_null(strstr(x->out, "less than the modulus"));
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSR;SL120;OPD;PDNONE;DT%s;]", h), KH_ERR_BAD_FIELD);
	/* fields */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSR;SL120;DT00;]"), KH_ERR_MISSING_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSR;SL120;OPX;DT00;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSR;SL120;OPE;PDOAEP;DT00;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSR;SL120;OPE;]"), KH_ERR_MISSING_FIELD);
	memset(h, '1', 2 * 246);
	h[2 * 246] = '\0';
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSR;SL120;OPS;DT%s;]", h), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSR;SL120;OPS;DT%s;]", h + 2), KH_OK);
	/* an AES key is no RSA key */
	assert_int_equal(
	    KH_CALL(x, &p, "[AOGPKA;CLsecret;KTAES;KV2b7e151628aed2a6abf7158809cf4f3c;SL122;CZE;]"),
	    KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSR;SL122;OPE;DT00;]"), KH_ERR_KEY_USAGE);
}

/* FIPS mode: ECB for data, PKCS#1 v1.5 decryption and raw private RSA are
 * refused; everything else goes on. Keys are imported before (clear import
 * is refused in FIPS mode). */
static void test_fips(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	static const char iv[] = "000102030405060708090a0b0c0d0e0f";
	kh_test_session(&p, KH_PORT_PROD);
	import_rsa(x, &p, 130, "EDGV");
	assert_int_equal(
	    KH_CALL(x, &p,
	            "[AOGPKA;CLsecret;KTAES;KV2b7e151628aed2a6abf7158809cf4f3c;SL131;CZED;]"),
	    KH_OK);
	set_tp_perms(x, ",keys.pkcs1_decrypt");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL130;PDPKCS1;DT00;]"), KH_OK);
	char *c1 = kh_test_fx_field(x, "DT");
	assert_int_equal(KH_CALL(x, &x->admin, "[AOSETS;FIY;]"), KH_OK);

	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL131;ALECB;DT%s;]", sp_pt), KH_ERR_FIPS);
	assert_non_null(strstr(x->out, "ECB"));
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;SL131;ALECB;DT%s;]", sp_pt), KH_ERR_FIPS);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL131;ALCBC;IV%s;DT%s;]", iv, sp_pt), KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;SL130;PDPKCS1;DT%s;]", c1), KH_ERR_FIPS);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSR;SL130;OPD;DT%s;]", c1), KH_ERR_FIPS);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSR;SL130;OPS;PDNONE;DT%s;]", c1), KH_ERR_FIPS);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSR;SL130;OPS;DT00;]"), KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;SL130;PDOAEP;DT00;]"), KH_OK);
	char *c2 = kh_test_fx_field(x, "DT");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;SL130;PDOAEP;DT%s;]", c2), KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOGHSH;HASHA-1;DT00;]"), KH_OK);
	free(c1);
	free(c2);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    KH_FX_TEST(test_aes_round_trips, kh_test_fx_setup_pmk),
	    KH_FX_TEST(test_aes_known_answers, kh_test_fx_setup_pmk),
	    KH_FX_TEST(test_aes_refusals, kh_test_fx_setup_pmk),
	    KH_FX_TEST(test_cmac, kh_test_fx_setup_pmk),
	    KH_FX_TEST(test_hmac, kh_test_fx_setup_pmk),
	    KH_FX_TEST(test_ghsh, kh_test_fx_setup_pmk),
	    KH_FX_TEST(test_rsa_oaep, kh_test_fx_setup_pmk),
	    KH_FX_TEST(test_rsa_pkcs1, kh_test_fx_setup_pmk),
	    KH_FX_TEST(test_gpsr, kh_test_fx_setup_pmk),
	    KH_FX_TEST(test_fips, kh_test_fx_setup_pmk),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}

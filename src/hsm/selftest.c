/*
 * Known-answer self-tests: published vectors (FIPS 197, SP 800-38A/B, the
 * GCM specification, FIPS 180-4 and 202, RFCs 3394, 4231, 5649, 6979 and
 * 8032, the CAVP ECDH vectors) pushed through the same EVP calls the HSM
 * uses and compared byte for byte. Must never report a pass for a test that
 * did not reach its comparison. The vectors are public test data, not
 * secrets; outputs are wiped anyway, out of habit.
 */
#include "hsm/selftest.h"
#include "common/kh_log.h"
#include "common/kh_mem.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>

#define VEC_MAX 256      /* largest decoded vector but the RSA key: an RSA-2048 signature */
#define RSA_DER_MAX 1300 /* the RSA-2048 test key's DER is 1190 bytes */

/* A vector decoded from the hex it is written in (as the source prints it). */
struct vec {
	size_t n;
	uint8_t b[VEC_MAX];
};

/* The vectors are constants, so a decoding failure is a bug in this file;
 * it makes the test fail rather than pass on a half-filled buffer. */
KH_MUST_CHECK static bool vec(struct vec *v, const char *hex)
{
	int n = kh_hex_decode(hex, strlen(hex), v->b, sizeof(v->b));
	v->n = n < 0 ? 0 : (size_t)n;
	return n >= 0;
}

/*
 * A forced failure flips one bit of an actual output just before it is
 * checked, so the fault goes through the same comparison a real one would
 * and the test proves the comparison can say no.
 */
static void taint(bool fault, uint8_t *p, size_t n)
{
	if (fault && n > 0)
		p[n - 1] ^= 0x01;
}

KH_MUST_CHECK static bool same(bool fault, uint8_t *got, size_t n, const struct vec *want)
{
	taint(fault, got, n);
	return n == want->n && CRYPTO_memcmp(got, want->b, n) == 0;
}

/* ---- symmetric ----------------------------------------------------------- */

/*
 * The whole input through one cipher in one update: enc 1 encrypts, 0
 * decrypts. Block modes run unpadded (the vectors are whole blocks); key
 * wrap must see its whole input at once and uses the default IV when iv is
 * NULL. out must hold in->n + 16 bytes.
 */
KH_MUST_CHECK static bool cipher(const char *alg, int enc, const struct vec *key,
                                 const struct vec *iv, const struct vec *in, uint8_t *out,
                                 size_t outmax, size_t *outlen)
{
	EVP_CIPHER *c = EVP_CIPHER_fetch(NULL, alg, NULL);
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	int l1 = 0, l2 = 0;
	bool ok = false;

	*outlen = 0;
	if (c == NULL || ctx == NULL || in->n + 16 > outmax)
		goto out;
	if ((size_t)EVP_CIPHER_get_key_length(c) != key->n ||
	    (iv != NULL && (size_t)EVP_CIPHER_get_iv_length(c) != iv->n))
		goto out;
	EVP_CIPHER_CTX_set_flags(ctx, EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
	if (EVP_CipherInit_ex2(ctx, c, key->b, iv ? iv->b : NULL, enc, NULL) != 1)
		goto out;
	if (EVP_CIPHER_get_mode(c) != EVP_CIPH_WRAP_MODE && EVP_CIPHER_CTX_set_padding(ctx, 0) != 1)
		goto out;
	if (EVP_CipherUpdate(ctx, out, &l1, in->b, (int)in->n) != 1 ||
	    EVP_CipherFinal_ex(ctx, out + l1, &l2) != 1)
		goto out;
	*outlen = (size_t)l1 + (size_t)l2;
	ok = true;
out:
	EVP_CIPHER_CTX_free(ctx);
	EVP_CIPHER_free(c);
	return ok;
}

/* Encrypt pt and expect ct, then decrypt ct and expect pt: decryption has
 * its own key schedule and code path, so it needs its own answer. */
KH_MUST_CHECK static bool cipher_kat(bool fault, const char *alg, const char *key, const char *iv,
                                     const char *pt, const char *ct)
{
	struct vec k, i, p, c;
	uint8_t out[VEC_MAX + 16];
	size_t n = 0;
	bool ok;

	ok = vec(&k, key) && (iv == NULL || vec(&i, iv)) && vec(&p, pt) && vec(&c, ct) &&
	     cipher(alg, 1, &k, iv ? &i : NULL, &p, out, sizeof(out), &n) &&
	     same(fault, out, n, &c) &&
	     cipher(alg, 0, &k, iv ? &i : NULL, &c, out, sizeof(out), &n) &&
	     same(false, out, n, &p);
	kh_wipe(&k, sizeof(k));
	kh_wipe(out, sizeof(out));
	return ok;
}

/* Key unwrap is the integrity check of a wrapped key: one flipped bit of
 * the wrapped form must be refused, not unwrapped to something else. */
KH_MUST_CHECK static bool unwrap_refuses_tamper(const char *alg, const char *key, const char *ct)
{
	struct vec k, c;
	uint8_t out[VEC_MAX + 16];
	size_t n = 0;
	bool refused = false;

	if (vec(&k, key) && vec(&c, ct) && c.n > 0) {
		c.b[c.n / 2] ^= 0x80;
		refused = !cipher(alg, 0, &k, NULL, &c, out, sizeof(out), &n);
	}
	kh_wipe(&k, sizeof(k));
	kh_wipe(out, sizeof(out));
	return refused;
}

/* SP 800-38A's four-block plaintext and AES-256 key (F.2.5, F.5.5). */
#define SP800_38A_KEY256 "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4"
#define SP800_38A_PT                                                                               \
	"6bc1bee22e409f96e93d7e117393172a"                                                         \
	"ae2d8a571e03ac9c9eb76fac45af8e51"                                                         \
	"30c81c46a35ce411e5fbc1191a0a52ef"                                                         \
	"f69f2445df4f9b17ad2b417be66c3710"

/* FIPS 197 appendix C.1 (AES-128) and C.3 (AES-256). */
static int kat_aes_ecb(bool fault)
{
	if (!cipher_kat(fault, "AES-128-ECB", "000102030405060708090a0b0c0d0e0f", NULL,
	                "00112233445566778899aabbccddeeff", "69c4e0d86a7b0430d8cdb78070b4c55a") ||
	    !cipher_kat(fault, "AES-256-ECB",
	                "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f", NULL,
	                "00112233445566778899aabbccddeeff", "8ea2b7ca516745bfeafc49904b496089"))
		return KH_ERR_CRYPTO;
	return KH_OK;
}

/* SP 800-38A F.2.5 and F.2.6, CBC-AES256. */
static int kat_aes_cbc(bool fault)
{
	if (!cipher_kat(fault, "AES-256-CBC", SP800_38A_KEY256, "000102030405060708090a0b0c0d0e0f",
	                SP800_38A_PT,
	                "f58c4c04d6e5f1ba779eabfb5f7bfbd6"
	                "9cfc4e967edb808d679f777bc6702c7d"
	                "39f23369a9d9bacfa530e26304231461"
	                "b2eb05e2c39be9fcda6c19078c6a9d1b"))
		return KH_ERR_CRYPTO;
	return KH_OK;
}

/* SP 800-38A F.5.5 and F.5.6, CTR-AES256. The IV is the initial counter
 * block, and it carries out of its last byte on the first increment. */
static int kat_aes_ctr(bool fault)
{
	if (!cipher_kat(fault, "AES-256-CTR", SP800_38A_KEY256, "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff",
	                SP800_38A_PT,
	                "601ec313775789a5b7a7f504bbf3d228"
	                "f443e3ca4d62b59aca84e990cacaf5c5"
	                "2b0930daa23de94ce87017ba2d84988d"
	                "dfc9c58db67aada613c2dd08457941a6"))
		return KH_ERR_CRYPTO;
	return KH_OK;
}

/* One GCM pass. Encrypting, tag receives the tag; decrypting, tag is the
 * one to check, and a mismatch is a failure of the call. */
KH_MUST_CHECK static bool gcm(int enc, const struct vec *key, const struct vec *iv,
                              const struct vec *aad, const struct vec *in, uint8_t *out,
                              size_t *outlen, uint8_t tag[static 16])
{
	EVP_CIPHER *c = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	size_t ivlen = iv->n;
	OSSL_PARAM p[2] = {OSSL_PARAM_END, OSSL_PARAM_END};
	int l1 = 0, l2 = 0, la = 0;
	bool ok = false;

	*outlen = 0;
	if (c == NULL || ctx == NULL || key->n != 32)
		goto out;
	p[0] = OSSL_PARAM_construct_size_t(OSSL_CIPHER_PARAM_AEAD_IVLEN, &ivlen);
	if (EVP_CipherInit_ex2(ctx, c, key->b, iv->b, enc, p) != 1)
		goto out;
	if (!enc) {
		p[0] = OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, tag, 16);
		if (EVP_CIPHER_CTX_set_params(ctx, p) != 1)
			goto out;
	}
	if (EVP_CipherUpdate(ctx, NULL, &la, aad->b, (int)aad->n) != 1 ||
	    EVP_CipherUpdate(ctx, out, &l1, in->b, (int)in->n) != 1 ||
	    EVP_CipherFinal_ex(ctx, out + l1, &l2) != 1)
		goto out;
	if (enc) {
		p[0] = OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, tag, 16);
		if (EVP_CIPHER_CTX_get_params(ctx, p) != 1)
			goto out;
	}
	*outlen = (size_t)l1 + (size_t)l2;
	ok = true;
out:
	EVP_CIPHER_CTX_free(ctx);
	EVP_CIPHER_free(c);
	return ok;
}

/*
 * The GCM specification (McGrew and Viega), test case 16: AES-256 with
 * associated data and a 60-byte plaintext, so the last block is partial.
 * Then the way back, and the way back with a wrong tag, which must be
 * refused: an AEAD that does not check its tag passes every other test.
 */
static int kat_aes_gcm(bool fault)
{
	struct vec k, iv, aad, pt, ct, tag;
	uint8_t out[VEC_MAX], t[16];
	size_t n = 0;
	bool ok;

	ok = vec(&k, "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308") &&
	     vec(&iv, "cafebabefacedbaddecaf888") &&
	     vec(&aad, "feedfacedeadbeeffeedfacedeadbeefabaddad2") &&
	     vec(&pt, "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
	              "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39") &&
	     vec(&ct, "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
	              "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662") &&
	     vec(&tag, "76fc6ece0f4e1768cddf8853bb2d551b") && tag.n == 16 &&
	     gcm(1, &k, &iv, &aad, &pt, out, &n, t) && same(fault, out, n, &ct) &&
	     same(false, t, 16, &tag) && gcm(0, &k, &iv, &aad, &ct, out, &n, tag.b) &&
	     same(false, out, n, &pt);
	if (ok) {
		tag.b[0] ^= 0x01;
		ok = !gcm(0, &k, &iv, &aad, &ct, out, &n, tag.b);
	}
	kh_wipe(&k, sizeof(k));
	kh_wipe(out, sizeof(out));
	return ok ? KH_OK : KH_ERR_CRYPTO;
}

/* One MAC over msg: CMAC takes a cipher name as sub, HMAC a digest name. */
KH_MUST_CHECK static bool mac_kat(bool fault, const char *mac, const char *sub,
                                  const struct vec *key, const uint8_t *msg, size_t msglen,
                                  const char *want)
{
	struct vec w;
	uint8_t out[EVP_MAX_MD_SIZE];
	size_t n = 0;
	bool ok = vec(&w, want) &&
	          EVP_Q_mac(NULL, mac, NULL, sub, NULL, key->b, key->n, msg, msglen, out,
	                    sizeof(out), &n) != NULL &&
	          same(fault, out, n, &w);
	kh_wipe(out, sizeof(out));
	return ok;
}

/* SP 800-38B appendix D.3, CMAC-AES256 examples 2 (one whole block) and 4
 * (four blocks); with AES-256-CBC underneath as the MAC's cipher. */
static int kat_aes_cmac(bool fault)
{
	struct vec k, m;
	bool ok =
	    vec(&k, SP800_38A_KEY256) && vec(&m, SP800_38A_PT) &&
	    mac_kat(fault, "CMAC", "AES-256-CBC", &k, m.b, 16,
	            "28a7023f452e8f82bd4bf28d8c37c35c") &&
	    mac_kat(fault, "CMAC", "AES-256-CBC", &k, m.b, m.n, "e1992190549f6ed5696a2c056c315410");
	kh_wipe(&k, sizeof(k));
	return ok ? KH_OK : KH_ERR_CRYPTO;
}

/* RFC 3394 section 4.1 (128-bit key under a 128-bit KEK) and 4.6 (256-bit
 * key under a 256-bit KEK, the size the HSM wraps with), then tampering. */
static int kat_aes_kw(bool fault)
{
	static const char kek256[] =
	    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
	static const char ct256[] = "28c9f404c4b810f4cbccb35cfb87f8263f5786e2d80ed326"
	                            "cbc7f0e71a99f43bfb988b9b7a02dd21";

	if (!cipher_kat(fault, "AES-128-WRAP", "000102030405060708090a0b0c0d0e0f", NULL,
	                "00112233445566778899aabbccddeeff",
	                "1fa68b0a8112b447aef34bd8fb5a7b829d3e862371d2cfe5") ||
	    !cipher_kat(fault, "AES-256-WRAP", kek256, NULL,
	                "00112233445566778899aabbccddeeff000102030405060708090a0b0c0d0e0f",
	                ct256) ||
	    !unwrap_refuses_tamper("AES-256-WRAP", kek256, ct256))
		return KH_ERR_CRYPTO;
	return KH_OK;
}

/* RFC 5649 section 6: both examples (20 and 7 bytes, so the padding is
 * exercised, the second in the single-block special case), then tampering. */
static int kat_aes_kwp(bool fault)
{
	static const char kek[] = "5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8";
	static const char ct20[] = "138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a"
	                           "5f54f373fa543b6a";

	if (!cipher_kat(fault, "AES-192-WRAP-PAD", kek, NULL,
	                "c37b7e6492584340bed12207808941155068f738", ct20) ||
	    !cipher_kat(fault, "AES-192-WRAP-PAD", kek, NULL, "466f7250617369",
	                "afbeb0f07dfbf5419200f2ccb50bb24f") ||
	    !unwrap_refuses_tamper("AES-192-WRAP-PAD", kek, ct20))
		return KH_ERR_CRYPTO;
	return KH_OK;
}

/* ---- hashes and HMAC ----------------------------------------------------- */

#define RFC4231_TC2_DATA "what do ya want for nothing?"
#define RFC4231_TC6_DATA "Test Using Larger Than Block-Size Key - Hash Key First"

/* RFC 4231 test cases 2 (a key shorter than the block) and 6 (a 131-byte
 * key, longer than the block, so it is hashed first). */
KH_MUST_CHECK static bool hmac_kat(bool fault, const char *md, const char *want2, const char *want6)
{
	struct vec k;
	bool ok;

	memcpy(k.b, "Jefe", 4);
	k.n = 4;
	ok = mac_kat(fault, "HMAC", md, &k, (const uint8_t *)RFC4231_TC2_DATA,
	             strlen(RFC4231_TC2_DATA), want2);
	memset(k.b, 0xaa, 131);
	k.n = 131;
	ok = ok && mac_kat(fault, "HMAC", md, &k, (const uint8_t *)RFC4231_TC6_DATA,
	                   strlen(RFC4231_TC6_DATA), want6);
	kh_wipe(&k, sizeof(k));
	return ok;
}

static int kat_hmac_sha256(bool fault)
{
	if (!hmac_kat(fault, "SHA256",
	              "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
	              "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"))
		return KH_ERR_CRYPTO;
	return KH_OK;
}

static int kat_hmac_sha512(bool fault)
{
	if (!hmac_kat(fault, "SHA512",
	              "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
	              "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
	              "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f352"
	              "6b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598"))
		return KH_ERR_CRYPTO;
	return KH_OK;
}

/* The one-block message of FIPS 180-4's examples, and the two-block ones
 * (448 bits for the 512-bit-block hashes, 896 for the 1024-bit-block ones)
 * so that padding spills into a second block. */
#define MSG_ABC "abc"
#define MSG_448 "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
#define MSG_896                                                                                    \
	"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmno"                         \
	"ijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu"

KH_MUST_CHECK static bool digest_kat(bool fault, const char *alg, const char *msg, const char *want)
{
	EVP_MD *md = EVP_MD_fetch(NULL, alg, NULL);
	struct vec w;
	uint8_t out[EVP_MAX_MD_SIZE];
	unsigned n = 0;
	bool ok = md != NULL && vec(&w, want) &&
	          EVP_Digest(msg, strlen(msg), out, &n, md, NULL) == 1 && same(fault, out, n, &w);
	EVP_MD_free(md);
	return ok;
}

static int kat_sha1(bool fault)
{
	if (!digest_kat(fault, "SHA1", MSG_ABC, "a9993e364706816aba3e25717850c26c9cd0d89d") ||
	    !digest_kat(fault, "SHA1", MSG_448, "84983e441c3bd26ebaae4aa1f95129e5e54670f1"))
		return KH_ERR_CRYPTO;
	return KH_OK;
}

static int kat_sha256(bool fault)
{
	if (!digest_kat(fault, "SHA256", MSG_ABC,
	                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") ||
	    !digest_kat(fault, "SHA256", MSG_448,
	                "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"))
		return KH_ERR_CRYPTO;
	return KH_OK;
}

static int kat_sha384(bool fault)
{
	if (!digest_kat(fault, "SHA384", MSG_ABC,
	                "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded163"
	                "1a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7") ||
	    !digest_kat(fault, "SHA384", MSG_896,
	                "09330c33f71147e83d192fc782cd1b4753111b173b3b05d2"
	                "2fa08086e3b0f712fcc7c71a557e2db966c3e9fa91746039"))
		return KH_ERR_CRYPTO;
	return KH_OK;
}

static int kat_sha512(bool fault)
{
	if (!digest_kat(fault, "SHA512", MSG_ABC,
	                "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
	                "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f") ||
	    !digest_kat(fault, "SHA512", MSG_896,
	                "8e959b75dae313da8cf4f72814fc143f8f7779c6eb9f7fa17299aeadb6889018"
	                "501d289e4900f7e4331b99dec4b5433ac7d329eeb6dd26545e96e55b874be909"))
		return KH_ERR_CRYPTO;
	return KH_OK;
}

/* FIPS 202 / NIST's SHA-3 examples: "abc" and the 448-bit message. */
static int kat_sha3_256(bool fault)
{
	if (!digest_kat(fault, "SHA3-256", MSG_ABC,
	                "3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532") ||
	    !digest_kat(fault, "SHA3-256", MSG_448,
	                "41c0dba2a9d6240849100376a8235e2c82e1b9998a999e21db32dd97496d3376"))
		return KH_ERR_CRYPTO;
	return KH_OK;
}

/* ---- signatures and key agreement ----------------------------------------- */

/* Sign msg with k; md NULL for the schemes that hash internally (Ed25519). */
KH_MUST_CHECK static bool sign_msg(EVP_PKEY *k, const char *md, const uint8_t *msg, size_t msglen,
                                   uint8_t *sig, size_t sigmax, size_t *siglen)
{
	EVP_MD_CTX *m = EVP_MD_CTX_new();
	bool ok;

	*siglen = sigmax;
	ok = m != NULL && EVP_DigestSignInit_ex(m, NULL, md, NULL, NULL, k, NULL) == 1 &&
	     EVP_DigestSign(m, sig, siglen, msg, msglen) == 1;
	EVP_MD_CTX_free(m);
	return ok;
}

/* True only for a signature that verifies; an error counts as a no. */
KH_MUST_CHECK static bool verify_msg(EVP_PKEY *k, const char *md, const uint8_t *msg, size_t msglen,
                                     const uint8_t *sig, size_t siglen)
{
	EVP_MD_CTX *m = EVP_MD_CTX_new();
	bool ok;

	ok = m != NULL && EVP_DigestVerifyInit_ex(m, NULL, md, NULL, NULL, k, NULL) == 1 &&
	     EVP_DigestVerify(m, sig, siglen, msg, msglen) == 1;
	EVP_MD_CTX_free(m);
	return ok;
}

/* A verifier that says yes to anything passes every positive test: the
 * same signature with its last bit flipped must be refused. */
KH_MUST_CHECK static bool tamper_refused(EVP_PKEY *k, const char *md, const uint8_t *msg,
                                         size_t msglen, const uint8_t *sig, size_t siglen)
{
	uint8_t bad[VEC_MAX];

	if (siglen == 0 || siglen > sizeof(bad))
		return false;
	memcpy(bad, sig, siglen);
	bad[siglen - 1] ^= 0x01;
	return !verify_msg(k, md, msg, msglen, bad, siglen);
}

/* A 2048-bit RSA key made for this file with `openssl genrsa 2048` (PKCS#1
 * RSAPrivateKey, DER). Test data only: it protects nothing. */
static const char rsa_key_der[] = "308204a20201000282010100999829830935b5b8e11e61cc6281ea62b3c1b1d0"
                                  "87a2fd653728c37009840698c567f56b11d196163c0d8f1c06afa734e6262d61"
                                  "d1405f293acb3ed5be09395034fc85104b63666e5edd8002d2323afa0cb06e3a"
                                  "893e754f903bba22e92cf055b56691048efccb1914997d9cd9c890e4d6443aa2"
                                  "edbaf092304a252ede690aace328bf064b5a6f45bd477cbdd4639e4af34a7e53"
                                  "c7a933e9fe4eb7b075110ed106fec42090d9ffe8305501578417cb69bcb37eec"
                                  "c503b1be0a0053c46340bfbc414dfc67c7ec444954a8c138e255f3ce96f750f2"
                                  "e69582dfaece3a2d78b3cff5c01cdee16fb452912c134e8bf10d708d18204622"
                                  "717deb699c3cb10ba2c5925f020301000102820100357717342ad78c6b4fc9c0"
                                  "a761bef174ec37c78adc3c2b52b951b23e64c1957e46713aa7cbab1640a524df"
                                  "25155abdac9754c0c5650eb0516ccae513883433c42cbd9e201eedf9f0ff8ac1"
                                  "0dba578bda10e2b56c20ec21efd1384941efc319e1ebe44924ba155b295ed753"
                                  "376f43f6d40195fc874c939f3c741ccb36b66b0030c61da6dcadd2f0593b7a94"
                                  "dd4edb16080a37d402afc671069c4f856a180a4c44ce8877a35482396d3954ec"
                                  "740823d4563490619702a4c0dee0e80717491176403c853a790b493fdb6e4bcc"
                                  "e4dcfa2697657da572943407f6916a1ad8557a731dcce32f7a038d88a30a98ef"
                                  "414cd1f7ec74d0c14fe5e3b91c9edf15192b145cc902818100d146e00283b41a"
                                  "86c529a37cbe703899f0c5348d08cfcd619a24650514911adb1657fc910ff862"
                                  "1ca68e4e1201865b19dad5867faefed28f43b648a09413424996d06969161450"
                                  "04e6254609f55c06e49666178b50f0697eabd15b00cfc618df55b049268767f9"
                                  "ea512fe61cf307cd5c0a7c9710644834aead2c23ff54d14fc302818100bbe2c7"
                                  "c55e53d0ef2df015339f74eb45d70f83a127c25a7ae90747de06c73505d50828"
                                  "c6b381dcd279d419f3483d4b14012b409979f07fab00400e66e1229cd69bd74d"
                                  "81db36eecb72fa2bb1586c728bfc72cd8fd452845932786882f64def316ffd82"
                                  "397faf042e07566e863864e6af69880281eded94b3c64cb5efe0c5c535028180"
                                  "1be302e4b2e2240ac3691a04fc677dd35d9719ba956b03663721146909e5901b"
                                  "93ada3d53cb88f725beb6891d3ac30a5905895b49c000ed4d2640ee77ef3d608"
                                  "72555146948f9e5e18c0ecc554f1af6574792438075011eeb43c9090da1efe9f"
                                  "7c0ea2a0c4b861400d1381e967a52983534e68dee14e11df18ea61dd9b52ccfb"
                                  "0281800a0a2e3e9fb1bee26904013e06f14a792aeacb4fdb3e0973b3ec0dad11"
                                  "93a783ae44875946d253a873961fe4de215857b3504a5d6924aecdc66fa5d55d"
                                  "8669f715d0c57580ef48875a977faa345d67298fcddaaa2ae055ee264244e36a"
                                  "a1f37c22cddb1d937318b814f04b6ba4abcf9fe3f5be9c8ec8393ffa02b35e24"
                                  "16ad590281803d419168b4137fe14c2c64b8786190d339ece0139da16e42ee9d"
                                  "bc7ce673037f7e3301d5d1f2c3b7467fd8044552f1d19daa11b62f862b70c38c"
                                  "02bd6e60df030e9eddfe3754f0cb7dd4532c063652955570a4799f8a74ddfbd0"
                                  "8ab37d4020cc92bbb6f5b8fe57c96b4ea51d3c1d871cca6d7daad3b8887a09f0"
                                  "82a8d3b9d7b5";

/* PKCS#1 v1.5 with SHA-256 is deterministic: this is the signature of
 * rsa_msg under rsa_key_der, made with `openssl dgst -sha256 -sign`. */
static const char rsa_sig[] = "32a22f4d51b535d57a4db185923556bcd3c200bf906f4205c4a98327613e4a54"
                              "7218a9c15373fba8c5021bb06676640776058b1b84d02efa18dcc4de71eac1ae"
                              "2159abcc787854304d62f913bd07996c42febbddc4907afbfbb9970f1bded6a1"
                              "acd8099e96d1b2e110ff82a2c354f3706e0c4496492ed717b77eb32dff5ecf93"
                              "a03ccc8c13abb606c8b69754a04acec6e7f99e753e08fc1f862ba08be14eb237"
                              "4bd1c142054ea1aa203305081a22985b3c922db5226fe13828c89c3c4bbc1723"
                              "08c6d51f4f9e564793f5a5be64fe7bc9d46bb24d7852b3bb20493f2486c28748"
                              "f4ab7c081627da31d6a7f3d40a0118b6c126309f6f4a303676b7b11e662dd3a6";

static const char rsa_msg[] = "Keyhold RSA known-answer test";

/*
 * RSA: PKCS#1 v1.5 with SHA-256 must reproduce the recorded signature
 * exactly (the scheme is deterministic) and verify; a tampered copy must
 * not. Then an OAEP (SHA-256, MGF1-SHA-256) round trip, which is random and
 * so can only be checked by coming back to the start.
 */
static int kat_rsa(bool fault)
{
	static const uint8_t secret[] = "keyhold oaep round trip";
	uint8_t der[RSA_DER_MAX];
	const uint8_t *p = der;
	EVP_PKEY *k = NULL;
	EVP_PKEY_CTX *pc = NULL;
	struct vec want;
	uint8_t sig[VEC_MAX], ct[VEC_MAX], pt[VEC_MAX];
	size_t siglen = 0, ctlen = sizeof(ct), ptlen = sizeof(pt);
	int n, r = KH_ERR_CRYPTO;
	OSSL_PARAM oaep[4];

	oaep[0] = OSSL_PARAM_construct_utf8_string(OSSL_ASYM_CIPHER_PARAM_PAD_MODE,
	                                           (char *)OSSL_PKEY_RSA_PAD_MODE_OAEP, 0);
	oaep[1] = OSSL_PARAM_construct_utf8_string(OSSL_ASYM_CIPHER_PARAM_OAEP_DIGEST,
	                                           (char *)"SHA256", 0);
	oaep[2] = OSSL_PARAM_construct_utf8_string(OSSL_ASYM_CIPHER_PARAM_MGF1_DIGEST,
	                                           (char *)"SHA256", 0);
	oaep[3] = OSSL_PARAM_construct_end();
	n = kh_hex_decode(rsa_key_der, strlen(rsa_key_der), der, RSA_DER_MAX);
	if (n <= 0 || (k = d2i_AutoPrivateKey(NULL, &p, n)) == NULL || !EVP_PKEY_is_a(k, "RSA") ||
	    EVP_PKEY_get_bits(k) != 2048 || !vec(&want, rsa_sig))
		goto out;
	if (!sign_msg(k, "SHA256", (const uint8_t *)rsa_msg, strlen(rsa_msg), sig, sizeof(sig),
	              &siglen) ||
	    !same(fault, sig, siglen, &want) ||
	    !verify_msg(k, "SHA256", (const uint8_t *)rsa_msg, strlen(rsa_msg), sig, siglen) ||
	    !tamper_refused(k, "SHA256", (const uint8_t *)rsa_msg, strlen(rsa_msg), sig, siglen))
		goto out;

	if ((pc = EVP_PKEY_CTX_new_from_pkey(NULL, k, NULL)) == NULL ||
	    EVP_PKEY_encrypt_init_ex(pc, oaep) != 1 ||
	    EVP_PKEY_encrypt(pc, ct, &ctlen, secret, sizeof(secret)) != 1 ||
	    EVP_PKEY_decrypt_init_ex(pc, oaep) != 1 ||
	    EVP_PKEY_decrypt(pc, pt, &ptlen, ct, ctlen) != 1)
		goto out;
	if (ctlen != 256 || ptlen != sizeof(secret) || CRYPTO_memcmp(pt, secret, ptlen) != 0)
		goto out;
	r = KH_OK;
out:
	EVP_PKEY_CTX_free(pc);
	EVP_PKEY_free(k);
	kh_wipe(der, sizeof(der));
	kh_wipe(pt, sizeof(pt));
	return r;
}

/*
 * A P-256 key from published values: the private scalar d (NULL for a
 * public key alone) and the public point's coordinates. Nothing is returned
 * until it checks: a key pair must pass the pairwise test (d times G is the
 * published point, itself a known answer for point multiplication), a
 * public key the full public-key validation of SP 800-56A.
 */
static EVP_PKEY *p256_key(const char *d, const char *x, const char *y)
{
	OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
	EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL), *chk = NULL;
	OSSL_PARAM *params = NULL;
	EVP_PKEY *k = NULL;
	BIGNUM *priv = NULL;
	struct vec dv;
	uint8_t pub[65];
	bool ok = false;

	pub[0] = 0x04; /* uncompressed point */
	if (bld == NULL || pc == NULL || kh_hex_decode(x, strlen(x), pub + 1, 32) != 32 ||
	    kh_hex_decode(y, strlen(y), pub + 33, 32) != 32)
		goto out;
	if (d != NULL && (!vec(&dv, d) || dv.n != 32 || (priv = BN_bin2bn(dv.b, 32, NULL)) == NULL))
		goto out;
	if (OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "P-256", 0) != 1 ||
	    OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pub, sizeof(pub)) != 1 ||
	    (priv != NULL && OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_PRIV_KEY, priv) != 1) ||
	    (params = OSSL_PARAM_BLD_to_param(bld)) == NULL)
		goto out;
	if (EVP_PKEY_fromdata_init(pc) != 1 ||
	    EVP_PKEY_fromdata(pc, &k, priv ? EVP_PKEY_KEYPAIR : EVP_PKEY_PUBLIC_KEY, params) != 1)
		goto out;
	if ((chk = EVP_PKEY_CTX_new_from_pkey(NULL, k, NULL)) == NULL)
		goto out;
	ok = priv ? EVP_PKEY_pairwise_check(chk) == 1 : EVP_PKEY_public_check(chk) == 1;
out:
	EVP_PKEY_CTX_free(chk);
	OSSL_PARAM_free(params);
	OSSL_PARAM_BLD_free(bld);
	EVP_PKEY_CTX_free(pc);
	BN_clear_free(priv);
	kh_wipe(&dv, sizeof(dv));
	if (!ok) {
		EVP_PKEY_free(k);
		k = NULL;
	}
	return k;
}

/*
 * ECDSA P-256 with SHA-256, key and message from RFC 6979 A.2.5. OpenSSL
 * 3.0 draws k at random, so our own signature can only be shown to verify;
 * the RFC's (deterministic) signature, DER-encoded here, is the known
 * answer for verification, and a tampered copy of it must be refused.
 *   r = efd48b2aacb6a8fd1140dd9cd45e81d69d2c877b56aaf991c34d0ea84eaf3716
 *   s = f7cb1c942d657c41d436c7a1b6e29f65f3e900dbb9aff4064dc4ab2f843acda8
 */
static int kat_ecdsa_p256(bool fault)
{
	static const uint8_t msg[] = "sample";
	EVP_PKEY *k = p256_key("c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721",
	                       "60fed4ba255a9d31c961eb74c6356d68c049b8923b61fa6ce669622e60f29fb6",
	                       "7903fe1008b8bc99a41ae9e95628bc64f2f1b20c2d7e9f5177a3c294d4462299");
	struct vec rfc;
	uint8_t sig[VEC_MAX];
	size_t n = 0, mlen = sizeof(msg) - 1;
	bool ok;

	ok = k != NULL &&
	     vec(&rfc, "3046"
	               "022100efd48b2aacb6a8fd1140dd9cd45e81d69d2c877b56aaf991c34d0ea84eaf3716"
	               "022100f7cb1c942d657c41d436c7a1b6e29f65f3e900dbb9aff4064dc4ab2f843acda8") &&
	     sign_msg(k, "SHA256", msg, mlen, sig, sizeof(sig), &n);
	taint(fault, sig, n);
	ok = ok && verify_msg(k, "SHA256", msg, mlen, sig, n) &&
	     verify_msg(k, "SHA256", msg, mlen, rfc.b, rfc.n) &&
	     tamper_refused(k, "SHA256", msg, mlen, rfc.b, rfc.n);
	EVP_PKEY_free(k);
	return ok ? KH_OK : KH_ERR_CRYPTO;
}

/* RFC 8032 section 7.1, tests 1 (empty message) and 2 (one byte). */
static const struct {
	const char *sk, *pk, *msg, *sig;
} ed25519_vecs[] = {
    {"9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
     "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
     "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"},
    {"4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
     "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
     "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"},
};

/*
 * Ed25519 is deterministic, so everything has a known answer: the public
 * key derived from the seed, the signature (exactly), and verification
 * under the published public key; a tampered signature must be refused.
 */
static int kat_ed25519(bool fault)
{
	bool ok = true;

	for (size_t i = 0; ok && i < sizeof(ed25519_vecs) / sizeof(ed25519_vecs[0]); i++) {
		struct vec sk, pk, msg, want;
		EVP_PKEY *priv = NULL, *pub = NULL;
		uint8_t got[64], sig[VEC_MAX];
		size_t glen = sizeof(got), slen = 0;

		ok = vec(&sk, ed25519_vecs[i].sk) && vec(&pk, ed25519_vecs[i].pk) &&
		     vec(&msg, ed25519_vecs[i].msg) && vec(&want, ed25519_vecs[i].sig) &&
		     (priv = EVP_PKEY_new_raw_private_key_ex(NULL, "ED25519", NULL, sk.b, sk.n)) !=
		         NULL &&
		     (pub = EVP_PKEY_new_raw_public_key_ex(NULL, "ED25519", NULL, pk.b, pk.n)) !=
		         NULL &&
		     EVP_PKEY_get_raw_public_key(priv, got, &glen) == 1 &&
		     same(false, got, glen, &pk) &&
		     sign_msg(priv, NULL, msg.b, msg.n, sig, sizeof(sig), &slen) &&
		     same(fault, sig, slen, &want) &&
		     verify_msg(pub, NULL, msg.b, msg.n, sig, slen) &&
		     tamper_refused(pub, NULL, msg.b, msg.n, sig, slen);
		EVP_PKEY_free(priv);
		EVP_PKEY_free(pub);
		kh_wipe(&sk, sizeof(sk));
	}
	return ok ? KH_OK : KH_ERR_CRYPTO;
}

/*
 * ECDH P-256: the first vector (COUNT = 0) of NIST CAVP's KAS ECC CDH
 * primitive tests. Our key is the IUT's (d, Q), the peer's is the CAVS
 * public key, and the shared x-coordinate must be Z exactly.
 */
static int kat_ecdh_p256(bool fault)
{
	EVP_PKEY *us = p256_key("7d7dc5f71eb29ddaf80d6214632eeae03d9058af1fb6d22ed80badb62bc1a534",
	                        "ead218590119e8876b29146ff89ca61770c4edbbf97d38ce385ed281d8a6b230",
	                        "28af61281fd35e2fa7002523acc85a429cb06ee6648325389f59edfce1405141");
	EVP_PKEY *peer =
	    p256_key(NULL, "700c48f77f56584c5cc632ca65640db91b6bacce3a4df6b42ce7cc838833d287",
	             "db71e509e3fd9b060ddb20ba5c51dcc5948d46fbf640dfe0441782cab85fa4ac");
	EVP_PKEY_CTX *pc = NULL;
	struct vec want;
	uint8_t z[64];
	size_t n = sizeof(z);
	bool ok;

	ok = us != NULL && peer != NULL &&
	     vec(&want, "46fc62106420ff012e54a434fbdd2d25ccc5852060561e68040dd7778997bd7b") &&
	     (pc = EVP_PKEY_CTX_new_from_pkey(NULL, us, NULL)) != NULL &&
	     EVP_PKEY_derive_init(pc) == 1 && EVP_PKEY_derive_set_peer(pc, peer) == 1 &&
	     EVP_PKEY_derive(pc, z, &n) == 1 && same(fault, z, n, &want);
	kh_wipe(z, sizeof(z));
	EVP_PKEY_CTX_free(pc);
	EVP_PKEY_free(us);
	EVP_PKEY_free(peer);
	return ok ? KH_OK : KH_ERR_CRYPTO;
}

/* ---- random bits --------------------------------------------------------- */

/*
 * Random output has no known answer through RAND_bytes; the DRBG's own
 * known-answer tests are OpenSSL's to run (the FIPS provider does at load).
 * This is the health check on top, for the public generator and for the
 * private one that keys come from: each answers, and two outputs in a row
 * differ (a stuck generator is the fault worth catching here).
 */
static int kat_drbg(bool fault)
{
	uint8_t a[32], b[32], c[32], d[32];
	bool ok;

	ok = RAND_bytes(a, sizeof(a)) == 1 && RAND_bytes(b, sizeof(b)) == 1 &&
	     RAND_priv_bytes(c, sizeof(c)) == 1 && RAND_priv_bytes(d, sizeof(d)) == 1;
	if (fault)
		memcpy(b, a, sizeof(b)); /* what a stuck generator would give */
	ok = ok && CRYPTO_memcmp(a, b, sizeof(a)) != 0 && CRYPTO_memcmp(c, d, sizeof(c)) != 0;
	kh_wipe(a, sizeof(a));
	kh_wipe(b, sizeof(b));
	kh_wipe(c, sizeof(c));
	kh_wipe(d, sizeof(d));
	return ok ? KH_OK : KH_ERR_CRYPTO;
}

/* ---- the table ----------------------------------------------------------- */

struct kat {
	const char *name;
	int (*fn)(bool fault);
};

static const struct kat kats[] = {
    {"AES-ECB", kat_aes_ecb},
    {"AES-CBC", kat_aes_cbc},
    {"AES-CTR", kat_aes_ctr},
    {"AES-GCM", kat_aes_gcm},
    {"AES-CMAC", kat_aes_cmac},
    {"AES-KW", kat_aes_kw},
    {"AES-KWP", kat_aes_kwp},
    {"HMAC-SHA256", kat_hmac_sha256},
    {"HMAC-SHA512", kat_hmac_sha512},
    {"SHA-1", kat_sha1},
    {"SHA-256", kat_sha256},
    {"SHA-384", kat_sha384},
    {"SHA-512", kat_sha512},
    {"SHA3-256", kat_sha3_256},
    {"RSA-SIGN", kat_rsa},
    {"ECDSA-P256", kat_ecdsa_p256},
    {"ED25519", kat_ed25519},
    {"ECDH-P256", kat_ecdh_p256},
    {"DRBG", kat_drbg},
};

#ifdef KH_FAULT_INJECTION
static char forced[32];

void kh_selftest_force_failure(const char *name)
{
	memset(forced, 0, sizeof(forced));
	if (name != NULL)
		snprintf(forced, sizeof(forced), "%s", name);
}

static bool is_forced(const char *name)
{
	return forced[0] != '\0' && (strcmp(forced, "all") == 0 || strcmp(forced, name) == 0);
}
#else
static bool is_forced(const char *name)
{
	return false;
}
#endif

int kh_selftest_run(struct kh_selftest_result *res)
{
	if (res == NULL)
		return KH_ERR_INTERNAL;
	memset(res, 0, sizeof(*res));
	/* Every test runs even after a failure, so the log names them all. */
	for (size_t i = 0; i < sizeof(kats) / sizeof(kats[0]); i++) {
		const struct kat *t = &kats[i];

		res->run++;
		if (t->fn(is_forced(t->name)) != KH_OK) {
			if (res->failed++ == 0)
				snprintf(res->first_failed, sizeof(res->first_failed), "%s",
				         t->name);
			log_warnx("self-test %s failed", t->name);
		}
		/* Failures and the deliberate negative checks leave entries on
		 * this thread's error queue; the next, unrelated call must not
		 * find them. */
		ERR_clear_error();
	}
	return res->failed == 0 ? KH_OK : KH_ERR_CRYPTO;
}

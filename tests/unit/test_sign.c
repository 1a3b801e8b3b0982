/* Signatures through the dispatcher: ASYS, RSAS and ASYV with RSA (PKCS#1
 * v1.5, PSS), ECDSA (DER, P1363) and Ed25519 keys, checked against OpenSSL
 * on the test's side in both directions, RFC 8032's first vector, malformed
 * and tampered signatures, usage and FIPS refusals. */
#include "kh_testutil.h"
#include "hsm/keyobj.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

/* made once: RSA key generation is slow under ASan */
static EVP_PKEY *rsa2048, *rsa1024;

static int group_setup(void **state)
{
	(void)state;
	rsa2048 = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	rsa1024 = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
	return rsa2048 && rsa1024 ? 0 : -1;
}

static int group_teardown(void **state)
{
	(void)state;
	EVP_PKEY_free(rsa2048);
	EVP_PKEY_free(rsa1024);
	return 0;
}

/* A device with a PMK whose TP role may import public keys. */
static int setup(void **state)
{
	int r = kh_test_fx_setup_pmk(state);
	struct kh_test_fx *x = *state;
	if (r == 0 &&
	    KH_CALL(x, &x->admin, "[AORLMD;RNAnonymous;PMkeys,keys.import_pki;]") != KH_OK)
		r = -1;
	return r;
}

static const char *type_of(EVP_PKEY *pk)
{
	switch (EVP_PKEY_get_base_id(pk)) {
	case EVP_PKEY_RSA:
		return "RSA";
	case EVP_PKEY_EC:
		return "EC";
	default:
		return "ED25519";
	}
}

/* The private key in slot, and its public key in slot + 1. */
static void import_pair(struct kh_test_fx *x, struct kh_session *p, EVP_PKEY *pk, unsigned slot,
                        const char *usage)
{
	char *v = kh_test_pkcs8_hex(pk), *req = malloc(strlen(v) + 256);
	assert_non_null(req);
	sprintf(req, "[AOGPKA;CLprivate;KT%s;KV%s;CZ%s;SL%u;]", type_of(pk), v, usage, slot);
	assert_int_equal(KH_CALL(x, p, req), KH_OK);
	free(v);
	v = kh_test_spki_hex(pk);
	sprintf(req, "[AOGPKA;CLpublic;KT%s;KV%s;CZV;SL%u;]", type_of(pk), v, slot + 1);
	assert_int_equal(KH_CALL(x, p, req), KH_OK);
	free(v);
	free(req);
}

/* The SG of the last response, decoded. */
static size_t sg(struct kh_test_fx *x, uint8_t *out, size_t max)
{
	assert_non_null(strstr(x->out, "BBY;"));
	return kh_test_unhex(kh_test_field(x->out, "SG"), out, max);
}

/* OpenSSL's own verification of an RSA or ECDSA signature over msg
 * (pad 0 for ECDSA). */
static int ossl_verify(EVP_PKEY *pk, const EVP_MD *md, int pad, int salt, const uint8_t *sig,
                       size_t sig_len, const uint8_t *msg, size_t msg_len)
{
	EVP_MD_CTX *m = EVP_MD_CTX_new();
	EVP_PKEY_CTX *pc = NULL;
	assert_int_equal(EVP_DigestVerifyInit(m, &pc, md, NULL, pk), 1);
	if (pad) {
		assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(pc, pad), 1);
		if (pad == RSA_PKCS1_PSS_PADDING)
			assert_int_equal(EVP_PKEY_CTX_set_rsa_pss_saltlen(pc, salt), 1);
	}
	int r = EVP_DigestVerify(m, sig, sig_len, msg, msg_len);
	EVP_MD_CTX_free(m);
	return r;
}

static size_t ossl_sign(EVP_PKEY *pk, const EVP_MD *md, int pad, int salt, const uint8_t *msg,
                        size_t msg_len, uint8_t *sig, size_t max)
{
	EVP_MD_CTX *m = EVP_MD_CTX_new();
	EVP_PKEY_CTX *pc = NULL;
	size_t n = max;
	assert_int_equal(EVP_DigestSignInit(m, &pc, md, NULL, pk), 1);
	if (pad) {
		assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(pc, pad), 1);
		if (pad == RSA_PKCS1_PSS_PADDING)
			assert_int_equal(EVP_PKEY_CTX_set_rsa_pss_saltlen(pc, salt), 1);
	}
	assert_int_equal(EVP_DigestSign(m, sig, &n, msg, msg_len), 1);
	EVP_MD_CTX_free(m);
	return n;
}

static const uint8_t msg[] = "keyhold signs this message";
#define MSG_HEX "6B6579686F6C64207369676E732074686973206D657373616765"

static void test_rsa(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	uint8_t sig[512], sig2[512], dg[64];
	size_t n, n2;
	unsigned dl;
	char *s, *pu = kh_test_spki_hex(rsa2048);
	kh_test_session(&p, KH_PORT_PROD);
	import_pair(x, &p, rsa2048, 100, "GV");

	/* PKCS#1 v1.5 is deterministic: DT, HS (the digest made here) and
	 * RSAS give the same signature, which OpenSSL verifies */
	assert_int_equal(KH_CALLF(x, &p, "[AOASYS;SL100;DT%s;]", MSG_HEX), KH_OK);
	n = sg(x, sig, sizeof(sig));
	assert_int_equal(n, 256);
	assert_int_equal(
	    ossl_verify(rsa2048, EVP_sha256(), RSA_PKCS1_PADDING, 0, sig, n, msg, sizeof(msg) - 1),
	    1);
	assert_int_equal(EVP_Digest(msg, sizeof(msg) - 1, dg, &dl, EVP_sha256(), NULL), 1);
	s = kh_test_hex(dg, dl);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYS;SL100;HAZZ;HS%s;]", s), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYS;SL100;HASHA-256;PDPKCS1;HS%s;]", s), KH_OK);
	assert_int_equal(sg(x, sig2, sizeof(sig2)), n);
	assert_memory_equal(sig, sig2, n);
	assert_int_equal(KH_CALLF(x, &p, "[AORSAS;SL100;DT%s;]", MSG_HEX), KH_OK);
	assert_int_equal(sg(x, sig2, sizeof(sig2)), n);
	assert_memory_equal(sig, sig2, n);
	/* an HS that is not the hash's length, HS with DT, neither */
	assert_int_equal(KH_CALLF(x, &p, "[AOASYS;SL100;HASHA-384;HS%s;]", s), KH_ERR_BAD_FIELD);
	assert_non_null(strstr(x->out, "HS (48 bytes"));
	assert_int_equal(KH_CALLF(x, &p, "[AOASYS;SL100;HS%s;DT00;]", s), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYS;SL100;]"), KH_ERR_MISSING_FIELD);
	free(s);

	/* other hashes, PKCS#1 v1.5 */
	const struct {
		const char *name;
		const EVP_MD *(*md)(void);
	} mds[] = {{"SHA-1", EVP_sha1},
	           {"SHA-384", EVP_sha384},
	           {"SHA-512", EVP_sha512},
	           {"SHA3-256", EVP_sha3_256}};
	for (size_t i = 0; i < sizeof(mds) / sizeof(mds[0]); i++) {
		assert_int_equal(KH_CALLF(x, &p, "[AOASYS;SL100;HA%s;DT%s;]", mds[i].name, MSG_HEX),
		                 KH_OK);
		n = sg(x, sig, sizeof(sig));
		assert_int_equal(ossl_verify(rsa2048, mds[i].md(), RSA_PKCS1_PADDING, 0, sig, n,
		                             msg, sizeof(msg) - 1),
		                 1);
	}

	/* PSS with several salt lengths (default: the hash's); each verifies
	 * with OpenSSL given exactly that length, and through ASYV */
	const struct {
		const char *fields;
		const EVP_MD *(*md)(void);
		int salt;
	} pss[] = {{"", EVP_sha256, 32},           {"SA0;", EVP_sha256, 0},
	           {"SA20;", EVP_sha256, 20},      {"HASHA-512;SA64;", EVP_sha512, 64},
	           {"HASHA-384;", EVP_sha384, 48}, {"SA222;", EVP_sha256, 222}};
	for (size_t i = 0; i < sizeof(pss) / sizeof(pss[0]); i++) {
		assert_int_equal(
		    KH_CALLF(x, &p, "[AOASYS;SL100;PDPSS;%sDT%s;]", pss[i].fields, MSG_HEX), KH_OK);
		n = sg(x, sig, sizeof(sig));
		assert_int_equal(ossl_verify(rsa2048, pss[i].md(), RSA_PKCS1_PSS_PADDING,
		                             pss[i].salt, sig, n, msg, sizeof(msg) - 1),
		                 1);
		s = kh_test_hex(sig, n);
		assert_int_equal(
		    KH_CALLF(x, &p, "[AOASYV;SL101;PDPSS;%sDT%s;SG%s;]", pss[i].fields, MSG_HEX, s),
		    KH_OK);
		assert_non_null(strstr(x->out, "BBY;"));
		/* another salt length than the signer's does not verify */
		if (pss[i].md() == EVP_sha256())
			assert_int_equal(KH_CALLF(x, &p, "[AOASYV;SL101;PDPSS;SA%d;DT%s;SG%s;]",
			                          pss[i].salt == 0 ? 1 : 0, MSG_HEX, s),
			                 KH_ERR_VERIFY_FAILED);
		free(s);
	}
	/* the longest salt is emLen - hLen - 2 */
	assert_int_equal(KH_CALLF(x, &p, "[AOASYS;SL100;PDPSS;SA223;DT%s;]", MSG_HEX),
	                 KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYS;SL100;SA20;DT%s;]", MSG_HEX), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYS;SL100;PDOAEP;DT%s;]", MSG_HEX), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYS;SL100;SFDER;DT%s;]", MSG_HEX), KH_ERR_BAD_FIELD);
	/* MGF1 with another hash than the message's */
	assert_int_equal(KH_CALLF(x, &p, "[AOASYS;SL100;PDPSS;MGSHA-1;DT%s;]", MSG_HEX), KH_OK);
	n = sg(x, sig, sizeof(sig));
	s = kh_test_hex(sig, n);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYV;SL101;PDPSS;MGSHA-1;DT%s;SG%s;]", MSG_HEX, s),
	                 KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYV;SL101;PDPSS;DT%s;SG%s;]", MSG_HEX, s),
	                 KH_ERR_VERIFY_FAILED);
	free(s);

	/* OpenSSL's signatures verify through every way of naming the key:
	 * public and private slot, cryptogram, clear public key */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPGC;SL101;]"), KH_OK);
	char *cg = strdup(kh_test_field(x->out, "SD"));
	assert_int_equal(KH_CALLF(x, &p, "[AOGPGC;SL100;]"), KH_OK);
	char *rc = strdup(kh_test_field(x->out, "RC"));
	n = ossl_sign(rsa2048, EVP_sha256(), RSA_PKCS1_PADDING, 0, msg, sizeof(msg) - 1, sig,
	              sizeof(sig));
	n2 = ossl_sign(rsa2048, EVP_sha384(), RSA_PKCS1_PSS_PADDING, 17, msg, sizeof(msg) - 1, sig2,
	               sizeof(sig2));
	s = kh_test_hex(sig, n);
	char *s2 = kh_test_hex(sig2, n2);
	const char *names[] = {"SL101", "SL100", "CG", "CG", "PU"};
	const char *vals[] = {"", "", cg, rc, pu};
	for (size_t i = 0; i < 5; i++) {
		assert_int_equal(
		    KH_CALLF(x, &p, "[AOASYV;%s%s;DT%s;SG%s;]", names[i], vals[i], MSG_HEX, s),
		    KH_OK);
		assert_int_equal(KH_CALLF(x, &p, "[AOASYV;%s%s;HASHA-384;PDPSS;SA17;DT%s;SG%s;]",
		                          names[i], vals[i], MSG_HEX, s2),
		                 KH_OK);
	}
	/* a flipped bit anywhere, a byte short or long, another message */
	for (size_t i = 0; i < n; i += 37) {
		sig[i] ^= 0x10;
		char *t = kh_test_hex(sig, n);
		assert_int_equal(KH_CALLF(x, &p, "[AOASYV;SL101;DT%s;SG%s;]", MSG_HEX, t),
		                 KH_ERR_VERIFY_FAILED);
		free(t);
		sig[i] ^= 0x10;
	}
	assert_int_equal(KH_CALLF(x, &p, "[AOASYV;SL101;DT%s;SG%.510s;]", MSG_HEX, s),
	                 KH_ERR_VERIFY_FAILED);
	assert_null(strstr(x->out, ": ")); /* nothing said about why */
	assert_int_equal(KH_CALLF(x, &p, "[AOASYV;SL101;DT%s;SG%s00;]", MSG_HEX, s),
	                 KH_ERR_VERIFY_FAILED);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYV;SL101;DT%s00;SG%s;]", MSG_HEX, s),
	                 KH_ERR_VERIFY_FAILED);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYV;SL101;DT%s;SG;]", MSG_HEX), KH_ERR_VERIFY_FAILED);
	/* not hex at all is a bad field, not a signature */
	assert_int_equal(KH_CALLF(x, &p, "[AOASYV;SL101;DT%s;SGXY%s;]", MSG_HEX, s),
	                 KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYV;SL101;DT%s;]", MSG_HEX), KH_ERR_MISSING_FIELD);
	free(s);
	free(s2);
	free(cg);
	free(rc);
	free(pu);
}

/* r||s of a DER ECDSA signature, w bytes each. */
static size_t to_p1363(const uint8_t *der, size_t len, size_t w, uint8_t *out)
{
	const uint8_t *q = der;
	const BIGNUM *r, *s;
	ECDSA_SIG *e = d2i_ECDSA_SIG(NULL, &q, (long)len);
	assert_non_null(e);
	ECDSA_SIG_get0(e, &r, &s);
	assert_int_equal(BN_bn2binpad(r, out, (int)w), (int)w);
	assert_int_equal(BN_bn2binpad(s, out + w, (int)w), (int)w);
	ECDSA_SIG_free(e);
	return 2 * w;
}

static size_t from_p1363(const uint8_t *in, size_t w, uint8_t *out)
{
	ECDSA_SIG *e = ECDSA_SIG_new();
	uint8_t *p = out;
	assert_int_equal(
	    ECDSA_SIG_set0(e, BN_bin2bn(in, (int)w, NULL), BN_bin2bn(in + w, (int)w, NULL)), 1);
	int n = i2d_ECDSA_SIG(e, &p);
	assert_true(n > 0);
	ECDSA_SIG_free(e);
	return (size_t)n;
}

static void test_ecdsa(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	const struct {
		const char *curve, *ha;
		const EVP_MD *(*md)(void);
		size_t w;
	} curves[] = {{"P-256", "SHA-256", EVP_sha256, 32},
	              {"P-384", "SHA-384", EVP_sha384, 48},
	              {"P-521", "SHA-512", EVP_sha512, 66}};
	kh_test_session(&p, KH_PORT_PROD);
	for (size_t c = 0; c < 3; c++) {
		EVP_PKEY *pk = EVP_PKEY_Q_keygen(NULL, NULL, "EC", curves[c].curve);
		const EVP_MD *md = curves[c].md();
		uint8_t sig[256], fx[256], der[256], dg[64];
		unsigned dl;
		size_t n, w = curves[c].w;
		char *s, *pu = kh_test_spki_hex(pk);
		unsigned slot = 110 + 2 * (unsigned)c;
		assert_non_null(pk);
		import_pair(x, &p, pk, slot, "GV");

		/* DER (default), verified by OpenSSL */
		assert_int_equal(
		    KH_CALLF(x, &p, "[AOASYS;SL%u;HA%s;DT%s;]", slot, curves[c].ha, MSG_HEX),
		    KH_OK);
		n = sg(x, sig, sizeof(sig));
		assert_int_equal(ossl_verify(pk, md, 0, 0, sig, n, msg, sizeof(msg) - 1), 1);
		/* P1363 is exactly twice the field size, 66 bytes each for P-521 */
		assert_int_equal(KH_CALLF(x, &p, "[AOASYS;SL%u;HA%s;SFP1363;DT%s;]", slot,
		                          curves[c].ha, MSG_HEX),
		                 KH_OK);
		assert_int_equal(sg(x, fx, sizeof(fx)), 2 * w);
		n = from_p1363(fx, w, der);
		assert_int_equal(ossl_verify(pk, md, 0, 0, der, n, msg, sizeof(msg) - 1), 1);
		/* a digest made here signs like the data */
		assert_int_equal(EVP_Digest(msg, sizeof(msg) - 1, dg, &dl, md, NULL), 1);
		s = kh_test_hex(dg, dl);
		assert_int_equal(KH_CALLF(x, &p, "[AOASYS;SL%u;HA%s;HS%s;]", slot, curves[c].ha, s),
		                 KH_OK);
		free(s);
		n = sg(x, sig, sizeof(sig));
		assert_int_equal(ossl_verify(pk, md, 0, 0, sig, n, msg, sizeof(msg) - 1), 1);

		/* OpenSSL's signature through ASYV, DER and P1363, slot and PU */
		n = ossl_sign(pk, EVP_sha256(), 0, 0, msg, sizeof(msg) - 1, sig, sizeof(sig));
		s = kh_test_hex(sig, n);
		assert_int_equal(KH_CALLF(x, &p, "[AOASYV;SL%u;DT%s;SG%s;]", slot + 1, MSG_HEX, s),
		                 KH_OK);
		assert_int_equal(KH_CALLF(x, &p, "[AOASYV;PU%s;SFDER;DT%s;SG%s;]", pu, MSG_HEX, s),
		                 KH_OK);
		assert_int_equal(
		    KH_CALLF(x, &p, "[AOASYV;SL%u;HASHA-384;DT%s;SG%s;]", slot + 1, MSG_HEX, s),
		    KH_ERR_VERIFY_FAILED);
		free(s);
		to_p1363(sig, n, w, fx);
		s = kh_test_hex(fx, 2 * w);
		assert_int_equal(
		    KH_CALLF(x, &p, "[AOASYV;SL%u;SFP1363;DT%s;SG%s;]", slot, MSG_HEX, s), KH_OK);
		/* P1363 of another length, or given as DER: malformed */
		assert_int_equal(
		    KH_CALLF(x, &p, "[AOASYV;SL%u;SFP1363;DT%s;SG00%s;]", slot, MSG_HEX, s),
		    KH_ERR_VERIFY_FAILED);
		assert_int_equal(KH_CALLF(x, &p, "[AOASYV;SL%u;DT%s;SG%s;]", slot, MSG_HEX, s),
		                 KH_ERR_VERIFY_FAILED);
		fx[w - 1] ^= 1;
		free(s);
		s = kh_test_hex(fx, 2 * w);
		assert_int_equal(
		    KH_CALLF(x, &p, "[AOASYV;SL%u;SFP1363;DT%s;SG%s;]", slot, MSG_HEX, s),
		    KH_ERR_VERIFY_FAILED);
		free(s);
		/* BER that is not DER: trailing byte, long-form length */
		sig[n] = 0;
		s = kh_test_hex(sig, n + 1);
		assert_int_equal(KH_CALLF(x, &p, "[AOASYV;SL%u;DT%s;SG%s;]", slot, MSG_HEX, s),
		                 KH_ERR_VERIFY_FAILED);
		free(s);
		if (sig[1] < 0x80) {
			uint8_t ber[256] = {0x30, 0x81};
			memcpy(ber + 2, sig + 1, n - 1);
			s = kh_test_hex(ber, n + 1);
			assert_int_equal(
			    KH_CALLF(x, &p, "[AOASYV;SL%u;DT%s;SG%s;]", slot, MSG_HEX, s),
			    KH_ERR_VERIFY_FAILED);
			free(s);
		}
		/* RSA parameters mean nothing here */
		assert_int_equal(KH_CALLF(x, &p, "[AOASYS;SL%u;PDPSS;DT%s;]", slot, MSG_HEX),
		                 KH_ERR_BAD_FIELD);
		assert_int_equal(KH_CALLF(x, &p, "[AOASYS;SL%u;SFRAW;DT%s;]", slot, MSG_HEX),
		                 KH_ERR_BAD_FIELD);
		free(pu);
		EVP_PKEY_free(pk);
	}
}

/* RFC 8032 section 7.1, TEST 1 (empty message) */
static const uint8_t ed_sk[32] = {0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a,
                                  0xf4, 0x92, 0xec, 0x2c, 0xc4, 0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32,
                                  0x69, 0x19, 0x70, 0x3b, 0xac, 0x03, 0x1c, 0xae, 0x7f, 0x60};
#define ED_SIG                                                                                     \
	"E5564300C360AC729086E2CC806E828A84877F1EB8E5D974D873E065224901555FB8821590A33BACC61E3970" \
	"1CF9B46BD25BF5F0595BBE24655141438E7A100B"

static void test_ed25519(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	EVP_PKEY *pk = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, ed_sk, sizeof(ed_sk));
	uint8_t sig[64];
	kh_test_session(&p, KH_PORT_PROD);
	assert_non_null(pk);
	import_pair(x, &p, pk, 120, "GV");
	char *pu = kh_test_spki_hex(pk);

	assert_int_equal(KH_CALLF(x, &p, "[AOASYS;SL120;DT;]"), KH_OK);
	assert_string_equal(kh_test_field(x->out, "SG"), ED_SIG);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYV;SL121;DT;SG%s;]", ED_SIG), KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYV;PU%s;DT;SG%s;]", pu, ED_SIG), KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYV;PU%s;DT00;SG%s;]", pu, ED_SIG),
	                 KH_ERR_VERIFY_FAILED);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYV;PU%s;DT;SG%.126s;]", pu, ED_SIG),
	                 KH_ERR_VERIFY_FAILED);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYV;PU%s;DT;SG%s00;]", pu, ED_SIG),
	                 KH_ERR_VERIFY_FAILED);
	/* a longer message, verified by OpenSSL */
	assert_int_equal(KH_CALLF(x, &p, "[AOASYS;SL120;DT%s;]", MSG_HEX), KH_OK);
	assert_int_equal(sg(x, sig, sizeof(sig)), 64);
	EVP_MD_CTX *m = EVP_MD_CTX_new();
	assert_int_equal(EVP_DigestVerifyInit(m, NULL, NULL, NULL, pk), 1);
	assert_int_equal(EVP_DigestVerify(m, sig, 64, msg, sizeof(msg) - 1), 1);
	EVP_MD_CTX_free(m);
	sig[63] ^= 0x80;
	char *s = kh_test_hex(sig, 64);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYV;SL121;DT%s;SG%s;]", MSG_HEX, s),
	                 KH_ERR_VERIFY_FAILED);
	free(s);
	/* pure EdDSA: no hash to choose, no digest to sign */
	assert_int_equal(KH_CALLF(x, &p, "[AOASYS;SL120;HASHA-512;DT;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYS;SL120;HS%064d;]", 0), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYV;SL121;HASHA-256;DT;SG%s;]", ED_SIG),
	                 KH_ERR_BAD_FIELD);
	/* RSAS is for RSA keys */
	assert_int_equal(KH_CALLF(x, &p, "[AORSAS;SL120;DT;]"), KH_ERR_KEY_USAGE);
	free(pu);
	EVP_PKEY_free(pk);
}

static void test_usage(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	EVP_PKEY *ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	uint8_t sig[512];
	kh_test_session(&p, KH_PORT_PROD);
	assert_non_null(ec);
	import_pair(x, &p, rsa2048, 130, "V");
	import_pair(x, &p, ec, 132, "G");

	/* a V-only private key verifies but does not sign */
	assert_int_equal(KH_CALLF(x, &p, "[AOASYS;SL130;DT%s;]", MSG_HEX), KH_ERR_KEY_USAGE);
	size_t n = ossl_sign(rsa2048, EVP_sha256(), RSA_PKCS1_PADDING, 0, msg, sizeof(msg) - 1, sig,
	                     sizeof(sig));
	assert_int_equal(n, 256);
	char *s = kh_test_hex(sig, n);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYV;SL130;DT%s;SG%s;]", MSG_HEX, s), KH_OK);
	free(s);
	/* a G-only private key signs but does not verify */
	assert_int_equal(KH_CALLF(x, &p, "[AOASYS;SL132;DT%s;]", MSG_HEX), KH_OK);
	s = strdup(kh_test_field(x->out, "SG"));
	assert_int_equal(KH_CALLF(x, &p, "[AOASYV;SL132;DT%s;SG%s;]", MSG_HEX, s),
	                 KH_ERR_KEY_USAGE);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYV;SL133;DT%s;SG%s;]", MSG_HEX, s), KH_OK);
	/* RSAS takes RSA keys only; public keys do not sign */
	assert_int_equal(KH_CALLF(x, &p, "[AORSAS;SL132;DT%s;]", MSG_HEX), KH_ERR_KEY_USAGE);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYS;SL133;DT%s;]", MSG_HEX), KH_ERR_KEY_USAGE);
	/* a secret key is not a signature key here */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPGS;CT6;CZGV;SL134;]"), KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYV;SL134;DT%s;SG%s;]", MSG_HEX, s),
	                 KH_ERR_KEY_USAGE);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYS;SL134;DT%s;]", MSG_HEX), KH_ERR_KEY_USAGE);
	/* a clear public key verifies without keys.import_pki */
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNAnonymous;PMkeys;]"), KH_OK);
	char *pu = kh_test_spki_hex(ec);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYV;PU%s;DT%s;SG%s;]", pu, MSG_HEX, s), KH_OK);
	/* ...but not a private key in its place, nor a key named twice */
	char *pv = kh_test_pkcs8_hex(ec);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYV;PU%s;DT%s;SG%s;]", pv, MSG_HEX, s),
	                 KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYV;SL133;PU%s;DT%s;SG%s;]", pu, MSG_HEX, s),
	                 KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYV;DT%s;SG%s;]", MSG_HEX, s), KH_ERR_MISSING_FIELD);
	free(pv);
	free(pu);
	free(s);
	EVP_PKEY_free(ec);
}

/* FIPS mode: no SHA-1 (nor MGF1-SHA-1) in new signatures, SHA-1
 * signatures still verify; RSA keys under 2048 bits do not sign, but
 * those of 1024-2047 bits still verify (SP 800-131A legacy use), smaller
 * ones do not; Ed25519 neither signs nor verifies. */
static void test_fips(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	uint8_t sig[512];
	kh_test_session(&p, KH_PORT_PROD);
	EVP_PKEY *rsa512 = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)512);
	EVP_PKEY *ed = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, ed_sk, sizeof(ed_sk));
	assert_non_null(rsa512);
	assert_non_null(ed);
	import_pair(x, &p, rsa2048, 140, "GV");
	import_pair(x, &p, rsa1024, 142, "GV");
	import_pair(x, &p, rsa512, 144, "GV");
	import_pair(x, &p, ed, 146, "GV");
	/* legacy signatures made before FIPS mode, and an Ed25519 one */
	size_t n1024 = ossl_sign(rsa1024, EVP_sha256(), RSA_PKCS1_PADDING, 0, msg, sizeof(msg) - 1,
	                         sig, sizeof(sig));
	char *s1024 = kh_test_hex(sig, n1024);
	size_t n512 = ossl_sign(rsa512, EVP_sha256(), RSA_PKCS1_PADDING, 0, msg, sizeof(msg) - 1,
	                        sig, sizeof(sig));
	char *s512 = kh_test_hex(sig, n512);
	char *pu1024 = kh_test_spki_hex(rsa1024), *pu512 = kh_test_spki_hex(rsa512);
	char *pued = kh_test_spki_hex(ed);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYV;SL147;DT;SG%s;]", ED_SIG), KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSR;SL143;OPV;DT%s;]", s1024), KH_OK);
	char *rec1024 = kh_test_fx_field(x, "DT");
	assert_int_equal(KH_CALL(x, &x->admin, "[AOSETS;FIY;]"), KH_OK);

	/* RSA 1024-2047: verification only, by slot (public or private key),
	 * clear public key, GPSV and GPSR verify-recover */
	assert_int_equal(KH_CALLF(x, &p, "[AOASYV;SL143;DT%s;SG%s;]", MSG_HEX, s1024), KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYV;SL142;DT%s;SG%s;]", MSG_HEX, s1024), KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYV;PU%s;DT%s;SG%s;]", pu1024, MSG_HEX, s1024),
	                 KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSV;OPV;PU%s;DT%s;SG%s;]", pu1024, MSG_HEX, s1024),
	                 KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSR;SL143;OPV;DT%s;]", s1024), KH_OK);
	assert_string_equal(kh_test_field(x->out, "DT"), rec1024);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYV;SL143;DT00;SG%s;]", s1024), KH_ERR_VERIFY_FAILED);
	/* ...and nothing else: not signing, not encrypting, not a cryptogram */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSV;OPS;SL142;DT%s;]", MSG_HEX), KH_ERR_FIPS);
	assert_non_null(strstr(x->out, "verification only"));
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSR;SL142;OPS;DT00;]"), KH_ERR_FIPS);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPGC;SL143;]"), KH_ERR_FIPS);
	/* under 1024 bits: refused even for verification */
	assert_int_equal(KH_CALLF(x, &p, "[AOASYV;SL145;DT%s;SG%s;]", MSG_HEX, s512), KH_ERR_FIPS);
	assert_non_null(strstr(x->out, "under 1024"));
	assert_int_equal(KH_CALLF(x, &p, "[AOASYV;PU%s;DT%s;SG%s;]", pu512, MSG_HEX, s512),
	                 KH_ERR_FIPS);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSV;OPV;PU%s;DT%s;SG%s;]", pu512, MSG_HEX, s512),
	                 KH_ERR_FIPS);
	/* Ed25519 is not approved: no signature, no verification */
	assert_int_equal(KH_CALLF(x, &p, "[AOASYS;SL146;DT;]"), KH_ERR_FIPS);
	assert_non_null(strstr(x->out, "Ed25519"));
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSV;OPS;SL146;DT;]"), KH_ERR_FIPS);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYV;SL147;DT;SG%s;]", ED_SIG), KH_ERR_FIPS);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYV;PU%s;DT;SG%s;]", pued, ED_SIG), KH_ERR_FIPS);
	assert_non_null(strstr(x->out, "not an approved algorithm"));
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSV;OPV;PU%s;DT;SG%s;]", pued, ED_SIG), KH_ERR_FIPS);
	free(s1024);
	free(s512);
	free(pu1024);
	free(pu512);
	free(pued);
	free(rec1024);
	EVP_PKEY_free(rsa512);
	EVP_PKEY_free(ed);

	assert_int_equal(KH_CALLF(x, &p, "[AOASYS;SL140;HASHA-1;DT%s;]", MSG_HEX), KH_ERR_FIPS);
	assert_non_null(strstr(x->out, "SHA-1"));
	assert_int_equal(KH_CALLF(x, &p, "[AORSAS;SL140;HASHA-1;DT%s;]", MSG_HEX), KH_ERR_FIPS);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYS;SL140;PDPSS;MGSHA-1;DT%s;]", MSG_HEX),
	                 KH_ERR_FIPS);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYS;SL140;DT%s;]", MSG_HEX), KH_OK);
	size_t n = ossl_sign(rsa2048, EVP_sha1(), RSA_PKCS1_PADDING, 0, msg, sizeof(msg) - 1, sig,
	                     sizeof(sig));
	char *s = kh_test_hex(sig, n);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYV;SL141;HASHA-1;DT%s;SG%s;]", MSG_HEX, s), KH_OK);
	free(s);
	assert_int_equal(KH_CALLF(x, &p, "[AOASYS;SL142;DT%s;]", MSG_HEX), KH_ERR_FIPS);
	assert_non_null(strstr(x->out, "2048"));
}

/* GPSV: one front for every key that signs or MACs. */
static void test_gpsv(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	uint8_t sig[512];
	char *sghex, *m = kh_test_hex(msg, sizeof(msg));
	kh_test_session(&p, KH_PORT_PROD);

	/* EC: sign with GPSV, verify with GPSV and with OpenSSL */
	EVP_PKEY *ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	assert_non_null(ec);
	import_pair(x, &p, ec, 300, "GV");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSV;OPS;SL300;HASHA-256;DT%s;]", m), KH_OK);
	size_t n = sg(x, sig, sizeof(sig));
	assert_int_equal(ossl_verify(ec, EVP_sha256(), 0, 0, sig, n, msg, sizeof(msg)), 1);
	sghex = strdup(kh_test_field(x->out, "SG"));
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSV;OPV;SL301;HASHA-256;DT%s;SG%s;]", m, sghex),
	                 KH_OK);
	sghex[4] = sghex[4] == '0' ? '1' : '0';
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSV;OPV;SL301;HASHA-256;DT%s;SG%s;]", m, sghex),
	                 KH_ERR_VERIFY_FAILED);
	free(sghex);
	/* HMAC-SHA256 (RFC 4231 test case 2: key "Jefe") through GPSV */
	assert_int_equal(KH_CALL(x, &p, "[AOGPKA;CLsecret;KTGENERIC;KV4A656665;SL310;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &p,
	                         "[AOGPSV;OPS;SL310;HASHA-256;"
	                         "DT7768617420646F2079612077616E7420666F72206E6F7468696E673F;]"),
	                 KH_OK);
	assert_string_equal(kh_test_field(x->out, "SG"),
	                    "5BDCC146BF60754E6A042426089575C75A003F089D2739839DEC58B964EC3843");
	assert_int_equal(
	    KH_CALL(x, &p,
	            "[AOGPSV;OPV;SL310;HASHA-256;"
	            "DT7768617420646F2079612077616E7420666F72206E6F7468696E673F;"
	            "MC5BDCC146BF60754E6A042426089575C75A003F089D2739839DEC58B964EC3843;]"),
	    KH_OK);
	assert_int_equal(
	    KH_CALL(x, &p,
	            "[AOGPSV;OPV;SL310;HASHA-256;"
	            "DT7768617420646F2079612077616E7420666F72206E6F7468696E673F;"
	            "MC5BDCC146BF60754E6A042426089575C75A003F089D2739839DEC58B964EC3844;]"),
	    KH_ERR_VERIFY_FAILED);
	/* AES-CMAC (RFC 4493 example 2) */
	assert_int_equal(
	    KH_CALL(x, &p,
	            "[AOGPKA;CLsecret;KTAES;KV2B7E151628AED2A6ABF7158809CF4F3C;CZGV;SL311;]"),
	    KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGPSV;OPS;SL311;DT6BC1BEE22E409F96E93D7E117393172A;]"),
	                 KH_OK);
	assert_string_equal(kh_test_field(x->out, "SG"), "070A16B46B4D4144F79BDD9DD04A287C");
	/* usage, direction and key kind */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSV;OPS;SL301;HASHA-256;DT00;]"), KH_ERR_KEY_USAGE);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSV;OPX;SL300;DT00;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSV;SL300;DT00;]"), KH_ERR_MISSING_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;SL312;]"), KH_OK); /* E D only */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSV;OPS;SL312;DT00;]"), KH_ERR_KEY_USAGE);
	EVP_PKEY_free(ec);
	free(m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    KH_FX_TEST(test_rsa, setup),     KH_FX_TEST(test_ecdsa, setup),
	    KH_FX_TEST(test_ed25519, setup), KH_FX_TEST(test_usage, setup),
	    KH_FX_TEST(test_fips, setup),    KH_FX_TEST(test_gpsv, setup),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}

/* The sealed admin channel (RMKX, RMSG) against a client written here with
 * OpenSSL from docs/PROTOCOL.md: the key exchange and its signature (EC and
 * RSA server keys), logins and an FTK component ceremony through RMSG,
 * replayed / reordered / altered frames, state and nesting refusals, the
 * Excrypt port's refusal, and the audit trail of sealed commands. */
#include "kh_testutil.h"
#include "hsm/audit.h"
#include "hsm/remote.h"
#include "common/kh_err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/x509.h>

/* ---- the client side, from the specification -------------------------- */

struct client {
	uint8_t k_c2s[32], k_s2c[32];
	uint64_t tx, rx;
	char alg[8];
};

static void sha256(const uint8_t *m, size_t n, uint8_t out[32])
{
	assert_int_equal(EVP_Digest(m, n, out, NULL, EVP_sha256(), NULL), 1);
}

static void hkdf(const uint8_t z[32], const uint8_t salt[32], const char *info, uint8_t out[32])
{
	EVP_PKEY_CTX *k = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, NULL);
	size_t n = 32;
	assert_non_null(k);
	assert_int_equal(EVP_PKEY_derive_init(k), 1);
	assert_int_equal(EVP_PKEY_CTX_set_hkdf_md(k, EVP_sha256()), 1);
	assert_int_equal(EVP_PKEY_CTX_set1_hkdf_salt(k, salt, 32), 1);
	assert_int_equal(EVP_PKEY_CTX_set1_hkdf_key(k, z, 32), 1);
	assert_int_equal(
	    EVP_PKEY_CTX_add1_hkdf_info(k, (const unsigned char *)info, (int)strlen(info)), 1);
	assert_int_equal(EVP_PKEY_derive(k, out, &n), 1);
	assert_int_equal(n, 32);
	EVP_PKEY_CTX_free(k);
}

static EVP_PKEY *point_key(const uint8_t *pt, size_t n)
{
	EVP_PKEY_CTX *fx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
	EVP_PKEY *pk = NULL;
	uint8_t copy[65];
	char group[] = "P-256";
	assert_int_equal(n, 65);
	memcpy(copy, pt, n);
	OSSL_PARAM prm[] = {OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, group, 0),
	                    OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, copy, n),
	                    OSSL_PARAM_construct_end()};
	assert_int_equal(EVP_PKEY_fromdata_init(fx), 1);
	assert_int_equal(EVP_PKEY_fromdata(fx, &pk, EVP_PKEY_PUBLIC_KEY, prm), 1);
	EVP_PKEY_CTX_free(fx);
	return pk;
}

/* SG over m with SP, as WebCrypto does (ES256: P1363 r||s). */
static bool sig_ok(EVP_PKEY *sp, const char *alg, const uint8_t *m, size_t mlen, const uint8_t *sig,
                   size_t siglen)
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	uint8_t *der = NULL;
	int derlen = 0;
	bool ok;
	if (strcmp(alg, "ES256") == 0) {
		ECDSA_SIG *es = ECDSA_SIG_new();
		assert_int_equal(siglen, 64);
		assert_int_equal(
		    ECDSA_SIG_set0(es, BN_bin2bn(sig, 32, NULL), BN_bin2bn(sig + 32, 32, NULL)), 1);
		derlen = i2d_ECDSA_SIG(es, &der);
		ECDSA_SIG_free(es);
		sig = der;
		siglen = (size_t)derlen;
	}
	assert_int_equal(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, sp), 1);
	ok = EVP_DigestVerify(md, sig, siglen, m, mlen) == 1;
	EVP_MD_CTX_free(md);
	OPENSSL_free(der);
	return ok;
}

/* RMKX on s, checked as a client must: the signature by SP, SP the
 * certificate's key; then the channel's keys. */
static void kx(struct kh_test_fx *x, struct kh_session *s, struct client *cl)
{
	EVP_PKEY *mine = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256"), *theirs, *sp;
	EVP_PKEY_CTX *dx;
	uint8_t cpk[65], spk[65], m[24 + 130], salt[32], z[32], sig[1024], der[8192];
	size_t n = 0, zlen = 32, siglen;
	const uint8_t *p;
	X509 *ce;
	assert_non_null(mine);
	assert_int_equal(EVP_PKEY_get_octet_string_param(mine, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY,
	                                                 cpk, sizeof(cpk), &n),
	                 1);
	char *hex = kh_test_hex(cpk, sizeof(cpk));
	assert_int_equal(KH_CALLF(x, s, "[AORMKX;PK%s;]", hex), KH_OK);
	free(hex);
	assert_string_equal(kh_test_field(x->out, "BB"), "Y");
	snprintf(cl->alg, sizeof(cl->alg), "%s", kh_test_field(x->out, "SA"));
	assert_int_equal(kh_test_unhex(kh_test_field(x->out, "PK"), spk, sizeof(spk)), 65);
	siglen = kh_test_unhex(kh_test_field(x->out, "SG"), sig, sizeof(sig));
	n = kh_test_unhex(kh_test_field(x->out, "SP"), der, sizeof(der));
	p = der;
	assert_non_null(sp = d2i_PUBKEY(NULL, &p, (long)n));
	n = kh_test_unhex(kh_test_field(x->out, "CE"), der, sizeof(der));
	p = der;
	assert_non_null(ce = d2i_X509(NULL, &p, (long)n));
	assert_int_equal(EVP_PKEY_eq(X509_get0_pubkey(ce), sp), 1);

	memcpy(m, "keyhold remote manage v1", 24);
	memcpy(m + 24, cpk, 65);
	memcpy(m + 89, spk, 65);
	assert_true(sig_ok(sp, cl->alg, m, sizeof(m), sig, siglen));
	/* the signature binds both points */
	m[30] ^= 1;
	assert_false(sig_ok(sp, cl->alg, m, sizeof(m), sig, siglen));
	m[30] ^= 1;

	theirs = point_key(spk, 65);
	dx = EVP_PKEY_CTX_new_from_pkey(NULL, mine, NULL);
	assert_int_equal(EVP_PKEY_derive_init(dx), 1);
	assert_int_equal(EVP_PKEY_derive_set_peer(dx, theirs), 1);
	assert_int_equal(EVP_PKEY_derive(dx, z, &zlen), 1);
	assert_int_equal(zlen, 32);
	sha256(m, sizeof(m), salt);
	hkdf(z, salt, "keyhold rm c2s v1", cl->k_c2s);
	hkdf(z, salt, "keyhold rm s2c v1", cl->k_s2c);
	cl->tx = cl->rx = 0;
	EVP_PKEY_CTX_free(dx);
	EVP_PKEY_free(theirs);
	EVP_PKEY_free(mine);
	EVP_PKEY_free(sp);
	X509_free(ce);
}

static void nonce(uint64_t ctr, uint8_t iv[12])
{
	memset(iv, 0, 4);
	for (int i = 0; i < 8; i++)
		iv[4 + i] = (uint8_t)(ctr >> (56 - 8 * i));
}

/* AES-256-GCM with the channel's framing; out gets n + 16 bytes. */
static void seal(const uint8_t key[32], uint64_t ctr, const uint8_t *in, size_t n, uint8_t *out)
{
	EVP_CIPHER_CTX *cx = EVP_CIPHER_CTX_new();
	uint8_t iv[12];
	int len;
	nonce(ctr, iv);
	assert_int_equal(EVP_EncryptInit_ex(cx, EVP_aes_256_gcm(), NULL, key, iv), 1);
	assert_int_equal(EVP_EncryptUpdate(cx, NULL, &len, (const uint8_t *)"RMSG", 4), 1);
	assert_int_equal(EVP_EncryptUpdate(cx, out, &len, in, (int)n), 1);
	assert_int_equal(EVP_EncryptFinal_ex(cx, out + n, &len), 1);
	assert_int_equal(EVP_CIPHER_CTX_ctrl(cx, EVP_CTRL_GCM_GET_TAG, 16, out + n), 1);
	EVP_CIPHER_CTX_free(cx);
}

/* The opened answer (n - 16 bytes into out, NUL-terminated) or false. */
static bool unseal(const uint8_t key[32], uint64_t ctr, const uint8_t *in, size_t n, char *out)
{
	EVP_CIPHER_CTX *cx = EVP_CIPHER_CTX_new();
	uint8_t iv[12];
	int len;
	bool ok;
	assert_true(n >= 16);
	nonce(ctr, iv);
	assert_int_equal(EVP_DecryptInit_ex(cx, EVP_aes_256_gcm(), NULL, key, iv), 1);
	assert_int_equal(EVP_DecryptUpdate(cx, NULL, &len, (const uint8_t *)"RMSG", 4), 1);
	assert_int_equal(EVP_DecryptUpdate(cx, (uint8_t *)out, &len, in, (int)(n - 16)), 1);
	assert_int_equal(
	    EVP_CIPHER_CTX_ctrl(cx, EVP_CTRL_GCM_SET_TAG, 16, (void *)(uintptr_t)(in + n - 16)), 1);
	ok = EVP_DecryptFinal_ex(cx, (uint8_t *)out + n - 16, &len) == 1;
	out[n - 16] = '\0';
	EVP_CIPHER_CTX_free(cx);
	return ok;
}

/* "[AORMSG;CT<hex>;]" for frame sealed under counter ctr (malloc'd). */
static char *rmsg_frame(const struct client *cl, uint64_t ctr, const char *frame)
{
	size_t n = strlen(frame);
	uint8_t *ct = malloc(n + 16);
	char *hex, *req;
	seal(cl->k_c2s, ctr, (const uint8_t *)frame, n, ct);
	hex = kh_test_hex(ct, n + 16);
	req = malloc(strlen(hex) + 32);
	sprintf(req, "[AORMSG;CT%s;]", hex);
	free(hex);
	free(ct);
	return req;
}

static char inner[262144];

/* One sealed round trip: the outer result; on success the inner answer is
 * in `inner`. */
static int rcall(struct kh_test_fx *x, struct kh_session *s, struct client *cl, const char *frame)
{
	char *req = rmsg_frame(cl, cl->tx, frame);
	static uint8_t ct[131072];
	int r = KH_CALL(x, s, req);
	free(req);
	cl->tx++;
	inner[0] = '\0';
	if (r != KH_OK)
		return r;
	assert_string_equal(kh_test_field(x->out, "BB"), "Y");
	size_t n = kh_test_unhex(kh_test_field(x->out, "CT"), ct, sizeof(ct));
	assert_true(unseal(cl->k_s2c, cl->rx, ct, n, inner));
	cl->rx++;
	return r;
}

/* An inner answer's field (copy in a static buffer). */
static const char *ifield(const char *tag)
{
	return kh_test_field(inner, tag);
}

/* ---- fixtures ------------------------------------------------------------ */

/* The HSM's CA and server certificate of type kt (TCAG + TSRV). */
static void tls_setup(struct kh_test_fx *x, const char *kt)
{
	char *cn = kh_test_hexs("Keyhold Test CA"), *scn = kh_test_hexs("hsm.local");
	assert_int_equal(KH_CALLF(x, &x->admin, "[AOTCAG;KT%s;CN%s;]", kt, cn), KH_OK);
	assert_int_equal(KH_CALLF(x, &x->admin, "[AOTSRV;CN%s;]", scn), KH_OK);
	free(cn);
	free(scn);
}

static int setup_ec(void **state)
{
	kh_test_fx_setup_pmk(state);
	tls_setup(*state, "EC");
	return 0;
}

static int setup_rsa(void **state)
{
	kh_test_fx_setup_pmk(state);
	tls_setup(*state, "RSA");
	return 0;
}

/* ---- tests --------------------------------------------------------------- */

static void kx_and_echo(struct kh_test_fx *x, const char *alg)
{
	struct kh_session s;
	struct client cl;
	kh_test_session(&s, KH_PORT_ADMIN);
	kx(x, &s, &cl);
	assert_string_equal(cl.alg, alg);
	assert_int_equal(rcall(x, &s, &cl, "[AOECHO;AGsealed;]"), KH_OK);
	assert_string_equal(ifield("AG"), "sealed");
	assert_non_null(strstr(inner, "[AOECHO;"));
	/* an inner refusal comes back sealed, and the channel stays */
	assert_int_equal(rcall(x, &s, &cl, "[AOMKST;]"), KH_OK);
	assert_non_null(strstr(inner, "[AOERRO;CMMKST;"));
	assert_int_equal(rcall(x, &s, &cl, "[AOECHO;AGagain;]"), KH_OK);
	assert_string_equal(ifield("AG"), "again");
	kh_remote_end(&s);
	assert_null(s.remote);
}

static void test_kx_ec(void **state)
{
	kx_and_echo(*state, "ES256");
}

static void test_kx_rsa(void **state)
{
	kx_and_echo(*state, "RS256");
}

static void test_kx_bad_point(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session s;
	char pk[131];
	kh_test_session(&s, KH_PORT_ADMIN);
	assert_int_equal(KH_CALL(x, &s, "[AORMKX;]"), KH_ERR_MISSING_FIELD);
	/* the right length, not on the curve */
	memset(pk, '1', 130);
	pk[0] = '0';
	pk[1] = '4';
	pk[130] = '\0';
	assert_int_equal(KH_CALLF(x, &s, "[AORMKX;PK%s;]", pk), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &s, "[AORMKX;PK04AB;]"), KH_ERR_BAD_FIELD);
	assert_null(s.remote);
}

static void test_no_server_key(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session s;
	struct client cl;
	(void)cl;
	kh_test_session(&s, KH_PORT_ADMIN);
	EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	uint8_t pk[65];
	size_t n;
	assert_int_equal(EVP_PKEY_get_octet_string_param(k, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, pk,
	                                                 sizeof(pk), &n),
	                 1);
	char *hex = kh_test_hex(pk, n);
	assert_int_equal(KH_CALLF(x, &s, "[AORMKX;PK%s;]", hex), KH_ERR_STATE);
	free(hex);
	EVP_PKEY_free(k);
	assert_null(s.remote);
}

static void test_state_and_port(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session s, p;
	struct client cl;
	kh_test_session(&s, KH_PORT_ADMIN);
	assert_int_equal(KH_CALL(x, &s, "[AORMSG;CT00000000000000000000000000000000;]"),
	                 KH_ERR_STATE);
	/* the Excrypt port knows neither command */
	kh_test_session(&p, KH_PORT_PROD);
	assert_int_equal(KH_CALL(x, &p, "[AORMKX;PK04;]"), KH_ERR_COMMAND_NOT_ALLOWED);
	assert_int_equal(KH_CALL(x, &p, "[AORMSG;CT00;]"), KH_ERR_COMMAND_NOT_ALLOWED);
	kx(x, &s, &cl);
	/* a channel on an Admin session does not make one on another */
	assert_int_equal(KH_CALL(x, &p, "[AORMSG;CT00;]"), KH_ERR_COMMAND_NOT_ALLOWED);
	kh_remote_end(&s);
}

/* The expected failure: DECRYPT_FAILED, then the channel is gone. */
static void assert_closed(struct kh_test_fx *x, struct kh_session *s, struct client *cl, int r)
{
	assert_int_equal(r, KH_ERR_DECRYPT_FAILED);
	assert_null(s->remote);
	assert_non_null(strstr(x->out, "[AOERRO;CMRMSG;"));
	/* even the frame that was next in line is refused now */
	assert_int_equal(rcall(x, s, cl, "[AOECHO;]"), KH_ERR_STATE);
}

static void test_replay_reorder_alter(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session s;
	struct client cl;
	char *f0, *f1;
	kh_test_session(&s, KH_PORT_ADMIN);

	/* replay */
	kx(x, &s, &cl);
	f0 = rmsg_frame(&cl, 0, "[AOECHO;AGone;]");
	assert_int_equal(KH_CALL(x, &s, f0), KH_OK);
	cl.tx = 1;
	assert_closed(x, &s, &cl, KH_CALL(x, &s, f0));
	free(f0);

	/* reorder */
	kx(x, &s, &cl);
	f1 = rmsg_frame(&cl, 1, "[AOECHO;AGtwo;]");
	assert_closed(x, &s, &cl, KH_CALL(x, &s, f1));
	free(f1);

	/* altered: one bit of the ciphertext, of the tag; truncated; not hex;
	 * under the other direction's key; missing */
	const char *how[] = {"body", "tag", "short", "nothex", "s2c", "missing"};
	for (size_t i = 0; i < sizeof(how) / sizeof(how[0]); i++) {
		kx(x, &s, &cl);
		assert_int_equal(rcall(x, &s, &cl, "[AOECHO;]"), KH_OK);
		char *f = rmsg_frame(&cl, 1, "[AOECHO;AGthree;]");
		char *ct = strstr(f, ";CT") + 3;
		size_t len = strlen(ct) - 2;
		if (strcmp(how[i], "body") == 0) {
			ct[0] = ct[0] == '0' ? '1' : '0';
		} else if (strcmp(how[i], "tag") == 0) {
			ct[len - 1] = ct[len - 1] == '0' ? '1' : '0';
		} else if (strcmp(how[i], "short") == 0) {
			memmove(ct + len - 4, ct + len, 3);
		} else if (strcmp(how[i], "nothex") == 0) {
			ct[2] = 'Z';
		} else if (strcmp(how[i], "s2c") == 0) {
			struct client other = cl;
			memcpy(other.k_c2s, cl.k_s2c, 32);
			free(f);
			f = rmsg_frame(&other, 1, "[AOECHO;AGthree;]");
		} else {
			free(f);
			f = strdup("[AORMSG;]");
		}
		assert_closed(x, &s, &cl, KH_CALL(x, &s, f));
		free(f);
	}
	/* a new exchange works again */
	kx(x, &s, &cl);
	assert_int_equal(rcall(x, &s, &cl, "[AOECHO;AGback;]"), KH_OK);
	assert_string_equal(ifield("AG"), "back");
	kh_remote_end(&s);
}

static void test_replace(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session s;
	struct client a, b;
	kh_test_session(&s, KH_PORT_ADMIN);
	kx(x, &s, &a);
	assert_int_equal(rcall(x, &s, &a, "[AOECHO;]"), KH_OK);
	assert_int_equal(rcall(x, &s, &a, "[AOECHO;]"), KH_OK);
	kx(x, &s, &b); /* counters restart at 0 under new keys */
	assert_int_equal(rcall(x, &s, &b, "[AOECHO;AGnew;]"), KH_OK);
	assert_string_equal(ifield("AG"), "new");
	/* the old keys no longer open anything */
	assert_closed(x, &s, &a, rcall(x, &s, &a, "[AOECHO;]"));
	kh_remote_end(&s);
}

static void test_nested(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session s;
	struct client cl;
	kh_test_session(&s, KH_PORT_ADMIN);
	kx(x, &s, &cl);
	assert_int_equal(rcall(x, &s, &cl, "[AORMKX;PK04;]"), KH_OK);
	assert_non_null(strstr(inner, "[AOERRO;CMRMKX;"));
	assert_int_equal(atoi(kh_test_field(inner, "EC")), kh_err_to_wire(KH_ERR_BAD_FIELD));
	assert_int_equal(rcall(x, &s, &cl, "[AORMSG;CT00;]"), KH_OK);
	assert_non_null(strstr(inner, "[AOERRO;CMRMSG;"));
	assert_int_equal(atoi(kh_test_field(inner, "EC")), kh_err_to_wire(KH_ERR_BAD_FIELD));
	/* an unknown command is the inner dispatcher's refusal */
	assert_int_equal(rcall(x, &s, &cl, "[AOLONG;]"), KH_OK);
	assert_int_equal(atoi(kh_test_field(inner, "EC")), kh_err_to_wire(KH_ERR_UNKNOWN_COMMAND));
	/* not one whole frame, and the pre-login limits */
	assert_int_equal(rcall(x, &s, &cl, "[AOECHO;][AOECHO;]"), KH_OK);
	assert_non_null(strstr(inner, "[AOERRO;"));
	assert_int_equal(atoi(kh_test_field(inner, "EC")), kh_err_to_wire(KH_ERR_MALFORMED));
	assert_int_equal(rcall(x, &s, &cl, "AOECHO;]"), KH_OK);
	assert_int_equal(atoi(kh_test_field(inner, "EC")), kh_err_to_wire(KH_ERR_MALFORMED));
	char *big = malloc(5000);
	memset(big, 'A', 4999);
	big[4999] = '\0';
	memcpy(big, "[AOECHO;AG", 10);
	memcpy(big + 4997, ";]", 2);
	assert_int_equal(rcall(x, &s, &cl, big), KH_OK);
	assert_int_equal(atoi(kh_test_field(inner, "EC")), kh_err_to_wire(KH_ERR_TOO_LARGE));
	free(big);
	assert_int_equal(
	    rcall(x, &s, &cl, "[AOECHO;A1;A2;A3;A4;A5;A6;A7;A8;A9;B1;B2;B3;B4;B5;B6;B7;B8;]"),
	    KH_OK);
	assert_int_equal(atoi(kh_test_field(inner, "EC")), kh_err_to_wire(KH_ERR_TOO_LARGE));
	/* still in step */
	assert_int_equal(rcall(x, &s, &cl, "[AOECHO;AGok;]"), KH_OK);
	assert_string_equal(ifield("AG"), "ok");
	kh_remote_end(&s);
}

struct audit_find {
	int sealed_logins, components, opens;
};

static int audit_visit(void *arg, const struct kh_audit_entry *e)
{
	struct audit_find *f = arg;
	if (strcmp(e->event, "login") == 0 && strstr(e->detail, "(sealed)") &&
	    (strcmp(e->actor, "Admin1") == 0 || strcmp(e->actor, "Admin2") == 0))
		f->sealed_logins++;
	if (strcmp(e->event, "majorkey.component") == 0 && strcmp(e->actor, "Admin1+Admin2") == 0)
		f->components++;
	if (strcmp(e->event, "remote.open") == 0)
		f->opens++;
	return KH_OK;
}

/* Two administrators log in, read MKST, and load the FTK from two
 * components, all sealed; the result is what the components make. */
static void test_ceremony(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session s;
	struct client cl;
	char req[512], *pw1 = kh_test_hexs(KH_TEST_ADMIN1_PW),
	               *pw2 = kh_test_hexs(KH_TEST_ADMIN2_PW);
	static const char *const comps[2] = {
	    "00112233445566778899AABBCCDDEEFF00112233445566778899AABBCCDDEEFF",
	    "0F1E2D3C4B5A69788796A5B4C3D2E1F00F1E2D3C4B5A69788796A5B4C3D2E1F0"};
	char kv[32] = "";

	kh_test_session(&s, KH_PORT_ADMIN);
	kx(x, &s, &cl);
	snprintf(req, sizeof(req), "[AOLOGN;IDAdmin1;PW%s;]", pw1);
	assert_int_equal(rcall(x, &s, &cl, req), KH_OK);
	assert_non_null(strstr(inner, "[AOLOGN;BBY;"));
	assert_string_equal(ifield("AC"), "N");
	snprintf(req, sizeof(req), "[AOLOGN;IDAdmin2;PW%s;]", pw2);
	assert_int_equal(rcall(x, &s, &cl, req), KH_OK);
	assert_string_equal(ifield("AC"), "Y");
	/* the logins belong to this connection: the session itself is active */
	assert_true(s.active);
	assert_int_equal(s.nident, 2);

	assert_int_equal(rcall(x, &s, &cl, "[AOMKST;]"), KH_OK);
	assert_string_equal(ifield("FT"), "N");
	assert_int_equal(rcall(x, &s, &cl, "[AOMKLB;KNFTK;MOC;ALAES;KL256;NP2;]"), KH_OK);
	assert_non_null(strstr(inner, "[AOMKLB;BBY;"));
	assert_non_null(s.ceremony);
	for (int i = 0; i < 2; i++) {
		snprintf(req, sizeof(req), "[AOMKLC;CM%s;]", comps[i]);
		assert_int_equal(rcall(x, &s, &cl, req), KH_OK);
		assert_non_null(strstr(inner, "[AOMKLC;BBY;"));
		assert_int_equal(strlen(ifield("AE")), 6);
		if (i == 1)
			snprintf(kv, sizeof(kv), "%s", ifield("KV"));
	}
	assert_int_equal(strlen(kv), 6);
	/* the FTK is loaded: another (plain) session sees its check value */
	assert_int_equal(KH_CALL(x, &x->admin, "[AOMKST;]"), KH_OK);
	snprintf(req, sizeof(req), "Y/AES-256/%s", kv);
	assert_string_equal(kh_test_field(x->out, "FT"), req);
	/* the audit trail: sealed logins with their identities, the ceremony
	 * under both, the channel's opening */
	struct audit_find f = {0};
	uint64_t next;
	assert_int_equal(kh_audit_read(&x->hsm, 1, 500, audit_visit, &f, &next), KH_OK);
	assert_int_equal(f.sealed_logins, 2);
	assert_int_equal(f.components, 2);
	assert_int_equal(f.opens, 1);
	/* LOGO through the channel ends the logins of this connection */
	assert_int_equal(rcall(x, &s, &cl, "[AOLOGO;]"), KH_OK);
	assert_int_equal(s.nident, 0);
	kh_remote_end(&s);
	free(pw1);
	free(pw2);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    KH_FX_TEST(test_kx_ec, setup_ec),
	    KH_FX_TEST(test_kx_rsa, setup_rsa),
	    KH_FX_TEST(test_kx_bad_point, setup_ec),
	    KH_FX_TEST(test_no_server_key, kh_test_fx_setup_admin),
	    KH_FX_TEST(test_state_and_port, setup_ec),
	    KH_FX_TEST(test_replay_reorder_alter, setup_ec),
	    KH_FX_TEST(test_replace, setup_ec),
	    KH_FX_TEST(test_nested, setup_ec),
	    KH_FX_TEST(test_ceremony, setup_ec),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * libFuzzer target for the sealed admin channel (RMKX, RMSG) through the
 * real dispatcher on a real device with an EC TLS server key. The first
 * input byte picks the path:
 *   0: the rest, as hex, is an RMSG's CT: garbage never opens, so the
 *      answer is DECRYPT_FAILED and the channel is closed;
 *   1: the rest is sealed by the harness (a client written from
 *      docs/PROTOCOL.md) as the inner frame: it must open, run, and come
 *      back sealed under the next counter as exactly one frame;
 *   2: the rest is the field text of an outer RMKX or RMSG.
 * The session stays logged out, so inner frames reach the session commands
 * and ECHO (the Admin port's rights before login) and every refusal.
 */
#include "hsm/dispatch.h"
#include "hsm/hsm_core.h"
#include "hsm/majorkey.h"
#include "hsm/remote.h"
#include "common/kh_buf.h"
#include "common/kh_err.h"
#include "common/kh_frame.h"
#include "common/kh_mem.h"

#include "fuzz_check.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>

static struct kh_hsm hsm;
static struct kh_session admin, sess;
static struct kh_buf *out;
static char dir[] = "/tmp/kh-fuzz-remote-XXXXXX";

/* the harness's end of the channel */
static uint8_t k_c2s[32], k_s2c[32];
static uint64_t tx, rx;

static void cleanup(void)
{
	fuzz_remove_tree(dir);
}

static int call_on(struct kh_session *s, const char *text, size_t n)
{
	struct kh_frame f;
	kh_buf_reset(out);
	if (kh_frame_parse((const uint8_t *)text, n, KH_FIELDS_MAX, &f) != KH_OK)
		return KH_ERR_MALFORMED;
	return kh_dispatch(&hsm, s, &f, out);
}

/* The value of tag in the last answer, decoded into b (at most max). */
static size_t answer_hex(const char *tag, uint8_t *b, size_t max)
{
	struct kh_frame f;
	const struct kh_field *fl;
	int r;
	CHECK(kh_frame_parse(kh_buf_ptr(out), kh_buf_len(out), KH_FIELDS_MAX, &f) == KH_OK);
	CHECK((fl = kh_frame_get(&f, tag)) != NULL);
	r = kh_hex_decode(fl->val, fl->len, b, max);
	CHECK(r >= 0);
	return (size_t)r;
}

static void hkdf(const uint8_t *z, const uint8_t *salt, const char *info, uint8_t *o)
{
	EVP_PKEY_CTX *k = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, NULL);
	size_t n = 32;
	CHECK(k && EVP_PKEY_derive_init(k) == 1 && EVP_PKEY_CTX_set_hkdf_md(k, EVP_sha256()) == 1 &&
	      EVP_PKEY_CTX_set1_hkdf_salt(k, salt, 32) == 1 &&
	      EVP_PKEY_CTX_set1_hkdf_key(k, z, 32) == 1 &&
	      EVP_PKEY_CTX_add1_hkdf_info(k, (const unsigned char *)info, (int)strlen(info)) == 1 &&
	      EVP_PKEY_derive(k, o, &n) == 1);
	EVP_PKEY_CTX_free(k);
}

/* A fresh channel on sess (the signature is the unit test's business). */
static void kx(void)
{
	static EVP_PKEY *mine; /* one client key: the HSM's side is fresh each time */
	uint8_t cpk[65], spk[65], m[24 + 130], salt[32], z[32];
	char req[200];
	size_t n = 0, zlen = 32;
	if (mine == NULL)
		CHECK((mine = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256")) != NULL);
	CHECK(EVP_PKEY_get_octet_string_param(mine, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, cpk,
	                                      sizeof(cpk), &n) == 1);
	memcpy(req, "[AORMKX;PK", 10);
	kh_hex_encode(cpk, 65, req + 10);
	memcpy(req + 140, ";]", 3);
	CHECK(call_on(&sess, req, 142) == KH_OK);
	CHECK(answer_hex("PK", spk, sizeof(spk)) == 65);

	char group[] = "P-256";
	OSSL_PARAM prm[] = {OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, group, 0),
	                    OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, spk, 65),
	                    OSSL_PARAM_construct_end()};
	EVP_PKEY_CTX *fx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL), *dx;
	EVP_PKEY *theirs = NULL;
	CHECK(fx && EVP_PKEY_fromdata_init(fx) == 1 &&
	      EVP_PKEY_fromdata(fx, &theirs, EVP_PKEY_PUBLIC_KEY, prm) == 1);
	dx = EVP_PKEY_CTX_new_from_pkey(NULL, mine, NULL);
	CHECK(dx && EVP_PKEY_derive_init(dx) == 1 && EVP_PKEY_derive_set_peer(dx, theirs) == 1 &&
	      EVP_PKEY_derive(dx, z, &zlen) == 1 && zlen == 32);
	memcpy(m, KH_RM_LABEL, 24);
	memcpy(m + 24, cpk, 65);
	memcpy(m + 89, spk, 65);
	CHECK(EVP_Digest(m, sizeof(m), salt, NULL, EVP_sha256(), NULL) == 1);
	hkdf(z, salt, KH_RM_INFO_C2S, k_c2s);
	hkdf(z, salt, KH_RM_INFO_S2C, k_s2c);
	tx = rx = 0;
	EVP_PKEY_CTX_free(dx);
	EVP_PKEY_CTX_free(fx);
	EVP_PKEY_free(theirs);
	CHECK(sess.remote != NULL);
}

static bool gcm(bool enc, const uint8_t *key, uint64_t ctr, const uint8_t *in, size_t n, uint8_t *o)
{
	EVP_CIPHER_CTX *cx = EVP_CIPHER_CTX_new();
	uint8_t iv[12] = {0}, tag[16];
	size_t body = enc ? n : n - 16;
	int len;
	bool ok;
	for (int i = 0; i < 8; i++)
		iv[4 + i] = (uint8_t)(ctr >> (56 - 8 * i));
	CHECK(cx && EVP_CipherInit_ex(cx, EVP_aes_256_gcm(), NULL, key, iv, enc) == 1 &&
	      EVP_CipherUpdate(cx, NULL, &len, (const uint8_t *)"RMSG", 4) == 1);
	CHECK(body == 0 || EVP_CipherUpdate(cx, o, &len, in, (int)body) == 1);
	if (!enc) {
		memcpy(tag, in + body, 16);
		CHECK(EVP_CIPHER_CTX_ctrl(cx, EVP_CTRL_GCM_SET_TAG, 16, tag) == 1);
	}
	ok = EVP_CipherFinal_ex(cx, o + body, &len) == 1;
	if (enc)
		CHECK(ok && EVP_CIPHER_CTX_ctrl(cx, EVP_CTRL_GCM_GET_TAG, 16, o + body) == 1);
	EVP_CIPHER_CTX_free(cx);
	return ok;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	static const uint8_t pmk[32] = {0x42, 7, 7, 7};
	(void)argc;
	(void)argv;
	if (mkdtemp(dir) == NULL)
		abort();
	atexit(cleanup);
	if (kh_hsm_open(&hsm, dir, true) != KH_OK ||
	    kh_mk_load(&hsm, KH_MK_PMK, pmk, sizeof(pmk), "fuzz", "mk.load", "fuzz", NULL) != KH_OK)
		abort();
	if ((out = kh_buf_new(KH_FRAME_MAX + 4096)) == NULL)
		abort();
	/* an administrator session that stands for two logins, to set up TLS */
	memset(&admin, 0, sizeof(admin));
	admin.port = KH_PORT_ADMIN;
	admin.source = KH_SRC_ETHERNET;
	admin.nident = 2;
	snprintf(admin.ident[0], KH_NAME_MAX, "Admin1");
	snprintf(admin.ident[1], KH_NAME_MAX, "Admin2");
	admin.role.perms = ~0ULL;
	admin.role.logins_required = 2;
	admin.role.ports = KH_PORT_ADMIN;
	snprintf(admin.role.name, sizeof(admin.role.name), "Administrator");
	admin.active = true;
	admin.role_gen = atomic_load(&hsm.role_gen);
	static const char tcag[] = "[AOTCAG;KTEC;CN4B4846;]", tsrv[] = "[AOTSRV;CN4B4846;]";
	if (call_on(&admin, tcag, sizeof(tcag) - 1) != KH_OK ||
	    call_on(&admin, tsrv, sizeof(tsrv) - 1) != KH_OK)
		abort();
	memset(&sess, 0, sizeof(sess));
	sess.port = KH_PORT_ADMIN;
	sess.source = KH_SRC_ETHERNET;
	snprintf(sess.peer, sizeof(sess.peer), "fuzz");
	return 0;
}

/* The answer is exactly one well-formed frame: cmd's or ERRO. */
static void check_one(const char *cmd, struct kh_frame *f)
{
	size_t flen = 0;
	CHECK(kh_frame_find(kh_buf_ptr(out), kh_buf_len(out), KH_FRAME_MAX * 2 + 64, &flen) == 1);
	CHECK(flen == kh_buf_len(out));
	CHECK(kh_frame_parse(kh_buf_ptr(out), flen, KH_FIELDS_MAX, f) == KH_OK);
	CHECK(strcmp(f->cmd, cmd) == 0 || strcmp(f->cmd, "ERRO") == 0);
}

static void garbage(const uint8_t *d, size_t n)
{
	char *req = malloc(2 * n + 16);
	struct kh_frame f;
	CHECK(req != NULL);
	memcpy(req, "[AORMSG;CT", 10);
	kh_hex_encode(d, n, req + 10);
	memcpy(req + 10 + 2 * n, ";]", 3);
	int r = call_on(&sess, req, 12 + 2 * n);
	check_one("RMSG", &f);
	/* 2^-128 aside, made-up bytes never open */
	CHECK(r == KH_ERR_DECRYPT_FAILED);
	CHECK(sess.remote == NULL);
	free(req);
}

static void sealed(const uint8_t *d, size_t n)
{
	uint8_t *ct = malloc(n + 16), *back;
	char *req = malloc(2 * n + 48);
	struct kh_frame f;
	size_t m;
	CHECK(ct && req);
	CHECK(gcm(true, k_c2s, tx, d, n, ct));
	memcpy(req, "[AORMSG;CT", 10);
	kh_hex_encode(ct, n + 16, req + 10);
	memcpy(req + 10 + 2 * (n + 16), ";]", 3);
	int r = call_on(&sess, req, 12 + 2 * (n + 16));
	tx++;
	check_one("RMSG", &f);
	/* a frame that opens is answered, sealed, whatever it holds */
	CHECK(r == KH_OK && sess.remote != NULL);
	back = malloc(KH_FRAME_MAX);
	CHECK(back != NULL);
	m = answer_hex("CT", back, KH_FRAME_MAX);
	CHECK(m >= 16);
	uint8_t *pt = malloc(m);
	CHECK(pt != NULL);
	CHECK(gcm(false, k_s2c, rx, back, m, pt));
	rx++;
	size_t flen = 0;
	CHECK(kh_frame_find(pt, m - 16, KH_FRAME_MAX, &flen) == 1 && flen == m - 16);
	CHECK(kh_frame_parse(pt, flen, KH_FIELDS_MAX, &f) == KH_OK);
	free(pt);
	free(back);
	free(ct);
	free(req);
}

static void outer(const char *cmd, const uint8_t *d, size_t n)
{
	char *text = malloc(n + 16);
	struct kh_frame f;
	CHECK(text != NULL);
	int k = snprintf(text, n + 16, "[AO%s;", cmd);
	memcpy(text + k, d, n);
	text[(size_t)k + n] = ']';
	if (kh_frame_parse((const uint8_t *)text, (size_t)k + n + 1, KH_FIELDS_MAX, &f) == KH_OK) {
		kh_buf_reset(out);
		(void)kh_dispatch(&hsm, &sess, &f, out);
		check_one(cmd, &f);
	}
	free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0 || size > 8192)
		return 0;
	switch (data[0] % 3) {
	case 0:
		if (sess.remote == NULL)
			kx();
		garbage(data + 1, size - 1);
		break;
	case 1:
		if (sess.remote == NULL)
			kx();
		sealed(data + 1, size - 1);
		break;
	default:
		outer(data[0] & 0x80 ? "RMSG" : "RMKX", data + 1, size - 1);
		/* an RMKX that took replaced the channel with keys only the HSM
		 * knows: start the next sealed input afresh */
		if (!(data[0] & 0x80))
			kh_remote_end(&sess);
		break;
	}
	if (sess.hangup) {
		/* the server would close the connection now: a new one */
		kh_remote_end(&sess);
		memset(&sess, 0, sizeof(sess));
		sess.port = KH_PORT_ADMIN;
		sess.source = KH_SRC_ETHERNET;
		snprintf(sess.peer, sizeof(sess.peer), "fuzz");
	}
	/* logins made through the channel do not pile up between inputs */
	if (sess.nident > 0) {
		static const char logo[] = "[AOLOGO;]";
		KH_IGNORE(call_on(&sess, logo, sizeof(logo) - 1));
	}
	return 0;
}

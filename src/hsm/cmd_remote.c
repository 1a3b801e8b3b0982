/*
 * RMKX and RMSG: the sealed admin channel (remote.h). RMKX answers a
 * client's ephemeral P-256 point with the HSM's own, signed by the TLS
 * server key; RMSG opens one sealed Excrypt frame, runs it through the
 * dispatcher as if it had arrived on this connection, and seals the answer.
 * A frame that does not open with the expected counter closes the channel:
 * nothing is dispatched and the keys are wiped. Channel keys live on the
 * secure heap; plaintext frames only in wiped buffers; neither is logged.
 */
#include "hsm/cmds.h"
#include "hsm/audit.h"
#include "hsm/dispatch.h"
#include "hsm/remote.h"
#include "hsm/tls.h"
#include "common/kh_buf.h"
#include "common/kh_mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#define LABEL_LEN (sizeof(KH_RM_LABEL) - 1)
#define MSG_LEN (LABEL_LEN + 2 * KH_RM_POINT_LEN)
#define ES256_HALF 32
/* An inner answer must still fit the connection's output once sealed and
 * written as hex inside [AORMSG;BBY;CT...;]. */
#define INNER_OUT_MAX ((KH_FRAME_MAX - 64) / 2 - KH_RM_TAG_LEN)

/* One connection's channel, all of it on the secure heap. */
struct kh_remote {
	uint8_t k_c2s[KH_RM_KEY_LEN];
	uint8_t k_s2c[KH_RM_KEY_LEN];
	uint64_t rx; /* counter the next RMSG must carry */
	uint64_t tx; /* counter of the next answer */
	bool busy;   /* an inner frame is being dispatched */
};

void kh_remote_end(struct kh_session *s)
{
	kh_secure_free(s->remote, sizeof(*s->remote));
	s->remote = NULL;
}

/* ---- key exchange ---------------------------------------------------------- */

/* The client's point as a P-256 public key; NULL if it is not on the curve. */
static EVP_PKEY *peer_key(const uint8_t pt[static KH_RM_POINT_LEN])
{
	EVP_PKEY_CTX *fx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
	EVP_PKEY *pk = NULL;
	OSSL_PARAM prm[] = {
	    OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)"P-256", 0),
	    OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, (void *)(uintptr_t)pt,
	                                      KH_RM_POINT_LEN),
	    OSSL_PARAM_construct_end(),
	};
	if (fx == NULL || EVP_PKEY_fromdata_init(fx) != 1 ||
	    EVP_PKEY_fromdata(fx, &pk, EVP_PKEY_PUBLIC_KEY, prm) != 1) {
		EVP_PKEY_free(pk);
		pk = NULL;
	}
	EVP_PKEY_CTX_free(fx);
	return pk;
}

/* Z, the x-coordinate of the shared point, into z (32 bytes). The peer is
 * validated (on the curve, not the identity) by OpenSSL's public-key check. */
static int ecdh(EVP_PKEY *mine, EVP_PKEY *peer, uint8_t z[static KH_RM_KEY_LEN])
{
	EVP_PKEY_CTX *dx = EVP_PKEY_CTX_new_from_pkey(NULL, mine, NULL);
	size_t zlen = KH_RM_KEY_LEN;
	int r = KH_ERR_CRYPTO;
	if (dx != NULL && EVP_PKEY_derive_init(dx) == 1 &&
	    EVP_PKEY_derive_set_peer_ex(dx, peer, 1) == 1 && EVP_PKEY_derive(dx, z, &zlen) == 1 &&
	    zlen == KH_RM_KEY_LEN)
		r = KH_OK;
	EVP_PKEY_CTX_free(dx);
	return r;
}

static int hkdf(const uint8_t *z, const uint8_t salt[static 32], const char *info,
                uint8_t out[static KH_RM_KEY_LEN])
{
	EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
	EVP_KDF_CTX *kx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
	OSSL_PARAM prm[] = {
	    OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0),
	    OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)(uintptr_t)z,
	                                      KH_RM_KEY_LEN),
	    OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)(uintptr_t)salt, 32),
	    OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)(uintptr_t)info,
	                                      strlen(info)),
	    OSSL_PARAM_construct_end(),
	};
	int r = kx && EVP_KDF_derive(kx, out, KH_RM_KEY_LEN, prm) == 1 ? KH_OK : KH_ERR_CRYPTO;
	EVP_KDF_CTX_free(kx);
	EVP_KDF_free(kdf);
	return r;
}

/* "ES256" or "RS256" for the server key; NULL for a key WebCrypto cannot
 * check with those (an EC key on another curve, Ed25519). */
static const char *sig_alg(EVP_PKEY *key)
{
	char group[32];
	if (EVP_PKEY_get_base_id(key) == EVP_PKEY_RSA)
		return "RS256";
	if (EVP_PKEY_get_base_id(key) == EVP_PKEY_EC &&
	    EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
	                                   NULL) == 1 &&
	    strcmp(group, "prime256v1") == 0)
		return "ES256";
	return NULL;
}

/* SHA-256 signature of m by key; an ECDSA signature in WebCrypto's form
 * (IEEE P1363: r || s, 32 bytes each). sig holds at least EVP_PKEY_get_size. */
static int sign_msg(EVP_PKEY *key, bool ec, const uint8_t *m, size_t mlen, uint8_t *sig,
                    size_t *siglen)
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	ECDSA_SIG *es = NULL;
	int r = KH_ERR_CRYPTO;

	if (md == NULL || EVP_DigestSignInit_ex(md, NULL, "SHA256", NULL, NULL, key, NULL) != 1 ||
	    EVP_DigestSign(md, sig, siglen, m, mlen) != 1)
		goto out;
	if (ec) {
		const unsigned char *p = sig;
		const BIGNUM *er, *esv;
		if ((es = d2i_ECDSA_SIG(NULL, &p, (long)*siglen)) == NULL)
			goto out;
		ECDSA_SIG_get0(es, &er, &esv);
		if (BN_bn2binpad(er, sig, ES256_HALF) != ES256_HALF ||
		    BN_bn2binpad(esv, sig + ES256_HALF, ES256_HALF) != ES256_HALF)
			goto out;
		*siglen = 2 * ES256_HALF;
	}
	r = KH_OK;
out:
	ECDSA_SIG_free(es);
	EVP_MD_CTX_free(md);
	return r;
}

/* The server key's SubjectPublicKeyInfo or the certificate, DER, as a hex field. */
static int put_der(struct kh_buf *resp, const char *tag, EVP_PKEY *key, X509 *cert)
{
	uint8_t *der = NULL;
	int len = key ? i2d_PUBKEY(key, &der) : i2d_X509(cert, &der);
	int r = len > 0 ? kh_msg_put_hex(resp, tag, der, (size_t)len) : KH_ERR_CRYPTO;
	OPENSSL_free(der);
	return r;
}

KH_ACT(kh_cmd_rmkx)
{
	uint8_t cpk[KH_RM_POINT_LEN], spk[KH_RM_POINT_LEN], msg[MSG_LEN], salt[32];
	uint8_t *z = NULL, *sig = NULL;
	size_t n = 0, spklen = 0, siglen = 0;
	struct kh_remote *ch = NULL;
	enum kh_tls_mode mode;
	SSL_CTX *ctx = NULL;
	EVP_PKEY *peer = NULL, *mine = NULL, *skey;
	X509 *cert;
	const char *alg;
	char actor[KH_MAX_LOGINS * KH_NAME_MAX], detail[160];
	int r;

	if ((r = kh_frame_hex(req, "PK", cpk, sizeof(cpk), &n)) != KH_OK || n != KH_RM_POINT_LEN ||
	    cpk[0] != 0x04 || (peer = peer_key(cpk)) == NULL) {
		kh_ctx_detail(c, "PK: an uncompressed P-256 point (65 bytes, hex)");
		r = r == KH_ERR_MISSING_FIELD ? r : KH_ERR_BAD_FIELD;
		goto out;
	}
	/* the key that serves the Admin port's TLS: the one the console's
	 * operator can compare with the certificate they trust */
	ctx = kh_tls_server_ctx(c->hsm, KH_PORT_ADMIN, &mode);
	skey = ctx ? SSL_CTX_get0_privatekey(ctx) : NULL;
	cert = ctx ? SSL_CTX_get0_certificate(ctx) : NULL;
	if (skey == NULL || cert == NULL) {
		kh_ctx_detail(c,
		              "no TLS server key to sign with: install a server certificate first");
		r = KH_ERR_STATE;
		goto out;
	}
	if ((alg = sig_alg(skey)) == NULL) {
		kh_ctx_detail(c, "the TLS server key must be RSA or EC P-256");
		r = KH_ERR_UNSUPPORTED;
		goto out;
	}
	r = KH_ERR_CRYPTO;
	if ((mine = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256")) == NULL ||
	    EVP_PKEY_get_octet_string_param(mine, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, spk,
	                                    sizeof(spk), &spklen) != 1 ||
	    spklen != KH_RM_POINT_LEN)
		goto out;
	memcpy(msg, KH_RM_LABEL, LABEL_LEN);
	memcpy(msg + LABEL_LEN, cpk, KH_RM_POINT_LEN);
	memcpy(msg + LABEL_LEN + KH_RM_POINT_LEN, spk, KH_RM_POINT_LEN);
	if (EVP_Digest(msg, sizeof(msg), salt, NULL, EVP_sha256(), NULL) != 1)
		goto out;
	r = KH_ERR_NOMEM;
	if ((z = kh_secure_alloc(KH_RM_KEY_LEN)) == NULL ||
	    (ch = kh_secure_alloc(sizeof(*ch))) == NULL ||
	    (sig = malloc((size_t)EVP_PKEY_get_size(skey))) == NULL)
		goto out;
	if ((r = ecdh(mine, peer, z)) != KH_OK) {
		kh_ctx_detail(c, "PK: not usable for key agreement");
		r = KH_ERR_BAD_FIELD;
		goto out;
	}
	siglen = (size_t)EVP_PKEY_get_size(skey);
	if ((r = hkdf(z, salt, KH_RM_INFO_C2S, ch->k_c2s)) != KH_OK ||
	    (r = hkdf(z, salt, KH_RM_INFO_S2C, ch->k_s2c)) != KH_OK ||
	    (r = sign_msg(skey, strcmp(alg, "ES256") == 0, msg, sizeof(msg), sig, &siglen)) !=
	        KH_OK)
		goto out;
	if ((r = kh_msg_put(resp, "BB", "Y")) != KH_OK ||
	    (r = kh_msg_put_hex(resp, "PK", spk, sizeof(spk))) != KH_OK ||
	    (r = kh_msg_put(resp, "SA", alg)) != KH_OK ||
	    (r = kh_msg_put_hex(resp, "SG", sig, siglen)) != KH_OK)
		goto out;
	if ((r = put_der(resp, "SP", skey, NULL)) != KH_OK ||
	    (r = put_der(resp, "CE", NULL, cert)) != KH_OK)
		goto out;
	kh_session_actor(c->s, actor, sizeof(actor));
	snprintf(detail, sizeof(detail), "sealed channel (%s) opened from %s", alg, c->s->peer);
	if ((r = kh_audit_append(c->hsm, actor, "remote.open", detail)) != KH_OK)
		goto out;
	/* a new exchange replaces the channel: counters restart at 0 */
	kh_remote_end(c->s);
	c->s->remote = ch;
	ch = NULL;
out:
	kh_secure_free(ch, sizeof(*ch));
	kh_secure_free(z, KH_RM_KEY_LEN);
	free(sig);
	EVP_PKEY_free(mine);
	EVP_PKEY_free(peer);
	SSL_CTX_free(ctx);
	return r;
}

/* ---- sealed frames ------------------------------------------------------- */

static void nonce_of(uint64_t counter, uint8_t nonce[static KH_RM_NONCE_LEN])
{
	memset(nonce, 0, 4);
	for (int i = 0; i < 8; i++)
		nonce[4 + i] = (uint8_t)(counter >> (56 - 8 * i));
}

/* AES-256-GCM with the channel's framing: in (n bytes) to out, and the tag
 * appended (seal) or checked (open; in then ends with the tag and n counts
 * it). out holds n + 16 (seal) or n - 16 (open) bytes. */
static int gcm(bool seal, const uint8_t key[static KH_RM_KEY_LEN], uint64_t counter,
               const uint8_t *in, size_t n, uint8_t *out)
{
	EVP_CIPHER_CTX *cx = EVP_CIPHER_CTX_new();
	uint8_t nonce[KH_RM_NONCE_LEN];
	size_t body = seal ? n : n - KH_RM_TAG_LEN;
	int len = 0, r = KH_ERR_CRYPTO;

	if (cx == NULL || body > INT32_MAX)
		goto out;
	nonce_of(counter, nonce);
	if (EVP_CipherInit_ex2(cx, EVP_aes_256_gcm(), key, nonce, seal ? 1 : 0, NULL) != 1 ||
	    EVP_CipherUpdate(cx, NULL, &len, (const uint8_t *)KH_RM_AAD, sizeof(KH_RM_AAD) - 1) !=
	        1 ||
	    (body > 0 && EVP_CipherUpdate(cx, out, &len, in, (int)body) != 1))
		goto out;
	if (seal) {
		if (EVP_CipherFinal_ex(cx, out + body, &len) != 1 ||
		    EVP_CIPHER_CTX_ctrl(cx, EVP_CTRL_GCM_GET_TAG, KH_RM_TAG_LEN, out + body) != 1)
			goto out;
	} else {
		if (EVP_CIPHER_CTX_ctrl(cx, EVP_CTRL_GCM_SET_TAG, KH_RM_TAG_LEN,
		                        (void *)(uintptr_t)(in + body)) != 1 ||
		    EVP_CipherFinal_ex(cx, out + body, &len) != 1) {
			r = KH_ERR_DECRYPT_FAILED;
			goto out;
		}
	}
	r = KH_OK;
out:
	EVP_CIPHER_CTX_free(cx);
	return r;
}

/* The request's CT opened under the expected counter into pt; any failure
 * (missing, not hex, short, wrong key, counter or tag) is DECRYPT_FAILED. */
static int open_ct(struct kh_remote *ch, const struct kh_frame *req, struct kh_buf *pt)
{
	const struct kh_field *f = kh_frame_get(req, "CT");
	uint8_t *ct = NULL, *p, empty[1];
	size_t n;
	int r = KH_ERR_DECRYPT_FAILED;

	if (f == NULL || f->len % 2 != 0 || f->len / 2 < KH_RM_TAG_LEN)
		return r;
	n = f->len / 2;
	if ((ct = malloc(n)) == NULL)
		return KH_ERR_NOMEM;
	if (kh_hex_decode(f->val, f->len, ct, n) != (int)n)
		goto out;
	if (n > KH_RM_TAG_LEN) {
		if ((r = kh_buf_reserve(pt, n - KH_RM_TAG_LEN, &p)) != KH_OK)
			goto out;
	} else {
		p = empty; /* an empty plaintext: only the tag to check */
	}
	r = gcm(false, ch->k_c2s, ch->rx, ct, n, p);
	if (r == KH_OK)
		kh_buf_commit(pt, n - KH_RM_TAG_LEN);
	else
		r = KH_ERR_DECRYPT_FAILED;
out:
	free(ct); /* ciphertext: nothing to wipe */
	return r;
}

/* An inner frame answered before the dispatcher (which counts its own). */
static void refused(struct kh_hsm *hsm)
{
	atomic_fetch_add(&hsm->n_requests, 1);
	atomic_fetch_add(&hsm->n_errors, 1);
}

/* The inner frame's answer, run as if it had arrived on this connection:
 * the same limits, the same session, the same dispatcher. Appends exactly
 * one frame to out. */
static void run_inner(struct kh_ctx *c, const uint8_t *p, size_t n, struct kh_buf *out)
{
	struct kh_session *s = c->s;
	size_t max = s->nident ? KH_FRAME_MAX : KH_FRAME_MAX_PRELOGIN;
	size_t fmax = s->nident ? KH_FIELDS_MAX : KH_FIELDS_MAX_PRELOGIN;
	size_t flen = 0;
	char peer[sizeof(s->peer)];
	struct kh_frame f;
	int r;

	r = kh_frame_find(p, n, max, &flen);
	if (r == 0 || (r == 1 && flen != n))
		r = KH_ERR_MALFORMED; /* not exactly one whole frame */
	if (r < 0) {
		refused(c->hsm);
		KH_IGNORE(kh_msg_error(out, "", r,
		                       r == KH_ERR_TOO_LARGE ? "frame size" : "one whole frame"));
		return;
	}
	if ((r = kh_frame_parse(p, n, fmax, &f)) != KH_OK) {
		refused(c->hsm);
		KH_IGNORE(
		    kh_msg_error(out, f.cmd, r, r == KH_ERR_TOO_LARGE ? "field count" : NULL));
		return;
	}
	if (strcmp(f.cmd, "RMKX") == 0 || strcmp(f.cmd, "RMSG") == 0) {
		refused(c->hsm);
		KH_IGNORE(kh_msg_error(out, f.cmd, KH_ERR_BAD_FIELD,
		                       "RMKX and RMSG do not nest inside RMSG"));
		return;
	}
	/* the audit trail says which logins and ceremonies came sealed */
	memcpy(peer, s->peer, sizeof(peer));
	snprintf(s->peer, sizeof(s->peer), "%.80s (sealed)", peer);
	s->remote->busy = true;
	(void)kh_dispatch(c->hsm, s, &f, out);
	s->remote->busy = false;
	memcpy(s->peer, peer, sizeof(peer));
}

KH_ACT(kh_cmd_rmsg)
{
	struct kh_remote *ch = c->s->remote;
	struct kh_buf *pt = NULL, *inner = NULL;
	uint8_t *ct = NULL;
	size_t n;
	int r;

	if (ch == NULL) {
		kh_ctx_detail(c, "no sealed channel on this connection: RMKX first");
		return KH_ERR_STATE;
	}
	if (ch->busy) {
		/* unreachable through run_inner, which refuses nesting first */
		kh_ctx_detail(c, "RMKX and RMSG do not nest inside RMSG");
		return KH_ERR_BAD_FIELD;
	}
	if ((pt = kh_buf_new(KH_FRAME_MAX)) == NULL ||
	    (inner = kh_buf_new(INNER_OUT_MAX)) == NULL) {
		r = KH_ERR_NOMEM;
		goto out;
	}
	if ((r = open_ct(ch, req, pt)) != KH_OK) {
		if (r == KH_ERR_DECRYPT_FAILED) {
			/* replayed, reordered, altered or foreign: nothing more on it */
			kh_remote_end(c->s);
			kh_ctx_detail(c, "the sealed channel is closed: RMKX again");
		}
		goto out;
	}
	ch->rx++;
	run_inner(c, kh_buf_ptr(pt), kh_buf_len(pt), inner);
	kh_buf_reset(pt);
	/* the inner command may not have replaced or closed the channel */
	if (c->s->remote != ch) {
		r = KH_ERR_INTERNAL;
		goto out;
	}
	n = kh_buf_len(inner) + KH_RM_TAG_LEN;
	r = KH_ERR_NOMEM;
	if ((ct = malloc(n)) == NULL)
		goto out;
	if ((r = gcm(true, ch->k_s2c, ch->tx, kh_buf_ptr(inner), kh_buf_len(inner), ct)) != KH_OK ||
	    (r = kh_msg_put(resp, "BB", "Y")) != KH_OK ||
	    (r = kh_msg_put_hex(resp, "CT", ct, n)) != KH_OK)
		goto out;
	ch->tx++; /* only once the answer is written: the client's counter stays in step */
out:
	free(ct);
	kh_buf_free(inner);
	kh_buf_free(pt);
	return r;
}

/*
 * Data commands of the crypto service: GPSE/GPSD (AES modes, RSA OAEP and
 * PKCS#1 v1.5), GPMC/HMAC (CMAC and HMAC, generate or verify), GHSH
 * (digests) and GPSR (raw RSA with recovery). The plans name the key, its
 * usage and the permissions and FIPS limits of the mode; the handlers read
 * only their own parameters. A decryption failure never says why.
 */
#include "hsm/cmds.h"
#include "hsm/keyobj.h"
#include "common/kh_buf.h"
#include "common/kh_mem.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#define AES_BLOCK 16
#define GCM_IV_DEFAULT 12
#define GCM_IV_MAX 512
#define GCM_TAG_MIN 4
#define GCM_TAG_MAX 16
#define CMAC_LEN 16
#define PKCS1_OVERHEAD 11 /* RSA PKCS#1 v1.5: 00 02|01, at least 8 padding bytes, 00 */

enum mode { M_ECB, M_CBC, M_CBCP, M_CTR, M_GCM, M_NAES, M_OAEP = M_NAES, M_PKCS1, M_NONE };

static const char *const mode_names[] = {"ECB", "CBC",  "CBCP",  "CTR",
                                         "GCM", "OAEP", "PKCS1", "NONE"};

/* Algorithms fetched once for the life of the process: the EVP_aes_*()
 * getters and a fetch per request both cost a method-store lookup under a
 * lock (an AES-GCM request of 32 bytes takes 2.5 us with the getter, 1 us
 * with a fetched cipher). CBCP is CBC with padding. HMAC contexts with
 * their digest set are kept as templates: a copy keyed per request is a
 * third cheaper than setting the digest again. */
static const char *const cipher_names[3][M_NAES] = {
    {"AES-128-ECB", "AES-128-CBC", "AES-128-CBC", "AES-128-CTR", "AES-128-GCM"},
    {"AES-192-ECB", "AES-192-CBC", "AES-192-CBC", "AES-192-CTR", "AES-192-GCM"},
    {"AES-256-ECB", "AES-256-CBC", "AES-256-CBC", "AES-256-CTR", "AES-256-GCM"},
};
/* the digests kh_req_md names */
static const char *const md_names[] = {"SHA1",     "SHA224",   "SHA256",   "SHA384",  "SHA512",
                                       "SHA3-224", "SHA3-256", "SHA3-384", "SHA3-512"};
#define NMD (sizeof(md_names) / sizeof(md_names[0]))
static struct {
	EVP_CIPHER *cipher[3][M_NAES];
	EVP_MD *md[NMD];
	EVP_MAC_CTX *hmac[NMD];
	EVP_MAC *cmac;
} algs;
static pthread_once_t algs_once = PTHREAD_ONCE_INIT;

static void algs_fetch(void)
{
	EVP_MAC *hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
	char name[16];

	for (size_t i = 0; i < 3; i++)
		for (size_t m = 0; m < M_NAES; m++)
			algs.cipher[i][m] = EVP_CIPHER_fetch(NULL, cipher_names[i][m], NULL);
	for (size_t i = 0; i < NMD; i++) {
		snprintf(name, sizeof(name), "%s", md_names[i]);
		OSSL_PARAM p[2] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, name, 0),
		                   OSSL_PARAM_construct_end()};
		algs.md[i] = EVP_MD_fetch(NULL, md_names[i], NULL);
		algs.hmac[i] = hmac ? EVP_MAC_CTX_new(hmac) : NULL;
		if (algs.hmac[i] != NULL && EVP_MAC_CTX_set_params(algs.hmac[i], p) != 1) {
			EVP_MAC_CTX_free(algs.hmac[i]);
			algs.hmac[i] = NULL;
		}
	}
	EVP_MAC_free(hmac); /* the contexts hold their own reference */
	algs.cmac = EVP_MAC_fetch(NULL, "CMAC", NULL);
}

/* The fetched digest (and HMAC template) for one of kh_req_md's digests. */
static int md_index(const EVP_MD *md, size_t *out)
{
	pthread_once(&algs_once, algs_fetch);
	for (size_t i = 0; i < NMD; i++)
		if (algs.md[i] != NULL && EVP_MD_get_type(algs.md[i]) == EVP_MD_get_type(md)) {
			*out = i;
			return KH_OK;
		}
	return KH_ERR_CRYPTO;
}

/* 0, 1, 2 for AES-128/192/256 by key length. */
static size_t aes_index(size_t key_len)
{
	return (key_len - 16) / 8;
}

/* The value of a hex field in a fresh heap buffer (data_free). */
static int read_hex(struct kh_ctx *c, const struct kh_frame *req, const char *tag, uint8_t **out,
                    size_t *len)
{
	const struct kh_field *f = kh_frame_get(req, tag);
	uint8_t *b;

	if (f == NULL) {
		kh_ctx_detail(c, "%s", tag);
		return KH_ERR_MISSING_FIELD;
	}
	if ((b = malloc(f->len / 2 + 1)) == NULL)
		return KH_ERR_NOMEM;
	if (kh_frame_hex(req, tag, b, f->len / 2, len) != KH_OK) {
		free(b);
		kh_ctx_detail(c, "%s (hex)", tag);
		return KH_ERR_BAD_FIELD;
	}
	*out = b;
	return KH_OK;
}

/* Every data buffer may hold a plaintext: wiped before it goes. */
static void data_free(uint8_t *p, size_t n)
{
	if (p != NULL) {
		kh_wipe(p, n);
		free(p);
	}
}

static int read_choice(struct kh_ctx *c, const struct kh_frame *req, const char *tag, enum mode lo,
                       enum mode hi, const char *what, enum mode *out)
{
	char v[8];
	if (kh_frame_str(req, tag, v, sizeof(v)) == KH_OK)
		for (enum mode m = lo; m <= hi; m++)
			if (strcmp(v, mode_names[m]) == 0) {
				*out = m;
				return KH_OK;
			}
	kh_ctx_detail(c, "%s (%s)", tag, what);
	return KH_ERR_BAD_FIELD;
}

/* GPSE/GPSD: AL names an AES mode, PD an RSA padding; one of them. */
static int read_mode(struct kh_ctx *c, const struct kh_frame *req, enum mode *out)
{
	bool al = kh_frame_has(req, "AL"), pd = kh_frame_has(req, "PD");
	if (al == pd) {
		kh_ctx_detail(c, "AL (an AES mode) or PD (an RSA padding)%s",
		              al ? ", not both" : "");
		return al ? KH_ERR_BAD_FIELD : KH_ERR_MISSING_FIELD;
	}
	if (al)
		return read_choice(c, req, "AL", M_ECB, M_GCM, "ECB, CBC, CBCP, CTR or GCM", out);
	return read_choice(c, req, "PD", M_OAEP, M_PKCS1, "OAEP or PKCS1", out);
}

static struct kh_keyref data_key(uint16_t usage, uint32_t classes, uint32_t types)
{
	return (struct kh_keyref){.slot_tag = "SL",
	                          .id_tag = "KD",
	                          .cg_tag = "CG",
	                          .flags = KH_KR_REQUIRED,
	                          .usage = usage,
	                          .classes = classes,
	                          .types = types};
}

#define CLS(x) (1u << KH_KC_##x)

static int plan_cipher(struct kh_ctx *c, const struct kh_frame *req, struct kh_op *op, bool dec)
{
	enum mode m;
	int r = read_mode(c, req, &m);
	if (r != KH_OK)
		return r;
	if (m < M_NAES) {
		op->ref[op->nref++] =
		    data_key(dec ? KH_U_DECRYPT : KH_U_ENCRYPT, CLS(SECRET), KH_KT_BIT(KH_KT_AES));
		if (m == M_ECB)
			op->fips_refusal = "ECB for data";
	} else if (!dec) {
		op->ref[op->nref++] =
		    data_key(KH_U_ENCRYPT, CLS(PUBLIC) | CLS(PRIVATE), KH_KT_BIT(KH_KT_RSA));
	} else {
		op->ref[op->nref++] = data_key(KH_U_DECRYPT, CLS(PRIVATE), KH_KT_BIT(KH_KT_RSA));
		if (m == M_PKCS1) {
			op->perms |= KH_PERM(KH_P_KEYS_PKCS1_DECRYPT);
			op->fips_refusal = "PKCS#1 v1.5 decryption";
		}
	}
	return KH_OK;
}

KH_PLAN(kh_plan_gpse)
{
	return plan_cipher(c, req, op, false);
}

KH_PLAN(kh_plan_gpsd)
{
	return plan_cipher(c, req, op, true);
}

/* IV for a mode: none for ECB, 16 bytes for CBC/CBCP/CTR, 1-512 for GCM
 * (encryption without one makes 12 random bytes). */
static int read_iv(struct kh_ctx *c, const struct kh_frame *req, enum mode m, bool dec,
                   uint8_t iv[static GCM_IV_MAX], size_t *len)
{
	bool has = kh_frame_has(req, "IV");
	*len = 0;
	if (m == M_ECB) {
		if (!has)
			return KH_OK;
		kh_ctx_detail(c, "IV (not used with ECB)");
		return KH_ERR_BAD_FIELD;
	}
	if (m == M_GCM && !has && !dec) {
		*len = GCM_IV_DEFAULT;
		return RAND_bytes(iv, GCM_IV_DEFAULT) == 1 ? KH_OK : KH_ERR_CRYPTO;
	}
	if (!has) {
		kh_ctx_detail(c, "IV");
		return KH_ERR_MISSING_FIELD;
	}
	if (kh_frame_hex(req, "IV", iv, GCM_IV_MAX, len) != KH_OK || *len == 0 ||
	    (m != M_GCM && *len != AES_BLOCK)) {
		kh_ctx_detail(c, m == M_GCM ? "IV (1-512 bytes, hex)" : "IV (16 bytes, hex)");
		return KH_ERR_BAD_FIELD;
	}
	return KH_OK;
}

/* GCM's tag: its length (TL) when encrypting, the tag (TG) when decrypting;
 * AD, TG and TL mean nothing in the other modes and are refused there, so a
 * client never believes data authenticated that was not. */
static int read_gcm(struct kh_ctx *c, const struct kh_frame *req, enum mode m, bool dec,
                    uint8_t tag[static GCM_TAG_MAX], size_t *tag_len, uint8_t **ad, size_t *ad_len)
{
	uint64_t tl = GCM_TAG_MAX;
	*tag_len = 0;
	if (m != M_GCM) {
		const char *extra = kh_frame_has(req, "AD")   ? "AD"
		                    : kh_frame_has(req, "TG") ? "TG"
		                    : kh_frame_has(req, "TL") ? "TL"
		                                              : NULL;
		if (extra == NULL)
			return KH_OK;
		kh_ctx_detail(c, "%s (GCM only)", extra);
		return KH_ERR_BAD_FIELD;
	}
	if (dec) {
		if (!kh_frame_has(req, "TG")) {
			kh_ctx_detail(c, "TG");
			return KH_ERR_MISSING_FIELD;
		}
		if (kh_frame_hex(req, "TG", tag, GCM_TAG_MAX, tag_len) != KH_OK ||
		    *tag_len < GCM_TAG_MIN) {
			kh_ctx_detail(c, "TG (4-16 bytes, hex)");
			return KH_ERR_BAD_FIELD;
		}
		if (kh_frame_has(req, "TL") &&
		    (kh_frame_u64(req, "TL", GCM_TAG_MIN, GCM_TAG_MAX, &tl) != KH_OK ||
		     tl != *tag_len)) {
			kh_ctx_detail(c, "TL (the length of TG)");
			return KH_ERR_BAD_FIELD;
		}
	} else {
		if (kh_frame_has(req, "TL") &&
		    kh_frame_u64(req, "TL", GCM_TAG_MIN, GCM_TAG_MAX, &tl) != KH_OK) {
			kh_ctx_detail(c, "TL (4-16)");
			return KH_ERR_BAD_FIELD;
		}
		*tag_len = (size_t)tl;
	}
	if (kh_frame_has(req, "AD"))
		return read_hex(c, req, "AD", ad, ad_len);
	return KH_OK;
}

/* ---- GCM with IVs longer than OpenSSL takes -------------------------------------
 * SP 800-38D allows any IV length; OpenSSL's GCM stops at 128 bytes. For a
 * longer IV the pre-counter block is GHASH(IV) (as for any IV that is not 96
 * bits), the data runs through AES-CTR from inc32(J0), and the tag is
 * E(K, J0) xor GHASH(A, C). Rare and short, so GHASH is the plain bitwise
 * multiplication of the standard. */
#define OSSL_GCM_IV_MAX 128

static void gf128_mul(uint8_t x[16], const uint8_t h[16])
{
	uint8_t z[16] = {0}, v[16];
	memcpy(v, h, 16);
	for (int i = 0; i < 128; i++) {
		if (x[i / 8] & (0x80 >> (i % 8)))
			for (int j = 0; j < 16; j++)
				z[j] ^= v[j];
		uint8_t lsb = v[15] & 1;
		for (int j = 15; j > 0; j--)
			v[j] = (uint8_t)(v[j] >> 1 | v[j - 1] << 7);
		v[0] >>= 1;
		if (lsb)
			v[0] ^= 0xe1;
	}
	memcpy(x, z, 16);
}

/* y = (y xor each 16-byte block of d, zero-padded) * h, block by block. */
static void ghash_update(uint8_t y[16], const uint8_t h[16], const uint8_t *d, size_t n)
{
	for (size_t o = 0; o < n; o += 16) {
		size_t l = n - o < 16 ? n - o : 16;
		for (size_t j = 0; j < l; j++)
			y[j] ^= d[o + j];
		gf128_mul(y, h);
	}
}

static void ghash_lengths(uint8_t y[16], const uint8_t h[16], uint64_t a_bytes, uint64_t c_bytes)
{
	uint8_t b[16];
	for (int i = 0; i < 8; i++) {
		b[i] = (uint8_t)((a_bytes * 8) >> (56 - 8 * i));
		b[8 + i] = (uint8_t)((c_bytes * 8) >> (56 - 8 * i));
	}
	ghash_update(y, h, b, 16);
}

/* One AES block with key k: ECB, no padding. */
static int aes_block(EVP_CIPHER_CTX *ecb, const uint8_t in[16], uint8_t out[16])
{
	int n = 0;
	return EVP_EncryptUpdate(ecb, out, &n, in, 16) == 1 && n == 16 ? KH_OK : KH_ERR_CRYPTO;
}

/* CTR from counter block ctr, with GCM's inc32: only the low 32 bits count,
 * so OpenSSL's 128-bit CTR is restarted where they would carry. */
static int gcm_ctr(const EVP_CIPHER *ctr_cipher, const uint8_t *key, uint8_t ctr[16],
                   const uint8_t *in, size_t n, uint8_t *out)
{
	EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
	int r = x ? KH_OK : KH_ERR_NOMEM;
	while (r == KH_OK && n > 0) {
		uint32_t low = (uint32_t)ctr[12] << 24 | (uint32_t)ctr[13] << 16 | (uint32_t)ctr[14] << 8 | ctr[15];
		uint64_t blocks_left = (uint64_t)UINT32_MAX - low + 1; /* before the low word wraps */
		size_t chunk = n / 16 + (n % 16 != 0) <= blocks_left ? n : (size_t)blocks_left * 16;
		int o = 0;
		if (EVP_EncryptInit_ex(x, ctr_cipher, NULL, key, ctr) != 1 ||
		    EVP_EncryptUpdate(x, out, &o, in, (int)chunk) != 1 || (size_t)o != chunk) {
			r = KH_ERR_CRYPTO;
			break;
		}
		in += chunk;
		out += chunk;
		n -= chunk;
		memset(ctr + 12, 0, 4); /* wrapped: the high 96 bits stay */
	}
	EVP_CIPHER_CTX_free(x);
	return r;
}

/* AES-GCM for an IV over OpenSSL's limit. out gets n bytes; on encryption
 * tag gets tag_len bytes, on decryption tag is compared (DECRYPT_FAILED). */
static int gcm_long_iv(const struct kh_key *k, const uint8_t *iv, size_t iv_len,
                       const uint8_t *ad, size_t ad_len, const uint8_t *in, size_t n, bool dec,
                       uint8_t *out, uint8_t *tag, size_t tag_len)
{
	const EVP_CIPHER *ecb = algs.cipher[aes_index(k->secret_len)][M_ECB];
	const EVP_CIPHER *ctr = algs.cipher[aes_index(k->secret_len)][M_CTR];
	uint8_t h[16] = {0}, j0[16] = {0}, cb[16], ek[16], s[16] = {0};
	EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
	int r = KH_ERR_CRYPTO;

	if (x == NULL || ecb == NULL || ctr == NULL ||
	    EVP_EncryptInit_ex(x, ecb, NULL, k->secret, NULL) != 1 ||
	    EVP_CIPHER_CTX_set_padding(x, 0) != 1 || aes_block(x, h, h) != KH_OK)
		goto out;
	ghash_update(j0, h, iv, iv_len);
	ghash_lengths(j0, h, 0, iv_len);
	memcpy(cb, j0, 16);
	for (int i = 15; i >= 12 && ++cb[i] == 0; i--)
		;
	/* GHASH runs over the ciphertext: the input when decrypting */
	ghash_update(s, h, ad, ad_len);
	if (dec)
		ghash_update(s, h, in, n);
	if ((r = gcm_ctr(ctr, k->secret, cb, in, n, out)) != KH_OK)
		goto out;
	if (!dec)
		ghash_update(s, h, out, n);
	ghash_lengths(s, h, ad_len, n);
	if ((r = aes_block(x, j0, ek)) != KH_OK)
		goto out;
	for (int i = 0; i < 16; i++)
		ek[i] ^= s[i];
	if (!dec)
		memcpy(tag, ek, tag_len);
	else if (CRYPTO_memcmp(ek, tag, tag_len) != 0)
		r = KH_ERR_DECRYPT_FAILED;
out:
	EVP_CIPHER_CTX_free(x);
	OPENSSL_cleanse(h, sizeof(h));
	OPENSSL_cleanse(ek, sizeof(ek));
	if (r != KH_OK && dec)
		OPENSSL_cleanse(out, n);
	return r;
}

static int aes_crypt(struct kh_ctx *c, const struct kh_frame *req, const struct kh_key *k,
                     enum mode m, bool dec, struct kh_buf *resp)
{
	const EVP_CIPHER *cipher = algs.cipher[aes_index(k->secret_len)][m];
	uint8_t iv[GCM_IV_MAX], tag[GCM_TAG_MAX];
	uint8_t *in = NULL, *out = NULL, *ad = NULL;
	size_t iv_len, tag_len, in_len = 0, ad_len = 0, out_max = 0;
	EVP_CIPHER_CTX *x = NULL;
	int n1 = 0, n2 = 0, n;
	int r;

	if (cipher == NULL)
		return KH_ERR_CRYPTO;
	if ((r = read_iv(c, req, m, dec, iv, &iv_len)) != KH_OK ||
	    (r = read_gcm(c, req, m, dec, tag, &tag_len, &ad, &ad_len)) != KH_OK ||
	    (r = read_hex(c, req, "DT", &in, &in_len)) != KH_OK)
		goto out;
	if (((m == M_ECB || m == M_CBC) && in_len % AES_BLOCK != 0) ||
	    (m == M_CBCP && dec && (in_len % AES_BLOCK != 0 || in_len == 0))) {
		kh_ctx_detail(c, "DT (whole %d-byte blocks)", AES_BLOCK);
		r = KH_ERR_BAD_FIELD;
		goto out;
	}
	out_max = in_len + AES_BLOCK;
	if ((out = malloc(out_max)) == NULL || (x = EVP_CIPHER_CTX_new()) == NULL) {
		r = KH_ERR_NOMEM;
		goto out;
	}
	if (m == M_GCM && iv_len > OSSL_GCM_IV_MAX) {
		if ((r = gcm_long_iv(k, iv, iv_len, ad, ad_len, in, in_len, dec, out, tag, tag_len)) ==
		    KH_OK) {
			n1 = (int)in_len;
			goto done;
		}
		goto out;
	}
	/* GCM's IV length is set between choosing the cipher and keying it */
	r = KH_ERR_CRYPTO;
	if (EVP_CipherInit_ex(x, cipher, NULL, NULL, NULL, !dec) != 1 ||
	    (m == M_GCM &&
	     EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_SET_IVLEN, (int)iv_len, NULL) != 1) ||
	    EVP_CipherInit_ex(x, NULL, NULL, k->secret, iv_len ? iv : NULL, !dec) != 1 ||
	    EVP_CIPHER_CTX_set_padding(x, m == M_CBCP) != 1 ||
	    (ad_len && EVP_CipherUpdate(x, NULL, &n, ad, (int)ad_len) != 1) ||
	    (m == M_GCM && dec &&
	     EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_SET_TAG, (int)tag_len, tag) != 1) ||
	    EVP_CipherUpdate(x, out, &n1, in, (int)in_len) != 1)
		goto out;
	if (EVP_CipherFinal_ex(x, out + n1, &n2) != 1) {
		/* padding or tag: one answer, no detail */
		if (dec && (m == M_CBCP || m == M_GCM))
			r = KH_ERR_DECRYPT_FAILED;
		goto out;
	}
	if (m == M_GCM && !dec &&
	    EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_GET_TAG, (int)tag_len, tag) != 1)
		goto out;
done:
	if ((r = kh_msg_put(resp, "BB", "Y")) != KH_OK ||
	    (r = kh_msg_put_hex(resp, "DT", out, (size_t)n1 + (size_t)n2)) != KH_OK)
		goto out;
	if (m == M_GCM && !dec &&
	    ((r = kh_msg_put_hex(resp, "IV", iv, iv_len)) != KH_OK ||
	     (r = kh_msg_put_hex(resp, "TG", tag, tag_len)) != KH_OK))
		goto out;
out:
	/* a failure leaves OpenSSL's error queue empty: a stale entry would
	 * make the connection's next SSL_get_error report a TLS failure */
	if (r != KH_OK)
		ERR_clear_error();
	EVP_CIPHER_CTX_free(x);
	data_free(out, out_max);
	data_free(in, in_len);
	data_free(ad, ad_len);
	return r;
}

/* ---- RSA ------------------------------------------------------------------ */

enum rsa_op { RSA_ENC, RSA_DEC, RSA_SIGN, RSA_RECOVER };

/* The largest input the padding takes for a modulus of k bytes. */
static size_t rsa_max_in(int pad, size_t k, const struct kh_oaep *o)
{
	size_t over = pad == RSA_PKCS1_PADDING ? PKCS1_OVERHEAD
	              : pad == RSA_NO_PADDING  ? 0
	                                       : 2 * (size_t)EVP_MD_get_size(o->md) + 2;
	return k > over ? k - over : 0;
}

/* Raw RSA takes exactly the modulus length and a value under the modulus. */
static int raw_in_range(struct kh_ctx *c, EVP_PKEY *pk, const uint8_t *in, size_t len, size_t k)
{
	BIGNUM *n = NULL, *v = NULL;
	int r = KH_ERR_CRYPTO;

	if (len != k) {
		kh_ctx_detail(c, "DT (exactly the modulus length, %zu bytes, with PD NONE)", k);
		return KH_ERR_BAD_FIELD;
	}
	if (EVP_PKEY_get_bn_param(pk, OSSL_PKEY_PARAM_RSA_N, &n) == 1 &&
	    (v = BN_bin2bn(in, (int)len, NULL)) != NULL) {
		r = KH_OK;
		if (BN_cmp(v, n) >= 0) {
			kh_ctx_detail(c, "DT (must be less than the modulus)");
			r = KH_ERR_BAD_FIELD;
		}
	}
	BN_free(n);
	BN_free(v);
	return r;
}

static int rsa_init(EVP_PKEY_CTX *pc, enum rsa_op op, int pad, struct kh_oaep *o)
{
	int ok;
	switch (op) {
	case RSA_ENC:
		ok = EVP_PKEY_encrypt_init(pc);
		break;
	case RSA_DEC:
		ok = EVP_PKEY_decrypt_init(pc);
		break;
	case RSA_SIGN:
		ok = EVP_PKEY_sign_init(pc);
		break;
	default:
		ok = EVP_PKEY_verify_recover_init(pc);
		break;
	}
	if (ok != 1)
		return KH_ERR_CRYPTO;
	if (pad == RSA_PKCS1_OAEP_PADDING)
		return kh_oaep_setup(pc, o);
	if (EVP_PKEY_CTX_set_rsa_padding(pc, pad) != 1)
		return KH_ERR_CRYPTO;
#ifdef OSSL_ASYM_CIPHER_PARAM_IMPLICIT_REJECTION
	/* a bad PKCS#1 v1.5 padding is an error (one answer), not a random
	 * message the client would take for the plaintext */
	if (op == RSA_DEC && pad == RSA_PKCS1_PADDING) {
		unsigned int zero = 0;
		OSSL_PARAM p[2] = {
		    OSSL_PARAM_construct_uint(OSSL_ASYM_CIPHER_PARAM_IMPLICIT_REJECTION, &zero),
		    OSSL_PARAM_construct_end()};
		if (EVP_PKEY_CTX_set_params(pc, p) != 1)
			return KH_ERR_CRYPTO;
	}
#endif
	return KH_OK;
}

/* One RSA operation on DT, answered with BBY and DT. Input lengths are
 * checked first (they are public); after that a failed decryption is
 * DECRYPT_FAILED and a failed recovery VERIFY_FAILED, without detail. */
static int rsa_crypt(struct kh_ctx *c, const struct kh_frame *req, EVP_PKEY *pk, enum rsa_op op,
                     int pad, struct kh_buf *resp)
{
	struct kh_oaep o = {0};
	EVP_PKEY_CTX *pc = NULL;
	uint8_t *in = NULL, *out = NULL;
	size_t in_len = 0, k = (size_t)EVP_PKEY_get_size(pk), out_len = k;
	int r, ok;

	if (pad == RSA_PKCS1_OAEP_PADDING && (r = kh_req_oaep(c, req, &o)) != KH_OK)
		goto out;
	if ((r = read_hex(c, req, "DT", &in, &in_len)) != KH_OK)
		goto out;
	if (pad == RSA_NO_PADDING) {
		if ((r = raw_in_range(c, pk, in, in_len, k)) != KH_OK)
			goto out;
	} else if ((op == RSA_ENC || op == RSA_SIGN) && in_len > rsa_max_in(pad, k, &o)) {
		kh_ctx_detail(c, "DT (at most %zu bytes for this key and padding)",
		              rsa_max_in(pad, k, &o));
		r = KH_ERR_BAD_FIELD;
		goto out;
	}
	if ((out = malloc(k)) == NULL ||
	    (pc = EVP_PKEY_CTX_new_from_pkey(NULL, pk, NULL)) == NULL) {
		r = KH_ERR_NOMEM;
		goto out;
	}
	if ((r = rsa_init(pc, op, pad, &o)) != KH_OK)
		goto out;
	switch (op) {
	case RSA_ENC:
		ok = EVP_PKEY_encrypt(pc, out, &out_len, in, in_len);
		r = KH_ERR_CRYPTO;
		break;
	case RSA_DEC:
		ok = EVP_PKEY_decrypt(pc, out, &out_len, in, in_len);
		r = KH_ERR_DECRYPT_FAILED;
		break;
	case RSA_SIGN:
		ok = EVP_PKEY_sign(pc, out, &out_len, in, in_len);
		r = KH_ERR_CRYPTO;
		break;
	default:
		ok = EVP_PKEY_verify_recover(pc, out, &out_len, in, in_len);
		r = KH_ERR_VERIFY_FAILED;
		break;
	}
	if (ok != 1)
		goto out;
	if ((r = kh_msg_put(resp, "BB", "Y")) == KH_OK)
		r = kh_msg_put_hex(resp, "DT", out, out_len);
out:
	if (r != KH_OK)
		ERR_clear_error();
	EVP_PKEY_CTX_free(pc);
	kh_oaep_free(&o);
	data_free(out, k);
	data_free(in, in_len);
	return r;
}

static int cipher_act(struct kh_ctx *c, const struct kh_frame *req, struct kh_buf *resp, bool dec)
{
	struct kh_key *k = c->op->key[0];
	enum mode m;
	int r;

	pthread_once(&algs_once, algs_fetch);
	if ((r = read_mode(c, req, &m)) != KH_OK)
		return r;
	if (m < M_NAES)
		return aes_crypt(c, req, k, m, dec, resp);
	return rsa_crypt(c, req, k->pkey, dec ? RSA_DEC : RSA_ENC,
	                 m == M_OAEP ? RSA_PKCS1_OAEP_PADDING : RSA_PKCS1_PADDING, resp);
}

KH_ACT(kh_cmd_gpse)
{
	return cipher_act(c, req, resp, false);
}

KH_ACT(kh_cmd_gpsd)
{
	return cipher_act(c, req, resp, true);
}

/* ---- MACs ----------------------------------------------------------------- */

/* A MAC with a fresh context (CMAC: the cipher in params) or a copy of a
 * template (HMAC: params NULL). */
static int mac_compute(EVP_MAC *alg, const EVP_MAC_CTX *tmpl, const OSSL_PARAM *params,
                       const struct kh_key *k, const uint8_t *in, size_t in_len, uint8_t *mac,
                       size_t mac_max)
{
	EVP_MAC_CTX *x = tmpl ? EVP_MAC_CTX_dup(tmpl) : alg ? EVP_MAC_CTX_new(alg) : NULL;
	size_t n = 0;
	int ok = x != NULL && EVP_MAC_init(x, k->secret, k->secret_len, params) == 1 &&
	         EVP_MAC_update(x, in, in_len) == 1 && EVP_MAC_final(x, mac, &n, mac_max) == 1;
	EVP_MAC_CTX_free(x);
	if (!ok)
		ERR_clear_error();
	return ok ? KH_OK : KH_ERR_CRYPTO;
}

/* A verified MAC must be exactly ML bytes (default: the whole MAC), so that
 * a forged short MAC never passes a verifier that did not ask for one. */
int kh_data_mac(struct kh_ctx *c, const struct kh_frame *req, const struct kh_key *k, bool verify,
                const char *out_tag, struct kh_buf *resp)
{
	uint8_t mac[EVP_MAX_MD_SIZE], given[EVP_MAX_MD_SIZE];
	size_t full, ml, given_len = 0, in_len = 0, i;
	char name[16]; /* OSSL_PARAM takes a non-const string */
	uint8_t *in = NULL;
	OSSL_PARAM params[2];
	const EVP_MAC_CTX *tmpl = NULL;
	uint64_t v;
	int r;

	pthread_once(&algs_once, algs_fetch);
	if (k->a.type == KH_KT_GENERIC) {
		const EVP_MD *md;
		if ((r = kh_req_md(c, req, "HA", "SHA-256", &md)) != KH_OK ||
		    (r = md_index(md, &i)) != KH_OK)
			return r;
		if ((tmpl = algs.hmac[i]) == NULL)
			return KH_ERR_CRYPTO;
		full = (size_t)EVP_MD_get_size(md);
	} else if (k->a.type == KH_KT_AES) {
		full = CMAC_LEN;
		snprintf(name, sizeof(name), "%s", cipher_names[aes_index(k->secret_len)][M_CBC]);
		params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_CIPHER, name, 0);
		params[1] = OSSL_PARAM_construct_end();
	} else {
		kh_ctx_detail(c, "a %s key makes no MAC", kh_ktype_name(k->a.type));
		return KH_ERR_KEY_USAGE;
	}
	ml = full;
	if (kh_frame_has(req, "ML")) {
		if (kh_frame_u64(req, "ML", 1, full, &v) != KH_OK) {
			kh_ctx_detail(c, "ML (1-%zu)", full);
			return KH_ERR_BAD_FIELD;
		}
		ml = (size_t)v;
	}
	if (verify && (kh_frame_hex(req, "MC", given, sizeof(given), &given_len) != KH_OK ||
	               given_len != ml)) {
		kh_ctx_detail(c, "MC (%zu bytes, hex: ML)", ml);
		return kh_frame_has(req, "MC") ? KH_ERR_BAD_FIELD : KH_ERR_MISSING_FIELD;
	}
	if ((r = read_hex(c, req, "DT", &in, &in_len)) != KH_OK)
		return r;
	r = mac_compute(algs.cmac, tmpl, tmpl ? NULL : params, k, in, in_len, mac, sizeof(mac));
	data_free(in, in_len);
	if (r == KH_OK) {
		if (verify)
			r = CRYPTO_memcmp(mac, given, ml) == 0 ? KH_OK : KH_ERR_VERIFY_FAILED;
		else
			r = kh_msg_put_hex(resp, out_tag, mac, ml);
	}
	OPENSSL_cleanse(mac, sizeof(mac));
	return r;
}

static int plan_mac(const struct kh_frame *req, struct kh_op *op, enum kh_ktype type)
{
	op->ref[op->nref++] = data_key(kh_frame_has(req, "MC") ? KH_U_VERIFY : KH_U_SIGN,
	                               CLS(SECRET), KH_KT_BIT(type));
	return KH_OK;
}

static int mac_act(struct kh_ctx *c, const struct kh_frame *req, struct kh_buf *resp)
{
	int r = kh_msg_put(resp, "BB", "Y");
	if (r != KH_OK)
		return r;
	return kh_data_mac(c, req, c->op->key[0], kh_frame_has(req, "MC"), "MC", resp);
}

KH_PLAN(kh_plan_gpmc)
{
	return plan_mac(req, op, KH_KT_AES);
}

KH_ACT(kh_cmd_gpmc)
{
	return mac_act(c, req, resp);
}

KH_PLAN(kh_plan_hmac)
{
	return plan_mac(req, op, KH_KT_GENERIC);
}

KH_ACT(kh_cmd_hmac)
{
	return mac_act(c, req, resp);
}

/* ---- digests -------------------------------------------------------------- */

KH_ACT(kh_cmd_ghsh)
{
	uint8_t md_out[EVP_MAX_MD_SIZE];
	unsigned int n = 0;
	const EVP_MD *md;
	uint8_t *in = NULL;
	size_t in_len = 0, i;
	int r;

	if ((r = kh_req_md(c, req, "HA", "SHA-256", &md)) != KH_OK ||
	    (r = md_index(md, &i)) != KH_OK || (r = read_hex(c, req, "DT", &in, &in_len)) != KH_OK)
		return r;
	r = EVP_Digest(in, in_len, md_out, &n, algs.md[i], NULL) == 1 ? KH_OK : KH_ERR_CRYPTO;
	data_free(in, in_len);
	if (r != KH_OK)
		ERR_clear_error();
	if (r == KH_OK && (r = kh_msg_put(resp, "BB", "Y")) == KH_OK)
		r = kh_msg_put_hex(resp, "HS", md_out, n);
	return r;
}

/* ---- raw RSA with recovery ------------------------------------------------ */

static int read_gpsr(struct kh_ctx *c, const struct kh_frame *req, enum rsa_op *op, int *pad)
{
	static const char ops[] = "EDSV";
	char v[4];
	enum mode m = M_PKCS1;
	const char *p;
	int r;

	if (kh_frame_str(req, "OP", v, sizeof(v)) != KH_OK || strlen(v) != 1 ||
	    (p = strchr(ops, v[0])) == NULL) {
		kh_ctx_detail(c, "OP (E, D, S or V)");
		return kh_frame_has(req, "OP") ? KH_ERR_BAD_FIELD : KH_ERR_MISSING_FIELD;
	}
	*op = (enum rsa_op)(p - ops);
	if (kh_frame_has(req, "PD") &&
	    (r = read_choice(c, req, "PD", M_PKCS1, M_NONE, "PKCS1 or NONE", &m)) != KH_OK)
		return r;
	*pad = m == M_NONE ? RSA_NO_PADDING : RSA_PKCS1_PADDING;
	return KH_OK;
}

/* D, and S without padding, give the private-key operation on any value the
 * client picks: an oracle, so it needs keys.pkcs1_decrypt and is refused in
 * FIPS mode. */
KH_PLAN(kh_plan_gpsr)
{
	static const uint16_t usage[] = {KH_U_ENCRYPT, KH_U_DECRYPT, KH_U_SIGN, KH_U_VERIFY};
	enum rsa_op o;
	int pad, r;

	if ((r = read_gpsr(c, req, &o, &pad)) != KH_OK)
		return r;
	op->ref[op->nref++] = data_key(
	    usage[o], o == RSA_ENC || o == RSA_RECOVER ? CLS(PUBLIC) | CLS(PRIVATE) : CLS(PRIVATE),
	    KH_KT_BIT(KH_KT_RSA));
	if (o == RSA_DEC || (o == RSA_SIGN && pad == RSA_NO_PADDING)) {
		op->perms |= KH_PERM(KH_P_KEYS_PKCS1_DECRYPT);
		op->fips_refusal = "PKCS#1 v1.5 decryption and raw RSA private operations";
	}
	return KH_OK;
}

/* Without padding each operation is the bare modular exponentiation: the
 * private one (D, S) is a raw decryption, the public one (E, V) a raw
 * encryption. */
KH_ACT(kh_cmd_gpsr)
{
	EVP_PKEY *pk = c->op->key[0]->pkey;
	enum rsa_op o;
	int pad, r;

	if ((r = read_gpsr(c, req, &o, &pad)) != KH_OK)
		return r;
	if (pad == RSA_NO_PADDING)
		o = o == RSA_DEC || o == RSA_SIGN ? RSA_DEC : RSA_ENC;
	return rsa_crypt(c, req, pk, o, pad, resp);
}

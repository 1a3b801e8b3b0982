/* Unit tests for major keys: component and fragment ceremonies driven
 * through the real dispatcher, sealing across restarts, volatile mode,
 * tamper detection, and the AEAD under a major key. */
#include "kh_testutil.h"
#include "hsm/hsm_core.h"
#include "hsm/majorkey.h"
#include "hsm/fragment.h"
#include "hsm/db.h"
#include "hsm/audit.h"
#include "common/kh_mem.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char resp[65536];

static int call(struct kh_hsm *hsm, struct kh_session *s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int call(struct kh_hsm *hsm, struct kh_session *s, const char *fmt, ...)
{
	static char req[65536];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(req, sizeof(req), fmt, ap);
	va_end(ap);
	assert_true(n > 0 && (size_t)n < sizeof(req));
	return kh_test_call(hsm, s, req, resp, sizeof(resp));
}

static void hex(const uint8_t *b, size_t n, char *out)
{
	kh_hex_encode(b, n, out);
}

/* The reference check value, computed here with OpenSSL directly. */
static void ref_kcv(const uint8_t *key, size_t len, char out[7])
{
	static const uint8_t zero[16];
	uint8_t blk[32];
	int l = 0;
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	const EVP_CIPHER *c = len == 16   ? EVP_aes_128_ecb()
	                      : len == 24 ? EVP_aes_192_ecb()
	                                  : EVP_aes_256_ecb();
	assert_int_equal(EVP_EncryptInit_ex(ctx, c, NULL, key, NULL), 1);
	EVP_CIPHER_CTX_set_padding(ctx, 0);
	assert_int_equal(EVP_EncryptUpdate(ctx, blk, &l, zero, 16), 1);
	EVP_CIPHER_CTX_free(ctx);
	snprintf(out, 7, "%02X%02X%02X", blk[0], blk[1], blk[2]);
}

static void test_kcv_known_answers(void **state)
{
	uint8_t zero[32] = {0};
	char kcv[7];
	/* FIPS-197 style vectors: AES(0^k, 0^128) */
	assert_int_equal(kh_mk_kcv(zero, 16, kcv), KH_OK);
	assert_string_equal(kcv, "66E94B");
	assert_int_equal(kh_mk_kcv(zero, 32, kcv), KH_OK);
	assert_string_equal(kcv, "DC95C0");
	assert_int_equal(kh_mk_kcv(zero, 24, kcv), KH_OK);
	char ref[7];
	ref_kcv(zero, 24, ref);
	assert_string_equal(kcv, ref);
	assert_int_equal(kh_mk_kcv(zero, 20, kcv), KH_ERR_BAD_FIELD);
	(void)state;
}

/* Load a key from components given as hex, returning the final KCV. */
static void load_components(struct kh_hsm *hsm, struct kh_session *s, const char *name,
                            const uint8_t comps[][32], size_t n, size_t len, char kv[7])
{
	char h[65];
	assert_int_equal(call(hsm, s, "[AOMKLB;KN%s;MOC;ALAES;KL%zu;NP%zu;]", name, len * 8, n),
	                 KH_OK);
	for (size_t i = 0; i < n; i++) {
		hex(comps[i], len, h);
		assert_int_equal(call(hsm, s, "[AOMKLC;CM%s;]", h), KH_OK);
	}
	snprintf(kv, 7, "%s", kh_test_field(resp, "KV"));
	assert_int_equal(strlen(kv), 6);
}

struct audit_seen {
	char text[16384];
};

static int audit_visit(void *arg, const struct kh_audit_entry *e)
{
	struct audit_seen *a = arg;
	size_t n = strlen(a->text);
	snprintf(a->text + n, sizeof(a->text) - n, "%s|%s\n", e->event, e->detail);
	return KH_OK;
}

/* Every audit entry as "event|detail" lines. */
static const char *audit_text(struct kh_hsm *hsm)
{
	static struct audit_seen a;
	uint64_t next = 0;
	a.text[0] = '\0';
	assert_int_equal(kh_audit_read(hsm, 1, 500, audit_visit, &a, &next), KH_OK);
	return a.text;
}

static void test_components(void **state)
{
	struct kh_hsm hsm;
	struct kh_session s;
	char dir[256], h[65], kcv1[7], kcv2[7], kcv3[7], fin[7], want[80];
	uint8_t c[3][32], key[32];

	kh_test_hsm_open(&hsm, dir);
	kh_test_admin_session(&hsm, &s);
	for (int i = 0; i < 32; i++) {
		c[0][i] = (uint8_t)i;
		c[1][i] = (uint8_t)(0xA5 ^ (i * 7));
		c[2][i] = (uint8_t)(0x3C + i * 13);
		key[i] = c[0][i] ^ c[1][i] ^ c[2][i];
	}
	ref_kcv(c[0], 32, kcv1);
	ref_kcv(c[1], 32, kcv2);
	ref_kcv(c[2], 32, kcv3);
	ref_kcv(key, 32, fin);

	assert_int_equal(call(&hsm, &s, "[AOMKST;]"), KH_OK);
	assert_string_equal(kh_test_field(resp, "FT"), "N");
	assert_int_equal(call(&hsm, &s, "[AOMKLC;CM00;]"), KH_ERR_CEREMONY_STATE);
	assert_int_equal(call(&hsm, &s, "[AOMKLB;KNFTK;MOC;ALAES;KL256;NP3;]"), KH_OK);
	assert_string_equal(kh_test_field(resp, "BB"), "Y");

	hex(c[0], 32, h);
	assert_int_equal(call(&hsm, &s, "[AOMKLC;CM%s;CV%s;]", h, kcv1), KH_OK);
	assert_string_equal(kh_test_field(resp, "AE"), kcv1);
	assert_string_equal(kh_test_field(resp, "LD"), "1");
	assert_string_equal(kh_test_field(resp, "LN"), "3");
	assert_string_equal(kh_test_field(resp, "KV"), "");

	/* a wrong CV: refused, not counted, the ceremony goes on */
	hex(c[1], 32, h);
	assert_int_equal(
	    call(&hsm, &s, "[AOMKLC;CM%s;CV%s;]", h, strcmp(kcv1, kcv2) ? kcv1 : "000000"),
	    KH_ERR_BAD_KCV);
	assert_non_null(strstr(resp, "EC21;"));
	/* CV in lowercase is accepted */
	char lower[7];
	for (int i = 0; i < 7; i++)
		lower[i] = (char)(kcv2[i] >= 'A' && kcv2[i] <= 'F' ? kcv2[i] - 'A' + 'a' : kcv2[i]);
	assert_int_equal(call(&hsm, &s, "[AOMKLC;CM%s;CV%s;]", h, lower), KH_OK);
	assert_string_equal(kh_test_field(resp, "AE"), kcv2);
	assert_string_equal(kh_test_field(resp, "LD"), "2");

	assert_int_equal(call(&hsm, &s, "[AOMKST;]"), KH_OK);
	assert_string_equal(kh_test_field(resp, "FT"), "N");

	hex(c[2], 32, h);
	assert_int_equal(call(&hsm, &s, "[AOMKLC;CM%s;]", h), KH_OK);
	assert_string_equal(kh_test_field(resp, "AE"), kcv3);
	assert_string_equal(kh_test_field(resp, "LD"), "3");
	assert_string_equal(kh_test_field(resp, "LN"), "3");
	assert_string_equal(kh_test_field(resp, "KV"), fin);

	assert_int_equal(call(&hsm, &s, "[AOMKST;]"), KH_OK);
	snprintf(want, sizeof(want), "Y/AES-256/%s", fin);
	assert_string_equal(kh_test_field(resp, "FT"), want);
	assert_string_equal(kh_test_field(resp, "PM"), "N");
	assert_string_equal(kh_test_field(resp, "BK"), "N");
	/* the ceremony is over */
	assert_null(s.ceremony);
	{
		/* every step is audited, with check values and never key bytes */
		const char *t = audit_text(&hsm);
		char line[120], hx[65];
		assert_non_null(strstr(t, "majorkey.begin|FTK from 3 components"));
		snprintf(line, sizeof(line), "majorkey.component|FTK component 1 of 3 KCV %s",
		         kcv1);
		assert_non_null(strstr(t, line));
		assert_non_null(strstr(t, "majorkey.component.rejected|"));
		snprintf(line, sizeof(line), "majorkey.component|FTK component 3 of 3 KCV %s",
		         kcv3);
		assert_non_null(strstr(t, line));
		snprintf(line, sizeof(line), "majorkey.load|FTK AES-256 KCV %s", fin);
		assert_non_null(strstr(t, line));
		for (int i = 0; i < 3; i++) {
			kh_hex_encode(c[i], 32, hx);
			hx[12] = '\0';
			assert_null(strstr(t, hx));
		}
	}
	assert_int_equal(call(&hsm, &s, "[AOMKLC;CM%s;]", h), KH_ERR_CEREMONY_STATE);

	/* loaded keys cannot be loaded again until erased */
	assert_int_equal(call(&hsm, &s, "[AOMKLB;KNFTK;MOC;ALAES;KL256;NP2;]"), KH_ERR_EXISTS);
	assert_non_null(strstr(resp, "erase it first"));
	assert_int_equal(call(&hsm, &s, "[AOMKER;KNFTK;]"), KH_OK);
	assert_int_equal(call(&hsm, &s, "[AOMKER;KNFTK;]"), KH_ERR_NOT_FOUND);
	assert_int_equal(call(&hsm, &s, "[AOMKST;]"), KH_OK);
	assert_string_equal(kh_test_field(resp, "FT"), "N");

	/* AES-128 from two components, known values */
	uint8_t c128[2][32];
	memset(c128, 0, sizeof(c128));
	for (int i = 0; i < 16; i++) {
		c128[0][i] = (uint8_t)(0x11 * (i % 16));
		c128[1][i] = (uint8_t)(0xF0 - i);
		key[i] = c128[0][i] ^ c128[1][i];
	}
	ref_kcv(key, 16, fin);
	char kv[7];
	load_components(&hsm, &s, "PMK", c128, 2, 16, kv);
	assert_string_equal(kv, fin);
	assert_int_equal(call(&hsm, &s, "[AOMKST;]"), KH_OK);
	snprintf(want, sizeof(want), "Y/AES-128/%s", fin);
	assert_string_equal(kh_test_field(resp, "PM"), want);

	/* MKLA wipes an unfinished ceremony */
	assert_int_equal(call(&hsm, &s, "[AOMKLB;KNBEK;MOC;ALAES;KL192;NP2;]"), KH_OK);
	hex(c[0], 24, h);
	assert_int_equal(call(&hsm, &s, "[AOMKLC;CM%s;]", h), KH_OK);
	assert_int_equal(call(&hsm, &s, "[AOMKLA;]"), KH_OK);
	assert_null(s.ceremony);
	assert_int_equal(call(&hsm, &s, "[AOMKLC;CM%s;]", h), KH_ERR_CEREMONY_STATE);
	assert_int_equal(call(&hsm, &s, "[AOMKLA;]"), KH_ERR_CEREMONY_STATE);
	/* a ceremony left open is freed by the server on close */
	assert_int_equal(call(&hsm, &s, "[AOMKLB;KNBEK;MOC;ALAES;KL192;NP2;]"), KH_OK);
	assert_int_equal(call(&hsm, &s, "[AOMKLC;CM%s;]", h), KH_OK);
	kh_mk_ceremony_free(s.ceremony);
	s.ceremony = NULL;
	kh_test_hsm_close(&hsm, dir);
	(void)state;
}

/* A repeated component, or components that cancel out to a zero key, are
 * refused without ending the ceremony. */
static void test_degenerate_components(void **state)
{
	struct kh_hsm hsm;
	struct kh_session s;
	char dir[256], h[65];
	uint8_t a[16], b[16], ab[16];
	(void)state;

	kh_test_hsm_open(&hsm, dir);
	kh_test_admin_session(&hsm, &s);
	for (int i = 0; i < 16; i++) {
		a[i] = (uint8_t)(i + 1);
		b[i] = (uint8_t)(0x5A ^ (i * 3));
		ab[i] = a[i] ^ b[i];
	}
	assert_int_equal(call(&hsm, &s, "[AOMKLB;KNFTK;MOC;ALAES;KL128;NP3;]"), KH_OK);
	hex(a, 16, h);
	assert_int_equal(call(&hsm, &s, "[AOMKLC;CM%s;]", h), KH_OK);
	assert_int_equal(call(&hsm, &s, "[AOMKLC;CM%s;]", h), KH_ERR_BAD_KCV);
	assert_non_null(strstr(resp, "repeats component 1"));
	hex(b, 16, h);
	assert_int_equal(call(&hsm, &s, "[AOMKLC;CM%s;]", h), KH_OK);
	hex(ab, 16, h);
	assert_int_equal(call(&hsm, &s, "[AOMKLC;CM%s;]", h), KH_ERR_BAD_KCV);
	assert_non_null(strstr(resp, "all-zero key"));
	assert_int_equal(call(&hsm, &s, "[AOMKST;]"), KH_OK);
	assert_string_equal(kh_test_field(resp, "FT"), "N");
	/* a good third component still completes the ceremony */
	ab[0] ^= 0x80;
	hex(ab, 16, h);
	assert_int_equal(call(&hsm, &s, "[AOMKLC;CM%s;]", h), KH_OK);
	assert_non_null(strstr(resp, "KV"));
	kh_test_hsm_close(&hsm, dir);
}

static void test_bad_lengths(void **state)
{
	struct kh_hsm hsm;
	struct kh_session s;
	char dir[256], big[600];

	kh_test_hsm_open(&hsm, dir);
	kh_test_admin_session(&hsm, &s);
	/* MKLB */
	assert_int_equal(call(&hsm, &s, "[AOMKLB;MOC;ALAES;KL256;NP2;]"), KH_ERR_MISSING_FIELD);
	assert_int_equal(call(&hsm, &s, "[AOMKLB;KNXYZ;MOC;ALAES;KL256;NP2;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(call(&hsm, &s, "[AOMKLB;KNftk;MOC;ALAES;KL256;NP2;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(call(&hsm, &s, "[AOMKLB;KNFTKFTKFTK;MOC;ALAES;KL256;NP2;]"),
	                 KH_ERR_BAD_FIELD);
	assert_int_equal(call(&hsm, &s, "[AOMKLB;KNFTK;ALAES;KL256;NP2;]"), KH_ERR_MISSING_FIELD);
	assert_int_equal(call(&hsm, &s, "[AOMKLB;KNFTK;MOX;ALAES;KL256;NP2;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(call(&hsm, &s, "[AOMKLB;KNFTK;MOCC;ALAES;KL256;NP2;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(call(&hsm, &s, "[AOMKLB;KNFTK;MOC;ALDES;KL256;NP2;]"), KH_ERR_UNSUPPORTED);
	assert_int_equal(call(&hsm, &s, "[AOMKLB;KNFTK;MOC;KL256;NP2;]"), KH_ERR_MISSING_FIELD);
	assert_int_equal(call(&hsm, &s, "[AOMKLB;KNFTK;MOC;ALAES;KL100;NP2;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(call(&hsm, &s, "[AOMKLB;KNFTK;MOC;ALAES;KL512;NP2;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(call(&hsm, &s, "[AOMKLB;KNFTK;MOC;ALAES;KL;NP2;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(call(&hsm, &s, "[AOMKLB;KNFTK;MOC;ALAES;KL256;NP1;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(call(&hsm, &s, "[AOMKLB;KNFTK;MOC;ALAES;KL256;NP10;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(call(&hsm, &s, "[AOMKLB;KNFTK;MOC;ALAES;KL256;]"), KH_ERR_MISSING_FIELD);
	assert_null(s.ceremony);

	/* MKLC, components of 16 bytes */
	assert_int_equal(call(&hsm, &s, "[AOMKLB;KNFTK;MOC;ALAES;KL128;NP2;]"), KH_OK);
	assert_int_equal(call(&hsm, &s, "[AOMKLC;]"), KH_ERR_MISSING_FIELD);
	assert_int_equal(call(&hsm, &s, "[AOMKLC;CM%030d;]", 0), KH_ERR_BAD_FIELD);   /* 15 bytes */
	assert_int_equal(call(&hsm, &s, "[AOMKLC;CM%034d;]", 0), KH_ERR_BAD_FIELD);   /* 17 bytes */
	assert_int_equal(call(&hsm, &s, "[AOMKLC;CM%066d;]", 0), KH_ERR_BAD_FIELD);   /* 33 bytes */
	assert_int_equal(call(&hsm, &s, "[AOMKLC;CM%031d;]", 0), KH_ERR_BAD_FIELD);   /* odd */
	assert_int_equal(call(&hsm, &s, "[AOMKLC;CM%030dZZ;]", 0), KH_ERR_BAD_FIELD); /* not hex */
	assert_int_equal(call(&hsm, &s, "[AOMKLC;CM;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(call(&hsm, &s, "[AOMKLC;CM%032d;CV12345;]", 0), KH_ERR_BAD_FIELD);
	assert_int_equal(call(&hsm, &s, "[AOMKLC;CM%032d;CV1234567;]", 0), KH_ERR_BAD_FIELD);
	assert_int_equal(call(&hsm, &s, "[AOMKLC;CM%032d;CV12345G;]", 0), KH_ERR_BAD_FIELD);
	assert_int_equal(call(&hsm, &s, "[AOMKLC;FB00;PP00;]"), KH_ERR_CEREMONY_STATE);
	/* none of those counted */
	assert_int_equal(call(&hsm, &s, "[AOMKLC;CM%032d;]", 0), KH_OK);
	assert_string_equal(kh_test_field(resp, "LD"), "1");
	assert_int_equal(call(&hsm, &s, "[AOMKLA;]"), KH_OK);

	/* MKLC, fragments */
	assert_int_equal(call(&hsm, &s, "[AOMKLB;KNPMK;MOF;]"), KH_OK);
	assert_int_equal(call(&hsm, &s, "[AOMKLC;PP3132333435363738;]"), KH_ERR_MISSING_FIELD);
	assert_int_equal(call(&hsm, &s, "[AOMKLC;FB00;]"), KH_ERR_MISSING_FIELD);
	memset(big, '4', 2 * 161);
	big[2 * 161] = '\0';
	assert_int_equal(call(&hsm, &s, "[AOMKLC;FB%s;PP3132333435363738;]", big),
	                 KH_ERR_BAD_FIELD);
	assert_int_equal(call(&hsm, &s, "[AOMKLC;FB0;PP3132333435363738;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(call(&hsm, &s, "[AOMKLC;FB4B484631;PP3132333435363738;]"),
	                 KH_ERR_FRAGMENT_INVALID);
	assert_int_equal(call(&hsm, &s, "[AOMKLC;FB4B484631;PP31323334353637;]"), KH_ERR_BAD_FIELD);
	memset(big, '4', 2 * 257);
	big[2 * 257] = '\0';
	assert_int_equal(call(&hsm, &s, "[AOMKLC;FB4B484631;PP%s;]", big), KH_ERR_BAD_FIELD);
	assert_int_equal(call(&hsm, &s, "[AOMKLC;CM%032d;]", 0), KH_ERR_CEREMONY_STATE);
	assert_int_equal(call(&hsm, &s, "[AOMKLA;]"), KH_OK);

	/* MKGN */
	const char *p = "P13132333435363738;P23132333435363738;P33132333435363738;";
	assert_int_equal(call(&hsm, &s, "[AOMKGN;ALAES;KL256;FM2;FN3;%s]", p),
	                 KH_ERR_MISSING_FIELD);
	assert_int_equal(call(&hsm, &s, "[AOMKGN;KNFTK;ALAES;KL255;FM2;FN3;%s]", p),
	                 KH_ERR_BAD_FIELD);
	assert_int_equal(call(&hsm, &s, "[AOMKGN;KNFTK;ALRSA;KL256;FM2;FN3;%s]", p),
	                 KH_ERR_UNSUPPORTED);
	assert_int_equal(call(&hsm, &s, "[AOMKGN;KNFTK;ALAES;KL256;FM1;FN3;%s]", p),
	                 KH_ERR_BAD_FIELD);
	assert_int_equal(call(&hsm, &s, "[AOMKGN;KNFTK;ALAES;KL256;FM10;FN10;%s]", p),
	                 KH_ERR_BAD_FIELD);
	assert_int_equal(call(&hsm, &s, "[AOMKGN;KNFTK;ALAES;KL256;FM3;FN2;%s]", p),
	                 KH_ERR_BAD_FIELD);
	assert_int_equal(call(&hsm, &s, "[AOMKGN;KNFTK;ALAES;KL256;FM2;FN10;%s]", p),
	                 KH_ERR_BAD_FIELD);
	assert_int_equal(call(&hsm, &s, "[AOMKGN;KNFTK;ALAES;KL256;FM2;%s]", p),
	                 KH_ERR_MISSING_FIELD);
	assert_int_equal(call(&hsm, &s, "[AOMKGN;KNFTK;ALAES;KL256;FM2;FN4;%s]", p),
	                 KH_ERR_MISSING_FIELD);
	assert_non_null(strstr(resp, "P4"));
	assert_int_equal(call(&hsm, &s, "[AOMKGN;KNFTK;ALAES;KL256;FM2;FN2;%s]", p),
	                 KH_ERR_BAD_FIELD);
	assert_non_null(strstr(resp, "P3"));
	assert_int_equal(
	    call(&hsm, &s,
	         "[AOMKGN;KNFTK;ALAES;KL256;FM2;FN2;P13132333435363738;P231323334353637;]"),
	    KH_ERR_BAD_FIELD);
	assert_int_equal(
	    call(&hsm, &s, "[AOMKGN;KNFTK;ALAES;KL256;FM2;FN2;P13132333435363738;P2%s;]", big),
	    KH_ERR_BAD_FIELD);
	assert_int_equal(call(&hsm, &s, "[AOMKST;]"), KH_OK);
	assert_string_equal(kh_test_field(resp, "FT"), "N");
	/* MKER */
	assert_int_equal(call(&hsm, &s, "[AOMKER;]"), KH_ERR_MISSING_FIELD);
	assert_int_equal(call(&hsm, &s, "[AOMKER;KNABC;]"), KH_ERR_BAD_FIELD);
	kh_test_hsm_close(&hsm, dir);
	(void)state;
}

/* MKGN 2-of-3, then recombine every pair. */
static const char *P[3] = {"70617373776f72642d6f6e65", "70617373776f72642d74776f",
                           "70617373776f72642d7468726565"};

struct gen {
	char kv[7];
	char f[3][400];
};

static void generate(struct kh_hsm *hsm, struct kh_session *s, const char *name, struct gen *g)
{
	assert_int_equal(call(hsm, s, "[AOMKGN;KN%s;ALAES;KL256;FM2;FN3;P1%s;P2%s;P3%s;]", name,
	                      P[0], P[1], P[2]),
	                 KH_OK);
	snprintf(g->kv, sizeof(g->kv), "%s", kh_test_field(resp, "KV"));
	assert_int_equal(strlen(g->kv), 6);
	for (int i = 0; i < 3; i++) {
		char tag[3] = {'F', (char)('1' + i), 0};
		snprintf(g->f[i], sizeof(g->f[i]), "%s", kh_test_field(resp, tag));
		assert_true(strlen(g->f[i]) > 100);
	}
	assert_string_equal(kh_test_field(resp, "F4"), "");
}

static void test_fragments(void **state)
{
	static const int pairs[3][2] = {{0, 1}, {1, 2}, {0, 2}};
	struct kh_hsm hsm;
	struct kh_session s;
	struct gen g, other, bek;
	char dir[256], want[40];

	kh_test_hsm_open(&hsm, dir);
	kh_test_admin_session(&hsm, &s);
	generate(&hsm, &s, "PMK", &g);
	assert_int_equal(call(&hsm, &s, "[AOMKST;]"), KH_OK);
	snprintf(want, sizeof(want), "Y/AES-256/%s", g.kv);
	assert_string_equal(kh_test_field(resp, "PM"), want);
	/* generating over a loaded key is refused */
	assert_int_equal(
	    call(&hsm, &s, "[AOMKGN;KNPMK;ALAES;KL256;FM2;FN3;P1%s;P2%s;P3%s;]", P[0], P[1], P[2]),
	    KH_ERR_EXISTS);
	assert_int_equal(call(&hsm, &s, "[AOMKLB;KNPMK;MOF;]"), KH_ERR_EXISTS);
	assert_int_equal(call(&hsm, &s, "[AOMKER;KNPMK;]"), KH_OK);

	for (int k = 0; k < 3; k++) {
		int a = pairs[k][0], b = pairs[k][1];
		assert_int_equal(call(&hsm, &s, "[AOMKLB;KNPMK;MOF;]"), KH_OK);
		assert_int_equal(call(&hsm, &s, "[AOMKLC;FB%s;PP%s;]", g.f[a], P[a]), KH_OK);
		assert_int_equal(atoi(kh_test_field(resp, "FX")), a + 1);
		assert_string_equal(kh_test_field(resp, "LD"), "1");
		assert_string_equal(kh_test_field(resp, "LN"), "2");
		assert_string_equal(kh_test_field(resp, "KV"), "");
		/* M-1 fragments: not loaded */
		assert_int_equal(call(&hsm, &s, "[AOMKST;]"), KH_OK);
		assert_string_equal(kh_test_field(resp, "PM"), "N");
		assert_int_equal(call(&hsm, &s, "[AOMKLC;FB%s;PP%s;]", g.f[b], P[b]), KH_OK);
		assert_int_equal(atoi(kh_test_field(resp, "FX")), b + 1);
		assert_string_equal(kh_test_field(resp, "LD"), "2");
		assert_string_equal(kh_test_field(resp, "KV"), g.kv);
		assert_int_equal(call(&hsm, &s, "[AOMKST;]"), KH_OK);
		assert_string_equal(kh_test_field(resp, "PM"), want);
		assert_int_equal(call(&hsm, &s, "[AOMKER;KNPMK;]"), KH_OK);
	}

	/* a duplicate fragment, then a wrong passphrase: neither counts */
	assert_int_equal(call(&hsm, &s, "[AOMKLB;KNPMK;MOF;]"), KH_OK);
	assert_int_equal(call(&hsm, &s, "[AOMKLC;FB%s;PP%s;]", g.f[1], P[1]), KH_OK);
	assert_int_equal(call(&hsm, &s, "[AOMKLC;FB%s;PP%s;]", g.f[1], P[1]),
	                 KH_ERR_FRAGMENT_DUPLICATE);
	assert_int_equal(call(&hsm, &s, "[AOMKLC;FB%s;PP%s;]", g.f[2], P[1]),
	                 KH_ERR_FRAGMENT_INVALID);
	assert_non_null(strstr(resp, "passphrase"));
	assert_int_equal(call(&hsm, &s, "[AOMKST;]"), KH_OK);
	assert_string_equal(kh_test_field(resp, "PM"), "N");
	assert_int_equal(call(&hsm, &s, "[AOMKLC;FB%s;PP%s;]", g.f[2], P[2]), KH_OK);
	assert_string_equal(kh_test_field(resp, "LD"), "2");
	assert_string_equal(kh_test_field(resp, "KV"), g.kv);

	/* fragments of another key: a BEK's, and another PMK's */
	generate(&hsm, &s, "BEK", &bek);
	assert_int_equal(call(&hsm, &s, "[AOMKER;KNPMK;]"), KH_OK);
	generate(&hsm, &s, "PMK", &other);
	assert_string_not_equal(other.kv, g.kv);
	assert_int_equal(call(&hsm, &s, "[AOMKER;KNPMK;]"), KH_OK);
	assert_int_equal(call(&hsm, &s, "[AOMKLB;KNPMK;MOF;]"), KH_OK);
	assert_int_equal(call(&hsm, &s, "[AOMKLC;FB%s;PP%s;]", bek.f[0], P[0]),
	                 KH_ERR_FRAGMENT_INVALID);
	assert_non_null(strstr(resp, "BEK"));
	assert_int_equal(call(&hsm, &s, "[AOMKLC;FB%s;PP%s;]", g.f[0], P[0]), KH_OK);
	assert_int_equal(call(&hsm, &s, "[AOMKLC;FB%s;PP%s;]", other.f[1], P[1]),
	                 KH_ERR_FRAGMENT_INVALID);
	assert_non_null(strstr(resp, "check value"));
	assert_string_equal(s.ceremony != NULL ? "open" : "closed", "open");
	/* a damaged fragment */
	char bad[400];
	snprintf(bad, sizeof(bad), "%s", g.f[1]);
	bad[strlen(bad) - 1] = bad[strlen(bad) - 1] == '0' ? '1' : '0';
	assert_int_equal(call(&hsm, &s, "[AOMKLC;FB%s;PP%s;]", bad, P[1]), KH_ERR_FRAGMENT_INVALID);
	assert_int_equal(call(&hsm, &s, "[AOMKST;]"), KH_OK);
	assert_string_equal(kh_test_field(resp, "PM"), "N");
	assert_int_equal(call(&hsm, &s, "[AOMKLC;FB%s;PP%s;]", g.f[1], P[1]), KH_OK);
	assert_string_equal(kh_test_field(resp, "KV"), g.kv);
	kh_test_hsm_close(&hsm, dir);
	(void)state;
}

/* Shamir alone cannot tell a wrong combination: a fragment that
 * authenticates (made with the custodian's passphrase) but carries a share
 * of another split recombines to garbage, which the KCV check refuses. */
static void test_recombination_checked(void **state)
{
	struct kh_hsm hsm;
	struct kh_session s;
	struct kh_fragment_hdr h;
	struct gen a;
	uint8_t file[KH_FRAGMENT_MAX_LEN], share[32], pp[64];
	size_t flen = 0;
	char dir[256], fhex[2 * KH_FRAGMENT_MAX_LEN + 1];
	int pplen;

	kh_test_hsm_open(&hsm, dir);
	kh_test_admin_session(&hsm, &s);
	generate(&hsm, &s, "FTK", &a);
	assert_int_equal(call(&hsm, &s, "[AOMKER;KNFTK;]"), KH_OK);

	memset(&h, 0, sizeof(h));
	strcpy(h.name, "FTK");
	strcpy(h.alg, "AES");
	h.bits = 256;
	h.m = 2;
	h.n = 3;
	h.number = 2;
	memcpy(h.kcv, a.kv, 7);
	memset(share, 0x77, sizeof(share));
	pplen = kh_hex_decode(P[1], strlen(P[1]), pp, sizeof(pp));
	assert_true(pplen > 0);
	assert_int_equal(kh_fragment_seal(&h, share, pp, (size_t)pplen, file, &flen), KH_OK);
	kh_hex_encode(file, flen, fhex);

	assert_int_equal(call(&hsm, &s, "[AOMKLB;KNFTK;MOF;]"), KH_OK);
	assert_int_equal(call(&hsm, &s, "[AOMKLC;FB%s;PP%s;]", a.f[0], P[0]), KH_OK);
	assert_int_equal(call(&hsm, &s, "[AOMKLC;FB%s;PP%s;]", fhex, P[1]), KH_ERR_BAD_KCV);
	assert_null(s.ceremony);
	assert_int_equal(call(&hsm, &s, "[AOMKST;]"), KH_OK);
	assert_string_equal(kh_test_field(resp, "FT"), "N");
	/* the genuine pair still works */
	assert_int_equal(call(&hsm, &s, "[AOMKLB;KNFTK;MOF;]"), KH_OK);
	assert_int_equal(call(&hsm, &s, "[AOMKLC;FB%s;PP%s;]", a.f[0], P[0]), KH_OK);
	assert_int_equal(call(&hsm, &s, "[AOMKLC;FB%s;PP%s;]", a.f[1], P[1]), KH_OK);
	assert_string_equal(kh_test_field(resp, "KV"), a.kv);
	kh_test_hsm_close(&hsm, dir);
	(void)state;
}

static void test_seal_open(void **state)
{
	struct kh_hsm hsm;
	char dir[256];
	uint8_t key[32], pt[40], ct[40 + KH_MK_SEAL_OVERHEAD], ct2[sizeof(ct)], out[40];
	size_t clen = 0, clen2 = 0, olen = 0;
	const uint8_t aad[] = "bound attributes";

	kh_test_hsm_open(&hsm, dir);
	memset(key, 0x5A, sizeof(key));
	memset(pt, 0xC3, sizeof(pt));
	assert_int_equal(kh_mk_seal(&hsm, KH_MK_PMK, aad, sizeof(aad), pt, sizeof(pt), ct, &clen),
	                 KH_ERR_MAJOR_KEY_NOT_LOADED);
	assert_int_equal(
	    kh_mk_load(&hsm, KH_MK_PMK, key, 32, "unit", "majorkey.load", "test", NULL), KH_OK);
	assert_int_equal(
	    kh_mk_load(&hsm, KH_MK_PMK, key, 32, "unit", "majorkey.load", "test", NULL),
	    KH_ERR_EXISTS);
	assert_int_equal(
	    kh_mk_load(&hsm, KH_MK_FTK, key, 20, "unit", "majorkey.load", "test", NULL),
	    KH_ERR_BAD_FIELD);
	assert_int_equal(kh_mk_seal(&hsm, KH_MK_PMK, aad, sizeof(aad), pt, sizeof(pt), ct, &clen),
	                 KH_OK);
	assert_int_equal(clen, sizeof(pt) + KH_MK_SEAL_OVERHEAD);
	assert_int_equal(kh_mk_seal(&hsm, KH_MK_PMK, aad, sizeof(aad), pt, sizeof(pt), ct2, &clen2),
	                 KH_OK);
	assert_memory_not_equal(ct, ct2, clen); /* fresh nonce each time */
	assert_int_equal(kh_mk_open(&hsm, KH_MK_PMK, aad, sizeof(aad), ct, clen, out, &olen),
	                 KH_OK);
	assert_int_equal(olen, sizeof(pt));
	assert_memory_equal(out, pt, olen);
	/* wrong major, wrong aad, flipped byte, short input */
	assert_int_equal(kh_mk_open(&hsm, KH_MK_FTK, aad, sizeof(aad), ct, clen, out, &olen),
	                 KH_ERR_MAJOR_KEY_NOT_LOADED);
	assert_int_equal(kh_mk_open(&hsm, KH_MK_PMK, aad, sizeof(aad) - 1, ct, clen, out, &olen),
	                 KH_ERR_CRYPTO);
	for (size_t i = 0; i < clen; i += 7) {
		ct[i] ^= 1;
		assert_int_equal(
		    kh_mk_open(&hsm, KH_MK_PMK, aad, sizeof(aad), ct, clen, out, &olen),
		    KH_ERR_CRYPTO);
		ct[i] ^= 1;
	}
	assert_int_equal(kh_mk_open(&hsm, KH_MK_PMK, aad, sizeof(aad), ct, 27, out, &olen),
	                 KH_ERR_CRYPTO);
	/* the same key under another name opens nothing sealed under PMK,
	 * except through a key that is byte-for-byte the same: derivation is
	 * deterministic, so FTK holding PMK's bytes opens PMK's output */
	assert_int_equal(
	    kh_mk_load(&hsm, KH_MK_FTK, key, 32, "unit", "majorkey.load", "test", NULL), KH_OK);
	assert_int_equal(kh_mk_open(&hsm, KH_MK_FTK, aad, sizeof(aad), ct, clen, out, &olen),
	                 KH_OK);
	/* the backup key is separate from the wrap key */
	assert_int_equal(kh_mk_open_ex(&hsm, KH_MK_PMK, "keyhold backup v1", aad, sizeof(aad), ct,
	                               clen, out, &olen),
	                 KH_ERR_CRYPTO);
	/* a second device with the same major key opens what the first sealed */
	struct kh_hsm h2;
	char dir2[256];
	kh_test_hsm_open(&h2, dir2);
	assert_int_equal(kh_mk_load(&h2, KH_MK_PMK, key, 32, "unit", "majorkey.load", "test", NULL),
	                 KH_OK);
	assert_int_equal(kh_mk_open(&h2, KH_MK_PMK, aad, sizeof(aad), ct, clen, out, &olen), KH_OK);
	assert_memory_equal(out, pt, sizeof(pt));
	kh_test_hsm_close(&h2, dir2);
	kh_test_hsm_close(&hsm, dir);
	(void)state;
}

static void test_restart_sealed_and_volatile(void **state)
{
	struct kh_hsm hsm;
	struct kh_session s;
	struct kh_mk_info info;
	char dir[256], want[40];
	uint8_t c[2][32], pt[16] = "sixteen bytes!!", ct[16 + KH_MK_SEAL_OVERHEAD], out[16];
	size_t clen = 0, olen = 0;
	char kv[7];

	for (int i = 0; i < 32; i++) {
		c[0][i] = (uint8_t)(i * 3);
		c[1][i] = (uint8_t)(0xFF - i);
	}
	kh_test_hsm_open(&hsm, dir);
	kh_test_admin_session(&hsm, &s);
	load_components(&hsm, &s, "FTK", c, 2, 32, kv);
	assert_int_equal(kh_mk_seal(&hsm, KH_MK_FTK, NULL, 0, pt, sizeof(pt), ct, &clen), KH_OK);

	/* sealed: survives a restart, and opens what was sealed before */
	kh_hsm_close(&hsm);
	assert_int_equal(kh_hsm_open(&hsm, dir, false), KH_OK);
	kh_mk_info(&hsm, KH_MK_FTK, &info);
	assert_true(info.loaded);
	assert_string_equal(info.kcv, kv);
	assert_int_equal(info.bits, 256);
	assert_int_equal(kh_mk_open(&hsm, KH_MK_FTK, NULL, 0, ct, clen, out, &olen), KH_OK);
	assert_memory_equal(out, pt, sizeof(pt));
	kh_test_admin_session(&hsm, &s);
	assert_int_equal(call(&hsm, &s, "[AOMKST;]"), KH_OK);
	snprintf(want, sizeof(want), "Y/AES-256/%s", kv);
	assert_string_equal(kh_test_field(resp, "FT"), want);

	/* the same data dir started volatile ignores the sealed copy */
	kh_hsm_close(&hsm);
	assert_int_equal(kh_hsm_open(&hsm, dir, true), KH_OK);
	kh_mk_info(&hsm, KH_MK_FTK, &info);
	assert_false(info.loaded);
	/* volatile: loading writes no sealed key, and a restart forgets it */
	kh_test_admin_session(&hsm, &s);
	load_components(&hsm, &s, "FTK", c, 2, 32, kv);
	kh_mk_info(&hsm, KH_MK_FTK, &info);
	assert_true(info.loaded);
	{
		sqlite3_stmt *st;
		assert_int_equal(sqlite3_prepare_v2(
		                     kh_db_sqlite(hsm.db),
		                     "SELECT sealed IS NULL, kcv FROM major_keys WHERE name='FTK'",
		                     -1, &st, NULL),
		                 SQLITE_OK);
		assert_int_equal(sqlite3_step(st), SQLITE_ROW);
		assert_int_equal(sqlite3_column_int(st, 0), 1);
		assert_string_equal((const char *)sqlite3_column_text(st, 1), kv);
		sqlite3_finalize(st);
	}
	kh_hsm_close(&hsm);
	assert_int_equal(kh_hsm_open(&hsm, dir, true), KH_OK);
	kh_mk_info(&hsm, KH_MK_FTK, &info);
	assert_false(info.loaded);
	kh_hsm_close(&hsm);
	/* and not in sealed mode either: the sealed copy was replaced */
	assert_int_equal(kh_hsm_open(&hsm, dir, false), KH_OK);
	kh_mk_info(&hsm, KH_MK_FTK, &info);
	assert_false(info.loaded);
	kh_test_hsm_close(&hsm, dir);
	(void)state;
}

/* Each edit of a sealed row makes the next start fail. */
static void test_tampered_row_refused(void **state)
{
	static const char *const edits[] = {
	    "UPDATE major_keys SET sealed = substr(sealed, 1, 20) || "
	    "x'00' || substr(sealed, 22) WHERE name='PMK'",
	    "UPDATE major_keys SET kcv = '000000' WHERE name='PMK'",
	    "UPDATE major_keys SET bits = 128 WHERE name='PMK'",
	    "UPDATE major_keys SET name = 'FTK' WHERE name='PMK'",
	    "UPDATE major_keys SET sealed = substr(sealed, 1, length(sealed) - 1) WHERE name='PMK'",
	};
	for (size_t e = 0; e < sizeof(edits) / sizeof(edits[0]); e++) {
		struct kh_hsm hsm;
		char dir[256], cmd[300];
		uint8_t key[32];
		memset(key, (int)(0x10 + e), sizeof(key));
		key[0] = 0; /* the sealed byte edited above (offset 21) differs from x'00' */
		kh_test_hsm_open(&hsm, dir);
		assert_int_equal(
		    kh_mk_load(&hsm, KH_MK_PMK, key, 32, "unit", "majorkey.load", "t", NULL),
		    KH_OK);
		/* make sure the edited byte really changes */
		if (e == 0)
			assert_int_equal(
			    kh_test_db_exec(&hsm,
			                    "UPDATE major_keys SET sealed = substr(sealed, 1, 20) "
			                    "|| x'FF' || substr(sealed, 22) WHERE name='PMK'"),
			    SQLITE_OK);
		assert_int_equal(kh_test_db_exec(&hsm, edits[e]), SQLITE_OK);
		kh_hsm_close(&hsm);
		assert_int_equal(kh_hsm_open(&hsm, dir, false), KH_ERR_CRYPTO);
		kh_hsm_close(&hsm);
		/* volatile mode does not read sealed rows, so it starts */
		assert_int_equal(kh_hsm_open(&hsm, dir, true), KH_OK);
		kh_hsm_close(&hsm);
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
		assert_int_equal(system(cmd), 0);
	}
	(void)state;
}

static bool file_has(const char *path, const uint8_t *needle, size_t n)
{
	FILE *f = fopen(path, "rb");
	if (f == NULL)
		return false;
	static uint8_t buf[8 << 20];
	size_t len = fread(buf, 1, sizeof(buf), f);
	fclose(f);
	return memmem(buf, len, needle, n) != NULL;
}

static void assert_not_on_disk(const char *dir, const uint8_t *secret, size_t n)
{
	static const char *const files[] = {"keyhold.db", "keyhold.db-wal", "keyhold.db-shm"};
	char path[512], hx[2 * 32 + 1];
	kh_hex_encode(secret, n, hx);
	for (size_t i = 0; i < 3; i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
		assert_false(file_has(path, secret, n));
		assert_false(file_has(path, (const uint8_t *)hx, 2 * n));
		/* and not any 8-byte run of it */
		for (size_t o = 0; o + 8 <= n; o += 8)
			assert_false(file_has(path, secret + o, 8));
	}
}

static void test_components_not_on_disk(void **state)
{
	struct kh_hsm hsm;
	struct kh_session s;
	char dir[256], kv[7];
	uint8_t c[3][32], key[32];

	for (int i = 0; i < 32; i++) {
		c[0][i] = (uint8_t)(0x9E ^ (i * 29));
		c[1][i] = (uint8_t)(0x4D + i * 31);
		c[2][i] = (uint8_t)(0xE7 ^ (i * 17 + 5));
		key[i] = c[0][i] ^ c[1][i] ^ c[2][i];
	}
	kh_test_hsm_open(&hsm, dir);
	kh_test_admin_session(&hsm, &s);
	load_components(&hsm, &s, "BEK", c, 3, 32, kv);
	for (int i = 0; i < 3; i++)
		assert_not_on_disk(dir, c[i], 32);
	assert_not_on_disk(dir, key, 32);
	kh_hsm_close(&hsm);
	for (int i = 0; i < 3; i++)
		assert_not_on_disk(dir, c[i], 32);
	assert_not_on_disk(dir, key, 32);
	{
		/* positive control: the search does find what is stored */
		char path[512];
		snprintf(path, sizeof(path), "%s/keyhold.db", dir);
		assert_true(file_has(path, (const uint8_t *)kv, 6));
	}
	assert_int_equal(kh_hsm_open(&hsm, dir, false), KH_OK);
	kh_test_hsm_close(&hsm, dir);
	(void)state;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_kcv_known_answers),
	    cmocka_unit_test(test_components),
	    cmocka_unit_test(test_degenerate_components),
	    cmocka_unit_test(test_bad_lengths),
	    cmocka_unit_test(test_fragments),
	    cmocka_unit_test(test_recombination_checked),
	    cmocka_unit_test(test_seal_open),
	    cmocka_unit_test(test_restart_sealed_and_volatile),
	    cmocka_unit_test(test_tampered_row_refused),
	    cmocka_unit_test(test_components_not_on_disk),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

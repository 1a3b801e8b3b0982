/* Key objects through the dispatcher: symmetric generation, cryptograms,
 * slots and identifiers, the range kinds, Authorized keys, tampering with a
 * stored key or a cryptogram, and the cache following changes. What the
 * PKCS#11 module reads and changes: GPKR/GPKS attributes and public parts,
 * bound attributes changed in the allowed directions (slots and
 * cryptograms), data objects, and slots the HSM picks (`*`), also from
 * many threads at once. */
#include "kh_testutil.h"
#include "hsm/dispatch.h"
#include "hsm/keyobj.h"
#include "hsm/selftest.h"
#include "common/kh_buf.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/pem.h>
#include <openssl/x509.h>

static void test_generate_and_cryptograms(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	char req[4096];
	kh_test_session(&p, KH_PORT_PROD);

	/* a cryptogram, then the same key made persistent in slot 11 */
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;]"), KH_OK);
	char *bg = kh_test_fx_field(x, "BG"), *kd = kh_test_fx_field(x, "KD");
	char *ae = kh_test_fx_field(x, "AE");
	assert_int_equal(strlen(kd), 32);
	assert_int_equal(strlen(ae), 6);
	snprintf(req, sizeof(req), "[AOGPKA;CG%s;SL11;]", bg);
	assert_int_equal(KH_CALL(x, &p, req), KH_OK);
	assert_string_equal(kh_test_field(x->out, "KD"), kd);
	assert_string_equal(kh_test_field(x->out, "AE"), ae);
	/* the identifier is unique in the table: a copy needs NI=Y */
	snprintf(req, sizeof(req), "[AOGPKA;CG%s;SL12;]", bg);
	assert_int_equal(KH_CALL(x, &p, req), KH_ERR_EXISTS);
	snprintf(req, sizeof(req), "[AOGPKA;CG%s;SL12;NIY;]", bg);
	assert_int_equal(KH_CALL(x, &p, req), KH_OK);
	assert_string_not_equal(kh_test_field(x->out, "KD"), kd);
	/* GPGC gives the slot's key back as a cryptogram with the same id */
	snprintf(req, sizeof(req), "[AOGPGC;SL11;KD%s;]", kd);
	assert_int_equal(KH_CALL(x, &p, req), KH_OK);
	assert_string_equal(kh_test_field(x->out, "KD"), kd);
	assert_int_equal(strlen(kh_test_field(x->out, "BG")), strlen(bg));
	/* a wrong identifier for the slot is refused */
	assert_int_equal(KH_CALL(x, &p, "[AOGPGC;SL11;KD00000000000000000000000000000000;]"),
	                 KH_ERR_NOT_FOUND);
	assert_non_null(strstr(x->out, "identifier differs"));
	/* a flipped bit anywhere in a cryptogram: refused */
	for (size_t i = 0; i < strlen(bg); i += 7) {
		char *t = strdup(bg);
		t[i] = t[i] == '0' ? '1' : '0';
		snprintf(req, sizeof(req), "[AOGPKA;CG%s;SL13;]", t);
		int r = KH_CALL(x, &p, req);
		assert_true(r == KH_ERR_CRYPTO || r == KH_ERR_BAD_FIELD);
		free(t);
	}
	assert_int_equal(KH_CALL(x, &p, "[AOGPKR;SL13;]"), KH_ERR_NOT_FOUND);
	/* delete: a wrong id refuses, the right one deletes, the cache forgets */
	assert_int_equal(KH_CALL(x, &p, "[AOGPKD;SL11;KD00000000000000000000000000000000;]"),
	                 KH_ERR_NOT_FOUND);
	snprintf(req, sizeof(req), "[AOGPKD;SL11;KD%s;]", kd);
	assert_int_equal(KH_CALL(x, &p, req), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGC;SL11;]"), KH_ERR_NOT_FOUND);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKD;SL11;]"), KH_ERR_NOT_FOUND);
	/* generated into a slot; replacing needs RP=Y */
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT4;SL20;LB6C6162656C;]"), KH_OK);
	assert_string_equal(kh_test_field(x->out, "BG"), "");
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT4;SL20;]"), KH_ERR_EXISTS);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT7;LN64;SL20;RPY;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKR;SL20;]"), KH_OK);
	assert_non_null(strstr(x->out, "TYGENERIC;BT512;"));
	/* bad fields change nothing */
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT9;SL21;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;CZEQ;SL21;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;KFL;SL21;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;FSXYZ;SL21;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;FSFTK;SL21;]"), KH_ERR_MAJOR_KEY_NOT_LOADED);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKR;SL21;]"), KH_ERR_NOT_FOUND);
	free(bg);
	free(kd);
	free(ae);
}

static void test_clear_import(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	kh_test_session(&p, KH_PORT_PROD);
	/* FIPS-197 appendix C.1 key: its check value is AES(key, 0) */
	assert_int_equal(
	    KH_CALL(x, &p, "[AOGPKA;CLsecret;KTAES;KV000102030405060708090A0B0C0D0E0F;SL30;]"),
	    KH_OK);
	assert_string_equal(kh_test_field(x->out, "AE"), "C6A13B");
	assert_int_equal(KH_CALL(x, &p, "[AOGPKA;CLsecret;KTAES;KV0001;SL31;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKA;CLsecret;KTRSA;KV0001;SL31;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKA;CLprivate;KTRSA;KV0001;SL31;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKA;CLsecret;KTAES;SL31;]"), KH_ERR_MISSING_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKR;SL31;]"), KH_ERR_NOT_FOUND);
}

/* A role with a symmetric and an asymmetric range, Authorized permission
 * off: the range kind decides where a key may go. */
static void test_range_kinds_and_authorized(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	char req[256];
	kh_test_app_login(x, &p, "GPGS,GPGC,GPKA");
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;SL150;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;SL250;]"), KH_ERR_SLOT_OUT_OF_RANGE);
	assert_non_null(strstr(x->out, "range kind"));
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;SL350;]"), KH_ERR_SLOT_OUT_OF_RANGE);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGC;SL150;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGC;SL10;]"), KH_ERR_SLOT_OUT_OF_RANGE);
	/* Authorized keys need keys.authorized */
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;KFA;SL151;]"), KH_ERR_PERMISSION_DENIED);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNapp;PMkeys,keys.authorized;]"), KH_OK);
	assert_int_equal(KH_LOGN(x, &p, "appuser", KH_TEST_APP_PW, NULL), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;KFAX;]"), KH_OK);
	char *bg = strdup(kh_test_field(x->out, "BG"));
	/* ...and a logged-in identity to use: not before login */
	struct kh_session anon;
	kh_test_session(&anon, KH_PORT_PROD);
	snprintf(req, sizeof(req), "[AOGPKA;CG%s;SL40;]", bg);
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNAnonymous;PMkeys,keys.authorized;]"),
	                 KH_OK);
	assert_int_equal(KH_CALL(x, &anon, req), KH_ERR_NOT_LOGGED_IN);
	snprintf(req, sizeof(req), "[AOGPKA;CG%s;SL152;]", bg);
	assert_int_equal(KH_CALL(x, &p, req), KH_OK);
	free(bg);
}

/* An edited row does not open, even for a key that was cached before
 * (the cache is dropped as a restart would); GPKD can still clear it. */
static void test_tampered_row(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	kh_test_session(&p, KH_PORT_PROD);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;SL50;CZE;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGC;SL50;]"), KH_OK);
	/* widen the usage in the database: E -> EDGVWUX */
	assert_int_equal(
	    kh_test_db_exec(&x->hsm, "UPDATE keys SET attrs=X'01007F0030' WHERE slot=50"), 0);
	kh_keycache_clear(&x->hsm);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGC;SL50;]"), KH_ERR_CRYPTO);
	assert_non_null(strstr(x->out, "does not open"));
	assert_int_equal(KH_CALL(x, &p, "[AOGPKD;SL50;]"), KH_OK);
	/* a key moved to another slot in the database does not open there */
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;SL51;]"), KH_OK);
	assert_int_equal(kh_test_db_exec(&x->hsm, "UPDATE keys SET slot=52 WHERE slot=51"), 0);
	kh_keycache_clear(&x->hsm);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGC;SL52;]"), KH_ERR_CRYPTO);
}

static void test_error_state_refuses_crypto(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	kh_test_session(&p, KH_PORT_PROD);
	atomic_store(&x->hsm.error_state, 1);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;]"), KH_ERR_STATE);
	assert_non_null(strstr(x->out, "self-test failed"));
	assert_int_equal(KH_CALL(x, &p, "[AORAND;NB8;]"), KH_ERR_STATE);
	assert_int_equal(KH_CALL(x, &p, "[AOSTAT;]"), KH_OK);
	assert_non_null(strstr(x->out, "STERROR;"));
	atomic_store(&x->hsm.error_state, 0);
	/* SLFT on demand: a pass reports OK */
	assert_int_equal(KH_CALL(x, &x->admin, "[AOSLFT;]"), KH_OK);
	assert_non_null(strstr(x->out, "STOK;"));
#ifdef KH_FAULT_INJECTION
	/* a failing known-answer test puts the device in the error state */
	kh_selftest_force_failure("AES-GCM");
	assert_int_equal(KH_CALL(x, &x->admin, "[AOSLFT;]"), KH_OK);
	kh_selftest_force_failure(NULL);
	assert_non_null(strstr(x->out, "STERROR;"));
	assert_non_null(strstr(x->out, "TFAES-GCM;"));
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;]"), KH_ERR_STATE);
	/* a later pass does not clear it: only a restart does */
	assert_int_equal(KH_CALL(x, &x->admin, "[AOSLFT;]"), KH_OK);
	assert_non_null(strstr(x->out, "STERROR;"));
#endif
}

/* The FIPS key policy as a function: what each type and size may do.
 * Ed25519 and X25519 nothing; RSA under 1024 bits nothing; RSA 1024-2047
 * verification alone; no limit outside FIPS mode. */
static void test_fips_key_policy(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	kh_test_session(&p, KH_PORT_PROD);
	struct kh_ctx c = {.hsm = &x->hsm, .s = &p};
	static const struct {
		enum kh_ktype type;
		uint32_t bits;
		uint16_t use;
		bool ok;
	} cases[] = {
	    {KH_KT_RSA, 2048, KH_FIPS_USE_MAKE, true},
	    {KH_KT_RSA, 2048, KH_U_SIGN, true},
	    {KH_KT_RSA, 2047, KH_U_VERIFY, true},
	    {KH_KT_RSA, 1024, KH_U_VERIFY, true},
	    {KH_KT_RSA, 1024, KH_FIPS_USE_MAKE, false},
	    {KH_KT_RSA, 1024, KH_U_SIGN, false},
	    {KH_KT_RSA, 1024, KH_U_ENCRYPT, false},
	    {KH_KT_RSA, 1024, KH_U_WRAP, false},
	    {KH_KT_RSA, 1024, KH_U_VERIFY | KH_U_ENCRYPT, false},
	    {KH_KT_RSA, 1023, KH_U_VERIFY, false},
	    {KH_KT_RSA, 512, KH_U_VERIFY, false},
	    {KH_KT_EC, 256, KH_U_SIGN, true},
	    {KH_KT_EC, 521, KH_U_DERIVE, true},
	    {KH_KT_EC, 224, KH_U_VERIFY, false},
	    {KH_KT_ED25519, 255, KH_U_SIGN, false},
	    {KH_KT_ED25519, 255, KH_U_VERIFY, false},
	    {KH_KT_ED25519, 255, KH_FIPS_USE_MAKE, false},
	    {KH_KT_X25519, 255, KH_U_DERIVE, false},
	    {KH_KT_X25519, 255, KH_FIPS_USE_MAKE, false},
	    {KH_KT_AES, 128, KH_U_ENCRYPT, true},
	    {KH_KT_GENERIC, 8, KH_U_SIGN, true},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct kh_keyattr a = {
		    .cls = KH_KC_PUBLIC, .type = cases[i].type, .bits = cases[i].bits};
		x->hsm.fips = false;
		assert_int_equal(kh_key_policy(&c, &a, cases[i].use), KH_OK);
		x->hsm.fips = true;
		p.detail[0] = '\0';
		int r = kh_key_policy(&c, &a, cases[i].use);
		if (r != (cases[i].ok ? KH_OK : KH_ERR_FIPS))
			fail_msg("case %zu: %d", i, r);
		if (!cases[i].ok)
			assert_true(p.detail[0] != '\0');
	}
	x->hsm.fips = false;
}

/* In FIPS mode a key of a refused type stays in its slot, can be neither
 * used nor read, and can still be deleted (GPKD does not open it). */
static void test_fips_refused_keys_in_slots(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	kh_test_session(&p, KH_PORT_PROD);
	assert_int_equal(KH_CALL(x, &p, "[AOGECC;RA5;SL40;PS41;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGECC;RA6;SL42;PS43;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &x->admin, "[AOSETS;FIY;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOASYS;SL40;DT00;]"), KH_ERR_FIPS);
	assert_non_null(strstr(x->out, "Ed25519"));
	assert_int_equal(KH_CALL(x, &p, "[AOGPKR;SL41;]"), KH_ERR_FIPS);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGC;SL42;]"), KH_ERR_FIPS);
	assert_non_null(strstr(x->out, "X25519"));
	assert_int_equal(KH_CALL(x, &p, "[AOAPFP;SL42;]"), KH_ERR_FIPS);
	for (unsigned s = 40; s <= 43; s++)
		assert_int_equal(KH_CALLF(x, &p, "[AOGPKD;SL%u;]", s), KH_OK);
}

/* ---- what the PKCS#11 module reads: GPKR / GPKS ---------------------------------- */

/* A self-signed certificate for key pk, as DER hex. */
static char *cert_hex(EVP_PKEY *pk)
{
	X509 *c = X509_new();
	X509_NAME *n = X509_NAME_new();
	uint8_t *der = NULL;
	assert_non_null(c);
	assert_int_equal(ASN1_INTEGER_set(X509_get_serialNumber(c), 9), 1);
	assert_int_equal(X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC,
	                                            (const unsigned char *)"unit", -1, -1, 0),
	                 1);
	assert_int_equal(X509_set_subject_name(c, n), 1);
	assert_int_equal(X509_set_issuer_name(c, n), 1);
	assert_non_null(X509_gmtime_adj(X509_getm_notBefore(c), 0));
	assert_non_null(X509_gmtime_adj(X509_getm_notAfter(c), 3600));
	assert_int_equal(X509_set_pubkey(c, pk), 1);
	assert_true(X509_sign(c, pk, EVP_get_digestbyname("SHA256")) > 0);
	char *h = kh_test_der_hex(i2d_X509(c, &der), &der);
	X509_NAME_free(n);
	X509_free(c);
	return h;
}

static void test_gpkr_attributes(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	kh_test_session(&p, KH_PORT_PROD);
	assert_int_equal(
	    KH_CALL(x, &x->admin, "[AORLMD;RNAnonymous;PMkeys,keys.all_slots,keys.import_pki;]"),
	    KH_OK);

	/* an AES key: usage, flags, major key and the check value GPGS gave */
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;CZED;KFXM;SL10;LB6B;]"), KH_OK);
	char *ae = kh_test_fx_field(x, "AE"), *kd = kh_test_fx_field(x, "KD");
	assert_int_equal(KH_CALL(x, &p, "[AOGPKR;SL10;]"), KH_OK);
	assert_non_null(strstr(x->out, "[AOGPKR;SL10;KD"));
	assert_string_equal(kh_test_field(x->out, "KD"), kd);
	assert_non_null(strstr(x->out, ";LB6B;KI;EX;CLsecret;TYAES;BT256;CZED;KFXML;FSPMK;AE"));
	assert_string_equal(kh_test_field(x->out, "AE"), ae);
	assert_null(strstr(x->out, ";RD"));
	/* GPKS without changes answers the same, here with the identifier */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKS;SL10;KD%s;]", kd), KH_OK);
	assert_non_null(strstr(x->out, ";CLsecret;TYAES;BT256;CZED;KFXML;FSPMK;AE"));
	/* a generic secret under the FTK: its check value is SHA-1's */
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT7;LN20;CZGV;FSFTK;SL11;]"), KH_OK);
	char *ae2 = kh_test_fx_field(x, "AE");
	assert_int_equal(KH_CALL(x, &p, "[AOGPKR;SL11;]"), KH_OK);
	assert_non_null(strstr(x->out, ";CLsecret;TYGENERIC;BT160;CZGV;KFLN;FSFTK;AE"));
	assert_string_equal(kh_test_field(x->out, "AE"), ae2);
	/* a pair: RD is the public key GECC returned, in both halves */
	assert_int_equal(KH_CALL(x, &p, "[AOGECC;RA2;CZG;KFS;SL12;PS13;]"), KH_OK);
	char *rd = kh_test_fx_field(x, "RD");
	assert_int_equal(KH_CALL(x, &p, "[AOGPKR;SL12;]"), KH_OK);
	assert_non_null(strstr(x->out, ";CLprivate;TYEC;BT256;CZG;KFSLNY;FSPMK;RD"));
	assert_string_equal(kh_test_field(x->out, "RD"), rd);
	assert_null(strstr(x->out, ";AE"));
	assert_int_equal(KH_CALL(x, &p, "[AOGPKR;SL13;]"), KH_OK);
	assert_non_null(strstr(x->out, ";CLpublic;TYEC;BT256;CZV;KFLN;FSPMK;RD"));
	assert_string_equal(kh_test_field(x->out, "RD"), rd);
	/* a certificate: CE its DER, RD its public key */
	EVP_PKEY *ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
	char *ce = cert_hex(ec), *pub = kh_test_spki_hex(ec);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPCA;SL14;CE%s;]", ce), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKR;SL14;]"), KH_OK);
	assert_non_null(strstr(x->out, ";CLcert;TYX509;BT384;CZVX;KF;FSPMK;CE"));
	assert_string_equal(kh_test_field(x->out, "CE"), ce);
	assert_string_equal(kh_test_field(x->out, "RD"), pub);
	/* a cryptogram: what it holds, and no slot or descriptive tags */
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT4;CZE;]"), KH_OK);
	char *bg = kh_test_fx_field(x, "BG"), *kd2 = kh_test_fx_field(x, "KD"),
	     *ae3 = kh_test_fx_field(x, "AE");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKR;CG%s;]", bg), KH_OK);
	assert_non_null(strstr(x->out, "[AOGPKR;KD"));
	assert_string_equal(kh_test_field(x->out, "KD"), kd2);
	assert_non_null(strstr(x->out, ";CLsecret;TYAES;BT128;CZE;KFLN;FSPMK;AE"));
	assert_string_equal(kh_test_field(x->out, "AE"), ae3);
	assert_null(strstr(x->out, ";SL"));
	/* named wrongly */
	assert_int_equal(KH_CALL(x, &p, "[AOGPKR;SL10;KD00000000000000000000000000000000;]"),
	                 KH_ERR_NOT_FOUND);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKR;]"), KH_ERR_MISSING_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKR;SL10;CG%s;]", bg), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKR;SL99;]"), KH_ERR_NOT_FOUND);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKR;SL*;]"), KH_ERR_BAD_FIELD);
	EVP_PKEY_free(ec);
	free(ae);
	free(kd);
	free(ae2);
	free(rd);
	free(ce);
	free(pub);
	free(bg);
	free(kd2);
	free(ae3);
}

/* An altered row: GPKR and GPKS refuse it like every command, and a change
 * of attributes opens the row again even when the key is cached. */
static void test_tampered_object(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	kh_test_session(&p, KH_PORT_PROD);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;KFM;SL60;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKR;SL60;]"), KH_OK); /* cached now */
	assert_int_equal(kh_test_db_exec(&x->hsm, "UPDATE keys SET "
	                                           "wrapped=zeroblob(length(wrapped)) WHERE slot=60"),
	                 0);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKS;SL60;CZE;]"), KH_ERR_CRYPTO);
	assert_non_null(strstr(x->out, "does not open"));
	kh_keycache_clear(&x->hsm);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKR;SL60;]"), KH_ERR_CRYPTO);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKS;SL60;LB00;]"), KH_ERR_CRYPTO);
	/* widened usage in the attribute column */
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;CZE;SL61;]"), KH_OK);
	assert_int_equal(
	    kh_test_db_exec(&x->hsm, "UPDATE keys SET attrs=X'01007F0030' WHERE slot=61"), 0);
	kh_keycache_clear(&x->hsm);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKR;SL61;]"), KH_ERR_CRYPTO);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKS;SL61;CZED;]"), KH_ERR_CRYPTO);
	/* GPKD still clears them */
	assert_int_equal(KH_CALL(x, &p, "[AOGPKD;SL60;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKD;SL61;]"), KH_OK);
}

/* ---- changing bound attributes (C_SetAttributeValue) ---------------------------- */

#define AES_KEY "000102030405060708090A0B0C0D0E0F"
#define BLOCK "00112233445566778899AABBCCDDEEFF"

static void test_gpks_changes(void **state)
{
	static const uint8_t key[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
	struct kh_test_fx *x = *state;
	struct kh_session p;
	kh_test_session(&p, KH_PORT_PROD);

	assert_int_equal(KH_CALL(x, &p, "[AOGPKA;CLsecret;KTAES;KV" AES_KEY ";CZED;KFXM;SL20;]"),
	                 KH_OK);
	char *kd = kh_test_fx_field(x, "KD");
	assert_int_equal(KH_CALL(x, &p, "[AOGPSE;SL20;ALECB;DT" BLOCK ";]"), KH_OK);
	char *ct = kh_test_fx_field(x, "DT");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;SL20;ALECB;DT%s;]", ct), KH_OK); /* cached */
	/* usage: the key and its identifier stay, the cache follows */
	assert_int_equal(KH_CALL(x, &p, "[AOGPKS;SL20;CZE;LB6E6577;]"), KH_OK);
	assert_string_equal(kh_test_field(x->out, "KD"), kd);
	assert_non_null(strstr(x->out, ";LB6E6577;KI;EX;CLsecret;TYAES;BT128;CZE;KFXM;FSPMK;AE"));
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;SL20;ALECB;DT%s;]", ct), KH_ERR_KEY_USAGE);
	assert_int_equal(KH_CALL(x, &p, "[AOGPSE;SL20;ALECB;DT" BLOCK ";]"), KH_OK);
	assert_string_equal(kh_test_field(x->out, "DT"), ct);
	/* the row itself was wrapped again: it opens with the new usage */
	kh_keycache_clear(&x->hsm);
	kh_test_assert_key(&x->hsm, 20, key, sizeof(key));
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKR;SL20;KD%s;]", kd), KH_OK);
	assert_non_null(strstr(x->out, ";CZE;KFXM;"));

	/* flags: S may be added, X and M removed; never the other way */
	assert_int_equal(KH_CALL(x, &p, "[AOGPKS;SL20;KFSXM;]"), KH_OK);
	assert_non_null(strstr(x->out, ";KFXSM;"));
	assert_int_equal(KH_CALL(x, &p, "[AOGPKS;SL20;KFXM;]"), KH_ERR_KEY_USAGE);
	assert_non_null(strstr(x->out, "S (sensitive) cannot be removed"));
	assert_int_equal(KH_CALL(x, &p, "[AOGPKS;SL20;KFSM;]"), KH_OK);
	assert_non_null(strstr(x->out, ";KFSM;"));
	assert_int_equal(KH_CALL(x, &p, "[AOGPKS;SL20;KFSXM;]"), KH_ERR_KEY_USAGE);
	assert_non_null(strstr(x->out, "X (exportable) cannot be added"));
	assert_int_equal(KH_CALL(x, &p, "[AOGPKS;SL20;KFSMA;]"), KH_ERR_KEY_USAGE);
	assert_non_null(strstr(x->out, "A (Authorized) cannot change"));
	/* a refused change changes nothing, not even the label sent with it */
	assert_int_equal(KH_CALL(x, &p, "[AOGPKS;SL20;LB4142;CZEX;KFSX;]"), KH_ERR_KEY_USAGE);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKR;SL20;]"), KH_OK);
	assert_non_null(strstr(x->out, ";LB6E6577;KI;EX;CLsecret;TYAES;BT128;CZE;KFSM;"));
	/* usage and flags in one request */
	assert_int_equal(KH_CALL(x, &p, "[AOGPKS;SL20;CZEDG;KFS;]"), KH_OK);
	assert_non_null(strstr(x->out, ";CZEDG;KFS;"));
	/* without M the usage is fixed; the same usage is no change */
	assert_int_equal(KH_CALL(x, &p, "[AOGPKS;SL20;CZE;]"), KH_ERR_KEY_USAGE);
	assert_non_null(strstr(x->out, "not modifiable"));
	assert_int_equal(KH_CALL(x, &p, "[AOGPKS;SL20;CZEDG;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKS;SL20;KFSM;]"), KH_ERR_KEY_USAGE);
	assert_non_null(strstr(x->out, "M (modifiable) cannot be added"));
	/* letters that are no letters, and the identifier check */
	assert_int_equal(KH_CALL(x, &p, "[AOGPKS;SL20;KFQ;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKS;SL20;CZEE;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKS;SL20;KD00000000000000000000000000000000;KFS;]"),
	                 KH_ERR_NOT_FOUND);
	kh_keycache_clear(&x->hsm);
	kh_test_assert_key(&x->hsm, 20, key, sizeof(key));

	/* L, N, Y are the HSM's: echoed or left out, they stay as they are
	 * (S added later does not make the key always sensitive) */
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;KFM;SL21;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKS;SL21;KFMLNY;]"), KH_OK);
	assert_non_null(strstr(x->out, ";KFMLN;"));
	assert_int_equal(KH_CALL(x, &p, "[AOGPKS;SL21;KFSM;]"), KH_OK);
	assert_non_null(strstr(x->out, ";KFSMLN;"));
	assert_int_equal(KH_CALL(x, &p, "[AOGPKS;SL21;KFS;]"), KH_OK);
	assert_non_null(strstr(x->out, ";KFSLN;"));

	/* usage letters the type allows; public keys are never sensitive */
	assert_int_equal(KH_CALL(x, &p, "[AOGECC;RA2;CZG;KFM;SL22;PS23;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKS;SL22;CZGX;]"), KH_OK);
	assert_non_null(strstr(x->out, ";CLprivate;TYEC;BT256;CZGX;KFMLN;"));
	assert_int_equal(KH_CALL(x, &p, "[AOGPKS;SL22;CZGE;]"), KH_ERR_BAD_FIELD);
	assert_non_null(strstr(x->out, "letters of GX"));
	assert_int_equal(KH_CALL(x, &p, "[AOGPKS;SL23;CZVX;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKS;SL23;KFSM;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKS;SL23;CZ;KF;]"), KH_OK);
	assert_non_null(strstr(x->out, ";CLpublic;TYEC;BT256;CZ;KFLN;"));
	free(kd);
	free(ct);
}

/* GPKS on a cryptogram: a new cryptogram with the same identifier and the
 * changed attributes; nothing is stored. */
static void test_gpks_cryptogram(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	kh_test_session(&p, KH_PORT_PROD);

	assert_int_equal(KH_CALL(x, &p, "[AOGPKA;CLsecret;KTAES;KV" AES_KEY ";CZED;KFXM;]"), KH_OK);
	char *bg = kh_test_fx_field(x, "BG"), *kd = kh_test_fx_field(x, "KD");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKS;CG%s;CZE;]", bg), KH_OK);
	assert_non_null(strstr(x->out, "[AOGPKS;KD"));
	assert_string_equal(kh_test_field(x->out, "KD"), kd);
	assert_non_null(strstr(x->out, ";CLsecret;TYAES;BT128;CZE;KFXM;FSPMK;AE"));
	char *bg2 = kh_test_fx_field(x, "BG");
	assert_int_equal(strlen(bg2), strlen(bg));
	assert_string_not_equal(bg2, bg);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSD;CG%s;ALECB;DT" BLOCK ";]", bg2),
	                 KH_ERR_KEY_USAGE);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPSE;CG%s;ALECB;DT" BLOCK ";]", bg2), KH_OK);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKR;CG%s;]", bg2), KH_OK);
	assert_non_null(strstr(x->out, ";CZE;KFXM;"));
	/* the same rules as for a slot */
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKS;CG%s;KFM;]", bg2), KH_OK);
	char *bg3 = kh_test_fx_field(x, "BG");
	assert_non_null(strstr(x->out, ";CZE;KFM;"));
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKS;CG%s;KFXM;]", bg3), KH_ERR_KEY_USAGE);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKS;CG%s;LB00;]", bg3), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKS;CG%s;KFX;]", bg3), KH_ERR_KEY_USAGE);
	/* nothing was stored; made persistent, it keeps what it says */
	assert_int_equal(KH_CALL(x, &p, "[AOGPKM;]"), KH_OK);
	assert_string_equal(kh_test_field(x->out, "KC"), "0");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKA;CG%s;SL30;]", bg3), KH_OK);
	assert_string_equal(kh_test_field(x->out, "KD"), kd);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKR;SL30;]"), KH_OK);
	assert_non_null(strstr(x->out, ";CLsecret;TYAES;BT128;CZE;KFM;"));
	/* a private key's cryptogram: RC back, RD its public key */
	assert_int_equal(KH_CALL(x, &p, "[AOGECC;RA5;KFM;]"), KH_OK);
	char *rc = kh_test_fx_field(x, "RC"), *rd = kh_test_fx_field(x, "RD");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKS;CG%s;CZ;]", rc), KH_OK);
	assert_non_null(strstr(x->out, ";CLprivate;TYED25519;BT255;CZ;KFMLN;FSPMK;RD"));
	assert_string_equal(kh_test_field(x->out, "RD"), rd);
	assert_string_not_equal(kh_test_field(x->out, "RC"), "");
	assert_int_equal(KH_CALLF(x, &p, "[AOASYS;CG%s;DT00;]", kh_test_field(x->out, "RC")),
	                 KH_ERR_KEY_USAGE);
	free(bg);
	free(kd);
	free(bg2);
	free(bg3);
	free(rc);
	free(rd);
}

/* ---- data objects (CKO_DATA) -------------------------------------------------------- */

static void test_data_objects(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p, app;
	kh_test_session(&p, KH_PORT_PROD);

	assert_int_equal(KH_CALL(x, &p, "[AOGPKA;CLdata;KV48656C6C6F;SL40;LB64;]"), KH_OK);
	assert_string_equal(kh_test_field(x->out, "AE"), "");
	char *kd = kh_test_fx_field(x, "KD");
	assert_int_equal(KH_CALL(x, &p, "[AOGPKR;SL40;]"), KH_OK);
	assert_string_equal(kh_test_field(x->out, "KD"), kd);
	assert_non_null(
	    strstr(x->out, ";LB64;KI;EX;CLdata;TYGENERIC;BT40;CZ;KF;FSPMK;DV48656C6C6F;]"));
	/* empty, with KT, the largest */
	assert_int_equal(KH_CALL(x, &p, "[AOGPKA;CLdata;KV;KFM;SL41;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKR;SL41;]"), KH_OK);
	assert_non_null(strstr(x->out, ";CLdata;TYGENERIC;BT0;CZ;KFM;FSPMK;DV;]"));
	assert_int_equal(KH_CALL(x, &p, "[AOGPKA;CLdata;KTGENERIC;KV00;FSFTK;SL42;]"),
	                 KH_ERR_MAJOR_KEY_NOT_LOADED);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKA;CLdata;KTGENERIC;KV00;SL42;]"), KH_OK);
	char *big = malloc(2 * KH_DATA_MAX_LEN + 3);
	assert_non_null(big);
	memset(big, 'A', 2 * KH_DATA_MAX_LEN + 2);
	big[2 * KH_DATA_MAX_LEN + 2] = '\0';
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKA;CLdata;KV%s;SL43;]", big), KH_ERR_BAD_FIELD);
	big[2 * KH_DATA_MAX_LEN] = '\0';
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKA;CLdata;KV%s;SL43;]", big), KH_OK);
	/* refused */
	assert_int_equal(KH_CALL(x, &p, "[AOGPKA;CLdata;KV00;]"), KH_ERR_MISSING_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKA;CLdata;KV00;CZG;SL44;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKA;CLdata;KV00;KFX;SL44;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKA;CLdata;KV00;KFS;SL44;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKA;CLdata;KV00;KTAES;SL44;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKA;CLdata;KV0;SL44;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKA;CLdata;KVA;KFA;SL44;]"), KH_ERR_PERMISSION_DENIED);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKR;SL44;]"), KH_ERR_NOT_FOUND);
	/* never a key: no cryptogram, no use */
	assert_int_equal(KH_CALL(x, &p, "[AOGPGC;SL40;]"), KH_ERR_KEY_USAGE);
	assert_int_equal(KH_CALL(x, &p, "[AOGPSE;SL40;ALECB;DT" BLOCK ";]"), KH_ERR_KEY_USAGE);
	assert_non_null(strstr(x->out, "not a key"));
	assert_int_equal(KH_CALL(x, &p, "[AOHMAC;SL40;DT00;]"), KH_ERR_KEY_USAGE);
	assert_int_equal(KH_CALL(x, &p, "[AOASYS;SL40;DT00;]"), KH_ERR_KEY_USAGE);
	assert_int_equal(KH_CALL(x, &p, "[AOAPFP;SL40;]"), KH_ERR_KEY_USAGE);
	assert_int_equal(KH_CALL(x, &p, "[AOGPSV;OPS;SL40;DT00;]"), KH_ERR_KEY_USAGE);
	/* listed and filtered as class data */
	assert_int_equal(KH_CALL(x, &p, "[AOGPKM;CLdata;]"), KH_OK);
	assert_string_equal(kh_test_field(x->out, "KC"), "4");
	assert_int_equal(strncmp(kh_test_field(x->out, "KL"), "40:data:GENERIC:40:", 19), 0);
	/* the stored form opens (a restart would drop the cache) */
	kh_keycache_clear(&x->hsm);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKR;SL43;]"), KH_OK);
	assert_string_equal(kh_test_field(x->out, "DV"), big);
	assert_non_null(strstr(x->out, ";BT130560;"));
	assert_int_equal(KH_CALL(x, &p, "[AOGPKR;SL41;]"), KH_OK);
	assert_non_null(strstr(x->out, ";BT0;CZ;KFM;FSPMK;DV;]"));
	/* the value changes with M; the same value is no change */
	assert_int_equal(KH_CALL(x, &p, "[AOGPKS;SL41;DV0102;]"), KH_OK);
	assert_non_null(strstr(x->out, ";CLdata;TYGENERIC;BT16;CZ;KFM;FSPMK;DV0102;]"));
	assert_int_equal(KH_CALL(x, &p, "[AOGPKS;SL40;DV00;]"), KH_ERR_KEY_USAGE);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKS;SL40;DV48656C6C6F;LB65;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKS;SL41;KF;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKS;SL41;DV03;]"), KH_ERR_KEY_USAGE);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKS;SL41;KFM;]"), KH_ERR_KEY_USAGE);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKS;SL41;CZE;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKS;SL41;KFS;]"), KH_ERR_BAD_FIELD);
	kh_keycache_clear(&x->hsm);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKR;SL41;]"), KH_OK);
	assert_non_null(strstr(x->out, ";BT16;CZ;KF;FSPMK;DV0102;]"));
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;SL45;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKS;SL45;DV00;]"), KH_ERR_BAD_FIELD);
	/* a data object goes to a range of any kind */
	kh_test_app_login(x, &app, "GPKA,GPKR");
	assert_int_equal(KH_CALL(x, &app, "[AOGPKA;CLdata;KV00;SL150;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &app, "[AOGPKA;CLdata;KV00;SL250;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &app, "[AOGPKR;SL250;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &app, "[AOGPKA;CLdata;KV00;SL350;]"), KH_ERR_SLOT_OUT_OF_RANGE);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKD;SL40;]"), KH_OK);
	free(big);
	free(kd);
}

/* The generic-secret size limit holds in a slot too (16320 bytes). */
static void test_largest_generic_secret(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	kh_test_session(&p, KH_PORT_PROD);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT7;LN16320;SL70;]"), KH_OK);
	kh_keycache_clear(&x->hsm);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKR;SL70;]"), KH_OK);
	assert_non_null(strstr(x->out, ";CLsecret;TYGENERIC;BT130560;"));
}

/* ---- slots the HSM picks (`*`) ------------------------------------------------------ */

static void test_auto_slots(void **state)
{
	struct kh_test_fx *x = *state;
	struct kh_session p;
	kh_test_app_login(x, &p, "GPGS,GPKA,GPKD,GECC,GPKR,GPKM,GPWK,GPUK");

	/* S:100-199, A:200-299: the lowest free slot of the key's kind */
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;SL*;]"), KH_OK);
	assert_non_null(strstr(x->out, "[AOGPGS;BBY;SL100;KD"));
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;SL*;]"), KH_OK);
	assert_string_equal(kh_test_field(x->out, "SL"), "101");
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;SL*;]"), KH_OK);
	assert_string_equal(kh_test_field(x->out, "SL"), "102");
	assert_int_equal(KH_CALL(x, &p, "[AOGPKD;SL101;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;SL*;RPY;]"), KH_OK);
	assert_string_equal(kh_test_field(x->out, "SL"), "101");
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;SL*;RPY;]"), KH_OK);
	assert_string_equal(kh_test_field(x->out, "SL"), "103");
	/* a pair takes two slots; a slot the request names is not picked */
	assert_int_equal(KH_CALL(x, &p, "[AOGECC;RA2;SL*;PS*;]"), KH_OK);
	assert_non_null(strstr(x->out, "[AOGECC;BBY;SL200;KD"));
	assert_string_equal(kh_test_field(x->out, "PS"), "201");
	assert_int_equal(KH_CALL(x, &p, "[AOGECC;RA2;SL*;PS202;]"), KH_OK);
	assert_string_equal(kh_test_field(x->out, "SL"), "203");
	assert_string_equal(kh_test_field(x->out, "PS"), "");
	assert_int_equal(KH_CALL(x, &p, "[AOGPKR;SL202;]"), KH_OK);
	assert_non_null(strstr(x->out, ";CLpublic;"));
	assert_int_equal(KH_CALL(x, &p, "[AOGECC;RA2;SL204;PS*;]"), KH_OK);
	assert_string_equal(kh_test_field(x->out, "PS"), "205");
	/* a pair whose named slot is taken stores neither half */
	assert_int_equal(KH_CALL(x, &p, "[AOGECC;RA2;SL*;PS200;]"), KH_ERR_EXISTS);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKR;SL206;]"), KH_ERR_NOT_FOUND);
	/* a data object, a cryptogram made persistent, an unwrapped key */
	assert_int_equal(KH_CALL(x, &p, "[AOGPKA;CLdata;KV00;SL*;]"), KH_OK);
	assert_string_equal(kh_test_field(x->out, "SL"), "104");
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;CZWU;]"), KH_OK);
	char *bg = kh_test_fx_field(x, "BG");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPKA;CG%s;SL*;]", bg), KH_OK);
	assert_string_equal(kh_test_field(x->out, "SL"), "105");
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;KFX;SL*;]"), KH_OK);
	assert_string_equal(kh_test_field(x->out, "SL"), "106");
	assert_int_equal(KH_CALL(x, &p, "[AOGPWK;SL105;ALKWP;S2106;]"), KH_OK);
	char *wk = kh_test_fx_field(x, "WK");
	assert_int_equal(KH_CALLF(x, &p, "[AOGPUK;SL105;ALKWP;WK%s;DS*;]", wk), KH_OK);
	assert_string_equal(kh_test_field(x->out, "DS"), "107");
	assert_int_equal(KH_CALL(x, &p, "[AOGPKR;SL107;]"), KH_OK);
	/* not a slot */
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;SL**;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;SL*1;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKD;SL*;]"), KH_ERR_BAD_FIELD);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKM;]"), KH_OK);
	assert_string_equal(kh_test_field(x->out, "KC"), "14");

	/* no free slot left: a clear refusal, and a pair stores neither half */
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNapp;KRS:300-300,A:301-301;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;SL*;]"), KH_OK);
	assert_string_equal(kh_test_field(x->out, "SL"), "300");
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;SL*;]"), KH_ERR_SLOT_OUT_OF_RANGE);
	assert_non_null(strstr(x->out, "no free slot in the role's ranges"));
	assert_int_equal(KH_CALL(x, &p, "[AOGECC;RA2;SL*;PS*;]"), KH_ERR_SLOT_OUT_OF_RANGE);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKR;SL301;]"), KH_ERR_NOT_FOUND);
	assert_int_equal(KH_CALLF(x, &p, "[AOGPUK;SL105;ALKWP;WK%s;DS*;]", wk),
	                 KH_ERR_SLOT_OUT_OF_RANGE);
	/* no range of the kind: refused before anything is made */
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNapp;KRA:301-301;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;SL*;]"), KH_ERR_SLOT_OUT_OF_RANGE);
	assert_non_null(strstr(x->out, "no range for a symmetric key"));
	/* keys.all_slots widens the listing, not where a key may be written */
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNapp;PMkeys,keys.all_slots;KR;]"), KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;SL*;]"), KH_ERR_SLOT_OUT_OF_RANGE);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKA;CLdata;KV00;SL*;]"), KH_ERR_SLOT_OUT_OF_RANGE);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKM;]"), KH_OK);
	assert_string_equal(kh_test_field(x->out, "KC"), "15");
	/* an M range takes either kind; every range is searched */
	assert_int_equal(KH_CALL(x, &x->admin, "[AORLMD;RNapp;PMkeys;KRM:420-429,S:410-419;]"),
	                 KH_OK);
	assert_int_equal(KH_CALL(x, &p, "[AOGPGS;CT6;SL*;]"), KH_OK);
	assert_string_equal(kh_test_field(x->out, "SL"), "410");
	assert_int_equal(KH_CALL(x, &p, "[AOGECC;RA2;SL*;PS*;]"), KH_OK);
	assert_string_equal(kh_test_field(x->out, "SL"), "420");
	assert_string_equal(kh_test_field(x->out, "PS"), "421");
	free(bg);
	free(wk);
}

/* Many connections asking for `*` at once, on the dispatcher's threads as
 * the server runs them: each key gets its own slot, none fails. */
#define AUTO_THREADS 8
#define AUTO_PER_THREAD 24

struct auto_worker {
	struct kh_hsm *hsm;
	pthread_barrier_t *go;
	unsigned id;
	unsigned failures;
	char first_failure[256];
	uint32_t slots[2 * AUTO_PER_THREAD];
	size_t nslots;
};

/* The decimal value of tag in a response (-1 if absent): no cmocka here,
 * this runs on the workers. */
static long resp_slot(const char *resp, const char *tag)
{
	char pat[4] = {';', tag[0], tag[1], '\0'};
	const char *p = strstr(resp, pat);
	return p ? strtol(p + 3, NULL, 10) : -1;
}

static void *auto_run(void *arg)
{
	struct auto_worker *w = arg;
	struct kh_session s;
	struct kh_buf *b = kh_buf_new(KH_FRAME_MAX);
	char out[4096];
	kh_test_session(&s, KH_PORT_PROD);
	pthread_barrier_wait(w->go);
	for (unsigned i = 0; b != NULL && i < AUTO_PER_THREAD; i++) {
		/* every fourth request a pair: two picks in one transaction */
		bool pair = (i + w->id) % 4 == 0;
		const char *req = pair ? "[AOGECC;RA2;SL*;PS*;]" : "[AOGPGS;CT4;SL*;]";
		struct kh_frame f;
		kh_buf_reset(b);
		int r = kh_frame_parse((const uint8_t *)req, strlen(req), KH_FIELDS_MAX, &f);
		if (r == KH_OK)
			r = kh_dispatch(w->hsm, &s, &f, b);
		size_t n = kh_buf_len(b) < sizeof(out) - 1 ? kh_buf_len(b) : sizeof(out) - 1;
		memcpy(out, kh_buf_ptr(b), n);
		out[n] = '\0';
		long sl = resp_slot(out, "SL"), ps = pair ? resp_slot(out, "PS") : 0;
		if (r != KH_OK || sl < 0 || ps < 0) {
			if (w->failures++ == 0)
				snprintf(w->first_failure, sizeof(w->first_failure), "%.200s", out);
			continue;
		}
		w->slots[w->nslots++] = (uint32_t)sl;
		if (pair)
			w->slots[w->nslots++] = (uint32_t)ps;
	}
	kh_buf_free(b);
	return NULL;
}

static void test_auto_slots_concurrent(void **state)
{
	struct kh_test_fx *x = *state;
	struct auto_worker w[AUTO_THREADS];
	pthread_t t[AUTO_THREADS];
	pthread_barrier_t go;
	static bool seen[2 * AUTO_THREADS * AUTO_PER_THREAD];
	struct kh_session p;
	size_t total = 0;

	/* Transaction Processing reaches M:0-999999: the picks start at 0 */
	assert_int_equal(pthread_barrier_init(&go, NULL, AUTO_THREADS), 0);
	for (unsigned i = 0; i < AUTO_THREADS; i++) {
		w[i] = (struct auto_worker){.hsm = &x->hsm, .go = &go, .id = i};
		assert_int_equal(pthread_create(&t[i], NULL, auto_run, &w[i]), 0);
	}
	for (unsigned i = 0; i < AUTO_THREADS; i++)
		assert_int_equal(pthread_join(t[i], NULL), 0);
	pthread_barrier_destroy(&go);
	memset(seen, 0, sizeof(seen));
	for (unsigned i = 0; i < AUTO_THREADS; i++) {
		if (w[i].failures)
			fail_msg("worker %u: %u failure(s), first: %s", i, w[i].failures,
			         w[i].first_failure);
		for (size_t j = 0; j < w[i].nslots; j++) {
			uint32_t sl = w[i].slots[j];
			assert_true(sl < sizeof(seen) / sizeof(seen[0]));
			if (seen[sl])
				fail_msg("slot %u given twice", sl);
			seen[sl] = true;
			total++;
		}
	}
	/* distinct, and dense: the lowest free slot each time */
	for (size_t i = 0; i < total; i++)
		assert_true(seen[i]);
	kh_test_session(&p, KH_PORT_PROD);
	assert_int_equal(KH_CALL(x, &p, "[AOGPKM;]"), KH_OK);
	char kc[16];
	snprintf(kc, sizeof(kc), "%zu", total);
	assert_string_equal(kh_test_field(x->out, "KC"), kc);
	print_message("%d threads: %zu keys in %zu distinct slots\n", AUTO_THREADS, total, total);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    KH_FX_TEST(test_generate_and_cryptograms, kh_test_fx_setup_pmk),
	    KH_FX_TEST(test_clear_import, kh_test_fx_setup_pmk),
	    KH_FX_TEST(test_range_kinds_and_authorized, kh_test_fx_setup_pmk),
	    KH_FX_TEST(test_tampered_row, kh_test_fx_setup_pmk),
	    KH_FX_TEST(test_error_state_refuses_crypto, kh_test_fx_setup_pmk),
	    KH_FX_TEST(test_fips_key_policy, kh_test_fx_setup_pmk),
	    KH_FX_TEST(test_fips_refused_keys_in_slots, kh_test_fx_setup_pmk),
	    KH_FX_TEST(test_gpkr_attributes, kh_test_fx_setup_keys),
	    KH_FX_TEST(test_tampered_object, kh_test_fx_setup_pmk),
	    KH_FX_TEST(test_gpks_changes, kh_test_fx_setup_pmk),
	    KH_FX_TEST(test_gpks_cryptogram, kh_test_fx_setup_pmk),
	    KH_FX_TEST(test_data_objects, kh_test_fx_setup_pmk),
	    KH_FX_TEST(test_largest_generic_secret, kh_test_fx_setup_pmk),
	    KH_FX_TEST(test_auto_slots, kh_test_fx_setup_pmk),
	    KH_FX_TEST(test_auto_slots_concurrent, kh_test_fx_setup_pmk),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

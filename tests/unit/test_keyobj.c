/* Key objects through the dispatcher: symmetric generation, cryptograms,
 * slots and identifiers, the range kinds, Authorized keys, tampering with a
 * stored key or a cryptogram, and the cache following changes. */
#include "kh_testutil.h"
#include "hsm/keyobj.h"
#include "hsm/selftest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

int main(void)
{
	const struct CMUnitTest tests[] = {
	    KH_FX_TEST(test_generate_and_cryptograms, kh_test_fx_setup_pmk),
	    KH_FX_TEST(test_clear_import, kh_test_fx_setup_pmk),
	    KH_FX_TEST(test_range_kinds_and_authorized, kh_test_fx_setup_pmk),
	    KH_FX_TEST(test_tampered_row, kh_test_fx_setup_pmk),
	    KH_FX_TEST(test_error_state_refuses_crypto, kh_test_fx_setup_pmk),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

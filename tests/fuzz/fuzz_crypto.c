/*
 * libFuzzer target for the crypto service's request parsing: plans, key
 * resolution (slots, identifiers, cryptograms, clear public keys) and every
 * crypto handler, through the real dispatcher on a real device with keys of
 * each type in slots. The first input byte picks a command; the rest is
 * the request's fields ("TGvalue;..."). Inputs whose first byte has the top
 * bit set go straight to the cryptogram and DER key parsers instead.
 *
 * Properties: one response frame per request, well formed, either the
 * command's own or ERRO; the parsers never accept what they cannot use.
 * KTEX, KTIM and KTCK run too (Transaction Processing is given
 * `replication`): KTIM with rows KTEX gave or the fuzzer made.
 * Key generation (GRSA, GECC) is left out: it is slow and parses little.
 * Requests with `*` for a slot store a key in the lowest free slot: the
 * table grows while the fuzzer runs (as with any SL it makes up).
 */
#include "hsm/db.h"
#include "hsm/dispatch.h"
#include "hsm/hsm_core.h"
#include "hsm/keyobj.h"
#include "hsm/majorkey.h"
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

static const char *const cmds[] = {
    "GPGS", "GPKA", "GPKD", "GPGC", "ASYL", "LRSA", "APFP", "RPFP", "GPCA", "RDPK", "ADPK",
    "GPKW", "GPWK", "GPKU", "GPUK", "GPDK", "GPSE", "GPSD", "GPMC", "HMAC", "GHSH", "GPSR",
    "ASYS", "RSAS", "ASYV", "GPSV", "GPKM", "GPKS", "GPKR", "KTEX", "KTIM", "KTCK",
};
#define NCMDS (sizeof(cmds) / sizeof(cmds[0]))

static struct kh_hsm hsm;
static struct kh_session sess;
static struct kh_buf *out;

static void call(const char *text)
{
	struct kh_frame f;
	kh_buf_reset(out);
	if (kh_frame_parse((const uint8_t *)text, strlen(text), KH_FIELDS_MAX, &f) != KH_OK)
		return;
	kh_dispatch(&hsm, &sess, &f, out);
}

static char dir[] = "/tmp/kh-fuzz-crypto-XXXXXX";

static void cleanup(void)
{
	fuzz_remove_tree(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	static const uint8_t mk[32] = {0x42, 1, 2, 3};
	(void)argc;
	(void)argv;
	/* no secure heap here: LeakSanitizer does not scan it, and OpenSSL keeps
	 * pointers to normal allocations there (its DRBG) */
	if (mkdtemp(dir) == NULL)
		abort();
	atexit(cleanup);
	if (kh_hsm_open(&hsm, dir, true) != KH_OK)
		abort();
	if (kh_mk_load(&hsm, KH_MK_PMK, mk, sizeof(mk), "fuzz", "mk.load", "fuzz", NULL) != KH_OK ||
	    kh_mk_load(&hsm, KH_MK_FTK, mk + 1, 16, "fuzz", "mk.load", "fuzz", NULL) != KH_OK)
		abort();
	if ((out = kh_buf_new(1u << 20)) == NULL)
		abort();
	memset(&sess, 0, sizeof(sess));
	sess.port = KH_PORT_PROD;
	sess.source = KH_SRC_ETHERNET;
	snprintf(sess.peer, sizeof(sess.peer), "fuzz");
	/* replication for Transaction Processing, so that KTEX, KTIM and
	 * KTCK reach the row layout's parser and the import's checks */
	if (sqlite3_exec(kh_db_sqlite(hsm.db),
	                 "UPDATE roles SET perms = perms || ',replication' "
	                 "WHERE name = 'Transaction Processing'",
	                 NULL, NULL, NULL) != SQLITE_OK)
		abort();
	atomic_fetch_add(&hsm.role_gen, 1);
	/* one key of each kind, every usage, in slots 1..11, a modifiable
	 * key in 12 and a data object in 13 (for GPKS's changes); Transaction
	 * Processing out of the box reaches every slot */
	call("[AOGPGS;CT6;CZEDGVWUX;KFX;SL1;]");
	call("[AOGPGS;CT7;LN32;CZGVX;KFX;SL2;]");
	call("[AOGECC;RA2;CZGX;PZVX;SL3;PS4;]");
	call("[AOGRSA;RB2048;CZGDU;PZVEW;SL5;PS6;]");
	call("[AOGECC;RA5;SL7;PS8;]");
	call("[AOGECC;RA6;CZX;SL9;PS10;]");
	call("[AOGPGS;CT4;CZEDGVWU;KFX;SL11;]");
	call("[AOGPGS;CT6;CZED;KFXM;SL12;]");
	call("[AOGPKA;CLdata;KV00;KFM;SL13;]");
	return 0;
}

static void check_response(const char *cmd)
{
	const uint8_t *p = kh_buf_ptr(out);
	size_t n = kh_buf_len(out), flen = 0;
	struct kh_frame f;
	CHECK(n > 0);
	CHECK(kh_frame_find(p, n, KH_FRAME_MAX * 2 + 64, &flen) == 1);
	CHECK(flen == n);
	CHECK(kh_frame_parse(p, n, KH_FIELDS_MAX, &f) == KH_OK);
	CHECK(strcmp(f.cmd, cmd) == 0 || strcmp(f.cmd, "ERRO") == 0);
}

static void parsers(const uint8_t *data, size_t size)
{
	struct kh_key *k = NULL;
	struct kh_keyattr a = {0};
	if (kh_key_from_cryptogram(&hsm, data, size, &k) == KH_OK) {
		/* only a cryptogram this device sealed opens: random bytes never do */
		CHECK(k->has_id);
		kh_key_unref(k);
		k = NULL;
	}
	if (kh_key_from_der(NULL, &a, data, size, &k) == KH_OK) {
		CHECK(a.cls == KH_KC_PRIVATE || a.cls == KH_KC_PUBLIC);
		CHECK(k->pkey != NULL);
		kh_key_unref(k);
		k = NULL;
	}
	a = (struct kh_keyattr){.cls = KH_KC_CERT};
	if (kh_key_from_der(NULL, &a, data, size, &k) == KH_OK) {
		CHECK(a.type == KH_KT_X509 && k->der_len == size);
		kh_key_unref(k);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text;
	if (size == 0)
		return 0;
	if (data[0] & 0x80) {
		parsers(data + 1, size - 1);
		return 0;
	}
	const char *cmd = cmds[data[0] % NCMDS];
	if ((text = malloc(size + 16)) == NULL)
		abort();
	int n = snprintf(text, size + 16, "[AO%s;", cmd);
	memcpy(text + n, data + 1, size - 1);
	text[n + size - 1] = ']';
	text[n + size] = '\0';
	struct kh_frame f;
	if (kh_frame_parse((const uint8_t *)text, (size_t)n + size, KH_FIELDS_MAX, &f) == KH_OK) {
		kh_buf_reset(out);
		kh_dispatch(&hsm, &sess, &f, out);
		check_response(cmd);
	}
	free(text);
	return 0;
}

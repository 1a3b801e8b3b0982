/*
 * C_FindObjects with 100,000 objects on the token: the module asks the
 * HSM (a real server, forked, on a clear loopback port) with the
 * template's class, type, label and CKA_ID as GPKM filters, so a lookup
 * by label or ID is one request whatever the table holds, and a wide
 * search is one request per page of 1000. Counted with the pool's
 * statistics, not timed: a timing would flake, a request count does not.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kh_testutil.h"
#include "hsm/hsm_core.h"
#include "hsm/server.h"
#include "pkcs11/p11.h"
#include "common/kh_pool.h"

#define NKEYS 100000
#define FINDER_PW "finder-password-1"

static struct {
	struct kh_test_fx *x;
	pid_t server;
	unsigned port;
	char cfg[300];
	CK_SESSION_HANDLE s;
} G;

/* A device with a role whose mixed range covers the whole table, its
 * identity, a clear Excrypt port, and 100,000 keys; then the server. */
static int group_setup(void **state)
{
	char pw[64];
	if (kh_test_fx_setup_keys((void **)&G.x) != 0)
		return -1;
	struct kh_test_fx *x = G.x;
	kh_test_hexstr(FINDER_PW, pw);
	assert_int_equal(KH_CALL(x, &x->admin,
				 "[AORLAD;RNfinder;LQ1;PMkeys;KRM:0-199999;CMECHO,HASH,PRMD,GPKM,GPKR,GPKS;]"),
			 KH_OK);
	assert_int_equal(KH_CALLF(x, &x->admin, "[AOIDAD;IDfinder;RNfinder;PW%s;]", pw), KH_OK);
	assert_int_equal(KH_CALL(x, &x->admin, "[AOTPRT;PTexcrypt;MOclear;]"), KH_OK);
	assert_int_equal(kh_test_fill_keys(&x->hsm, 0, NKEYS), 0);
	kh_hsm_close(&x->hsm);

	G.port = kh_test_free_port();
	fflush(NULL);
	G.server = fork();
	assert_true(G.server >= 0);
	if (G.server == 0) {
		struct kh_hsm *hsm = calloc(1, sizeof(*hsm));
		signal(SIGPIPE, SIG_IGN);
		if (!hsm || kh_hsm_open(hsm, x->dir, false) != KH_OK)
			_exit(1);
		struct kh_server_opts o = {.prod_addr = "127.0.0.1", .prod_port = (uint16_t)G.port, .workers = 2};
		int r = kh_server_run(hsm, &o);
		kh_hsm_close(hsm);
		_exit(r == KH_OK ? 0 : 1);
	}
	for (int i = 0; i < 400 && !kh_test_port_open("127.0.0.1", G.port); i++)
		usleep(25000);
	assert_true(kh_test_port_open("127.0.0.1", G.port));

	snprintf(G.cfg, sizeof(G.cfg), "%s/fxpkcs11.cfg", x->dir);
	FILE *f = fopen(G.cfg, "w");
	assert_non_null(f);
	fprintf(f,
		"<HSM>\n <SLOT> 0 </SLOT>\n <CRYPTO-OPR> finder </CRYPTO-OPR>\n"
		" <ADDRESS> 127.0.0.1:%u </ADDRESS>\n <PROD-TLS-ENABLED> NO </PROD-TLS-ENABLED>\n</HSM>\n",
		G.port);
	fclose(f);
	setenv("FXPKCS11_CFG", G.cfg, 1);
	assert_int_equal(C_Initialize(NULL), CKR_OK);
	assert_int_equal(C_OpenSession(0, CKF_SERIAL_SESSION, NULL, NULL, &G.s), CKR_OK);
	assert_int_equal(C_Login(G.s, CKU_USER, (CK_UTF8CHAR_PTR)FINDER_PW, strlen(FINDER_PW)), CKR_OK);
	*state = &G;
	return 0;
}

static int group_teardown(void **state)
{
	char cmd[400];
	KH_IGNORE(C_Finalize(NULL));
	if (G.server > 0) {
		kill(G.server, SIGTERM);
		waitpid(G.server, NULL, 0);
	}
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", G.x->dir);
	int r = system(cmd);
	free(G.x);
	return r == 0 ? 0 : -1;
}

static unsigned long pool_calls(void)
{
	struct p11_slot *sl;
	struct kh_pool_stats st;
	assert_int_equal(p11_slot_get(0, &sl), CKR_OK);
	kh_pool_stats(sl->pool, &st);
	return st.calls;
}

/* Run a search; the number of objects and of HSM requests it took. */
static size_t find(CK_ATTRIBUTE *t, CK_ULONG n, unsigned long *calls, CK_OBJECT_HANDLE *first)
{
	CK_OBJECT_HANDLE h[4096];
	CK_ULONG got;
	size_t total = 0;
	struct timespec a, b;
	unsigned long before = pool_calls();
	clock_gettime(CLOCK_MONOTONIC, &a);
	assert_int_equal(C_FindObjectsInit(G.s, t, n), CKR_OK);
	*calls = pool_calls() - before;
	do {
		assert_int_equal(C_FindObjects(G.s, h, 4096, &got), CKR_OK);
		if (total == 0 && got && first)
			*first = h[0];
		total += got;
	} while (got);
	assert_int_equal(C_FindObjectsFinal(G.s), CKR_OK);
	clock_gettime(CLOCK_MONOTONIC, &b);
	print_message("    %zu object(s), %lu request(s), %.1f ms\n", total, *calls,
		      (double)(b.tv_sec - a.tv_sec) * 1e3 + (double)(b.tv_nsec - a.tv_nsec) / 1e6);
	return total;
}

static void test_by_label(void **state)
{
	unsigned long calls;
	CK_OBJECT_HANDLE h = 0;
	/* 77778 % 7 == 1: an AES key (every 7th row is an "EC key" of test
	 * bytes, which lists but does not open) */
	char label[] = "key-77778";
	CK_ATTRIBUTE t[] = {{CKA_LABEL, label, strlen(label)}};
	assert_int_equal(find(t, 1, &calls, &h), 1);
	assert_int_equal(calls, 1);

	/* and it is the right object */
	uint8_t id[8];
	CK_OBJECT_CLASS cls;
	CK_ATTRIBUTE a[] = {{CKA_ID, id, sizeof(id)}, {CKA_CLASS, &cls, sizeof(cls)}};
	assert_int_equal(C_GetAttributeValue(G.s, h, a, 2), CKR_OK);
	assert_int_equal(a[0].ulValueLen, 4);
	assert_memory_equal(id, "\x00\x01\x2f\xd2", 4); /* 77778 */
	assert_int_equal(cls, CKO_SECRET_KEY);
}

static void test_by_id(void **state)
{
	unsigned long calls;
	uint8_t id[4] = {0x00, 0x00, 0x30, 0x39}; /* 12345: 12345 % 7 == 4, an AES key */
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_ID, id, sizeof(id)}};
	assert_int_equal(find(t, 2, &calls, NULL), 1);
	assert_int_equal(calls, 1);
	cls = CKO_PRIVATE_KEY;
	assert_int_equal(find(t, 2, &calls, NULL), 0);
	assert_int_equal(calls, 1);
}

static void test_by_class(void **state)
{
	unsigned long calls;
	CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
	CK_KEY_TYPE kt = CKK_EC;
	CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)}};
	/* every 7th of 100,000: 14,286, in pages of 1000 */
	assert_int_equal(find(t, 2, &calls, NULL), 14286);
	assert_int_equal(calls, 15);
}

static void test_everything(void **state)
{
	unsigned long calls;
	CK_BBOOL yes = CK_TRUE;
	CK_ATTRIBUTE t[] = {{CKA_TOKEN, &yes, sizeof(yes)}};
	assert_int_equal(find(t, 1, &calls, NULL), NKEYS);
	assert_int_equal(calls, NKEYS / 1000);
	/* again: the same handles come back, nothing new is made */
	assert_int_equal(find(t, 1, &calls, NULL), NKEYS);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_by_label),
		cmocka_unit_test(test_by_id),
		cmocka_unit_test(test_by_class),
		cmocka_unit_test(test_everything),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}

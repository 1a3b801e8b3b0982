/*
 * PKCS#11 load generator for bench/: loads ANY PKCS#11 module (dlopen,
 * C_GetFunctionList), logs in once on a slot (the login every session of the
 * application shares), makes its keys as session objects (CKA_TOKEN false,
 * nothing is left on the token), and runs each chosen operation with N
 * sessions, one thread per session, each in its own session, closed-loop for
 * a fixed time. Before the clock starts every session runs its operation once
 * and checks the result (verifies the signature, decrypts the ciphertext,
 * ...), so a module that answers garbage quickly cannot look fast. Prints a
 * table (or, with --mr, one key=value line per run) and optionally JSON.
 *
 * No OpenSSL and nothing of keyhold: pkcs11.h (p11-kit), libdl, pthreads.
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#define MAX_SESSIONS 1024
#define MAX_RUNS 64
#define LAT_MAX_PER_THREAD (1u << 21) /* latency samples kept per session */
#define PIN_MAX 256
#define BIG (64u * 1024)

/* ---- operations -------------------------------------------------------- */

enum op_id { OP_RSA, OP_ECDSA, OP_GCM1K, OP_GCM64K, OP_HMAC, OP_RAND, OP_GEN_AES, OP_GEN_EC, OP_N };

enum key_need { K_NONE = 0, K_RSA = 1, K_EC = 2, K_AES = 4, K_HMAC = 8 };

static const struct op_def {
	const char *name;
	const char *label;
	unsigned keys; /* K_* the operation uses */
} OPS[OP_N] = {
	[OP_RSA] = {"rsa-sign", "RSA-2048 sign SHA256_RSA_PKCS", K_RSA},
	[OP_ECDSA] = {"ecdsa-sign", "ECDSA P-256 sign", K_EC},
	[OP_GCM1K] = {"gcm-1k", "AES-256-GCM encrypt 1 KiB", K_AES},
	[OP_GCM64K] = {"gcm-64k", "AES-256-GCM encrypt 64 KiB", K_AES},
	[OP_HMAC] = {"hmac-1k", "HMAC-SHA256 1 KiB", K_HMAC},
	[OP_RAND] = {"rand-32", "C_GenerateRandom 32 bytes", K_NONE},
	[OP_GEN_AES] = {"gen-aes", "generate AES-256 session key", K_NONE},
	[OP_GEN_EC] = {"gen-ec", "generate EC P-256 session key pair", K_NONE},
};

/* ---- configuration, shared state -------------------------------------- */

static struct {
	const char *module;
	long slot; /* -1: by label or the first with a token */
	const char *token_label;
	char pin[PIN_MAX + 1];
	size_t pin_len;
	bool have_pin;
	bool ops[OP_N];
	long sessions[16];
	int nsessions;
	double seconds, warmup;
	bool mr;
	const char *json;
	int ecdsa_mode; /* 0 auto, 1 CKM_ECDSA on a 32-byte hash, 2 CKM_ECDSA_SHA256 */
	long cpu_pid;   /* a server process whose CPU is sampled too (0: none) */
} g;

static CK_FUNCTION_LIST_PTR F;
static CK_SLOT_ID g_slot;
static CK_SESSION_HANDLE g_login_session;
static CK_OBJECT_HANDLE g_rsa_pub, g_rsa_priv, g_ec_pub, g_ec_priv, g_aes, g_hmac;
static CK_MECHANISM_TYPE g_ecdsa_mech;
static unsigned g_keys_ok;        /* K_* made */
static char g_key_err[4][160];    /* why a key could not be made, by bit index */
static unsigned char g_data[BIG]; /* the input of every operation, random */
static CK_MECHANISM_TYPE *g_mechs;
static CK_ULONG g_nmechs;

static pthread_barrier_t g_ready, g_go;
static uint64_t g_measure_ns, g_end_ns; /* written by main between the barriers */
static bool g_abort;

static CK_BYTE P256_OID[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
static CK_BYTE F4[] = {0x01, 0x00, 0x01};

static _Noreturn void usage(void)
{
	fprintf(stderr,
	        "usage: p11_bench --module LIB.so [--slot ID | --token-label L]\n"
	        "                 [--pin PIN | --pin-file F] [--ops LIST] [--sessions \"1 32\"]\n"
	        "                 [--seconds 5] [--warmup 1] [--ecdsa auto|raw|sha256]\n"
	        "                 [--cpu-pid PID] [--mr] [--json FILE]\n"
	        "operations (default: all): rsa-sign ecdsa-sign gcm-1k gcm-64k hmac-1k rand-32\n"
	        "                           gen-aes gen-ec\n");
	exit(2);
}

/* A set-up failure: the message (printf's fmt and a string) and the CKR. */
static _Noreturn void die(const char *fmt, const char *a, CK_RV rv)
{
	fprintf(stderr, "p11_bench: ");
	if (strstr(fmt, "%s") != NULL) {
		const char *p = strstr(fmt, "%s");
		fprintf(stderr, "%.*s%s%s", (int)(p - fmt), fmt, a, p + 2);
	} else {
		fputs(fmt, stderr);
	}
	if (rv != CKR_OK)
		fprintf(stderr, ": CKR 0x%lx", (unsigned long)rv);
	fprintf(stderr, "\n");
	exit(2);
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sleep_until(uint64_t ns)
{
	struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000u),
			      .tv_nsec = (long)(ns % 1000000000u)};

	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

static double cpu_seconds(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
	       ru.ru_stime.tv_usec / 1e6;
}

/* utime + stime of process pid in seconds (/proc/PID/stat), -1 if unreadable */
static double proc_cpu_seconds(long pid)
{
	char path[64], buf[1024], *p;
	unsigned long long ut, st;
	FILE *f;
	size_t n;

	snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
	if ((f = fopen(path, "r")) == NULL)
		return -1;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	/* fields after the command name, which ends with the last ')': state is
	 * field 3, utime and stime fields 14 and 15 */
	if ((p = strrchr(buf, ')')) == NULL ||
	    sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
		return -1;
	return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static double parse_num(const char *v, double lo, double hi)
{
	char *end;
	double d;

	errno = 0;
	d = strtod(v, &end);
	if (*v == '\0' || *end != '\0' || errno != 0 || !(d >= lo && d <= hi))
		usage();
	return d;
}

static void read_pin_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	size_t n;

	if (f == NULL)
		die("cannot open the PIN file %s", path, CKR_OK);
	n = fread(g.pin, 1, PIN_MAX + 1, f);
	fclose(f);
	if (n > PIN_MAX)
		die("the PIN file %s is longer than 256 bytes", path, CKR_OK);
	while (n > 0 && (g.pin[n - 1] == '\n' || g.pin[n - 1] == '\r'))
		n--;
	g.pin[n] = '\0';
	g.pin_len = n;
	g.have_pin = true;
}

static void parse_ops(const char *list)
{
	char buf[512], *save = NULL, *t;
	int i;

	if (strlen(list) >= sizeof(buf))
		usage();
	strcpy(buf, list);
	memset(g.ops, 0, sizeof(g.ops));
	for (t = strtok_r(buf, " ,", &save); t; t = strtok_r(NULL, " ,", &save)) {
		for (i = 0; i < OP_N && strcmp(t, OPS[i].name) != 0; i++)
			;
		if (i == OP_N) {
			fprintf(stderr, "p11_bench: unknown operation '%s'\n", t);
			usage();
		}
		g.ops[i] = true;
	}
}

static void parse_sessions(const char *list)
{
	char buf[256], *save = NULL, *t;

	if (strlen(list) >= sizeof(buf))
		usage();
	strcpy(buf, list);
	g.nsessions = 0;
	for (t = strtok_r(buf, " ,", &save); t; t = strtok_r(NULL, " ,", &save)) {
		if (g.nsessions == (int)(sizeof(g.sessions) / sizeof(g.sessions[0])))
			usage();
		g.sessions[g.nsessions++] = (long)parse_num(t, 1, MAX_SESSIONS);
	}
	if (g.nsessions == 0)
		usage();
}

static void parse_args(int argc, char **argv)
{
	g.slot = -1;
	g.seconds = 5;
	g.warmup = 1;
	g.sessions[0] = 1;
	g.sessions[1] = 32;
	g.nsessions = 2;
	for (int i = 0; i < OP_N; i++)
		g.ops[i] = true;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(a, "--mr") == 0) {
			g.mr = true;
			continue;
		}
		if (v == NULL)
			usage();
		i++;
		if (strcmp(a, "--module") == 0) {
			g.module = v;
		} else if (strcmp(a, "--slot") == 0) {
			g.slot = (long)parse_num(v, 0, 4294967295.0);
		} else if (strcmp(a, "--token-label") == 0) {
			g.token_label = v;
		} else if (strcmp(a, "--pin") == 0) {
			if (strlen(v) > PIN_MAX)
				usage();
			strcpy(g.pin, v);
			g.pin_len = strlen(v);
			g.have_pin = true;
		} else if (strcmp(a, "--pin-file") == 0) {
			read_pin_file(v);
		} else if (strcmp(a, "--ops") == 0) {
			parse_ops(v);
		} else if (strcmp(a, "--sessions") == 0) {
			parse_sessions(v);
		} else if (strcmp(a, "--seconds") == 0) {
			g.seconds = parse_num(v, 0.1, 3600);
		} else if (strcmp(a, "--warmup") == 0) {
			g.warmup = parse_num(v, 0, 600);
		} else if (strcmp(a, "--cpu-pid") == 0) {
			g.cpu_pid = (long)parse_num(v, 1, 4194304);
		} else if (strcmp(a, "--json") == 0) {
			g.json = v;
		} else if (strcmp(a, "--ecdsa") == 0) {
			if (strcmp(v, "auto") == 0)
				g.ecdsa_mode = 0;
			else if (strcmp(v, "raw") == 0)
				g.ecdsa_mode = 1;
			else if (strcmp(v, "sha256") == 0)
				g.ecdsa_mode = 2;
			else
				usage();
		} else {
			usage();
		}
	}
	if (g.module == NULL)
		usage();
}

/* ---- module set-up ------------------------------------------------------- */

static bool has_mech(CK_MECHANISM_TYPE m)
{
	for (CK_ULONG i = 0; i < g_nmechs; i++)
		if (g_mechs[i] == m)
			return true;
	return false;
}

static void blank_trim(char *dst, const unsigned char *src, size_t n)
{
	memcpy(dst, src, n);
	dst[n] = '\0';
	while (n > 0 && dst[n - 1] == ' ')
		dst[--n] = '\0';
}

static char g_libdesc[80], g_token[40], g_model[20];

static void load_module(void)
{
	CK_RV (*get_list)(CK_FUNCTION_LIST_PTR_PTR);
	CK_C_INITIALIZE_ARGS ia;
	CK_INFO info;
	CK_RV rv;
	void *dl;

	dl = dlopen(g.module, RTLD_NOW | RTLD_LOCAL);
	if (dl == NULL) {
		fprintf(stderr, "p11_bench: dlopen %s: %s\n", g.module, dlerror());
		exit(2);
	}
	*(void **)&get_list = dlsym(dl, "C_GetFunctionList");
	if (get_list == NULL)
		die("%s has no C_GetFunctionList", g.module, CKR_OK);
	if ((rv = get_list(&F)) != CKR_OK || F == NULL)
		die("C_GetFunctionList of %s", g.module, rv);
	memset(&ia, 0, sizeof(ia));
	ia.flags = CKF_OS_LOCKING_OK; /* our threads call it concurrently */
	if ((rv = F->C_Initialize(&ia)) != CKR_OK)
		die("C_Initialize of %s", g.module, rv);
	if (F->C_GetInfo(&info) == CKR_OK) {
		char man[33], desc[33];
		blank_trim(man, info.manufacturerID, 32);
		blank_trim(desc, info.libraryDescription, 32);
		snprintf(g_libdesc, sizeof(g_libdesc), "%s / %s %u.%u", man, desc,
		         info.libraryVersion.major, info.libraryVersion.minor);
	}
	/* the library stays loaded until exit */
}

static void pick_slot(void)
{
	CK_SLOT_ID *slots;
	CK_ULONG n = 0, i;
	CK_TOKEN_INFO ti;
	CK_RV rv;
	bool found = false;

	if ((rv = F->C_GetSlotList(CK_TRUE, NULL, &n)) != CKR_OK)
		die("C_GetSlotList%s", "", rv);
	if (n == 0)
		die("no slot with a token in %s", g.module, CKR_OK);
	slots = calloc(n, sizeof(*slots));
	if (slots == NULL || (rv = F->C_GetSlotList(CK_TRUE, slots, &n)) != CKR_OK)
		die("C_GetSlotList%s", "", rv);
	/* --slot; else --token-label; else the first initialised token */
	for (int pass = 0; pass < 2 && !found; pass++) {
		for (i = 0; i < n && !found; i++) {
			char label[33];
			if (F->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
				continue;
			blank_trim(label, ti.label, 32);
			if (g.slot >= 0)
				found = slots[i] == (CK_SLOT_ID)g.slot;
			else if (g.token_label)
				found = strcmp(label, g.token_label) == 0;
			else
				found = pass == 1 || (ti.flags & CKF_TOKEN_INITIALIZED);
			if (found) {
				g_slot = slots[i];
				blank_trim(g_token, ti.label, 32);
				blank_trim(g_model, ti.model, 16);
			}
		}
	}
	free(slots);
	if (!found)
		die("no such slot or token in %s", g.module, CKR_OK);
	if ((rv = F->C_GetMechanismList(g_slot, NULL, &g_nmechs)) != CKR_OK)
		die("C_GetMechanismList%s", "", rv);
	g_mechs = calloc(g_nmechs ? g_nmechs : 1, sizeof(*g_mechs));
	if (g_mechs == NULL || (rv = F->C_GetMechanismList(g_slot, g_mechs, &g_nmechs)) != CKR_OK)
		die("C_GetMechanismList%s", "", rv);
}

static double ms_since(uint64_t t0)
{
	return (double)(now_ns() - t0) / 1e6;
}

/* set-up phases, for the report */
static double g_ms_init, g_ms_login, g_ms_key[4];

static void key_fail(int bit, const char *what, CK_RV rv)
{
	snprintf(g_key_err[bit], sizeof(g_key_err[bit]), "%s: CKR 0x%lx", what, (unsigned long)rv);
}

static CK_RV gen_aes(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *h)
{
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_KEY_TYPE kt = CKK_AES;
	CK_ULONG len = 32;
	CK_BBOOL f = CK_FALSE, t = CK_TRUE;
	CK_ATTRIBUTE tmpl[] = {
		{CKA_CLASS, &cls, sizeof(cls)},   {CKA_KEY_TYPE, &kt, sizeof(kt)},
		{CKA_TOKEN, &f, sizeof(f)},       {CKA_VALUE_LEN, &len, sizeof(len)},
		{CKA_ENCRYPT, &t, sizeof(t)},     {CKA_DECRYPT, &t, sizeof(t)},
		{CKA_SENSITIVE, &t, sizeof(t)},
	};
	CK_MECHANISM m = {CKM_AES_KEY_GEN, NULL, 0};

	return F->C_GenerateKey(s, &m, tmpl, sizeof(tmpl) / sizeof(tmpl[0]), h);
}

static CK_RV gen_ec(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *pub, CK_OBJECT_HANDLE *priv)
{
	CK_BBOOL f = CK_FALSE, t = CK_TRUE;
	CK_ATTRIBUTE pt[] = {
		{CKA_TOKEN, &f, sizeof(f)},
		{CKA_EC_PARAMS, P256_OID, sizeof(P256_OID)},
		{CKA_VERIFY, &t, sizeof(t)},
	};
	CK_ATTRIBUTE vt[] = {
		{CKA_TOKEN, &f, sizeof(f)},
		{CKA_PRIVATE, &t, sizeof(t)},
		{CKA_SENSITIVE, &t, sizeof(t)},
		{CKA_SIGN, &t, sizeof(t)},
	};
	CK_MECHANISM m = {CKM_EC_KEY_PAIR_GEN, NULL, 0};

	return F->C_GenerateKeyPair(s, &m, pt, 3, vt, 4, pub, priv);
}

static void make_keys(unsigned need)
{
	CK_SESSION_HANDLE s = g_login_session;
	CK_BBOOL f = CK_FALSE, t = CK_TRUE;
	CK_RV rv;
	uint64_t t0;

	if (need & K_RSA) {
		CK_ULONG bits = 2048;
		CK_ATTRIBUTE pt[] = {
			{CKA_TOKEN, &f, sizeof(f)},
			{CKA_MODULUS_BITS, &bits, sizeof(bits)},
			{CKA_PUBLIC_EXPONENT, F4, sizeof(F4)},
			{CKA_VERIFY, &t, sizeof(t)},
		};
		CK_ATTRIBUTE vt[] = {
			{CKA_TOKEN, &f, sizeof(f)},
			{CKA_PRIVATE, &t, sizeof(t)},
			{CKA_SENSITIVE, &t, sizeof(t)},
			{CKA_SIGN, &t, sizeof(t)},
		};
		CK_MECHANISM m = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
		t0 = now_ns();
		rv = F->C_GenerateKeyPair(s, &m, pt, 4, vt, 4, &g_rsa_pub, &g_rsa_priv);
		g_ms_key[0] = ms_since(t0);
		if (rv == CKR_OK)
			g_keys_ok |= K_RSA;
		else
			key_fail(0, "RSA-2048 C_GenerateKeyPair", rv);
	}
	if (need & K_EC) {
		t0 = now_ns();
		rv = gen_ec(s, &g_ec_pub, &g_ec_priv);
		g_ms_key[1] = ms_since(t0);
		if (rv == CKR_OK)
			g_keys_ok |= K_EC;
		else
			key_fail(1, "EC P-256 C_GenerateKeyPair", rv);
	}
	if (need & K_AES) {
		t0 = now_ns();
		rv = gen_aes(s, &g_aes);
		g_ms_key[2] = ms_since(t0);
		if (rv == CKR_OK)
			g_keys_ok |= K_AES;
		else
			key_fail(2, "AES-256 C_GenerateKey", rv);
	}
	if (need & K_HMAC) {
		CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
		CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
		CK_ULONG len = 32;
		CK_ATTRIBUTE tmpl[] = {
			{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)},
			{CKA_TOKEN, &f, sizeof(f)},     {CKA_VALUE_LEN, &len, sizeof(len)},
			{CKA_SIGN, &t, sizeof(t)},      {CKA_VERIFY, &t, sizeof(t)},
			{CKA_SENSITIVE, &t, sizeof(t)},
		};
		CK_MECHANISM m = {CKM_GENERIC_SECRET_KEY_GEN, NULL, 0};
		t0 = now_ns();
		rv = F->C_GenerateKey(s, &m, tmpl, sizeof(tmpl) / sizeof(tmpl[0]), &g_hmac);
		g_ms_key[3] = ms_since(t0);
		if (rv == CKR_OK)
			g_keys_ok |= K_HMAC;
		else
			key_fail(3, "HMAC generic secret C_GenerateKey", rv);
	}
}

/* ---- one operation, and its check ---------------------------------------- */

struct worker {
	pthread_t th;
	unsigned idx;
	enum op_id op;
	CK_SESSION_HANDLE s;
	bool open;
	uint64_t ops, errors, iv_ctr;
	CK_RV first_rv;
	uint32_t *lat;
	size_t nlat, cap;
	unsigned char *out, *out2;
	char why[240]; /* set-up or check failure */
};

#define FAILED(w, ...) (snprintf((w)->why, sizeof((w)->why), __VA_ARGS__), false)

static CK_RV sign_once(CK_SESSION_HANDLE s, CK_MECHANISM *m, CK_OBJECT_HANDLE k,
                       unsigned char *d, CK_ULONG dl, unsigned char *sig, CK_ULONG *sl)
{
	CK_RV rv = F->C_SignInit(s, m, k);
	if (rv != CKR_OK)
		return rv;
	return F->C_Sign(s, d, dl, sig, sl);
}

static CK_RV verify_once(CK_SESSION_HANDLE s, CK_MECHANISM *m, CK_OBJECT_HANDLE k,
                         unsigned char *d, CK_ULONG dl, unsigned char *sig, CK_ULONG sl)
{
	CK_RV rv = F->C_VerifyInit(s, m, k);
	if (rv != CKR_OK)
		return rv;
	return F->C_Verify(s, d, dl, sig, sl);
}

/* sig over d must verify, a changed sig and changed data must not */
static bool check_sig(struct worker *w, CK_MECHANISM *m, CK_OBJECT_HANDLE pub,
                      unsigned char *d, CK_ULONG dl, unsigned char *sig, CK_ULONG sl)
{
	unsigned char d2[64];
	CK_RV rv;

	if ((rv = verify_once(w->s, m, pub, d, dl, sig, sl)) != CKR_OK)
		return FAILED(w, "C_Verify of the signature: CKR 0x%lx", (unsigned long)rv);
	sig[sl / 2] ^= 0x01;
	rv = verify_once(w->s, m, pub, d, dl, sig, sl);
	sig[sl / 2] ^= 0x01;
	if (rv != CKR_SIGNATURE_INVALID)
		return FAILED(w, "a changed signature did not fail C_Verify with "
		                 "CKR_SIGNATURE_INVALID (CKR 0x%lx)", (unsigned long)rv);
	memcpy(d2, d, dl < sizeof(d2) ? dl : sizeof(d2));
	d2[0] ^= 0x80;
	rv = verify_once(w->s, m, pub, d2, dl < sizeof(d2) ? dl : sizeof(d2), sig, sl);
	if (rv != CKR_SIGNATURE_INVALID)
		return FAILED(w, "the signature verified over other data (CKR 0x%lx)",
		              (unsigned long)rv);
	return true;
}

static void gcm_params(struct worker *w, CK_GCM_PARAMS *p, unsigned char iv[12])
{
	/* a fresh IV per encryption: the session's number and a counter */
	uint64_t c = ++w->iv_ctr;
	iv[0] = (unsigned char)(w->idx >> 24);
	iv[1] = (unsigned char)(w->idx >> 16);
	iv[2] = (unsigned char)(w->idx >> 8);
	iv[3] = (unsigned char)w->idx;
	for (int i = 0; i < 8; i++)
		iv[4 + i] = (unsigned char)(c >> (56 - 8 * i));
	memset(p, 0, sizeof(*p));
	p->pIv = iv;
	p->ulIvLen = 12;
	p->ulIvBits = 96;
	p->ulTagBits = 128;
}

static CK_RV gcm_encrypt(struct worker *w, CK_OBJECT_HANDLE key, CK_ULONG n, CK_GCM_PARAMS *p,
                         unsigned char iv[12], CK_ULONG *outl)
{
	CK_MECHANISM m = {CKM_AES_GCM, p, sizeof(*p)};
	CK_RV rv;

	gcm_params(w, p, iv);
	if ((rv = F->C_EncryptInit(w->s, &m, key)) != CKR_OK)
		return rv;
	*outl = n + 16;
	return F->C_Encrypt(w->s, g_data, n, w->out, outl);
}

static bool check_gcm(struct worker *w, CK_OBJECT_HANDLE key, CK_ULONG n)
{
	CK_GCM_PARAMS p;
	unsigned char iv[12];
	CK_MECHANISM m = {CKM_AES_GCM, &p, sizeof(p)};
	CK_ULONG cl, pl;
	CK_RV rv;

	if ((rv = gcm_encrypt(w, key, n, &p, iv, &cl)) != CKR_OK)
		return FAILED(w, "C_Encrypt (AES-GCM): CKR 0x%lx", (unsigned long)rv);
	if (cl != n + 16)
		return FAILED(w, "AES-GCM ciphertext of %lu bytes for %lu (want +16)",
		              (unsigned long)cl, (unsigned long)n);
	if (memcmp(w->out, g_data, 16) == 0)
		return FAILED(w, "AES-GCM ciphertext equals the plaintext");
	/* p still holds the IV used */
	if ((rv = F->C_DecryptInit(w->s, &m, key)) != CKR_OK)
		return FAILED(w, "C_DecryptInit (AES-GCM): CKR 0x%lx", (unsigned long)rv);
	pl = n + 16;
	if ((rv = F->C_Decrypt(w->s, w->out, cl, w->out2, &pl)) != CKR_OK)
		return FAILED(w, "C_Decrypt (AES-GCM): CKR 0x%lx", (unsigned long)rv);
	if (pl != n || memcmp(w->out2, g_data, n) != 0)
		return FAILED(w, "AES-GCM decryption does not give the plaintext back");
	w->out[cl - 1] ^= 0x01; /* the tag */
	if ((rv = F->C_DecryptInit(w->s, &m, key)) != CKR_OK)
		return FAILED(w, "C_DecryptInit (AES-GCM): CKR 0x%lx", (unsigned long)rv);
	pl = n + 16;
	rv = F->C_Decrypt(w->s, w->out, cl, w->out2, &pl);
	if (rv == CKR_OK)
		return FAILED(w, "AES-GCM decryption accepted a changed tag");
	return true;
}

static CK_RV ecdsa_sign(struct worker *w, CK_OBJECT_HANDLE priv, CK_ULONG *sl)
{
	CK_MECHANISM m = {g_ecdsa_mech, NULL, 0};
	*sl = 256;
	return sign_once(w->s, &m, priv, g_data, 32, w->out, sl);
}

static bool check_ecdsa(struct worker *w, CK_OBJECT_HANDLE pub, CK_OBJECT_HANDLE priv)
{
	CK_MECHANISM m = {g_ecdsa_mech, NULL, 0};
	CK_ULONG sl;
	CK_RV rv;

	if ((rv = ecdsa_sign(w, priv, &sl)) != CKR_OK)
		return FAILED(w, "C_SignInit/C_Sign (ECDSA): CKR 0x%lx", (unsigned long)rv);
	if (sl != 64)
		return FAILED(w, "ECDSA P-256 signature of %lu bytes (want 64)", (unsigned long)sl);
	return check_sig(w, &m, pub, g_data, 32, w->out, sl);
}

/* One operation. check: also check its result (before the clock starts). */
static bool run_op(struct worker *w, bool check, CK_RV *rvp)
{
	CK_RV rv = CKR_OK;
	CK_ULONG l;

	*rvp = CKR_OK;
	switch (w->op) {
	case OP_RSA: {
		CK_MECHANISM m = {CKM_SHA256_RSA_PKCS, NULL, 0};
		l = 512;
		rv = sign_once(w->s, &m, g_rsa_priv, g_data, 32, w->out, &l);
		if (!check || rv != CKR_OK)
			break;
		if (l != 256)
			return FAILED(w, "RSA-2048 signature of %lu bytes (want 256)", (unsigned long)l);
		{ /* PKCS#1 v1.5 is deterministic: a second signature is the same */
			CK_ULONG l2 = 512;
			if ((rv = sign_once(w->s, &m, g_rsa_priv, g_data, 32, w->out2, &l2)) != CKR_OK)
				break;
			if (l2 != l || memcmp(w->out, w->out2, l) != 0)
				return FAILED(w, "two RSA PKCS#1 v1.5 signatures of the same data differ");
		}
		return check_sig(w, &m, g_rsa_pub, g_data, 32, w->out, l);
	}
	case OP_ECDSA:
		if (check)
			return check_ecdsa(w, g_ec_pub, g_ec_priv);
		rv = ecdsa_sign(w, g_ec_priv, &l);
		break;
	case OP_GCM1K:
	case OP_GCM64K: {
		CK_ULONG n = w->op == OP_GCM1K ? 1024 : BIG;
		CK_GCM_PARAMS p;
		unsigned char iv[12];
		if (check)
			return check_gcm(w, g_aes, n);
		rv = gcm_encrypt(w, g_aes, n, &p, iv, &l);
		break;
	}
	case OP_HMAC: {
		CK_MECHANISM m = {CKM_SHA256_HMAC, NULL, 0};
		l = 64;
		rv = sign_once(w->s, &m, g_hmac, g_data, 1024, w->out, &l);
		if (!check || rv != CKR_OK)
			break;
		if (l != 32)
			return FAILED(w, "HMAC-SHA256 of %lu bytes (want 32)", (unsigned long)l);
		{
			CK_ULONG l2 = 64;
			if ((rv = sign_once(w->s, &m, g_hmac, g_data, 1024, w->out2, &l2)) != CKR_OK)
				break;
			if (l2 != l || memcmp(w->out, w->out2, l) != 0)
				return FAILED(w, "two HMACs of the same data differ");
		}
		/* check_sig changes the data's first byte within its first 64 */
		{
			unsigned char sig[32];
			memcpy(sig, w->out, 32);
			if ((rv = verify_once(w->s, &m, g_hmac, g_data, 1024, sig, 32)) != CKR_OK)
				return FAILED(w, "C_Verify of the HMAC: CKR 0x%lx", (unsigned long)rv);
			sig[5] ^= 0x01;
			rv = verify_once(w->s, &m, g_hmac, g_data, 1024, sig, 32);
			if (rv != CKR_SIGNATURE_INVALID)
				return FAILED(w, "a changed HMAC did not fail C_Verify (CKR 0x%lx)",
				              (unsigned long)rv);
		}
		return true;
	}
	case OP_RAND:
		rv = F->C_GenerateRandom(w->s, w->out, 32);
		if (!check || rv != CKR_OK)
			break;
		if ((rv = F->C_GenerateRandom(w->s, w->out2, 32)) != CKR_OK)
			break;
		{
			static const unsigned char zero[32];
			if (memcmp(w->out, zero, 32) == 0 || memcmp(w->out, w->out2, 32) == 0)
				return FAILED(w, "C_GenerateRandom gave zeros or the same bytes twice");
		}
		return true;
	case OP_GEN_AES: {
		CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
		bool ok = true;
		rv = gen_aes(w->s, &h);
		if (rv != CKR_OK)
			break;
		if (check) {
			CK_ULONG vl = 0;
			CK_ATTRIBUTE a = {CKA_VALUE_LEN, &vl, sizeof(vl)};
			if ((rv = F->C_GetAttributeValue(w->s, h, &a, 1)) != CKR_OK || vl != 32)
				ok = FAILED(w, "the new AES key's CKA_VALUE_LEN is not 32 (CKR 0x%lx)",
				            (unsigned long)rv);
			else
				ok = check_gcm(w, h, 1024);
		}
		rv = F->C_DestroyObject(w->s, h);
		if (!ok)
			return false;
		break;
	}
	case OP_GEN_EC: {
		CK_OBJECT_HANDLE pub = CK_INVALID_HANDLE, priv = CK_INVALID_HANDLE;
		CK_RV rv2;
		bool ok = true;
		rv = gen_ec(w->s, &pub, &priv);
		if (rv != CKR_OK)
			break;
		if (check)
			ok = check_ecdsa(w, pub, priv);
		rv = F->C_DestroyObject(w->s, priv);
		rv2 = F->C_DestroyObject(w->s, pub);
		if (rv == CKR_OK)
			rv = rv2;
		if (!ok)
			return false;
		break;
	}
	case OP_N:
		break;
	}
	*rvp = rv;
	if (rv != CKR_OK && check)
		return FAILED(w, "%s: CKR 0x%lx", OPS[w->op].name, (unsigned long)rv);
	return rv == CKR_OK;
}

/* ---- one run: N sessions, one operation ------------------------------------ */

static void record(struct worker *w, uint64_t ns)
{
	w->ops++;
	if (w->nlat == w->cap) {
		if (w->cap >= LAT_MAX_PER_THREAD)
			return;
		size_t nc = w->cap ? w->cap * 2 : 4096;
		uint32_t *n = realloc(w->lat, nc * sizeof(*n));
		if (n == NULL)
			return;
		w->lat = n;
		w->cap = nc;
	}
	w->lat[w->nlat++] = ns > UINT32_MAX ? UINT32_MAX : (uint32_t)ns;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	CK_RV rv;

	rv = F->C_OpenSession(g_slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &w->s);
	if (rv != CKR_OK)
		snprintf(w->why, sizeof(w->why), "C_OpenSession: CKR 0x%lx", (unsigned long)rv);
	else {
		w->open = true;
		/* the check; its failure keeps every session from being measured */
		if (!run_op(w, true, &rv))
			w->open = false, F->C_CloseSession(w->s);
	}
	pthread_barrier_wait(&g_ready);
	pthread_barrier_wait(&g_go);
	if (g_abort || !w->open) {
		if (w->open)
			F->C_CloseSession(w->s);
		return NULL;
	}
	for (;;) {
		uint64_t t0 = now_ns(), t1;
		if (t0 >= g_end_ns)
			break;
		if (!run_op(w, false, &rv)) {
			if (w->errors++ == 0)
				w->first_rv = rv;
			continue;
		}
		t1 = now_ns();
		/* count only operations wholly inside the measured window */
		if (t0 >= g_measure_ns && t1 <= g_end_ns)
			record(w, t1 - t0);
	}
	F->C_CloseSession(w->s);
	return NULL;
}

struct result {
	enum op_id op;
	long sessions;
	bool ran;
	char why[300];
	uint64_t ops, errors;
	double seconds, ops_s, p50, p99, cores, srv_cores; /* srv_cores < 0: not measured */
	uint64_t smin, smax;
	CK_RV first_rv;
};

static struct result g_res[MAX_RUNS];
static int g_nres;

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return (x > y) - (x < y);
}

static double pct_us(const uint32_t *v, size_t n, double p)
{
	size_t i;
	if (n == 0)
		return 0;
	i = (size_t)(p * (double)n + 0.999999);
	if (i == 0)
		i = 1;
	if (i > n)
		i = n;
	return v[i - 1] / 1000.0;
}

static const char *mech_name(CK_MECHANISM_TYPE m)
{
	switch (m) {
	case CKM_ECDSA: return "CKM_ECDSA";
	case CKM_ECDSA_SHA256: return "CKM_ECDSA_SHA256";
	default: return "?";
	}
}

static void run_one(enum op_id op, long n, struct result *r)
{
	struct worker *ws;
	size_t nlat = 0, k = 0;
	uint32_t *all;
	double cpu0, srv0 = -1;
	long i, failed = 0;

	memset(r, 0, sizeof(*r));
	r->op = op;
	r->sessions = n;
	if ((OPS[op].keys & g_keys_ok) != OPS[op].keys) {
		for (int b = 0; b < 4; b++)
			if ((OPS[op].keys & (1u << b)) && g_key_err[b][0])
				snprintf(r->why, sizeof(r->why), "no key: %.200s", g_key_err[b]);
		return;
	}
	if (!g.mr)
		fprintf(stderr, "p11_bench: %s, %ld session(s), %gs (+%gs warm-up)\n",
		        OPS[op].name, n, g.seconds, g.warmup);
	ws = calloc((size_t)n, sizeof(*ws));
	if (ws == NULL)
		die("out of memory%s", "", CKR_OK);
	pthread_barrier_init(&g_ready, NULL, (unsigned)n + 1);
	pthread_barrier_init(&g_go, NULL, (unsigned)n + 1);
	for (i = 0; i < n; i++) {
		ws[i].idx = (unsigned)(g_nres * MAX_SESSIONS + i); /* unique IVs across runs */
		ws[i].op = op;
		ws[i].out = malloc(BIG + 64);
		ws[i].out2 = malloc(BIG + 64);
		if (ws[i].out == NULL || ws[i].out2 == NULL)
			die("out of memory%s", "", CKR_OK);
		if (pthread_create(&ws[i].th, NULL, worker_main, &ws[i]) != 0)
			die("cannot start a thread%s", "", CKR_OK);
	}
	pthread_barrier_wait(&g_ready);
	for (i = 0; i < n; i++)
		if (!ws[i].open) {
			if (failed++ == 0)
				snprintf(r->why, sizeof(r->why), "session %ld: %s", i, ws[i].why);
		}
	g_abort = failed > 0;
	g_measure_ns = now_ns() + (uint64_t)(g.warmup * 1e9);
	g_end_ns = g_measure_ns + (uint64_t)(g.seconds * 1e9);
	pthread_barrier_wait(&g_go);
	if (!g_abort) {
		sleep_until(g_measure_ns);
		cpu0 = cpu_seconds();
		if (g.cpu_pid)
			srv0 = proc_cpu_seconds(g.cpu_pid);
		sleep_until(g_end_ns);
		r->cores = (cpu_seconds() - cpu0) / g.seconds;
		r->srv_cores = -1;
		if (srv0 >= 0) {
			double srv1 = proc_cpu_seconds(g.cpu_pid);
			if (srv1 >= 0)
				r->srv_cores = (srv1 - srv0) / g.seconds;
		}
	}
	for (i = 0; i < n; i++)
		pthread_join(ws[i].th, NULL);
	pthread_barrier_destroy(&g_ready);
	pthread_barrier_destroy(&g_go);
	if (!g_abort) {
		r->ran = true;
		r->seconds = g.seconds;
		for (i = 0; i < n; i++) {
			r->ops += ws[i].ops;
			r->errors += ws[i].errors;
			nlat += ws[i].nlat;
			if (ws[i].errors && r->first_rv == CKR_OK)
				r->first_rv = ws[i].first_rv;
			if (i == 0 || ws[i].ops < r->smin)
				r->smin = ws[i].ops;
			if (ws[i].ops > r->smax)
				r->smax = ws[i].ops;
		}
		r->ops_s = (double)r->ops / g.seconds;
		all = malloc((nlat ? nlat : 1) * sizeof(*all));
		if (all == NULL)
			die("out of memory%s", "", CKR_OK);
		for (i = 0; i < n; i++) {
			if (ws[i].nlat)
				memcpy(all + k, ws[i].lat, ws[i].nlat * sizeof(*all));
			k += ws[i].nlat;
		}
		qsort(all, nlat, sizeof(*all), cmp_u32);
		r->p50 = pct_us(all, nlat, 0.50);
		r->p99 = pct_us(all, nlat, 0.99);
		free(all);
		if (r->errors)
			snprintf(r->why, sizeof(r->why), "%llu errors, the first CKR 0x%lx",
			         (unsigned long long)r->errors, (unsigned long)r->first_rv);
	}
	for (i = 0; i < n; i++) {
		free(ws[i].lat);
		free(ws[i].out);
		free(ws[i].out2);
	}
	free(ws);
}

/* ---- report ---------------------------------------------------------------- */

static void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

static void print_mr(const struct result *r)
{
	if (!r->ran) {
		printf("op=%s sessions=%ld ran=0 error=\"%s\"\n", OPS[r->op].name, r->sessions, r->why);
		return;
	}
	printf("op=%s sessions=%ld ran=1 ops=%llu seconds=%.3f ops_per_s=%.1f p50_us=%.1f "
	       "p99_us=%.1f errors=%llu cpu_cores=%.2f sess_min=%llu sess_max=%llu",
	       OPS[r->op].name, r->sessions, (unsigned long long)r->ops, r->seconds, r->ops_s, r->p50,
	       r->p99, (unsigned long long)r->errors, r->cores, (unsigned long long)r->smin,
	       (unsigned long long)r->smax);
	if (r->srv_cores >= 0)
		printf(" server_cores=%.2f", r->srv_cores);
	printf("\n");
	fflush(stdout);
}

static void print_table(void)
{
	printf("PKCS#11 module %s\n%s, slot %lu, token \"%s\" (%s)\n", g.module, g_libdesc,
	       (unsigned long)g_slot, g_token, g_model);
	printf("%gs measured + %gs warm-up per run; ECDSA as %s on 32 bytes; "
	       "set-up: C_Initialize %.0f ms, C_Login %.0f ms\n\n",
	       g.seconds, g.warmup, mech_name(g_ecdsa_mech), g_ms_init, g_ms_login);
	printf("%-36s %8s %10s %18s %9s %9s %15s %6s\n", "operation", "sessions", "ops/s",
	       "p50/p99 us", "cpu cores", "srv cores", "sess min/max", "errors");
	for (int i = 0; i < g_nres; i++) {
		const struct result *r = &g_res[i];
		char lat[40], mm[40];
		if (!r->ran) {
			printf("%-36s %8ld   not run: %s\n", OPS[r->op].label, r->sessions, r->why);
			continue;
		}
		snprintf(lat, sizeof(lat), "%.0f/%.0f", r->p50, r->p99);
		snprintf(mm, sizeof(mm), "%llu/%llu", (unsigned long long)r->smin,
		         (unsigned long long)r->smax);
		char srv[16] = "-";
		if (r->srv_cores >= 0)
			snprintf(srv, sizeof(srv), "%.2f", r->srv_cores);
		printf("%-36s %8ld %10.0f %18s %9.2f %9s %15s %6llu\n", OPS[r->op].label, r->sessions,
		       r->ops_s, lat, r->cores, srv, mm, (unsigned long long)r->errors);
	}
	printf("\ncpu cores: this process (the module included: for an in-process module that is\n"
	       "all its work; a network module's server is not in it) over the measured seconds;\n"
	       "srv cores: the same for the process given with --cpu-pid.\n"
	       "key generation runs include C_DestroyObject of the new key(s).\n");
}

static void write_json(const char *path)
{
	FILE *f = fopen(path, "w");
	if (f == NULL) {
		fprintf(stderr, "p11_bench: cannot write %s: %s\n", path, strerror(errno));
		exit(2);
	}
	fprintf(f, "{\"module\":");
	json_str(f, g.module);
	fprintf(f, ",\"library\":");
	json_str(f, g_libdesc);
	fprintf(f, ",\"slot\":%lu,\"token\":", (unsigned long)g_slot);
	json_str(f, g_token);
	fprintf(f, ",\"seconds\":%g,\"warmup\":%g,\"ecdsa_mechanism\":\"%s\",", g.seconds, g.warmup,
	        mech_name(g_ecdsa_mech));
	fprintf(f, "\"setup_ms\":{\"initialize\":%.1f,\"login\":%.1f,\"rsa_keygen\":%.1f,"
	           "\"ec_keygen\":%.1f,\"aes_keygen\":%.1f,\"hmac_keygen\":%.1f},\"results\":[",
	        g_ms_init, g_ms_login, g_ms_key[0], g_ms_key[1], g_ms_key[2], g_ms_key[3]);
	for (int i = 0; i < g_nres; i++) {
		const struct result *r = &g_res[i];
		fprintf(f, "%s{\"op\":\"%s\",\"label\":\"%s\",\"sessions\":%ld,\"ran\":%s", i ? "," : "",
		        OPS[r->op].name, OPS[r->op].label, r->sessions, r->ran ? "true" : "false");
		if (r->ran)
			fprintf(f, ",\"ops\":%llu,\"seconds\":%.3f,\"ops_per_s\":%.1f,\"p50_us\":%.1f,"
			           "\"p99_us\":%.1f,\"errors\":%llu,\"cpu_cores\":%.2f,\"sess_min\":%llu,"
			           "\"sess_max\":%llu",
			        (unsigned long long)r->ops, r->seconds, r->ops_s, r->p50, r->p99,
			        (unsigned long long)r->errors, r->cores, (unsigned long long)r->smin,
			        (unsigned long long)r->smax);
		if (r->ran && r->srv_cores >= 0)
			fprintf(f, ",\"server_cores\":%.2f", r->srv_cores);
		if (r->why[0]) {
			fprintf(f, ",\"error\":");
			json_str(f, r->why);
		}
		fprintf(f, "}");
	}
	fprintf(f, "]}\n");
	fclose(f);
}

int main(int argc, char **argv)
{
	unsigned need = 0;
	CK_RV rv;
	uint64_t t0;
	int bad = 0;

	parse_args(argc, argv);
	t0 = now_ns();
	load_module();
	g_ms_init = ms_since(t0);
	pick_slot();

	/* the session that holds the login and the shared keys, open throughout */
	rv = F->C_OpenSession(g_slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
	                      &g_login_session);
	if (rv != CKR_OK)
		die("C_OpenSession%s", "", rv);
	if (g.have_pin) {
		t0 = now_ns();
		rv = F->C_Login(g_login_session, CKU_USER, (CK_UTF8CHAR_PTR)g.pin, g.pin_len);
		g_ms_login = ms_since(t0);
		memset(g.pin, 0, sizeof(g.pin));
		if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN)
			die("C_Login%s", "", rv);
	}

	/* random data for every operation (the module's own RNG would be circular) */
	{
		FILE *u = fopen("/dev/urandom", "rb");
		if (u == NULL || fread(g_data, 1, sizeof(g_data), u) != sizeof(g_data))
			die("cannot read /dev/urandom%s", "", CKR_OK);
		fclose(u);
	}

	if (g.ecdsa_mode == 2 || (g.ecdsa_mode == 0 && has_mech(CKM_ECDSA_SHA256)))
		g_ecdsa_mech = CKM_ECDSA_SHA256;
	else
		g_ecdsa_mech = CKM_ECDSA;

	for (int o = 0; o < OP_N; o++)
		if (g.ops[o])
			need |= OPS[o].keys;
	make_keys(need);

	for (int si = 0; si < g.nsessions; si++)
		for (int o = 0; o < OP_N; o++) {
			struct result *r;
			if (!g.ops[o])
				continue;
			if (g_nres == MAX_RUNS)
				die("too many runs%s", "", CKR_OK);
			r = &g_res[g_nres];
			run_one((enum op_id)o, g.sessions[si], r);
			g_nres++;
			if (!r->ran || r->errors) {
				bad = 1;
				fprintf(stderr, "p11_bench: %s at %ld session(s): %s\n", OPS[o].name,
				        g.sessions[si], r->ran ? r->why : r->why[0] ? r->why : "not run");
			}
			if (g.mr)
				print_mr(r);
		}

	if (!g.mr)
		print_table();
	if (g.json)
		write_json(g.json);
	/* closing the last session logs out and destroys the session keys */
	F->C_CloseSession(g_login_session);
	F->C_Finalize(NULL);
	return bad;
}

/*
 * The HSM's request path without the network, for bench/: a device in a
 * temporary data directory (a random PMK loaded), a role and identity set up
 * through real LOGN/RLAD/IDAD requests, one key made by a given request, then
 * one given request run for a fixed time through exactly what the server does
 * with each frame it reads (kh_frame_find, kh_frame_parse, kh_dispatch, the
 * answer appended to an output buffer, the request consumed and wiped), on
 * one thread. Its figure beside the server's over TLS tells the cost of the
 * crypto path from the cost of moving requests.
 *
 *   dispatch_bench --cmds LIST [--keygen FRAME] (--request FRAME | --request-file F)
 *                  --seconds S
 *
 * prints one line: requests=N seconds=S rps=R us_per_op=U
 */
#include "common/kh_buf.h"
#include "common/kh_frame.h"
#include "common/kh_log.h"
#include "hsm/dispatch.h"
#include "hsm/hsm_core.h"
#include "hsm/majorkey.h"

#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *g_dir;

static _Noreturn void die(const char *what, const char *detail)
{
	fprintf(stderr, "dispatch_bench: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
	if (g_dir != NULL) {
		char cmd[300];
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
		if (system(cmd) != 0)
			fprintf(stderr, "dispatch_bench: could not remove %s\n", g_dir);
	}
	exit(2);
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* One setup request through the dispatcher; dies unless it succeeds. */
static void call(struct kh_hsm *hsm, struct kh_session *s, const char *req)
{
	struct kh_frame f;
	struct kh_buf *out = kh_buf_new(KH_FRAME_MAX);

	if (out == NULL)
		die("out of memory", NULL);
	if (kh_frame_parse((const uint8_t *)req, strlen(req), KH_FIELDS_MAX, &f) != KH_OK)
		die("not a frame", req);
	if (kh_dispatch(hsm, s, &f, out) != KH_OK) {
		char why[200];
		snprintf(why, sizeof(why), "%.*s", (int)kh_buf_len(out), kh_buf_ptr(out));
		die(req[3] == 'L' ? "a login failed" : why, req[3] == 'L' ? NULL : req);
	}
	kh_buf_free(out);
}

/* A frame too long for a command line (a 64 KiB GPSE is 128 KiB of hex). */
static char *slurp(const char *path)
{
	FILE *f = fopen(path, "rb");
	char *p = malloc(KH_FRAME_MAX + 1);
	size_t n;

	if (f == NULL || p == NULL)
		die("cannot read", path);
	n = fread(p, 1, KH_FRAME_MAX + 1, f);
	fclose(f);
	if (n > KH_FRAME_MAX)
		die("longer than a frame may be", path);
	while (n > 0 && (p[n - 1] == '\n' || p[n - 1] == '\r'))
		n--;
	p[n] = '\0';
	return p;
}

static void session(struct kh_session *s, enum kh_port port)
{
	memset(s, 0, sizeof(*s));
	s->port = port;
	s->source = KH_SRC_ETHERNET;
	snprintf(s->peer, sizeof(s->peer), "dispatch_bench");
}

static void usage(void)
{
	fprintf(stderr, "usage: dispatch_bench --cmds LIST [--keygen FRAME]\n"
	                "                      (--request FRAME | --request-file F) --seconds S\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *cmds = NULL, *keygen = NULL;
	char *request = NULL;
	double seconds = 0;
	char dir[] = "/tmp/kh-dispatch-bench-XXXXXX", req[512];
	uint8_t pmk[32];
	struct kh_hsm hsm;
	struct kh_session admin, app;

	for (int i = 1; i + 1 < argc; i += 2) {
		if (strcmp(argv[i], "--cmds") == 0)
			cmds = argv[i + 1];
		else if (strcmp(argv[i], "--keygen") == 0)
			keygen = argv[i + 1];
		else if (strcmp(argv[i], "--request") == 0)
			request = argv[i + 1];
		else if (strcmp(argv[i], "--request-file") == 0)
			request = slurp(argv[i + 1]);
		else if (strcmp(argv[i], "--seconds") == 0)
			seconds = atof(argv[i + 1]);
		else
			usage();
	}
	if (argc % 2 == 0 || cmds == NULL || request == NULL || !(seconds > 0 && seconds <= 3600) ||
	    strlen(cmds) > 200)
		usage();
	if (mkdtemp(dir) == NULL)
		die("mkdtemp failed", NULL);
	g_dir = dir;
	kh_log_init("dispatch_bench", KH_LOG_WARN, NULL);
	if (kh_hsm_open(&hsm, dir, false) != KH_OK)
		die("cannot open the device in", dir);
	if (RAND_bytes(pmk, sizeof(pmk)) != 1 ||
	    kh_mk_load(&hsm, KH_MK_PMK, pmk, sizeof(pmk), "bench", "mk.load", "bench", NULL) !=
	        KH_OK)
		die("cannot load a PMK", NULL);

	/* the two default administrators (their first login sets a password),
	 * then a role and an identity for the request, logged in on the
	 * production port as a client would */
	session(&admin, KH_PORT_ADMIN);
	call(&hsm, &admin, "[AOLOGN;IDAdmin1;PW736166657374;NP62656E63682D612D7077;]");
	call(&hsm, &admin, "[AOLOGN;IDAdmin2;PW736166657374;NP62656E63682D622D7077;]");
	snprintf(req, sizeof(req), "[AORLAD;RNbench;LQ1;PMkeys;KRS:1000-1499,A:1500-1999;CM%s;]",
	         cmds);
	call(&hsm, &admin, req);
	call(&hsm, &admin, "[AOIDAD;IDbenchuser;RNbench;PW62656E63682D752D7077;]");
	session(&app, KH_PORT_PROD);
	call(&hsm, &app, "[AOLOGN;IDbenchuser;PW62656E63682D752D7077;]");
	if (keygen != NULL)
		call(&hsm, &app, keygen);

	struct kh_buf *in = kh_buf_new(KH_FRAME_MAX), *out = kh_buf_new(KH_FRAME_MAX);
	size_t len = strlen(request);
	unsigned long long n = 0;
	double t0 = now_s(), t1 = t0;

	if (in == NULL || out == NULL)
		die("out of memory", NULL);
	do {
		for (int k = 0; k < 64; k++, n++) {
			struct kh_frame f;
			size_t flen = 0;

			if (kh_buf_put(in, request, len) != KH_OK ||
			    kh_frame_find(kh_buf_ptr(in), kh_buf_len(in), KH_FRAME_MAX, &flen) <=
			        0 ||
			    kh_frame_parse(kh_buf_ptr(in), flen, KH_FIELDS_MAX, &f) != KH_OK)
				die("the request is not one frame", request);
			if (kh_dispatch(&hsm, &app, &f, out) != KH_OK) {
				char why[200];
				snprintf(why, sizeof(why), "%.*s", (int)kh_buf_len(out),
				         kh_buf_ptr(out));
				die("the request failed", why);
			}
			kh_buf_consume(in, flen);
			kh_buf_reset(out);
		}
		t1 = now_s();
	} while (t1 - t0 < seconds);
	printf("requests=%llu seconds=%.3f rps=%.1f us_per_op=%.2f\n", n, t1 - t0,
	       (double)n / (t1 - t0), (t1 - t0) * 1e6 / (double)n);

	kh_buf_free(in);
	kh_buf_free(out);
	kh_hsm_close(&hsm);
	OPENSSL_cleanse(pmk, sizeof(pmk));
	snprintf(req, sizeof(req), "rm -rf '%s'", dir);
	return system(req) == 0 ? 0 : 1;
}

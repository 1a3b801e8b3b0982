/*
 * The connection pool (kh_pool) against real keyhold-hsm daemons:
 * the built binary on loopback (forked from this process when the binary is
 * missing), each on a copy of one data dir provisioned here with a CA,
 * server and client certificates made at test time. What a real HSM cannot
 * be made to do on cue (close after reading a request, answer slowly,
 * NOT_LOGGED_IN on a logged-in connection, a TCP reset) comes from small
 * fake servers. SIGPIPE keeps its default action here: the pool must never
 * raise it.
 */
#include "kh_testutil.h"
#include "hsm/hsm_core.h"
#include "hsm/pki.h"
#include "hsm/server.h"
#include "common/kh_buf.h"
#include "common/kh_client.h"
#include "common/kh_frame.h"
#include "common/kh_mem.h"
#include "common/kh_pool.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/ssl.h>

#define KEY_PASS "pool key pass 1"
#define P12_PASS "pool-p12-pass-2"
#define DUAL_PW1 "dual-password-1"
#define DUAL_PW2 "dual-password-2"
#define GHSH_ABC "[AOGHSH;DT616263;]"
#define SHA256_ABC "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"

/* ---- what the group set-up makes once ---- */

static struct {
	char root[64];
	char golden[256]; /* provisioned data dir: Excrypt port mutual TLS */
	char clear[300];  /* the same device with the Excrypt port in clear */
	char ca[300], cert[300], key[300], key_enc[300], p12[300], p12_nopass[300], other_ca[300];
	X509 *other_ca_x; /* a CA the HSM does not know, and its key */
	EVP_PKEY *other_ca_key;
	int ncopies;
} G;

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}





/* One device, set up through the real dispatcher: the PMK, an application
 * role (GHSH allowed) with appuser, a role that needs two logins, the
 * Transaction Processing role without GHSH (so a GHSH that works proves a
 * login), the HSM's CA, its server certificate for 127.0.0.1 and
 * localhost, and a client certificate in PEM, encrypted PEM and PKCS#12. */
static void provision(void)
{
	void *st = NULL;
	struct kh_session prod;
	char path[700];

	assert_int_equal(kh_test_fx_setup_pmk(&st), 0);
	struct kh_test_fx *x = st;
	kh_test_app_login(x, &prod, "ECHO,GHSH,STAT,HASH,RAND");
	char *pw1 = kh_test_hexs(DUAL_PW1), *pw2 = kh_test_hexs(DUAL_PW2);
	assert_int_equal(KH_CALLF(x, &x->admin, "[AORLAD;RNdual;LQ2;PMkeys;CMECHO,GHSH;]"), KH_OK);
	assert_int_equal(KH_CALLF(x, &x->admin, "[AOIDAD;IDdual1;RNdual;PW%s;]", pw1), KH_OK);
	assert_int_equal(KH_CALLF(x, &x->admin, "[AOIDAD;IDdual2;RNdual;PW%s;]", pw2), KH_OK);
	free(pw1);
	free(pw2);
	assert_int_equal(KH_CALLF(x, &x->admin, "[AORLMD;RNAnonymous;CMECHO,STAT,HASH,RAND,TIME;]"),
	                 KH_OK);

	kh_test_tls_ca(x, false, "Pool Test CA", G.ca);
	EVP_PKEY *key = kh_test_tls_client(x, "pool-client", "DNS:client", G.cert);

	/* the key three ways */
	kh_test_write_key(G.key, key);
	FILE *fp = fopen(G.key_enc, "w");
	assert_non_null(fp);
	assert_int_equal(PEM_write_PrivateKey(fp, key, EVP_aes_256_cbc(), NULL, 0, NULL,
	                                      (void *)(uintptr_t)KEY_PASS),
	                 1);
	fclose(fp);
	fp = fopen(G.cert, "r");
	assert_non_null(fp);
	X509 *cert = PEM_read_X509(fp, NULL, NULL, NULL);
	fclose(fp);
	assert_non_null(cert);
	PKCS12 *p12 = PKCS12_create(P12_PASS, "pool client", key, cert, NULL, 0, 0, 0, 0, 0);
	assert_non_null(p12);
	fp = fopen(G.p12, "wb");
	assert_non_null(fp);
	assert_int_equal(i2d_PKCS12_fp(fp, p12), 1);
	fclose(fp);
	PKCS12_free(p12);
	/* no encryption, no MAC */
	p12 = PKCS12_create(NULL, "pool client", key, cert, NULL, -1, -1, 0, -1, 0);
	assert_non_null(p12);
	fp = fopen(G.p12_nopass, "wb");
	assert_non_null(fp);
	assert_int_equal(i2d_PKCS12_fp(fp, p12), 1);
	fclose(fp);
	PKCS12_free(p12);
	X509_free(cert);
	EVP_PKEY_free(key);

	/* a CA of nobody's */
	struct kh_pki_keyspec spec = {KH_PKI_EC, 256};
	uint8_t *pem = NULL;
	size_t len = 0;
	assert_int_equal(kh_pki_keygen(&spec, &G.other_ca_key), KH_OK);
	assert_int_equal(kh_pki_ca_new(G.other_ca_key, "Other CA", 30, time(NULL), &G.other_ca_x),
	                 KH_OK);
	assert_int_equal(kh_pki_cert_pem(G.other_ca_x, &pem, &len), KH_OK);
	kh_test_write_file(G.other_ca, pem, len);
	free(pem);

	kh_hsm_close(&x->hsm);
	snprintf(G.golden, sizeof(G.golden), "%s", x->dir);
	free(x);

	/* the clear variant */
	snprintf(G.clear, sizeof(G.clear), "%s/clear", G.root);
	snprintf(path, sizeof(path), "cp -a '%s' '%s'", G.golden, G.clear);
	assert_int_equal(system(path), 0);
	struct kh_hsm *h = calloc(1, sizeof(*h));
	struct kh_session adm;
	char out[4096];
	assert_non_null(h);
	assert_int_equal(kh_hsm_open(h, G.clear, false), KH_OK);
	kh_test_admin_session(h, &adm);
	assert_int_equal(kh_test_call(h, &adm, "[AOTPRT;PTexcrypt;MOclear;]", out, sizeof(out)),
	                 KH_OK);
	kh_hsm_close(h);
	free(h);
}

static int group_setup(void **state)
{
	snprintf(G.root, sizeof(G.root), "/tmp/kh-pool-XXXXXX");
	assert_non_null(mkdtemp(G.root));
	snprintf(G.ca, sizeof(G.ca), "%s/ca.pem", G.root);
	snprintf(G.cert, sizeof(G.cert), "%s/client.pem", G.root);
	snprintf(G.key, sizeof(G.key), "%s/client.key", G.root);
	snprintf(G.key_enc, sizeof(G.key_enc), "%s/client-enc.key", G.root);
	snprintf(G.p12, sizeof(G.p12), "%s/client.p12", G.root);
	snprintf(G.p12_nopass, sizeof(G.p12_nopass), "%s/client-nopass.pfx", G.root);
	snprintf(G.other_ca, sizeof(G.other_ca), "%s/other-ca.pem", G.root);
	char bin[PATH_MAX];
	if (!kh_test_hsm_bin(bin, sizeof(bin)))
		print_message(
		    "keyhold-hsm binary not found: the daemons run forked from the test\n");
	provision();
	return 0;
}

static int group_teardown(void **state)
{
	char cmd[600];
	kh_test_daemon_kill_all();
	X509_free(G.other_ca_x);
	EVP_PKEY_free(G.other_ca_key);
	if (getenv("KH_KEEP")) {
		print_message("kept %s and %s\n", G.root, G.golden);
		return 0;
	}
	snprintf(cmd, sizeof(cmd), "rm -rf '%s' '%s'", G.root, G.golden);
	return system(cmd) == 0 ? 0 : -1;
}

/* ---- real daemons ---- */

/* A daemon on a fresh copy of src, listening on listen (NULL: 127.0.0.1);
 * the helpers are kh_testutil's. */
static void hsm_init(struct kh_test_daemon *h, const char *src, const char *listen)
{
	char dir[300];
	snprintf(dir, sizeof(dir), "%s/hsm%d", G.root, G.ncopies++);
	kh_test_daemon_init(h, src, dir, listen, false);
}

#define hsm_start kh_test_daemon_start
#define hsm_stop kh_test_daemon_stop

/* ---- configuration and calls ---- */

static void cfg_init(struct kh_pool_cfg *c, bool tls)
{
	memset(c, 0, sizeof(*c));
	c->name = "pool test";
	c->what = "test group";
	c->default_port = 9100;
	c->tls = tls;
	c->balance = true;
	c->connect_timeout_ms = 5000;
	c->request_timeout_ms = 10000;
	c->max_connections = 64;
	if (tls) {
		c->ca_file = G.ca;
		c->cert_file = G.cert;
		c->key_file = G.key;
	}
}

/* host must live until the pool is made (a literal, or G's) */
static void cfg_addr(struct kh_pool_cfg *c, const char *host, unsigned port)
{
	assert_true(c->naddr < KH_POOL_MAX_ADDRS);
	c->addr[c->naddr] = (struct kh_pool_addr){host, port};
	c->naddr++;
}

static struct kh_pool *pool_new(const struct kh_pool_cfg *c)
{
	char err[512];
	struct kh_pool *p = kh_pool_new(c, err, sizeof(err));
	if (p == NULL)
		fail_msg("kh_pool_new: %s", err);
	return p;
}

/* One call with the request text; the response (NUL-terminated) in out
 * when given, the reason in err. */
static int call(struct kh_pool *p, unsigned flags, const char *text, char *out, size_t outsz,
                char *err, size_t errsz)
{
	struct kh_buf *req = kh_buf_new(KH_FRAME_MAX), *resp = kh_buf_new(KH_FRAME_MAX);
	struct kh_frame *f = malloc(sizeof(*f));
	char e[512];
	int r;

	assert_non_null(req);
	assert_non_null(resp);
	assert_non_null(f);
	assert_int_equal(kh_buf_put_str(req, text), KH_OK);
	r = kh_pool_call(p, flags, req, resp, f, err ? err : e, err ? errsz : sizeof(e));
	if (out) {
		size_t n = kh_buf_len(resp) < outsz - 1 ? kh_buf_len(resp) : outsz - 1;
		memcpy(out, kh_buf_ptr(resp), n);
		out[n] = '\0';
	}
	kh_buf_free(req);
	kh_buf_free(resp);
	free(f);
	return r;
}

static void call_ok(struct kh_pool *p, unsigned flags, const char *text)
{
	char err[512];
	int r = call(p, flags, text, NULL, 0, err, sizeof(err));
	if (r != KH_OK)
		fail_msg("%s: %s: %s", text, kh_errname(r), err);
}

static void ghsh_ok(struct kh_pool *p)
{
	char out[512], err[512];
	int r = call(p, KH_POOL_BALANCE, GHSH_ABC, out, sizeof(out), err, sizeof(err));
	if (r != KH_OK)
		fail_msg("GHSH: %s: %s", kh_errname(r), err);
	assert_string_equal(kh_test_field(out, "HS"), SHA256_ABC);
}

static int login_app(struct kh_pool *p, const char *pw)
{
	struct kh_pool_cred c = {"appuser", pw, strlen(pw)};
	return kh_pool_login(p, &c, 1);
}

/* Many threads, each n calls of text; counts of results. */
struct load {
	struct kh_pool *p;
	unsigned flags;
	const char *text;
	int n;
	int expect;
	int good, bad, last;
	atomic_bool finished;
	char err[512];
	pthread_barrier_t *bar;
};

static void *load_main(void *arg)
{
	struct load *l = arg;
	struct kh_buf *req = kh_buf_new(4096), *resp = kh_buf_new(KH_FRAME_MAX);
	struct kh_frame *f = malloc(sizeof(*f));
	if (req == NULL || resp == NULL || f == NULL || kh_buf_put_str(req, l->text) != KH_OK) {
		l->bad = l->n;
		goto out;
	}
	if (l->bar)
		pthread_barrier_wait(l->bar);
	for (int i = 0; i < l->n; i++) {
		char err[512];
		double t0 = now_s();
		int r = kh_pool_call(l->p, l->flags, req, resp, f, err, sizeof(err));
		if (r == l->expect) {
			l->good++;
		} else {
			l->bad++;
			l->last = r;
			snprintf(l->err, sizeof(l->err), "%.400s (after %.3f s)", err,
			         now_s() - t0);
		}
	}
out:
	kh_buf_free(req);
	kh_buf_free(resp);
	free(f);
	atomic_store(&l->finished, true);
	return NULL;
}

/* nthreads x n calls that must all give expect. */
static void run_load(struct kh_pool *p, unsigned flags, const char *text, int nthreads, int n,
                     int expect)
{
	pthread_t th[32];
	struct load l[32];
	pthread_barrier_t bar;
	assert_true(nthreads <= 32);
	pthread_barrier_init(&bar, NULL, (unsigned)nthreads);
	for (int i = 0; i < nthreads; i++) {
		l[i] = (struct load){
		    .p = p, .flags = flags, .text = text, .n = n, .expect = expect, .bar = &bar};
		assert_int_equal(pthread_create(&th[i], NULL, load_main, &l[i]), 0);
	}
	for (int i = 0; i < nthreads; i++)
		pthread_join(th[i], NULL);
	pthread_barrier_destroy(&bar);
	for (int i = 0; i < nthreads; i++)
		if (l[i].bad)
			fail_msg("thread %d: %d of %d calls gave %s, not %s: %s", i, l[i].bad, n,
			         kh_errname(l[i].last), kh_errname(expect), l[i].err);
}

/* STAT straight from a daemon (not through the pool): requests served. */
static unsigned long hsm_requests(const struct kh_test_daemon *h, bool tls)
{
	struct kh_client_opts o;
	struct kh_buf *req = kh_buf_new(64), *resp = kh_buf_new(KH_FRAME_MAX);
	struct kh_frame *f = malloc(sizeof(*f));
	uint64_t rq = 0;
	kh_client_opts_init(&o);
	o.host = h->listen;
	o.port = h->port;
	o.tls = tls;
	o.ca_file = G.ca;
	o.cert_file = G.cert;
	o.key_file = G.key;
	o.probe = false;
	struct kh_client *c = kh_client_new(&o);
	assert_non_null(c);
	if (kh_client_connect(c) != KH_OK)
		fail_msg("direct connect: %s", kh_client_error(c));
	assert_int_equal(kh_msg_begin(req, "STAT"), KH_OK);
	assert_int_equal(kh_msg_end(req), KH_OK);
	assert_int_equal(kh_client_call(c, req, resp, f), KH_OK);
	assert_int_equal(kh_frame_u64(f, "RQ", 0, UINT64_MAX, &rq), KH_OK);
	kh_client_free(c);
	kh_buf_free(req);
	kh_buf_free(resp);
	free(f);
	return (unsigned long)rq;
}

/* ---- fake servers (clear TCP, a thread per connection) ---- */

#define FAKE_CANNED 32
#define FAKE_CONNS 64

struct fake {
	int lfd;
	unsigned port;
	pthread_t th;
	pthread_mutex_t mu;
	struct {
		const char *cmd, *resp; /* resp NULL: close; "": no answer */
		bool used;
	} canned[FAKE_CANNED];
	size_t ncanned;
	unsigned delay_ms; /* before each answer */
	char log[65536];   /* "<conn>:<CMD>\n" per request */
	size_t loglen;
	int nconn, live, max_live;
	int fds[FAKE_CONNS];
	pthread_t cth[FAKE_CONNS];
};

struct fake_conn {
	struct fake *fk;
	int fd, id;
};

static void fake_add(struct fake *fk, const char *cmd, const char *resp)
{
	pthread_mutex_lock(&fk->mu);
	assert_true(fk->ncanned < FAKE_CANNED);
	fk->canned[fk->ncanned].cmd = cmd;
	fk->canned[fk->ncanned].resp = resp;
	fk->canned[fk->ncanned].used = false;
	fk->ncanned++;
	pthread_mutex_unlock(&fk->mu);
}

/* The answer to cmd: the first unused canned one, else a plain success. */
static const char *fake_answer(struct fake *fk, const char *cmd, char *buf, size_t bufsz)
{
	for (size_t i = 0; i < fk->ncanned; i++) {
		if (!fk->canned[i].used && strcmp(fk->canned[i].cmd, cmd) == 0) {
			fk->canned[i].used = true;
			return fk->canned[i].resp;
		}
	}
	if (strcmp(cmd, "ECHO") == 0)
		return "[AOECHO;AG;BC0.1.0;]";
	if (strcmp(cmd, "LOGN") == 0)
		return "[AOLOGN;BBY;ROapp;LC1;LQ1;ACY;]";
	if (strcmp(cmd, "LOGO") == 0)
		return "[AOLOGO;BBY;LC0;]";
	snprintf(buf, bufsz, "[AO%s;BBY;HS00;]", cmd);
	return buf;
}

static void *fake_conn_main(void *arg)
{
	struct fake_conn *fc = arg;
	struct fake *fk = fc->fk;
	struct kh_buf *in = kh_buf_new(KH_FRAME_MAX);
	struct kh_frame *fr = malloc(sizeof(*fr));

	for (;;) {
		size_t flen = 0;
		int r = kh_frame_find(kh_buf_ptr(in), kh_buf_len(in), KH_FRAME_MAX, &flen);
		if (r < 0)
			break;
		if (r == 0) {
			uint8_t *p;
			if (kh_buf_reserve(in, 65536, &p) != KH_OK)
				break;
			ssize_t n = recv(fc->fd, p, 65536, 0);
			if (n <= 0)
				break;
			kh_buf_commit(in, (size_t)n);
			continue;
		}
		char buf[128];
		const char *resp = "[AOERRO;EC3;ETmalformed request;]";
		if (kh_frame_parse(kh_buf_ptr(in), flen, KH_FIELDS_MAX, fr) == KH_OK) {
			pthread_mutex_lock(&fk->mu);
			int w = snprintf(fk->log + fk->loglen, sizeof(fk->log) - fk->loglen,
			                 "%d:%s\n", fc->id, fr->cmd);
			if (w > 0 && (size_t)w < sizeof(fk->log) - fk->loglen)
				fk->loglen += (size_t)w;
			resp = fake_answer(fk, fr->cmd, buf, sizeof(buf));
			pthread_mutex_unlock(&fk->mu);
		}
		kh_buf_consume(in, flen);
		if (resp == NULL)
			break;
		if (fk->delay_ms)
			usleep(fk->delay_ms * 1000u);
		if (*resp && send(fc->fd, resp, strlen(resp), MSG_NOSIGNAL) < 0)
			break;
	}
	pthread_mutex_lock(&fk->mu);
	fk->live--;
	shutdown(fc->fd, SHUT_RDWR);
	pthread_mutex_unlock(&fk->mu);
	free(fr);
	kh_buf_free(in);
	free(fc);
	return NULL;
}

static void *fake_main(void *arg)
{
	struct fake *fk = arg;
	for (;;) {
		int fd = accept(fk->lfd, NULL, NULL);
		if (fd < 0)
			break;
		pthread_mutex_lock(&fk->mu);
		if (fk->nconn >= FAKE_CONNS) {
			pthread_mutex_unlock(&fk->mu);
			close(fd);
			continue;
		}
		struct fake_conn *fc = malloc(sizeof(*fc));
		fc->fk = fk;
		fc->fd = fd;
		fc->id = fk->nconn;
		fk->fds[fk->nconn] = fd;
		fk->live++;
		if (fk->live > fk->max_live)
			fk->max_live = fk->live;
		pthread_create(&fk->cth[fk->nconn], NULL, fake_conn_main, fc);
		fk->nconn++;
		pthread_mutex_unlock(&fk->mu);
	}
	return NULL;
}

static void fake_start(struct fake *fk, unsigned port)
{
	struct sockaddr_in sin;
	socklen_t l = sizeof(sin);
	int one = 1;

	memset(fk, 0, sizeof(*fk));
	pthread_mutex_init(&fk->mu, NULL);
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sin.sin_port = htons((uint16_t)port);
	fk->lfd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(fk->lfd >= 0);
	setsockopt(fk->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	assert_int_equal(bind(fk->lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(listen(fk->lfd, 64), 0);
	assert_int_equal(getsockname(fk->lfd, (struct sockaddr *)&sin, &l), 0);
	fk->port = ntohs(sin.sin_port);
	assert_int_equal(pthread_create(&fk->th, NULL, fake_main, fk), 0);
}

/* Stop listening and end every connection. */
static void fake_stop(struct fake *fk)
{
	shutdown(fk->lfd, SHUT_RDWR);
	close(fk->lfd);
	pthread_join(fk->th, NULL);
	pthread_mutex_lock(&fk->mu);
	for (int i = 0; i < fk->nconn; i++)
		shutdown(fk->fds[i], SHUT_RDWR);
	pthread_mutex_unlock(&fk->mu);
	for (int i = 0; i < fk->nconn; i++) {
		pthread_join(fk->cth[i], NULL);
		close(fk->fds[i]);
	}
	pthread_mutex_destroy(&fk->mu);
}

static int count_of(const char *hay, const char *needle)
{
	int n = 0;
	for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
		n++;
	return n;
}

/* ---- tests: configuration ---- */

static void expect_new_fails(const struct kh_pool_cfg *c, const char *want1, const char *want2)
{
	char err[512];
	struct kh_pool *p = kh_pool_new(c, err, sizeof(err));
	if (p != NULL)
		fail_msg("kh_pool_new accepted a bad configuration (want \"%s\")", want1);
	if (strstr(err, want1) == NULL || (want2 && strstr(err, want2) == NULL))
		fail_msg("error \"%s\" lacks \"%s\" / \"%s\"", err, want1, want2 ? want2 : "");
	assert_null(strchr(err, '\n'));
}

static void test_config_errors(void **state)
{
	struct kh_pool_cfg c;
	char pass[64], path[300], longhost[KH_POOL_HOST_MAX + 2];

	/* addresses: none, too many, no host, a host too long, a bad port */
	cfg_init(&c, true);
	expect_new_fails(&c, "pool test: no address", NULL);
	c.naddr = KH_POOL_MAX_ADDRS + 1;
	expect_new_fails(&c, "pool test: too many addresses", NULL);
	c.naddr = 0;
	cfg_addr(&c, "127.0.0.1", 9);
	cfg_addr(&c, NULL, 9);
	expect_new_fails(&c, "pool test: address 2: no host", NULL);
	memset(longhost, 'a', sizeof(longhost) - 1);
	longhost[sizeof(longhost) - 1] = '\0';
	c.addr[1].host = longhost;
	expect_new_fails(&c, "address 2: ", "bad host or port");
	c.addr[1] = (struct kh_pool_addr){"127.0.0.1", 65536};
	expect_new_fails(&c, "address 2: ", "bad host or port");
	c.naddr = 1;

	snprintf(path, sizeof(path), "%s/missing-ca.pem", G.root);
	c.ca_file = path;
	expect_new_fails(&c, "pool test: ", "cannot load CA file");
	c.name = NULL; /* a default name for messages */
	expect_new_fails(&c, "connection pool: ", "missing-ca.pem");
	c.name = "pool test";
	c.ca_file = G.ca;

	/* encrypted PEM key: no password, a wrong one, the right one */
	c.key_file = G.key_enc;
	expect_new_fails(&c, "client-enc.key", "encrypted and no password");
	snprintf(pass, sizeof(pass), "not the pass");
	c.key_pass = pass;
	expect_new_fails(&c, "cannot load client key", "client-enc.key");
	snprintf(pass, sizeof(pass), "%s", KEY_PASS);
	kh_pool_free(pool_new(&c));

	/* PKCS#12: wrong password, missing file, a separate key file */
	c.key_file = NULL;
	c.cert_file = G.p12;
	expect_new_fails(&c, "client.p12", "wrong password");
	snprintf(pass, sizeof(pass), "%s", P12_PASS);
	kh_pool_free(pool_new(&c));
	c.key_file = G.key;
	expect_new_fails(&c, "PKCS#12", "client.key");
	c.key_file = NULL;
	/* exported without a password: <PROD-TLS-KEY-PASS> absent or empty */
	c.cert_file = G.p12_nopass;
	c.key_pass = NULL;
	kh_pool_free(pool_new(&c));
	pass[0] = '\0';
	c.key_pass = pass;
	kh_pool_free(pool_new(&c));
	c.key_file = NULL;
	snprintf(path, sizeof(path), "%s/none.p12", G.root);
	c.cert_file = path;
	expect_new_fails(&c, "none.p12", NULL);

	/* a key that is not the certificate's */
	c.cert_file = G.cert;
	c.key_file = G.other_ca;
	expect_new_fails(&c, "cannot load client key", "other-ca.pem");

	/* anonymous: no client certificate needed; clear: no TLS files read */
	c.anonymous = true;
	c.cert_file = c.key_file = NULL;
	kh_pool_free(pool_new(&c));
	cfg_init(&c, false);
	cfg_addr(&c, "127.0.0.1", 9);
	c.ca_file = "/nonexistent";
	kh_pool_free(pool_new(&c));
	kh_pool_free(NULL);
	kh_pool_abandon(NULL);
}

/* ---- tests: one real HSM ---- */

static void test_clear_tcp(void **state)
{
	struct kh_test_daemon h;
	struct kh_pool_cfg c;
	struct kh_pool_stats st;
	char out[512], err[512];

	hsm_init(&h, G.clear, NULL);
	hsm_start(&h);
	cfg_init(&c, false);
	cfg_addr(&c, "127.0.0.1", h.port);
	struct kh_pool *p = pool_new(&c);

	call_ok(p, KH_POOL_BALANCE, "[AOECHO;AGhello;]");
	assert_false(kh_pool_logged_in(p));
	/* Transaction Processing may not GHSH: proof that nobody is logged in */
	assert_int_equal(call(p, KH_POOL_BALANCE, GHSH_ABC, out, sizeof(out), err, sizeof(err)),
	                 KH_ERR_COMMAND_NOT_ALLOWED);
	assert_non_null(strstr(err, "GHSH not enabled"));

	assert_int_equal(login_app(p, "wrong password"), KH_ERR_AUTH_FAILED);
	assert_false(kh_pool_logged_in(p));
	kh_pool_last_error(p, err, sizeof(err));
	assert_non_null(strstr(err, "login as appuser: "));
	assert_null(strstr(err, "wrong password"));

	assert_int_equal(login_app(p, KH_TEST_APP_PW), KH_OK);
	assert_true(kh_pool_logged_in(p));
	for (int i = 0; i < 20; i++)
		ghsh_ok(p);
	call_ok(p, KH_POOL_PRIMARY, "[AOHASH;]");
	kh_pool_stats(p, &st);
	assert_int_equal(st.open, 1); /* one connection did it all */
	assert_int_equal(st.failures, 0);
	assert_int_equal(st.retries, 0);
	assert_int_equal(kh_pool_addresses_up(p), 1);

	kh_pool_logout(p);
	assert_false(kh_pool_logged_in(p));
	kh_pool_stats(p, &st);
	assert_int_equal(st.open, 0); /* the logged-in idle connection was closed */
	assert_int_equal(call(p, KH_POOL_BALANCE, GHSH_ABC, NULL, 0, err, sizeof(err)),
	                 KH_ERR_COMMAND_NOT_ALLOWED);
	kh_pool_free(p);
	hsm_stop(&h, SIGTERM);
}

static void test_mutual_tls(void **state)
{
	struct kh_test_daemon h;
	struct kh_pool_cfg c;
	struct kh_pool_stats st;
	char pass[64];

	hsm_init(&h, G.golden, NULL);
	hsm_start(&h);

	/* encrypted PEM key */
	cfg_init(&c, true);
	cfg_addr(&c, "127.0.0.1", h.port);
	c.key_file = G.key_enc;
	snprintf(pass, sizeof(pass), "%s", KEY_PASS);
	c.key_pass = pass;
	struct kh_pool *p = pool_new(&c);
	call_ok(p, KH_POOL_BALANCE, "[AOECHO;]");
	assert_int_equal(login_app(p, KH_TEST_APP_PW), KH_OK);
	run_load(p, KH_POOL_BALANCE, GHSH_ABC, 4, 25, KH_OK);
	ghsh_ok(p);
	kh_pool_stats(p, &st);
	assert_true(st.connects >= 1 && st.connects <= 4);
	assert_int_equal(st.failures, 0);
	kh_pool_free(p);

	/* PKCS#12, and a DNS name checked against the certificate */
	cfg_init(&c, true);
	cfg_addr(&c, "localhost", h.port);
	c.cert_file = G.p12;
	c.key_file = NULL;
	snprintf(pass, sizeof(pass), "%s", P12_PASS);
	c.key_pass = pass;
	p = pool_new(&c);
	assert_int_equal(login_app(p, KH_TEST_APP_PW), KH_OK);
	for (int i = 0; i < 10; i++)
		ghsh_ok(p);
	kh_pool_free(p);

	/* the default port when the address has none */
	cfg_init(&c, true);
	cfg_addr(&c, "127.0.0.1", 0);
	c.default_port = h.port;
	p = pool_new(&c);
	call_ok(p, KH_POOL_PRIMARY, "[AOECHO;]");
	kh_pool_free(p);

	/* the caller's TLS context: the files are not read, and the pool
	 * keeps its own reference to the context */
	struct kh_client_tls t = {.ca_file = G.ca, .cert_file = G.cert, .key_file = G.key};
	SSL_CTX *ctx = NULL;
	char err[512];
	if (kh_client_tls_ctx(&t, &ctx, err, sizeof(err)) != KH_OK)
		fail_msg("kh_client_tls_ctx: %s", err);
	cfg_init(&c, true);
	cfg_addr(&c, "127.0.0.1", h.port);
	c.tls_ctx = ctx;
	c.ca_file = c.cert_file = c.key_file = "/nonexistent";
	p = pool_new(&c);
	SSL_CTX_free(ctx);
	assert_int_equal(login_app(p, KH_TEST_APP_PW), KH_OK);
	run_load(p, KH_POOL_BALANCE, GHSH_ABC, 4, 5, KH_OK);
	kh_pool_free(p);
	hsm_stop(&h, SIGTERM);
}

static void test_tls_refusals(void **state)
{
	struct kh_test_daemon h, h2;
	struct kh_pool_cfg c;
	char err[512], want[128];
	int r;

	hsm_init(&h, G.golden, NULL);
	hsm_start(&h);

	/* a CA that did not issue the HSM's certificate */
	cfg_init(&c, true);
	cfg_addr(&c, "127.0.0.1", h.port);
	c.ca_file = G.other_ca;
	struct kh_pool *p = pool_new(&c);
	r = call(p, KH_POOL_BALANCE, "[AOECHO;]", NULL, 0, err, sizeof(err));
	assert_int_equal(r, KH_ERR_TLS_CERT_UNKNOWN_CA);
	snprintf(want, sizeof(want),
	         "127.0.0.1 port %u (Excrypt): TLS handshake: server certificate "
	         "not trusted",
	         h.port);
	if (strstr(err, want) == NULL)
		fail_msg("\"%s\" lacks \"%s\"", err, want);
	assert_int_equal(login_app(p, KH_TEST_APP_PW), KH_ERR_TLS_CERT_UNKNOWN_CA);
	assert_int_equal(kh_pool_addresses_up(p), 0);
	kh_pool_free(p);

	/* no client certificate on a mutual port: with TLS 1.3 the refusal
	 * comes with the first answer, and says what it is */
	cfg_init(&c, true);
	cfg_addr(&c, "127.0.0.1", h.port);
	c.anonymous = true;
	p = pool_new(&c);
	r = call(p, KH_POOL_PRIMARY, "[AOECHO;]", NULL, 0, err, sizeof(err));
	assert_int_equal(r, KH_ERR_TLS_CERT_REQUIRED);
	assert_non_null(strstr(err, "TLS handshake: server requires a client certificate"));
	kh_pool_free(p);

	/* TLS to a clear port */
	hsm_init(&h2, G.clear, NULL);
	hsm_start(&h2);
	cfg_init(&c, true);
	cfg_addr(&c, "127.0.0.1", h2.port);
	p = pool_new(&c);
	r = call(p, KH_POOL_BALANCE, "[AOECHO;]", NULL, 0, err, sizeof(err));
	assert_true(r == KH_ERR_TLS_HANDSHAKE || r == KH_ERR_CLOSED);
	assert_non_null(strstr(err, "TLS handshake"));
	kh_pool_free(p);
	hsm_stop(&h2, SIGTERM);

	/* an address the certificate does not name (it names 127.0.0.1 and
	 * localhost; the same HSM listens on 127.0.0.2 here) */
	hsm_init(&h2, G.golden, "127.0.0.2");
	hsm_start(&h2);
	cfg_init(&c, true);
	cfg_addr(&c, "127.0.0.2", h2.port);
	p = pool_new(&c);
	r = call(p, KH_POOL_BALANCE, "[AOECHO;]", NULL, 0, err, sizeof(err));
	assert_int_not_equal(r, KH_OK);
	assert_non_null(strstr(err, "127.0.0.2 port"));
	assert_non_null(strstr(err, "server certificate not trusted"));
	kh_pool_free(p);
	hsm_stop(&h2, SIGTERM);

	/* nothing listening */
	hsm_stop(&h, SIGTERM);
	cfg_init(&c, true);
	cfg_addr(&c, "127.0.0.1", h.port);
	p = pool_new(&c);
	r = call(p, KH_POOL_BALANCE, "[AOECHO;]", NULL, 0, err, sizeof(err));
	assert_int_equal(r, KH_ERR_CONNECT);
	snprintf(want, sizeof(want), "127.0.0.1 port %u (Excrypt): TCP connect: Connection refused",
	         h.port);
	assert_string_equal(err, want);
	kh_pool_free(p);
}

/* Logins: replayed on every new connection, after an HSM restart, with
 * two identities; logout leaves no connection logged in. */
static void test_login_replay_and_logout(void **state)
{
	struct kh_test_daemon h;
	struct kh_pool_cfg c;
	struct kh_pool_stats st, st2;

	hsm_init(&h, G.golden, NULL);
	hsm_start(&h);
	cfg_init(&c, true);
	cfg_addr(&c, "127.0.0.1", h.port);
	c.max_connections = 8;
	struct kh_pool *p = pool_new(&c);

	/* a few connections before the login, which must log in before use */
	run_load(p, KH_POOL_BALANCE, "[AOECHO;]", 8, 10, KH_OK);
	kh_pool_stats(p, &st);
	assert_true(st.open >= 1 && st.open <= 8);
	assert_int_equal(login_app(p, KH_TEST_APP_PW), KH_OK);
	run_load(p, KH_POOL_BALANCE, GHSH_ABC, 8, 30, KH_OK);
	kh_pool_stats(p, &st);
	assert_true(st.open <= 8);
	assert_int_equal(st.failures, 0);

	/* the HSM restarts: every pooled connection is dead, and no call fails */
	hsm_stop(&h, SIGTERM);
	hsm_start(&h);
	run_load(p, KH_POOL_BALANCE, GHSH_ABC, 8, 10, KH_OK);
	kh_pool_stats(p, &st2);
	assert_true(st2.connects > st.connects);
	/* and after a crash, even a PRIMARY call (its idle connection is
	 * found dead before anything is sent) */
	hsm_stop(&h, SIGKILL);
	hsm_start(&h);
	char err[512];
	int r = call(p, KH_POOL_PRIMARY, GHSH_ABC, NULL, 0, err, sizeof(err));
	if (r != KH_OK)
		fail_msg("PRIMARY after a restart: %s: %s", kh_errname(r), err);

	/* logout: every connection, idle or busy when it came, is logged out */
	kh_pool_logout(p);
	run_load(p, KH_POOL_BALANCE, GHSH_ABC, 8, 10, KH_ERR_COMMAND_NOT_ALLOWED);

	/* a role that needs two logins */
	struct kh_pool_cred dual[2] = {{"dual1", DUAL_PW1, strlen(DUAL_PW1)},
	                           {"dual2", DUAL_PW2, strlen(DUAL_PW2)}};
	assert_int_equal(kh_pool_login(p, dual, 1), KH_ERR_INCOMPLETE);
	assert_false(kh_pool_logged_in(p));
	assert_int_equal(kh_pool_login(p, dual, 2), KH_OK);
	run_load(p, KH_POOL_BALANCE, GHSH_ABC, 8, 10, KH_OK);
	/* logging in again replaces the credentials on every connection */
	assert_int_equal(login_app(p, KH_TEST_APP_PW), KH_OK);
	run_load(p, KH_POOL_BALANCE, GHSH_ABC, 8, 10, KH_OK);
	assert_int_equal(kh_pool_login(p, dual, 0), KH_ERR_BAD_FIELD);
	struct kh_pool_cred bad = {"a;b", "x", 1};
	assert_int_equal(kh_pool_login(p, &bad, 1), KH_ERR_BAD_FIELD);
	assert_true(kh_pool_logged_in(p)); /* a refused login keeps the old one */

	/* C_SetPIN: CHPW through the pool, then new connections use the new
	 * password (here all of them, after a restart) */
	char req[256], *oldhex = kh_test_hexs(KH_TEST_APP_PW), *newhex = kh_test_hexs("app-password-2");
	snprintf(req, sizeof(req), "[AOCHPW;IDappuser;PW%s;NP%s;]", oldhex, newhex);
	call_ok(p, KH_POOL_PRIMARY, req);
	free(oldhex);
	free(newhex);
	assert_int_equal(kh_pool_set_password(p, "nobody", "x", 1), KH_ERR_NOT_FOUND);
	assert_int_equal(kh_pool_set_password(p, "appuser", "app-password-2", 14), KH_OK);
	run_load(p, KH_POOL_BALANCE, GHSH_ABC, 8, 10, KH_OK);
	hsm_stop(&h, SIGTERM);
	hsm_start(&h);
	run_load(p, KH_POOL_BALANCE, GHSH_ABC, 8, 10, KH_OK);
	assert_int_equal(login_app(p, KH_TEST_APP_PW), KH_ERR_AUTH_FAILED);
	kh_pool_logout(p);
	assert_int_equal(kh_pool_set_password(p, "appuser", "x", 1), KH_ERR_NOT_LOGGED_IN);
	kh_pool_free(p);
	hsm_stop(&h, SIGTERM);
}

/* ---- tests: two real HSMs ---- */

static void test_balance_and_concurrency(void **state)
{
	struct kh_test_daemon a, b;
	struct kh_pool_cfg c;
	struct kh_pool_stats st;
	struct kh_pool_addr_stats sa, sb;

	hsm_init(&a, G.golden, NULL);
	hsm_init(&b, G.golden, NULL);
	hsm_start(&a);
	hsm_start(&b);
	cfg_init(&c, true);
	cfg_addr(&c, "127.0.0.1", a.port);
	cfg_addr(&c, "127.0.0.1", b.port);
	struct kh_pool *p = pool_new(&c);
	assert_int_equal(login_app(p, KH_TEST_APP_PW), KH_OK);
	unsigned long ra = hsm_requests(&a, true), rb = hsm_requests(&b, true);

	/* one thread: nothing in flight, so round robin */
	for (int i = 0; i < 100; i++)
		ghsh_ok(p);
	unsigned long ra2 = hsm_requests(&a, true), rb2 = hsm_requests(&b, true);
	/* each got about half, plus its STAT and the login's LOGN */
	assert_true(ra2 - ra >= 45);
	assert_true(rb2 - rb >= 45);
	assert_true(kh_pool_addr_stats(p, 0, &sa));
	assert_true(kh_pool_addr_stats(p, 1, &sb));
	assert_false(kh_pool_addr_stats(p, 2, &sb));
	assert_true(kh_pool_addr_stats(p, 1, &sb));
	assert_true(sa.calls >= 50 && sb.calls >= 50);

	/* 16 threads x 200 calls */
	double t0 = now_s();
	run_load(p, KH_POOL_BALANCE, GHSH_ABC, 16, 200, KH_OK);
	double dt = now_s() - t0;
	kh_pool_stats(p, &st);
	assert_int_equal(st.failures, 0);
	assert_int_equal(st.retries, 0);
	assert_true(st.calls >= 3300);
	assert_true(st.open <= 32);
	assert_true(kh_pool_addr_stats(p, 0, &sa));
	assert_true(kh_pool_addr_stats(p, 1, &sb));
	/* both take a real share; not half each: balancing is by calls in
	 * flight, so an HSM the scheduler starves (a loaded CI machine) rightly
	 * takes fewer, and an exact split would make this test flaky */
	assert_true(sa.calls >= 320 && sb.calls >= 320);
	assert_int_equal(sa.in_flight + sb.in_flight, 0);
	print_message("3200 balanced calls in %.2f s over %zu connections\n", dt, st.open);

	/* load_balance off: the first address that works takes everything */
	kh_pool_free(p);
	c.balance = false;
	p = pool_new(&c);
	for (int i = 0; i < 20; i++)
		call_ok(p, KH_POOL_BALANCE, "[AOECHO;]");
	assert_true(kh_pool_addr_stats(p, 1, &sb));
	assert_int_equal(sb.calls, 0);
	kh_pool_free(p);
	hsm_stop(&a, SIGTERM);
	hsm_stop(&b, SIGTERM);
}

static void test_failover(void **state)
{
	struct kh_test_daemon a, b;
	struct kh_pool_cfg c;
	struct kh_pool_stats st;
	struct kh_pool_addr_stats sa, sb;

	hsm_init(&a, G.golden, NULL);
	hsm_init(&b, G.golden, NULL);
	hsm_start(&a);
	hsm_start(&b);
	cfg_init(&c, true);
	cfg_addr(&c, "127.0.0.1", a.port);
	cfg_addr(&c, "127.0.0.1", b.port);
	struct kh_pool *p = pool_new(&c);
	assert_int_equal(login_app(p, KH_TEST_APP_PW), KH_OK);
	run_load(p, KH_POOL_BALANCE, GHSH_ABC, 4, 20, KH_OK);
	assert_int_equal(kh_pool_addresses_up(p), 2);

	/* b crashes with connections idle in the pool: no caller sees it */
	hsm_stop(&b, SIGKILL);
	run_load(p, KH_POOL_BALANCE, GHSH_ABC, 4, 50, KH_OK);
	assert_true(kh_pool_addr_stats(p, 1, &sb));
	assert_true(sb.failures >= 1);
	assert_int_equal(kh_pool_addresses_up(p), 1);

	/* b comes back: after the back-off it gets calls again, logged in */
	hsm_start(&b);
	usleep(2100 * 1000); /* first back-off 1 s, doubled at most once here */
	assert_true(kh_pool_addr_stats(p, 1, &sb));
	unsigned long before = sb.calls;
	for (int i = 0; i < 40; i++)
		ghsh_ok(p);
	assert_true(kh_pool_addr_stats(p, 1, &sb));
	assert_false(sb.down);
	assert_true(sb.calls >= before + 10);

	/* a stopped while calls are in flight */
	pthread_t th[8];
	struct load l[8];
	for (int i = 0; i < 8; i++) {
		l[i] = (struct load){
		    .p = p, .flags = KH_POOL_BALANCE, .text = GHSH_ABC, .n = 150, .expect = KH_OK};
		assert_int_equal(pthread_create(&th[i], NULL, load_main, &l[i]), 0);
	}
	usleep(50 * 1000);
	hsm_stop(&a, SIGKILL);
	for (int i = 0; i < 8; i++)
		pthread_join(th[i], NULL);
	for (int i = 0; i < 8; i++)
		if (l[i].bad)
			fail_msg("thread %d: %d calls failed: %s: %s", i, l[i].bad,
			         kh_errname(l[i].last), l[i].err);
	assert_true(kh_pool_addr_stats(p, 0, &sa));
	assert_true(sa.failures >= 1);
	kh_pool_stats(p, &st);
	assert_true(st.failures >= 2);
	print_message("failover: %lu retries, %lu transport failures\n", st.retries, st.failures);

	/* both down: a clear error naming the step */
	hsm_stop(&b, SIGTERM);
	char err[512];
	assert_int_equal(call(p, KH_POOL_BALANCE, GHSH_ABC, NULL, 0, err, sizeof(err)),
	                 KH_ERR_CONNECT);
	assert_non_null(strstr(err, "TCP connect: Connection refused"));
	assert_non_null(strstr(err, "no address of the test group answered: "));
	assert_int_equal(kh_pool_addresses_up(p), 0);
	kh_pool_free(p);
}

/* ---- tests: fake servers ---- */

static void test_primary_not_resent(void **state)
{
	struct fake fa, fb;
	struct kh_pool_cfg c;
	char err[512];

	fake_start(&fa, 0);
	fake_start(&fb, 0);
	cfg_init(&c, false);
	cfg_addr(&c, "127.0.0.1", fa.port);
	cfg_addr(&c, "127.0.0.1", fb.port);
	c.balance = false; /* so that a goes first, every time */
	struct kh_pool *p = pool_new(&c);

	/* a reads the request and closes: PRIMARY returns the failure, b
	 * never sees the request */
	fake_add(&fa, "GPGS", NULL);
	int r = call(p, KH_POOL_PRIMARY, "[AOGPGS;CT6;]", NULL, 0, err, sizeof(err));
	assert_int_equal(r, KH_ERR_CLOSED);
	assert_non_null(strstr(err, "not sent again"));
	assert_int_equal(count_of(fa.log, "GPGS"), 1);
	assert_int_equal(count_of(fb.log, "GPGS"), 0);

	/* BALANCE: the same failure is sent again, to b */
	kh_pool_free(p);
	p = pool_new(&c);
	fake_add(&fa, "RAND", NULL);
	call_ok(p, KH_POOL_BALANCE, "[AORAND;NB8;]");
	assert_int_equal(count_of(fa.log, "RAND"), 1);
	assert_int_equal(count_of(fb.log, "RAND"), 1);
	struct kh_pool_stats st;
	kh_pool_stats(p, &st);
	assert_int_equal(st.retries, 1);
	kh_pool_free(p);

	/* a refuses the connection: PRIMARY may go on to b, nothing was sent */
	fake_stop(&fa);
	p = pool_new(&c);
	call_ok(p, KH_POOL_PRIMARY, "[AOGPGS;CT6;]");
	assert_int_equal(count_of(fb.log, "GPGS"), 1);
	/* a is now in back-off, so PRIMARY goes straight to b */
	call_ok(p, KH_POOL_PRIMARY, "[AOGPGS;CT6;]");
	kh_pool_stats(p, &st);
	assert_int_equal(st.failures, 1);
	kh_pool_free(p);
	fake_stop(&fb);
}

static void test_not_logged_in_replay(void **state)
{
	struct fake fk;
	struct kh_pool_cfg c;
	char err[512];

	fake_start(&fk, 0);
	cfg_init(&c, false);
	cfg_addr(&c, "127.0.0.1", fk.port);
	struct kh_pool *p = pool_new(&c);

	/* the HSM forgot the login (its session state restarted): log in
	 * again on the same connection, send once more */
	assert_int_equal(login_app(p, "pw"), KH_OK);
	fake_add(&fk, "GHSH", "[AOERRO;CMGHSH;EC8;ETlogin required;]");
	call_ok(p, KH_POOL_BALANCE, GHSH_ABC);
	assert_string_equal(fk.log, "0:LOGN\n0:GHSH\n0:LOGN\n0:GHSH\n");

	/* twice in a row: the HSM's answer, after one retry */
	fake_add(&fk, "GHSH", "[AOERRO;CMGHSH;EC8;ETlogin required;]");
	fake_add(&fk, "GHSH", "[AOERRO;CMGHSH;EC8;ETlogin required;]");
	assert_int_equal(call(p, KH_POOL_BALANCE, GHSH_ABC, NULL, 0, err, sizeof(err)),
	                 KH_ERR_NOT_LOGGED_IN);
	assert_non_null(strstr(err, "login required"));

	/* logging in again while logged in: LOGO first on the connection */
	fk.loglen = 0;
	fk.log[0] = '\0';
	assert_int_equal(login_app(p, "pw"), KH_OK);
	assert_string_equal(fk.log, "0:LOGO\n0:LOGN\n");

	/* the connection dies; the new one's LOGN is refused (the password
	 * changed elsewhere): that error, not a transport one */
	fake_add(&fk, "GHSH", NULL);
	fake_add(&fk, "LOGN", "[AOERRO;CMLOGN;EC12;ETinvalid identity or password;]");
	assert_int_equal(call(p, KH_POOL_BALANCE, GHSH_ABC, NULL, 0, err, sizeof(err)),
	                 KH_ERR_AUTH_FAILED);
	assert_non_null(strstr(err, "login as appuser: invalid identity or password"));
	assert_true(kh_pool_logged_in(p));

	/* not logged in: NOT_LOGGED_IN is only passed on */
	kh_pool_logout(p);
	fk.loglen = 0;
	fk.log[0] = '\0';
	fake_add(&fk, "GHSH", "[AOERRO;CMGHSH;EC8;ETlogin required;]");
	assert_int_equal(call(p, KH_POOL_BALANCE, GHSH_ABC, NULL, 0, err, sizeof(err)),
	                 KH_ERR_NOT_LOGGED_IN);
	assert_int_equal(count_of(fk.log, "LOGN"), 0);

	/* an HSM error that is no error code we know is still the HSM's */
	fake_add(&fk, "GHSH", "[AOERRO;CMGHSH;EC999;ETfuture;]");
	assert_int_equal(call(p, KH_POOL_BALANCE, GHSH_ABC, NULL, 0, err, sizeof(err)),
	                 KH_ERR_PROTOCOL);
	struct kh_pool_stats st;
	kh_pool_stats(p, &st);
	assert_int_equal(st.open, 1);
	kh_pool_free(p);
	fake_stop(&fk);
}

static void test_max_connections_wait(void **state)
{
	struct fake fk;
	struct kh_pool_cfg c;
	struct kh_pool_stats st;

	fake_start(&fk, 0);
	fk.delay_ms = 150;
	cfg_init(&c, false);
	cfg_addr(&c, "127.0.0.1", fk.port);
	c.max_connections = 2;
	struct kh_pool *p = pool_new(&c);
	double t0 = now_s();
	run_load(p, KH_POOL_BALANCE, "[AOECHO;]", 6, 1, KH_OK);
	double dt = now_s() - t0;
	kh_pool_stats(p, &st);
	assert_int_equal(st.connects, 2);
	assert_int_equal(st.open, 2);
	assert_int_equal(fk.max_live, 2);
	assert_true(dt >= 0.42); /* three rounds of two */
	kh_pool_free(p);
	fake_stop(&fk);
}

/* ---- signals ---- */

static volatile sig_atomic_t usr1_seen;

static void on_usr1(int sig)
{
	(void)sig;
	usr1_seen++;
}

/* An application's signals (timers, SIGCHLD with a handler) interrupt the
 * pool's blocking reads and writes: that must be neither a failure nor a
 * timeout. The handler is installed without SA_RESTART. */
static void test_signals(void **state)
{
	struct kh_test_daemon h;
	struct kh_pool_cfg c;
	struct sigaction sa, old;
	pthread_t th[4];
	struct load l[4];

	hsm_init(&h, G.golden, NULL);
	hsm_start(&h);
	cfg_init(&c, true);
	cfg_addr(&c, "127.0.0.1", h.port);
	struct kh_pool *p = pool_new(&c);
	assert_int_equal(login_app(p, KH_TEST_APP_PW), KH_OK);

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = 0;
	assert_int_equal(sigaction(SIGUSR1, &sa, &old), 0);
	usr1_seen = 0;
	for (int i = 0; i < 4; i++) {
		l[i] = (struct load){
		    .p = p, .flags = KH_POOL_BALANCE, .text = GHSH_ABC, .n = 300, .expect = KH_OK};
		assert_int_equal(pthread_create(&th[i], NULL, load_main, &l[i]), 0);
	}
	/* until every thread is done (ESRCH once it has exited is fine) */
	for (;;) {
		int done = 0;
		for (int i = 0; i < 4; i++)
			if (atomic_load(&l[i].finished))
				done++;
			else
				pthread_kill(th[i], SIGUSR1);
		if (done == 4)
			break;
		usleep(300);
	}
	for (int i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	assert_int_equal(sigaction(SIGUSR1, &old, NULL), 0);
	for (int i = 0; i < 4; i++)
		if (l[i].bad)
			fail_msg("thread %d: %d calls failed under signals: %s: %s", i, l[i].bad,
			         kh_errname(l[i].last), l[i].err);
	assert_true(usr1_seen > 100);
	struct kh_pool_stats st;
	kh_pool_stats(p, &st);
	assert_int_equal(st.failures, 0);
	kh_pool_free(p);
	hsm_stop(&h, SIGTERM);
}

/* ---- fork ---- */

static void test_fork_abandon(void **state)
{
	struct kh_test_daemon h;
	struct kh_pool_cfg c;
	struct kh_pool_stats st, st2;
	int status = 0;

	hsm_init(&h, G.golden, NULL);
	hsm_start(&h);
	cfg_init(&c, true);
	cfg_addr(&c, "127.0.0.1", h.port);
	c.max_connections = 1; /* one connection, so the parent's checks use it */
	struct kh_pool *p = pool_new(&c);
	assert_int_equal(login_app(p, KH_TEST_APP_PW), KH_OK);
	run_load(p, KH_POOL_BALANCE, GHSH_ABC, 3, 5, KH_OK);
	kh_pool_stats(p, &st);
	assert_int_equal(st.open, 1);

	for (int mode = 0; mode < 2; mode++) {
		fflush(NULL);
		pid_t pid = fork();
		assert_true(pid >= 0);
		if (pid == 0) {
			/* the child: drop the parent's pool without a byte on its
			 * connections (mode 1: kh_pool_free sees the fork
			 * itself), then work with a pool of its own */
			struct kh_buf *req = kh_buf_new(64), *resp = kh_buf_new(KH_FRAME_MAX);
			struct kh_frame *f = malloc(sizeof(*f));
			char err[512];
			if (mode == 0)
				kh_pool_abandon(p);
			else
				kh_pool_free(p);
			struct kh_pool *q = kh_pool_new(&c, err, sizeof(err));
			if (q == NULL || login_app(q, KH_TEST_APP_PW) != KH_OK ||
			    kh_buf_put_str(req, GHSH_ABC) != KH_OK)
				_exit(2);
			for (int i = 0; i < 5; i++)
				if (kh_pool_call(q, KH_POOL_BALANCE, req, resp, f, err,
				                  sizeof(err)) != KH_OK)
					_exit(3);
			kh_pool_free(q);
			_exit(0);
		}
		assert_int_equal(waitpid(pid, &status, 0), pid);
		assert_true(WIFEXITED(status));
		assert_int_equal(WEXITSTATUS(status), 0);
		/* the parent's connections are as they were: no reconnect */
		run_load(p, KH_POOL_BALANCE, GHSH_ABC, 3, 5, KH_OK);
		kh_pool_stats(p, &st2);
		assert_int_equal(st2.connects, st.connects);
		assert_int_equal(st2.failures, 0);
	}

	/* a pool used in the wrong process refuses rather than share a stream */
	fflush(NULL);
	pid_t pid = fork();
	if (pid == 0) {
		char err[512];
		struct kh_buf *req = kh_buf_new(64), *resp = kh_buf_new(KH_FRAME_MAX);
		struct kh_frame *f = malloc(sizeof(*f));
		if (kh_buf_put_str(req, GHSH_ABC) != KH_OK)
			_exit(2);
		int r = kh_pool_call(p, KH_POOL_BALANCE, req, resp, f, err, sizeof(err));
		_exit(r == KH_ERR_STATE && strstr(err, "fork") ? 0 : 1);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	run_load(p, KH_POOL_BALANCE, GHSH_ABC, 3, 5, KH_OK);
	kh_pool_free(p);
	hsm_stop(&h, SIGTERM);
}

/* ---- SIGPIPE ---- */

struct rst_server {
	SSL_CTX *ctx;
	int lfd;
	unsigned port;
	int served;
	pthread_t th;
};

/* Accept, finish the handshake, read a request, then reset the connection
 * (SO_LINGER 0): whatever the client writes after that would raise SIGPIPE
 * with a plain write(2). */
static void *rst_main(void *arg)
{
	struct rst_server *s = arg;
	for (;;) {
		int fd = accept(s->lfd, NULL, NULL);
		if (fd < 0)
			break;
		SSL *ssl = SSL_new(s->ctx);
		char buf[256];
		SSL_set_fd(ssl, fd);
		if (SSL_accept(ssl) == 1)
			(void)SSL_read(ssl, buf, sizeof(buf));
		struct linger lg = {1, 0};
		setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		close(fd);
		SSL_free(ssl);
		ERR_clear_error();
		s->served++;
	}
	return NULL;
}

static void test_no_sigpipe(void **state)
{
	struct rst_server s = {0};
	struct kh_pki_keyspec spec = {KH_PKI_EC, 256};
	struct sockaddr_in sin;
	socklen_t l = sizeof(sin);
	EVP_PKEY *key = NULL;
	X509 *x = NULL;
	const char *why = NULL;
	struct kh_pool_cfg c;
	char err[512];

	assert_true(signal(SIGPIPE, SIG_DFL) != SIG_ERR);
	assert_int_equal(kh_pki_keygen(&spec, &key), KH_OK);
	assert_int_equal(kh_pki_server_cert(G.other_ca_x, G.other_ca_key, key, "reset",
	                                    "IP:127.0.0.1", 30, time(NULL), &x, &why),
	                 KH_OK);
	s.ctx = SSL_CTX_new(TLS_server_method());
	assert_non_null(s.ctx);
	assert_int_equal(SSL_CTX_use_certificate(s.ctx, x), 1);
	assert_int_equal(SSL_CTX_use_PrivateKey(s.ctx, key), 1);
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	s.lfd = socket(AF_INET, SOCK_STREAM, 0);
	assert_int_equal(bind(s.lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(listen(s.lfd, 8), 0);
	assert_int_equal(getsockname(s.lfd, (struct sockaddr *)&sin, &l), 0);
	s.port = ntohs(sin.sin_port);
	assert_int_equal(pthread_create(&s.th, NULL, rst_main, &s), 0);

	cfg_init(&c, true);
	cfg_addr(&c, "127.0.0.1", s.port);
	c.ca_file = G.other_ca;
	c.anonymous = true;
	struct kh_pool *p = pool_new(&c);
	for (int i = 0; i < 5; i++) {
		int r = call(p, KH_POOL_BALANCE, "[AOECHO;]", NULL, 0, err, sizeof(err));
		assert_true(r == KH_ERR_CLOSED || r == KH_ERR_IO || r == KH_ERR_TLS_HANDSHAKE);
	}
	/* still alive: no SIGPIPE from a write after the reset */
	kh_pool_free(p);
	shutdown(s.lfd, SHUT_RDWR);
	close(s.lfd);
	pthread_join(s.th, NULL);
	assert_true(s.served >= 5);
	SSL_CTX_free(s.ctx);
	X509_free(x);
	EVP_PKEY_free(key);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_config_errors),
	    cmocka_unit_test(test_no_sigpipe),
	    cmocka_unit_test(test_primary_not_resent),
	    cmocka_unit_test(test_not_logged_in_replay),
	    cmocka_unit_test(test_max_connections_wait),
	    cmocka_unit_test(test_clear_tcp),
	    cmocka_unit_test(test_mutual_tls),
	    cmocka_unit_test(test_tls_refusals),
	    cmocka_unit_test(test_login_replay_and_logout),
	    cmocka_unit_test(test_balance_and_concurrency),
	    cmocka_unit_test(test_failover),
	    cmocka_unit_test(test_signals),
	    cmocka_unit_test(test_fork_abandon),
	};
	/* no signal(SIGPIPE, SIG_IGN) here, on purpose */
	kh_mem_init(1u << 20);
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}

/* Test helpers shared by the unit tests. */
#include "kh_testutil.h"
#include "hsm/hsm_core.h"
#include "hsm/db.h"
#include "hsm/dispatch.h"
#include "hsm/keystore.h"
#include "hsm/majorkey.h"
#include "hsm/pki.h"
#include "common/kh_buf.h"
#include "common/kh_log.h"
#include "common/kh_mem.h"
#include "hsm/server.h"

#include <arpa/inet.h>
#include <openssl/pem.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/x509.h>

void kh_test_hsm_open(struct kh_hsm *hsm, char dir[static 256])
{
	snprintf(dir, 256, "/tmp/kh-unit-XXXXXX");
	assert_non_null(mkdtemp(dir));
	kh_log_init("unit", KH_LOG_WARN, NULL);
	assert_int_equal(kh_hsm_open(hsm, dir, false), KH_OK);
}

void kh_test_hsm_close(struct kh_hsm *hsm, const char *dir)
{
	char cmd[512];
	kh_hsm_close(hsm);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	assert_int_equal(system(cmd), 0);
}

void kh_test_session(struct kh_session *s, enum kh_port port)
{
	memset(s, 0, sizeof(*s));
	s->port = port;
	s->source = KH_SRC_ETHERNET;
	snprintf(s->peer, sizeof(s->peer), "unit");
}

int kh_test_call(struct kh_hsm *hsm, struct kh_session *s, const char *req, char *out, size_t outsz)
{
	struct kh_frame f;
	struct kh_buf *b = kh_buf_new(KH_FRAME_MAX);
	int r = kh_frame_parse((const uint8_t *)req, strlen(req), KH_FIELDS_MAX, &f);
	assert_int_equal(r, KH_OK);
	r = kh_dispatch(hsm, s, &f, b);
	size_t n = kh_buf_len(b);
	if (n >= outsz)
		n = outsz - 1;
	memcpy(out, kh_buf_ptr(b), n);
	out[n] = '\0';
	kh_buf_free(b);
	return r;
}

void kh_test_hexstr(const char *s, char *out)
{
	kh_hex_encode((const uint8_t *)s, strlen(s), out);
}

int kh_test_logn(struct kh_hsm *hsm, struct kh_session *s, const char *id, const char *pw,
                 const char *np, char *out, size_t outsz)
{
	char req[1200], hp[520], hn[520];
	kh_test_hexstr(pw, hp);
	if (np) {
		kh_test_hexstr(np, hn);
		snprintf(req, sizeof(req), "[AOLOGN;ID%s;PW%s;NP%s;]", id, hp, hn);
	} else {
		snprintf(req, sizeof(req), "[AOLOGN;ID%s;PW%s;]", id, hp);
	}
	return kh_test_call(hsm, s, req, out, outsz);
}

void kh_test_admin_login(struct kh_hsm *hsm, struct kh_session *s)
{
	char out[4096];
	kh_test_session(s, KH_PORT_ADMIN);
	assert_int_equal(
	    kh_test_logn(hsm, s, "Admin1", "safest", KH_TEST_ADMIN1_PW, out, sizeof(out)), KH_OK);
	assert_int_equal(
	    kh_test_logn(hsm, s, "Admin2", "safest", KH_TEST_ADMIN2_PW, out, sizeof(out)), KH_OK);
	assert_true(s->active);
}

int kh_test_fx_setup(void **state)
{
	struct kh_test_fx *x = calloc(1, sizeof(*x));
	assert_non_null(x);
	kh_test_hsm_open(&x->hsm, x->dir);
	*state = x;
	return 0;
}

int kh_test_fx_setup_admin(void **state)
{
	int r = kh_test_fx_setup(state);
	struct kh_test_fx *x = *state;
	kh_test_admin_login(&x->hsm, &x->admin);
	return r;
}

int kh_test_fx_teardown(void **state)
{
	struct kh_test_fx *x = *state;
	kh_test_hsm_close(&x->hsm, x->dir);
	free(x);
	return 0;
}

void kh_test_admin_session(struct kh_hsm *hsm, struct kh_session *s)
{
	kh_test_session(s, KH_PORT_ADMIN);
	s->nident = 2;
	snprintf(s->ident[0], KH_NAME_MAX, "Admin1");
	snprintf(s->ident[1], KH_NAME_MAX, "Admin2");
	s->role.perms = ~0ULL;
	s->role.logins_required = 2;
	s->role.ports = KH_PORT_ADMIN;
	snprintf(s->role.name, sizeof(s->role.name), "Administrator");
	s->active = true;
	s->role_gen = atomic_load(&hsm->role_gen);
}

const char *kh_test_field(const char *resp, const char *tag)
{
	static char out[1 << 20];
	char pat[4] = {';', tag[0], tag[1], '\0'};
	const char *p = strstr(resp, pat);
	out[0] = '\0';
	if (p == NULL)
		return out;
	p += 3;
	size_t n = strcspn(p, ";");
	assert_true(n < sizeof(out));
	memcpy(out, p, n);
	out[n] = '\0';
	return out;
}

void kh_test_assert_key(struct kh_hsm *hsm, uint32_t slot, const uint8_t *m, size_t n)
{
	struct kh_key_row row;
	uint8_t *out = NULL;
	size_t olen = 0;
	assert_int_equal(kh_keystore_get(hsm, slot, &row), KH_OK);
	assert_int_equal(kh_keystore_unwrap(hsm, &row, &out, &olen), KH_OK);
	assert_int_equal(olen, n);
	assert_memory_equal(out, m, n);
	kh_secure_free(out, olen);
	kh_keystore_row_free(&row);
}

int kh_test_db_exec(struct kh_hsm *hsm, const char *sql)
{
	sqlite3_stmt *st;
	int rc = sqlite3_prepare_v2(kh_db_sqlite(hsm->db), sql, -1, &st, NULL);
	if (rc != SQLITE_OK)
		return rc;
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

const uint8_t kh_test_pmk[32] = {1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15, 16,
                                 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};
const uint8_t kh_test_ftk[32] = {0xF0, 0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7,
                                 0xF8, 0xF9, 0xFA, 0xFB, 0xFC, 0xFD, 0xFE, 0xFF};

/* Loads key (32 bytes) as the major key id of the fixture x: 0 or -1. */
static int fx_load_mk(struct kh_test_fx *x, enum kh_mk_id id, const uint8_t key[32])
{
	return kh_mk_load(&x->hsm, id, key, 32, "unit", "mk.load", "test", NULL) == KH_OK ? 0 : -1;
}

int kh_test_fx_setup_pmk(void **state)
{
	int r = kh_test_fx_setup_admin(state);
	return r != 0 ? r : fx_load_mk(*state, KH_MK_PMK, kh_test_pmk);
}

int kh_test_fx_setup_keys(void **state)
{
	int r = kh_test_fx_setup_pmk(state);
	return r != 0 ? r : fx_load_mk(*state, KH_MK_FTK, kh_test_ftk);
}

int kh_test_callf(struct kh_test_fx *x, struct kh_session *s, const char *fmt, ...)
{
	char *req = NULL;
	va_list ap;
	va_start(ap, fmt);
	int n = vasprintf(&req, fmt, ap);
	va_end(ap);
	assert_true(n > 0);
	int r = KH_CALL(x, s, req);
	free(req);
	return r;
}

char *kh_test_fx_field(struct kh_test_fx *x, const char *tag)
{
	char *v = strdup(kh_test_field(x->out, tag));
	assert_non_null(v);
	return v;
}

void kh_test_app_login(struct kh_test_fx *x, struct kh_session *p, const char *cmds)
{
	char pw[64];
	kh_test_hexstr(KH_TEST_APP_PW, pw);
	assert_int_equal(kh_test_callf(x, &x->admin,
	                               "[AORLAD;RNapp;LQ1;PMkeys;KRS:100-199,A:200-299;CM%s;]",
	                               cmds),
	                 KH_OK);
	assert_int_equal(kh_test_callf(x, &x->admin, "[AOIDAD;IDappuser;RNapp;PW%s;]", pw), KH_OK);
	kh_test_session(p, KH_PORT_PROD);
	assert_int_equal(KH_LOGN(x, p, "appuser", KH_TEST_APP_PW, NULL), KH_OK);
}

char *kh_test_hex(const uint8_t *d, size_t n)
{
	char *s = malloc(2 * n + 1);
	assert_non_null(s);
	kh_hex_encode(d, n, s);
	return s;
}

size_t kh_test_unhex(const char *s, uint8_t *out, size_t max)
{
	int n = kh_hex_decode(s, strlen(s), out, max);
	assert_true(n >= 0);
	return (size_t)n;
}

uint8_t *kh_test_unhex_dup(const char *s, size_t *n)
{
	size_t max = strlen(s) / 2 + 1;
	uint8_t *b = malloc(max);
	assert_non_null(b);
	*n = kh_test_unhex(s, b, max);
	return b;
}

char *kh_test_der_hex(int len, uint8_t **der)
{
	assert_true(len > 0);
	char *s = kh_test_hex(*der, (size_t)len);
	OPENSSL_free(*der);
	*der = NULL;
	return s;
}

char *kh_test_pkcs8_hex(EVP_PKEY *pk)
{
	PKCS8_PRIV_KEY_INFO *p8 = EVP_PKEY2PKCS8(pk);
	uint8_t *der = NULL;
	assert_non_null(p8);
	int n = i2d_PKCS8_PRIV_KEY_INFO(p8, &der);
	PKCS8_PRIV_KEY_INFO_free(p8);
	assert_true(n > 0);
	char *s = kh_test_hex(der, (size_t)n);
	OPENSSL_clear_free(der, (size_t)n);
	return s;
}

char *kh_test_spki_hex(EVP_PKEY *pk)
{
	uint8_t *der = NULL;
	return kh_test_der_hex(i2d_PUBKEY(pk, &der), &der);
}

int kh_test_fill_keys(struct kh_hsm *hsm, uint32_t first, uint32_t n)
{
	uint8_t material[32] = {1}, attrs[5] = {1, 0, 0x0f, 0, 0};
	char label[32];
	if (kh_db_begin(hsm->db) != KH_OK)
		return -1;
	for (uint32_t i = first; i < first + n; i++) {
		uint8_t id[4] = {(uint8_t)(i >> 24), (uint8_t)(i >> 16), (uint8_t)(i >> 8), (uint8_t)i};
		struct kh_key_row row = {.slot = i,
		                         .major = KH_MK_PMK,
		                         .bits = 256,
		                         .attrs = attrs,
		                         .attrs_len = sizeof(attrs),
		                         .created = 1};
		snprintf(row.cls, sizeof(row.cls), "%s", i % 7 ? "secret" : "private");
		snprintf(row.ktype, sizeof(row.ktype), "%s", i % 7 ? "AES" : "EC");
		int len = snprintf(label, sizeof(label), "key-%u", i);
		row.label = (uint8_t *)label;
		row.label_len = (size_t)len;
		row.ckaid = id;
		row.ckaid_len = sizeof(id);
		if (kh_keystore_put(hsm, &row, material, sizeof(material), KH_KS_NEW_ID | KH_KS_QUIET, "unit") != KH_OK) {
			kh_db_rollback(hsm->db);
			return -1;
		}
	}
	return kh_db_commit(hsm->db) == KH_OK ? 0 : -1;
}

/* ---- real daemons ---- */

#define KH_TEST_DAEMONS 32
static pid_t live_daemons[KH_TEST_DAEMONS]; /* running: killed by kh_test_daemon_kill_all */

static void live_forget(pid_t pid)
{
	for (size_t i = 0; i < KH_TEST_DAEMONS; i++)
		if (live_daemons[i] == pid)
			live_daemons[i] = 0;
}

bool kh_test_built_bin(const char *name, const char *env, char *out, size_t outsz)
{
	const char *e = env ? getenv(env) : NULL;
	char self[PATH_MAX];
	ssize_t n;

	if (e && access(e, X_OK) == 0) {
		snprintf(out, outsz, "%s", e);
		return true;
	}
	if ((n = readlink("/proc/self/exe", self, sizeof(self) - 1)) <= 0)
		return false;
	self[n] = '\0';
	char *slash = strrchr(self, '/');
	if (slash == NULL)
		return false;
	*slash = '\0';
	/* build/<preset>/tests/test_x -> build/<preset>/<name> */
	snprintf(out, outsz, "%.*s/../%s", (int)(PATH_MAX - 64), self, name);
	return access(out, X_OK) == 0;
}

bool kh_test_hsm_bin(char *out, size_t outsz)
{
	return kh_test_built_bin("keyhold-hsm", "KEYHOLD_HSM_BIN", out, outsz);
}

void kh_test_slurp(const char *path, char *buf, size_t sz)
{
	FILE *fp = fopen(path, "r");
	size_t n = 0;
	if (fp) {
		n = fread(buf, 1, sz - 1, fp);
		fclose(fp);
	}
	buf[n] = '\0';
}

void kh_test_run(struct kh_test_run *r, const char *bin, const char *dir, const char *const *args)
{
	char outp[256], errp[256];
	const char *argv[64];
	int n = 0, st = 0;

	snprintf(outp, sizeof(outp), "%s/stdout", dir);
	snprintf(errp, sizeof(errp), "%s/stderr", dir);
	argv[n++] = bin;
	for (const char *const *a = args; *a && n < 63; a++)
		argv[n++] = *a;
	argv[n] = NULL;
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int in = open("/dev/null", O_RDONLY);
		int o = open(outp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		int e = open(errp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		if (in < 0 || o < 0 || e < 0 || chdir(dir) < 0)
			_exit(126);
		dup2(in, 0);
		dup2(o, 1);
		dup2(e, 2);
		setsid(); /* no controlling terminal: secrets only from files */
		unsetenv("KEYHOLD_GUARDIAN");
		unsetenv("KEYHOLD_CONSOLE");
		execv(bin, (char *const *)(uintptr_t)argv);
		_exit(127);
	}
	assert_int_equal(waitpid(pid, &st, 0), pid);
	r->rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
	kh_test_slurp(outp, r->out, sizeof(r->out));
	kh_test_slurp(errp, r->err, sizeof(r->err));
}

unsigned kh_test_free_port(void)
{
	struct sockaddr_in sin;
	socklen_t l = sizeof(sin);
	int s = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(s >= 0);
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(s, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(getsockname(s, (struct sockaddr *)&sin, &l), 0);
	close(s);
	return ntohs(sin.sin_port);
}

bool kh_test_port_open(const char *addr, unsigned port)
{
	struct sockaddr_in sin;
	int s = socket(AF_INET, SOCK_STREAM, 0);
	if (s < 0)
		return false;
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons((uint16_t)port);
	inet_pton(AF_INET, addr, &sin.sin_addr);
	bool ok = connect(s, (struct sockaddr *)&sin, sizeof(sin)) == 0;
	close(s);
	return ok;
}

void kh_test_daemon_init(struct kh_test_daemon *d, const char *src, const char *dir,
                         const char *listen, bool admin)
{
	char cmd[800];
	memset(d, 0, sizeof(*d));
	snprintf(d->dir, sizeof(d->dir), "%s", dir);
	snprintf(cmd, sizeof(cmd), "cp -a '%s' '%s'", src, d->dir);
	assert_int_equal(system(cmd), 0);
	snprintf(d->listen, sizeof(d->listen), "%s", listen ? listen : "127.0.0.1");
	d->port = kh_test_free_port();
	if (admin) {
		do
			d->admin_port = kh_test_free_port();
		while (d->admin_port == d->port);
	}
}

void kh_test_daemon_start(struct kh_test_daemon *d)
{
	char bin[PATH_MAX], port[16], aport[16], log[400], err[400], asan[500];
	bool have_bin = kh_test_hsm_bin(bin, sizeof(bin));
	snprintf(port, sizeof(port), "%u", d->port);
	snprintf(aport, sizeof(aport), "%u", d->admin_port);
	snprintf(log, sizeof(log), "%s/daemon.log", d->dir);
	snprintf(err, sizeof(err), "%s/stderr", d->dir);
	snprintf(asan, sizeof(asan), "log_path=%s/sanitizer", d->dir);
	fflush(NULL);
	pid_t parent = getpid();
	d->pid = fork();
	assert_true(d->pid >= 0);
	if (d->pid == 0) {
		/* a test that dies (a signal, an abort) runs no clean-up: its
		 * daemons stop with it instead of running on */
		if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid() != parent)
			_exit(1);
		int fd = open(err, O_WRONLY | O_CREAT | O_APPEND, 0600);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		setenv("ASAN_OPTIONS", asan, 1);
		setenv("UBSAN_OPTIONS", asan, 1);
		signal(SIGPIPE, SIG_IGN);
		if (have_bin) {
			const char *verbosity = getenv("KH_HSM_VERBOSE") ? "-v" : "-q";
			execl(bin, bin, "-d", d->dir, "-l", d->listen, "--excrypt-port", port,
			      "--admin-port", aport, "--console", "none", "-w", "2", "--log-file",
			      log, verbosity, (char *)NULL);
			_exit(127);
		}
		/* no binary: the same server code, in this child */
		struct kh_hsm *hsm = calloc(1, sizeof(*hsm));
		if (hsm == NULL || kh_hsm_open(hsm, d->dir, false) != KH_OK)
			_exit(1);
		struct kh_server_opts o = {.prod_addr = d->listen,
		                           .admin_addr = d->listen,
		                           .prod_port = (uint16_t)d->port,
		                           .admin_port = (uint16_t)d->admin_port,
		                           .workers = 2};
		int r = kh_server_run(hsm, &o);
		kh_hsm_close(hsm);
		_exit(r == KH_OK ? 0 : 1);
	}
	for (size_t i = 0; i < KH_TEST_DAEMONS; i++) {
		if (live_daemons[i] == 0) {
			live_daemons[i] = d->pid;
			break;
		}
	}
	for (int i = 0; i < 400; i++) {
		int st;
		if (kh_test_port_open(d->listen, d->port) &&
		    (d->admin_port == 0 || kh_test_port_open(d->listen, d->admin_port)))
			return;
		if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
			live_forget(d->pid); /* reaped: its pid may come back */
			d->pid = 0;
			fail_msg("keyhold-hsm on port %u exited at start (see %s)", d->port, err);
		}
		usleep(25000);
	}
	fail_msg("keyhold-hsm on port %u did not start", d->port);
}

void kh_test_daemon_stop(struct kh_test_daemon *d, int sig)
{
	int st = 0;
	char cmd[500];
	if (d->pid <= 0)
		return;
	kill(d->pid, sig);
	assert_int_equal(waitpid(d->pid, &st, 0), d->pid);
	live_forget(d->pid);
	d->pid = 0;
	snprintf(cmd, sizeof(cmd), "cat %s/sanitizer.* 2>/dev/null | grep -q .", d->dir);
	if (system(cmd) == 0)
		fail_msg("sanitizer report from keyhold-hsm in %s", d->dir);
}

void kh_test_daemon_kill_all(void)
{
	for (size_t i = 0; i < KH_TEST_DAEMONS; i++) {
		if (live_daemons[i] > 0) {
			kill(live_daemons[i], SIGKILL);
			waitpid(live_daemons[i], NULL, 0);
			live_daemons[i] = 0;
		}
	}
}

void kh_test_write_file(const char *path, const void *data, size_t n)
{
	FILE *fp = fopen(path, "wb");
	assert_non_null(fp);
	assert_int_equal(fwrite(data, 1, n, fp), n);
	assert_int_equal(fclose(fp), 0);
}

void kh_test_write_hex_field(struct kh_test_fx *x, const char *tag, const char *path)
{
	size_t n = 0;
	uint8_t *d = kh_test_unhex_dup(kh_test_field(x->out, tag), &n);
	assert_true(n > 0);
	kh_test_write_file(path, d, n);
	free(d);
}

void kh_test_tls_ca(struct kh_test_fx *x, bool rsa, const char *cn, const char *ca_out)
{
	char *cnh = kh_test_hexs(cn), *scn = kh_test_hexs("hsm.local");
	char *san = kh_test_hexs("IP:127.0.0.1,DNS:localhost");
	if (KH_CALLF(x, &x->admin, "[AOTCAG;KT%s;CN%s;]", rsa ? "RSA" : "EC", cnh) != KH_OK)
		fail_msg("TCAG: %s", x->out);
	kh_test_write_hex_field(x, "CE", ca_out);
	if (KH_CALLF(x, &x->admin, "[AOTSRV;CN%s;SA%s;]", scn, san) != KH_OK)
		fail_msg("TSRV: %s", x->out);
	free(cnh);
	free(scn);
	free(san);
}

EVP_PKEY *kh_test_tls_client(struct kh_test_fx *x, const char *cn, const char *san,
                             const char *cert_out)
{
	struct kh_pki_keyspec spec = {KH_PKI_EC, 256};
	EVP_PKEY *key = NULL;
	X509_REQ *csr = NULL;
	uint8_t *pem = NULL;
	size_t len = 0;
	const char *why = NULL;
	assert_int_equal(kh_pki_keygen(&spec, &key), KH_OK);
	assert_int_equal(kh_pki_csr_new(key, cn, san, &csr, &why), KH_OK);
	assert_int_equal(kh_pki_csr_pem(csr, &pem, &len), KH_OK);
	char *csrhex = kh_test_hex(pem, len);
	if (KH_CALLF(x, &x->admin, "[AOTSGN;CR%s;]", csrhex) != KH_OK)
		fail_msg("TSGN: %s", x->out);
	kh_test_write_hex_field(x, "CE", cert_out);
	free(csrhex);
	free(pem);
	X509_REQ_free(csr);
	return key;
}

void kh_test_write_key(const char *path, EVP_PKEY *key)
{
	FILE *fp = fopen(path, "w");
	assert_non_null(fp);
	assert_int_equal(PEM_write_PrivateKey(fp, key, NULL, NULL, 0, NULL, NULL), 1);
	fclose(fp);
}

char *kh_test_hexs(const char *s)
{
	return kh_test_hex((const uint8_t *)s, strlen(s));
}

/*
 * kh_client and the keyhold CLI without a daemon: a fake server thread
 * (socketpair, Unix or TCP socket) answers canned frames and records what it
 * received. The CLI tests run the built keyhold binary against it and check
 * the frames sent, the output (text and JSON) and the exit codes.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "kh_testutil.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/kh_buf.h"
#include "common/kh_client.h"
#include "common/kh_err.h"
#include "common/kh_frame.h"
#include "common/kh_mem.h"

/* ---- the fake server ---- */

#define MAX_CANNED 32

struct canned {
	const char *cmd;   /* request command to match */
	const char *resp;  /* NULL: close the connection; "": never answer */
	bool used;
};

struct fake {
	int listen_fd;     /* -1 for a single connection */
	int conn_fd;
	bool slow;         /* answer byte by byte */
	struct canned canned[MAX_CANNED];
	size_t ncanned;
	pthread_mutex_t mu;
	char log[65536];   /* every request frame, one per line */
	size_t loglen;
	int connections;
	pthread_t th;
};

static void fake_init(struct fake *f)
{
	memset(f, 0, sizeof(*f));
	f->listen_fd = -1;
	f->conn_fd = -1;
	pthread_mutex_init(&f->mu, NULL);
}

static void fake_add(struct fake *f, const char *cmd, const char *resp)
{
	assert_true(f->ncanned < MAX_CANNED);
	f->canned[f->ncanned].cmd = cmd;
	f->canned[f->ncanned].resp = resp;
	f->ncanned++;
}

static void write_all(int fd, const char *s, size_t n, bool slow)
{
	while (n > 0) {
		ssize_t w = send(fd, s, slow ? 1 : n, MSG_NOSIGNAL);
		if (w <= 0)
			return;
		s += w;
		n -= (size_t)w;
		if (slow)
			usleep(200);
	}
}

/* Serve one connection until it closes. */
static void serve_conn(struct fake *f, int fd)
{
	struct kh_buf *in = kh_buf_new(KH_FRAME_MAX);
	struct kh_frame *fr = malloc(sizeof(*fr));

	pthread_mutex_lock(&f->mu);
	f->connections++;
	pthread_mutex_unlock(&f->mu);
	for (;;) {
		size_t flen = 0;
		int r = kh_frame_find(kh_buf_ptr(in), kh_buf_len(in), KH_FRAME_MAX, &flen);
		if (r < 0) {
			const char *e = "[AOERRO;EC3;ETmalformed request;]";
			write_all(fd, e, strlen(e), false);
			break;
		}
		if (r == 0) {
			uint8_t *p;
			if (kh_buf_reserve(in, 65536, &p) != KH_OK)
				break;
			ssize_t n = recv(fd, p, 65536, 0);
			if (n <= 0)
				break;
			kh_buf_commit(in, (size_t)n);
			continue;
		}
		const char *resp = "[AOERRO;EC5;ETunknown command;]";
		char echo[64];
		bool matched = false;
		if (kh_frame_parse(kh_buf_ptr(in), flen, KH_FIELDS_MAX, fr) != KH_OK)
			resp = "[AOERRO;EC3;ETmalformed request;]";
		pthread_mutex_lock(&f->mu);
		if (f->loglen + flen + 2 < sizeof(f->log)) {
			memcpy(f->log + f->loglen, kh_buf_ptr(in), flen);
			f->loglen += flen;
			f->log[f->loglen++] = '\n';
			f->log[f->loglen] = '\0';
		}
		for (size_t i = 0; i < f->ncanned; i++) {
			if (!f->canned[i].used && strcmp(f->canned[i].cmd, fr->cmd) == 0) {
				f->canned[i].used = true;
				resp = f->canned[i].resp;
				matched = true;
				break;
			}
		}
		pthread_mutex_unlock(&f->mu);
		if (!matched && strcmp(fr->cmd, "ECHO") == 0) {
			snprintf(echo, sizeof(echo), "[AOECHO;AG;BC0.1.0;]");
			resp = echo;
		}
		kh_buf_consume(in, flen);
		if (resp == NULL)
			break;
		if (*resp)
			write_all(fd, resp, strlen(resp), f->slow);
	}
	close(fd);
	free(fr);
	kh_buf_free(in);
}

static void *fake_main(void *arg)
{
	struct fake *f = arg;
	if (f->listen_fd < 0) {
		serve_conn(f, f->conn_fd);
		return NULL;
	}
	for (;;) {
		int fd = accept(f->listen_fd, NULL, NULL);
		if (fd < 0)
			break;
		serve_conn(f, fd);
	}
	return NULL;
}

/* A socketpair: returns the client's end. */
static int fake_start_pair(struct fake *f)
{
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	f->conn_fd = sv[1];
	assert_int_equal(pthread_create(&f->th, NULL, fake_main, f), 0);
	return sv[0];
}

static void fake_start_unix(struct fake *f, const char *path)
{
	struct sockaddr_un sun;
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
	unlink(path);
	f->listen_fd = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_true(f->listen_fd >= 0);
	assert_int_equal(bind(f->listen_fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
	assert_int_equal(listen(f->listen_fd, 8), 0);
	assert_int_equal(pthread_create(&f->th, NULL, fake_main, f), 0);
}

static unsigned fake_start_tcp(struct fake *f)
{
	struct sockaddr_in sin;
	socklen_t l = sizeof(sin);
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	f->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(f->listen_fd >= 0);
	assert_int_equal(bind(f->listen_fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(listen(f->listen_fd, 8), 0);
	assert_int_equal(getsockname(f->listen_fd, (struct sockaddr *)&sin, &l), 0);
	assert_int_equal(pthread_create(&f->th, NULL, fake_main, f), 0);
	return ntohs(sin.sin_port);
}

static void fake_stop(struct fake *f)
{
	if (f->listen_fd >= 0) {
		shutdown(f->listen_fd, SHUT_RDWR);
		close(f->listen_fd);
	}
	pthread_join(f->th, NULL);
	pthread_mutex_destroy(&f->mu);
}

static int count_of(const char *hay, const char *needle)
{
	int n = 0;
	for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
		n++;
	return n;
}

/* ---- helpers for client calls ---- */

static struct kh_client *pair_client(struct fake *f, int io_ms)
{
	struct kh_client_opts o;
	kh_client_opts_init(&o);
	o.io_timeout_ms = io_ms;
	struct kh_client *c = kh_client_new(&o);
	assert_non_null(c);
	assert_int_equal(kh_client_attach_fd(c, fake_start_pair(f)), KH_OK);
	return c;
}

static void build(struct kh_buf *b, const char *cmd, const char *tag, const char *val)
{
	kh_buf_reset(b);
	assert_int_equal(kh_msg_begin(b, cmd), KH_OK);
	if (tag)
		assert_int_equal(kh_msg_put(b, tag, val), KH_OK);
	assert_int_equal(kh_msg_end(b), KH_OK);
}

/* ---- kh_client tests ---- */

static void test_roundtrip(void **state)
{
	struct fake f;
	struct kh_buf *req = kh_buf_new(4096), *resp = kh_buf_new(KH_FRAME_MAX);
	struct kh_frame *fr = malloc(sizeof(*fr));
	char v[64];

	fake_init(&f);
	fake_add(&f, "ECHO", "[AOECHO;AGhello;BC0.1.0;]");
	struct kh_client *c = pair_client(&f, 5000);
	build(req, "ECHO", "AG", "hello");
	assert_int_equal(kh_client_call(c, req, resp, fr), KH_OK);
	assert_string_equal(fr->cmd, "ECHO");
	assert_int_equal(kh_frame_str(fr, "AG", v, sizeof(v)), KH_OK);
	assert_string_equal(v, "hello");
	assert_string_equal(kh_client_error(c), "");
	kh_client_free(c);
	fake_stop(&f);
	assert_non_null(strstr(f.log, "[AOECHO;AGhello;]\n"));
	free(fr);
	kh_buf_free(req);
	kh_buf_free(resp);
}

static void test_pipelining_and_slow_server(void **state)
{
	struct fake f;
	struct kh_buf *req = kh_buf_new(4096), *resp = kh_buf_new(KH_FRAME_MAX);
	struct kh_frame *fr = malloc(sizeof(*fr));
	char v[64];

	fake_init(&f);
	f.slow = true;
	fake_add(&f, "RAND", "[AORAND;RN0102;]");
	fake_add(&f, "HASH", "[AOHASH;SNKH-1;]");
	fake_add(&f, "TIME", "[AOTIME;TM20250101000000;]");
	struct kh_client *c = pair_client(&f, 5000);
	build(req, "RAND", "NB", "2");
	assert_int_equal(kh_client_send(c, req), KH_OK);
	build(req, "HASH", NULL, NULL);
	assert_int_equal(kh_client_send(c, req), KH_OK);
	build(req, "TIME", NULL, NULL);
	assert_int_equal(kh_client_send(c, req), KH_OK);
	assert_int_equal(kh_client_recv(c, resp, fr), KH_OK);
	assert_string_equal(fr->cmd, "RAND");
	assert_int_equal(kh_client_recv(c, resp, fr), KH_OK);
	assert_string_equal(fr->cmd, "HASH");
	assert_int_equal(kh_frame_str(fr, "SN", v, sizeof(v)), KH_OK);
	assert_string_equal(v, "KH-1");
	assert_int_equal(kh_client_recv(c, resp, fr), KH_OK);
	assert_string_equal(fr->cmd, "TIME");
	kh_client_free(c);
	fake_stop(&f);
	free(fr);
	kh_buf_free(req);
	kh_buf_free(resp);
}

static void test_erro_maps_to_kh_err(void **state)
{
	struct fake f;
	struct kh_buf *req = kh_buf_new(4096), *resp = kh_buf_new(KH_FRAME_MAX);
	struct kh_frame *fr = malloc(sizeof(*fr));
	char v[16];

	fake_init(&f);
	fake_add(&f, "LOGN", "[AOERRO;CMLOGN;EC12;ETinvalid identity or password;]");
	fake_add(&f, "RLAD", "[AOERRO;CMRLAD;EC10;ETrole lacks a required permission: role.add;]");
	fake_add(&f, "MKLC", "[AOERRO;CMMKLC;EC999;ETfuture;]");
	struct kh_client *c = pair_client(&f, 5000);
	build(req, "LOGN", "ID", "Admin1");
	assert_int_equal(kh_client_call(c, req, resp, fr), KH_ERR_AUTH_FAILED);
	assert_string_equal(kh_client_error(c), "invalid identity or password");
	assert_int_equal(kh_frame_str(fr, "CM", v, sizeof(v)), KH_OK);
	assert_string_equal(v, "LOGN");
	build(req, "RLAD", "RN", "x");
	assert_int_equal(kh_client_call(c, req, resp, fr), KH_ERR_PERMISSION_DENIED);
	assert_string_equal(kh_client_error(c), "role lacks a required permission: role.add");
	build(req, "MKLC", NULL, NULL);
	assert_int_equal(kh_client_call(c, req, resp, fr), KH_ERR_PROTOCOL);
	/* still usable after ERRO */
	build(req, "ECHO", NULL, NULL);
	assert_int_equal(kh_client_call(c, req, resp, fr), KH_OK);
	assert_string_equal(kh_client_error(c), "");
	kh_client_free(c);
	fake_stop(&f);
	free(fr);
	kh_buf_free(req);
	kh_buf_free(resp);
}

static void test_transport_failures(void **state)
{
	struct fake f;
	struct kh_buf *req = kh_buf_new(4096), *resp = kh_buf_new(KH_FRAME_MAX);
	struct kh_frame *fr = malloc(sizeof(*fr));

	/* malformed answer: protocol error, connection dropped */
	fake_init(&f);
	fake_add(&f, "ECHO", "garbage]");
	struct kh_client *c = pair_client(&f, 5000);
	build(req, "ECHO", NULL, NULL);
	assert_int_equal(kh_client_call(c, req, resp, fr), KH_ERR_PROTOCOL);
	assert_false(kh_client_connected(c));
	assert_int_equal(kh_client_call(c, req, resp, fr), KH_ERR_CLOSED);
	kh_client_free(c);
	fake_stop(&f);

	/* server closes */
	fake_init(&f);
	fake_add(&f, "STAT", NULL);
	c = pair_client(&f, 5000);
	build(req, "STAT", NULL, NULL);
	assert_int_equal(kh_client_call(c, req, resp, fr), KH_ERR_CLOSED);
	assert_non_null(strstr(kh_client_error(c), "closed"));
	kh_client_free(c);
	fake_stop(&f);

	/* no answer: timeout */
	fake_init(&f);
	fake_add(&f, "STAT", "");
	c = pair_client(&f, 200);
	assert_int_equal(kh_client_call(c, req, resp, fr), KH_ERR_TIMEOUT);
	kh_client_free(c);
	fake_stop(&f);

	free(fr);
	kh_buf_free(req);
	kh_buf_free(resp);
}

static void test_connect_refused_names_port(void **state)
{
	struct sockaddr_in sin;
	socklen_t l = sizeof(sin);
	struct kh_client_opts o;
	int s = socket(AF_INET, SOCK_STREAM, 0);

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(s, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(getsockname(s, (struct sockaddr *)&sin, &l), 0);
	close(s); /* the port is now (very likely) closed */

	kh_client_opts_init(&o);
	o.port = ntohs(sin.sin_port);
	o.port_name = "Excrypt";
	struct kh_client *c = kh_client_new(&o);
	assert_int_equal(kh_client_connect(c), KH_ERR_CONNECT);
	char want[128];
	snprintf(want, sizeof(want), "port %u (Excrypt): TCP connect: Connection refused", o.port);
	assert_string_equal(kh_client_error(c), want);
	kh_client_free(c);

	assert_string_equal(kh_client_port_name(9009), "Admin");
	assert_string_equal(kh_client_port_name(9100), "Excrypt");

	o.unix_path = "/nonexistent/console.sock";
	c = kh_client_new(&o);
	assert_int_equal(kh_client_connect(c), KH_ERR_CONNECT);
	assert_non_null(strstr(kh_client_error(c), "console.sock"));
	assert_non_null(strstr(kh_client_error(c), "connect: No such file or directory"));
	kh_client_free(c);
}

static void test_unix_connect_probes(void **state)
{
	struct fake f;
	char dir[] = "/tmp/kh_client_XXXXXX", path[128];
	struct kh_client_opts o;

	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/console.sock", dir);
	fake_init(&f);
	fake_start_unix(&f, path);
	kh_client_opts_init(&o);
	o.unix_path = path;
	struct kh_client *c = kh_client_new(&o);
	assert_int_equal(kh_client_connect(c), KH_OK);
	assert_true(kh_client_connected(c));
	assert_non_null(strstr(kh_client_peer(c), "console"));
	kh_client_free(c);
	fake_stop(&f);
	assert_string_equal(f.log, "[AOECHO;]\n");
	unlink(path);
	rmdir(dir);
}

static void test_tls_to_clear_port(void **state)
{
	struct fake f;
	struct kh_client_opts o;

	fake_init(&f);
	kh_client_opts_init(&o);
	o.port = fake_start_tcp(&f);
	o.port_name = "Excrypt";
	o.io_timeout_ms = 5000;
	struct kh_client *c = kh_client_new(&o);
	int r = kh_client_connect(c);
	assert_true(r == KH_ERR_TLS_HANDSHAKE || r == KH_ERR_CLOSED);
	assert_non_null(strstr(kh_client_error(c), "(Excrypt): TLS handshake: "));
	kh_client_free(c);

	/* and a clear client to a server that is not Excrypt at all */
	o.tls = false;
	fake_add(&f, "ECHO", "\x15\x03\x03\x00\x02\x02\x28");
	c = kh_client_new(&o);
	assert_int_equal(kh_client_connect(c), KH_ERR_PROTOCOL);
	assert_non_null(strstr(kh_client_error(c), ": probe: "));
	kh_client_free(c);
	fake_stop(&f);
}

static void test_err_wire_mapping(void **state)
{
	assert_int_equal(kh_err_from_wire(12), KH_ERR_AUTH_FAILED);
	assert_int_equal(kh_err_from_wire(14), KH_ERR_PASSWORD_CHANGE_REQUIRED);
	assert_int_equal(kh_err_from_wire(0), KH_ERR_PROTOCOL);
	assert_int_equal(kh_err_to_wire(KH_ERR_CONNECT), 35);
	assert_string_equal(kh_errname(KH_ERR_TLS_CERT_REQUIRED), "TLS_CERT_REQUIRED");
}

/* ---- the CLI binary ---- */

static char keyhold_bin[PATH_MAX];

static bool find_keyhold(void)
{
	return kh_test_built_bin("keyhold", "KEYHOLD_BIN", keyhold_bin, sizeof(keyhold_bin));
}

/* Run keyhold with args (NULL-terminated) in dir, stdin from /dev/null. */
static void run_cli(struct kh_test_run *r, const char *dir, const char *const *args)
{
	kh_test_run(r, keyhold_bin, dir, args);
}

static void write_text(const char *dir, const char *name, const char *text)
{
	char p[256];
	snprintf(p, sizeof(p), "%s/%s", dir, name);
	FILE *fp = fopen(p, "w");
	assert_non_null(fp);
	fputs(text, fp);
	fclose(fp);
}

struct clienv {
	char dir[64];
	char sock[128];
	struct fake f;
};

static int cli_setup(void **state)
{
	if (keyhold_bin[0] == '\0' && !find_keyhold())
		return 0;
	struct clienv *e = calloc(1, sizeof(*e));
	snprintf(e->dir, sizeof(e->dir), "/tmp/kh_cli_XXXXXX");
	if (mkdtemp(e->dir) == NULL)
		return -1;
	snprintf(e->sock, sizeof(e->sock), "%s/console.sock", e->dir);
	fake_init(&e->f);
	*state = e;
	return 0;
}

static int cli_teardown(void **state)
{
	struct clienv *e = *state;
	char cmd[256];
	if (e == NULL)
		return 0;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", e->dir);
	if (system(cmd) != 0)
		return -1;
	free(e);
	return 0;
}

#define NEED_CLI(e)                                                                                \
	do {                                                                                       \
		if ((e) == NULL) {                                                                 \
			print_message("keyhold binary not built: skipped\n");                      \
			skip();                                                                    \
		}                                                                                  \
	} while (0)

static void test_cli_login_json(void **state)
{
	struct clienv *e = *state;
	struct kh_test_run r;
	NEED_CLI(e);
	write_text(e->dir, "pw", "safest\n");
	fake_add(&e->f, "LOGN", "[AOLOGN;BBY;ROAdministrator;LC1;LQ2;ACN;]");
	fake_start_unix(&e->f, e->sock);
	const char *args[] = {"--json", "--console", e->sock, "login", "--user", "Admin1",
			      "--password-file", "pw", NULL};
	run_cli(&r, e->dir, args);
	fake_stop(&e->f);
	assert_int_equal(r.rc, 0);
	assert_non_null(strstr(e->f.log, "[AOLOGN;IDAdmin1;PW736166657374;]"));
	assert_non_null(strstr(r.out, "{\"command\":\"login\",\"ok\":true,"));
	assert_non_null(strstr(r.out, "\"role\":\"Administrator\""));
	assert_non_null(strstr(r.out, "\"logins\":1"));
	assert_non_null(strstr(r.out, "\"required\":2"));
	assert_non_null(strstr(r.out, "\"active\":false"));
	assert_int_equal(count_of(r.out, "\n"), 1);
}

static void test_cli_password_change_required(void **state)
{
	struct clienv *e = *state;
	struct kh_test_run r;
	NEED_CLI(e);
	write_text(e->dir, "pw", "safest");
	write_text(e->dir, "np", "correct horse 1\n");
	fake_add(&e->f, "LOGN",
		 "[AOERRO;CMLOGN;EC14;ETpassword must be changed before first use;]");
	fake_add(&e->f, "LOGN", "[AOLOGN;BBY;ROAdministrator;LC1;LQ2;ACN;MCY;]");
	fake_start_unix(&e->f, e->sock);
	const char *args[] = {"--console", e->sock, "login", "--user", "Admin2",
			      "--password-file", "pw", "--new-password-file", "np", NULL};
	run_cli(&r, e->dir, args);
	fake_stop(&e->f);
	assert_int_equal(r.rc, 0);
	/* "correct horse 1" in hex */
	assert_non_null(strstr(e->f.log,
			       "[AOLOGN;IDAdmin2;PW736166657374;NP636F727265637420686F7273652031;]"));
	assert_non_null(strstr(r.out, "Password of Admin2 changed."));
	assert_non_null(strstr(r.out, "1 of 2 logins, role not active yet"));
}

static void test_cli_exit_codes(void **state)
{
	struct clienv *e = *state;
	struct kh_test_run r;
	NEED_CLI(e);
	fake_add(&e->f, "RLLS", "[AOERRO;CMRLLS;EC8;ETlogin required;]");
	fake_start_unix(&e->f, e->sock);

	const char *refused[] = {"--json", "--console", e->sock, "role", "list", NULL};
	run_cli(&r, e->dir, refused);
	assert_int_equal(r.rc, 1);
	assert_string_equal(r.out, "{\"command\":\"role list\",\"ok\":false,\"code\":8,\"error\":"
				   "\"NOT_LOGGED_IN\",\"message\":\"login required\"}\n");

	const char *usage[] = {"--console", e->sock, "rand", "--bytes", "0", NULL};
	run_cli(&r, e->dir, usage);
	assert_int_equal(r.rc, 2);
	assert_non_null(strstr(r.err, "--bytes must be a number from 1 to 4096"));

	const char *unknown[] = {"--console", e->sock, "role", "frobnicate", NULL};
	run_cli(&r, e->dir, unknown);
	assert_int_equal(r.rc, 2);

	const char *argv_secret[] = {"--console", e->sock, "login", "--password", "x", NULL};
	run_cli(&r, e->dir, argv_secret);
	assert_int_equal(r.rc, 2); /* there is no option to give a password in argv */

	fake_stop(&e->f);
	const char *conn[] = {"--console", "/nonexistent/console.sock", "status", NULL};
	run_cli(&r, e->dir, conn);
	assert_int_equal(r.rc, 3);
	assert_non_null(strstr(r.err, "console (/nonexistent/console.sock): connect: "));

	const char *help[] = {"role", "add", "--help", NULL};
	run_cli(&r, e->dir, help);
	assert_int_equal(r.rc, 0);
	assert_non_null(strstr(r.out, "usage: keyhold role add --name NAME"));
	assert_non_null(strstr(r.out, "--permissions LIST|none"));
}

static void test_cli_script_one_connection(void **state)
{
	struct clienv *e = *state;
	struct kh_test_run r;
	char script[256];
	NEED_CLI(e);
	write_text(e->dir, "pw1", "pw-one-11\n");
	write_text(e->dir, "pw2", "pw-two-22\n");
	write_text(e->dir, "cmds",
		   "# dual control: two logins on one connection\n"
		   "login --user Admin1 --password-file pw1\n"
		   "login --user Admin2 --password-file pw2   # second\n"
		   "\n"
		   "role modify --name Anonymous --permissions 'Keys' --key-ranges none "
		   "--commands ASYS,ECHO,GPKM,GPKR,GPKS,HASH,PRMD,RAND,STAT,TIME\n"
		   "role add --name \"App One\" --permissions \"Keys, Authorized,Import PKI,"
		   "No Usage Wrap\" --key-ranges S:1000-1499,A:1500-1999 --logins-required 1 "
		   "--ports prod --sources ethernet --dual-factor never\n"
		   "tls-ports set --port excrypt --allow-anonymous\n");
	fake_add(&e->f, "LOGN", "[AOLOGN;BBY;ROAdministrator;LC1;LQ2;ACN;]");
	fake_add(&e->f, "LOGN", "[AOLOGN;BBY;ROAdministrator;LC2;LQ2;ACY;]");
	fake_add(&e->f, "RLMD", "[AORLMD;BBY;]");
	fake_add(&e->f, "RLAD", "[AORLAD;BBY;]");
	fake_add(&e->f, "TPRT", "[AOTPRT;BBY;]");
	fake_start_unix(&e->f, e->sock);
	snprintf(script, sizeof(script), "%s/cmds", e->dir);
	const char *args[] = {"--json", "--console", e->sock, "-f", script, NULL};
	run_cli(&r, e->dir, args);
	fake_stop(&e->f);
	assert_int_equal(r.rc, 0);
	assert_int_equal(e->f.connections, 1);
	assert_int_equal(count_of(e->f.log, "[AOECHO;]"), 1);
	assert_int_equal(count_of(r.out, "\"ok\":true"), 5);
	assert_non_null(strstr(r.out, "\"logins\":2,\"required\":2,\"active\":true"));
	assert_non_null(strstr(e->f.log, "[AORLMD;RNAnonymous;PMkeys;KR;CMASYS,ECHO,GPKM,GPKR,"
					 "GPKS,HASH,PRMD,RAND,STAT,TIME;]"));
	assert_non_null(strstr(e->f.log, "[AORLAD;RNApp One;PMkeys,keys.authorized,"
					 "keys.import_pki,keys.no_usage_wrap;KRS:1000-1499,"
					 "A:1500-1999;LQ1;PTprod;CSethernet;DFnever;]"));
	assert_non_null(strstr(e->f.log, "[AOTPRT;PTexcrypt;MOanonymous;]"));
}

static void test_cli_script_stops_at_failure(void **state)
{
	struct clienv *e = *state;
	struct kh_test_run r;
	char script[256];
	NEED_CLI(e);
	write_text(e->dir, "cmds", "hash\nrole list\nhash\n");
	fake_add(&e->f, "HASH", "[AOHASH;SNKH-0001;]");
	fake_add(&e->f, "RLLS", "[AOERRO;CMRLLS;EC8;ETlogin required;]");
	fake_add(&e->f, "HASH", "[AOHASH;SNKH-0001;]");
	fake_start_unix(&e->f, e->sock);
	snprintf(script, sizeof(script), "%s/cmds", e->dir);
	const char *args[] = {"--console", e->sock, "-f", script, NULL};
	run_cli(&r, e->dir, args);
	assert_int_equal(r.rc, 1);
	assert_int_equal(count_of(e->f.log, "[AOHASH;]"), 1);
	assert_non_null(strstr(r.err, "line 2: role list: NOT_LOGGED_IN: login required"));
	assert_non_null(strstr(r.out, "KH-0001"));
	const char *kg[] = {"--keep-going", "--console", e->sock, "-f", script, NULL};
	run_cli(&r, e->dir, kg);
	fake_stop(&e->f);
	assert_int_equal(r.rc, 1);
	assert_int_equal(count_of(e->f.log, "[AOHASH;]"), 3);
}

static void test_cli_majorkey_load(void **state)
{
	struct clienv *e = *state;
	struct kh_test_run r;
	NEED_CLI(e);
	write_text(e->dir, "comps",
		   "00112233445566778899aabbccddeeff\n"
		   "# second custodian\n"
		   "FFEEDDCCBBAA99887766554433221100\n");
	fake_add(&e->f, "MKLB", "[AOMKLB;BBY;]");
	fake_add(&e->f, "MKLC", "[AOMKLC;BBY;AE1A2B3C;LD1;LN2;]");
	fake_add(&e->f, "MKLC", "[AOMKLC;BBY;AE4D5E6F;LD2;LN2;KVABCDEF;]");
	fake_start_unix(&e->f, e->sock);
	const char *args[] = {"--console", e->sock, "majorkey", "load", "--ftk", "--bits", "128",
			      "--component-file", "comps", NULL};
	run_cli(&r, e->dir, args);
	fake_stop(&e->f);
	assert_int_equal(r.rc, 0);
	assert_non_null(strstr(e->f.log, "[AOMKLB;KNFTK;MOC;ALAES;KL128;NP2;]"));
	assert_non_null(strstr(e->f.log, "[AOMKLC;CM00112233445566778899AABBCCDDEEFF;]"));
	assert_non_null(strstr(e->f.log, "[AOMKLC;CMFFEEDDCCBBAA99887766554433221100;]"));
	assert_non_null(strstr(r.out, "Component 1 of 2 loaded, check value 1A2B3C"));
	assert_non_null(strstr(r.out, "Final Key Checksum:"));
	assert_non_null(strstr(r.out, "ABCDEF"));
}

static void test_cli_recombine_incomplete(void **state)
{
	struct clienv *e = *state;
	struct kh_test_run r;
	NEED_CLI(e);
	write_text(e->dir, "frag1", "fragment-bytes");
	write_text(e->dir, "pp1", "custodian one\n");
	fake_add(&e->f, "MKLB", "[AOMKLB;BBY;]");
	fake_add(&e->f, "MKLC", "[AOMKLC;BBY;FX1;LD1;LN2;]");
	fake_add(&e->f, "MKLA", "[AOMKLA;BBY;]");
	fake_start_unix(&e->f, e->sock);
	const char *args[] = {"--console", e->sock, "majorkey", "recombine", "--pmk",
			      "--fragment", "frag1", "--passphrase-file", "pp1", NULL};
	run_cli(&r, e->dir, args);
	fake_stop(&e->f);
	assert_int_equal(r.rc, 1);
	assert_non_null(strstr(e->f.log, "[AOMKLB;KNPMK;MOF;]"));
	assert_non_null(strstr(e->f.log, "[AOMKLC;FB667261676D656E742D6279746573;"
					 "PP637573746F6469616E206F6E65;]"));
	assert_non_null(strstr(e->f.log, "[AOMKLA;]"));
	assert_non_null(strstr(r.err, "PMK needs 2 fragments, 1 given; nothing loaded"));
}

static void test_cli_random_writes_fragments(void **state)
{
	struct clienv *e = *state;
	struct kh_test_run r;
	char p[256];
	struct stat st;
	NEED_CLI(e);
	write_text(e->dir, "p1", "passphrase-1\n");
	write_text(e->dir, "p2", "passphrase-2\n");
	write_text(e->dir, "p3", "passphrase-3\n");
	fake_add(&e->f, "MKGN", "[AOMKGN;BBY;KV0A0B0C;F1414141;F2424242;F3434343;]");
	fake_start_unix(&e->f, e->sock);
	const char *args[] = {"--console", e->sock, "majorkey", "random", "--bek", "-m", "2", "-n",
			      "3", "--out", ".", "--passphrase-file", "p1", "--passphrase-file", "p2",
			      "--passphrase-file", "p3", NULL};
	run_cli(&r, e->dir, args);
	assert_int_equal(r.rc, 0);
	assert_non_null(strstr(e->f.log, "[AOMKGN;KNBEK;ALAES;KL256;FM2;FN3;P17061737370687261"
					 "73652D31;P2"));
	snprintf(p, sizeof(p), "%s/BEK-fragment-2-of-3.khf", e->dir);
	assert_int_equal(stat(p, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	char buf[16];
	kh_test_slurp(p, buf, sizeof(buf));
	assert_string_equal(buf, "BBB");
	/* never overwritten: a second run refuses before asking the HSM */
	run_cli(&r, e->dir, args);
	fake_stop(&e->f);
	assert_int_equal(r.rc, 2);
	assert_int_equal(count_of(e->f.log, "MKGN"), 1);
}

static void test_cli_send_and_text_output(void **state)
{
	struct clienv *e = *state;
	struct kh_test_run r;
	NEED_CLI(e);
	fake_add(&e->f, "STAT", "[AOSTAT;BBY;MDKeyhold;VN0.1.0;SNKH1;STOK;FIN;PKY;FTN;PM1A2B3C;"
				"BKN;UP5;RQ9;ER1;CN1;KC0;]");
	fake_add(&e->f, "RLLS", "[AOERRO;CMRLLS;EC8;ETlogin required;]");
	fake_start_unix(&e->f, e->sock);
	const char *st[] = {"--console", e->sock, "status", NULL};
	run_cli(&r, e->dir, st);
	assert_int_equal(r.rc, 0);
	assert_non_null(strstr(r.out, "FTK (KCV):"));
	assert_non_null(strstr(r.out, "not loaded"));
	assert_non_null(strstr(r.out, "1A2B3C"));
	const char *send[] = {"--console", e->sock, "send", "[AORLLS;]", NULL};
	run_cli(&r, e->dir, send);
	fake_stop(&e->f);
	assert_int_equal(r.rc, 1);
	assert_non_null(strstr(r.out, "[AOERRO;CMRLLS;EC8;ETlogin required;]"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_roundtrip),
		cmocka_unit_test(test_pipelining_and_slow_server),
		cmocka_unit_test(test_erro_maps_to_kh_err),
		cmocka_unit_test(test_transport_failures),
		cmocka_unit_test(test_connect_refused_names_port),
		cmocka_unit_test(test_unix_connect_probes),
		cmocka_unit_test(test_tls_to_clear_port),
		cmocka_unit_test(test_err_wire_mapping),
		cmocka_unit_test_setup_teardown(test_cli_login_json, cli_setup, cli_teardown),
		cmocka_unit_test_setup_teardown(test_cli_password_change_required, cli_setup,
						cli_teardown),
		cmocka_unit_test_setup_teardown(test_cli_exit_codes, cli_setup, cli_teardown),
		cmocka_unit_test_setup_teardown(test_cli_script_one_connection, cli_setup,
						cli_teardown),
		cmocka_unit_test_setup_teardown(test_cli_script_stops_at_failure, cli_setup,
						cli_teardown),
		cmocka_unit_test_setup_teardown(test_cli_majorkey_load, cli_setup, cli_teardown),
		cmocka_unit_test_setup_teardown(test_cli_recombine_incomplete, cli_setup,
						cli_teardown),
		cmocka_unit_test_setup_teardown(test_cli_random_writes_fragments, cli_setup,
						cli_teardown),
		cmocka_unit_test_setup_teardown(test_cli_send_and_text_output, cli_setup,
						cli_teardown),
	};
	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}

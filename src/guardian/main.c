/*
 * keyhold-guardian: option parsing, process hardening, daemonizing with a
 * pid file, then the core (groups, replication, monitor) and the HTTP
 * listener until SIGTERM or SIGINT. It must never print or log a secret.
 */
#include "guardian/guardian.h"
#include "common/kh_daemon.h"
#include "common/kh_log.h"
#include "common/kh_mem.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PASS_MAX 256

struct opts {
	const char *datadir, *listen, *ca, *cert, *key, *srv_cert, *srv_key, *identity, *password_file;
	long http_port, ping_ms, request_ms, session_idle;
	const char *init_admin;
	bool daemon;
	const char *pidfile, *logfile;
	enum kh_loglevel level;
};

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: keyhold-guardian [options]\n"
	        "  -d, --datadir DIR         state directory (default /var/lib/keyhold-guardian)\n"
	        "  -l, --listen ADDR         address of the group endpoints and HTTPS (default 127.0.0.1)\n"
	        "      --http-port N         REST API and console (default 8080, 0 = off)\n"
	        "      --ca FILE             CA(s) of the HSMs' certificates and of clients' (PEM)\n"
	        "      --cert FILE           the guardian's certificate chain (PEM): group endpoints,\n"
	        "                            HTTPS, and its client certificate toward the HSMs\n"
	        "      --key FILE            its key (PEM; default: in --cert)\n"
	        "      --server-cert FILE    another certificate for the server side (group endpoints,\n"
	        "                            HTTPS) when --cert is for TLS clients only\n"
	        "      --server-key FILE     its key (default: in --server-cert)\n"
	        "      --identity NAME       the guardian's identity on every HSM (default guardian)\n"
	        "      --password-file FILE  that identity's password (first line); or the environment\n"
	        "                            variable KEYHOLD_GUARDIAN_PASSWORD\n"
	        "      --ping-interval MS    monitor period (default 2000)\n"
	        "      --request-timeout MS  each request to an HSM (default 60000)\n"
	        "      --session-idle S      HTTP sessions expire after S seconds unused (default 900)\n"
	        "      --init-admin NAME     create the first guardian user (Administrator) with the\n"
	        "                            password read from standard input, then exit\n"
	        "  -D, --daemon              run in the background\n"
	        "  -p, --pidfile PATH        write the pid here (locked while running)\n"
	        "      --log-file PATH       log here instead of stderr\n"
	        "  -v, --verbose             debug logging\n"
	        "  -q, --quiet               warnings only\n"
	        "  -V, --version             print the version\n"
	        "  -h, --help                this text\n");
}

static long parse_num(const char *s, long lo, long hi, const char *what)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || *end || end == s || v < lo || v > hi) {
		fprintf(stderr, "keyhold-guardian: %s must be a number from %ld to %ld\n", what, lo, hi);
		exit(2);
	}
	return v;
}

static void parse_opts(int argc, char **argv, struct opts *o)
{
	static const struct option lo[] = {
	    {"datadir", required_argument, NULL, 'd'},
	    {"listen", required_argument, NULL, 'l'},
	    {"http-port", required_argument, NULL, 1},
	    {"ca", required_argument, NULL, 2},
	    {"cert", required_argument, NULL, 3},
	    {"key", required_argument, NULL, 4},
	    {"identity", required_argument, NULL, 5},
	    {"password-file", required_argument, NULL, 6},
	    {"ping-interval", required_argument, NULL, 7},
	    {"request-timeout", required_argument, NULL, 8},
	    {"session-idle", required_argument, NULL, 9},
	    {"init-admin", required_argument, NULL, 10},
	    {"log-file", required_argument, NULL, 11},
	    {"server-cert", required_argument, NULL, 12},
	    {"server-key", required_argument, NULL, 13},
	    {"daemon", no_argument, NULL, 'D'},
	    {"pidfile", required_argument, NULL, 'p'},
	    {"verbose", no_argument, NULL, 'v'},
	    {"quiet", no_argument, NULL, 'q'},
	    {"version", no_argument, NULL, 'V'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0}};
	int ch;

	memset(o, 0, sizeof(*o));
	o->datadir = "/var/lib/keyhold-guardian";
	o->listen = "127.0.0.1";
	o->identity = "guardian";
	o->http_port = 8080;
	o->ping_ms = 2000;
	o->request_ms = 60000;
	o->session_idle = 900;
	o->level = KH_LOG_INFO;
	while ((ch = getopt_long(argc, argv, "d:l:Dp:vqVh", lo, NULL)) != -1) {
		switch (ch) {
		case 'd': o->datadir = optarg; break;
		case 'l': o->listen = optarg; break;
		case 1: o->http_port = parse_num(optarg, 0, 65535, "--http-port"); break;
		case 2: o->ca = optarg; break;
		case 3: o->cert = optarg; break;
		case 4: o->key = optarg; break;
		case 5: o->identity = optarg; break;
		case 6: o->password_file = optarg; break;
		case 7: o->ping_ms = parse_num(optarg, 100, 600000, "--ping-interval"); break;
		case 8: o->request_ms = parse_num(optarg, 100, 3600000, "--request-timeout"); break;
		case 9: o->session_idle = parse_num(optarg, 10, 86400, "--session-idle"); break;
		case 10: o->init_admin = optarg; break;
		case 11: o->logfile = optarg; break;
		case 12: o->srv_cert = optarg; break;
		case 13: o->srv_key = optarg; break;
		case 'D': o->daemon = true; break;
		case 'p': o->pidfile = optarg; break;
		case 'v': o->level = KH_LOG_DEBUG; break;
		case 'q': o->level = KH_LOG_WARN; break;
		case 'V': printf("keyhold-guardian %s\n", KH_VERSION); exit(0);
		case 'h': usage(stdout); exit(0);
		default: usage(stderr); exit(2);
		}
	}
	if (optind != argc) {
		fprintf(stderr, "keyhold-guardian: unexpected argument '%s'\n", argv[optind]);
		usage(stderr);
		exit(2);
	}
	if (o->init_admin == NULL && (o->ca == NULL || o->cert == NULL)) {
		fprintf(stderr, "keyhold-guardian: --ca and --cert are required\n");
		exit(2);
	}
}

/* One line (without its newline) from fd into a secure buffer. */
static char *read_secret_line(FILE *f, size_t *len, const char *what)
{
	char *p = kh_secure_alloc(PASS_MAX + 2);
	size_t n = 0;
	int ch;
	if (p == NULL)
		fatalx("out of secure memory");
	while ((ch = fgetc(f)) != EOF && ch != '\n') {
		if (n == PASS_MAX + 1)
			break;
		p[n++] = (char)ch;
	}
	if (n > 0 && p[n - 1] == '\r')
		n--;
	if (n == 0 || n > PASS_MAX) {
		kh_secure_free(p, PASS_MAX + 2);
		fatalx("%s: a password of 1 to %d bytes is required", what, PASS_MAX);
	}
	p[n] = '\0';
	*len = n;
	return p;
}

static char *identity_password(const struct opts *o, size_t *len)
{
	if (o->password_file) {
		struct stat sb;
		FILE *f = fopen(o->password_file, "re");
		if (f == NULL)
			fatal("password file %s", o->password_file);
		if (fstat(fileno(f), &sb) == 0 && (sb.st_mode & 077))
			log_warnx("password file %s is readable by others: chmod 600 it",
			          o->password_file);
		char *p = read_secret_line(f, len, o->password_file);
		fclose(f);
		return p;
	}
	const char *env = getenv("KEYHOLD_GUARDIAN_PASSWORD");
	if (env == NULL || *env == '\0' || strlen(env) > PASS_MAX)
		fatalx("the guardian's identity needs a password: --password-file or "
		       "KEYHOLD_GUARDIAN_PASSWORD");
	char *p = kh_secure_alloc(PASS_MAX + 2);
	if (p == NULL)
		fatalx("out of secure memory");
	*len = strlen(env);
	memcpy(p, env, *len);
	return p;
}

static int init_admin(const struct opts *o)
{
	struct kh_gstore *st;
	struct kh_gstore_why w;
	char why[KG_WHY_MAX] = "";
	size_t len = 0;
	int r;

	if ((r = kh_gstore_open(o->datadir, &st, &w)) != KH_OK) {
		fprintf(stderr, "keyhold-guardian: %s\n", w.text);
		return 1;
	}
	char *pw = read_secret_line(stdin, &len, "--init-admin");
	r = kg_users_bootstrap(st, o->init_admin, pw, len, why, sizeof(why));
	kh_secure_free(pw, PASS_MAX + 2);
	kh_gstore_close(st);
	if (r != KH_OK) {
		fprintf(stderr, "keyhold-guardian: %s: %s\n", kh_errname(r), why);
		return 1;
	}
	printf("user %s created (Administrator)\n", o->init_admin);
	return 0;
}

int main(int argc, char **argv)
{
	struct opts o;
	struct kg_core *core = NULL;
	struct kg_http *http = NULL;
	char why[KG_WHY_MAX] = "";
	sigset_t sigs;
	size_t pwlen = 0;
	int sig, r;

	parse_opts(argc, argv, &o);
	if (kh_log_init("keyhold-guardian", o.level, o.logfile) != 0) {
		fprintf(stderr, "keyhold-guardian: cannot open log file %s: %s\n", o.logfile,
		        strerror(errno));
		return 1;
	}
	umask(077);
	kh_mem_harden_process();
	if (kh_mem_init(1u << 20) != 0)
		log_warnx("secure heap unavailable; secrets use wiped normal memory");
	if (o.init_admin)
		return init_admin(&o);
	char *pw = identity_password(&o, &pwlen);
	if (o.pidfile)
		kh_daemon_pidfile_lock(o.pidfile, "keyhold-guardian");
	if (o.daemon)
		kh_daemon_detach();
	/* every thread inherits the mask: signals are taken here only */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	struct kg_core_cfg cfg = {
	    .datadir = o.datadir,
	    .listen = o.listen,
	    .ca_file = o.ca,
	    .cert_file = o.cert,
	    .key_file = o.key,
	    .server_cert_file = o.srv_cert,
	    .server_key_file = o.srv_key,
	    .identity = o.identity,
	    .password = pw,
	    .password_len = pwlen,
	    .ping_interval_ms = (int)o.ping_ms,
	    .request_timeout_ms = (int)o.request_ms,
	};
	r = kg_core_start(&cfg, &core, why, sizeof(why));
	kh_secure_free(pw, PASS_MAX + 2);
	if (r != KH_OK)
		fatalx("cannot start: %s: %s", kh_errname(r), why);
	if (o.http_port) {
		struct kg_http_cfg hc = {
		    .listen = o.listen,
		    .port = (unsigned)o.http_port,
		    .tls = true,
		    .cert_file = o.srv_cert ? o.srv_cert : o.cert,
		    .key_file = o.srv_cert ? (o.srv_key ? o.srv_key : o.srv_cert)
		                           : (o.key ? o.key : o.cert),
		    .session_idle_s = (unsigned)o.session_idle,
		};
		if ((r = kg_http_start(core, &hc, &http, why, sizeof(why))) != KH_OK) {
			kg_core_stop(core);
			fatalx("cannot start the HTTP listener: %s: %s", kh_errname(r), why);
		}
	}
	kh_daemon_ready("keyhold-guardian", KH_VERSION);
	do {
		if (sigwait(&sigs, &sig) != 0)
			break;
	} while (sig == SIGHUP);
	log_info("stopping (signal %d)", sig);
	kg_http_stop(http);
	kg_core_stop(core);
	kh_daemon_pidfile_remove();
	log_info("stopped");
	return 0;
}

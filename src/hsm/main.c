/*
 * keyhold-hsm: option parsing, process hardening, daemonizing with a pid
 * file, then the server loop. It must never print or log a secret.
 */
#include "hsm/hsm_core.h"
#include "hsm/selftest.h"
#include "hsm/server.h"
#include "common/kh_daemon.h"
#include "common/kh_log.h"
#include "common/kh_mem.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/ssl.h>

struct opts {
	const char *datadir;
	const char *listen;
	const char *prod_listen, *admin_listen; /* per-port overrides of listen */
	long prod_port, admin_port;
	const char *console;
	long workers;
	long max_connections;
	long poll_us;
	bool daemon;
	const char *pidfile;
	const char *logfile;
	enum kh_loglevel level;
	bool volatile_mk;
};


static void usage(FILE *f)
{
	fprintf(f,
		"usage: keyhold-hsm [options]\n"
		"  -d, --datadir DIR        state directory (default /var/lib/keyhold)\n"
		"  -l, --listen ADDR        listen address for both TCP ports (default 127.0.0.1)\n"
		"      --excrypt-listen ADDR  listen address of the Excrypt port (overrides -l)\n"
		"      --admin-listen ADDR  listen address of the Admin port (overrides -l)\n"
		"      --excrypt-port N     Excrypt/Standard port (default 9100, 0 = off)\n"
		"      --admin-port N       Admin port (default 9009, 0 = off)\n"
		"      --console PATH       console socket (default DATADIR/console.sock, \"none\" = off)\n"
		"  -w, --workers N          worker threads (default: number of CPUs)\n"
		"      --max-connections N  open connections at most (default 1024)\n"
		"      --poll-us N          a worker polls N microseconds for more work before\n"
		"                           it sleeps (default 0; for hosts with CPUs to spare)\n"
		"  -D, --daemon             run in the background\n"
		"  -p, --pidfile PATH       write the pid here (locked while running)\n"
		"      --log-file PATH      log here instead of stderr\n"
		"  -v, --verbose            debug logging\n"
		"  -q, --quiet              warnings only\n"
		"      --volatile-major-keys  never seal major keys to disk (reload after restart)\n"
		"  -V, --version            print the version\n"
		"  -h, --help               this text\n");
}

static long parse_num(const char *s, long lo, long hi, const char *what)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || *end || end == s || v < lo || v > hi) {
		fprintf(stderr, "keyhold-hsm: %s must be a number from %ld to %ld\n", what, lo, hi);
		exit(2);
	}
	return v;
}

static void parse_opts(int argc, char **argv, struct opts *o)
{
	static const struct option lo[] = {
		{"datadir", required_argument, NULL, 'd'},
		{"listen", required_argument, NULL, 'l'},
		{"excrypt-port", required_argument, NULL, 1},
		{"admin-port", required_argument, NULL, 2},
		{"console", required_argument, NULL, 3},
		{"workers", required_argument, NULL, 'w'},
		{"daemon", no_argument, NULL, 'D'},
		{"pidfile", required_argument, NULL, 'p'},
		{"log-file", required_argument, NULL, 4},
		{"verbose", no_argument, NULL, 'v'},
		{"quiet", no_argument, NULL, 'q'},
		{"volatile-major-keys", no_argument, NULL, 5},
		{"max-connections", required_argument, NULL, 6},
		{"excrypt-listen", required_argument, NULL, 7},
		{"admin-listen", required_argument, NULL, 8},
		{"poll-us", required_argument, NULL, 10},
#ifdef KH_FAULT_INJECTION
		{"fault-selftest", required_argument, NULL, 9},
#endif
		{"version", no_argument, NULL, 'V'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	int ch;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);

	*o = (struct opts){.datadir = "/var/lib/keyhold", .listen = "127.0.0.1",
			   .prod_port = 9100, .admin_port = 9009,
			   .workers = ncpu > 0 ? ncpu : 2, .max_connections = 1024,
			   .level = KH_LOG_INFO};
	while ((ch = getopt_long(argc, argv, "d:l:w:Dp:vqVh", lo, NULL)) != -1) {
		switch (ch) {
		case 'd': o->datadir = optarg; break;
		case 'l': o->listen = optarg; break;
		case 1: o->prod_port = parse_num(optarg, 0, 65535, "--excrypt-port"); break;
		case 2: o->admin_port = parse_num(optarg, 0, 65535, "--admin-port"); break;
		case 3: o->console = optarg; break;
		case 'w': o->workers = parse_num(optarg, 1, 256, "--workers"); break;
		case 'D': o->daemon = true; break;
		case 'p': o->pidfile = optarg; break;
		case 4: o->logfile = optarg; break;
		case 'v': o->level = KH_LOG_DEBUG; break;
		case 'q': o->level = KH_LOG_WARN; break;
		case 5: o->volatile_mk = true; break;
		case 7: o->prod_listen = optarg; break;
		case 8: o->admin_listen = optarg; break;
		case 6: o->max_connections = parse_num(optarg, 1, 1000000, "--max-connections"); break;
		case 10: o->poll_us = parse_num(optarg, 0, 100000, "--poll-us"); break;
#ifdef KH_FAULT_INJECTION
		/* test builds only: make one known-answer test fail */
		case 9: kh_selftest_force_failure(optarg); break;
#endif
		case 'V': printf("keyhold-hsm %s\n", KH_VERSION); exit(0);
		case 'h': usage(stdout); exit(0);
		default: usage(stderr); exit(2);
		}
	}
	if (optind != argc) {
		fprintf(stderr, "keyhold-hsm: unexpected argument '%s'\n", argv[optind]);
		usage(stderr);
		exit(2);
	}
}

static void on_ready(void *arg)
{
	(void)arg;
	kh_daemon_ready("keyhold-hsm", KH_VERSION);
}

int main(int argc, char **argv)
{
	struct opts o;
	struct kh_hsm *hsm;
	char console[4200];
	int r;

	parse_opts(argc, argv, &o);
	if (kh_log_init("keyhold-hsm", o.level, o.logfile) != 0) {
		fprintf(stderr, "keyhold-hsm: cannot open log file %s: %s\n", o.logfile, strerror(errno));
		return 1;
	}
	umask(077);
	kh_mem_harden_process();
	if (kh_mem_init(4u << 20) != 0)
		log_warnx("secure heap unavailable; secrets use wiped normal memory");
	if (o.pidfile)
		kh_daemon_pidfile_lock(o.pidfile, "keyhold-hsm");
	if (o.daemon)
		kh_daemon_detach();

	hsm = calloc(1, sizeof(*hsm));
	if (hsm == NULL)
		fatalx("out of memory");
	if ((r = kh_hsm_open(hsm, o.datadir, o.volatile_mk)) != KH_OK)
		fatalx("cannot open device in %s: %s", o.datadir, kh_strerror(r));
	/* power-up self-tests: on failure the daemon keeps serving STAT and
	 * administration, but refuses every cryptographic command */
	{
		struct kh_selftest_result st;
		if (kh_hsm_selftest(hsm, &st) != KH_OK)
			log_warnx("self-tests FAILED (%u of %u, first %s): cryptography refused",
				  st.failed, st.run, st.first_failed);
		else
			log_info("self-tests passed (%u)", st.run);
	}

	if (o.console == NULL) {
		snprintf(console, sizeof(console), "%s/console.sock", o.datadir);
		o.console = console;
	} else if (strcmp(o.console, "none") == 0) {
		o.console = NULL;
	}
	struct kh_server_opts so = {
		.prod_addr = o.prod_listen ? o.prod_listen : o.listen,
		.admin_addr = o.admin_listen ? o.admin_listen : o.listen,
		.prod_port = (uint16_t)o.prod_port,
		.admin_port = (uint16_t)o.admin_port,
		.console_path = o.console,
		.workers = (int)o.workers,
		.max_connections = (int)o.max_connections,
		.poll_us = (unsigned)o.poll_us,
		.ready = on_ready,
	};
	r = kh_server_run(hsm, &so);
	kh_hsm_close(hsm);
	free(hsm);
	kh_daemon_pidfile_remove();
	if (r != KH_OK) {
		log_warnx("stopped: %s", kh_strerror(r));
		return 1;
	}
	log_info("stopped");
	return 0;
}

/*
 * The PKCS#11 module's logger: formats outside any lock, then one write(2)
 * per line under a mutex that only guards the descriptor against a
 * concurrent close. It must never be handed a secret (see p11_log.h).
 */
#include "pkcs11/p11_log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static int log_fd = -1;   /* guarded by log_mu; -1: not logging */
static bool log_fd_owned; /* guarded by log_mu; false for stderr */
static atomic_int log_level = P11_LOG_NONE;

static const char *const level_names[] = {"NONE", "ERROR", "WARN", "INFO", "DEBUG"};

/* Swap in a new descriptor; the old one is closed outside the lock. */
static void set_fd(int fd, bool owned)
{
	int old;
	bool old_owned;

	pthread_mutex_lock(&log_mu);
	old = log_fd;
	old_owned = log_fd_owned;
	log_fd = fd;
	log_fd_owned = owned;
	pthread_mutex_unlock(&log_mu);
	if (old_owned && old >= 0)
		close(old);
}

void p11_log_open(enum p11_log_level level, const char *file)
{
	int fd = STDERR_FILENO, e = 0;
	bool owned = false;

	if (level <= P11_LOG_NONE) {
		p11_log_close();
		return;
	}
	if (level > P11_LOG_DEBUG)
		level = P11_LOG_DEBUG;
	if (file && file[0]) {
		int f = open(file, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOCTTY, 0600);
		if (f >= 0)
			fd = f, owned = true;
		else
			e = errno;
	}
	set_fd(fd, owned);
	atomic_store(&log_level, (int)level);
	if (e) {
		char eb[128];
		p11_log(P11_LOG_ERROR, "cannot open log file %s: %s; logging to stderr", file,
		        strerror_r(e, eb, sizeof(eb)));
	}
}

void p11_log_close(void)
{
	atomic_store(&log_level, P11_LOG_NONE);
	set_fd(-1, false);
}

void p11_log(enum p11_log_level lvl, const char *fmt, ...)
{
	char line[P11_LOG_LINE_MAX];
	struct timespec ts;
	struct tm tm;
	va_list ap;
	size_t n, start, max = sizeof(line) - 1; /* text at most; the '\n' takes the NUL's place */
	int saved = errno, k;

	if (lvl <= P11_LOG_NONE || (int)lvl > atomic_load(&log_level))
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	k = snprintf(line, sizeof(line),
	             "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ keyhold-pkcs11[%ld] %s: ",
	             tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
	             ts.tv_nsec / 1000000, (long)getpid(), level_names[lvl]);
	if (k < 0 || (size_t)k >= max)
		goto out;
	start = (size_t)k;
	va_start(ap, fmt);
	k = vsnprintf(line + start, sizeof(line) - start, fmt, ap);
	va_end(ap);
	if (k < 0)
		goto out;
	n = start + (size_t)k;
	if (n > max) {
		n = max;
		memcpy(line + n - 3, "...", 3);
	}
	for (size_t i = start; i < n; i++)
		if ((unsigned char)line[i] < 0x20 || (unsigned char)line[i] == 0x7f)
			line[i] = '?';
	line[n++] = '\n';

	pthread_mutex_lock(&log_mu);
	if (log_fd >= 0) {
		ssize_t w;
		do
			w = write(log_fd, line, n);
		while (w < 0 && errno == EINTR);
	}
	pthread_mutex_unlock(&log_mu);
out:
	errno = saved;
}

void p11_log_reset_after_fork(void)
{
	/* The mutex is re-initialised rather than unlocked: its owner may be a
	 * thread of the parent, and only one thread runs in the child. */
	pthread_mutex_init(&log_mu, NULL);
}

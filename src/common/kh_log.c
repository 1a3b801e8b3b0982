/*
 * Log sink shared by the daemons and tools; thread-safe through stdio's
 * own FILE locking (one fprintf per line).
 */
#include "common/kh_log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static FILE *logfp;
static enum kh_loglevel loglevel = KH_LOG_INFO;
static const char *logident = "keyhold";

int kh_log_init(const char *ident, enum kh_loglevel level, const char *path)
{
	logident = ident;
	loglevel = level;
	if (path) {
		FILE *f = fopen(path, "a");
		if (f == NULL)
			return -1;
		setvbuf(f, NULL, _IOLBF, 0);
		logfp = f;
	}
	return 0;
}

void kh_log_close(void)
{
	if (logfp && logfp != stderr)
		fclose(logfp);
	logfp = NULL;
}

__attribute__((format(printf, 4, 0)))
static void vlog(enum kh_loglevel lvl, const char *tag, int errnum, const char *fmt, va_list ap)
{
	char msg[1024], ts[32];
	struct tm tm;
	time_t now = time(NULL);

	if (lvl > loglevel)
		return;
	gmtime_r(&now, &tm);
	strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	FILE *out = logfp ? logfp : stderr;
	if (errnum)
		fprintf(out, "%s %s[%d] %s: %s: %s\n", ts, logident, (int)getpid(), tag, msg,
			strerror(errnum));
	else
		fprintf(out, "%s %s[%d] %s: %s\n", ts, logident, (int)getpid(), tag, msg);
}

#define LOGFN(name, lvl, tag, useerr)                                                             \
	void name(const char *fmt, ...)                                                           \
	{                                                                                         \
		int e = useerr ? errno : 0;                                                       \
		va_list ap;                                                                       \
		va_start(ap, fmt);                                                                \
		vlog(lvl, tag, e, fmt, ap);                                                       \
		va_end(ap);                                                                       \
	}

LOGFN(log_warn, KH_LOG_WARN, "warning", 1)
LOGFN(log_warnx, KH_LOG_WARN, "warning", 0)
LOGFN(log_info, KH_LOG_INFO, "info", 0)
LOGFN(log_debug, KH_LOG_DEBUG, "debug", 0)

void fatal(const char *fmt, ...)
{
	int e = errno;
	va_list ap;
	va_start(ap, fmt);
	vlog(KH_LOG_ERR, "fatal", e, fmt, ap);
	va_end(ap);
	exit(1);
}

void fatalx(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vlog(KH_LOG_ERR, "fatal", 0, fmt, ap);
	va_end(ap);
	exit(1);
}

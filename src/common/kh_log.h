/*
 * Logging in the OpenBSD daemon style. Messages must never contain key
 * material or passwords: pass names and codes, not values.
 */
#ifndef KH_LOG_H
#define KH_LOG_H

#include <stdio.h>

enum kh_loglevel { KH_LOG_ERR = 0, KH_LOG_WARN, KH_LOG_INFO, KH_LOG_DEBUG };

/* path NULL: stderr. */
int kh_log_init(const char *ident, enum kh_loglevel level, const char *path);
void kh_log_close(void);
void log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));  /* appends strerror(errno) */
void log_warnx(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
void fatalx(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif

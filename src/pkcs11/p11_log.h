/*
 * The PKCS#11 module's log: one line per event, appended to the configured
 * <LOG-FILE> (or stderr) with a single write(2), safe from any thread.
 * Never pass a PIN, a password or key material to it: log names, slots,
 * handles and return codes only.
 */
#ifndef P11_LOG_H
#define P11_LOG_H

#include "pkcs11/p11_config.h" /* enum p11_log_level */

/* Longest line written, time stamp and newline included; a longer message
 * is cut and ends in "...". */
#define P11_LOG_LINE_MAX 2048

/* Start logging events up to level to file (NULL or "" = stderr), opened
 * O_APPEND|O_CLOEXEC and created 0600. A file that cannot be opened falls
 * back to stderr, which is told why. P11_LOG_NONE logs nothing. Calling it
 * again replaces the previous destination. */
void p11_log_open(enum p11_log_level level, const char *file);
/* Stop logging and close the file (stderr is left open). */
void p11_log_close(void);
/* One line "<UTC time> keyhold-pkcs11[<pid>] <LEVEL>: <message>" when lvl is
 * enabled. Control characters in the message become '?', so an event is
 * always one line. errno is preserved. */
void p11_log(enum p11_log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* In a child after fork(): the parent's log lock may have been held by a
 * thread that does not exist here; make it usable again. The file stays open. */
void p11_log_reset_after_fork(void);

#endif

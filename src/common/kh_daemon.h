/*
 * What a Keyhold daemon does around its work: a pid file locked for the
 * life of the process (so that two daemons never share a data dir through
 * it), going into the background with the parent waiting until the child
 * says it is serving (so that the parent's exit status means something to
 * scripts), and that signal of readiness. Shared by keyhold-hsm and
 * keyhold-guardian. Failures before readiness are fatal (kh_log's fatal).
 */
#ifndef KH_DAEMON_H
#define KH_DAEMON_H

/* Open and lock path (0644), or exit: prog names the daemon in the message
 * when another one holds the lock. */
void kh_daemon_pidfile_lock(const char *path, const char *prog);
/* Fork into the background (setsid); the parent exits 0 once the child
 * calls kh_daemon_ready, 1 if it exits first. */
void kh_daemon_detach(void);
/* Serving now: the pid goes into the pid file (when locked), "<prog>
 * <version> ready" is logged, and a detached child tells its parent and
 * points its standard streams at /dev/null. */
void kh_daemon_ready(const char *prog, const char *version);
/* At a clean exit: remove the pid file (when locked). */
void kh_daemon_pidfile_remove(void);

#endif

/*
 * Pid file, detaching and readiness for the daemons (kh_daemon.h).
 */
#include "common/kh_daemon.h"
#include "common/kh_log.h"

#include <fcntl.h>
#include <stdio.h>
#include <sys/file.h>
#include <unistd.h>

static int pidfd = -1;
static int ready_fd = -1;
static const char *pidpath;

void kh_daemon_pidfile_lock(const char *path, const char *prog)
{
	pidfd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (pidfd < 0)
		fatal("pid file %s", path);
	if (flock(pidfd, LOCK_EX | LOCK_NB) != 0)
		fatalx("pid file %s is locked: another %s is running", path, prog);
	pidpath = path;
}

void kh_daemon_detach(void)
{
	int p[2];
	if (pipe(p) != 0)
		fatal("pipe");
	pid_t pid = fork();
	if (pid < 0)
		fatal("fork");
	if (pid > 0) {
		char c;
		close(p[1]);
		ssize_t n = read(p[0], &c, 1);
		_exit(n == 1 ? 0 : 1);
	}
	close(p[0]);
	if (setsid() < 0)
		fatal("setsid");
	ready_fd = p[1];
}

void kh_daemon_ready(const char *prog, const char *version)
{
	if (pidfd >= 0) {
		char buf[32];
		int n = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
		if (ftruncate(pidfd, 0) != 0 || pwrite(pidfd, buf, (size_t)n, 0) != n)
			log_warn("pid file");
	}
	log_info("%s %s ready", prog, version);
	if (ready_fd >= 0) {
		char c = 1;
		if (write(ready_fd, &c, 1) != 1)
			log_warn("ready pipe");
		close(ready_fd);
		ready_fd = -1;
		int nul = open("/dev/null", O_RDWR);
		if (nul >= 0) {
			dup2(nul, 0);
			dup2(nul, 1);
			dup2(nul, 2);
			if (nul > 2)
				close(nul);
		}
	}
}

void kh_daemon_pidfile_remove(void)
{
	if (pidpath)
		(void)unlink(pidpath);
}

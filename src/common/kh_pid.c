/*
 * The process id, read once and refreshed in the child by a fork handler:
 * getpid() is a system call, and the module and the pool compare the pid on
 * every call. It must never hand a child its parent's id.
 */
#include "common/kh_pid.h"

#include <pthread.h>
#include <unistd.h>

static pid_t cached_pid;
static pthread_once_t pid_once = PTHREAD_ONCE_INIT;

static void pid_refresh(void)
{
	__atomic_store_n(&cached_pid, getpid(), __ATOMIC_RELAXED);
}

static void pid_init(void)
{
	pid_refresh();
	pthread_atfork(NULL, NULL, pid_refresh);
}

pid_t kh_pid(void)
{
	pthread_once(&pid_once, pid_init);
	return __atomic_load_n(&cached_pid, __ATOMIC_RELAXED);
}

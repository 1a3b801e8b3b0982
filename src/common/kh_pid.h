/*
 * This process's id without a system call per use, for code that checks on
 * every call whether it now runs in a child after fork() (the PKCS#11
 * module, the connection pool). It must never return a parent's id in a
 * child: a fork handler refreshes it.
 */
#ifndef KH_PID_H
#define KH_PID_H

#include <sys/types.h>

/* getpid(), kept by a pthread_atfork child handler installed on first use. */
pid_t kh_pid(void);

#endif

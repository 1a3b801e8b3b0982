/*
 * The network front of keyhold-hsm: listeners for the Excrypt and Admin
 * ports and the console socket, an acceptor thread and worker threads each
 * running a libevent loop. libevent only signals readiness; all bytes go
 * through our own self-wiping buffers and SSL objects.
 */
#ifndef KH_SERVER_H
#define KH_SERVER_H

#include "hsm/hsm.h"

struct kh_server_opts {
	const char *prod_addr;     /* Excrypt port's listen address, "127.0.0.1" */
	const char *admin_addr;    /* Admin port's listen address */
	uint16_t prod_port;        /* 9100; 0 disables */
	uint16_t admin_port;       /* 9009; 0 disables */
	const char *console_path;  /* Unix socket, created 0600; NULL disables */
	int workers;               /* worker threads (>= 1) */
	int max_connections;       /* open connections at most (0: 1024); more are closed at once */
	unsigned poll_us;          /* a worker polls this long before it sleeps (0: never) */
	void (*ready)(void *arg);  /* called once all listeners are bound */
	void *ready_arg;
};

/* Runs until SIGTERM or SIGINT, then closes every connection cleanly.
 * Returns KH_OK, or an error if a listener could not be set up. */
KH_MUST_CHECK int kh_server_run(struct kh_hsm *hsm, const struct kh_server_opts *o);

#endif

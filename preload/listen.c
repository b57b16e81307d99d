/* SPDX-License-Identifier: MIT */
/* libkeepalive_listen.so: sets the options on listen(2); accepted sockets inherit them. */
#include <sys/syscall.h>
#include <unistd.h>

#include "keepalive_options.h"

typedef int (*listen_fn)(int, int);
static listen_fn real_listen;

__attribute__((constructor))
static void resolve(void)
{
	__atomic_store_n(&real_listen, (listen_fn)ka_next("listen"), __ATOMIC_RELAXED);
}

KA_EXPORT int listen(int fd, int backlog)
{
	listen_fn next = __atomic_load_n(&real_listen, __ATOMIC_RELAXED);

	if (ka_is_tcp_fd(fd))
		ka_configure(fd, KA_SITE_LISTEN);
	if (!next)
		return (int)syscall(SYS_listen, fd, backlog);
	return next(fd, backlog);
}

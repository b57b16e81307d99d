/* SPDX-License-Identifier: MIT */
/* libkeepalive_socket.so: sets the options on every new TCP socket. */
#include <errno.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "keepalive_options.h"

typedef int (*socket_fn)(int, int, int);
static socket_fn real_socket;

__attribute__((constructor))
static void resolve(void)
{
	__atomic_store_n(&real_socket, (socket_fn)ka_next("socket"), __ATOMIC_RELAXED);
}

KA_EXPORT int socket(int domain, int type, int protocol)
{
	socket_fn next = __atomic_load_n(&real_socket, __ATOMIC_RELAXED);
	int fd = next ? next(domain, type, protocol) : (int)syscall(SYS_socket, domain, type, protocol);

	/* The arguments say TCP without a system call; ka_configure keeps errno. */
	if (fd >= 0 && ka_is_tcp_socket_args(domain, type, protocol))
		ka_configure(fd, KA_SITE_SOCKET);
	return fd;
}

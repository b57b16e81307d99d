/* SPDX-License-Identifier: MIT */
/* libkeepalive.so: sets the options before connect(2) sends the SYN. */
#include <sys/syscall.h>
#include <unistd.h>

#include "keepalive_options.h"

typedef int (*connect_fn)(int, const struct sockaddr *, socklen_t);
static connect_fn real_connect;

__attribute__((constructor))
static void resolve(void)
{
	__atomic_store_n(&real_connect, (connect_fn)ka_next("connect"), __ATOMIC_RELAXED);
}

KA_EXPORT int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
	connect_fn next = __atomic_load_n(&real_connect, __ATOMIC_RELAXED);

	/* The address family says IPv4/IPv6 without a system call. */
	if (addr && len >= sizeof(addr->sa_family) && ka_is_inet_family(addr->sa_family) &&
	    ka_is_tcp_fd(fd, 0))
		ka_configure(fd, KA_SITE_CONNECT);
	if (!next)  /* called before our constructor ran */
		return (int)syscall(SYS_connect, fd, addr, len);
	return next(fd, addr, len);
}

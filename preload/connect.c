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

	/* The socket, not the address, says whether it is TCP over IPv4/IPv6:
	 * the address is the real call's to judge (a bad one is EFAULT there,
	 * never a crash here). */
	if (ka_is_tcp_fd(fd))
		ka_configure(fd, KA_SITE_CONNECT);
	if (!next)  /* called before our constructor ran */
		return (int)syscall(SYS_connect, fd, addr, len);
	return next(fd, addr, len);
}

/* SPDX-License-Identifier: MIT */
/*
 * What the three preload libraries share: the options, read from the
 * environment once at load, and the code that sets them on a TCP socket.
 * The libraries differ only in the call they wrap (connect, listen, socket).
 */
#ifndef KEEPALIVE_PRELOAD_OPTIONS_H
#define KEEPALIVE_PRELOAD_OPTIONS_H

#include <sys/socket.h>

/* Where an option applies: the call a library wraps. */
enum ka_site {
	KA_SITE_CONNECT = 1 << 0,  /* libkeepalive.so */
	KA_SITE_LISTEN  = 1 << 1,  /* libkeepalive_listen.so */
	KA_SITE_SOCKET  = 1 << 2,  /* libkeepalive_socket.so */
};

/* Sets the options in force for `site` on fd if it is a TCP socket; keeps errno. */
void ka_configure(int fd, enum ka_site site);

/* Whether a socket(2) call's arguments make a TCP socket. */
int ka_is_tcp_socket_args(int domain, int type, int protocol);

/* Whether fd is a TCP socket (SO_PROTOCOL) of AF_INET/AF_INET6 (SO_DOMAIN); keeps errno. */
int ka_is_tcp_fd(int fd);

/* A function pointer of no particular type, cast to the wrapped call's type. */
typedef void (*ka_fn)(void);

/* The next definition of `name` after this library (dlsym RTLD_NEXT), or NULL. */
ka_fn ka_next(const char *name);

#define KA_EXPORT __attribute__((visibility("default")))

#endif

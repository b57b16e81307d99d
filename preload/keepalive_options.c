/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "keepalive_options.h"
#include "../bpf/keepalive_policy.h"

struct ka_option {
	const char *env;
	int optname;             /* at IPPROTO_TCP */
	int min, max;            /* non-zero range; 0 always means "system default" */
	unsigned sites;
	int value;               /* the default until the environment says otherwise, at load */
};

#define ALL_SITES (KA_SITE_CONNECT | KA_SITE_LISTEN | KA_SITE_SOCKET)

enum { IDLE, INTVL, CNT, USER_TIMEOUT, SYNCNT, MAXSEG, WINDOW_CLAMP, DEFER_ACCEPT, N_OPTIONS };

#define OPTION(name, optname, sites) \
	{ KA_##name##_ENV, optname, KA_##name##_MIN, KA_##name##_MAX, sites, KA_##name##_DEFAULT }

/* Written only by ka_load (before any wrapper can run), read-only afterwards. */
static struct ka_option options[N_OPTIONS] = {
	[IDLE]         = OPTION(KEEPIDLE, TCP_KEEPIDLE, ALL_SITES),
	[INTVL]        = OPTION(KEEPINTVL, TCP_KEEPINTVL, ALL_SITES),
	[CNT]          = OPTION(KEEPCNT, TCP_KEEPCNT, ALL_SITES),
	[USER_TIMEOUT] = OPTION(USER_TIMEOUT, TCP_USER_TIMEOUT, ALL_SITES),
	[SYNCNT]       = OPTION(SYNCNT, TCP_SYNCNT, KA_SITE_CONNECT | KA_SITE_SOCKET),
	[MAXSEG]       = OPTION(MAXSEG, TCP_MAXSEG, ALL_SITES),
	[WINDOW_CLAMP] = OPTION(WINDOW_CLAMP, TCP_WINDOW_CLAMP, ALL_SITES),
	[DEFER_ACCEPT] = OPTION(DEFER_ACCEPT, TCP_DEFER_ACCEPT, KA_SITE_LISTEN | KA_SITE_SOCKET),
};

static int debug;

/* Debug lines go to stderr: stdout may be the program's protocol stream. */
__attribute__((format(printf, 1, 2)))
static void say(const char *format, ...)
{
	char line[256];
	va_list args;
	int n;

	if (!debug)
		return;
	va_start(args, format);
	n = vsnprintf(line, sizeof(line) - 1, format, args);
	va_end(args);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(line) - 2)
		n = (int)sizeof(line) - 2;
	line[n] = '\n';
	(void)!write(STDERR_FILENO, line, (size_t)n + 1);
}

/* A whole decimal number (optionally negative) within [min, max], or 0; nothing
 * else. *out is written only on success. */
static int parse_value(const char *text, int min, int max, int *out)
{
	char *end;
	long value;

	/* strtol would skip leading blanks and take a sign; a value is digits only. */
	if (!(*text >= '0' && *text <= '9') && !(*text == '-' && text[1] >= '0' && text[1] <= '9'))
		return -1;
	errno = 0;
	value = strtol(text, &end, 10);
	if (errno || end == text || *end != '\0')
		return -1;
	if (value != 0 && (value < min || value > max))
		return -1;
	*out = (int)value;
	return 0;
}

static void load_option(struct ka_option *option)
{
	const char *text = getenv(option->env);

	if (!text)
		return;
	/* On failure parse_value leaves the default in place. */
	if (parse_value(text, option->min, option->max, &option->value) == 0)
		return;
	say("libkeepalive: %s='%s' is invalid (0, or %d..%d); using %d",
	    option->env, text, option->min, option->max, option->value);
}

__attribute__((constructor))
static void ka_load(void)
{
	int saved = errno;

	debug = getenv(KA_DEBUG_ENV) != NULL;
	for (int i = 0; i < N_OPTIONS; i++)
		load_option(&options[i]);
	/* Derived from the values actually in force, never from a rejected one. */
	if (options[USER_TIMEOUT].value == KA_USER_TIMEOUT_DERIVED)
		options[USER_TIMEOUT].value = ka_derived_user_timeout(
			options[IDLE].value, options[INTVL].value, options[CNT].value);
	errno = saved;
}

static void set_option(int fd, int level, int optname, int value, const char *name)
{
	if (setsockopt(fd, level, optname, &value, sizeof(value)) < 0)
		say("libkeepalive: fd %d: setsockopt %s=%d: %s", fd, name, value, strerror(errno));
}

void ka_configure(int fd, enum ka_site site)
{
	int saved = errno;

	set_option(fd, SOL_SOCKET, SO_KEEPALIVE, 1, "SO_KEEPALIVE");
	for (int i = 0; i < N_OPTIONS; i++) {
		const struct ka_option *option = &options[i];

		if (option->value && (option->sites & site))
			set_option(fd, IPPROTO_TCP, option->optname, option->value, option->env);
	}
	errno = saved;
}

static int is_inet_family(sa_family_t family)
{
	return family == AF_INET || family == AF_INET6;
}

int ka_is_tcp_socket_args(int domain, int type, int protocol)
{
	return is_inet_family((sa_family_t)domain) &&
	       (type & ~(SOCK_NONBLOCK | SOCK_CLOEXEC)) == SOCK_STREAM &&
	       (protocol == 0 || protocol == IPPROTO_TCP);
}

int ka_is_tcp_fd(int fd)
{
	int saved = errno, value = 0, tcp = 0;
	socklen_t len = sizeof(value);

	if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &value, &len) == 0 && value == IPPROTO_TCP) {
		len = sizeof(value);
		tcp = getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &value, &len) == 0 &&
		      is_inet_family((sa_family_t)value);
	}
	errno = saved;
	return tcp;
}

ka_fn ka_next(const char *name)
{
	void *symbol = dlsym(RTLD_NEXT, name);
	ka_fn fn;

	/* ISO C has no cast from object to function pointer; copy the bits. */
	memcpy(&fn, &symbol, sizeof(fn));
	return fn;
}

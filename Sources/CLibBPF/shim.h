#ifndef KEEPALIVE_CLIBBPF_SHIM_H
#define KEEPALIVE_CLIBBPF_SHIM_H
#include <sys/vfs.h>      /* statfs: is it bpffs / cgroup2? */
#include <sys/mount.h>
#include <sys/file.h>     /* flock */
#include <sys/syscall.h>
#include <unistd.h>
#include <arpa/inet.h>    /* inet_ntop */
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include "../../bpf/keepalive_policy.h"

/* setns(2) into a network namespace (glibc declares setns only with _GNU_SOURCE). */
static inline int ka_setns_net(int fd)
{
	return (int)syscall(SYS_setns, fd, 0x40000000 /* CLONE_NEWNET */);
}
#endif

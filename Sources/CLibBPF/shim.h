#ifndef KEEPALIVE_CLIBBPF_SHIM_H
#define KEEPALIVE_CLIBBPF_SHIM_H
#include <sys/vfs.h>      /* statfs: is it bpffs / cgroup2? */
#include <sys/mount.h>
#include <sys/file.h>     /* flock */
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include "../../bpf/keepalive_policy.h"
#endif

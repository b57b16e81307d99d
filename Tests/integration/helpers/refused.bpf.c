// SPDX-License-Identifier: GPL-2.0-only
/*
 * keepalive's programs as a broken build would have them, for the test of
 * load errors: the socket is read as a tcp_sock without the helper or kfunc
 * that makes that safe, so the verifier refuses keepalive_sockops in every
 * build.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "keepalive_kfuncs.bpf.h"  /* declared before the macro below replaces its calls */
#define bpf_skc_to_tcp_sock(sk) ((struct tcp_sock *)(void *)(sk))
#define bpf_rdonly_cast(obj, btf_id) ((void *)(obj))
#include "keepalive.bpf.c"

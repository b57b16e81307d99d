// SPDX-License-Identifier: GPL-2.0-only
/*
 * Programs that only ask the kernel what it accepts (KernelFeatures.swift):
 * each is loaded on its own, never attached. What a raw helper probe cannot
 * ask (it needs BTF for its functions) is asked here.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "keepalive_kfuncs.bpf.h"

char LICENSE[] SEC("license") = "GPL";

struct ka_probe_argument {
	__u32 value;
};

/* A global function with a pointer argument (Linux 5.12), as rules' matching is. */
__attribute__((noinline)) int ka_probe_pointer_argument(const struct ka_probe_argument *argument)
{
	return argument ? argument->value == 1 : 0;
}

SEC("sockops")
int probe_global_pointer_arguments(struct bpf_sock_ops *skops)
{
	struct ka_probe_argument argument = { .value = skops->op };

	/* The result is used: a call whose result is not, clang drops. */
	return ka_probe_pointer_argument(&argument) & 1;
}

/* bpf_rdonly_cast in a sock_ops program (Linux 6.2), as the cast build's. */
SEC("sockops")
int probe_readonly_cast(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	struct tcp_sock *tp;

	if (!sk)
		return 1;
	tp = bpf_rdonly_cast(sk, bpf_core_type_id_kernel(struct tcp_sock));
	return tp->snd_cwnd & 1;
}

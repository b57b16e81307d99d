// SPDX-License-Identifier: GPL-2.0-only
/*
 * Programs that only ask the kernel what it accepts (KernelFeatures.swift):
 * each is loaded on its own, never attached. What a raw helper probe cannot
 * ask (it needs BTF for its functions) is asked here.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

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

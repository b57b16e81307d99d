// SPDX-License-Identifier: GPL-2.0-only
/* An empty sock_ops program: what the kernel charges for running any sock_ops
 * program on every connection, before keepalive does anything. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

SEC("sockops")
int empty_sockops(struct bpf_sock_ops *skops)
{
	return 1;
}

// SPDX-License-Identifier: GPL-2.0-only
/* Another tool's sock_ops program, for tests: it sets TCP_NOTSENT_LOWAT, which
 * keepalive never touches, so both programs' effects can be read back. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#define SOL_TCP 6
#define TCP_NOTSENT_LOWAT 25
#define FOREIGN_LOWAT 123457

char LICENSE[] SEC("license") = "GPL";

SEC("sockops")
int foreign_sockops(struct bpf_sock_ops *skops)
{
	int lowat = FOREIGN_LOWAT;

	if (skops->op == BPF_SOCK_OPS_TCP_CONNECT_CB ||
	    skops->op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		bpf_setsockopt(skops, SOL_TCP, TCP_NOTSENT_LOWAT, &lowat, sizeof(lowat));
	return 1;
}

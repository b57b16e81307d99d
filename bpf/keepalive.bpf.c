// SPDX-License-Identifier: GPL-2.0
/*
 * keepalive's sock_ops program: gives every TCP socket of a covered cgroup
 * the keepalive policy of its nearest ancestor cgroup that has one.
 *
 * It runs on connect (before the SYN), on accept (passive established) and on
 * listen. Per socket: one hash lookup per cgroup level until a policy is found,
 * then the setsockopt calls. It always returns 1: a socket is never refused.
 */
#include "keepalive_common.bpf.h"

char LICENSE[] SEC("license") = "GPL";

SEC("sockops")
int keepalive_sockops(struct bpf_sock_ops *skops)
{
	struct ka_policy *policy;
	struct bpf_sock *sk;
	struct tcp_sock *tp;
	__u32 op = skops->op;

	if (op != BPF_SOCK_OPS_TCP_CONNECT_CB &&
	    op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB &&
	    op != BPF_SOCK_OPS_TCP_LISTEN_CB)
		return 1;
	sk = skops->sk;
	if (!sk)
		return 1;
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return 1;
	policy = nearest_policy(tp);
	if (!policy)
		return 1;
	apply_policy(skops, policy, op == BPF_SOCK_OPS_TCP_CONNECT_CB);
	count_configured(policy);
	return 1;
}

// SPDX-License-Identifier: GPL-2.0
/*
 * keepalive's sock_ops program: gives every TCP socket of a covered cgroup
 * the keepalive policy of its nearest ancestor cgroup that has one.
 *
 * It runs on connect (before the SYN), on accept (passive established) and on
 * listen. Per socket: one hash lookup per cgroup level until a policy is found,
 * then the setsockopt calls. It always returns 1: a socket is never refused.
 *
 * keepalive_setsockopt is attached only where a policy takes precedence over
 * the program: it rewrites the program's own keepalive setsockopt calls to the
 * policy's values, and the calls still succeed.
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

/* The policy's value for an option a program sets, or 0 to leave it alone. */
static __always_inline int forced_value(const struct ka_policy *p, int level, int optname)
{
	if (level == SOL_SOCKET)
		return optname == SO_KEEPALIVE ? 1 : 0;
	switch (optname) {
	case TCP_KEEPIDLE:     return p->keepidle;
	case TCP_KEEPINTVL:    return p->keepintvl;
	case TCP_KEEPCNT:      return p->keepcnt;
	case TCP_USER_TIMEOUT: return p->user_timeout;
	default:               return 0;
	}
}

static __always_inline bool is_keepalive_option(int level, int optname)
{
	if (level == SOL_SOCKET)
		return optname == SO_KEEPALIVE;
	return level == SOL_TCP &&
	       (optname == TCP_KEEPIDLE || optname == TCP_KEEPINTVL ||
		optname == TCP_KEEPCNT || optname == TCP_USER_TIMEOUT);
}

SEC("cgroup/setsockopt")
int keepalive_setsockopt(struct bpf_sockopt *ctx)
{
	int level = ctx->level, optname = ctx->optname, forced;
	struct task_struct *task;
	struct ka_policy *policy;
	struct bpf_sock *sk;
	int *optval;

	if (!is_keepalive_option(level, optname))
		return 1;
	sk = ctx->sk;
	if (!sk || sk->protocol != 6 /* IPPROTO_TCP */ || sk->type != 1 /* SOCK_STREAM */)
		return 1;
	/* setsockopt runs in the calling process, so its cgroup is the one to
	 * walk (bpf_skc_to_tcp_sock, used by sock_ops, is refused here). */
	task = bpf_get_current_task_btf();
	policy = nearest_policy_from(task->cgroups->dfl_cgrp);
	if (!policy || !(policy->flags & KA_POLICY_PRECEDENCE_POLICY))
		return 1;
	forced = forced_value(policy, level, optname);
	optval = ctx->optval;
	if (!forced || (void *)(optval + 1) > ctx->optval_end)
		return 1;
	*optval = forced;  /* the kernel then sets the policy's value; the call succeeds */
	return 1;
}

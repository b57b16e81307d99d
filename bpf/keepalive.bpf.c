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

/*
 * What a listener held right after this program configured it. BPF_F_CLONE
 * copies it to every accepted socket, which inherits the listener's options:
 * if the policy has not changed since (same generation) and the socket still
 * holds exactly those values (the program did not change its listener), there
 * is nothing to set. Times are kept as the kernel stores them (jiffies).
 */
struct ka_listener_state {
	__u32 generation;
	__u32 keepalive_time;
	__u32 keepalive_intvl;
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_CLONE);
	__type(key, int);
	__type(value, struct ka_listener_state);
} ka_listener_state SEC(".maps");

static __always_inline bool holds_policy(struct tcp_sock *tp, const struct ka_policy *p)
{
	struct ka_listener_state *s = bpf_sk_storage_get(&ka_listener_state, tp, 0, 0);
	struct sock_common *skc = &tp->inet_conn.icsk_inet.sk.__sk_common;

	return s && s->generation == p->generation &&
	       ((skc->skc_flags >> SOCK_KEEPOPEN) & 1) &&
	       (!p->keepidle || tp->keepalive_time == s->keepalive_time) &&
	       (!p->keepintvl || tp->keepalive_intvl == s->keepalive_intvl) &&
	       (!p->keepcnt || tp->keepalive_probes == p->keepcnt) &&
	       (!p->user_timeout || tp->inet_conn.icsk_user_timeout == (__u32)p->user_timeout) &&
	       !p->window_clamp;  /* recomputed at the handshake: always set */
}

static __always_inline void remember_listener(struct tcp_sock *tp, const struct ka_policy *p)
{
	struct ka_listener_state *s = bpf_sk_storage_get(&ka_listener_state, tp, 0,
							 BPF_SK_STORAGE_GET_F_CREATE);

	if (!s)
		return;
	s->generation = p->generation;
	s->keepalive_time = tp->keepalive_time;
	s->keepalive_intvl = tp->keepalive_intvl;
}

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
	if (op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB || !holds_policy(tp, policy))
		apply_policy(skops, policy, op == BPF_SOCK_OPS_TCP_CONNECT_CB);
	if (op == BPF_SOCK_OPS_TCP_LISTEN_CB)
		remember_listener(tp, policy);
	count_configured(policy);
	return 1;
}

/* Which of the policy's options a program's setsockopt sets, or -1 for none of them. */
static __always_inline int keepalive_option(int level, int optname)
{
	if (level == SOL_SOCKET)
		return optname == SO_KEEPALIVE ? KA_OPT_KEEPALIVE : -1;
	if (level != SOL_TCP)
		return -1;
	switch (optname) {
	case TCP_KEEPIDLE:     return KA_OPT_KEEPIDLE;
	case TCP_KEEPINTVL:    return KA_OPT_KEEPINTVL;
	case TCP_KEEPCNT:      return KA_OPT_KEEPCNT;
	case TCP_USER_TIMEOUT: return KA_OPT_USER_TIMEOUT;
	default:               return -1;
	}
}

/* The policy's value for that option; 0 leaves it to the program. */
static __always_inline int forced_value(const struct ka_policy *p, int option)
{
	switch (option) {
	case KA_OPT_KEEPALIVE:    return 1;
	case KA_OPT_KEEPIDLE:     return p->keepidle;
	case KA_OPT_KEEPINTVL:    return p->keepintvl;
	case KA_OPT_KEEPCNT:      return p->keepcnt;
	case KA_OPT_USER_TIMEOUT: return p->user_timeout;
	default:                  return 0;
	}
}

SEC("cgroup/setsockopt")
int keepalive_setsockopt(struct bpf_sockopt *ctx)
{
	/* Context fields are read once, up front: the verifier refuses loads
	 * through a ctx pointer the compiler has offset later on. */
	int option = keepalive_option(ctx->level, ctx->optname), forced;
	void *optval_end = ctx->optval_end;
	int *optval = ctx->optval;
	struct bpf_sock *sk = ctx->sk;
	struct task_struct *task;
	struct ka_policy *policy;

	if (option < 0)  /* every other option: no lookup at all */
		return 1;
	if (!sk || sk->protocol != 6 /* IPPROTO_TCP */ || sk->type != 1 /* SOCK_STREAM */)
		return 1;
	/* setsockopt runs in the calling process, so its cgroup is the one to
	 * walk (bpf_skc_to_tcp_sock, used by sock_ops, is refused here). */
	task = bpf_get_current_task_btf();
	policy = nearest_policy_from(task->cgroups->dfl_cgrp);
	if (!policy || !(policy->flags & KA_POLICY_PRECEDENCE_POLICY))
		return 1;
	forced = forced_value(policy, option);
	if (!forced || (void *)(optval + 1) > optval_end)
		return 1;
	*optval = forced;  /* the kernel then sets the policy's value; the call succeeds */
	return 1;
}

// SPDX-License-Identifier: GPL-2.0
/*
 * keepalive's sock_ops program: gives every TCP socket of a covered cgroup
 * the keepalive policy of its nearest ancestor cgroup that has one.
 *
 * It runs on connect (before the SYN), on accept (passive established) and on
 * listen. Per socket: one hash lookup per cgroup level until a policy is found,
 * then the setsockopt calls. It always returns 1: a socket is never refused.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "keepalive_policy.h"

#define SOL_SOCKET    1
#define SO_KEEPALIVE  9
#define SOL_TCP       6
#define TCP_MAXSEG        2
#define TCP_KEEPIDLE      4
#define TCP_KEEPINTVL     5
#define TCP_KEEPCNT       6
#define TCP_SYNCNT        7
#define TCP_WINDOW_CLAMP  10
#define TCP_USER_TIMEOUT  18

char LICENSE[] SEC("license") = "GPL";

/* cgroup id -> policy. Written by userspace only. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, KA_MAX_POLICIES);
	__type(key, __u64);
	__type(value, struct ka_policy);
} ka_policies SEC(".maps");

/* policy slot -> sockets configured (shared by all CPUs, atomic adds). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, KA_MAX_POLICIES);
	__type(key, __u32);
	__type(value, __u64);
} ka_sockets SEC(".maps");

/* option -> failed bpf_setsockopt calls, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KA_OPT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} ka_errors SEC(".maps");

static __always_inline void count_error(__u32 option)
{
	__u64 *errors = bpf_map_lookup_elem(&ka_errors, &option);

	if (errors)
		*errors += 1;
}

static __always_inline void set_opt(struct bpf_sock_ops *skops, __u32 option,
				    int level, int optname, int value)
{
	if (bpf_setsockopt(skops, level, optname, &value, sizeof(value)))
		count_error(option);
}

/* Nearest policy from the socket's own cgroup upwards, or NULL. */
static __always_inline struct ka_policy *nearest_policy(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	struct tcp_sock *tp;
	struct cgroup *cgrp;

	if (!sk)
		return NULL;
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return NULL;
	cgrp = tp->inet_conn.icsk_inet.sk.sk_cgrp_data.cgroup;
	for (int level = 0; level < KA_MAX_CGROUP_DEPTH && cgrp; level++) {
		__u64 id = cgrp->kn->id;
		struct ka_policy *policy = bpf_map_lookup_elem(&ka_policies, &id);
		struct cgroup_subsys_state *parent;

		if (policy)
			return policy;
		parent = cgrp->self.parent;
		cgrp = parent ? parent->cgroup : NULL;
	}
	return NULL;
}

static __always_inline void apply(struct bpf_sock_ops *skops,
				  const struct ka_policy *p, bool connecting)
{
	set_opt(skops, KA_OPT_KEEPALIVE, SOL_SOCKET, SO_KEEPALIVE, 1);
	if (p->keepidle)
		set_opt(skops, KA_OPT_KEEPIDLE, SOL_TCP, TCP_KEEPIDLE, p->keepidle);
	if (p->keepintvl)
		set_opt(skops, KA_OPT_KEEPINTVL, SOL_TCP, TCP_KEEPINTVL, p->keepintvl);
	if (p->keepcnt)
		set_opt(skops, KA_OPT_KEEPCNT, SOL_TCP, TCP_KEEPCNT, p->keepcnt);
	if (p->user_timeout)
		set_opt(skops, KA_OPT_USER_TIMEOUT, SOL_TCP, TCP_USER_TIMEOUT, p->user_timeout);
	if (p->window_clamp)
		set_opt(skops, KA_OPT_WINDOW_CLAMP, SOL_TCP, TCP_WINDOW_CLAMP, p->window_clamp);
	/* SYN count and MSS act before the handshake: only on connect. */
	if (connecting && p->syncnt)
		set_opt(skops, KA_OPT_SYNCNT, SOL_TCP, TCP_SYNCNT, p->syncnt);
	if (connecting && p->maxseg)
		set_opt(skops, KA_OPT_MAXSEG, SOL_TCP, TCP_MAXSEG, p->maxseg);
}

SEC("sockops")
int keepalive_sockops(struct bpf_sock_ops *skops)
{
	struct ka_policy *policy;
	__u64 *configured;
	__u32 slot;
	__u32 op = skops->op;

	if (op != BPF_SOCK_OPS_TCP_CONNECT_CB &&
	    op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB &&
	    op != BPF_SOCK_OPS_TCP_LISTEN_CB)
		return 1;

	policy = nearest_policy(skops);
	if (!policy)
		return 1;

	apply(skops, policy, op == BPF_SOCK_OPS_TCP_CONNECT_CB);

	slot = policy->slot;
	configured = bpf_map_lookup_elem(&ka_sockets, &slot);
	if (configured)
		__sync_fetch_and_add(configured, 1);
	return 1;
}

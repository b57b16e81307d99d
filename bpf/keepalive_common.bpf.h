/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * What keepalive's BPF objects share: the pinned maps (one definition; libbpf
 * pins them by name under the state's root and every later object reuses
 * them), the walk up a socket's cgroups, and the code that applies a policy.
 */
#ifndef KEEPALIVE_COMMON_BPF_H
#define KEEPALIVE_COMMON_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "keepalive_policy.h"

/* What vmlinux.h cannot carry (preprocessor constants of the UAPI headers);
 * IPPROTO_TCP and SOCK_STREAM are enums, and come from it. */
#define AF_INET       2
#define ETIMEDOUT     110
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

/* cgroup id -> policy. Written by userspace only. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, KA_MAX_POLICIES);
	__type(key, __u64);
	__type(value, struct ka_policy);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ka_policies_v3 SEC(".maps");

/* policy's slot -> its counters, one copy per CPU: no cache line is shared
 * between CPUs. An array: the verifier inlines the lookup (no hashing, no
 * helper call), and nothing is ever allocated. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KA_MAX_POLICIES);
	__type(key, __u32);
	__type(value, struct ka_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ka_counters SEC(".maps");

/* option -> failed bpf_setsockopt calls, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KA_OPT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ka_errors SEC(".maps");

static __always_inline void count_error(__u32 option)
{
	__u64 *errors = bpf_map_lookup_elem(&ka_errors, &option);

	if (errors)
		*errors += 1;
}

static __always_inline struct ka_counters *counters_of(const struct ka_policy *policy)
{
	return bpf_map_lookup_elem(&ka_counters, &policy->slot);
}

/* `ctx` is what bpf_setsockopt takes in the calling program: sock_ops or a socket. */
static __always_inline void set_opt(void *ctx, __u32 option, int level, int optname, int value)
{
	if (bpf_setsockopt(ctx, level, optname, &value, sizeof(value)))
		count_error(option);
}

/* The socket's own cgroup (sk_cgrp_data, through BTF). */
static __always_inline struct cgroup *socket_cgroup(struct tcp_sock *tp)
{
	return tp->inet_conn.icsk_inet.sk.sk_cgrp_data.cgroup;
}

/*
 * A walk from a cgroup up to the root: it stops at the first cgroup that has
 * a policy, or, with `target` set, at the cgroup of that id. It takes at most
 * the cgroup's depth + 1 steps (bpf_loop), so no depth is out of reach.
 */
struct ka_walk {
	struct cgroup *cgrp;       /* the next cgroup to look at */
	__u64 target;              /* 0: find the nearest policy */
	__u64 found_id;            /* the cgroup the walk stopped at; 0: none */
	struct ka_policy *policy;  /* its policy, for a nearest-policy walk */
};

static long walk_step(__u64 index, void *ctx)
{
	struct ka_walk *w = ctx;
	struct cgroup *cgrp = w->cgrp;
	struct cgroup_subsys_state *parent;
	__u64 id;

	if (!cgrp)
		return 1;
	id = cgrp->kn->id;
	if (w->target) {
		if (id == w->target) {
			w->found_id = id;
			return 1;
		}
	} else {
		w->policy = bpf_map_lookup_elem(&ka_policies_v3, &id);
		if (w->policy) {
			w->found_id = id;
			return 1;
		}
	}
	parent = cgrp->self.parent;
	w->cgrp = parent ? parent->cgroup : NULL;
	return 0;
}

static __always_inline void walk_up(struct ka_walk *w)
{
	if (w->cgrp)
		bpf_loop(w->cgrp->level + 1, walk_step, w, 0);
}

/*
 * Nearest policy from `cgrp` upwards, and the id of the cgroup that has it.
 * The first step is taken before the loop: most sockets live in the very
 * cgroup that has the policy (a service's own), and need no more.
 */
static __always_inline struct ka_policy *nearest_policy_from(struct cgroup *cgrp, __u64 *policy_cgroup_id)
{
	struct ka_walk w = { .cgrp = cgrp };

	if (!cgrp)
		return NULL;
	w.found_id = cgrp->kn->id;
	w.policy = bpf_map_lookup_elem(&ka_policies_v3, &w.found_id);
	if (!w.policy) {
		w.found_id = 0;
		w.cgrp = cgrp->self.parent ? cgrp->self.parent->cgroup : NULL;
		walk_up(&w);
	}
	*policy_cgroup_id = w.found_id;
	return w.found_id ? w.policy : NULL;
}

/* Nearest policy for a socket, from its own cgroup (sk_cgrp_data) upwards. */
static __always_inline struct ka_policy *nearest_policy(struct tcp_sock *tp, __u64 *policy_cgroup_id)
{
	return nearest_policy_from(socket_cgroup(tp), policy_cgroup_id);
}

/* Whether the socket's cgroup is `top` or below it. */
static __always_inline bool in_subtree(struct tcp_sock *tp, __u64 top)
{
	struct ka_walk w = { .cgrp = socket_cgroup(tp), .target = top };

	walk_up(&w);
	return w.found_id != 0;
}

/* The probe count a socket has now: its own, or its network namespace's default. */
static __always_inline int keepcnt_in_force(struct tcp_sock *tp)
{
	return tp->keepalive_probes ? tp->keepalive_probes :
	       tp->inet_conn.icsk_inet.sk.__sk_common.skc_net.net->ipv4.sysctl_tcp_keepalive_probes;
}

/*
 * SYN count and MSS act before the handshake: only for a connecting socket.
 * SO_KEEPALIVE comes last: it arms the keepalive timer, and TCP_KEEPIDLE set
 * after it would re-arm it. A count or user timeout the socket has already
 * (the default policy's 9 probes are the kernel's default) is not set again:
 * each bpf_setsockopt costs. Idle and interval are always set: a socket being
 * configured has the namespace's (0 in the socket), not a policy's.
 */
static __always_inline void apply_policy(void *ctx, struct tcp_sock *tp, const struct ka_policy *p, bool connecting)
{
	if (p->keepidle)
		set_opt(ctx, KA_OPT_KEEPIDLE, SOL_TCP, TCP_KEEPIDLE, p->keepidle);
	if (p->keepintvl)
		set_opt(ctx, KA_OPT_KEEPINTVL, SOL_TCP, TCP_KEEPINTVL, p->keepintvl);
	if (p->keepcnt && p->keepcnt != keepcnt_in_force(tp))
		set_opt(ctx, KA_OPT_KEEPCNT, SOL_TCP, TCP_KEEPCNT, p->keepcnt);
	if (p->user_timeout && (__u32)p->user_timeout != tp->inet_conn.icsk_user_timeout)
		set_opt(ctx, KA_OPT_USER_TIMEOUT, SOL_TCP, TCP_USER_TIMEOUT, p->user_timeout);
	if (p->window_clamp)
		set_opt(ctx, KA_OPT_WINDOW_CLAMP, SOL_TCP, TCP_WINDOW_CLAMP, p->window_clamp);
	if (connecting && p->syncnt)
		set_opt(ctx, KA_OPT_SYNCNT, SOL_TCP, TCP_SYNCNT, p->syncnt);
	if (connecting && p->maxseg)
		set_opt(ctx, KA_OPT_MAXSEG, SOL_TCP, TCP_MAXSEG, p->maxseg);
	set_opt(ctx, KA_OPT_KEEPALIVE, SOL_SOCKET, SO_KEEPALIVE, 1);
}

/* Names a socket for a record. The local port comes from inet_sport, not
 * skc_num: tcp_done releases the port (zeroes skc_num) before a dead
 * connection's error is reported. */
static __always_inline void identify(struct ka_socket_id *id, struct tcp_sock *tp)
{
	struct sock *sk = &tp->inet_conn.icsk_inet.sk;
	struct sock_common *skc = &sk->__sk_common;

	id->cgroup_id = socket_cgroup(tp)->kn->id;
	id->inode = sk->sk_socket && sk->sk_socket->file ? sk->sk_socket->file->f_inode->i_ino : 0;
	id->family = skc->skc_family;
	id->local_port = bpf_ntohs(tp->inet_conn.icsk_inet.inet_sport);
	id->remote_port = bpf_ntohs(skc->skc_dport);
	if (id->family == AF_INET) {
		__builtin_memcpy(id->local_addr, &skc->skc_rcv_saddr, 4);
		__builtin_memcpy(id->remote_addr, &skc->skc_daddr, 4);
	} else {
		__builtin_memcpy(id->local_addr, &skc->skc_v6_rcv_saddr, 16);
		__builtin_memcpy(id->remote_addr, &skc->skc_v6_daddr, 16);
	}
}

static __always_inline bool keepalive_on(struct tcp_sock *tp)
{
	return (tp->inet_conn.icsk_inet.sk.__sk_common.skc_flags >> SOCK_KEEPOPEN) & 1;
}

#endif

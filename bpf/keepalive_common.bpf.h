/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What keepalive's BPF programs share: the maps (identical definitions, so a
 * later object can reuse the pinned ones), the nearest-policy lookup and the
 * code that applies a policy.
 */
#ifndef KEEPALIVE_COMMON_BPF_H
#define KEEPALIVE_COMMON_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
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

static __always_inline void count_configured(const struct ka_policy *policy)
{
	__u32 slot = policy->slot;
	__u64 *configured = bpf_map_lookup_elem(&ka_sockets, &slot);

	if (configured)
		__sync_fetch_and_add(configured, 1);
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

static __always_inline struct cgroup *parent_cgroup(struct cgroup *cgrp)
{
	struct cgroup_subsys_state *parent = cgrp->self.parent;

	return parent ? parent->cgroup : NULL;
}

/* Nearest policy from `cgrp` upwards: one lookup per level. */
static __always_inline struct ka_policy *nearest_policy_from(struct cgroup *cgrp)
{
	for (int level = 0; level < KA_MAX_CGROUP_DEPTH && cgrp; level++) {
		__u64 id = cgrp->kn->id;
		struct ka_policy *policy = bpf_map_lookup_elem(&ka_policies, &id);

		if (policy)
			return policy;
		cgrp = parent_cgroup(cgrp);
	}
	return NULL;
}

/* Nearest policy for a socket, from its own cgroup (sk_cgrp_data) upwards. */
static __always_inline struct ka_policy *nearest_policy(struct tcp_sock *tp)
{
	return nearest_policy_from(socket_cgroup(tp));
}

/*
 * SYN count and MSS act before the handshake: only for a connecting socket.
 * SO_KEEPALIVE comes last: it arms the keepalive timer, and TCP_KEEPIDLE set
 * after it would re-arm it.
 */
static __always_inline void apply_policy(void *ctx, const struct ka_policy *p, bool connecting)
{
	if (p->keepidle)
		set_opt(ctx, KA_OPT_KEEPIDLE, SOL_TCP, TCP_KEEPIDLE, p->keepidle);
	if (p->keepintvl)
		set_opt(ctx, KA_OPT_KEEPINTVL, SOL_TCP, TCP_KEEPINTVL, p->keepintvl);
	if (p->keepcnt)
		set_opt(ctx, KA_OPT_KEEPCNT, SOL_TCP, TCP_KEEPCNT, p->keepcnt);
	if (p->user_timeout)
		set_opt(ctx, KA_OPT_USER_TIMEOUT, SOL_TCP, TCP_USER_TIMEOUT, p->user_timeout);
	if (p->window_clamp)
		set_opt(ctx, KA_OPT_WINDOW_CLAMP, SOL_TCP, TCP_WINDOW_CLAMP, p->window_clamp);
	if (connecting && p->syncnt)
		set_opt(ctx, KA_OPT_SYNCNT, SOL_TCP, TCP_SYNCNT, p->syncnt);
	if (connecting && p->maxseg)
		set_opt(ctx, KA_OPT_MAXSEG, SOL_TCP, TCP_MAXSEG, p->maxseg);
	set_opt(ctx, KA_OPT_KEEPALIVE, SOL_SOCKET, SO_KEEPALIVE, 1);
}

#endif

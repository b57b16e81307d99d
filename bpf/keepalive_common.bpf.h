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
#include <bpf/bpf_core_read.h>
#include "keepalive_policy.h"
#include "keepalive_kfuncs.bpf.h"

/* What vmlinux.h cannot carry (preprocessor constants of the UAPI headers);
 * IPPROTO_TCP and SOCK_STREAM are enums, and come from it. */
#define AF_INET       2
#define ETIMEDOUT     110
#define ECONNRESET    104
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

/*
 * Counters, one copy per CPU (no cache line is shared between CPUs), in
 * chunks of KA_COUNTER_CHUNK slots: a per-CPU array that userspace makes
 * when a slot in it is first taken and puts in an array of maps, so that
 * their memory grows with the policies in force, not with KA_MAX_POLICIES
 * times the CPUs. Both lookups are of arrays, which the verifier inlines;
 * a grace period is paid per chunk made, not per policy.
 */
struct ka_counter_chunk {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KA_COUNTER_CHUNK);
	__type(key, __u32);
	__uint(value_size, sizeof(struct ka_counters));  /* clang leaves a type named only here undefined in BTF */
};

/* policy's slot -> its counters, in the chunk at slot / KA_COUNTER_CHUNK. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, KA_MAX_POLICIES / KA_COUNTER_CHUNK);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct ka_counter_chunk);
} ka_counters_v4 SEC(".maps");

/* option -> failed bpf_setsockopt calls, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KA_OPT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ka_errors SEC(".maps");

/* cgroup id -> the rules of the policy there (KA_POLICY_HAS_RULES). Written
 * by userspace only; allocated per entry, only for policies with rules. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, KA_MAX_RULE_SETS);
	__type(key, __u64);
	__type(value, struct ka_rule_set);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ka_rules SEC(".maps");

/*
 * A rule set alone, in a single-entry array made for each set written: a set
 * (8 kB) is replaced by swapping its map whole, so a reader never sees half
 * of one, and its memory is taken only for the sets in force. Its value has
 * no BTF type, as the cells userspace makes have none: Linux 6.1 refuses an
 * inner map whose BTF-derived fields (the timer's offset) differ from its
 * template's (EINVAL).
 */
struct ka_rule_set_cell {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__uint(value_size, sizeof(struct ka_rule_set));
};

/* rule slot -> the rule set there: for a policy with KA_POLICY_RULES_AT_SLOT,
 * the programs find its rules by two array lookups, which the verifier
 * inlines, instead of a hash lookup by cgroup id (ka_rules) on every
 * connection. Written by userspace only, after ka_rules. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, KA_MAX_RULE_SETS);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct ka_rule_set_cell);
} ka_rule_sets SEC(".maps");

/* rule set slot * KA_MAX_RULES + rule -> its counters, in chunks as ka_counters_v4. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, KA_MAX_RULE_SETS * KA_MAX_RULES / KA_COUNTER_CHUNK);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct ka_counter_chunk);
} ka_rule_counters_v4 SEC(".maps");

_Static_assert(KA_MAX_POLICIES % KA_COUNTER_CHUNK == 0 && (KA_MAX_RULE_SETS * KA_MAX_RULES) % KA_COUNTER_CHUNK == 0,
	       "whole chunks");

static __always_inline void count_error(__u32 option)
{
	__u64 *errors = bpf_map_lookup_elem(&ka_errors, &option);

	if (errors)
		*errors += 1;
}

/* The counters at `slot` of a map of chunks; NULL while its chunk is not there. */
static __always_inline struct ka_counters *counter_at(void *chunks, __u32 slot)
{
	__u32 chunk = slot / KA_COUNTER_CHUNK, index = slot % KA_COUNTER_CHUNK;
	void *counters = bpf_map_lookup_elem(chunks, &chunk);

	return counters ? bpf_map_lookup_elem(counters, &index) : NULL;
}

static __always_inline struct ka_counters *counters_of(const struct ka_policy *policy)
{
	return counter_at(&ka_counters_v4, policy->slot);
}

/* `ctx` is what bpf_setsockopt takes in the calling program: sock_ops or a socket. */
static __always_inline void set_opt(void *ctx, __u32 option, int level, int optname, int value)
{
	if (bpf_setsockopt(ctx, level, optname, &value, sizeof(value)))
		count_error(option);
}

/*
 * Which build of a program this is: each program is compiled once per build
 * (a constant argument of its body, so the compiler keeps only that build's
 * code), and userspace loads the first build this kernel can run
 * (KernelFeatures.swift):
 *
 *   KA_BUILD_CAST     the full build, whose sock_ops program reads the socket
 *                     through bpf_rdonly_cast (Linux 6.2); sock_ops only: the
 *                     other programs take the full build's
 *   KA_BUILD_FULL     walks with bpf_loop (Linux 5.17): any depth; rules
 *   KA_BUILD_BOUNDED  walks with a bounded loop of KA_BOUNDED_DEPTH steps; rules
 *   KA_BUILD_BASIC    the bounded walk, no rules (their matching is two global
 *                     functions with pointer arguments: Linux 5.12)
 */
enum ka_build {
	KA_BUILD_CAST,
	KA_BUILD_FULL,
	KA_BUILD_BOUNDED,
	KA_BUILD_BASIC,
};

static __always_inline bool build_has_rules(enum ka_build build)
{
	return build != KA_BUILD_BASIC;
}

static __always_inline bool build_walks_with_loop(enum ka_build build)
{
	return build == KA_BUILD_CAST || build == KA_BUILD_FULL;
}

/*
 * The TCP socket of a sock_ops call, or NULL: a full socket of protocol TCP,
 * as bpf_skc_to_tcp_sock tests. That helper is a call, and a call costs tens
 * of nanoseconds on every connection (return thunks: spectre mitigations);
 * the cast costs none, and its pointer is read as the helper's is, through
 * loads the kernel makes fault-tolerant.
 */
static __always_inline struct tcp_sock *sockops_tcp_sock(struct bpf_sock_ops *skops, enum ka_build build)
{
	struct bpf_sock *sk = skops->sk;

	if (!sk)
		return NULL;
	if (build != KA_BUILD_CAST)
		return bpf_skc_to_tcp_sock(sk);
	if (!skops->is_fullsock || sk->protocol != IPPROTO_TCP)
		return NULL;
	return bpf_rdonly_cast(sk, bpf_core_type_id_kernel(struct tcp_sock));
}

/*
 * Before Linux 5.15, a socket's cgroup was not a member of its own but the
 * value of sock_cgroup_data (a pointer, or net_prio/net_cls data when those
 * cgroup v1 controllers are in use: the socket then counts as the root's);
 * and a cgroup kept its ancestors' ids (ancestor_ids[level], its own last)
 * until Linux 6.0. The walk reads them with bpf_probe_read_kernel there.
 * CO-RE decides at load which of the two a kernel has; the other is dead code.
 */
struct sock_cgroup_data___legacy {
	__u64 val;
} __attribute__((preserve_access_index));

struct cgroup___legacy {
	int level;
	__u64 ancestor_ids[];
} __attribute__((preserve_access_index));

static __always_inline bool socket_cgroup_is_member(struct tcp_sock *tp)
{
	return bpf_core_field_exists(tp->inet_conn.icsk_inet.sk.sk_cgrp_data.cgroup);
}

/* The socket's own cgroup (sk_cgrp_data, through BTF), where it is a member. */
static __always_inline struct cgroup *socket_cgroup(struct tcp_sock *tp)
{
	return tp->inet_conn.icsk_inet.sk.sk_cgrp_data.cgroup;
}

/* The socket's cgroup as the legacy value holds it; 0 for the root's. */
static __always_inline __u64 legacy_socket_cgroup(struct tcp_sock *tp)
{
	struct sock_cgroup_data___legacy *data = (void *)&tp->inet_conn.icsk_inet.sk.sk_cgrp_data;
	__u64 value = BPF_CORE_READ(data, val);

	return value & 3 ? 0 : value;
}

/* The id of the ancestor at `level` of a legacy cgroup (its own at its level). */
static __always_inline __u64 legacy_ancestor_id(__u64 cgrp, int level)
{
	struct cgroup___legacy *c = (void *)cgrp;
	__u64 id = 0;

	bpf_probe_read_kernel(&id, sizeof(id), &c->ancestor_ids[level]);
	return id;
}

/*
 * A walk from a cgroup up to the root: it stops at the first cgroup that has
 * a policy, or, with `target` set, at the cgroup of that id.
 */
struct ka_walk {
	struct cgroup *cgrp;       /* the next cgroup to look at */
	__u64 target;              /* 0: find the nearest policy */
	__u64 found_id;            /* the cgroup the walk stopped at; 0: none */
	struct ka_policy *policy;  /* its policy, for a nearest-policy walk */
};

/* The walk's test at the cgroup `id`: true to stop there. */
static __always_inline bool walk_stops_at(struct ka_walk *w, __u64 id)
{
	if (w->target ? id != w->target : !(w->policy = bpf_map_lookup_elem(&ka_policies_v3, &id)))
		return false;
	w->found_id = id;
	return true;
}

/* One step up: 1 when the walk is over. */
static __always_inline long walk_visit(struct ka_walk *w)
{
	struct cgroup *cgrp = w->cgrp;
	struct cgroup_subsys_state *parent;

	if (!cgrp || walk_stops_at(w, cgrp->kn->id))
		return 1;
	parent = cgrp->self.parent;
	w->cgrp = parent ? parent->cgroup : NULL;
	return 0;
}

static long walk_step(__u64 index, void *ctx)
{
	return walk_visit(ctx);
}

/*
 * The walk from w->cgrp: at most its depth + 1 steps with bpf_loop, so no
 * depth is out of reach; else at most KA_BOUNDED_DEPTH (the callers look at
 * the socket's own cgroup first: a policy up to KA_BOUNDED_DEPTH levels up).
 */
static __always_inline void walk_up(struct ka_walk *w, enum ka_build build)
{
	if (!w->cgrp)
		return;
	if (build_walks_with_loop(build)) {
		bpf_loop(w->cgrp->level + 1, walk_step, w, 0);
		return;
	}
	for (int i = 0; i < KA_BOUNDED_DEPTH; i++)
		if (walk_visit(w))
			return;
}

/* The same walk over a legacy cgroup's ancestor ids, from its own up: its
 * own and KA_BOUNDED_DEPTH levels up, as the walk above. */
static __always_inline void walk_up_legacy(struct ka_walk *w, __u64 cgrp)
{
	int level;

	if (!cgrp)
		return;
	level = BPF_CORE_READ((struct cgroup___legacy *)cgrp, level);
	for (int i = 0; i <= KA_BOUNDED_DEPTH && i <= level; i++)
		if (walk_stops_at(w, legacy_ancestor_id(cgrp, level - i)))
			return;
}

/*
 * Nearest policy from `cgrp` upwards, and the id of the cgroup that has it.
 * The first step is taken before the loop: most sockets live in the very
 * cgroup that has the policy (a service's own), and need no more.
 */
static __always_inline struct ka_policy *nearest_policy_from(struct cgroup *cgrp, __u64 *policy_cgroup_id,
							     enum ka_build build)
{
	struct ka_walk w = { .cgrp = cgrp };

	if (!cgrp)
		return NULL;
	w.found_id = cgrp->kn->id;
	w.policy = bpf_map_lookup_elem(&ka_policies_v3, &w.found_id);
	if (!w.policy) {
		w.found_id = 0;
		w.cgrp = cgrp->self.parent ? cgrp->self.parent->cgroup : NULL;
		walk_up(&w, build);
	}
	*policy_cgroup_id = w.found_id;
	return w.found_id ? w.policy : NULL;
}

/* Nearest policy for a socket, from its own cgroup (sk_cgrp_data) upwards. */
static __always_inline struct ka_policy *nearest_policy(struct tcp_sock *tp, __u64 *policy_cgroup_id,
							enum ka_build build)
{
	struct ka_walk w = {};

	if (socket_cgroup_is_member(tp))
		return nearest_policy_from(socket_cgroup(tp), policy_cgroup_id, build);
	walk_up_legacy(&w, legacy_socket_cgroup(tp));
	*policy_cgroup_id = w.found_id;
	return w.found_id ? w.policy : NULL;
}

/* Whether the socket's cgroup is `top` or below it. */
static __always_inline bool in_subtree(struct tcp_sock *tp, __u64 top, enum ka_build build)
{
	struct ka_walk w = { .target = top };

	if (socket_cgroup_is_member(tp)) {
		w.cgrp = socket_cgroup(tp);
		walk_up(&w, build);
	} else {
		walk_up_legacy(&w, legacy_socket_cgroup(tp));
	}
	return w.found_id != 0;
}

/* The id of the socket's own cgroup (the root's, 1, where it counts as the root's). */
static __always_inline __u64 socket_cgroup_id(struct tcp_sock *tp)
{
	__u64 cgrp;

	if (socket_cgroup_is_member(tp))
		return socket_cgroup(tp)->kn->id;
	cgrp = legacy_socket_cgroup(tp);
	return cgrp ? legacy_ancestor_id(cgrp, BPF_CORE_READ((struct cgroup___legacy *)cgrp, level)) : 1;
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
/*
 * `exact`: a rule's values, whose user_timeout 0 means none, set as such:
 * an accepted socket holds its listener's (the policy's) until then.
 */
static __always_inline void apply_values(void *ctx, struct tcp_sock *tp, const struct ka_values *v, bool connecting,
					 bool exact)
{
	if (v->keepidle)
		set_opt(ctx, KA_OPT_KEEPIDLE, SOL_TCP, TCP_KEEPIDLE, v->keepidle);
	if (v->keepintvl)
		set_opt(ctx, KA_OPT_KEEPINTVL, SOL_TCP, TCP_KEEPINTVL, v->keepintvl);
	if (v->keepcnt && v->keepcnt != keepcnt_in_force(tp))
		set_opt(ctx, KA_OPT_KEEPCNT, SOL_TCP, TCP_KEEPCNT, v->keepcnt);
	if ((v->user_timeout || exact) && (__u32)v->user_timeout != tp->inet_conn.icsk_user_timeout)
		set_opt(ctx, KA_OPT_USER_TIMEOUT, SOL_TCP, TCP_USER_TIMEOUT, v->user_timeout);
	if (v->window_clamp)
		set_opt(ctx, KA_OPT_WINDOW_CLAMP, SOL_TCP, TCP_WINDOW_CLAMP, v->window_clamp);
	if (connecting && v->syncnt)
		set_opt(ctx, KA_OPT_SYNCNT, SOL_TCP, TCP_SYNCNT, v->syncnt);
	if (connecting && v->maxseg)
		set_opt(ctx, KA_OPT_MAXSEG, SOL_TCP, TCP_MAXSEG, v->maxseg);
	set_opt(ctx, KA_OPT_KEEPALIVE, SOL_SOCKET, SO_KEEPALIVE, 1);
}

/* A connection as the rules see it: the remote address (IPv6, IPv4 as
 * v4-mapped) and both ports. */
struct ka_peer {
	__u64 addr[2];
	__u16 remote_port;
	__u16 local_port;
};

/* The remote address as rules see it: IPv6, IPv4 as v4-mapped. */
static __always_inline void set_peer_address(struct ka_peer *peer, __u32 family, __u32 v4, const __u32 *v6)
{
	__u32 mapped[4] = { 0, 0, bpf_htonl(0xffff), v4 };

	__builtin_memcpy(peer->addr, family == AF_INET ? mapped : v6, 16);
}

static __always_inline void peer_of(struct ka_peer *peer, struct tcp_sock *tp)
{
	struct sock_common *skc = &tp->inet_conn.icsk_inet.sk.__sk_common;
	__u32 v6[4];

	__builtin_memcpy(v6, &skc->skc_v6_daddr, 16);
	set_peer_address(peer, skc->skc_family, skc->skc_daddr, v6);
	peer->remote_port = bpf_ntohs(skc->skc_dport);
	peer->local_port = bpf_ntohs(tp->inet_conn.icsk_inet.inet_sport);
}

static __always_inline bool port_listed(const __u16 *ports, __u32 count, __u16 port)
{
	for (__u32 i = 0; i < KA_RULE_MAX_PORTS && i < count; i++)
		if (ports[i] == port)
			return true;
	return false;
}

static __always_inline bool at_most(const struct ka_address *bound, __u64 high, __u64 low)
{
	return bound->high < high || (bound->high == high && bound->low <= low);
}

/* The rules whose remote holds the peer's address (bit r for rule r): the
 * last bound at most the address, by halving steps over all KA_RULE_BOUNDS
 * entries (the padding makes a count unnecessary). */
static __always_inline __u32 rules_covering(const struct ka_rule_set *set, const struct ka_peer *peer)
{
	__u64 high = bpf_be64_to_cpu(peer->addr[0]), low = bpf_be64_to_cpu(peer->addr[1]);
	__u32 at = 0;

	if (!at_most(&set->bounds[0], high, low))
		return 0;
	for (__u32 step = KA_RULE_BOUNDS / 2; step; step >>= 1)
		if (at_most(&set->bounds[(at + step) & (KA_RULE_BOUNDS - 1)], high, low))
			at += step;
	return set->covered[at & (KA_RULE_BOUNDS - 1)];
}

/* Whether a connection's ports are in a rule's lists. Global, as
 * matching_rule: the verifier checks its loops once, not for each rule. */
__attribute__((noinline)) int ports_match(const struct ka_rule *rule, const struct ka_peer *peer)
{
	if (!rule || !peer)
		return 0;
	if (rule->remote_port_count && !port_listed(rule->remote_ports, rule->remote_port_count, peer->remote_port))
		return 0;
	if (rule->local_port_count && !port_listed(rule->local_ports, rule->local_port_count, peer->local_port))
		return 0;
	return 1;
}

/* The first rule that matches the connection, or KA_MAX_RULES for none: the
 * rules whose remote holds the address, or that have none, in order, the
 * first whose ports match. A fixed bound, no allocation. A global function:
 * the verifier checks it once for its argument types instead of once per
 * caller and path (tens of thousands of instructions fewer to verify, at
 * every load), and a BPF call costs a few nanoseconds, only for policies
 * that have rules. */
__attribute__((noinline)) __u32 matching_rule(const struct ka_rule_set *set, const struct ka_peer *peer)
{
	__u32 candidates;

	if (!set || !peer)
		return KA_MAX_RULES;
	candidates = rules_covering(set, peer) | set->unrestricted;
	if (set->count < KA_MAX_RULES)
		candidates &= (1u << set->count) - 1;  /* never a zeroed rule past the last */
	for (__u32 i = 0; i < KA_MAX_RULES && candidates >> i; i++)
		if ((candidates >> i) & 1 && ports_match(&set->rules[i], peer))
			return i;
	return KA_MAX_RULES;
}

/* Rule `index` of a set, or NULL for none. Bounded again here, after the
 * call: the verifier knows nothing of what a global function returns. */
static __always_inline const struct ka_rule *rule_at(const struct ka_rule_set *set, __u32 index)
{
	if (index >= KA_MAX_RULES)
		return NULL;
	barrier_var(index);  /* keeps the mask below, which the check above makes redundant to clang */
	return &set->rules[index & (KA_MAX_RULES - 1)];
}

/* The rules of a policy that has them, in a build that has rules; else
 * NULL. At the policy's rule slot; through ka_rules for a record an older
 * binary wrote, or while the slot is empty (a removal under way, an
 * outside hand). */
static __always_inline const struct ka_rule_set *rules_of(const struct ka_policy *policy, __u64 policy_cgroup_id,
							   enum ka_build build)
{
	__u32 slot = KA_POLICY_RULE_SLOT(policy->flags), first = 0;
	void *cell;

	if (!build_has_rules(build) || !(policy->flags & KA_POLICY_HAS_RULES))
		return NULL;
	if (policy->flags & KA_POLICY_RULES_AT_SLOT && (cell = bpf_map_lookup_elem(&ka_rule_sets, &slot)))
		return bpf_map_lookup_elem(cell, &first);
	return bpf_map_lookup_elem(&ka_rules, &policy_cgroup_id);
}

/* What a connection to `peer` gets under a policy and its rules: the rule
 * that matches it (its index in *rule, its counters in *counters), or the
 * policy's own values (*rule = KA_MAX_RULES). NULL for a rule that leaves
 * the socket alone. */
static __always_inline const struct ka_values *
values_for_peer(const struct ka_policy *policy, const struct ka_rule_set *set, const struct ka_peer *peer,
		__u32 *rule, struct ka_counters **counters)
{
	const struct ka_rule *matched;

	*rule = matching_rule(set, peer);
	matched = rule_at(set, *rule);
	if (!matched) {
		*rule = KA_MAX_RULES;
		return &policy->values;
	}
	*counters = counter_at(&ka_rule_counters_v4, KA_RULE_SET_SLOT(set->slot) * KA_MAX_RULES + *rule);
	return matched->flags & KA_RULE_OFF ? NULL : &matched->values;
}

/* The same for a connection of the policy's subtree (its peer made only
 * where the policy has rules). */
static __always_inline const struct ka_values *
values_for(const struct ka_policy *policy, __u64 policy_cgroup_id, struct tcp_sock *tp, __u32 *rule,
	   struct ka_counters **counters, enum ka_build build)
{
	const struct ka_rule_set *set = rules_of(policy, policy_cgroup_id, build);
	struct ka_peer peer;

	*rule = KA_MAX_RULES;
	*counters = NULL;
	if (!set)
		return &policy->values;
	peer_of(&peer, tp);
	return values_for_peer(policy, set, &peer, rule, counters);
}

/* Names a socket for a record. The local port comes from inet_sport, not
 * skc_num: tcp_done releases the port (zeroes skc_num) before a dead
 * connection's error is reported. */
static __always_inline void identify(struct ka_socket_id *id, struct tcp_sock *tp)
{
	struct sock *sk = &tp->inet_conn.icsk_inet.sk;
	struct sock_common *skc = &sk->__sk_common;

	id->cgroup_id = socket_cgroup_id(tp);
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

// SPDX-License-Identifier: GPL-2.0-only
/*
 * keepalive's programs:
 *
 * keepalive_sockops gives every TCP socket of a covered cgroup the keepalive
 * policy of its nearest ancestor cgroup that has one. It runs on connect
 * (before the SYN), on accept (passive established) and on listen, and always
 * returns 1: a socket is never refused.
 *
 * keepalive_setsockopt is attached only where a policy takes precedence over
 * the program: it rewrites the program's own keepalive setsockopt calls to the
 * policy's values, and the calls still succeed.
 *
 * keepalive_reaped runs only when a socket reports an error, never on connect,
 * accept or data: it counts and records the covered connections the kernel
 * ended because the peer stopped answering.
 *
 * Under a policy that observes paths, keepalive_sockops also runs on each
 * segment its connections send (nowhere else: the callback is asked for per
 * socket), to see the idle gaps they cross and whether the peer answered
 * after them, and keepalive_reaped sees the ones they die of (ka_paths).
 *
 * Each is compiled in three builds (enum ka_build: keepalive_sockops,
 * keepalive_sockops_bounded, keepalive_sockops_basic, ...); userspace loads
 * one, the first this kernel can run.
 */
#include "keepalive_common.bpf.h"
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

/* Which release of the programs this is: recorded in ka_meta when pinned. */
#ifndef KA_PROGRAM_VERSION
#error "KA_PROGRAM_VERSION: the build gives it, from debian/changelog"
#endif
const volatile __u32 ka_program_version = KA_PROGRAM_VERSION;

/* The state's identity and change counter (written by userspace). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ka_meta);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ka_meta SEC(".maps");

/* The last KA_EVENTS_MAX reaped connections, and the number of the next one. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, KA_EVENTS_MAX);
	__type(key, __u32);
	__type(value, struct ka_event);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ka_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ka_events_head SEC(".maps");

/* Paths' idle gaps, survived and died of, for policies that observe them.
 * LRU: preallocated (tracing programs may update it on every kernel), and
 * the paths seen least recently make room for new ones. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, KA_PATHS_MAX);
	__type(key, struct ka_path_key);
	__type(value, struct ka_path);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ka_paths SEC(".maps");

/* An observed connection's last segment and the idle gap it waits on. */
struct ka_observed {
	__u32 last_sent;       /* jiffies: our previous segment; 0: none seen */
	__u32 last_received;   /* the peer's last packet, as it was then */
	__u32 pending_sent;    /* a segment sent after an idle gap, not answered yet; 0: none */
	__u32 pending_gap_ms;  /* that gap */
};

/* Per observed socket, made at its first segment: only policies that observe
 * pay for it. Not pinned: a program replaced takes the observations of the
 * connections in flight with it, nothing else. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct ka_observed);
} ka_observed SEC(".maps");

/*
 * The kernel's tick rate, set by userspace before the load: keepalive times
 * are kept in jiffies. 0 (unknown) makes every accepted socket configured.
 */
const volatile __u32 ka_hz = 0;

/*
 * Whether a socket has these values already: an accepted socket inherits its
 * listener's, which this program set when it listened (unless the program
 * changed them since, or the policy changed, or a rule gives the connection
 * others). Compared in place: no socket storage, whose cloning into every
 * accepted socket would cost an allocation per connection.
 */
static __always_inline bool holds_values(struct tcp_sock *tp, const struct ka_values *v, bool exact)
{
	return ka_hz && keepalive_on(tp) &&
	       (!v->keepidle || tp->keepalive_time == (__u32)v->keepidle * ka_hz) &&
	       (!v->keepintvl || tp->keepalive_intvl == (__u32)v->keepintvl * ka_hz) &&
	       (!v->keepcnt || keepcnt_in_force(tp) == v->keepcnt) &&
	       ((!v->user_timeout && !exact) || tp->inet_conn.icsk_user_timeout == (__u32)v->user_timeout) &&
	       !v->window_clamp;  /* recomputed at the handshake: always set */
}

/* Keepalive off again, and the user timeout, where the policy set one. */
static __always_inline void forget_values(void *ctx, struct tcp_sock *tp, const struct ka_values *v)
{
	set_opt(ctx, KA_OPT_KEEPALIVE, SOL_SOCKET, SO_KEEPALIVE, 0);
	if (v->user_timeout)
		set_opt(ctx, KA_OPT_USER_TIMEOUT, SOL_TCP, TCP_USER_TIMEOUT, 0);
}

/* Whether jiffies `a` come after `b`, across the counter's wrap. */
static __always_inline bool after(__u32 a, __u32 b) { return (__s32)(a - b) > 0; }

/* The peer's last packet (jiffies): an ACK (rcv_tstamp) or data (lrcvtime). */
static __always_inline __u32 last_received(struct tcp_sock *tp)
{
	__u32 ack = tp->rcv_tstamp, data = tp->inet_conn.icsk_ack.lrcvtime;

	return after(data, ack) ? data : ack;
}

static __always_inline __u32 jiffies_to_ms(__u32 jiffies)
{
	return ka_hz ? (__u32)((__u64)jiffies * 1000 / ka_hz) : 0;
}

/*
 * Observed accepted connections carry the state callback, which this program
 * ignores (one call per state change, at the close): the mark that tells them
 * from connections made, whose service is the remote port.
 */
#define KA_ACCEPTED_MARK  BPF_SOCK_OPS_STATE_CB_FLAG

/* A path's record, made empty when it is new; NULL when the map refuses. */
static __always_inline struct ka_path *path_of(struct tcp_sock *tp, __u64 policy_cgroup_id)
{
	struct ka_path_key key = { .policy_cgroup_id = policy_cgroup_id };
	struct ka_path *path, empty = {};
	struct ka_peer peer;

	peer_of(&peer, tp);
	__builtin_memcpy(key.remote_addr, peer.addr, 16);
	key.accepted = tp->bpf_sock_ops_cb_flags & KA_ACCEPTED_MARK ? 1 : 0;
	key.port = key.accepted ? peer.local_port : peer.remote_port;
	path = bpf_map_lookup_elem(&ka_paths, &key);
	if (path)
		return path;
	bpf_map_update_elem(&ka_paths, &key, &empty, BPF_NOEXIST);
	return bpf_map_lookup_elem(&ka_paths, &key);
}

/* A connection crossed an idle gap and the peer answered after it. */
static __always_inline void record_survival(struct tcp_sock *tp, __u64 policy_cgroup_id, __u32 gap_ms)
{
	struct ka_path *path = path_of(tp, policy_cgroup_id);

	if (!path)
		return;
	if (gap_ms > path->alive_max_ms)
		path->alive_max_ms = gap_ms;
	__sync_fetch_and_add(&path->alive_count, 1);
	path->last_boot_ns = bpf_ktime_get_boot_ns();
}

/*
 * An observed connection sends a segment. What the peer sent since our
 * previous one settles the gap that one waited on (an answer: survived),
 * or, unasked for, crossed a gap of its own; this segment waits on the gap
 * before it when that is idleness. A dead connection's waiting gap is what
 * it died of (observe_death). Seen at the segment's header options: the one
 * hook every segment passes, keepalive probes included.
 */
static __always_inline void observe_segment(struct bpf_sock_ops *skops, enum ka_build build)
{
	struct bpf_sock *sk = skops->sk;
	struct ka_policy *policy;
	__u32 now, received, gap = 0;
	__u64 policy_cgroup_id;
	struct ka_observed *o;
	struct tcp_sock *tp;

	if (!skops->skb_tcp_flags || !sk)  /* an MSS computation, not a segment */
		return;
	tp = sockops_tcp_sock(skops, build);
	if (!tp || tp->inet_conn.icsk_inet.sk.__sk_common.skc_state == TCP_SYN_SENT ||
	    tp->inet_conn.icsk_inet.sk.__sk_common.skc_state == TCP_SYN_RECV)
		return;
	o = bpf_sk_storage_get(&ka_observed, sk, NULL, BPF_SK_STORAGE_GET_F_CREATE);
	if (!o)
		return;
	now = (__u32)bpf_jiffies64();
	received = last_received(tp);
	if (o->last_sent && received != o->last_received) {
		if (o->pending_sent && !after(o->pending_sent, received))
			gap = o->pending_gap_ms;
		else if (!o->pending_sent)
			gap = jiffies_to_ms(received - (after(o->last_sent, o->last_received) ? o->last_sent :
											       o->last_received));
		if (!after(o->pending_sent, received))
			o->pending_sent = 0;
		if (gap >= KA_PATH_MIN_GAP_MS && (policy = nearest_policy(tp, &policy_cgroup_id, build)) &&
		    policy->flags & KA_POLICY_OBSERVE_PATHS)
			record_survival(tp, policy_cgroup_id, gap);
	}
	if (o->last_sent && !o->pending_sent) {
		gap = jiffies_to_ms(now - (after(o->last_sent, received) ? o->last_sent : received));
		if (gap >= KA_PATH_MIN_GAP_MS) {
			o->pending_sent = now ? now : 1;
			o->pending_gap_ms = gap;
		}
	}
	o->last_sent = now ? now : 1;
	o->last_received = received;
}

static __always_inline int on_sockops(struct bpf_sock_ops *skops, enum ka_build build)
{
	struct ka_counters *counters, *rule_counters = NULL;
	const struct ka_values *values;
	struct ka_policy *policy;
	__u64 policy_cgroup_id;
	struct tcp_sock *tp;
	__u32 op = skops->op, rule = KA_MAX_RULES;
	bool by_rule;

	if (op == BPF_SOCK_OPS_HDR_OPT_LEN_CB) {
		observe_segment(skops, build);
		return 1;
	}
	if (op != BPF_SOCK_OPS_TCP_CONNECT_CB &&
	    op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB &&
	    op != BPF_SOCK_OPS_TCP_LISTEN_CB)
		return 1;
	tp = sockops_tcp_sock(skops, build);
	if (!tp)
		return 1;
	policy = nearest_policy(tp, &policy_cgroup_id, build);
	if (!policy)
		return 1;
	/* A listener keeps the policy's own values; its connections may match a rule. */
	values = op == BPF_SOCK_OPS_TCP_LISTEN_CB ? &policy->values :
		 values_for(policy, policy_cgroup_id, tp, &rule, &rule_counters, build);
	if (rule_counters)
		rule_counters->configured += 1;
	/* Every segment the connection sends from now on: only where asked for. */
	if (policy->flags & KA_POLICY_OBSERVE_PATHS && op != BPF_SOCK_OPS_TCP_LISTEN_CB)
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG |
						 (op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB ? KA_ACCEPTED_MARK : 0));
	if (policy->flags & KA_POLICY_OBSERVE_ONLY) {  /* counted as it would be set; nothing set */
		if (values && (counters = counters_of(policy)))
			counters->configured += 1;
		return 1;
	}
	if (!values) {  /* keepalive: off */
		/* An accepted socket holds what its listener got from the policy: taken back. */
		if (op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB && holds_values(tp, &policy->values, false))
			forget_values(skops, tp, &policy->values);
		return 1;
	}
	by_rule = rule < KA_MAX_RULES;
	if (op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB || !holds_values(tp, values, by_rule))
		apply_values(skops, tp, values, op == BPF_SOCK_OPS_TCP_CONNECT_CB, by_rule);
	counters = counters_of(policy);
	if (counters)
		counters->configured += 1;
	return 1;
}

SEC("sockops")
int keepalive_sockops_cast(struct bpf_sock_ops *skops) { return on_sockops(skops, KA_BUILD_CAST); }
SEC("sockops")
int keepalive_sockops(struct bpf_sock_ops *skops) { return on_sockops(skops, KA_BUILD_FULL); }
SEC("sockops")
int keepalive_sockops_bounded(struct bpf_sock_ops *skops) { return on_sockops(skops, KA_BUILD_BOUNDED); }
SEC("sockops")
int keepalive_sockops_basic(struct bpf_sock_ops *skops) { return on_sockops(skops, KA_BUILD_BASIC); }

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

/* The value forced for that option; 0 leaves it to the program. */
static __always_inline int forced_value(const struct ka_values *v, int option)
{
	switch (option) {
	case KA_OPT_KEEPALIVE:    return 1;
	case KA_OPT_KEEPIDLE:     return v->keepidle;
	case KA_OPT_KEEPINTVL:    return v->keepintvl;
	case KA_OPT_KEEPCNT:      return v->keepcnt;
	case KA_OPT_USER_TIMEOUT: return v->user_timeout;
	default:                  return 0;
	}
}

/*
 * The values a policy forces on a socket's own setsockopt calls: a connected
 * socket's rule's, if one matches (NULL for keepalive: off), else the
 * policy's. A socket not yet connected, or listening, has no peer to match:
 * the policy's, and connect gives it its rule's afterwards.
 */
static __always_inline const struct ka_values *
forced_values(const struct ka_policy *policy, __u64 policy_cgroup_id, struct bpf_sock *sk, enum ka_build build)
{
	const struct ka_rule_set *set;
	struct ka_counters *counters = NULL;
	struct ka_peer peer;
	__u32 rule;

	if (sk->state == BPF_TCP_CLOSE || sk->state == BPF_TCP_LISTEN)
		return &policy->values;
	set = rules_of(policy, policy_cgroup_id, build);
	if (!set)
		return &policy->values;
	/* Every field read unconditionally, each at its constant offset: read
	 * in branches, clang offsets one pointer, which the verifier refuses
	 * on a bpf_sock. */
	__u32 family = sk->family, ip4 = sk->dst_ip4;
	__u32 v6[4] = { sk->dst_ip6[0], sk->dst_ip6[1], sk->dst_ip6[2], sk->dst_ip6[3] };

	set_peer_address(&peer, family, ip4, v6);
	peer.remote_port = bpf_ntohs(sk->dst_port);
	peer.local_port = sk->src_port;
	return values_for_peer(policy, set, &peer, &rule, &counters);
}

static __always_inline int on_setsockopt(struct bpf_sockopt *ctx, enum ka_build build)
{
	/* Context fields are read once, up front: the verifier refuses loads
	 * through a ctx pointer the compiler has offset later on. */
	int option = keepalive_option(ctx->level, ctx->optname), forced;
	void *optval_end = ctx->optval_end;
	int *optval = ctx->optval;
	int optlen = ctx->optlen;
	struct bpf_sock *sk = ctx->sk;
	const struct ka_values *values;
	struct task_struct *task;
	struct ka_policy *policy;
	__u64 policy_cgroup_id;

	if (option < 0)  /* every other option: no lookup at all */
		return 1;
	if (!sk || sk->protocol != IPPROTO_TCP || sk->type != SOCK_STREAM)
		return 1;
	/* setsockopt runs in the calling process, so its cgroup is the one to
	 * walk (bpf_skc_to_tcp_sock, used by sock_ops, is refused here). */
	task = bpf_get_current_task_btf();
	policy = nearest_policy_from(task->cgroups->dfl_cgrp, &policy_cgroup_id, build);
	if (!policy || !(policy->flags & KA_POLICY_PRECEDENCE_POLICY) || policy->flags & KA_POLICY_OBSERVE_ONLY)
		return 1;
	values = forced_values(policy, policy_cgroup_id, sk, build);
	if (!values)  /* keepalive: off: the program's own calls stand */
		return 1;
	forced = forced_value(values, option);
	/* A value the kernel would refuse stays, so the call fails as it would
	 * without keepalive (EINVAL); so does a buffer shorter than an int. */
	if (!forced || optlen < (int)sizeof(int) || (void *)(optval + 1) > optval_end ||
	    !ka_kernel_accepts(option, *optval))
		return 1;
	*optval = forced;
	/* The kernel then sets the policy's value from this buffer; past a page
	 * it would ignore the buffer and use the program's, unless optlen says
	 * the buffer is this int. */
	ctx->optlen = sizeof(int);
	return 1;
}

SEC("cgroup/setsockopt")
int keepalive_setsockopt(struct bpf_sockopt *ctx) { return on_setsockopt(ctx, KA_BUILD_FULL); }
SEC("cgroup/setsockopt")
int keepalive_setsockopt_bounded(struct bpf_sockopt *ctx) { return on_setsockopt(ctx, KA_BUILD_BOUNDED); }
SEC("cgroup/setsockopt")
int keepalive_setsockopt_basic(struct bpf_sockopt *ctx) { return on_setsockopt(ctx, KA_BUILD_BASIC); }

/* A keepalive time (jiffies) as the socket uses it: its own, or the namespace's default. */
static __always_inline __u32 effective_jiffies(__u32 own, int netns_default)
{
	return own ? own : (__u32)netns_default;
}

static __always_inline void record_reaped(struct tcp_sock *tp, __u64 policy_cgroup_id, __u32 reason, __u32 rule,
					  __u32 idle_gap_ms)
{
	struct inet_connection_sock *icsk = &tp->inet_conn;
	struct sock *sk = &icsk->icsk_inet.sk;
	struct sock_common *skc = &sk->__sk_common;
	struct netns_ipv4 *ipv4 = &skc->skc_net.net->ipv4;
	__u32 zero = 0, slot, now = (__u32)bpf_jiffies64(), last;
	struct ka_event *e;
	__u64 *head, seq;

	head = bpf_map_lookup_elem(&ka_events_head, &zero);
	if (!head)
		return;
	seq = __sync_fetch_and_add(head, 1);
	slot = seq % KA_EVENTS_MAX;
	e = bpf_map_lookup_elem(&ka_events, &slot);
	if (!e)
		return;
	e->seq = 0;  /* readers skip the slot until it is whole again */
	e->boot_ns = bpf_ktime_get_boot_ns();
	e->policy_cgroup_id = policy_cgroup_id;
	identify(&e->socket, tp);
	e->reason = reason;
	last = last_received(tp);
	e->silent_jiffies = now - last;
	e->keepidle_jiffies = effective_jiffies(tp->keepalive_time, ipv4->sysctl_tcp_keepalive_time);
	e->keepintvl_jiffies = effective_jiffies(tp->keepalive_intvl, ipv4->sysctl_tcp_keepalive_intvl);
	e->keepcnt = tp->keepalive_probes ? tp->keepalive_probes : ipv4->sysctl_tcp_keepalive_probes;
	e->user_timeout_ms = icsk->icsk_user_timeout;
	e->rule = rule;
	e->idle_gap_ms = idle_gap_ms;
	__sync_lock_test_and_set(&e->seq, seq + 1);
}

/*
 * A connection died, of a timeout or of a reset: the segment it sent after
 * an idle gap was never answered, and the gap is what it died of, kept
 * among the path's shortest. Dying with no such segment waiting (while
 * busy, or a reset the peer sent unasked) tells nothing of idleness: 0.
 */
static __always_inline __u32 observe_death(struct sock *sk, struct tcp_sock *tp, __u64 policy_cgroup_id, bool reset)
{
	struct ka_observed *o = bpf_sk_storage_get(&ka_observed, sk, NULL, 0);
	struct ka_path *path;
	__u32 entry;

	if (!o || !o->pending_sent || after(last_received(tp), o->pending_sent) ||
	    !(path = path_of(tp, policy_cgroup_id)))
		return 0;
	__sync_fetch_and_add(reset ? &path->resets : &path->timeouts, 1);
	entry = o->pending_gap_ms << 1 | (reset ? KA_PATH_DEATH_RESET : 0);
	for (int i = 0; i < KA_PATH_DEATHS && entry; i++) {  /* insertion: the longest falls off */
		__u32 kept = path->deaths[i];

		if (!kept || entry < kept) {
			path->deaths[i] = entry;
			entry = kept;
		}
	}
	path->last_boot_ns = bpf_ktime_get_boot_ns();
	return o->pending_gap_ms;
}

/*
 * tcp_done_with_error reports ETIMEDOUT once, in timer context, when the
 * keepalive timer gives up on an idle connection or the retransmission timer
 * (user timeout) on unacknowledged data. The write queue is purged by then,
 * but write_seq and snd_una still tell whether data was owed. A reset is
 * reported as ECONNRESET: only observed paths care for it.
 */
static __always_inline int on_error_report(struct sock *sk, enum ka_build build)
{
	struct ka_counters *counters, *rule_counters;
	struct ka_policy *policy;
	__u64 policy_cgroup_id;
	struct tcp_sock *tp;
	__u32 reason, rule, idle_gap_ms = 0;
	int err = sk->sk_err;

	if ((err != ETIMEDOUT && err != ECONNRESET) || sk->sk_protocol != IPPROTO_TCP)
		return 0;
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp || !tp->segs_in)  /* never established: a connect that timed out */
		return 0;
	policy = nearest_policy(tp, &policy_cgroup_id, build);
	if (!policy)
		return 0;
	reason = tp->write_seq != tp->snd_una ? KA_REAPED_USER_TIMEOUT : KA_REAPED_KEEPALIVE;
	if (policy->flags & KA_POLICY_OBSERVE_PATHS)
		idle_gap_ms = observe_death(sk, tp, policy_cgroup_id, err == ECONNRESET);
	if (err != ETIMEDOUT) {  /* a reset: recorded after an idle gap, never counted */
		if (idle_gap_ms) {
			values_for(policy, policy_cgroup_id, tp, &rule, &rule_counters, build);
			record_reaped(tp, policy_cgroup_id, KA_EVENT_RESET, rule < KA_MAX_RULES ? rule + 1 : 0,
				      idle_gap_ms);
		}
		return 0;
	}
	counters = counters_of(policy);
	if (counters)
		counters->reaped[reason] += 1;
	/* The rule is found again from the connection's addresses: the same
	 * test gives the same rule while the policy's rules stay as they were. */
	values_for(policy, policy_cgroup_id, tp, &rule, &rule_counters, build);
	if (rule_counters)
		rule_counters->reaped[reason] += 1;
	record_reaped(tp, policy_cgroup_id, reason, rule < KA_MAX_RULES ? rule + 1 : 0, idle_gap_ms);
	return 0;
}

SEC("tp_btf/inet_sk_error_report")
int BPF_PROG(keepalive_reaped, struct sock *sk) { return on_error_report(sk, KA_BUILD_FULL); }
SEC("tp_btf/inet_sk_error_report")
int BPF_PROG(keepalive_reaped_bounded, struct sock *sk) { return on_error_report(sk, KA_BUILD_BOUNDED); }
SEC("tp_btf/inet_sk_error_report")
int BPF_PROG(keepalive_reaped_basic, struct sock *sk) { return on_error_report(sk, KA_BUILD_BASIC); }

// SPDX-License-Identifier: GPL-2.0-only
/*
 * keepalive's TCP iterator: visits every TCP socket of the reader's network
 * namespace in one pass, in the kernel, without stopping any process. For the
 * sockets of one cgroup subtree it applies the nearest policy (`attach
 * --existing`) and/or reports the values in force (`inspect`).
 *
 * Needs iter/tcp with bpf_setsockopt/bpf_getsockopt (Linux 5.15). Compiled in
 * the three builds of keepalive.bpf.c (enum ka_build); userspace loads one.
 */
#include "keepalive_common.bpf.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ka_iter_config);
} ka_iter_config SEC(".maps");

static __always_inline int get_int(struct sock *sk, int level, int optname)
{
	int value = 0;

	bpf_getsockopt(sk, level, optname, &value, sizeof(value));
	return value;
}

static __always_inline void read_back(struct ka_socket_record *r, struct tcp_sock *tp)
{
	struct sock *sk = &tp->inet_conn.icsk_inet.sk;

	identify(&r->socket, tp);
	r->state = sk->__sk_common.skc_state;
	r->keepalive = keepalive_on(tp);
	r->keepidle = get_int(sk, SOL_TCP, TCP_KEEPIDLE);
	r->keepintvl = get_int(sk, SOL_TCP, TCP_KEEPINTVL);
	r->keepcnt = get_int(sk, SOL_TCP, TCP_KEEPCNT);
	r->user_timeout = get_int(sk, SOL_TCP, TCP_USER_TIMEOUT);
}

static __always_inline int on_tcp_socket(struct bpf_iter__tcp *ctx, enum ka_build build)
{
	struct sock_common *skc = ctx->sk_common;
	struct ka_socket_record record = {};
	struct ka_iter_config *config;
	struct ka_counters *counters;
	struct ka_policy *policy;
	__u64 policy_cgroup_id;
	struct tcp_sock *tp;
	__u32 zero = 0;

	if (!skc)
		return 0;
	tp = bpf_skc_to_tcp_sock(skc);  /* NULL for time-wait and request sockets */
	if (!tp)
		return 0;
	config = bpf_map_lookup_elem(&ka_iter_config, &zero);
	if (!config || !in_subtree(tp, config->cgroup_id, build))
		return 0;
	policy = nearest_policy(tp, &policy_cgroup_id, build);
	if (policy) {
		bool overrides = policy->flags & KA_POLICY_PRECEDENCE_POLICY;
		struct ka_counters *rule_counters = NULL;
		const struct ka_values *values = &policy->values;
		__u32 rule = KA_MAX_RULES;

		record.flags |= KA_SOCKET_HAS_POLICY;
		record.policy_cgroup_id = policy_cgroup_id;
		if (overrides)
			record.flags |= KA_SOCKET_PRECEDENCE_POLICY;
		/* A listener keeps the policy's own values, as on listen. */
		if (tp->inet_conn.icsk_inet.sk.__sk_common.skc_state != TCP_LISTEN) {
			values = values_for(policy, policy_cgroup_id, tp, &rule, &rule_counters, build);
			record.rule = rule < KA_MAX_RULES ? rule + 1 : 0;
		}
		/* Under application precedence a socket whose program turned
		 * keepalive on itself keeps its own values; keepalive: off
		 * leaves every socket as it is. */
		if (policy->flags & KA_POLICY_OBSERVE_ONLY) {
			/* sets nothing, now or later */
		} else if (config->mode == KA_ITER_APPLY && values && !overrides && keepalive_on(tp)) {
			record.flags |= KA_SOCKET_KEPT_OWN;
		} else if (config->mode == KA_ITER_APPLY && values) {
			apply_values(tp, tp, values, false, rule < KA_MAX_RULES);
			counters = counters_of(policy);
			if (counters)
				counters->configured += 1;
			if (rule_counters)
				rule_counters->configured += 1;
			record.flags |= KA_SOCKET_APPLIED;
		}
	}
	read_back(&record, tp);
	bpf_seq_write(ctx->meta->seq, &record, sizeof(record));
	return 0;
}

SEC("iter/tcp")
int keepalive_iter(struct bpf_iter__tcp *ctx) { return on_tcp_socket(ctx, KA_BUILD_FULL); }
SEC("iter/tcp")
int keepalive_iter_bounded(struct bpf_iter__tcp *ctx) { return on_tcp_socket(ctx, KA_BUILD_BOUNDED); }
SEC("iter/tcp")
int keepalive_iter_basic(struct bpf_iter__tcp *ctx) { return on_tcp_socket(ctx, KA_BUILD_BASIC); }

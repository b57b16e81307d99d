// SPDX-License-Identifier: GPL-2.0-only
/*
 * The pinned layout of keepalive 0.1.0 (state layout 1), for the migration
 * test: its three maps exactly as it defined them, and programs of its names
 * that act on its 40-byte records (keepidle and SO_KEEPALIVE only: enough to
 * see which program configured a socket).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

struct layout1_policy {
	__s32 keepidle, keepintvl, keepcnt, user_timeout, syncnt, maxseg, window_clamp;
	__u32 flags, slot, generation;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct layout1_policy);
} ka_policies SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u64);
} ka_sockets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, __u64);
} ka_errors SEC(".maps");

SEC("sockops")
int keepalive_sockops(struct bpf_sock_ops *skops)
{
	struct layout1_policy *policy;
	struct bpf_sock *sk;
	struct tcp_sock *tp;
	__u64 *count, id;
	int on = 1;

	if (skops->op != BPF_SOCK_OPS_TCP_CONNECT_CB && skops->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		return 1;
	sk = skops->sk;
	if (!sk || !(tp = bpf_skc_to_tcp_sock(sk)))
		return 1;
	id = tp->inet_conn.icsk_inet.sk.sk_cgrp_data.cgroup->kn->id;
	policy = bpf_map_lookup_elem(&ka_policies, &id);
	if (!policy)
		return 1;
	bpf_setsockopt(skops, 6 /* SOL_TCP */, 4 /* TCP_KEEPIDLE */, &policy->keepidle, sizeof(int));
	bpf_setsockopt(skops, 1 /* SOL_SOCKET */, 9 /* SO_KEEPALIVE */, &on, sizeof(on));
	count = bpf_map_lookup_elem(&ka_sockets, &policy->slot);
	if (count)
		__sync_fetch_and_add(count, 1);
	return 1;
}

SEC("cgroup/setsockopt")
int keepalive_setsockopt(struct bpf_sockopt *ctx)
{
	return 1;
}

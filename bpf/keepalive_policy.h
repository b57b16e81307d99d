/* SPDX-License-Identifier: MIT */
/*
 * The one place for keepalive's option facts: the policy record shared by the
 * BPF program (bpf/keepalive.bpf.c), the Swift loader (Sources/) and the
 * preload libraries (preload/), and every option's name, default and range.
 *
 * Value convention for every option: 0 leaves the system default in force.
 * KA_USER_TIMEOUT_DERIVED (-1) asks for idle + intvl * cnt, in milliseconds.
 */
#ifndef KEEPALIVE_POLICY_H
#define KEEPALIVE_POLICY_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* Defaults: the seed libkeepalive's. */
#define KA_KEEPIDLE_DEFAULT      15
#define KA_KEEPINTVL_DEFAULT     15
#define KA_KEEPCNT_DEFAULT       9
#define KA_USER_TIMEOUT_DEFAULT  (-1)
#define KA_SYNCNT_DEFAULT        0
#define KA_MAXSEG_DEFAULT        0
#define KA_WINDOW_CLAMP_DEFAULT  0
#define KA_DEFER_ACCEPT_DEFAULT  0

#define KA_USER_TIMEOUT_DERIVED  (-1)

/* Ranges of non-zero values, as the kernel accepts them (net/ipv4/tcp.c). */
#define KA_KEEPIDLE_MIN      1
#define KA_KEEPIDLE_MAX      32767          /* MAX_TCP_KEEPIDLE */
#define KA_KEEPINTVL_MIN     1
#define KA_KEEPINTVL_MAX     32767          /* MAX_TCP_KEEPINTVL */
#define KA_KEEPCNT_MIN       1
#define KA_KEEPCNT_MAX       127            /* MAX_TCP_KEEPCNT */
#define KA_USER_TIMEOUT_MIN  (-1)
#define KA_USER_TIMEOUT_MAX  2147483647
#define KA_SYNCNT_MIN        1
#define KA_SYNCNT_MAX        127            /* MAX_TCP_SYNCNT */
#define KA_MAXSEG_MIN        88             /* TCP_MIN_MSS */
#define KA_MAXSEG_MAX        32767          /* MAX_TCP_WINDOW */
#define KA_WINDOW_CLAMP_MIN  1
#define KA_WINDOW_CLAMP_MAX  2147483647
#define KA_DEFER_ACCEPT_MIN  1
#define KA_DEFER_ACCEPT_MAX  2147483647

/*
 * The kernel's compiled-in keepalive defaults (include/net/tcp.h). A derived
 * user timeout uses them for any of idle/intvl/cnt left at the system default.
 */
#define KA_KERNEL_KEEPIDLE   7200
#define KA_KERNEL_KEEPINTVL  75
#define KA_KERNEL_KEEPCNT    9

/* Option names: preload environment variables and CLI/YAML keys. */
#define KA_KEEPIDLE_ENV      "TCP_KEEPIDLE"
#define KA_KEEPINTVL_ENV     "TCP_KEEPINTVL"
#define KA_KEEPCNT_ENV       "TCP_KEEPCNT"
#define KA_USER_TIMEOUT_ENV  "TCP_USER_TIMEOUT"
#define KA_SYNCNT_ENV        "TCP_SYNCNT"
#define KA_MAXSEG_ENV        "TCP_MAXSEG"
#define KA_WINDOW_CLAMP_ENV  "TCP_WINDOW_CLAMP"
#define KA_DEFER_ACCEPT_ENV  "TCP_DEFER_ACCEPT"
#define KA_DEBUG_ENV         "LIBKEEPALIVE_DEBUG"

#define KA_KEEPIDLE_KEY      "keepidle"
#define KA_KEEPINTVL_KEY     "keepintvl"
#define KA_KEEPCNT_KEY       "keepcnt"
#define KA_USER_TIMEOUT_KEY  "user_timeout"
#define KA_SYNCNT_KEY        "syncnt"
#define KA_MAXSEG_KEY        "maxseg"
#define KA_WINDOW_CLAMP_KEY  "window_clamp"
#define KA_DEFER_ACCEPT_KEY  "defer_accept"

/* Options the BPF program sets, in the order it counts their errors. */
enum ka_bpf_option {
	KA_OPT_KEEPALIVE = 0,   /* SO_KEEPALIVE itself */
	KA_OPT_KEEPIDLE,
	KA_OPT_KEEPINTVL,
	KA_OPT_KEEPCNT,
	KA_OPT_USER_TIMEOUT,
	KA_OPT_SYNCNT,
	KA_OPT_MAXSEG,
	KA_OPT_WINDOW_CLAMP,
	KA_OPT_COUNT,
};

/* Capacity of the pinned maps: policies in force at once. */
#define KA_MAX_POLICIES      65536
/* Cgroup levels the BPF program walks up from a socket's own cgroup. */
#define KA_MAX_CGROUP_DEPTH  32

/* ka_policy.flags */
#define KA_POLICY_USER_TIMEOUT_DERIVED  (1u << 0)  /* user_timeout was -1 */
#define KA_POLICY_AGENT                 (1u << 1)  /* set by the agent's policy file */
#define KA_POLICY_PRECEDENCE_POLICY     (1u << 2)  /* the policy overrides the program's setsockopt */

/* Who wins when a program sets keepalive options itself. */
#define KA_PRECEDENCE_KEY          "precedence"
#define KA_PRECEDENCE_APPLICATION  "application"  /* default: the policy is only the default */
#define KA_PRECEDENCE_POLICY       "policy"

/*
 * A policy in force, keyed by cgroup id (the cgroup directory's inode number)
 * in the "ka_policies" map. Values are resolved: user_timeout is never -1 here.
 */
struct ka_policy {
	__s32 keepidle;
	__s32 keepintvl;
	__s32 keepcnt;
	__s32 user_timeout;
	__s32 syncnt;
	__s32 maxseg;
	__s32 window_clamp;
	__u32 flags;
	__u32 slot;       /* index of this policy's counters in "ka_sockets" */
	__u32 generation; /* new (random) on every change: tells accepted sockets
			     whether their listener had these very values */
};

/* ka_iter_config: what one run of the TCP iterator does (keepalive_iter.bpf.c). */
enum ka_iter_mode {
	KA_ITER_INSPECT = 0,   /* report the subtree's sockets */
	KA_ITER_APPLY   = 1,   /* give them their nearest policy, then report */
};

struct ka_iter_config {
	__u64 cgroup_id;       /* the subtree's top */
	__u32 mode;            /* enum ka_iter_mode */
	__u32 reserved;
};

/* ka_socket_record.flags */
#define KA_SOCKET_APPLIED            (1u << 0)  /* a policy was applied by this run */
#define KA_SOCKET_HAS_POLICY         (1u << 1)  /* some cgroup of the socket has a policy */
#define KA_SOCKET_PRECEDENCE_POLICY  (1u << 2)  /* ... and it takes precedence over the program */

/*
 * One socket of the subtree, as the iterator writes it (binary, in order).
 * Values are read back from the kernel with bpf_getsockopt after any apply.
 */
struct ka_socket_record {
	__u64 cgroup_id;       /* the socket's own cgroup */
	__u64 inode;           /* the socket's inode, to find owning processes */
	__u32 family;          /* AF_INET or AF_INET6 */
	__u32 state;           /* TCP_ESTABLISHED, TCP_LISTEN, ... */
	__u8  local_addr[16];  /* IPv4 in the first 4 bytes */
	__u8  remote_addr[16];
	__u16 local_port;      /* host order */
	__u16 remote_port;     /* host order */
	__u32 flags;           /* KA_SOCKET_* */
	__s32 keepalive;
	__s32 keepidle;
	__s32 keepintvl;
	__s32 keepcnt;
	__s32 user_timeout;
	__u32 reserved;
};

/*
 * The user timeout KA_USER_TIMEOUT_DERIVED stands for, in milliseconds:
 * (idle + intvl * cnt) * 1000, counting the kernel's default for an option
 * left at 0, computed in 64 bits and capped at INT_MAX so it never overflows.
 */
static inline __s32 ka_derived_user_timeout(__s32 idle, __s32 intvl, __s32 cnt)
{
	__s64 seconds = (__s64)(idle ? idle : KA_KERNEL_KEEPIDLE) +
			(__s64)(intvl ? intvl : KA_KERNEL_KEEPINTVL) *
			(__s64)(cnt ? cnt : KA_KERNEL_KEEPCNT);
	__s64 ms = seconds * 1000;

	return ms > KA_USER_TIMEOUT_MAX ? KA_USER_TIMEOUT_MAX : (__s32)ms;
}

#endif /* KEEPALIVE_POLICY_H */

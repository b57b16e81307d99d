/* SPDX-License-Identifier: MIT */
/*
 * The one place for keepalive's shared facts: the records the BPF programs
 * (bpf/), the Swift loader (Sources/) and the preload libraries (preload/)
 * exchange, and every option's name, default and range.
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
#define KA_USER_TIMEOUT_MIN  (-1)           /* -1 is ours (derived); the kernel takes 0.. */
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
#define KA_SO_KEEPALIVE_KEY  "keepalive"       /* SO_KEEPALIVE itself, in error counts */

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

/*
 * Versions of the pinned state. The layout covers every pinned map's type and
 * record: a binary with a newer layout migrates older state in place, and one
 * with an older layout refuses to touch newer state. The program version is
 * the release's (debian/changelog, as major * 10000 + minor * 100 + patch),
 * given by the build as KA_PROGRAM_VERSION and compiled into the object
 * (ka_program_version); any other object replaces the pinned programs on
 * every link in place, an older version is refused.
 * Layout 1 is keepalive 0.1.0's (no ka_meta, policies in "ka_policies"),
 * layout 2 added ka_meta and the path ("ka_policies_v2"), layout 3 the
 * origin ("ka_policies_v3") and rules by destination (ka_rules,
 * ka_rule_counters), layout 4 counters in chunks made as slots are taken
 * ("ka_counters_v4", "ka_rule_counters_v4") instead of per-CPU arrays of
 * every slot.
 */
#define KA_STATE_LAYOUT      4

/* Counters are kept in chunks of this many slots, per CPU, each made when
 * a slot in it is first taken: their memory follows the policies in force
 * (rounded up to a chunk), not the maximum times the CPUs. */
#define KA_COUNTER_CHUNK     256

/* Capacity of the pinned maps: policies in force at once. */
#define KA_MAX_POLICIES      65536
/* A policy's cgroup path below the cgroup2 mount, its NUL included. */
#define KA_CGROUP_PATH_MAX   512
/*
 * How far the programs walk up from a socket's cgroup to find its policy on a
 * kernel without bpf_loop (Linux 5.17): a socket more than this many levels
 * below its policy's cgroup is not covered there. With bpf_loop: no limit.
 */
#define KA_BOUNDED_DEPTH     32
/* Reaped connections the kernel side keeps, newest overwriting oldest. */
#define KA_EVENTS_MAX        1024

/* ka_policy.flags */
#define KA_POLICY_USER_TIMEOUT_DERIVED  (1u << 0)  /* user_timeout was -1 */
#define KA_POLICY_AGENT                 (1u << 1)  /* set by the agent's policy file */
#define KA_POLICY_PRECEDENCE_POLICY     (1u << 2)  /* the policy overrides the program's setsockopt */
#define KA_POLICY_HAS_RULES             (1u << 3)  /* ka_rules holds its rules, under the same cgroup id */
#define KA_POLICY_OBSERVE_PATHS         (1u << 4)  /* its connections' idle gaps are observed (ka_paths) */
#define KA_POLICY_OBSERVE_ONLY          (1u << 5)  /* sets nothing: counts what it would set, observes paths */
#define KA_POLICY_RULES_AT_SLOT         (1u << 6)  /* ka_rule_sets holds its rules too, at its rule slot */
/* The rule slot, in a policy that has KA_POLICY_RULES_AT_SLOT: the flags'
 * high bits, so that the record keeps its layout (an older binary's records,
 * without the flag, are read through ka_rules). */
#define KA_POLICY_RULE_SLOT_SHIFT       16
#define KA_POLICY_RULE_SLOT(flags)      ((flags) >> KA_POLICY_RULE_SLOT_SHIFT)

/* Observation keys in files, flags and output. */
#define KA_OBSERVE_KEY        "observe"         /* observe only */
#define KA_OBSERVE_PATHS_KEY  "observe_paths"   /* enforce, and observe paths */

/* Who wins when a program sets keepalive options itself. */
#define KA_PRECEDENCE_KEY          "precedence"
#define KA_PRECEDENCE_APPLICATION  "application"  /* default: the policy is only the default */
#define KA_PRECEDENCE_POLICY       "policy"

/*
 * Who a policy was set for, when it was set for a workload rather than a
 * cgroup path: a Kubernetes pod (namespace and name), a container (its name
 * and id, and its pod's when it has one). Userspace only: for people (status,
 * events, metrics' labels). Strings are NUL-terminated UTF-8; empty = unknown.
 */
#define KA_ORIGIN_NAMESPACE_MAX  64    /* a Kubernetes namespace: a DNS label, 63 bytes */
#define KA_ORIGIN_NAME_MAX       256   /* a pod's name (a DNS subdomain, 253) or a container's */
#define KA_ORIGIN_ID_MAX         72    /* a container id: 64 hex digits */

struct ka_origin {
	char namespace_name[KA_ORIGIN_NAMESPACE_MAX];
	char pod_name[KA_ORIGIN_NAME_MAX];
	char container_name[KA_ORIGIN_NAME_MAX];
	char container_id[KA_ORIGIN_ID_MAX];
};

/*
 * The option values a policy, or one of its rules, gives a socket. Resolved:
 * user_timeout is never -1 here; 0 leaves the system default.
 */
struct ka_values {
	__s32 keepidle;
	__s32 keepintvl;
	__s32 keepcnt;
	__s32 user_timeout;
	__s32 syncnt;
	__s32 maxseg;
	__s32 window_clamp;
};

/*
 * Rules by destination: a policy may carry up to KA_MAX_RULES rules, tried in
 * order on connect and accept (never on listen); the first that matches the
 * connection gives it its values, and the policy's own apply where none does.
 * A rule matches when the remote address is in one of its CIDRs and the
 * remote and local ports are in its lists (an empty list matches any). The
 * same test on both sides: a connecting socket's local port and an accepted
 * one's remote port are ephemeral, so remote_ports select connections made to
 * a service and local_ports connections accepted on one.
 */
#define KA_MAX_RULES          16     /* rules per policy */
#define KA_RULE_MAX_REMOTES   8      /* CIDRs per rule */
#define KA_RULE_MAX_PORTS     8      /* ports per list */
#define KA_RULE_NAME_MAX      32     /* a rule's name, its NUL included */
#define KA_MAX_RULE_SETS      1024   /* policies with rules at once */

/* A CIDR as its network (16 bytes; IPv4 as its v4-mapped form,
 * ::ffff:a.b.c.d/(96 + prefix), so that a v4-mapped peer of an IPv6 socket
 * matches IPv4 CIDRs) and its prefix length. Userspace only: the program
 * matches addresses through the set's bounds. */
struct ka_cidr {
	__u8 network[16];
	__u8 prefix;
};

/*
 * The CIDRs of all of a set's rules cut the 128-bit address space (IPv4
 * v4-mapped) into intervals, each covered by the same rules: one binary
 * search of their bounds finds the rules whose remote holds an address, in
 * log2(KA_RULE_BOUNDS) steps, instead of a test of every CIDR of every rule.
 */
#define KA_RULE_BOUNDS  256  /* 2 * KA_MAX_RULES * KA_RULE_MAX_REMOTES: a CIDR's start and its end + 1 */

/* An address as a number: the high and low halves, host order. */
struct ka_address {
	__u64 high;
	__u64 low;
};
/* ka_rule.flags */
#define KA_RULE_OFF                   (1u << 0)  /* keepalive: off: the socket gets nothing */
#define KA_RULE_USER_TIMEOUT_DERIVED  (1u << 1)  /* its user_timeout was derived */

/* Rule keys in files, flags and output. */
#define KA_RULES_KEY         "rules"
#define KA_RULE_NAME_KEY     "name"
#define KA_RULE_REMOTE_KEY   "remote"
#define KA_RULE_REMOTE_PORTS_KEY "remote_ports"
#define KA_RULE_LOCAL_PORTS_KEY  "local_ports"
#define KA_RULE_KEEPALIVE_KEY    "keepalive"       /* "off" */

struct ka_rule {
	struct ka_values values;   /* resolved: the rule's own, else its policy's */
	__u32 flags;               /* KA_RULE_* */
	__u32 given;               /* userspace only: the options the rule gives itself (1 << KA_OPT_*) */
	__u8 remote_count;
	__u8 remote_port_count;
	__u8 local_port_count;
	__u8 reserved;
	__u16 remote_ports[KA_RULE_MAX_PORTS];  /* host order */
	__u16 local_ports[KA_RULE_MAX_PORTS];
	struct ka_cidr remote[KA_RULE_MAX_REMOTES];
	char name[KA_RULE_NAME_MAX];            /* userspace only; "" = none */
};

/* A policy's rules, in "ka_rules" under the policy's cgroup id (userspace's
 * record), and alone in a map of its own at its slot in "ka_rule_sets" (what
 * the programs read, KA_POLICY_RULES_AT_SLOT). */
struct ka_rule_set {
	__u32 count;
	/* their counters: at slot * KA_MAX_RULES + rule in ka_rule_counters_v4,
	 * slot unique among the rule sets (userspace gives it, zeroed) */
	__u32 slot;
	/* The rules without a remote list: bit r for rule r. */
	__u32 unrestricted;
	/* Where each interval starts, ascending; entries past the last repeat
	 * it (all of them the highest address when no rule has a remote), so
	 * the search needs no count. An address below bounds[0] is in none. */
	struct ka_address bounds[KA_RULE_BOUNDS];
	/* The rules whose remote covers interval i: bit r for rule r. */
	__u16 covered[KA_RULE_BOUNDS];
	struct ka_rule rules[KA_MAX_RULES];
};

/* In ka_rules' record only, the slot's top bit: a write of the set to
 * ka_rule_sets and then of its policy is under way. A run killed there
 * leaves it, and the next run writes both again, without reading back
 * ka_rule_sets (a grace period per lookup before Linux 6.7). Programs mask
 * it off; an older one, which multiplies the slot by KA_MAX_RULES in 32
 * bits, loses it there. */
#define KA_RULE_SET_WRITING   (1u << 31)
#define KA_RULE_SET_SLOT(slot) ((slot) & ~KA_RULE_SET_WRITING)

_Static_assert(KA_MAX_RULES <= 16, "covered holds a bit per rule in 16");
_Static_assert(KA_MAX_RULE_SETS <= 1u << (32 - KA_POLICY_RULE_SLOT_SHIFT), "a rule slot fits the flags' high bits");
_Static_assert(KA_RULE_BOUNDS == 2 * KA_MAX_RULES * KA_RULE_MAX_REMOTES, "a bound for each CIDR's start and end");
_Static_assert((KA_RULE_BOUNDS & (KA_RULE_BOUNDS - 1)) == 0, "the search halves KA_RULE_BOUNDS down to 1");

/*
 * A policy in force, keyed by cgroup id (the cgroup directory's inode number)
 * in "ka_policies_v3". Values are resolved: user_timeout is never -1 here.
 * One record is one atomic map update: a crash never leaves half a policy.
 * KA_POLICY_LAYOUT2_FIELDS are layout 2's whole record, which layout 3
 * extends: what a migration carries over.
 */
#define KA_POLICY_LAYOUT2_FIELDS                                               \
	struct ka_values values;                                               \
	__u32 flags;                                                           \
	/* its counters: at this index in ka_counters_v4 (layouts 2 and 3: \
	 * in ka_counters), unique among the policies (userspace gives it,   \
	 * zeroed, with the policy) */                                        \
	__u32 slot;                                                            \
	/* Userspace only: the cgroup's path below the cgroup2 mount. cgroup2 \
	 * directories cannot be renamed, so it proves the cgroup gone        \
	 * (ENOENT, or another inode there) and places the policy in the tree \
	 * without a walk. */                                                  \
	char path[KA_CGROUP_PATH_MAX];

struct ka_policy_layout2 {
	KA_POLICY_LAYOUT2_FIELDS
};

struct ka_policy {
	KA_POLICY_LAYOUT2_FIELDS
	struct ka_origin origin;  /* userspace only */
};

/* Why the kernel ended a covered connection whose peer went silent. */
enum ka_reaped_reason {
	KA_REAPED_KEEPALIVE = 0,     /* idle: keepalive probes went unanswered */
	KA_REAPED_USER_TIMEOUT,      /* data unacknowledged: user timeout / retransmissions */
	KA_REAPED_REASONS,
};

#define KA_REAPED_KEEPALIVE_KEY     "keepalive"
#define KA_REAPED_USER_TIMEOUT_KEY  "user_timeout"

/* ka_event.reason only, never counted: a connection of a policy that observes
 * paths, reset in answer to its first segment after an idle gap. */
#define KA_EVENT_RESET              2
#define KA_EVENT_RESET_KEY          "reset"
_Static_assert(KA_EVENT_RESET == KA_REAPED_REASONS, "a reason the counters do not keep");

/* Per policy (at its slot), per CPU: nothing is shared between CPUs. */
struct ka_counters {
	__u64 configured;                  /* sockets the policy configured */
	__u64 reaped[KA_REAPED_REASONS];   /* connections ended, by reason */
};

/* The pinned state's identity, in "ka_meta" (one entry), written by userspace. */
struct ka_meta {
	__u32 layout;           /* KA_STATE_LAYOUT of the binary that wrote it */
	__u32 program_version;  /* ka_program_version of the programs in force */
	__u64 object_hash;      /* FNV-1a of the object the programs came from */
	__u64 change_seq;       /* bumped by every change: readers' caches stay valid while it holds */
	__u64 cgroup_root_id;   /* the cgroup the policies' paths start from: the cgroup2 mount's
				   root as the state's users see it (a container's cgroup
				   namespace sees its own); another view is refused */
};

/* A TCP socket as the records name it. */
struct ka_socket_id {
	__u64 cgroup_id;       /* the socket's own cgroup */
	__u64 inode;           /* the socket's inode, to find the processes holding it; 0 if none */
	__u32 family;          /* AF_INET or AF_INET6 */
	__u16 local_port;      /* host order */
	__u16 remote_port;
	__u8  local_addr[16];  /* IPv4 in the first 4 bytes */
	__u8  remote_addr[16];
};

/*
 * One reaped connection, in the "ka_events" ring (slot = seq % KA_EVENTS_MAX).
 * Times are in jiffies, as the kernel keeps them; the reader converts.
 */
struct ka_event {
	__u64 seq;             /* the event's number + 1; 0 while it is being written */
	__u64 boot_ns;         /* when: bpf_ktime_get_boot_ns() */
	__u64 policy_cgroup_id;
	struct ka_socket_id socket;
	__u32 reason;          /* enum ka_reaped_reason, or KA_EVENT_RESET */
	__u32 silent_jiffies;  /* since the peer's last packet */
	__u32 keepidle_jiffies;
	__u32 keepintvl_jiffies;
	__u32 keepcnt;
	__u32 user_timeout_ms;
	__u32 rule;            /* the rule that matches the connection, + 1; 0: the policy's own values */
	__u32 idle_gap_ms;     /* the idle gap its first unanswered segment came after (policies that
				  observe paths; in the record's padding before: 0 there, as for none) */
};

_Static_assert(sizeof(struct ka_event) == 112, "ka_event's size is the pinned ring's value size");

/*
 * Paths' idle limits, observed (KA_POLICY_OBSERVE_PATHS): per policy and
 * remote, the idle gaps connections survived and the shortest they died of.
 * An idle gap is the time without a packet either way before a segment the
 * connection sends: survived when the peer answers it (or when the peer
 * itself sends after a gap), died of when it is never answered (a timeout)
 * or answered by a reset. Gaps under KA_PATH_MIN_GAP_MS are not idleness.
 */
#define KA_PATHS_MAX         4096    /* policy and remote pairs kept; the least recently seen go first */
#define KA_PATH_MIN_GAP_MS   1000
#define KA_PATH_DEATHS       8       /* deaths kept per path: the shortest gaps */
#define KA_PATH_DEATH_RESET  1u      /* ka_path.deaths: the low bit says "by a reset" */

/* A path: a policy's cgroup, a remote address (IPv4 as v4-mapped) and the
 * service's port: the remote one for connections made, the local one for
 * connections accepted (the other is ephemeral). */
struct ka_path_key {
	__u64 policy_cgroup_id;
	__u8  remote_addr[16];
	__u16 port;            /* host order */
	__u8  accepted;        /* 1: connections accepted on local `port` */
	__u8  reserved[5];
};

/* What was seen on a path, in "ka_paths". Times in milliseconds. */
struct ka_path {
	__u64 last_boot_ns;    /* the latest evidence: bpf_ktime_get_boot_ns() */
	__u32 alive_max_ms;    /* the longest idle gap a connection answered after */
	__u32 alive_count;     /* idle gaps answered after */
	__u32 timeouts;        /* connections that died of a timeout after an idle gap */
	__u32 resets;          /* ... of a reset answering the first segment after one */
	/* The shortest idle gaps a connection died after, ascending, each
	 * gap_ms << 1 | KA_PATH_DEATH_RESET for a reset; 0: none. */
	__u32 deaths[KA_PATH_DEATHS];
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
#define KA_SOCKET_KEPT_OWN           (1u << 3)  /* keepalive was on already: the program's values stay */

/*
 * One socket of the subtree, as the iterator writes it (binary, in order).
 * Values are read back from the kernel with bpf_getsockopt after any apply.
 */
struct ka_socket_record {
	struct ka_socket_id socket;
	__u64 policy_cgroup_id;  /* the cgroup whose policy covers it; 0: none */
	__u32 state;           /* TCP_ESTABLISHED, TCP_LISTEN, ... */
	__u32 flags;           /* KA_SOCKET_* */
	__s32 keepalive;
	__s32 keepidle;
	__s32 keepintvl;
	__s32 keepcnt;
	__s32 user_timeout;
	__u32 rule;            /* the rule of its policy that matches it, + 1; 0: none */
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

/*
 * Whether the kernel accepts `value` for a keepalive option set with
 * setsockopt (0 is not "system default" there: TCP_KEEPIDLE 0 is EINVAL).
 */
static inline int ka_kernel_accepts(enum ka_bpf_option option, int value)
{
	switch (option) {
	case KA_OPT_KEEPALIVE:    return 1;
	case KA_OPT_KEEPIDLE:     return value >= KA_KEEPIDLE_MIN && value <= KA_KEEPIDLE_MAX;
	case KA_OPT_KEEPINTVL:    return value >= KA_KEEPINTVL_MIN && value <= KA_KEEPINTVL_MAX;
	case KA_OPT_KEEPCNT:      return value >= KA_KEEPCNT_MIN && value <= KA_KEEPCNT_MAX;
	case KA_OPT_USER_TIMEOUT: return value >= 0;
	default:                  return 0;
	}
}

#endif /* KEEPALIVE_POLICY_H */

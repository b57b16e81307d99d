// SPDX-License-Identifier: GPL-2.0-only
/*
 * keepalive's programs as a broken build would have them, for the test of
 * load errors: the socket is read as a tcp_sock without the helper that
 * makes that safe, so the verifier refuses keepalive_sockops.
 */
#define bpf_skc_to_tcp_sock(sk) ((struct tcp_sock *)(void *)(sk))
#include "keepalive.bpf.c"

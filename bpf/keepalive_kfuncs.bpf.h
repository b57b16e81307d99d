/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The kernel functions (kfuncs) keepalive's programs may call, declared weak:
 * an object that names one loads on a kernel without it, and the programs
 * that call it are loaded only where a probe found it (KernelFeatures.swift).
 */
#ifndef KEEPALIVE_KFUNCS_BPF_H
#define KEEPALIVE_KFUNCS_BPF_H

/* Linux 6.2. The verifier turns the call into a register move; the pointer it
 * gives is read-only, through loads the kernel makes fault-tolerant. */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;

#endif

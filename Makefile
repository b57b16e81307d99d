# keepalive: `make` installs what is missing and builds everything into build/;
# `make test` runs every test. Both as root on Debian 12.

SHELL := /bin/bash
.DEFAULT_GOAL := all

BUILD      := build
SWIFT      ?= $(shell command -v swift || echo /opt/swift/usr/bin/swift)
BPF_CLANG  ?= clang-14
LLVM_STRIP ?= llvm-strip-14
PYTHON     ?= $(shell command -v python3)
ARCH       := $(shell uname -m | sed -e 's/x86_64/x86/' -e 's/aarch64/arm64/')

# Debian packages the build and the tests need; `deps` installs the missing ones.
DEBIAN_PACKAGES := clang-14 llvm-14 libbpf-dev bpftool libelf-dev zlib1g-dev \
                   gcc make binutils busybox-static iproute2 nftables procps systemd util-linux strace \
                   debootstrap systemd-container podman runc
PYTHON_PACKAGES := pytest pyyaml kubernetes-validate

PRELOAD_CFLAGS := -std=gnu11 -O2 -g -fPIC -fvisibility=hidden \
	-Wall -Wextra -Wpedantic -Wshadow -Wconversion -Wsign-conversion \
	-Wstrict-prototypes -Wmissing-prototypes -Wformat=2 -Werror \
	-D_FORTIFY_SOURCE=2 -fstack-protector-strong
PRELOAD_LDFLAGS := -shared -Wl,-z,relro,-z,now,--no-undefined,--as-needed
PRELOAD_LIBS := $(BUILD)/lib/libkeepalive.so $(BUILD)/lib/libkeepalive_listen.so \
                $(BUILD)/lib/libkeepalive_socket.so
PRELOAD_SHARED := preload/keepalive_options.c preload/keepalive_options.h bpf/keepalive_policy.h

BPF_OBJECTS   := keepalive keepalive_iter
BPF_SKELETONS := $(BPF_OBJECTS:%=Sources/CLibBPF/generated/%.skel.h)
BPF_HEADERS   := bpf/keepalive_policy.h bpf/keepalive_common.bpf.h
BPF_CFLAGS    := -g -O2 -target bpf -mcpu=v3 -D__TARGET_ARCH_$(ARCH) -Wall -Werror -I$(BUILD)/bpf -Ibpf
SWIFT_SOURCES := $(shell find Sources -path Sources/CLibBPF/generated -prune -o \( -name '*.swift' -o -name '*.h' -o -name '*.modulemap' \) -print) Package.swift

.SECONDARY:  # keep intermediate objects
.PHONY: all deps preload bpf swift image run bench test test-swift test-integration clean

all: deps preload swift

# --- dependencies -----------------------------------------------------------

deps: $(BUILD)/.deps

$(BUILD)/.deps: Makefile
	@missing=$$(for p in $(DEBIAN_PACKAGES); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing:" $$missing; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@for m in $(PYTHON_PACKAGES); do \
	    mod=$$m; [ $$m = pyyaml ] && mod=yaml; [ $$m = kubernetes-validate ] && mod=kubernetes_validate; \
	    $(PYTHON) -c "import $$mod" 2>/dev/null || $(PYTHON) -m pip install -q $$m; done
	@mkdir -p $(BUILD) && touch $@

# --- preload libraries: one shared source, three wrappers --------------------

preload: $(PRELOAD_LIBS)

$(BUILD)/lib/libkeepalive.so: preload/connect.c $(PRELOAD_SHARED) | $(BUILD)/.deps
$(BUILD)/lib/libkeepalive_listen.so: preload/listen.c $(PRELOAD_SHARED) | $(BUILD)/.deps
$(BUILD)/lib/libkeepalive_socket.so: preload/socket.c $(PRELOAD_SHARED) | $(BUILD)/.deps
$(PRELOAD_LIBS):
	@mkdir -p $(@D)
	gcc $(PRELOAD_CFLAGS) $(PRELOAD_LDFLAGS) -o $@ preload/keepalive_options.c $<

# --- BPF objects: compiled for the BPF target, embedded through skeletons ----

bpf: $(BPF_SKELETONS)

$(BUILD)/bpf/vmlinux.h: | $(BUILD)/.deps
	@mkdir -p $(@D)
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > $@.tmp && mv $@.tmp $@

$(BUILD)/bpf/%.bpf.o: bpf/%.bpf.c $(BPF_HEADERS) $(BUILD)/bpf/vmlinux.h
	$(BPF_CLANG) $(BPF_CFLAGS) -c $< -o $@.debug
	$(LLVM_STRIP) -g $@.debug -o $@   # keep BTF, drop DWARF

# libbpf-bootstrap's way: the object's maps and programs become named fields
# of a generated struct, and the object itself is embedded in the binary.
Sources/CLibBPF/generated/%.skel.h: $(BUILD)/bpf/%.bpf.o
	@mkdir -p $(@D)
	bpftool gen skeleton $< name $(subst -,_,$*)_bpf > $@.tmp && mv $@.tmp $@

# --- the Swift command --------------------------------------------------------

swift: $(BUILD)/bin/keepalive

$(BUILD)/bin/keepalive: $(SWIFT_SOURCES) $(BPF_SKELETONS)
	$(SWIFT) build -c release --static-swift-stdlib --product keepalive
	@mkdir -p $(@D)
	cp "$$($(SWIFT) build -c release --show-bin-path)/keepalive" $@

# --- a Debian 12 tree (debootstrap), cached: the base of the image and the ---
# --- machine the deployment tests boot with systemd as PID 1 ------------------

ROOTFS := $(BUILD)/rootfs/bookworm
ROOTFS_PACKAGES := systemd,systemd-sysv,dbus,python3,iproute2,libbpf1,procps,curl
# The Debian mirror this machine's own apt sources name.
DEBIAN_MIRROR = $(shell cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
	| awk '/^(deb |URIs:)/ && !/security/ { for (i = 2; i <= NF; i++) if ($$i ~ /^https?:/) { print $$i; exit } }')

$(ROOTFS)/.complete: | $(BUILD)/.deps
	@rm -rf $(ROOTFS) $(ROOTFS).tmp && mkdir -p $(@D)/..
	debootstrap --variant=minbase --include=$(ROOTFS_PACKAGES) bookworm $(ROOTFS).tmp $(DEBIAN_MIRROR) \
	    > $(BUILD)/rootfs/debootstrap.log 2>&1 || { tail -20 $(BUILD)/rootfs/debootstrap.log; exit 1; }
	mv $(ROOTFS).tmp $(ROOTFS) && touch $@

# --- the container image: the binary on a base of libbpf1 and the C libraries -
# --- it links, taken from the Debian tree; no shell, no package manager -------

IMAGE ?= keepalive:latest
IMAGE_BASE ?= localhost/keepalive-base:latest

$(BUILD)/image/base.tar: $(ROOTFS)/.complete deploy/container/base-files
	@mkdir -p $(@D)
	deploy/container/base-files $(ROOTFS) > $(@D)/base-files.txt
	tar -C $(ROOTFS) --dereference --no-recursion -cf $@.tmp -T $(@D)/base-files.txt && mv $@.tmp $@

$(BUILD)/image/keepalive: $(BUILD)/bin/keepalive
	@mkdir -p $(@D)
	strip -o $@ $<   # symbols are a third of the binary

image: $(BUILD)/image/keepalive $(BUILD)/image/base.tar
	podman import --quiet $(BUILD)/image/base.tar $(IMAGE_BASE)
	podman build --quiet --build-arg BASE=$(IMAGE_BASE) -f deploy/container/Containerfile -t $(IMAGE) .

# --- the agent on the shipped default policy, in the foreground ---------------

METRICS_ADDRESS ?= 127.0.0.1:9464

run: all
	$(BUILD)/bin/keepalive agent --config deploy/keepalive.yaml --metrics-address $(METRICS_ADDRESS)

# --- benchmark: connection-path cost of each mode, side by side --------------

$(BUILD)/bench/connrate: bench/connrate.c | $(BUILD)/.deps
	@mkdir -p $(@D)
	gcc -O2 -Wall -Wextra -Werror -o $@ $<

$(BUILD)/bench/empty.bpf.o: bench/empty.bpf.c $(BUILD)/bpf/vmlinux.h
	@mkdir -p $(@D)
	$(BPF_CLANG) -O2 -target bpf -Wall -Werror -I$(BUILD)/bpf -c $< -o $@

bench: all $(BUILD)/bench/connrate $(BUILD)/bench/empty.bpf.o
	$(PYTHON) bench/bench.py

# --- tests --------------------------------------------------------------------

# foreign: another tool's program; layout1: keepalive 0.1.0's pinned layout, for
# the migration test; keepalive-next: the programs as a later build would have
# them (next version), for the upgrade tests; refused: programs the verifier
# refuses, for the load-error tests (both through KEEPALIVE_BPF_OBJECT).
NEXT_PROGRAM_VERSION := $(shell awk '/^\#define KA_PROGRAM_VERSION / {print $$3 + 1}' bpf/keepalive_policy.h)
TEST_HELPERS := $(BUILD)/test/foreign.bpf.o $(BUILD)/test/layout1.bpf.o $(BUILD)/test/keepalive-next.bpf.o \
                $(BUILD)/test/refused.bpf.o

$(BUILD)/test/%.bpf.o: Tests/integration/helpers/%.bpf.c $(BUILD)/bpf/vmlinux.h
	@mkdir -p $(@D)
	$(BPF_CLANG) $(BPF_CFLAGS) -c $< -o $@

$(BUILD)/test/keepalive-next.bpf.o: bpf/keepalive.bpf.c $(BPF_HEADERS) $(BUILD)/bpf/vmlinux.h
	@mkdir -p $(@D)
	$(BPF_CLANG) $(BPF_CFLAGS) -DKA_PROGRAM_VERSION=$(NEXT_PROGRAM_VERSION) -c $< -o $@.debug
	$(LLVM_STRIP) -g $@.debug -o $@

test: all $(TEST_HELPERS) $(ROOTFS)/.complete
	@rc=0; \
	$(MAKE) --no-print-directory test-swift || rc=1; \
	$(MAKE) --no-print-directory test-integration || rc=1; \
	exit $$rc

test-swift: $(BPF_SKELETONS)
	$(SWIFT) test

test-integration: $(PRELOAD_LIBS) $(BUILD)/bin/keepalive $(TEST_HELPERS) $(ROOTFS)/.complete
	$(PYTHON) -m pytest -p no:cacheprovider Tests/integration

clean:
	rm -rf $(BUILD) .build Sources/CLibBPF/generated

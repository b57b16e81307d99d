# SPDX-License-Identifier: MIT
# keepalive: `make` installs what is missing and builds everything into build/;
# `make test` runs every test. Both as root on Debian 12.

SHELL := /bin/bash
.DEFAULT_GOAL := all

BUILD      := build
# The one place of the version: debian/changelog's newest entry. The binary
# (--version, keepalive_build_info), the BPF programs (recorded in the pinned
# state, where an older one is refused) and the package take it from there.
VERSION         := $(shell awk -F'[()]' 'NR == 1 {print $$2}' debian/changelog)
# The release before this one, built from the git history as it was: what the
# upgrade tests start from (pinned layout 2, programs 2). Defined before any
# rule names it: make expands a rule's prerequisites as it reads them.
PREVIOUS_COMMIT := 616bdd1c4b5d5fbf3b9663f5fc50c9fbe85e02ca
PREVIOUS        := $(BUILD)/previous/bin/keepalive
PROGRAM_VERSION := $(shell echo '$(VERSION)' | awk -F'[.~+-]' '{print $$1 * 10000 + $$2 * 100 + $$3}')
SWIFT      ?= $(shell command -v swift || echo /opt/swift/usr/bin/swift)
# SwiftPM leaves an empty TemporaryDirectory.* and lock files in $TMPDIR at
# every run, lintian a file of its cache: here in the build tree, which make
# clean removes, not in the machine's /tmp.
TOOLS_TMP  := $(abspath $(BUILD))/tmp
IN_TOOLS_TMP = mkdir -p $(TOOLS_TMP) && TMPDIR=$(TOOLS_TMP)
SWIFT_RUN   = $(IN_TOOLS_TMP) $(SWIFT)
BPF_CLANG  ?= clang-14
LLVM_STRIP ?= llvm-strip-14
PYTHON     ?= $(shell command -v python3)
ARCH       := $(shell uname -m | sed -e 's/x86_64/x86/' -e 's/aarch64/arm64/')

# Debian 12's packages: `deps` installs the missing ones the build needs (the
# binary, the libraries, the package); `test-deps` adds what the tests and the
# benchmarks run, some of which start services (containerd, podman's, redis).
BUILD_PACKAGES := clang-14 llvm-14 libbpf-dev bpftool libelf-dev zlib1g-dev gcc make binutils libc6-dev \
                  dpkg-dev lintian go-md2man
TEST_PACKAGES := libclang-rt-14-dev busybox-static iproute2 nftables procps systemd util-linux strace \
                 debootstrap systemd-container podman runc prometheus redis-server redis-tools \
                 containerd protobuf-compiler golang-go qemu-system-x86 cpio kmod e2fsprogs
PYTHON_PACKAGES := pytest pyyaml kubernetes-validate grpcio grpcio-tools reuse

PRELOAD_CFLAGS := -std=gnu11 -O2 -g -fPIC -fvisibility=hidden \
	-Wall -Wextra -Wpedantic -Wshadow -Wconversion -Wsign-conversion \
	-Wstrict-prototypes -Wmissing-prototypes -Wformat=2 -Werror \
	-D_FORTIFY_SOURCE=2 -fstack-protector-strong
PRELOAD_LDFLAGS := -shared -Wl,-z,relro,-z,now,--no-undefined,--as-needed
PRELOAD_LIBS := $(BUILD)/lib/libkeepalive.so $(BUILD)/lib/libkeepalive_listen.so \
                $(BUILD)/lib/libkeepalive_socket.so
PRELOAD_SHARED := preload/keepalive_options.c preload/keepalive_options.h bpf/keepalive_policy.h

BPF_OBJECTS   := keepalive keepalive_iter keepalive_probes
BPF_SKELETONS := $(BPF_OBJECTS:%=Sources/CLibBPF/generated/%.skel.h)
BPF_HEADERS   := bpf/keepalive_policy.h bpf/keepalive_common.bpf.h bpf/keepalive_kfuncs.bpf.h
BPF_CFLAGS    := -g -O2 -target bpf -mcpu=v3 -D__TARGET_ARCH_$(ARCH) -Wall -Werror -I$(BUILD)/bpf -Ibpf \
                 -DKA_PROGRAM_VERSION=$(PROGRAM_VERSION)
SWIFT_SOURCES := $(shell find Sources -path '*/generated' -prune -o \( -name '*.swift' -o -name '*.h' -o -name '*.modulemap' \) -print) Package.swift

.SECONDARY:  # keep intermediate objects
FORCE:
.PHONY: FORCE all deps test-deps preload bpf swift proto previous deb image run bench fuzz test test-licensing test-format format test-swift test-fuzz-replay test-preload-sanitized test-integration test-kernels kernels clean

all: deps preload swift

# --- dependencies -----------------------------------------------------------

deps: $(BUILD)/.deps
test-deps: $(BUILD)/.test-deps

# Installs the Debian packages in $(1) that are missing.
install-missing = missing=$$(for p in $(1); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing:" $$missing; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(BUILD)/.deps: Makefile
	@$(call install-missing,$(BUILD_PACKAGES))
	@mkdir -p $(BUILD) && touch $@

$(BUILD)/.test-deps: Makefile | $(BUILD)/.deps
	@$(call install-missing,$(TEST_PACKAGES))
	@for m in $(PYTHON_PACKAGES); do \
	    mod=$$m; [ $$m = pyyaml ] && mod=yaml; [ $$m = kubernetes-validate ] && mod=kubernetes_validate; \
	    [ $$m = grpcio-tools ] && mod=grpc_tools; [ $$m = grpcio ] && mod=grpc; \
	    $(PYTHON) -c "import $$mod" 2>/dev/null || $(PYTHON) -m pip install -q $$m; done
	@touch $@

# --- preload libraries: one shared source, three wrappers --------------------

preload: $(PRELOAD_LIBS)

$(BUILD)/lib/libkeepalive.so: preload/connect.c $(PRELOAD_SHARED) | $(BUILD)/.deps
$(BUILD)/lib/libkeepalive_listen.so: preload/listen.c $(PRELOAD_SHARED) | $(BUILD)/.deps
$(BUILD)/lib/libkeepalive_socket.so: preload/socket.c $(PRELOAD_SHARED) | $(BUILD)/.deps
$(PRELOAD_LIBS):
	@mkdir -p $(@D)
	gcc $(PRELOAD_CFLAGS) $(PRELOAD_LDFLAGS) -Wl,-soname,$(@F) -o $@ preload/keepalive_options.c $<

# The same, with ASan and UBSan, for the preload suite once more (make test).
SANITIZED_LIBS := $(PRELOAD_LIBS:$(BUILD)/lib/%=$(BUILD)/lib-sanitized/%)
$(BUILD)/lib-sanitized/libkeepalive.so: preload/connect.c $(PRELOAD_SHARED) | $(BUILD)/.test-deps
$(BUILD)/lib-sanitized/libkeepalive_listen.so: preload/listen.c $(PRELOAD_SHARED) | $(BUILD)/.test-deps
$(BUILD)/lib-sanitized/libkeepalive_socket.so: preload/socket.c $(PRELOAD_SHARED) | $(BUILD)/.test-deps
$(SANITIZED_LIBS):
	@mkdir -p $(@D)
	gcc $(filter-out -D_FORTIFY_SOURCE=2,$(PRELOAD_CFLAGS)) -fsanitize=address,undefined -fno-sanitize-recover=all \
	    -fno-omit-frame-pointer $(PRELOAD_LDFLAGS) -o $@ preload/keepalive_options.c $<

# --- BPF objects: compiled for the BPF target, embedded through skeletons ----

bpf: $(BPF_SKELETONS)

$(BUILD)/bpf/vmlinux.h: | $(BUILD)/.deps
	@mkdir -p $(@D)
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > $@.tmp && mv $@.tmp $@

$(BUILD)/bpf/%.bpf.o: bpf/%.bpf.c $(BPF_HEADERS) debian/changelog $(BUILD)/bpf/vmlinux.h
	$(BPF_CLANG) $(BPF_CFLAGS) -c $< -o $@.debug
	$(LLVM_STRIP) -g $@.debug -o $@   # keep BTF, drop DWARF

# libbpf-bootstrap's way: the object's maps and programs become named fields
# of a generated struct, and the object itself is embedded in the binary.
Sources/CLibBPF/generated/%.skel.h: $(BUILD)/bpf/%.bpf.o
	@mkdir -p $(@D)
	bpftool gen skeleton $< name $(subst -,_,$*)_bpf > $@.tmp && mv $@.tmp $@

# SwiftPM does not see the skeleton headers (a system library's headers are no
# inputs of its build graph) and would keep embedding stale objects: a Swift
# file that changes with them makes it rebuild the module that embeds them.
# It carries the version too.
BPF_OBJECTS_STAMP := Sources/KeepaliveCore/generated/Build.swift

$(BPF_OBJECTS_STAMP): $(BPF_SKELETONS) debian/changelog
	@mkdir -p $(@D)
	@rm -f $(@D)/EmbeddedObjects.swift
	@printf '// Generated by make: changes whenever the embedded BPF objects or the version do.\nlet embeddedObjectsDigest = "%s"\nlet keepaliveVersion = "%s"\n' \
	    "$$(cat $(BPF_SKELETONS) | sha256sum | cut -c1-16)" "$(VERSION)" > $@.tmp && mv $@.tmp $@

# --- the Swift command --------------------------------------------------------

swift: $(BUILD)/bin/keepalive

# Exactly the package versions of Package.versions: Package.swift pins the
# direct dependencies, this check the transitive ones. (SwiftPM's way is a
# committed Package.resolved; the offline package copies' commit ids are not
# GitHub's, so one made here would not resolve anywhere else.)
$(BUILD)/.versions: Package.swift Package.versions
	$(SWIFT_RUN) package resolve
	@diff -u <(grep -v '^#' Package.versions) \
	    <(awk -F'"' '/"identity"/ {id = $$4} /"version" *: *"/ {print id, $$4}' Package.resolved | sort) \
	    || { echo "Package.resolved differs from Package.versions (above): the build would use other versions" >&2; exit 1; }
	@mkdir -p $(@D) && touch $@

$(BUILD)/bin/keepalive: $(SWIFT_SOURCES) $(BPF_SKELETONS) $(BPF_OBJECTS_STAMP) $(BUILD)/.versions
	$(SWIFT_RUN) build -c release --static-swift-stdlib --product keepalive
	@mkdir -p $(@D)
	cp "$$($(SWIFT_RUN) build -c release --show-bin-path)/keepalive" $@

# --- CRI: the vendored api.proto (third_party/cri-api) as Swift, committed ----
# `make proto` regenerates Sources/CRI with the plugins of the package versions
# Package.swift names, built from the offline package copies. The gogoproto
# import and options only steer Go's generator: dropped before protoc runs.

CRI_PROTO   := third_party/cri-api/runtime/v1/api.proto
PROTO_TOOLS := $(BUILD)/proto-tools
GRPC_PROTOBUF_VERSION := $(shell awk '$$1 == "grpc-swift-protobuf" {print $$2}' Package.versions)

$(BUILD)/cri/api.proto: $(CRI_PROTO)
	@mkdir -p $(@D)
	sed '/gogoproto/d' $< > $@

proto: $(BUILD)/cri/api.proto | $(BUILD)/.test-deps
	rm -rf $(PROTO_TOOLS) && mkdir -p $(PROTO_TOOLS)
	git clone -q --branch $(GRPC_PROTOBUF_VERSION) https://github.com/grpc/grpc-swift-protobuf $(PROTO_TOOLS)/grpc-swift-protobuf
	$(SWIFT_RUN) build -c release --package-path $(PROTO_TOOLS)/grpc-swift-protobuf --product protoc-gen-grpc-swift-2
	$(SWIFT_RUN) build -c release --package-path $(PROTO_TOOLS)/grpc-swift-protobuf --product protoc-gen-swift
	protoc -I $(BUILD)/cri \
	    --plugin=$(PROTO_TOOLS)/grpc-swift-protobuf/.build/release/protoc-gen-swift \
	    --plugin=$(PROTO_TOOLS)/grpc-swift-protobuf/.build/release/protoc-gen-grpc-swift-2 \
	    --swift_out=Visibility=Public:Sources/CRI \
	    --grpc-swift-2_out=Visibility=Public,Server=false,Client=true:Sources/CRI \
	    api.proto
	for f in Sources/CRI/*.swift; do sed -i '1i // SPDX''-License-Identifier: Apache-2.0' $$f; done

# The same API for the tests' kubelet (Python, grpcio-tools), never committed.
$(BUILD)/test/cri/api_pb2_grpc.py: $(BUILD)/cri/api.proto | $(BUILD)/.test-deps
	@mkdir -p $(@D)
	$(PYTHON) -m grpc_tools.protoc -I $(BUILD)/cri --python_out=$(@D) --grpc_python_out=$(@D) api.proto

# A statically linked Go client (CGO_ENABLED=0), for `keepalive run`'s tests.
$(BUILD)/test/goclient: Tests/integration/helpers/goclient.go | $(BUILD)/.test-deps
	@mkdir -p $(@D)
	cd $(@D) && CGO_ENABLED=0 GOCACHE=$(abspath $(BUILD))/go-cache GOPATH=$(abspath $(BUILD))/go \
	    go build -o goclient $(abspath $<)

# The tests' sandbox ("pause") process, static: it runs in the test image.
$(BUILD)/test/pause: Tests/integration/helpers/pause.c | $(BUILD)/.test-deps
	@mkdir -p $(@D)
	gcc -static -O2 -Wall -Wextra -Werror -o $@ $<

# --- the Debian package: make deb ----------------------------------------------
# debian/build-deb lays it out with dpkg-dev's tools; man pages come from the
# command's own definition (swift-argument-parser's generate-manual) and from
# docs/man/*.md (go-md2man), each from one source.

DEB_ARCH      = $(shell dpkg --print-architecture)
DEB           = $(BUILD)/keepalive_$(VERSION)_$(DEB_ARCH).deb
PREVIOUS_DEB  = $(BUILD)/keepalive_0.1.0_$(DEB_ARCH).deb
RELEASE_DATE  = $(shell date -u -d "$$(sed -n 's/^ -- .*>  //p' debian/changelog | head -1)" +%Y-%m-%d)
MAN_PAGES     := $(BUILD)/man/keepalive.8 $(BUILD)/man/keepalive.yaml.5 $(BUILD)/man/libkeepalive.8

$(BUILD)/man/keepalive.8: $(BUILD)/bin/keepalive debian/changelog
	$(SWIFT_RUN) build -c release --product generate-manual
	@mkdir -p $(@D)
	"$$($(SWIFT_RUN) build -c release --show-bin-path)/generate-manual" $< --section 8 --date $(RELEASE_DATE) \
	    --authors "keepalive maintainers" --output-directory $(@D)

$(BUILD)/man/%: docs/man/%.md debian/changelog | $(BUILD)/.deps
	@mkdir -p $(@D)
	{ printf '%% %s %s "%s" "keepalive %s"\n\n' "$$(echo $(basename $*) | tr a-z A-Z)" "$(subst .,,$(suffix $*))" \
	    "$(RELEASE_DATE)" "$(VERSION)"; sed '/^<!-- SPDX-License-Identifier/d' $<; } > $@.md && go-md2man -in $@.md -out $@ && rm $@.md

deb: $(DEB)

$(DEB): $(BUILD)/bin/keepalive $(PRELOAD_LIBS) $(MAN_PAGES) $(wildcard debian/*) deploy/systemd/keepalive.service \
        deploy/keepalive.yaml README.md $(wildcard docs/*.md)
	debian/build-deb $@ $(VERSION) $(BUILD)/bin/keepalive $(BUILD)/lib $(BUILD)/man
	$(IN_TOOLS_TMP) lintian --fail-on error --suppress-tags-from-file /dev/null $@

# The release before this one, packaged the same way: what the package's
# upgrade test starts from (it had no man pages).
$(PREVIOUS_DEB): $(PREVIOUS) $(wildcard debian/*)
	$(MAKE) --no-print-directory -C $(BUILD)/previous/src preload > /dev/null
	debian/build-deb $@ 0.1.0 $(PREVIOUS) $(BUILD)/previous/src/build/lib

# --- a Debian 12 tree (debootstrap), cached: the base of the image and the ---
# --- machine the deployment tests boot with systemd as PID 1 ------------------

ROOTFS := $(BUILD)/rootfs/bookworm
# What the deployment tests boot with, and what the privileged suites need
# when they run again inside it on the unified cgroup layout (test_unified.py),
# and what the package's test checks with (man, bash completion).
ROOTFS_PACKAGES := systemd systemd-sysv dbus python3 iproute2 libbpf1 procps curl \
                   python3-pytest python3-yaml bpftool strace nftables busybox-static util-linux \
                   binutils redis-server redis-tools prometheus man-db bash-completion
COMMA := ,
EMPTY :=
SPACE := $(EMPTY) $(EMPTY)
ROOTFS_LIST := $(BUILD)/rootfs/packages.txt
# The Debian mirror this machine's own apt sources name.
DEBIAN_MIRROR = $(shell cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
	| awk '/^(deb |URIs:)/ && !/security/ { for (i = 2; i <= NF; i++) if ($$i ~ /^https?:/) { print $$i; exit } }')

# Rewritten only when the list changes: the tree is made again then, not otherwise.
$(ROOTFS_LIST): FORCE
	@mkdir -p $(@D)
	@echo '$(ROOTFS_PACKAGES)' | cmp -s - $@ 2>/dev/null || echo '$(ROOTFS_PACKAGES)' > $@

$(ROOTFS)/.complete: $(ROOTFS_LIST) | $(BUILD)/.test-deps
	@rm -rf $(ROOTFS) $(ROOTFS).tmp && mkdir -p $(dir $(ROOTFS))
	debootstrap --variant=minbase --include=$(subst $(SPACE),$(COMMA),$(strip $(ROOTFS_PACKAGES))) bookworm $(ROOTFS).tmp $(DEBIAN_MIRROR) \
	    > $(BUILD)/rootfs/debootstrap.log 2>&1 || { tail -20 $(BUILD)/rootfs/debootstrap.log; exit 1; }
	mv $(ROOTFS).tmp $(ROOTFS) && touch $@

# --- the container image: the package installed in a Debian stage, then what --
# --- it installed on a base of the C libraries the binary links ---------------

IMAGE ?= localhost/keepalive:latest
IMAGE_BASE ?= localhost/keepalive-base:latest
IMAGE_INSTALLER ?= localhost/keepalive-installer:latest

$(BUILD)/image/base.tar: $(ROOTFS)/.complete deploy/container/base-files $(BUILD)/bin/keepalive
	@mkdir -p $(@D)
	deploy/container/base-files $(ROOTFS) > $(@D)/base-files.txt
	tar -C $(ROOTFS) --dereference --no-recursion -cf $@.tmp -T $(@D)/base-files.txt && mv $@.tmp $@

# The installer stage is the whole Debian tree; it is removed once the image is built.
image: $(DEB) $(BUILD)/image/base.tar | $(BUILD)/.test-deps
	podman import --quiet $(BUILD)/image/base.tar $(IMAGE_BASE)
	tar -C $(ROOTFS) -c . | podman import --quiet - $(IMAGE_INSTALLER)
	podman build --quiet --layers=false --network=none --build-arg BASE=$(IMAGE_BASE) \
	    --build-arg INSTALLER=$(IMAGE_INSTALLER) --build-arg PACKAGE=$(notdir $(DEB)) \
	    -f deploy/container/Containerfile -t $(IMAGE) . ; \
	status=$$?; podman rmi --force $(IMAGE_INSTALLER) > /dev/null; exit $$status

# --- the agent on the shipped default policy, in the foreground ---------------

METRICS_ADDRESS ?= 127.0.0.1:9464

run: all
	$(BUILD)/bin/keepalive agent --config deploy/keepalive.yaml --metrics-address $(METRICS_ADDRESS)

# --- benchmark: connection-path cost of each mode, side by side --------------

$(BUILD)/bench/connrate: bench/connrate.c | $(BUILD)/.test-deps
	@mkdir -p $(@D)
	gcc -O2 -Wall -Wextra -Werror -o $@ $<

$(BUILD)/bench/empty.bpf.o: bench/empty.bpf.c $(BUILD)/bpf/vmlinux.h
	@mkdir -p $(@D)
	$(BPF_CLANG) -O2 -target bpf -Wall -Werror -I$(BUILD)/bpf -c $< -o $@

bench: all $(PREVIOUS) $(BUILD)/bench/connrate $(BUILD)/bench/empty.bpf.o | $(BUILD)/.test-deps
	$(PYTHON) bench/bench.py

# --- fuzzing: every parser of outside input, coverage-guided -------------------
# The preload libraries' environment parsing with clang's libFuzzer, ASan and
# UBSan; the policy file and the runtimes' replies (FuzzTargets) with Swift's
# -sanitize=fuzzer,address (fuzz/Package.swift). `make fuzz` runs each for
# FUZZ_SECONDS; the corpus and every input that ever failed are committed
# (fuzz/corpus, fuzz/crashes) and `make test` runs them all again.

FUZZ_SECONDS ?= 60
FUZZ_CFLAGS := -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
SWIFT_FUZZ_TARGETS := policy-file runtime-replies

$(BUILD)/fuzz/preload-env: fuzz/preload_env.c preload/keepalive_options.c $(PRELOAD_SHARED) | $(BUILD)/.test-deps
	@mkdir -p $(@D)
	$(BPF_CLANG) $(FUZZ_CFLAGS) -o $@ $< -ldl

$(BUILD)/fuzz/keepalive-fuzz: $(SWIFT_SOURCES) fuzz/Package.swift fuzz/Sources/keepalive-fuzz/KeepaliveFuzz.swift $(BPF_OBJECTS_STAMP)
	$(SWIFT_RUN) build -c release --package-path fuzz --scratch-path $(BUILD)/fuzz/swift --sanitize fuzzer --sanitize address
	@mkdir -p $(@D)
	cp "$$($(SWIFT_RUN) build -c release --package-path fuzz --scratch-path $(BUILD)/fuzz/swift --show-bin-path)/keepalive-fuzz" $@

fuzz: $(BUILD)/fuzz/preload-env $(BUILD)/fuzz/keepalive-fuzz | $(BUILD)/.test-deps
	@status=0; \
	fuzz/run $(FUZZ_SECONDS) $(BUILD)/fuzz/preload-env preload-env || status=1; \
	fuzz/run $(FUZZ_SECONDS) $(BUILD)/fuzz/keepalive-fuzz $(SWIFT_FUZZ_TARGETS) || status=1; \
	exit $$status

# Every committed input once more: the C target here, the Swift ones in swift test.
test-fuzz-replay: $(BUILD)/fuzz/preload-env
	$(BUILD)/fuzz/preload-env -runs=0 -close_fd_mask=2 fuzz/corpus/preload-env fuzz/crashes/preload-env

# --- tests --------------------------------------------------------------------

# The preload suite with the libraries built with ASan and UBSan (their
# runtime preloaded first); a finding aborts the program, which fails the test.
# The linkage test is the release build's: these link the sanitizers' runtime.
test-preload-sanitized: $(SANITIZED_LIBS)
	KEEPALIVE_TEST_PRELOAD_LIB=$(BUILD)/lib-sanitized \
	KEEPALIVE_TEST_PRELOAD_FIRST="$$(gcc -print-file-name=libasan.so)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	$(PYTHON) -m pytest -p no:cacheprovider -q Tests/integration/test_preload.py \
	    -k "not test_libraries_need_only_libc_and_export_only_their_wrapper"


# foreign: another tool's program; layout1: keepalive 0.1.0's pinned layout, for
# the migration test; keepalive-next: the programs as a later build would have
# them (next version), for the upgrade tests; refused: programs the verifier
# refuses, for the load-error tests (both through KEEPALIVE_BPF_OBJECT).
NEXT_PROGRAM_VERSION := $(shell echo $$(($(PROGRAM_VERSION) + 1)))
TEST_HELPERS := $(BUILD)/test/foreign.bpf.o $(BUILD)/test/layout1.bpf.o $(BUILD)/test/keepalive-next.bpf.o \
                $(BUILD)/test/refused.bpf.o $(BUILD)/test/cri/api_pb2_grpc.py $(BUILD)/test/pause \
                $(BUILD)/test/goclient

$(BUILD)/test/%.bpf.o: Tests/integration/helpers/%.bpf.c bpf/keepalive.bpf.c $(BPF_HEADERS) debian/changelog $(BUILD)/bpf/vmlinux.h
	@mkdir -p $(@D)
	$(BPF_CLANG) $(BPF_CFLAGS) -c $< -o $@

$(BUILD)/test/keepalive-next.bpf.o: bpf/keepalive.bpf.c $(BPF_HEADERS) debian/changelog $(BUILD)/bpf/vmlinux.h
	@mkdir -p $(@D)
	$(BPF_CLANG) $(filter-out -DKA_PROGRAM_VERSION=%,$(BPF_CFLAGS)) -DKA_PROGRAM_VERSION=$(NEXT_PROGRAM_VERSION) -c $< -o $@.debug
	$(LLVM_STRIP) -g $@.debug -o $@

# The release before this one (see the previous: target below).

$(PREVIOUS): | $(BUILD)/.deps
	@git cat-file -e $(PREVIOUS_COMMIT)^{commit} 2>/dev/null \
	    || { echo "the previous release $(PREVIOUS_COMMIT) is not in this clone's history (a shallow clone?)"; exit 1; }
	rm -rf $(BUILD)/previous && mkdir -p $(BUILD)/previous/src
	git archive $(PREVIOUS_COMMIT) | tar -x -C $(BUILD)/previous/src
	$(IN_TOOLS_TMP) $(MAKE) --no-print-directory -C $(BUILD)/previous/src swift \
	    > $(BUILD)/previous/build.log 2>&1 \
	    || { tail -20 $(BUILD)/previous/build.log; exit 1; }
	@mkdir -p $(@D)
	cp $(BUILD)/previous/src/build/bin/keepalive $@

previous: $(PREVIOUS)

# Each part's start is stamped, so that a CI log says where the time went.
test: all $(TEST_HELPERS) $(PREVIOUS) $(ROOTFS)/.complete $(DEB) $(PREVIOUS_DEB) | $(BUILD)/.test-deps
	@rc=0; \
	for part in test-licensing test-format test-swift test-fuzz-replay test-preload-sanitized test-integration; do \
	    echo "== $$part at $$(date +%T)"; \
	    $(MAKE) --no-print-directory $$part || rc=1; \
	done; \
	echo "== done at $$(date +%T)"; \
	exit $$rc

# Every file names its licence (an SPDX line, or REUSE.toml for data files).
test-licensing: | $(BUILD)/.test-deps
	$(PYTHON) -m reuse lint --quiet || { $(PYTHON) -m reuse lint | head -40; exit 1; }

# swift-format, with swift-nio's configuration (.swift-format); the generated
# CRI client is left as protoc wrote it. `make format` rewrites the files.
FORMATTED := $(shell git ls-files '*.swift' 2>/dev/null | grep -v '^Sources/CRI/')
SWIFT_FORMAT ?= $(dir $(shell readlink -f $(SWIFT)))swift-format

# The files come from git: outside a checkout there are none, and swift-format would read stdin.
test-format:
	@test -n "$(FORMATTED)" || { echo "test-format: no Swift files from git ls-files (not a git checkout?)" >&2; exit 1; }
	$(SWIFT_FORMAT) lint --strict --parallel $(FORMATTED)

format:
	@test -n "$(FORMATTED)" || { echo "format: no Swift files from git ls-files (not a git checkout?)" >&2; exit 1; }
	$(SWIFT_FORMAT) format --in-place --parallel $(FORMATTED)

test-swift: $(BPF_SKELETONS) $(BPF_OBJECTS_STAMP) $(BUILD)/.versions
	$(SWIFT_RUN) test

# TESTS: a part of the suite, e.g. make test-integration TESTS=Tests/integration/test_bpf.py
TESTS ?= Tests/integration

test-integration: $(PRELOAD_LIBS) $(BUILD)/bin/keepalive $(TEST_HELPERS) $(PREVIOUS) $(ROOTFS)/.complete $(DEB) \
                  $(PREVIOUS_DEB) | $(BUILD)/.test-deps
	$(PYTHON) -m pytest -p no:cacheprovider --durations=8 $(TESTS)

# Debian's kernels (5.10, 6.1, 6.12) under QEMU, each running the kernel
# suite (Tests/kernels/guest.py); part of test-integration, alone here.
kernels: $(ROOTFS)/.complete | $(BUILD)/.test-deps
	$(PYTHON) Tests/kernels/guest.py

test-kernels: $(BUILD)/bin/keepalive $(PRELOAD_LIBS) $(BUILD)/test/keepalive-next.bpf.o $(ROOTFS)/.complete | $(BUILD)/.test-deps
	$(PYTHON) -m pytest -p no:cacheprovider -s Tests/integration/test_kernels.py

clean:
	rm -rf $(BUILD) .build Sources/CLibBPF/generated Sources/KeepaliveCore/generated

# wsplice build. `make` builds build/wsplice; `make test` runs what CI runs.
CC      ?= gcc
CLANG   ?= clang
BPFTOOL ?= bpftool
BUILD   := build
SAN     ?=

ifeq ($(SAN),1)
BUILD   := build/san
endif
CFLAGS  := -O2 -g -Wall -Wextra -Werror -std=gnu11 -D_GNU_SOURCE -Iinclude -I$(BUILD) -Iuser
LDLIBS  := -lbpf -lelf -lz -lcrypto -linih -lsystemd -lcap
ifeq ($(SAN),1)
CC      := clang
CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
endif

BPF_SRCS := $(wildcard bpf/*.bpf.c)
BPF_OBJS := $(patsubst bpf/%.bpf.c,$(BUILD)/%.bpf.o,$(BPF_SRCS))
SKELS    := $(patsubst bpf/%.bpf.c,$(BUILD)/%.skel.h,$(BPF_SRCS))

USER_SRCS := $(wildcard user/*.c)
LIB_SRCS  := $(filter-out user/main.c,$(USER_SRCS))
USER_OBJS := $(patsubst user/%.c,$(BUILD)/user/%.o,$(USER_SRCS))
LIB_OBJS  := $(patsubst user/%.c,$(BUILD)/user/%.o,$(LIB_SRCS))

UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRCS))

ARCH := $(shell uname -m | sed 's/x86_64/x86/;s/aarch64/arm64/')

.PHONY: all deps run test unit integration clean bench bench-tools bench-vm vmtest fuzz man install
.SECONDARY:
all: $(BUILD)/wsplice

deps:
	@bash scripts/deps.sh

# CO-RE: prefer the running kernel's BTF; fall back to the checked-in copy.
$(BUILD)/vmlinux.h:
	@mkdir -p $(@D)
	@if [ -r /sys/kernel/btf/vmlinux ]; then \
		$(BPFTOOL) btf dump file /sys/kernel/btf/vmlinux format c > $@.tmp && mv $@.tmp $@; \
	else cp bpf/vmlinux/vmlinux_x86_64.h $@; fi

$(BUILD)/%.bpf.o: bpf/%.bpf.c $(wildcard include/*.h) $(BUILD)/vmlinux.h
	@mkdir -p $(@D)
	$(CLANG) -O2 -g -target bpf -D__TARGET_ARCH_$(ARCH) -Iinclude -I$(BUILD) -Wall -Werror -c $< -o $@

$(BUILD)/%.skel.h: $(BUILD)/%.bpf.o
	$(BPFTOOL) gen skeleton $< > $@.tmp && mv $@.tmp $@

$(BUILD)/user/%.o: user/%.c $(wildcard user/*.h) $(wildcard include/*.h) $(SKELS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/wsplice: $(USER_OBJS)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/tests/test_%: tests/unit/test_%.c $(LIB_OBJS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(LDFLAGS) $^ -o $@ $(LDLIBS) -lcmocka

run: deps all
	@bash scripts/demo.sh

unit: $(UNIT_BINS)
	@set -e; for t in $(UNIT_BINS); do echo "== $$t"; $$t; done

integration: all bench-tools
	@bash tests/integration/run.sh $(BUILD)/wsplice

# The kernel-mode tests again, with workers that run as nobody (user = NAME).
integration-user: all bench-tools
	@WSPLICE_TEST_USER=nobody bash tests/integration/run.sh $(BUILD)/wsplice -k "sockmap or auto"

# 100 000 idle tunnels through one daemon (about 2 minutes and 3 GiB).
test-100k: all bench-tools
	@WSPLICE_TEST_TUNNELS=$${WSPLICE_TEST_TUNNELS:-100000} bash tests/integration/run.sh $(BUILD)/wsplice test_100k.py

test: deps
	@bash tests/check_layers.sh
	@$(MAKE) --no-print-directory unit
	@$(MAKE) --no-print-directory integration
	@$(MAKE) --no-print-directory integration-user

BENCH_BINS := $(BUILD)/bench/ws_load $(BUILD)/bench/ws_echo $(BUILD)/bench/syn_flood

$(BUILD)/bench/%: tests/bench/%.c tests/bench/bench_common.c tests/bench/bench_common.h
	@mkdir -p $(@D)
	$(CC) -O2 -g -Wall -Wextra -Werror -std=gnu11 -D_GNU_SOURCE $(filter %.c,$^) -o $@

bench-tools: $(BENCH_BINS)

# Side by side on loopback: direct, wsplice's three modes, nginx, HAProxy.
bench: deps all bench-tools
	@bash scripts/bench.sh

# The suite on other kernels under qemu (KERNELS="6.1 6.12", CMD=...).
vmtest: all
	@bash scripts/vmtest.sh

bench-vm: all bench-tools
	@CMD="BENCH_QUICK=1 REPS=$${REPS:-1} bash scripts/bench.sh" bash scripts/vmtest.sh

# The man page, from docs/wsplice.8.md (go-md2man, from make deps).
man: $(BUILD)/wsplice.8
$(BUILD)/wsplice.8: docs/wsplice.8.md
	@mkdir -p $(@D)
	go-md2man -in $< -out $@

# `make install [PREFIX=/usr/local] [DESTDIR=...]`: the binary, the systemd
# unit (its paths filled in), the man page, the documentation and an example
# configuration, which an existing /etc/wsplice/wsplice.conf is never
# overwritten by.
PREFIX     ?= /usr/local
SBINDIR    := $(PREFIX)/sbin
SYSCONFDIR := $(if $(filter /usr,$(PREFIX)),/etc,$(PREFIX)/etc)
UNITDIR    := $(if $(filter /usr,$(PREFIX)),/lib/systemd/system,$(PREFIX)/lib/systemd/system)
install: all man
	install -D -m 0755 $(BUILD)/wsplice $(DESTDIR)$(SBINDIR)/wsplice
	install -d $(DESTDIR)$(UNITDIR)
	sed -e 's|@SBINDIR@|$(SBINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' packaging/wsplice.service.in \
		> $(DESTDIR)$(UNITDIR)/wsplice.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/wsplice.service
	install -D -m 0644 $(BUILD)/wsplice.8 $(DESTDIR)$(PREFIX)/share/man/man8/wsplice.8
	install -d $(DESTDIR)$(PREFIX)/share/doc/wsplice
	install -m 0644 README.md docs/CONFIG.md docs/DEPLOY.md docs/wsplice.example.conf \
		$(DESTDIR)$(PREFIX)/share/doc/wsplice/
	install -d $(DESTDIR)$(SYSCONFDIR)/wsplice
	test -e $(DESTDIR)$(SYSCONFDIR)/wsplice/wsplice.conf || \
		install -m 0644 packaging/wsplice.conf $(DESTDIR)$(SYSCONFDIR)/wsplice/wsplice.conf

clean:
	rm -rf build

# libFuzzer targets (clang + Debian's libclang-rt): each runs FUZZ_SECONDS
# from the seed corpus in tests/fuzz/corpus; new inputs stay under build/.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := request response chunked
FUZZ_LIB := user/http_parse.c user/http_body.c user/ws_handshake.c user/header_rewrite.c user/buf.c
.PHONY: fuzz
$(BUILD)/fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_LIB) user/*.h
	@mkdir -p $(@D)
	clang -g -O1 -std=gnu11 -D_GNU_SOURCE -Iuser -Iinclude -fsanitize=fuzzer,address,undefined \
		-fno-sanitize-recover=undefined $< $(FUZZ_LIB) -o $@ -lcrypto
fuzz: $(addprefix $(BUILD)/fuzz/fuzz_,$(FUZZ_TARGETS))
	@set -e; for t in $(FUZZ_TARGETS); do \
		mkdir -p $(BUILD)/fuzz/corpus/$$t; \
		echo "== fuzz_$$t for $(FUZZ_SECONDS) s"; \
		$(BUILD)/fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
			-dict=tests/fuzz/http.dict -artifact_prefix=$(BUILD)/fuzz/crash-$$t- \
			$(BUILD)/fuzz/corpus/$$t tests/fuzz/corpus/$$t 2>$(BUILD)/fuzz/$$t.log || \
			{ tail -40 $(BUILD)/fuzz/$$t.log; exit 1; }; \
		grep -E "stat::number_of_executed_units|stat::peak_rss_mb" $(BUILD)/fuzz/$$t.log; \
	done

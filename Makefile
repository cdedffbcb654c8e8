# polygate — plain Makefile; dependencies through pkg-config.
#
#   make                      build ./polygate
#   make SANITIZE=address,undefined [test]
#   make tsan-integration     integration tests against a ThreadSanitizer build
#   make test                 unit + integration tests (brings the stack up)
#   make run                  stack up + gateway on config/polygate.yaml
#   make stack-up / stack-down / stack-status

SHELL    := /bin/bash
PKGS     := libevent libevent_pthreads libevent_openssl libpq libmariadb hiredis libmongoc-1.0 \
            libbson-1.0 yaml-0.1 json-c libxxhash openssl
CC       ?= cc
OPT      ?= -O2
WARN     := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
            -Wpointer-arith -Wformat=2 -Wundef -Wwrite-strings -Wno-unused-parameter
CPPFLAGS += -I. -D_GNU_SOURCE
CFLAGS   += -std=c11 -g $(OPT) $(WARN) -pthread $(shell pkg-config --cflags $(PKGS))
LDLIBS   += $(shell pkg-config --libs $(PKGS)) -lhttp_parser -lpthread -lm

comma := ,
ifeq ($(FUZZ),1)
# libFuzzer build: clang, coverage instrumentation, ASan + UBSan
CC       := clang
CFLAGS   += -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer
LDFLAGS  += -fsanitize=address,undefined
VARIANT  := fuzz
else ifneq ($(SANITIZE),)
CFLAGS   += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all
LDFLAGS  += -fsanitize=$(SANITIZE)
VARIANT  := san-$(subst $(comma),-,$(SANITIZE))
else
VARIANT  := release
endif
BUILD    := build/$(VARIANT)

# Every .c under the code folders is part of the gateway library; only
# gateway/main.c holds main().
LIB_SRC  := $(sort $(wildcard lib/*.c model/*.c config/*.c routing/*.c adapters/*.c adapters/*/*.c \
                                rebalance/*.c gateway/*.c))
LIB_SRC  := $(filter-out gateway/main.c,$(LIB_SRC))
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
UNIT_SRC := $(sort $(wildcard tests/unit/test_*.c))
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
CTL_SRC  := $(sort $(wildcard scripts/ctl/*.c))

.PHONY: all layers polygate polygatectl clean deps test check valgrind tsan-integration fuzz fuzz-run fuzz-replay unit integration run stack-up stack-down stack-status format fmt-check

all: polygate polygatectl

polygate: $(BUILD)/polygate
	@ln -sf $(BUILD)/polygate polygate

# the admin CLI (scripts/ctl/polygatectl.c; docs/rebalancing.md)
polygatectl: $(BUILD)/polygatectl
	@ln -sf $(BUILD)/polygatectl polygatectl

$(BUILD)/polygatectl: $(CTL_SRC) $(BUILD)/libpolygate.a
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ $(CTL_SRC) $(BUILD)/libpolygate.a $(LDLIBS)

$(BUILD)/polygate: $(BUILD)/gateway/main.o $(BUILD)/libpolygate.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/libpolygate.a: $(LIB_OBJ)
	@rm -f $@
	@ar rcs $@ $^

# The include rule (docs/design.md, "Map of the house"), checked before
# anything is compiled: lower folders never include higher ones.
layers:
	@scripts/check-layers.sh

$(BUILD)/%.o: %.c | layers
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	@$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -MP -c -o $@ $<

$(BUILD)/tests/%: tests/unit/%.c $(wildcard tests/unit/*.h) $(BUILD)/libpolygate.a
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libpolygate.a $(LDLIBS) $(shell pkg-config --libs cmocka)

-include $(LIB_OBJ:.o=.d) $(BUILD)/gateway/main.d

# Fuzz harnesses (tests/fuzz/fuzz_NAME.c).  `make fuzz` runs each under
# libFuzzer for FUZZ_SECONDS; `make unit` replays their corpus and every kept
# regression input with the ordinary build (tests/fuzz/standalone.c).
FUZZ_TARGETS := $(sort $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c)))
FUZZ_SECONDS ?= 20
FUZZ_REPLAY  := $(FUZZ_TARGETS:%=$(BUILD)/fuzz/replay_%)

$(BUILD)/fuzz/replay_%: tests/fuzz/fuzz_%.c tests/fuzz/standalone.c $(BUILD)/libpolygate.a
	@mkdir -p $(dir $@)
	@$(CC) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ tests/fuzz/fuzz_$*.c tests/fuzz/standalone.c $(BUILD)/libpolygate.a $(LDLIBS)

$(BUILD)/fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(BUILD)/libpolygate.a
	@mkdir -p $(dir $@)
	@$(CC) $(CPPFLAGS) $(CFLAGS) -fsanitize=fuzzer -o $@ $< $(BUILD)/libpolygate.a $(LDLIBS)

fuzz-replay: $(FUZZ_REPLAY)
	@set -e; for t in $(FUZZ_TARGETS); do \
		$(BUILD)/fuzz/replay_$$t tests/fuzz/corpus/$$t tests/fuzz/regressions/$$t; done

fuzz:
	@$(MAKE) --no-print-directory FUZZ=1 fuzz-run

fuzz-run: $(FUZZ_TARGETS:%=$(BUILD)/fuzz/fuzz_%)
	@mkdir -p tests/fuzz/artifacts
	@set -e; for t in $(FUZZ_TARGETS); do \
		echo "== fuzz $$t for $(FUZZ_SECONDS)s"; \
		rm -rf $(BUILD)/fuzz/corpus/$$t; mkdir -p $(BUILD)/fuzz/corpus/$$t; \
		ASAN_OPTIONS=detect_leaks=1 $(BUILD)/fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) \
			-max_len=8192 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
			-artifact_prefix=tests/fuzz/artifacts/$$t- \
			$(BUILD)/fuzz/corpus/$$t tests/fuzz/corpus/$$t 2>&1 | tail -4; \
		test $${PIPESTATUS[0]} -eq 0 || { echo "fuzz $$t found a crash: tests/fuzz/artifacts/"; exit 1; }; \
	done

unit: $(UNIT_BIN) fuzz-replay
	@set -e; for t in $(UNIT_BIN); do echo "== $$t"; $$t; done

integration: polygate
	@POLYGATE_BIN=$(CURDIR)/$(BUILD)/polygate scripts/run-integration.sh

# The README's test command: install what is missing, build, unit tests,
# bring up the local stack, integration tests.  The build runs in a second
# make so that pkg-config sees the packages installed by `deps`.
test: deps
	@$(MAKE) --no-print-directory check

check: polygate polygatectl unit
	@scripts/stack.sh up
	@POLYGATE_BIN=$(CURDIR)/$(BUILD)/polygate scripts/run-integration.sh

# The integration suite with polygate under valgrind memcheck.
valgrind: polygate polygatectl
	@rm -rf build/valgrind
	@scripts/stack.sh up
	@POLYGATE_BIN=$(CURDIR)/scripts/valgrind-polygate.sh scripts/run-integration.sh || \
		{ cat build/valgrind/*.log; exit 1; }
	@if [ -n "$$(cat build/valgrind/*.log 2>/dev/null)" ]; then cat build/valgrind/*.log; exit 1; fi
	@echo "valgrind: no errors, no definite leaks"

# The integration suite with polygate built with ThreadSanitizer
# (scripts/tsan-polygate.sh), against a running stack: a data race stops the
# gateway (exit 66, which the fixtures assert against) and any report in
# build/tsan/ fails the target.  PYTEST_ARGS picks a subset (-k …).
tsan-integration: polygatectl
	@$(MAKE) --no-print-directory SANITIZE=thread build/san-thread/polygate
	@rm -rf build/tsan
	@POLYGATE_BIN=$(CURDIR)/scripts/tsan-polygate.sh scripts/run-integration.sh $(PYTEST_ARGS) || \
		{ cat build/tsan/* 2>/dev/null; exit 1; }
	@if [ -n "$$(cat build/tsan/* 2>/dev/null)" ]; then cat build/tsan/*; exit 1; fi
	@echo "tsan: no data race reported"

deps:
	@scripts/ci-deps.sh

run: deps
	@$(MAKE) --no-print-directory polygate
	@scripts/stack.sh up
	@echo
	@echo "polygate on http://127.0.0.1:8080 (admin http://127.0.0.1:9090). Try:"
	@echo "  curl -s -X PUT localhost:8080/v1/sessions/s1 -d '{\"user_id\":\"u1\",\"data\":{\"theme\":\"dark\"}}'"
	@echo "  curl -s localhost:8080/v1/sessions/s1"
	@echo
	./polygate -c config/polygate.yaml

stack-up:
	@scripts/stack.sh up
stack-down:
	@scripts/stack.sh down
stack-status:
	@scripts/stack.sh status

format:
	clang-format -i $$(git ls-files '*.c' '*.h')
fmt-check:
	clang-format --dry-run --Werror $$(git ls-files '*.c' '*.h')

clean:
	rm -rf build polygate

# Benchmark (bench/, docs/performance.md): the load generator, and `make bench`
# which brings up the stack, runs its own polygate and writes
# bench/results/latest.md + latency.png.  It prints figures; it is not a test.
.PHONY: bench bench-build
BENCH_SRC := $(sort $(wildcard bench/*.c))

$(BUILD)/polygate-bench: $(BENCH_SRC) $(wildcard bench/*.h) $(BUILD)/libpolygate.a
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ $(BENCH_SRC) $(BUILD)/libpolygate.a $(LDLIBS)

bench-build: polygate $(BUILD)/polygate-bench

bench: deps
	@$(MAKE) --no-print-directory bench-build
	@POLYGATE_BIN=$(CURDIR)/$(BUILD)/polygate BENCH_BIN=$(CURDIR)/$(BUILD)/polygate-bench bench/run.sh

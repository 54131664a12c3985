# Benchmarks, included by the top Makefile (see the performance issue and
# the README's Performance section).
#   make bench        installs what is missing (nginx-light, wrk, valgrind, ...),
#                     builds, runs every benchmark (under 10 minutes on 2 cores)
#                     and prints one table of ratios against no shim
#   make bench-smoke  the same with tiny sizes, well under a minute: fails only
#                     if a benchmark fails to run, never on a missed target
# Results also land in $(BUILD)/bench/results{,-smoke}.{md,json}.

BENCH_DIR     := $(BUILD)/bench
BENCH_CFLAGS  := $(CFLAGS) $(WARN) -std=gnu11 -D_GNU_SOURCE -pthread
BENCH_PROGS   := $(addprefix $(BENCH_DIR)/,pingpong bulk churn idle)
BENCH_FWD     := $(BENCH_DIR)/libforward.so
BENCH_RUN     := python3 bench/run.py --lib $(LIB) --bindir $(BENCH_DIR) --fwd $(BENCH_FWD)

.PHONY: bench bench-smoke bench-build bench-deps

$(BENCH_DIR)/%: bench/%.c bench/common.h bench/bench.mk
	@mkdir -p $(dir $@)
	$(CC) $(BENCH_CFLAGS) -o $@ $<

# Interposition and nothing else: the same exports as the shim, built the
# same way (hidden visibility, -z now).
$(BENCH_FWD): bench/forward_only.c bench/bench.mk
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(WARN) -std=gnu11 -fPIC -fvisibility=hidden -shared \
	    -Wl,-z,relro -Wl,-z,now -o $@ $< -ldl

bench-build: $(LIB) $(BENCH_PROGS) $(BENCH_FWD)

bench-deps:
	sh scripts/install-bench-deps.sh

bench: bench-deps
	$(MAKE) bench-build
	$(BENCH_RUN)

bench-smoke: bench-deps
	$(MAKE) bench-build
	$(BENCH_RUN) --smoke

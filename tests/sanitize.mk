# Sanitizers and valgrind (issue 3, "Sanitizers and tools"). Included by
# tests/tests.mk; `make check` runs check-sanitize last.
#
#   check-asan      builds the shim and the unit tests with ASan+UBSan
#                   ($(BUILD)/asan), runs the unit tests (leak detection on),
#                   then the integration tests ASAN_TESTS against that shim
#   check-tsan      builds the shim with TSan ($(BUILD)/tsan) and runs the
#                   threaded integration tests TSAN_TESTS against it
#   (both)          also run tests/sanitize/churn.c: threads making and
#                   closing connections while the watchdog cuts idle ones
#   check-valgrind  an idle cut under valgrind memcheck with $(LIB) preloaded
#                   (tests/sanitize/idle_pair.c): no error, no definite leak
#   check-sanitize  all three, each even after another failed
#
# The sanitizer builds use the top Makefile's own rules, through a sub-make
# with BUILD, CFLAGS and SHIM_LDFLAGS set, so they never touch $(LIB). How an
# instrumented shim gets its runtime preloaded first, and what counts as a
# failure: tests/sanitize/preload-run.sh.

SAN_DIR        := tests/sanitize
SAN_CFLAGS     := -O1 -g -fno-omit-frame-pointer
ASAN_FLAGS     := -fsanitize=address,undefined -fno-sanitize-recover=undefined
TSAN_FLAGS     := -fsanitize=thread
# The UBSan runtime linked into the shim: with libubsan.so beside libasan.so,
# UBSan's reports ignore UBSAN_OPTIONS=log_path (libubsan's call to set it
# binds to libasan's copy of the function) and end up on the program's
# stderr, where a test may never look. Inside the shim, hidden by the
# version script, its own copy gets log_path. The unit tests link it as usual.
ASAN_LDFLAGS   := $(ASAN_FLAGS) -static-libubsan
TSAN_LDFLAGS   := $(TSAN_FLAGS)
ASAN_BUILD     := $(BUILD)/asan
TSAN_BUILD     := $(BUILD)/tsan
VALGRIND_BUILD := $(BUILD)/valgrind

# Short, representative integration tests (exact names, run.py --list).
# No fork under ASan: gcc 12's ASan does not take its allocator's locks
# around fork(), so a child forked while another thread of the parent (its
# watchdog) is inside ASan's allocator inherits a held lock, and hangs in
# ASan's calloc when it starts its own watchdog thread (forking_socat: about
# 1 run in 4, the child's watchdog stuck in AsanThread::Init -> calloc).
# glibc's malloc is fork-safe: the limitation is ASan's, not the shim's.
# Forks run under TSan instead, which handles them.
ASAN_TESTS ?= idle_client_cut idle_nc_client_cut fd_reuse_and_dup threaded_server_many_clients \
              errno_untouched signal_handler_io churn
# The ones with threads in the shimmed process (the watchdog is one more),
# and a forking server whose children start their own watchdog.
TSAN_TESTS ?= threaded_server_many_clients signal_handler_io fd_reuse_and_dup forking_socat churn \
              rules_config_reload_rename stats_counts_by_reason policies_dry_run policies_half_closed

# Both cores for the instrumented builds, unless a jobserver already runs.
SAN_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
SAN_J = $(if $(findstring jobserver,$(MAKEFLAGS)),,-j$(SAN_JOBS))

# $(call SAN_BUILD,dir,ASAN|TSAN,targets): the top Makefile's targets built
# into dir with $(SAN_CFLAGS) $(ASAN_FLAGS) (or TSAN_), the shim linked with
# $(ASAN_LDFLAGS) (or TSAN_). A change of compiler or flags starts the
# directory afresh (make would not notice it).
SAN_SIG = $(CC) $(SAN_CFLAGS) $($(1)_FLAGS) / $($(1)_LDFLAGS)
define SAN_BUILD
	@mkdir -p $(1)
	@if [ "$$(cat $(1)/flags 2>/dev/null)" != "$(call SAN_SIG,$(2))" ]; then \
	    rm -rf $(1)/obj $(1)/tests $(1)/libtcpkeep.so; \
	    echo "$(call SAN_SIG,$(2))" > $(1)/flags; \
	fi
	$(MAKE) --no-print-directory $(SAN_J) BUILD=$(1) CFLAGS='$(SAN_CFLAGS) $($(2)_FLAGS)' \
	    SHIM_LDFLAGS='$(SHIM_LDFLAGS) $($(2)_LDFLAGS)' $(3)
endef

.PHONY: check-sanitize check-asan check-tsan check-valgrind

check-sanitize:
	@failed=""; \
	for t in check-asan check-tsan check-valgrind; do \
	    $(MAKE) --no-print-directory $$t || failed="$$failed $$t"; \
	done; \
	if [ -n "$$failed" ]; then echo "check-sanitize: FAILED:$$failed"; exit 1; fi; \
	echo "check-sanitize: ASan+UBSan, TSan and valgrind runs passed"

# The churn program is a host, built plainly like the other hosts.
$(BUILD)/sanitize/churn: $(SAN_DIR)/churn.c
	@mkdir -p $(dir $@)
	$(CC) -O1 -g $(WARN) -std=gnu11 -D_GNU_SOURCE -pthread -o $@ $<

# Unit tests: every binary runs; a sanitizer report makes it exit non-zero
# (ASan and LeakSanitizer always do, UBSan through -fno-sanitize-recover),
# and any report in its output fails it too. Output in full on failure.
check-asan: $(BUILD)/sanitize/churn
	$(call SAN_BUILD,$(ASAN_BUILD),ASAN,all unit-tests)
	@failed=""; \
	run=""; command -v timeout >/dev/null 2>&1 && run="timeout -s KILL $(UNIT_TIMEOUT)"; \
	for t in $(UNIT_TESTS:%=$(ASAN_BUILD)/tests/%); do \
	    ASAN_OPTIONS=detect_leaks=1:halt_on_error=1 \
	    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	        $$run "$$t" >"$$t.out" 2>&1; rc=$$?; \
	    if [ $$rc -ne 0 ] || grep -Eq "Sanitizer|runtime error:" "$$t.out"; then \
	        cat "$$t.out"; echo "FAIL check-asan unit $${t##*/}: status $$rc"; \
	        failed="$$failed $${t##*/}"; \
	    else \
	        echo "PASS check-asan unit $${t##*/}: $$(grep -E '^\[  PASSED  \]' "$$t.out" | tr -s ' ')"; \
	    fi; \
	done; \
	if [ -n "$$failed" ]; then echo "check-asan: unit tests FAILED:$$failed"; exit 1; fi
	PYTHON3='$(PYTHON3)' CC='$(CC)' sh $(SAN_DIR)/preload-run.sh asan \
	    $(abspath $(ASAN_BUILD)/libtcpkeep.so) $(abspath $(ASAN_BUILD)/integration) \
	    --churn $(abspath $(BUILD)/sanitize/churn) $(ASAN_TESTS)

check-tsan: $(BUILD)/sanitize/churn
	$(call SAN_BUILD,$(TSAN_BUILD),TSAN,all)
	PYTHON3='$(PYTHON3)' CC='$(CC)' sh $(SAN_DIR)/preload-run.sh tsan \
	    $(abspath $(TSAN_BUILD)/libtcpkeep.so) $(abspath $(TSAN_BUILD)/integration) \
	    --churn $(abspath $(BUILD)/sanitize/churn) $(TSAN_TESTS)

$(VALGRIND_BUILD)/idle_pair: $(SAN_DIR)/idle_pair.c
	@mkdir -p $(dir $@)
	$(CC) -O1 -g $(WARN) -std=gnu11 -D_GNU_SOURCE -o $@ $<

# The shim as built and installed ($(LIB)), not an instrumented copy.
check-valgrind: $(LIB) $(VALGRIND_BUILD)/idle_pair
	sh $(SAN_DIR)/valgrind-run.sh $(abspath $(LIB)) $(abspath $(VALGRIND_BUILD)/idle_pair) \
	    $(abspath $(VALGRIND_BUILD))

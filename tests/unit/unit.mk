# cmocka unit tests of the shim's pure logic (config, rules, table, queue,
# schedule), built straight from the shim's sources with no interposition:
# none of the hooks (io.c, hook_*.c, init.c, watchdog.c, log.c, track.c,
# sockopt.c, real.c) is linked. clock.c comes along for schedule.c's
# stamp conversion; the tests' stamps are plain nanoseconds, which it
# passes through unchanged.
#
#   make check-unit    builds $(BUILD)/tests/test_* and runs every one;
#                      fails if any test fails.
#
# Included by the top Makefile (through tests/tests.mk), which provides CC,
# BUILD, CFLAGS, WARN and SHIM_HDR.

UNIT_DIR    := tests/unit
UNIT_OUT    := $(BUILD)/tests
UNIT_CFLAGS := $(CFLAGS) -std=gnu11 -D_GNU_SOURCE -Ishim -pthread $(WARN)
UNIT_LIBS   := -lcmocka

UNIT_TESTS  := test_config test_rules test_table test_schedule test_clock

# The shim sources each test is linked with.
UNIT_SRC_test_config   := shim/config.c
# test_rules stubs tk_log and tk_log_stderr to capture what they say.
UNIT_SRC_test_rules    := shim/rules.c shim/rules_file.c shim/config.c shim/mem.c
# test_clock includes shim/clock.c itself, with fake time sources.
UNIT_SRC_test_clock    :=
UNIT_SRC_test_table    := shim/table.c shim/queue.c shim/mem.c
UNIT_SRC_test_schedule := shim/schedule.c shim/clock.c shim/table.c shim/queue.c shim/mem.c
# test_table injects allocation failures around the real tk_mem_alloc.
UNIT_LDFLAGS_test_table := -Wl,--wrap=tk_mem_alloc
# test_rules injects allocation failures and counts what is not freed.
UNIT_LDFLAGS_test_rules := -Wl,--wrap=tk_mem_alloc -Wl,--wrap=tk_mem_free

UNIT_BINS := $(UNIT_TESTS:%=$(UNIT_OUT)/%)

define UNIT_RULE
$(UNIT_OUT)/$(1): $(UNIT_DIR)/$(1).c $$(UNIT_SRC_$(1)) $$(SHIM_HDR) $(UNIT_DIR)/locked_table.h $(UNIT_DIR)/unit.mk
	@mkdir -p $$(dir $$@)
	$$(CC) $$(UNIT_CFLAGS) -o $$@ $(UNIT_DIR)/$(1).c $$(UNIT_SRC_$(1)) \
	    $$(UNIT_LDFLAGS_$(1)) $$(UNIT_LIBS)
endef
$(foreach t,$(UNIT_TESTS),$(eval $(call UNIT_RULE,$(t))))

.PHONY: check-unit unit-tests
unit-tests: $(UNIT_BINS)

# Every binary runs, even after a failure, so that the whole picture shows;
# the target fails if any of them did. The table lock blocks every signal,
# so a test stuck inside it (a broken heap looping, say) ignores ^C and
# SIGTERM: each binary gets UNIT_TIMEOUT seconds, then SIGKILL.
UNIT_TIMEOUT ?= 120
check-unit: $(UNIT_BINS)
	@failed=""; \
	run=""; command -v timeout >/dev/null 2>&1 && run="timeout -s KILL $(UNIT_TIMEOUT)"; \
	for t in $(UNIT_BINS); do \
	    echo "== $$t"; \
	    $$run "$$t" || failed="$$failed $${t##*/}"; \
	done; \
	if [ -n "$$failed" ]; then \
	    echo "check-unit: FAILED:$$failed"; exit 1; \
	fi; \
	echo "check-unit: all unit tests passed"

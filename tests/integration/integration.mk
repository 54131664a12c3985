# Integration tests: real programs under the shim over loopback only
# (tests/integration/run.py; one line per test, then "N passed, N failed").
# They run against $(BUILD)/libtcpkeep.so as it is: `make check` builds
# first. Select tests with INTEGRATION_ARGS='-k idle -k ipv6'.
PYTHON3 ?= python3
INTEGRATION_ARGS ?=

.PHONY: check-integration
check-integration:
	$(PYTHON3) tests/integration/run.py --lib $(abspath $(BUILD)/libtcpkeep.so) $(INTEGRATION_ARGS)

# Test targets, included by the top Makefile.
#   check-unit         cmocka unit tests of the shim's logic, linked without interposition
#   check-integration  real programs under the shim over loopback
include tests/unit/unit.mk
include tests/integration/integration.mk

# Test targets, included by the top Makefile.
#   check-unit         cmocka unit tests of the shim's logic, linked without interposition
#   check-integration  real programs under the shim over loopback
#   check-sanitize     ASan+UBSan (unit and integration), TSan (threaded
#                      integration tests) and valgrind runs (tests/sanitize.mk)
include tests/unit/unit.mk
include tests/integration/integration.mk
include tests/sanitize.mk

# libtcpkeep. `make` builds build/libtcpkeep.so; `make check` installs what
# is missing (as root, on Debian), builds, and runs every test; `make bench`
# runs the benchmarks (not part of check).

VERSION   := 1.0.0
PREFIX    ?= /usr/local
DESTDIR   ?=
LIBDIR    ?= $(PREFIX)/lib
BINDIR    ?= $(PREFIX)/bin
MANDIR    ?= $(PREFIX)/share/man

CC        ?= cc
BUILD     ?= build
WARN      := -Wall -Wextra -Werror
CFLAGS    ?= -O2 -g
SHIM_CFLAGS := $(CFLAGS) $(WARN) -std=gnu11 -D_GNU_SOURCE -U_FORTIFY_SOURCE -fPIC \
               -fvisibility=hidden -pthread -DTK_VERSION='"$(VERSION)"'
SHIM_LDFLAGS := -shared -Wl,-z,relro -Wl,-z,now -Wl,--version-script=shim/exports.map \
                -Wl,-soname,libtcpkeep.so -pthread -ldl

SHIM_SRC  := $(wildcard shim/*.c)
SHIM_HDR  := $(wildcard shim/*.h)
SHIM_OBJ  := $(SHIM_SRC:shim/%.c=$(BUILD)/obj/%.o)
LIB       := $(BUILD)/libtcpkeep.so

# tcpkeep-tool: the `tcpkeep stats` and `tcpkeep inspect` commands (tools/);
# a plain program, never linked with the shim.
TOOL_SRC  := $(wildcard tools/*.c)
TOOL_HDR  := $(wildcard tools/*.h) shim/reason.h
TOOL      := $(BUILD)/tcpkeep-tool
TOOL_CFLAGS := $(CFLAGS) $(WARN) -std=gnu11 -D_GNU_SOURCE

.PHONY: all tools check check-unit check-integration demo install uninstall clean deps bench

all: $(LIB) tools

tools: $(TOOL)

$(TOOL): $(TOOL_SRC) $(TOOL_HDR) Makefile
	@mkdir -p $(dir $@)
	$(CC) $(TOOL_CFLAGS) -o $@ $(TOOL_SRC)

$(BUILD)/obj/%.o: shim/%.c $(SHIM_HDR) Makefile
	@mkdir -p $(dir $@)
	$(CC) $(SHIM_CFLAGS) -c -o $@ $<

$(LIB): $(SHIM_OBJ) shim/exports.map
	$(CC) -o $@ $(SHIM_OBJ) $(SHIM_LDFLAGS)

include tests/tests.mk
include bench/bench.mk

deps:
	sh scripts/install-deps.sh

check: deps
	$(MAKE) all
	$(MAKE) check-unit
	$(MAKE) check-integration
	$(MAKE) check-sanitize

demo: deps
	$(MAKE) all
	sh scripts/demo.sh

install: $(LIB) $(TOOL)
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man7
	install -m 0644 $(LIB) $(DESTDIR)$(LIBDIR)/libtcpkeep.so
	install -d $(DESTDIR)$(LIBDIR)/tcpkeep
	install -m 0755 $(TOOL) $(DESTDIR)$(LIBDIR)/tcpkeep/tcpkeep-tool
	sed -e 's|@VERSION@|$(VERSION)|' -e 's|@LIBDIR@|$(LIBDIR)|' scripts/tcpkeep > $(DESTDIR)$(BINDIR)/tcpkeep
	chmod 0755 $(DESTDIR)$(BINDIR)/tcpkeep
	sed -e 's|"libtcpkeep [0-9.]*"|"libtcpkeep $(VERSION)"|' man/tcpkeep.1 > $(DESTDIR)$(MANDIR)/man1/tcpkeep.1
	sed -e 's|"libtcpkeep [0-9.]*"|"libtcpkeep $(VERSION)"|' man/libtcpkeep.7 > $(DESTDIR)$(MANDIR)/man7/libtcpkeep.7
	chmod 0644 $(DESTDIR)$(MANDIR)/man1/tcpkeep.1 $(DESTDIR)$(MANDIR)/man7/libtcpkeep.7
	@if [ -z "$(DESTDIR)" ] && command -v ldconfig >/dev/null; then ldconfig; fi

uninstall:
	rm -f $(DESTDIR)$(LIBDIR)/libtcpkeep.so $(DESTDIR)$(BINDIR)/tcpkeep \
	      $(DESTDIR)$(LIBDIR)/tcpkeep/tcpkeep-tool \
	      $(DESTDIR)$(MANDIR)/man1/tcpkeep.1 $(DESTDIR)$(MANDIR)/man7/libtcpkeep.7
	@rmdir $(DESTDIR)$(LIBDIR)/tcpkeep 2>/dev/null || true
	@if [ -z "$(DESTDIR)" ] && command -v ldconfig >/dev/null; then ldconfig; fi

clean:
	rm -rf $(BUILD)

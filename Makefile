# wsserver build. `make test` installs what is missing and runs every test.
CC ?= cc
SHELL = /bin/bash
BUILD ?= build
SAN ?=
LUA_PKG ?= lua5.4
PYTHON ?= /usr/bin/python3
BUSTED ?= lua5.4 /usr/bin/busted

WARN = -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes
CFLAGS ?= -O2 -g
PREFIX ?= /usr/local
ALL_CFLAGS = -std=c11 -D_GNU_SOURCE -DWS_LUA_DIR=\"$(PREFIX)/share/wsserver/lua\" $(WARN) $(CFLAGS) $(SAN) -Iinclude \
             $(shell pkg-config --cflags $(LUA_PKG) 2>/dev/null) -MMD -MP
LDLIBS = -lev $(shell pkg-config --libs $(LUA_PKG) 2>/dev/null || echo -llua5.4) -lhiredis -lcurl -lssl -lcrypto -lz -lm
# ws.pg: libpq (Debian's libpq-dev); its threads only run PQcancel
ALL_CFLAGS += $(shell pkg-config --cflags libpq 2>/dev/null || echo -I/usr/include/postgresql)
LDLIBS += $(shell pkg-config --libs libpq 2>/dev/null || echo -lpq) -lpthread
LDFLAGS ?=
# The server binary is optimized across files (link-time optimization): the layers' objects carry
# LTO bytecode beside ordinary code, so the unit tests link them without it. -fno-plt calls Lua,
# libev and libc through the GOT, without a PLT stub per call. `make OPT=` builds without both.
OPT ?= -flto=auto -ffat-lto-objects -fno-plt

# Three layers, each its own library; dependencies point down only (main -> lua -> core -> proto):
#   src/proto  pure protocol modules: no I/O, no libev, no Lua
#   src/core   the runtime on libev: connections, server, topics, transport, logs, metrics
#   src/lua    the lb_* bindings: the app's Lua state behind struct ws_app_ops
# `make check-layers` (part of `all`) fails when a layer uses a symbol of a layer above it.
LAYERS = proto core lua
PROTO_SRC = $(wildcard src/proto/*.c)
CORE_SRC = $(wildcard src/core/*.c)
LUA_SRC = $(wildcard src/lua/*.c)
obj = $(patsubst src/%.c,$(BUILD)/obj/%.o,$(1))
PROTO_LIB = $(BUILD)/libws_proto.a
CORE_LIB = $(BUILD)/libws_core.a
LUA_LIB = $(BUILD)/libws_lua.a
LIBS = $(LUA_LIB) $(CORE_LIB) $(PROTO_LIB)

# Unit tests mirror src/: tests/unit/<layer>/test_<module>.c links only its layer and those below,
# so a test cannot hide an upward dependency. The other .c files of tests/unit/core (the C test
# app that drives the runtime) are linked into the core and lua tests.
UNIT_SRC = $(wildcard tests/unit/*/test_*.c)
UNIT_BIN = $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
CORE_SUPPORT = $(filter-out tests/unit/core/test_%,$(wildcard tests/unit/core/*.c))
unit_libs = $(if $(findstring /proto/,$(1)),$(PROTO_LIB),$(CORE_SUPPORT) \
            $(if $(findstring /core/,$(1)),$(CORE_LIB) $(PROTO_LIB),$(LIBS)))

.PHONY: bench bench-count fuzz fuzz-run fuzz-net install uninstall man deb
.PHONY: test-browser kit
.PHONY: all run test test-unit test-lua test-integration asan ubsan format format-check clean deps \
        check-layers

all: $(BUILD)/wsserver $(BUILD)/wsserver.1 check-layers

$(BUILD)/obj/%.o: src/%.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(OPT) -c $< -o $@

$(PROTO_LIB): $(call obj,$(PROTO_SRC))
$(CORE_LIB): $(call obj,$(CORE_SRC))
$(LUA_LIB): $(call obj,$(LUA_SRC))
$(LIBS):
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/wsserver: $(BUILD)/obj/main.o $(LIBS)
	$(CC) $(CFLAGS) $(SAN) $(OPT) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# ws.kitcore (src/kit): the real core, bindings and app state in-process for Lua specs, a C module
# for lua5.4 (package.cpath "$(BUILD)/lua/?.so"); every layer built again as position-independent
# code. Lua's own symbols come from the interpreter that loads it.
pic = $(patsubst src/%.c,$(BUILD)/pic/%.o,$(1))
KIT_SO = $(BUILD)/lua/ws/kitcore.so
KIT_SRC = $(wildcard src/kit/*.c)

$(BUILD)/pic/%.o: src/%.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -fPIC -c $< -o $@

$(KIT_SO): $(call pic,$(KIT_SRC) $(LUA_SRC) $(CORE_SRC) $(PROTO_SRC))
	@mkdir -p $(@D)
	$(CC) $(SAN) $(LDFLAGS) -shared -o $@ $^ $(filter-out -llua%,$(LDLIBS))

kit: $(KIT_SO)

# Every ws_/lb_ symbol a layer leaves undefined must be defined by a layer below it.
check-layers: $(LIBS)
	@set -e; below=""; for l in $(LAYERS); do \
	    lib=$(BUILD)/libws_$$l.a; \
	    undef=$$(nm -u $$lib | awk '$$2 ~ /^(ws_|lb_)/ {print $$2}' | sort -u); \
	    own=$$(nm --defined-only $$lib $$below | awk 'NF == 3 && $$2 ~ /[A-Z]/ {print $$3}' | sort -u); \
	    bad=$$(comm -23 <(echo "$$undef" | sed '/^$$/d') <(echo "$$own")); \
	    if [ -n "$$bad" ]; then echo "layer $$l uses symbols of a layer above it:" $$bad >&2; exit 1; fi; \
	    below="$$below $$lib"; \
	done

$(BUILD)/tests/%: tests/unit/%.c $(CORE_SUPPORT) $(LIBS)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -fno-lto -Itests/unit/core -Wno-missing-prototypes -o $@ $< \
	    $(call unit_libs,$<) $(LDFLAGS) $(LDLIBS) -lcmocka

# The man page: docs/wsserver.1.in with the entries of the option table (wsserver --help-man).
# `make man` refreshes the copy in docs/ (a test fails while it is stale).
$(BUILD)/wsserver.1: docs/wsserver.1.in $(BUILD)/wsserver scripts/gen-man.sh
	bash scripts/gen-man.sh $(BUILD)/wsserver $< > $@.tmp && mv $@.tmp $@

man: $(BUILD)/wsserver.1
	cp $< docs/wsserver.1

# The systemd unit goes where systemd looks ($(PREFIX)/lib/systemd/system is on its search path
# for /usr and /usr/local), with the binary's path for this PREFIX.
DESTDIR ?=
SYSCONFDIR ?= /etc
SYSTEMD_UNIT_DIR ?= $(PREFIX)/lib/systemd/system
SYSUSERS_DIR ?= $(PREFIX)/lib/sysusers.d
install: all $(KIT_SO)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/wsserver/lua/ws \
	    $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/share/doc/wsserver/examples \
	    $(DESTDIR)$(SYSTEMD_UNIT_DIR) $(DESTDIR)$(SYSUSERS_DIR)
	install -m 755 $(BUILD)/wsserver $(DESTDIR)$(PREFIX)/bin/wsserver
	install -m 644 lua/ws/*.lua $(DESTDIR)$(PREFIX)/share/wsserver/lua/ws/
	install -m 644 $(KIT_SO) $(DESTDIR)$(PREFIX)/share/wsserver/lua/ws/
	install -d $(DESTDIR)$(PREFIX)/share/wsserver/chat
	install -m 644 examples/chat/public/* $(DESTDIR)$(PREFIX)/share/wsserver/chat/
	install -m 644 $(BUILD)/wsserver.1 $(DESTDIR)$(PREFIX)/share/man/man1/wsserver.1
	install -m 644 README.md contrib/logrotate contrib/default.wsserver \
	    $(DESTDIR)$(PREFIX)/share/doc/wsserver/
	cp -R examples/. $(DESTDIR)$(PREFIX)/share/doc/wsserver/examples/
	sed -e 's|@BINDIR@|$(PREFIX)/bin|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' \
	    contrib/wsserver.service.in > $(DESTDIR)$(SYSTEMD_UNIT_DIR)/wsserver.service
	chmod 644 $(DESTDIR)$(SYSTEMD_UNIT_DIR)/wsserver.service
	install -m 644 contrib/wsserver.sysusers $(DESTDIR)$(SYSUSERS_DIR)/wsserver.conf

uninstall:
	rm -rf $(DESTDIR)$(PREFIX)/bin/wsserver $(DESTDIR)$(PREFIX)/share/wsserver \
	    $(DESTDIR)$(PREFIX)/share/man/man1/wsserver.1 $(DESTDIR)$(PREFIX)/share/doc/wsserver \
	    $(DESTDIR)$(SYSTEMD_UNIT_DIR)/wsserver.service $(DESTDIR)$(SYSUSERS_DIR)/wsserver.conf

# A Debian package, $(BUILD)/wsserver_<version>_<arch>.deb, built with dpkg-deb from a
# PREFIX=/usr build of its own (scripts/mkdeb.sh: layout, control fields, maintainer scripts).
DEB_BUILD = $(BUILD)/deb
deb:
	$(MAKE) BUILD=$(DEB_BUILD) PREFIX=/usr all
	rm -rf $(DEB_BUILD)/root
	$(MAKE) BUILD=$(DEB_BUILD) PREFIX=/usr DESTDIR=$(abspath $(DEB_BUILD))/root \
	    SYSTEMD_UNIT_DIR=/lib/systemd/system install
	bash scripts/mkdeb.sh $(DEB_BUILD)/root $(DEB_BUILD)/wsserver $(BUILD)

deps:
	@bash scripts/install-deps.sh

run: deps
	$(MAKE) all
	$(BUILD)/wsserver -l 0.0.0.0:8080 --static examples/chat/public examples/chat/chat.lua

test-unit: $(UNIT_BIN)
	@set -e; for t in $(UNIT_BIN); do echo "== $$t"; $$t; done

test-lua: $(KIT_SO)
	@if ls tests/lua/*_spec.lua >/dev/null 2>&1; then \
	    LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="$(BUILD)/lua/?.so;;" \
	    $(BUSTED) --lpath="lua/?.lua" tests/lua; \
	fi

test-integration: all $(KIT_SO)
	WSSERVER=$(abspath $(BUILD)/wsserver) $(PYTHON) -m pytest -q -x tests/integration

# End-to-end tests in headless Chromium (Debian's chromium driven by playwright-core).
test-browser: all
	WSSERVER=$(abspath $(BUILD)/wsserver) node --test tests/browser/

ASAN_UBSAN = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all

test: deps
	$(MAKE) all test-unit test-lua test-integration test-browser format-check
	$(MAKE) BUILD=build/san SAN="$(ASAN_UBSAN)" test-unit

asan:
	$(MAKE) BUILD=build/asan SAN="-fsanitize=address -fno-omit-frame-pointer" all test-unit test-integration

ubsan:
	$(MAKE) BUILD=build/ubsan SAN="-fsanitize=undefined -fno-sanitize-recover=all" all test-unit test-integration

# Soak test (not part of `make test`): thousands of churning connections, good and hostile, the
# app reloaded every 5 s; the server's RSS and descriptors must stay flat. DURATION in seconds
# (default 60; 30 with VALGRIND=1, which runs the server under valgrind and needs a clean exit).
DURATION ?=
VALGRIND ?=
.PHONY: soak
soak: all
	DURATION=$(DURATION) VALGRIND=$(VALGRIND) WSSERVER=$(abspath $(BUILD)/wsserver) \
	    $(PYTHON) tests/soak/soak.py

# Fuzzing: libFuzzer entry points over the pure parsers (clang). Seeds in tests/fuzz/corpus/<name>.
FUZZ_SRC = $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BIN = $(FUZZ_SRC:tests/fuzz/%.c=build/fuzz/%)
FUZZ_LIB_SRC = $(PROTO_SRC)
FUZZ_FLAGS = -std=c11 -D_GNU_SOURCE -g -O1 -Iinclude -fsanitize=fuzzer,address,undefined \
             -fno-sanitize-recover=all
SECONDS ?= 60

build/fuzz/%: tests/fuzz/%.c $(FUZZ_LIB_SRC)
	@mkdir -p $(@D)
	clang $(FUZZ_FLAGS) -o $@ $< $(FUZZ_LIB_SRC) -lssl -lcrypto -lz

fuzz: $(FUZZ_BIN)

fuzz-run: fuzz
	@set -e; for f in $(FUZZ_BIN); do n=$$(basename $$f); mkdir -p build/fuzz/corpus/$$n; \
	    echo "== $$n ($(SECONDS) s)"; \
	    $$f -max_total_time=$(SECONDS) -print_final_stats=1 build/fuzz/corpus/$$n tests/fuzz/corpus/$$n; \
	done

# Network fuzzing of the whole server (tests/fuzz/netfuzz.py): mutated sessions against the
# binary built with ASan+UBSan, SECONDS long.
fuzz-net:
	$(MAKE) BUILD=build/san SAN="$(ASAN_UBSAN)" all
	$(PYTHON) tests/fuzz/netfuzz.py --binary build/san/wsserver --seconds $(SECONDS)

# Benchmarks: bench/wsbench is our load generator (C, libev); bench/run.sh drives the scenarios.
WSBENCH_SRC = $(wildcard bench/wsbench/*.c)
WSBENCH_HDR = $(wildcard bench/wsbench/*.h)
$(BUILD)/wsbench: $(WSBENCH_SRC) $(WSBENCH_HDR)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -o $@ $(WSBENCH_SRC) -lev -lssl -lcrypto -lz -lm

bench: all $(BUILD)/wsbench
	WSSERVER=$(abspath $(BUILD)/wsserver) WSBENCH=$(abspath $(BUILD)/wsbench) bash bench/run.sh

bench-count: all $(BUILD)/wsbench
	WSSERVER=$(abspath $(BUILD)/wsserver) WSBENCH=$(abspath $(BUILD)/wsbench) bash bench/count.sh

FORMAT_FILES = $(wildcard src/*.c src/*/*.c src/*/*.h include/ws/*.h tests/unit/*/*.c tests/unit/*/*.h \
               bench/*.c $(WSBENCH_SRC) $(WSBENCH_HDR) tests/fuzz/*.c)

format:
	clang-format -i $(FORMAT_FILES)

format-check:
	clang-format --dry-run --Werror $(FORMAT_FILES)

clean:
	rm -rf build

-include $(patsubst %.o,%.d,$(call obj,$(PROTO_SRC) $(CORE_SRC) $(LUA_SRC) src/main.c)) $(UNIT_BIN:=.d)
-include $(patsubst %.o,%.d,$(call pic,$(KIT_SRC) $(LUA_SRC) $(CORE_SRC) $(PROTO_SRC)))

# aggr: PGXS build of the extension (extension/ + bgworker/ -> aggr.so), the
# two programs (sidecar/, publisher/), and the project's commands.

EXTENSION = aggr
MODULE_big = aggr
OBJS = \
	extension/aggr.o \
	extension/validate.o \
	extension/ingest.o \
	extension/broker.o \
	extension/queue.o \
	extension/queue_scripts.o \
	extension/stats.o \
	extension/watermark.o \
	extension/expire.o \
	extension/citus.o \
	extension/bulk.o \
	extension/event_json.o \
	bgworker/slots.o \
	bgworker/consumer.o \
	bgworker/expiry.o
# extension/aggr.sql is the current version's install script; released
# versions' scripts and the upgrade scripts between them are kept as shipped.
EXTVERSION = $(shell sed -n "s/^default_version = '\(.*\)'/\1/p" aggr.control)
DATA_built = extension/aggr--$(EXTVERSION).sql
DATA = extension/aggr--0.1.sql extension/aggr--0.1--0.2.sql extension/aggr--0.2.sql \
	extension/aggr--0.2--0.3.sql extension/aggr--0.3.sql extension/aggr--0.3--0.4.sql \
	extension/aggr--0.4.sql extension/aggr--0.4--0.5.sql extension/aggr--0.5.sql \
	extension/aggr--0.5--0.6.sql extension/aggr--0.6.sql extension/aggr--0.6--0.7.sql \
	extension/aggr--0.7.sql extension/aggr--0.7--0.8.sql
PGFILEDESC = "aggr - pub-sub log aggregator inside PostgreSQL"

# pg_regress and the isolation specs pass against any running server, aggr
# preloaded or not (make installcheck); what needs the preload or a broker is
# TAP (t/), where each test starts its own servers.
REGRESS = validate ingest bulk ndjson query stats expire citus privileges upgrade
ISOLATION = ingest_race bulk_race stats_race gapless_paging expire_race
TAP_TESTS = 1

# Our code is warning-free; PostgreSQL's headers trip -Wextra's noisier checks.
PG_CPPFLAGS = -DAGGR_VERSION='"$(EXTVERSION)"'
# WERROR= (empty) builds with a compiler whose new warnings we have not seen
# (Dockerfile.postgres: another distribution's gcc); make test keeps -Werror.
WERROR ?= -Werror
PG_CFLAGS = -Wall -Wextra $(WERROR) -Wno-unused-parameter -Wno-missing-field-initializers \
	-Wno-sign-compare -Wno-cast-function-type
SHLIB_LINK = -lhiredis

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

extension/aggr--$(EXTVERSION).sql: extension/aggr.sql
	cp $< $@

# the queue's Lua scripts, kept in the tree as themselves and compiled in
QUEUE_SCRIPTS = extension/lua/push.lua extension/lua/take.lua
extension/queue_scripts.c: $(QUEUE_SCRIPTS) tools/embed.pl
	perl tools/embed.pl aggr_lua_push extension/lua/push.lua \
		aggr_lua_take extension/lua/take.lua > $@
EXTRA_CLEAN = extension/queue_scripts.c

# the module's version (PG_MODULE_MAGIC_EXT) comes from aggr.control
extension/aggr.o: aggr.control

BINDIR ?= /usr/local/bin

all: programs
programs:
	$(MAKE) -C sidecar
	$(MAKE) -C publisher

install: install-programs
install-programs: programs
	$(MAKE) -C sidecar install BINDIR=$(BINDIR)
	$(MAKE) -C publisher install BINDIR=$(BINDIR)

clean: clean-programs
clean-programs:
	-$(MAKE) -C sidecar clean
	-$(MAKE) -C publisher clean

# The TAP suite alone (PROVE_TESTS='t/010_x.pl' picks files); make test runs it.
installcheck-tap:
	$(prove_installcheck)

# make test: the whole suite on throwaway servers (tools/test.sh says how).
test:
	bash tools/test.sh

# the full fault suite (200,000 events per scenario, repeated faults)
faults:
	bash tools/test.sh faults

# every libFuzzer harness for FUZZ_SECONDS each; crashes go to fuzz-crashes/
FUZZ_SECONDS ?= 600
fuzz:
	$(MAKE) -C sidecar fuzz_request FUZZ_CC=clang-14
	$(MAKE) -C publisher fuzz_json FUZZ_CC=clang-14
	bash tools/fuzz.sh $(FUZZ_SECONDS)

demo:
	bash tools/demo.sh

demo-stop:
	bash tools/demo.sh stop

bench:
	bash bench/run.sh

# aggr_ingest on a 1+2 Citus cluster beside one PostgreSQL, and its projection
bench-citus:
	bash bench/citus.sh

# pgindent (from the cached PostgreSQL 18 tree) over all of aggr's C
indent:
	bash tools/indent.sh

.PHONY: indent installcheck-tap faults fuzz programs install-programs clean-programs test demo demo-stop bench bench-citus

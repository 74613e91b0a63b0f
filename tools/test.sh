#!/usr/bin/env bash
# test.sh (make test): installs what is missing, builds PostgreSQL 18 with
# assertions once (tools/pg18.sh caches it), then for each tested major (15
# from Debian, 18) builds and installs aggr with `make` and `make install`
# (the targets Dockerfile.postgres runs) and runs, as an unprivileged user,
# from a temp copy of the tree (CI's clone may sit where that user cannot read):
#   - make installcheck (pg_regress + isolation) against a stock server, then
#     against the same server with aggr preloaded;
#   - the TAP suite (all of it on 15; stock, direct, broker, sidecar, stream,
#     retention and Citus on 18), t/080 on a Citus cluster of three nodes
#     (Citus 13.2.2 on 15, 14.0.1 on 18, built by tools/citus.sh);
# and, once: the program unit tests, make demo twice, the fuzz smoke, the
# ASan/UBSan runs, and the pgindent check.  Removes everything it started,
# whatever the outcome; exits non-zero on any failure.
# `test.sh faults` (make faults) runs the full fault suite instead (on 15).
set -uo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
. "$src/tools/deps.sh"
aggr_install_deps || exit 1
started=$(date +%s)

pg15=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
pg18=$(bash "$src/tools/pg18.sh") || { echo "make test: could not build PostgreSQL 18 (tools/pg18.sh)" >&2; exit 1; }

work=$(mktemp -d /tmp/aggr-test.XXXXXX)
runner=$(id -un)
if [ "$(id -u)" -eq 0 ]; then runner=postgres; fi
as_runner() {
    if [ "$runner" = "$(id -un)" ]; then "$@"; else runuser -u "$runner" -- "$@"; fi
}
cleanup() {
    for data in "$work"/data*; do
        [ -f "$data/postmaster.pid" ] || continue
        as_runner "$(cat "$data.bindir")/pg_ctl" -D "$data" -m immediate stop >/dev/null 2>&1
    done
    rm -rf "$work"
}
trap cleanup EXIT
chown "$runner" "$work"
chmod 755 "$work"

# A copy of the tree for one major, built and (as root) installed into it by
# the same make targets a user and Dockerfile.postgres run.
build_tree() {
    local major=$1 pg_config=$2 tree=$work/tree$1
    mkdir "$tree"
    tar -C "$src" --exclude=.git -cf - . | tar -C "$tree" -xf -
    make -C "$tree" -s clean PG_CONFIG="$pg_config" >/dev/null 2>&1
    make -C "$tree" -s -j2 PG_CONFIG="$pg_config" || return 1
    if [ "$(id -u)" -eq 0 ]; then
        make -C "$tree" -s install PG_CONFIG="$pg_config" >/dev/null || return 1
    else
        # not root: the tests can only use what is installed, so it must be this build
        local f
        for f in "$tree/aggr.so" "$tree"/extension/aggr--*.sql; do
            cmp -s "$f" "$("$pg_config" --pkglibdir)/$(basename "$f")" ||
                cmp -s "$f" "$("$pg_config" --sharedir)/extension/$(basename "$f")" || {
                echo "make test: $(basename "$f") installed for PostgreSQL $major is not this build;" \
                    "run make install PG_CONFIG=$pg_config (or make test as root)" >&2
                return 1
            }
        done
    fi
    chown -R "$runner" "$tree"
}
build_tree 15 "$pg15" || exit 1
# Citus for t/080 (built once per major, cached; installed as root)
for pg_config in "$pg15" "$pg18"; do
    citus=$(bash "$src/tools/citus.sh" "$pg_config") ||
        { echo "make test: could not build Citus for $pg_config (tools/citus.sh)" >&2; exit 1; }
    echo "make test: Citus $citus installed for $("$pg_config" --version)"
done
build_tree 18 "$pg18" || exit 1
# the sanitizer builds and the fuzz harnesses (clang: see sidecar/Makefile)
as_runner make -C "$work/tree15/sidecar" -s asan fuzz_request || exit 1
as_runner make -C "$work/tree15/publisher" -s asan fuzz_json || exit 1

free_port() {
    perl -MIO::Socket::INET -e 'my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => 0, Listen => 1) or die; print $s->sockport'
}

# A throwaway stock cluster of one major for make installcheck: no aggr.* and
# no shared_preload_libraries, as a user's server after initdb.
start_cluster() {
    local major=$1 bindir data=$work/data$1
    bindir=$("$2" --bindir)
    echo "$bindir" > "$data.bindir"
    as_runner "$bindir/initdb" -D "$data" -A trust -U postgres --no-sync >/dev/null || return 1
    cat >> "$data/postgresql.conf" <<CONF
port = $(free_port)
listen_addresses = '127.0.0.1'
unix_socket_directories = '$work'
fsync = off
max_connections = 50
CONF
    as_runner "$bindir/pg_ctl" -D "$data" -l "$data.log" -w start >/dev/null || { cat "$data.log"; return 1; }
}
preload_cluster() {
    local data=$work/data$1 bindir
    bindir=$(cat "$data.bindir")
    echo "shared_preload_libraries = 'aggr'" >> "$data/postgresql.conf"
    as_runner "$bindir/pg_ctl" -D "$data" -l "$data.log" -w restart >/dev/null || { cat "$data.log"; return 1; }
    [ "$(as_runner "$bindir/psql" -X -At -h "$work" -p "$(sed -n 's/^port = //p' "$data/postgresql.conf")" \
        -U postgres -d postgres -c 'SHOW shared_preload_libraries')" = aggr ] ||
        { echo "make test: the PostgreSQL $1 cluster did not come back with aggr preloaded" >&2; return 1; }
}

passed=0 failed=0
# suite MAJOR NAME CMD...: runs CMD in that major's tree against its cluster
suite() {
    local major=$1 name=$2 pg_config tree=$work/tree$1 port
    shift 2
    pg_config=$([ "$major" = 18 ] && echo "$pg18" || echo "$pg15")
    port=$(sed -n 's/^port = //p' "$work/data$major/postgresql.conf" 2>/dev/null | tail -n 1)
    echo "=== PostgreSQL $major: $name"
    if as_runner env -C "$tree" PGHOST="$work" PGPORT="$port" PGUSER=postgres \
            PG_CONFIG="$pg_config" PATH="$("$pg_config" --bindir):$PATH" \
            AGGR_SIDECAR="$tree/sidecar/aggr-sidecar" \
            AGGR_PUBLISHER="$tree/publisher/aggr-publisher" "$@"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "=== PostgreSQL $major: $name FAILED"
        find "$tree" -name regression.diffs -exec cat {} \; -delete 2>/dev/null | head -300
    fi
}
installcheck() { suite "$1" "make installcheck ($2)" make -s installcheck PG_CONFIG="$3" TAP_TESTS=; }

if [ "${1:-}" = faults ]; then
    # make faults: the full fault suite alone, every scenario line shown
    suite 15 "fault suite (full)" env FAULTS_FULL=1 make -s installcheck-tap \
        PROVE_TESTS=t/070_faults.pl PROVE_FLAGS=-v
else
    for major in 15 18; do
        pg_config=$([ "$major" = 18 ] && echo "$pg18" || echo "$pg15")
        start_cluster "$major" "$pg_config" || exit 1
        installcheck "$major" "stock server, aggr not preloaded" "$pg_config"
        preload_cluster "$major" || exit 1
        installcheck "$major" "aggr preloaded" "$pg_config"
    done
    suite 18 "TAP: stock server, direct, broker, queue, sidecar, event stream, retention, bulk crash, compose settings, Citus" make -s installcheck-tap \
        PROVE_TESTS="t/005_stock.pl t/010_direct.pl t/020_broker.pl t/025_queue.pl t/040_sidecar.pl t/046_stream.pl t/047_retention.pl t/048_bulk_crash.pl t/060_compose.pl t/080_citus.pl"
    suite 15 "TAP end-to-end" make -s installcheck-tap
    suite 15 "sidecar unit tests" make -s -C sidecar check
    suite 15 "publisher unit tests" make -s -C publisher check
    suite 15 "make demo, twice (13,000 unique, then all duplicates), with no retry" bash -c '
        set -o pipefail
        d=$(mktemp -d)
        export AGGR_DEMO_DIR=$d/demo
        export AGGR_HTTP_PORT=$(perl -MIO::Socket::INET -e "print IO::Socket::INET->new(LocalAddr => q(127.0.0.1), LocalPort => 0, Listen => 1)->sockport")
        # the default queue bound holds the demo: not one 503 to retry
        demo() {
            bash tools/demo.sh | tee "$d/out" &&
                { grep -q " 0 retries\$" "$d/out" || { echo "demo: the publisher had to retry"; false; }; }
        }
        demo && demo
        rc=$?
        bash tools/demo.sh clean
        rm -rf "$d"
        exit $rc'
    suite 15 "fuzz smoke (30 s per harness)" bash tools/fuzz.sh 30
    suite 15 "sidecar under ASan/UBSan (t/040)" bash tools/asan-tap.sh sidecar t/040_sidecar.pl
    suite 15 "sidecar's event stream under ASan/UBSan (t/046)" bash tools/asan-tap.sh sidecar t/046_stream.pl
    suite 15 "publisher under ASan/UBSan (t/050)" bash tools/asan-tap.sh publisher t/050_publisher_redis.pl
    suite 18 "C code is pgindent-clean (make indent fixes it)" bash tools/indent.sh --check
fi

echo "make test took $(( $(date +%s) - started )) s"
echo "make test suites: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

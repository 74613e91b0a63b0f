#!/usr/bin/env bash
# test.sh (make test): installs what is missing, builds and installs aggr, then
# runs pg_regress, the isolation specs, the program unit tests and the TAP
# suite on throwaway servers, as an unprivileged user, from a temp copy of the
# tree (CI's clone may sit where that user cannot read).  Removes everything it
# started, whatever the outcome; exits non-zero on any failure.
# `test.sh faults` (make faults) runs the full fault suite instead.
set -uo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
. "$src/tools/deps.sh"
aggr_install_deps || exit 1
export PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
bindir=$("$PG_CONFIG" --bindir)

started=$(date +%s)
make -C "$src" -s -j2 PG_CONFIG="$PG_CONFIG" || exit 1
# the sanitizer builds and the fuzz harnesses (clang: see sidecar/Makefile)
make -C "$src/sidecar" -s asan fuzz_request || exit 1
make -C "$src/publisher" -s asan fuzz_json || exit 1
if [ "$(id -u)" -eq 0 ]; then
    make -C "$src" -s install PG_CONFIG="$PG_CONFIG" >/dev/null || exit 1
fi

work=$(mktemp -d /tmp/aggr-test.XXXXXX)
runner=$(id -un)
if [ "$(id -u)" -eq 0 ]; then runner=postgres; fi
cleanup() {
    if [ -f "$work/data/postmaster.pid" ]; then
        as_runner "$bindir/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1
    fi
    rm -rf "$work"
}
trap cleanup EXIT
as_runner() {
    if [ "$runner" = "$(id -un)" ]; then "$@"; else runuser -u "$runner" -- "$@"; fi
}

tree="$work/tree"
mkdir "$tree"
tar -C "$src" --exclude=.git -cf - . | tar -C "$tree" -xf -
chown -R "$runner" "$work"
chmod 755 "$work"

# a throwaway cluster for pg_regress and the isolation specs
port=$(perl -MIO::Socket::INET -e 'my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => 0, Listen => 1) or die; print $s->sockport')
as_runner "$bindir/initdb" -D "$work/data" -A trust -U postgres --no-sync >/dev/null || exit 1
cat >> "$work/data/postgresql.conf" <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$work'
shared_preload_libraries = 'aggr'
fsync = off
max_connections = 50
CONF
as_runner "$bindir/pg_ctl" -D "$work/data" -l "$work/postgres.log" -w start >/dev/null || { cat "$work/postgres.log"; exit 1; }

passed=0 failed=0
suite() {
    local name=$1; shift
    echo "=== $name"
    if as_runner env -C "$tree" PGHOST="$work" PGPORT="$port" PGUSER=postgres \
            PATH="$bindir:$PATH" AGGR_SIDECAR="$tree/sidecar/aggr-sidecar" \
            AGGR_PUBLISHER="$tree/publisher/aggr-publisher" "$@"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "=== $name FAILED"
        find "$tree" -name regression.diffs -exec cat {} \; 2>/dev/null | head -300
    fi
}

if [ "${1:-}" = faults ]; then
    # make faults: the full fault suite alone, every scenario line shown
    suite "fault suite (full)" env FAULTS_FULL=1 make -s installcheck-tap PG_CONFIG="$PG_CONFIG" \
        PROVE_TESTS=t/070_faults.pl PROVE_FLAGS=-v
else
    suite "pg_regress and isolation" make -s installcheck PG_CONFIG="$PG_CONFIG" TAP_TESTS=
    suite "sidecar unit tests" make -s -C sidecar check
    suite "publisher unit tests" make -s -C publisher check
    suite "TAP end-to-end" make -s installcheck-tap PG_CONFIG="$PG_CONFIG"
    suite "make demo, twice (13,000 unique, then all duplicates)" bash -c '
        d=$(mktemp -d)
        export AGGR_DEMO_DIR=$d/demo
        export AGGR_HTTP_PORT=$(perl -MIO::Socket::INET -e "print IO::Socket::INET->new(LocalAddr => q(127.0.0.1), LocalPort => 0, Listen => 1)->sockport")
        bash tools/demo.sh && bash tools/demo.sh
        rc=$?
        bash tools/demo.sh clean
        rm -rf "$d"
        exit $rc'
    suite "fuzz smoke (30 s per harness)" bash tools/fuzz.sh 30
    suite "sidecar under ASan/UBSan (t/040)" bash tools/asan-tap.sh sidecar t/040_sidecar.pl
    suite "publisher under ASan/UBSan (t/050)" bash tools/asan-tap.sh publisher t/050_publisher_redis.pl
fi

echo "make test took $(( $(date +%s) - started )) s"
echo "make test suites: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

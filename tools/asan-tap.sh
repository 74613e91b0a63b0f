#!/usr/bin/env bash
# asan-tap.sh sidecar|publisher TEST: runs one TAP test (t/NNN_x.pl) with
# AGGR_SIDECAR or AGGR_PUBLISHER pointing to the ASan/UBSan build
# (make -C sidecar asan, make -C publisher asan CC=clang-14; tools/test.sh
# builds both).  The sanitizers abort on the first error and write every
# report (memory error, leak at exit, undefined behaviour) to a file of
# their own, whoever started the program and whatever it did with stderr;
# the run fails when the test fails or when any report, or a report line
# in a sidecar log, exists.
set -uo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
program=$1
test=$2

case $program in
    sidecar) export AGGR_SIDECAR=$src/sidecar/aggr-sidecar-asan ;;
    publisher) export AGGR_PUBLISHER=$src/publisher/aggr-publisher-asan ;;
    *) echo "usage: $0 sidecar|publisher t/NNN_test.pl" >&2; exit 2 ;;
esac
bin=${AGGR_SIDECAR:-${AGGR_PUBLISHER:-}}
[ -x "$bin" ] || { echo "$bin is not built" >&2; exit 1; }

reports=$(mktemp -d /tmp/aggr-asan.XXXXXX) || exit 1
trap 'rm -rf "$reports"' EXIT
# a small quarantine, so that memory bounds asserted by the tests hold here too
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:quarantine_size_mb=8:log_path=$reports/report"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$reports/report"
# keep the test's folders (the sidecar logs) to scan them
export PG_TEST_NOCLEAN=1

make -s -C "$src" installcheck-tap PG_CONFIG="${PG_CONFIG:-pg_config}" \
    PROVE_TESTS="$test"
rc=$?

found=0
for f in "$reports"/report.*; do
    [ -e "$f" ] || continue
    found=1
    echo "=== sanitizer report $(basename "$f")"
    head -60 "$f"
done
while IFS= read -r log; do
    found=1
    echo "=== sanitizer output in $log"
    grep -E -m 20 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$log"
done < <(grep -rlE 'ERROR: (Address|Leak)Sanitizer|runtime error:' \
    "$src/tmp_check" --include='sidecar_*.log' 2>/dev/null)
echo "$program under ASan/UBSan: test exit $rc, sanitizer reports: $found"
[ "$rc" -eq 0 ] && [ "$found" -eq 0 ]

#!/usr/bin/env bash
# fuzz.sh [SECONDS]: runs every libFuzzer harness of aggr, one after the
# other, for SECONDS each (default 600): the sidecar's request handling
# (sidecar/fuzz_request) and the publisher's answer parsing
# (publisher/fuzz_json).  Each starts from its seed corpus in the repo
# (read only; what it discovers goes to a scratch folder) and writes any
# crash, leak, timeout or broken invariant to fuzz-crashes/ (FUZZ_CRASHES
# overrides it).  Prints one line per harness with its exec count; exits
# non-zero when a harness fails or leaves a new file in the crash folder.
# The harnesses are built beforehand (make fuzz, or tools/test.sh).
set -uo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-600}
crashes=${FUZZ_CRASHES:-$src/fuzz-crashes}

# folder, binary, longest input: above the largest --max-body the sidecar
# harness picks (5000 bytes), so bodies over the limit are generated
harnesses=(
    "sidecar fuzz_request 16384"
    "publisher fuzz_json 4096"
)

mkdir -p "$crashes" || exit 1
scratch=$(mktemp -d /tmp/aggr-fuzz.XXXXXX) || exit 1
trap 'rm -rf "$scratch"' EXIT
failed=0
for h in "${harnesses[@]}"; do
    read -r dir bin max_len <<<"$h"
    if [ ! -x "$src/$dir/$bin" ]; then
        echo "$bin: not built (make -C $dir $bin)"
        failed=1
        continue
    fi
    before=$(find "$crashes" -name "$bin-*" | wc -l)
    mkdir "$scratch/$bin"
    "$src/$dir/$bin" -max_total_time="$seconds" -max_len="$max_len" \
        -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        -artifact_prefix="$crashes/$bin-" \
        "$scratch/$bin" "$src/$dir/fuzz-corpus" >"$scratch/$bin.log" 2>&1
    rc=$?
    after=$(find "$crashes" -name "$bin-*" | wc -l)
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$scratch/$bin.log")
    cov=$(grep -o 'cov: [0-9]*' "$scratch/$bin.log" | tail -1)
    echo "$bin: ${runs:-0} runs in $seconds s, ${cov:-cov: ?}," \
        "corpus $(find "$scratch/$bin" -type f | wc -l) new inputs," \
        "$((after - before)) crashes"
    if [ "$rc" -ne 0 ] || [ "$after" -ne "$before" ]; then
        failed=1
        echo "$bin FAILED (exit $rc); reproducers in $crashes; the end of its log:"
        grep -v -E '^#[0-9]+.*(NEW|REDUCE|pulse)' "$scratch/$bin.log" | tail -40
    fi
done
exit "$failed"

#!/usr/bin/env bash
# bench/citus.sh (make bench-citus): aggr_ingest on a Citus cluster of one
# coordinator and two workers, beside aggr_ingest on one plain PostgreSQL, in
# the same run on this machine, and what the measured costs say about more
# machines.
#
#   plain   SELECT aggr_ingest(batch) on one PostgreSQL 15, aggr preloaded
#   citus   the same on the coordinator of a 1+2 cluster, aggr_distribute()d
#           with the settings README recommends (citus.max_cached_conns_per_worker
#           = 4, shard count BENCH_SHARDS, default 4: aggr_distribute()'s for two workers)
# Both: BENCH_EVENTS events (default 200,000; 35 % duplicates), batches of
# 500, 2 pgbench clients over the Unix socket, synchronous_commit on, empty
# tables after a checkpoint, alternated three times, medians.
#
# During each citus run it reads, per node, the CPU seconds of the postmaster
# and all its children from /proc (a child that ended is in the postmaster's
# cutime), and the bytes that crossed the loopback interface: the clients
# use the Unix socket, so loopback carries only the traffic between nodes.
# From those it projects throughput for W workers of N cores each:
#   rate(W, N) = min(N / coordinator s per event, W * N / workers' s per event)
# Results: bench/out/citus.md.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
. "$src/tools/deps.sh"
aggr_install_deps
. "$src/tools/servers.sh"    # as_server_user, free_port

pg_config=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
bin=$("$pg_config" --bindir)
events=${BENCH_EVENTS:-200000}
shards=${BENCH_SHARDS:-4}
batches=$(( (events + 499) / 500 ))
out="$src/bench/out"
mkdir -p "$out"

make -C "$src" -s -j2 PG_CONFIG="$pg_config" >/dev/null
[ "$(id -u)" -eq 0 ] && make -C "$src" -s install PG_CONFIG="$pg_config" >/dev/null
citus=$(bash "$src/tools/citus.sh" "$pg_config")

state=$(mktemp -d /tmp/aggr-bench-citus.XXXXXX)
chmod 755 "$state"
[ "$(id -u)" -eq 0 ] && chown postgres "$state"
cleanup() {
    for d in "$state"/*/; do
        [ -f "$d/postmaster.pid" ] && as_server_user "$bin/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1
    done
    rm -rf "$state"
}
trap cleanup EXIT

declare -A port
# start_node NAME PRELOAD
start_node() {
    local d=$state/$1
    port[$1]=$(free_port)
    as_server_user "$bin/initdb" -D "$d" -A trust -U postgres --no-sync >/dev/null
    cat >> "$d/postgresql.conf" <<CONF
port = ${port[$1]}
listen_addresses = '127.0.0.1'
unix_socket_directories = '$state'
shared_preload_libraries = '$2'
shared_buffers = '1GB'
max_wal_size = '8GB'
checkpoint_timeout = '30min'
citus.max_cached_conns_per_worker = 4
CONF
    [[ $2 == *citus* ]] || sed -i '/^citus\./d' "$d/postgresql.conf"
    as_server_user "$bin/pg_ctl" -D "$d" -l "$d.log" -w start >/dev/null || { cat "$d.log"; exit 1; }
}
sql() { local node=$1; shift; psql -X -q -At -h "$state" -p "${port[$node]}" -U postgres -d postgres "$@"; }

start_node plain aggr
start_node coordinator citus,aggr
start_node worker1 citus
start_node worker2 citus
for n in coordinator worker1 worker2; do sql $n -c 'CREATE EXTENSION citus'; done
sql coordinator -c "SELECT citus_set_coordinator_host('127.0.0.1', ${port[coordinator]})" >/dev/null
for n in worker1 worker2; do sql coordinator -c "SELECT citus_add_node('127.0.0.1', ${port[$n]})" >/dev/null; done
for n in plain coordinator; do sql $n -c 'CREATE EXTENSION aggr'; done
sql coordinator -c "SELECT aggr_distribute($shards)" >/dev/null

# the batches, a local table on each: event k of 20 is a re-send of an earlier
# one for k < 7 (35 %), the rest new; 7 topics
for n in plain coordinator; do
    sql $n -v n="$events" <<'SQL'
CREATE TABLE bench_batches AS
SELECT (i - 1) / 500 + 1 AS id,
       '[' || string_agg(format('{"topic":"topic-%s","event_id":"ev-%s","timestamp":"2025-01-01T00:00:00Z","source":"bench","payload":{"n":%s,"msg":"hello from bench-citus"}}',
                                k % 7, k, i), ',' ORDER BY i) || ']' AS body
FROM (SELECT i, CASE WHEN i % 20 < 7 AND i > 1000 THEN (i * 7919) % (i - 1) + 1 ELSE i END AS k
      FROM generate_series(1, :n) i) s
GROUP BY (i - 1) / 500;
CREATE UNIQUE INDEX ON bench_batches (id);
ANALYZE bench_batches;
SQL
done
cat > "$state/ingest.sql" <<'EOF'
\set b 1 + :client_id + 2 * :k
\set k :k + 1
SELECT aggr_ingest(body::jsonb) FROM bench_batches WHERE id = :b;
EOF
chmod 644 "$state/ingest.sql"

# CPU seconds so far of each node's postmaster and its children
node_cpu() {
    local n pm
    for n in coordinator worker1 worker2; do
        pm=$(head -n 1 "$state/$n/postmaster.pid")
        perl -e '
            my ($pm, $hz) = @ARGV; my $t = 0;
            opendir(my $d, "/proc") or die;
            for my $p (grep { /^\d+$/ } readdir $d) {
                open(my $f, "<", "/proc/$p/stat") or next;
                my $l = <$f>; $l =~ s/^.*\) //; my @s = split " ", $l;
                $t += $s[11] + $s[12] + $s[13] + $s[14] if $p == $pm;
                $t += $s[11] + $s[12] if $s[1] == $pm;
            }
            printf "%.2f\n", $t / $hz' "$pm" "$(getconf CLK_TCK)"
    done
}
loopback_bytes() { awk '/^ *lo:/ { print $2 + $10 }' /proc/net/dev; }

# run NODE: events/s of one pass over every batch
run() {
    local n=$1
    sql "$n" -c 'TRUNCATE aggr.events, aggr.counters'
    for m in $([ "$n" = plain ] && echo plain || echo coordinator worker1 worker2); do sql "$m" -c CHECKPOINT; done
    pgbench -n -h "$state" -p "${port[$n]}" -U postgres -c 2 -j 2 -t $(( batches / 2 )) -D k=0 \
        -f "$state/ingest.sql" postgres 2>&1 | awk -v ev="$events" -v b="$batches" '/^tps/ { printf "%.0f\n", $3 * ev / b }'
    [ "$(sql "$n" -c "SELECT aggr_stats() ->> 'received'")" = "$events" ] ||
        { echo "bench-citus: $n did not count every event" >&2; exit 1; }
}
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

plains=() citusrates=() costs=()
for rep in 1 2 3; do
    plains+=("$(run plain)")
    before=($(node_cpu)) lo_before=$(loopback_bytes)
    citusrates+=("$(run coordinator)")
    after=($(node_cpu)) lo_after=$(loopback_bytes)
    costs+=("$(awk -v e="$events" -v c0="${before[0]}" -v c1="${after[0]}" -v a0="${before[1]}" -v a1="${after[1]}" \
        -v b0="${before[2]}" -v b1="${after[2]}" -v l0="$lo_before" -v l1="$lo_after" \
        'BEGIN { printf "%.4f %.4f %.4f %.0f\n", (c1 - c0) * 1000 / e, (a1 - a0) * 1000 / e, (b1 - b0) * 1000 / e, (l1 - l0) / e }')")
    echo "run $rep: plain ${plains[-1]} ev/s, citus ${citusrates[-1]} ev/s; CPU s per 1,000 events and loopback bytes per event: ${costs[-1]}"
done
plain=$(printf '%s\n' "${plains[@]}" | median)
rate=$(printf '%s\n' "${citusrates[@]}" | median)
# the costs of the median citus run
for i in 0 1 2; do [ "${citusrates[$i]}" = "$rate" ] && cost=(${costs[$i]}); done

{
    echo "# bench-citus: Citus $citus, PostgreSQL $("$pg_config" --version | sed 's/PostgreSQL //'), $(nproc) cores, $(date -u +%F)"
    echo
    echo "$events events (35 % duplicates), batches of 500, 2 clients, medians of 3; aggr.events in $shards shards."
    echo
    echo "| workload | events/s | × plain |"
    echo "|---|---:|---:|"
    echo "| aggr_ingest, one plain PostgreSQL | $plain | 1 |"
    echo "| aggr_ingest, Citus 1 coordinator + 2 workers, same machine | $rate | $(awk -v a="$rate" -v b="$plain" 'BEGIN { printf "%.2f", a / b }') |"
    echo
    echo "| node | CPU s per 1,000 events |"
    echo "|---|---:|"
    echo "| coordinator | ${cost[0]} |"
    echo "| worker 1 | ${cost[1]} |"
    echo "| worker 2 | ${cost[2]} |"
    echo
    echo "Between nodes: ${cost[3]} bytes per event (loopback, both directions)."
    echo
    echo "Projection, rate(W, N) = min(N / coordinator's s per event, W × N / workers' s per event), events/s:"
    echo
    echo "| workers × cores | N = 2 | N = 8 | N = 32 |"
    echo "|---|---:|---:|---:|"
    for w in 1 2 4 8; do
        awk -v w="$w" -v c="${cost[0]}" -v x="${cost[1]}" -v y="${cost[2]}" 'BEGIN {
            ws = (x + y) / 1000; cs = c / 1000; line = "| " w " |";
            split("2 8 32", ns, " ");
            for (i = 1; i <= 3; i++) { n = ns[i]; a = n / cs; b = w * n / ws; line = line sprintf(" %.0f%s |", (a < b ? a : b), (a < b ? " (coordinator)" : "")) }
            print line }'
    done
    echo
    echo "The coordinator's cost per event is the ceiling: beyond it, more workers add nothing."
    echo "Where the model breaks: the costs were measured with all three nodes sharing these cores;"
    echo "a batch costs the coordinator a task per shard it touches and a two-phase commit per worker,"
    echo "so its cost per event grows with the number of workers (fewer events per task), and"
    echo "network latency adds to each commit (loopback has almost none)."
    echo "At ${cost[3]} bytes per event, a 10 Gbit/s link carries $(awk -v b="${cost[3]}" 'BEGIN { printf "%.0f", 1.25e9 / b }') events/s."
} | tee "$out/citus.md"

#!/usr/bin/env bash
# bench/run.sh (make bench): aggr's throughput beside the raw PostgreSQL
# ceiling, measured in the same run on the same throwaway servers.
#
#   raw      plain INSERT ... SELECT ... FROM jsonb_to_recordset(batch::jsonb) ORDER BY
#            key ON CONFLICT DO NOTHING, what a user would write by hand, into
#            a table with aggr.events' columns and only its primary key, 2
#            pgbench clients, batches of 500 (key order: unordered batches
#            deadlock and would make the ceiling look lower); every ratio
#            is to this
#   raw_same_indexes  the same into a copy of aggr.events (same indexes)
#   ingest   SELECT aggr_ingest(batch::jsonb), same batches, same clients
#   http     aggr-publisher -> aggr-sidecar POST /publish, direct mode
#   http_ndjson_gzip  the same with gzip-compressed NDJSON bodies, as log
#            shippers send (--format ndjson --gzip)
#   drain    4 consumers (the default) draining a pre-filled Redis queue
#            (appendfsync always); peak RSS = their private memory, summed
#   publish  aggr-publisher -> sidecar -> Redis -> consumers, until drained
#   stream   aggr_ingest as above with 200 GET /events/stream subscribers
#            reading (20 per topic) vs none; commit-to-subscriber latency of
#            one-event probes under that load; sidecar RSS with 1,000 idle
#            streams
#   retention  aggr_ingest of 1,000,000 events while the expiry worker
#            expires them (aggr.retention = 1s) vs with retention off: with
#            tombstones (aggr.dedup_window forever; at aggr.events' fillfactor
#            100 and 80), and deleting at once (aggr.dedup_window = 0); how
#            many had expired when the run ended; and with 1 client, which
#            leaves expiry a core of this 2-core machine
#
# Each workload: the demo's 20,000 events, issue 3's 200,000 and 1,000,000
# (35 % duplicates), the same batches for every workload (make_batches).
# SQL runs alternate raw and ingest three times, broker runs drain and
# publish three times; each keeps its median.
# BENCH_SIZES="20000 1000000", BENCH_PHASES="sql http stream retention broker" (a
# subset runs only those) and BENCH_LARGE=1 (aggr_ingest at 10 M stored
# events) tune it.  Results: bench/out/results.{csv,md} and results.png.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
. "$src/tools/deps.sh"
aggr_install_deps
. "$src/tools/servers.sh"

sizes=${BENCH_SIZES:-"20000 200000 1000000"}
phases=${BENCH_PHASES:-"sql http stream retention broker"}
phase() { [[ " $phases " == *" $1 "* ]]; }
out="$src/bench/out"
mkdir -p "$out"
csv="$out/results.csv"
echo "workload,events,events_per_s,ratio_to_raw,p50_ms,p99_ms,peak_rss_kb" > "$csv"

make -C "$src" -s -j2 >/dev/null
[ "$(id -u)" -eq 0 ] && make -C "$src" -s install >/dev/null
servers_init bench
trap servers_cleanup EXIT
# every phase runs with these (a restart rewrites the whole configuration)
pg_settings="shared_buffers = '1GB'
max_wal_size = '8GB'
checkpoint_timeout = '30min'"
pg_start "$pg_settings"
# every phase must see them: the SQL ceiling and aggr on equal terms
check_settings() {
    [ "$(sql -c 'SHOW shared_buffers')" = 1GB ] && [ "$(sql -c 'SHOW max_wal_size')" = 8GB ] ||
        { echo "bench: the server lost its bench settings" >&2; exit 1; }
}
redis_start

publisher="$src/publisher/aggr-publisher"
sql() { psql -X -q -At -h "$AGGR_PGHOST" -p "$AGGR_PGPORT" -U postgres -d postgres "$@"; }
check_settings

# The batches as pgbench reads them: table bench_batches(id, body), made of
# the very events aggr-publisher sends (its default seed: 35 % re-sends, the
# same keys, payloads and order), 500 per batch as a JSON array in text, as a
# publisher sends it.  So the ceiling inserts the same batches the consumers
# drain and the sidecar receives; the ceiling and every aggr path parse them
# once.  The publisher's list in Redis (bench:events) is also the drain's
# pre-filled queue.
make_batches() {
    local n=$1 i
    redis-cli -p "$AGGR_REDIS_PORT" DEL bench:events >/dev/null
    "$publisher" --via "redis://127.0.0.1:$AGGR_REDIS_PORT" --queue-key bench:events \
        --events "$n" --quiet >/dev/null
    sql -c "DROP TABLE IF EXISTS bench_lines, bench_batches; CREATE TABLE bench_lines (n bigserial, line text)"
    for (( i = 0; i < n; i += 100000 )); do
        redis-cli -p "$AGGR_REDIS_PORT" --raw LRANGE bench:events "$i" $(( i + 99999 ))
    done | sql -c "COPY bench_lines (line) FROM STDIN (FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')"
    sql <<'SQL'
CREATE TABLE bench_batches AS
  SELECT (n - 1) / 500 + 1 AS id, '[' || string_agg(line, ',' ORDER BY n) || ']' AS body
  FROM bench_lines GROUP BY (n - 1) / 500;
CREATE UNIQUE INDEX ON bench_batches (id);
DROP TABLE bench_lines;
VACUUM ANALYZE bench_batches;
SQL
    [ "$(sql -c "SELECT sum(json_array_length(body::json)) FROM bench_batches")" = "$n" ] ||
        { echo "bench: the batches do not hold $n events" >&2; exit 1; }
}

# events/s of one pgbench run of a workload file over every batch, by 2
# clients (or $3); raw.sql writes raw_pk_events (or $4)
pgbench_rate() {
    local file=$1 n=$2 batches=$(( ($2 + 499) / 500 )) clients=${3:-2} table=${4:-raw_pk_events}
    sql -c "TRUNCATE aggr.events, aggr.counters; TRUNCATE raw_events, raw_pk_events; CHECKPOINT" >/dev/null
    pgbench -n -h "$AGGR_PGHOST" -p "$AGGR_PGPORT" -U postgres -c "$clients" -j "$clients" -t $(( batches / clients )) \
        -D k=0 -D table="$table" -f "$file" postgres 2>&1 |
        awk -v ev="$n" -v b="$batches" '/^tps/ { printf "%.0f\n", $3 * ev / b }'
}

median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

record() {   # workload events rate p50 p99 rss
    local ratio
    ratio=$(awk -v r="$3" -v c="$raw" 'BEGIN { printf "%.2f", r / c }')
    echo "$1,$2,$3,$ratio,$4,$5,$6" >> "$csv"
    printf '%-16s %9s events  %9s ev/s  %5s x raw\n' "$1" "$2" "$3" "$ratio"
}

json_field() { perl -MJSON::PP -e 'my $j = decode_json(join("", <STDIN>)); my $v = $j; $v = $v->{$_} for split /\./, $ARGV[0]; print $v // ""' "$1"; }

peak_rss_kb() { awk '/VmHWM/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# the ceilings: what a user would write by hand into a table with only the
# key, and into a copy of aggr.events with all its indexes
sql -c "CREATE EXTENSION aggr; CREATE TABLE raw_events (LIKE aggr.events INCLUDING ALL);
        CREATE TABLE raw_pk_events (LIKE aggr.events INCLUDING DEFAULTS INCLUDING IDENTITY,
                                    PRIMARY KEY (topic, event_id))" >/dev/null
if phase sql; then
echo "=== SQL: raw ceiling and aggr_ingest (2 clients, batches of 500, 35 % duplicates)"
for n in $sizes; do
    make_batches "$n"
    raws=() raws_indexed=() ingests=()
    for rep in 1 2 3; do
        raws+=("$(pgbench_rate "$src/bench/raw.sql" "$n")")
        raws_indexed+=("$(pgbench_rate "$src/bench/raw.sql" "$n" 2 raw_events)")
        ingests+=("$(pgbench_rate "$src/bench/ingest.sql" "$n")")
    done
    raw=$(printf '%s\n' "${raws[@]}" | median)
    declare "raw_$n=$raw"
    record raw "$n" "$raw" "" "" ""
    record raw_same_indexes "$n" "$(printf '%s\n' "${raws_indexed[@]}" | median)" "" "" ""
    record ingest "$n" "$(printf '%s\n' "${ingests[@]}" | median)" "" "" ""
done
fi

if phase http; then
echo "=== HTTP: POST /publish in direct mode (sidecar, 2 connections), JSON arrays and gzip NDJSON"
for n in $sizes; do
    raw_var="raw_$n"; raw=${!raw_var}
    for body in json ndjson-gzip; do
        sql -c "TRUNCATE aggr.events, aggr.counters; CHECKPOINT" >/dev/null   # as the SQL runs: no checkpoint of an earlier run inside this one
        sidecar_start --threads 2
        flags=()
        [ "$body" = ndjson-gzip ] && flags=(--format ndjson --gzip)
        summary=$("$publisher" --url "http://127.0.0.1:$AGGR_HTTP_PORT" --events "$n" --concurrency 2 "${flags[@]}" --json --quiet)
        record "$([ "$body" = json ] && echo http || echo http_ndjson_gzip)" "$n" \
            "$(json_field events_per_second <<< "$summary" | cut -d. -f1)" \
            "$(json_field latency_ms.p50 <<< "$summary")" "$(json_field latency_ms.p99 <<< "$summary")" \
            "$(peak_rss_kb "$AGGR_SIDECAR_PID")"
        sidecar_stop
    done
done
fi

if phase stream; then
    echo "=== Event stream: aggr_ingest with 200 subscribers vs none, delivery latency, 1,000 idle streams"
    n=200000
    raw_var="raw_$n"; raw=${!raw_var:-}
    [ -n "$raw" ] || { make_batches "$n"; raw=$(pgbench_rate "$src/bench/raw.sql" "$n"); }
    [ "$(sql -c 'SELECT count(*) FROM bench_batches')" = $(( n / 500 )) ] || make_batches "$n"
    sidecar_start --threads 2 --max-streams 1200 --max-conns 1300 --max-conns-per-ip 1300 --stream-heartbeat 1
    cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"; }
    subscribers_start() {   # 200 subscribers, 20 on each of the bench's 10 topics
        perl "$src/bench/stream.pl" subscribe "$AGGR_HTTP_PORT" 200 600 > "$AGGR_STATE/subscribers.out" &
        subscribers_pid=$!
        until grep -q ready "$AGGR_STATE/subscribers.out" 2>/dev/null; do
            kill -0 "$subscribers_pid" 2>/dev/null || { echo "bench: subscribers failed" >&2; exit 1; }
            sleep 0.1
        done
    }
    # the sidecar sees a gone subscriber at its next heartbeat (1 s here)
    subscribers_stop() {
        kill -TERM "$subscribers_pid"; wait "$subscribers_pid" || true
        until curl -s "http://127.0.0.1:$AGGR_HTTP_PORT/metrics" | grep -q '^aggr_http_streams 0$'; do sleep 0.2; done
    }
    nones=() withs=()
    for rep in 1 2 3; do
        nones+=("$(pgbench_rate "$src/bench/ingest.sql" "$n")")
        subscribers_start
        # the backend that reads the events for every stream
        hub_pid=$(sql -c "SELECT pid FROM pg_stat_activity WHERE application_name = 'aggr sidecar stream'")
        cpu0=$(cpu_s "$AGGR_SIDECAR_PID") hub0=$(cpu_s "$hub_pid")
        withs+=("$(pgbench_rate "$src/bench/ingest.sql" "$n")")
        echo "  run $rep: sidecar $(awk -v a="$cpu0" -v b="$(cpu_s "$AGGR_SIDECAR_PID")" 'BEGIN { printf "%.2f", b - a }') s of CPU," \
            "its reading backend $(awk -v a="$hub0" -v b="$(cpu_s "$hub_pid")" 'BEGIN { printf "%.2f", b - a }') s"
        subscribers_stop
        echo "  run $rep: the subscribers' client: $(tail -n 1 "$AGGR_STATE/subscribers.out")"
    done
    record stream_none "$n" "$(printf '%s\n' "${nones[@]}" | median)" "" "" ""
    # latency from commit to a subscriber of one-event probes, while 2
    # clients ingest batches (the same ones over and over: duplicates after
    # the first pass) and the 200 subscribers read
    subscribers_start
    printf '\\set b 1 + (:client_id + 2 * random(0, 1000000)) %% %d\nSELECT aggr_ingest(body::jsonb) FROM bench_batches WHERE id = :b;\n' \
        $(( n / 500 )) > "$AGGR_STATE/load.sql"
    pgbench -n -h "$AGGR_PGHOST" -p "$AGGR_PGPORT" -U postgres -c 2 -j 2 -T 12 -f "$AGGR_STATE/load.sql" \
        postgres > /dev/null 2>&1 &
    load_pid=$!
    sleep 1
    read -r p50 p99 <<< "$(perl "$src/bench/stream.pl" latency "$AGGR_HTTP_PORT" \
        psql -X -q -At -h "$AGGR_PGHOST" -p "$AGGR_PGPORT" -U postgres -d postgres -o /dev/null -- 300)"
    wait "$load_pid" || true
    subscribers_stop
    record stream_200 "$n" "$(printf '%s\n' "${withs[@]}" | median)" "$p50" "$p99" "$(peak_rss_kb "$AGGR_SIDECAR_PID")"
    sidecar_stop   # a fresh one: the subscribers' streams end at their next heartbeat
    sidecar_start --threads 2 --max-streams 1200 --max-conns 1300 --max-conns-per-ip 1300
    read -r rss_before rss_idle <<< "$(perl "$src/bench/stream.pl" idle "$AGGR_HTTP_PORT" 1000 "$AGGR_SIDECAR_PID")"
    record stream_idle_1000 0 "" "" "" "$rss_idle"
    echo "sidecar RSS: $rss_before kB without streams, $rss_idle kB with 1,000 idle streams"
    sidecar_stop
fi

if phase retention; then
    echo "=== Retention: aggr_ingest while the expiry worker expires (aggr.retention = 1s) vs retention off"
    n=1000000
    raw_var="raw_$n"; raw=${!raw_var:-}
    [ "$(sql -c 'SELECT count(*) FROM bench_batches')" = $(( n / 500 )) ] || make_batches "$n"
    [ -n "$raw" ] || raw=$(pgbench_rate "$src/bench/raw.sql" "$n")
    retention() {   # retention dedup_window: reloads, and waits for the worker to have it
        sql -c "ALTER SYSTEM SET aggr.retention = '$1'" -c "ALTER SYSTEM SET aggr.dedup_window = '$2'" \
            -c "SELECT pg_reload_conf()" >/dev/null
        sleep 1.5
    }
    # events/s of one run (by $1 clients, default 2), and the share of its
    # unique events expired when it ended
    retention_run() {
        local rate
        rate=$(pgbench_rate "$src/bench/ingest.sql" "$n" "${1:-2}")
        echo "$rate $(sql -c "SELECT round(sum(expired)::numeric / greatest(sum(unique_processed), 1), 2) FROM aggr.counters")"
    }
    fillfactor() { sql -c "ALTER TABLE aggr.events SET (fillfactor = $1)" >/dev/null; }
    mid() { sort -n | sed -n 2p | cut -d' ' -f1; }   # the median of three "rate share" lines
    offs=() tombs=() tombs80=() deletes=() offs1=() tombs1=()
    for rep in 1 2 3; do
        retention 0 -1;  offs+=("$(retention_run)")
        retention 1s -1; tombs+=("$(retention_run)")
        fillfactor 80;   tombs80+=("$(retention_run)"); fillfactor 100
        retention 1s 0;  deletes+=("$(retention_run)")
        echo "  run $rep (events/s, share expired): off ${offs[-1]%% *}, tombstones ${tombs[-1]}," \
            "tombstones at fillfactor 80 ${tombs80[-1]}, delete ${deletes[-1]}"
        # one client: the machine has a core to spare for expiry
        retention 0 -1;  offs1+=("$(retention_run 1)")
        retention 1s -1; tombs1+=("$(retention_run 1)")
        echo "  run $rep, 1 client: off ${offs1[-1]%% *}, tombstones ${tombs1[-1]}"
    done
    retention 0 -1
    off=$(printf '%s\n' "${offs[@]}" | median)
    tomb=$(printf '%s\n' "${tombs[@]}" | mid)
    tomb80=$(printf '%s\n' "${tombs80[@]}" | mid)
    del=$(printf '%s\n' "${deletes[@]}" | mid)
    record retention_off "$n" "$off" "" "" ""
    record retention_tomb "$n" "$tomb" "" "" ""
    record retention_tomb_ff80 "$n" "$tomb80" "" "" ""
    record retention_del "$n" "$del" "" "" ""
    off1=$(printf '%s\n' "${offs1[@]}" | median)
    tomb1=$(printf '%s\n' "${tombs1[@]}" | mid)
    record retention_off_1client "$n" "$off1" "" "" ""
    record retention_tomb_1client "$n" "$tomb1" "" "" ""
    awk -v o="$off" -v t="$tomb" -v t8="$tomb80" -v d="$del" -v o1="$off1" -v t1="$tomb1" 'BEGIN {
        printf "retention: with tombstones %.2f x off (%.2f at fillfactor 80), deleting at once %.2f x off;", t / o, t8 / o, d / o
        printf " 1 client: with tombstones %.2f x off\n", t1 / o1 }'
fi

if phase broker; then
echo "=== Broker: consumers draining a pre-filled queue; publish until drained"
# the shipped default of aggr.worker_count (4); each consumer waits on two
# fsyncs per batch (Redis appendfsync always, then COMMIT), so 2 would idle
pg_restart_broker 4 "$pg_settings
aggr.queue_maxsize = 2000000"
check_settings
# polls the queue every 10 ms over one connection, reads the consumers'
# private memory (RssAnon: shared buffers they touch are PostgreSQL's, not
# theirs) every 100 ms, and raises worker_peak to the largest sum seen;
# the pids are read before a run starts
consumer_pids() { sql -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'aggr consumer'"; }
wait_drained() {
    local kb
    # shellcheck disable=SC2086
    kb=$(perl "$src/bench/drained.pl" "$AGGR_REDIS_PORT" aggregator:events $pids)
    [ "$kb" -gt "$worker_peak" ] && worker_peak=$kb
    return 0
}
# one drain of a pre-filled queue of n events: appends its events/s to
# drains (not in a subshell: wait_drained raises worker_peak)
drain_run() {
    local n=$1 t0 t1 pids
    sql -c "TRUNCATE aggr.events, aggr.counters; CHECKPOINT" >/dev/null   # as the SQL runs: no checkpoint of an earlier run inside this one
    redis-cli -p "$AGGR_REDIS_PORT" DEL bench:staging >/dev/null
    "$publisher" --via "redis://127.0.0.1:$AGGR_REDIS_PORT" --queue-key bench:staging \
        --events "$n" --quiet >/dev/null
    pids=$(consumer_pids)
    t0=$(date +%s.%N)
    redis-cli -p "$AGGR_REDIS_PORT" RENAME bench:staging aggregator:events >/dev/null
    wait_drained
    t1=$(date +%s.%N)
    drains+=("$(awk -v n="$n" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }')")
}

# one publish of n events through the sidecar until drained: appends
# "events/s p50 p99 sidecar-peak-rss-kb" to publishes
publish_run() {
    local n=$1 t0 t1 summary pids
    sql -c "TRUNCATE aggr.events, aggr.counters; CHECKPOINT" >/dev/null
    sidecar_start --threads 2
    pids=$(consumer_pids)
    t0=$(date +%s.%N)
    summary=$("$publisher" --url "http://127.0.0.1:$AGGR_HTTP_PORT" --events "$n" --concurrency 2 --json --quiet)
    wait_drained
    t1=$(date +%s.%N)
    publishes+=("$(awk -v n="$n" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }') \
$(json_field latency_ms.p50 <<< "$summary") $(json_field latency_ms.p99 <<< "$summary") \
$(peak_rss_kb "$AGGR_SIDECAR_PID")")
    sidecar_stop
}

# Three runs of each, alternating, as the SQL runs; the median run is kept
# (the peak RSS is the largest of the three).
for n in $sizes; do
    raw_var="raw_$n"; raw=${!raw_var}
    drains=() publishes=() worker_peak=0
    for rep in 1 2 3; do
        drain_run "$n"
        publish_run "$n"
    done
    record drain "$n" "$(printf '%s\n' "${drains[@]}" | median)" "" "" "$worker_peak"
    read -r rate p50 p99 _ <<< "$(printf '%s\n' "${publishes[@]}" | sort -n | sed -n 2p)"
    rss=$(printf '%s\n' "${publishes[@]}" | awk '$4 > m { m = $4 } END { print m }')
    record publish "$n" "$rate" "$p50" "$p99" "$rss"
done
fi

if [ "${BENCH_LARGE:-0}" = 1 ]; then
    echo "=== aggr_ingest with 10,000,000 events already stored"
    pg_restart_direct "$pg_settings"
    check_settings
    n=200000
    make_batches "$n"
    raw=$(pgbench_rate "$src/bench/ingest.sql" "$n")   # the empty-table rate is the reference here
    record ingest-empty "$n" "$raw" "" "" ""
    sql <<'SQL'
TRUNCATE aggr.events, aggr.counters;
INSERT INTO aggr.events (topic, event_id, "timestamp", source, payload)
    SELECT 'topic_' || (g % 10), 'old-' || g, now(), 'prefill', '{}' FROM generate_series(1, 10000000) g;
INSERT INTO aggr.counters SELECT 'topic_' || t, 0, 1000000, 1000000, 0 FROM generate_series(0, 9) t;
VACUUM ANALYZE aggr.events;
CHECKPOINT;
SQL
    rate=$(sql -c "SELECT 1" >/dev/null; pgbench -n -h "$AGGR_PGHOST" -p "$AGGR_PGPORT" -U postgres -c 2 -j 2 \
        -t $(( n / 1000 )) -D k=0 -f "$src/bench/ingest.sql" postgres 2>&1 |
        awk -v ev="$n" '/^tps/ { printf "%.0f\n", $3 * 500 }')
    record ingest-at-10M "$n" "$rate" "" "" ""
fi

perl "$src/bench/report.pl" --dat "$out/results.dat" "$csv" > "$out/results.md"
cat "$out/results.md"
gnuplot -e "dat='$out/results.dat'; png='$out/results.png'; ncols=$(( $(wc -w <<< "$sizes") + 1 ))" \
    "$src/bench/chart.gp"
echo "results: $out/results.csv, $out/results.md, $out/results.png"

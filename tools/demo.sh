#!/usr/bin/env bash
# demo.sh (make demo): the main job on one machine.  Builds and installs aggr,
# starts PostgreSQL (aggr preloaded, broker mode), Redis (appendonly) and
# aggr-sidecar on 127.0.0.1:8080, sends the demo's 20,000 events (35 %
# duplicates) with aggr-publisher --verify, prints /stats and the verdict, and
# leaves the servers running.  A second run reuses the same servers and data:
# the same events are all duplicates then.  `demo.sh stop` (make demo-stop)
# stops the servers and keeps the data; `demo.sh clean` removes it too.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
state=${AGGR_DEMO_DIR:-/tmp/aggr-demo}
. "$src/tools/servers.sh"

case "${1:-run}" in
stop)
    [ -d "$state" ] || { echo "no demo in $state"; exit 0; }
    servers_init demo "$state"
    servers_stop
    echo "demo stopped; its data stays in $state (make demo again reuses it, 'bash tools/demo.sh clean' removes it)"
    exit 0 ;;
clean)
    [ -d "$state" ] || exit 0
    servers_init demo "$state"
    servers_cleanup
    echo "demo removed"
    exit 0 ;;
esac

. "$src/tools/deps.sh"
aggr_install_deps
make -C "$src" -s -j2 >/dev/null
if [ "$(id -u)" -eq 0 ]; then make -C "$src" -s install >/dev/null; fi

AGGR_HTTP_PORT=${AGGR_HTTP_PORT:-8080}
servers_init demo "$state"
if [ ! -f "$state/aggr.conf" ]; then
    pg_write_conf broker "${WORKER_COUNT:-4}" ""
fi
[ -f "$state/data/postmaster.pid" ] || pg_start
[ "$(redis-cli -p "$AGGR_REDIS_PORT" PING 2>/dev/null)" = PONG ] || redis_start
psql -X -q -h "$AGGR_PGHOST" -p "$AGGR_PGPORT" -U postgres -d postgres \
    -c "CREATE EXTENSION IF NOT EXISTS aggr" 2>&1 | grep -v 'already exists' || true
if ! { [ -f "$state/sidecar.pid" ] && kill -0 "$(cat "$state/sidecar.pid")" 2>/dev/null; }; then
    setsid nohup bash -c '. "$0/tools/servers.sh"; servers_init demo "$1"; sidecar_start; wait' \
        "$src" "$state" >/dev/null 2>&1 &
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://127.0.0.1:$AGGR_HTTP_PORT/healthz" && break
        sleep 0.1
    done
fi

stored=$(psql -X -At -h "$AGGR_PGHOST" -p "$AGGR_PGPORT" -U postgres -d postgres \
    -c "SELECT count(*) FROM aggr.events WHERE source = 'aggr-publisher'")
expect_unique=13000
[ "$stored" -gt 0 ] && expect_unique=0
echo "=== aggr-publisher: 20,000 events, 35 % duplicates -> http://127.0.0.1:$AGGR_HTTP_PORT/publish"
verdict=0
"$src/publisher/aggr-publisher" --url "http://127.0.0.1:$AGGR_HTTP_PORT" --wait-ready 30 \
    --verify --expect-unique "$expect_unique" || verdict=$?

echo "=== GET /stats"
curl -s "http://127.0.0.1:$AGGR_HTTP_PORT/stats" | perl -MJSON::PP -e \
    'print JSON::PP->new->pretty->canonical->encode(decode_json(join("", <STDIN>)))'
if [ "$verdict" -eq 0 ]; then
    if [ "$expect_unique" -eq 13000 ]; then
        echo "VERDICT: ok - 20,000 received, 13,000 unique stored, 7,000 duplicates dropped"
    else
        echo "VERDICT: ok - the same 20,000 events again: 0 new, all 20,000 counted as duplicates"
    fi
else
    echo "VERDICT: FAILED - see the checks above"
fi
cat <<EOF

The servers keep running (state in $state):
  curl -s http://127.0.0.1:$AGGR_HTTP_PORT/stats
  curl -s 'http://127.0.0.1:$AGGR_HTTP_PORT/events?topic=topic_1&limit=5'
  psql -h $AGGR_PGHOST -p $AGGR_PGPORT -U postgres -c 'SELECT aggr_stats()'
  make demo-stop        # stop them (the data stays; make demo reuses it)
EOF
exit "$verdict"

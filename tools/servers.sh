# servers.sh: throwaway PostgreSQL (aggr preloaded), Redis and aggr-sidecar
# on loopback, for make demo and make bench.  Sourced.  As root the servers
# run as the unprivileged user postgres (initdb refuses root).
#
#   servers_init NAME [DIR]   state in DIR (default: a new temp dir)
#   pg_start [CONF]           initdb if needed, start; CONF = extra settings
#   pg_restart_broker N [CONF]  restart with broker mode and N consumers
#   pg_restart_direct         restart in direct mode
#   redis_start               redis-server, appendonly yes, fsync always
#   sidecar_start [ARGS]      aggr-sidecar on a free port
#   sidecar_stop, servers_stop, servers_cleanup (stop and remove DIR)
# Exports AGGR_PGHOST AGGR_PGPORT AGGR_REDIS_PORT AGGR_HTTP_PORT AGGR_SIDECAR_PID.

AGGR_PG_BIN=$(${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config} --bindir)
AGGR_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

as_server_user() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
    perl -MIO::Socket::INET -e 'print IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => 0, Listen => 1)->sockport'
}

servers_init() {
    AGGR_STATE=${2:-$(mktemp -d "/tmp/aggr-$1.XXXXXX")}
    mkdir -p "$AGGR_STATE"
    [ "$(id -u)" -eq 0 ] && chown postgres "$AGGR_STATE"
    chmod 755 "$AGGR_STATE"
    export AGGR_STATE AGGR_PGHOST=$AGGR_STATE
    if [ -f "$AGGR_STATE/ports" ]; then . "$AGGR_STATE/ports"; else
        AGGR_PGPORT=${AGGR_PGPORT:-$(free_port)}
        AGGR_REDIS_PORT=${AGGR_REDIS_PORT:-$(free_port)}
        AGGR_HTTP_PORT=${AGGR_HTTP_PORT:-$(free_port)}
        printf 'AGGR_PGPORT=%s\nAGGR_REDIS_PORT=%s\nAGGR_HTTP_PORT=%s\n' \
            "$AGGR_PGPORT" "$AGGR_REDIS_PORT" "$AGGR_HTTP_PORT" > "$AGGR_STATE/ports"
    fi
    export AGGR_PGPORT AGGR_REDIS_PORT AGGR_HTTP_PORT
}

# Writes the aggr part of postgresql.conf (conf.d/aggr.conf), then the extra.
pg_write_conf() {
    local mode=$1 workers=${2:-2} extra=${3:-}
    {
        echo "port = $AGGR_PGPORT"
        echo "listen_addresses = '127.0.0.1'"
        echo "unix_socket_directories = '$AGGR_STATE'"
        echo "shared_preload_libraries = 'aggr'"
        if [ "$mode" = broker ]; then
            echo "aggr.broker_url = 'redis://127.0.0.1:$AGGR_REDIS_PORT/0'"
            echo "aggr.worker_count = $workers"
            echo "aggr.poll_interval = '500ms'"
        fi
        printf '%s\n' "$extra"
    } > "$AGGR_STATE/aggr.conf"
    chmod 644 "$AGGR_STATE/aggr.conf"
}

pg_ctl_() { as_server_user "$AGGR_PG_BIN/pg_ctl" -D "$AGGR_STATE/data" -l "$AGGR_STATE/postgres.log" -w "$@" >/dev/null; }

pg_start() {
    [ -f "$AGGR_STATE/aggr.conf" ] || pg_write_conf direct 2 "${1:-}"
    if [ ! -d "$AGGR_STATE/data" ]; then
        as_server_user "$AGGR_PG_BIN/initdb" -D "$AGGR_STATE/data" -A trust -U postgres \
            --encoding=UTF8 --locale=C.UTF-8 >/dev/null
        echo "include = '$AGGR_STATE/aggr.conf'" >> "$AGGR_STATE/data/postgresql.conf"
    fi
    pg_ctl_ start || { tail -20 "$AGGR_STATE/postgres.log"; return 1; }
}

pg_restart_broker() {
    pg_write_conf broker "$1" "${2:-}"
    pg_ctl_ restart
}

pg_restart_direct() {
    pg_write_conf direct 2 "${1:-}"
    pg_ctl_ restart
}

redis_start() {
    as_server_user redis-server --port "$AGGR_REDIS_PORT" --bind 127.0.0.1 --dir "$AGGR_STATE" \
        --appendonly yes --appendfsync always --save '' --daemonize yes \
        --pidfile "$AGGR_STATE/redis.pid" --logfile "$AGGR_STATE/redis.log" >/dev/null
    local i
    for i in $(seq 100); do
        [ "$(redis-cli -p "$AGGR_REDIS_PORT" PING 2>/dev/null)" = PONG ] && return 0
        sleep 0.1
    done
    echo "redis-server did not start; see $AGGR_STATE/redis.log" >&2
    return 1
}

sidecar_start() {
    "$AGGR_SRC/sidecar/aggr-sidecar" --listen "127.0.0.1:$AGGR_HTTP_PORT" \
        --db "host=$AGGR_PGHOST port=$AGGR_PGPORT user=postgres dbname=postgres" "$@" \
        2>> "$AGGR_STATE/sidecar.log" &
    AGGR_SIDECAR_PID=$!
    echo "$AGGR_SIDECAR_PID" > "$AGGR_STATE/sidecar.pid"
    export AGGR_SIDECAR_PID
    local i
    for i in $(seq 100); do
        curl -s -o /dev/null "http://127.0.0.1:$AGGR_HTTP_PORT/healthz" && return 0
        sleep 0.1
    done
    echo "aggr-sidecar did not start; see $AGGR_STATE/sidecar.log" >&2
    return 1
}

sidecar_stop() {
    local pid
    pid=$(cat "$AGGR_STATE/sidecar.pid" 2>/dev/null) || return 0
    kill "$pid" 2>/dev/null && while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    rm -f "$AGGR_STATE/sidecar.pid"
}

servers_stop() {
    sidecar_stop
    [ -f "$AGGR_STATE/data/postmaster.pid" ] && pg_ctl_ stop -m fast
    [ -f "$AGGR_STATE/redis.pid" ] && redis-cli -p "$AGGR_REDIS_PORT" SHUTDOWN NOSAVE >/dev/null 2>&1
    rm -f "$AGGR_STATE/redis.pid"
    return 0
}

servers_cleanup() {
    servers_stop
    rm -rf "$AGGR_STATE"
}

#!/usr/bin/env bash
# A shared tracking store for a cluster, on this host: PostgreSQL (for MLflow and Optuna) and an MLflow
# tracking server on it that proxies artifacts (--serve-artifacts), so workers need no shared filesystem.
#
#   scripts/tracking_server.sh start DIR   # prints the export lines for the URIs; state lives in DIR
#   scripts/tracking_server.sh stop DIR    # stops what `start DIR` started (by its own pid files)
#   scripts/tracking_server.sh restart-mlflow DIR   # the MLflow server alone (PostgreSQL keeps running)
#
# Both listen on 127.0.0.1 only (HOST= to change it: then put MLflow's basic-auth app in front, see
# docs/scale-out.md). PostgreSQL refuses to run as root: as root it runs as the `postgres` user.
# Ports: PG_PORT (default 55432) and MLFLOW_PORT (default 55000).
set -euo pipefail

cmd=${1:?usage: tracking_server.sh start|stop DIR}
dir=$(mkdir -p "${2:?usage: tracking_server.sh start|stop DIR}" && cd "$2" && pwd)
host=${HOST:-127.0.0.1}
pg_port=${PG_PORT:-55432}
mlflow_port=${MLFLOW_PORT:-55000}
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$here/.venv/bin/python}

as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

wait_for() {  # wait_for SECONDS COMMAND...: bounded poll until COMMAND succeeds
    local deadline=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || { echo "tracking_server.sh: timed out waiting for: $*" >&2; return 1; }
        sleep 0.5
    done
}

pg_dir() {  # where the database lives: DIR/pg, or a folder the postgres user can reach when DIR is not
    if [ -f "$dir/pgdata" ]; then cat "$dir/pgdata"; return; fi
    local pg="$dir/pg"
    if [ "$(id -u)" = 0 ] && ! runuser -u postgres -- test -x "$dir"; then
        pg=$(mktemp -d /tmp/quantsweep-pg.XXXXXX)
    fi
    echo "$pg" >"$dir/pgdata"
    echo "$pg"
}

start() {
    mkdir -p "$dir/artifacts"
    local pg; pg=$(pg_dir)
    mkdir -p "$pg"
    [ "$(id -u)" != 0 ] || chown postgres "$pg"
    chmod 700 "$pg"
    if [ ! -f "$pg/PG_VERSION" ]; then
        as_pg initdb -D "$pg" -A trust -U postgres >"$dir/initdb.log"
    fi
    as_pg pg_ctl -D "$pg" -l "$pg/server.log" -w -o "-h $host -p $pg_port -k $pg" start >/dev/null
    wait_for 30 psql -h "$host" -p "$pg_port" -U postgres -d postgres -c "select 1"
    for db in mlflow optuna; do
        psql -h "$host" -p "$pg_port" -U postgres -d postgres -tAc "select 1 from pg_database where datname='$db'" \
            | grep -q 1 || psql -h "$host" -p "$pg_port" -U postgres -d postgres -qc "create database $db"
    done
    start_mlflow
    echo "export QUANTSWEEP_TRACKING_URI=http://$host:$mlflow_port"
    echo "export QUANTSWEEP_PG_URI=postgresql+psycopg://postgres@$host:$pg_port"
}

start_mlflow() {
    local pg="postgresql+psycopg://postgres@$host:$pg_port"
    nohup "$python" -m mlflow server --host "$host" --port "$mlflow_port" --workers 1 \
        --backend-store-uri "$pg/mlflow" --serve-artifacts --artifacts-destination "$dir/artifacts" \
        >"$dir/mlflow.log" 2>&1 &
    echo $! >"$dir/mlflow.pid"
    wait_for 120 curl -sf "http://$host:$mlflow_port/health"
}

stop_mlflow() {
    if [ -f "$dir/mlflow.pid" ]; then
        local pid; pid=$(cat "$dir/mlflow.pid")
        # the server's gunicorn/uvicorn workers are its children
        pkill -TERM -P "$pid" 2>/dev/null || true
        kill "$pid" 2>/dev/null || true
        wait_for 30 bash -c "! kill -0 $pid" || kill -9 "$pid" 2>/dev/null || true
        rm -f "$dir/mlflow.pid"
    fi
}

stop() {
    stop_mlflow
    local pg; pg=$(pg_dir)
    if [ -f "$pg/postmaster.pid" ]; then
        as_pg pg_ctl -D "$pg" -m fast -w stop >/dev/null || true
    fi
    case "$pg" in /tmp/quantsweep-pg.*) rm -rf "$pg" "$dir/pgdata" ;; esac
}

case "$cmd" in
    start) start ;;
    stop) stop ;;
    restart-mlflow) stop_mlflow; start_mlflow ;;
    *) echo "usage: tracking_server.sh start|stop|restart-mlflow DIR" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# A local Ray cluster of several nodes on this machine, in a network namespace of its own that has only the
# loopback interface, for tests and trials:
#
#   scripts/ray_cluster.sh start DIR [NODES=2] [GPUS_PER_NODE=1] [CPUS_PER_NODE=2]
#   scripts/ray_cluster.sh exec DIR -- COMMAND...    # run COMMAND in the cluster's namespace (the driver)
#   scripts/ray_cluster.sh stop DIR
#
# Why a namespace: Ray turns 127.0.0.1 into the host's routable address, found by reaching for a public
# DNS server; where loopback is the only interface, every Ray address stays 127.0.0.1 and nothing leaves.
# Creating it needs root (unshare, nsenter).
#
# `start` runs one `ray start --block` per node, each in a session of its own, every node with its own ports,
# and declares GPUS_PER_NODE logical GPUs per node (--num-gpus), so Ray's GPU scheduling is exercised without
# CUDA. It waits (bounded) until every node is alive, then writes DIR/address (what RAY_ADDRESS or
# hydra.launcher.address takes) and prints it. DIR/pids lists the sessions it started; `stop` ends
# exactly their processes (TERM, then KILL), never `ray stop`, which ends every Ray process on the machine.
# The nodes run $PYTHON's environment (default: the repository's .venv).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
RAY="$(dirname "$PYTHON")/ray"
WAIT_S="${RAY_CLUSTER_WAIT_S:-180}"
HEAD_PORT=6379

usage() {
  echo "usage: $0 start DIR [NODES] [GPUS_PER_NODE] [CPUS_PER_NODE] | exec DIR -- COMMAND... | stop DIR" >&2
  exit 2
}

netns() { echo "/proc/$(head -n1 "$1/pids")/ns/net"; }

# Start one node in a new session inside the namespace; its session id (= its pid) goes to DIR/pids.
start_node() {
  local dir="$1" name="$2" base="$3"
  shift 3
  # Ports of their own per node (the namespace is empty, so fixed ones are free): node manager, object
  # manager, dashboard agent (listen, grpc), runtime-env agent, metrics, and 40 for workers.
  setsid nsenter --net="$(netns "$dir")" -- "$RAY" start --block --disable-usage-stats \
    --node-ip-address=127.0.0.1 --node-manager-port="$base" --object-manager-port="$((base + 1))" \
    --dashboard-agent-listen-port="$((base + 2))" --dashboard-agent-grpc-port="$((base + 3))" \
    --runtime-env-agent-port="$((base + 4))" --metrics-export-port="$((base + 5))" \
    --min-worker-port="$((base + 10))" --max-worker-port="$((base + 49))" "$@" \
    >"$dir/$name.log" 2>&1 </dev/null &
  echo "$!" >>"$dir/pids"
}

start() {
  local dir="$1" nodes="${2:-2}" gpus="${3:-1}" cpus="${4:-2}"
  mkdir -p "$dir"
  if [[ -s "$dir/pids" ]]; then
    echo "$dir/pids exists: stop that cluster first" >&2
    exit 1
  fi
  # The namespace lives as long as this holder process (the first session in DIR/pids).
  setsid unshare --net -- sh -c 'ip link set lo up && exec sleep infinity' </dev/null >/dev/null 2>&1 &
  echo "$!" >"$dir/pids"
  # Ready once the holder has left this namespace and brought its loopback up.
  local ready=0
  for _ in $(seq 1 100); do
    if [[ "$(readlink "$(netns "$dir")")" != "$(readlink /proc/self/ns/net)" ]] &&
      nsenter --net="$(netns "$dir")" -- ip -o link show lo 2>/dev/null | grep -q "UP"; then
      ready=1
      break
    fi
    sleep 0.1
  done
  if ((!ready)); then
    echo "no loopback-only network namespace (unshare --net needs root)" >&2
    stop "$dir"
    exit 1
  fi
  # Ray's socket paths must stay short: its session files live in a short folder of their own.
  local temp
  temp="$(mktemp -d /tmp/qsray.XXXXXX)"
  echo "$temp" >"$dir/temp_dir"
  local address="127.0.0.1:$HEAD_PORT"
  local common=(--num-gpus="$gpus" --num-cpus="$cpus" --object-store-memory=100000000)
  start_node "$dir" node0 20000 --head --port="$HEAD_PORT" --ray-client-server-port=10001 \
    --include-dashboard=false --temp-dir="$temp" "${common[@]}"
  for ((i = 1; i < nodes; i++)); do
    # One log monitor per machine (the head's): a second would forward every worker's output twice.
    start_node "$dir" "node$i" "$((20000 + 100 * i))" --address="$address" --include-log-monitor=false \
      "${common[@]}"
  done
  if ! nsenter --net="$(netns "$dir")" -- "$PYTHON" - "$address" "$nodes" "$WAIT_S" <<'EOF'; then
import sys, time
import ray
address, nodes, wait_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + wait_s
while True:
    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        break
    except Exception:
        if time.monotonic() > deadline:
            raise
        time.sleep(2)
alive = lambda: sum(n["Alive"] for n in ray.nodes())  # noqa: E731
while alive() < nodes:
    if time.monotonic() > deadline:
        sys.exit(f"only {alive()} of {nodes} Ray nodes came up")
    time.sleep(1)
ray.shutdown()
EOF
    echo "the Ray cluster did not come up within ${WAIT_S}s; logs: $dir/node*.log" >&2
    stop "$dir"
    exit 1
  fi
  echo "$address" >"$dir/address"
  echo "$address"
}

# The live processes of the sessions DIR/pids names (Ray's workers get process groups of their own, but
# stay in the session of the node that started them); exited ones not yet reaped are left out.
session_pids() {
  ps -eo pid=,sid=,stat= | awk 'NR==FNR { s[$1]; next } ($2 in s) && $3 !~ /^Z/ { print $1 }' "$1/pids" -
}

stop() {
  local dir="$1" pids
  [[ -f "$dir/pids" ]] || return 0
  mapfile -t pids < <(session_pids "$dir")
  if ((${#pids[@]})); then kill -TERM "${pids[@]}" 2>/dev/null || true; fi
  # `ray start --block` and its GCS outlast a TERM for long: ten seconds' grace, then KILL.
  for _ in $(seq 1 10); do
    mapfile -t pids < <(session_pids "$dir")
    ((${#pids[@]})) || break
    sleep 1
  done
  if ((${#pids[@]})); then kill -KILL "${pids[@]}" 2>/dev/null || true; fi
  rm -f "$dir/pids" "$dir/address"
  if [[ -f "$dir/temp_dir" ]]; then
    rm -rf "$(cat "$dir/temp_dir")" "$dir/temp_dir"
  fi
}

[[ $# -ge 2 ]] || usage
case "$1" in
  start) start "${@:2}" ;;
  stop) stop "$2" ;;
  exec)
    [[ "${3:-}" == "--" && $# -ge 4 ]] || usage
    exec nsenter --net="$(netns "$2")" -- "${@:4}"
    ;;
  *) usage ;;
esac

#!/usr/bin/env bash
# Start a dask scheduler and N worker processes on this host, in the background.
#
#   bash deploy/local_cluster.sh [N_WORKERS [MEMORY_LIMIT_PER_WORKER [PORT]]]   # start
#   bash deploy/local_cluster.sh stop                                          # stop them
#
# Then:  stcal-dask run INPUT --output-dir OUT --scheduler tcp://127.0.0.1:PORT
#
# The scheduler and workers listen on 127.0.0.1 only (STCAL_DASK_HOST to change it): a dask
# scheduler runs whatever code its clients send, and it has no authentication of its own, so
# anything wider than this host needs TLS with client certificates (see deploy/README.md,
# "Security"). Other hosts can then join with the worker line of that section.
#
# Environment: STCAL_DASK_CLUSTER_DIR (state: pid files, logs, spill; default
# $TMPDIR/stcal-dask-cluster), STCAL_DASK_HOST (default 127.0.0.1), STCAL_DASK_CACHE_DIR
# (compiled-kernel cache, see deploy/README.md).
#
# Start fails (exit 1, nothing left running) if a cluster started from the same state directory
# is still running, or if the scheduler or the workers do not come up (e.g. the port is in use).
set -euo pipefail

STATE_DIR="${STCAL_DASK_CLUSTER_DIR:-${TMPDIR:-/tmp}/stcal-dask-cluster}"
HOST="${STCAL_DASK_HOST:-127.0.0.1}"

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pidfile() {  # stop the process group of a pid file, wait for it, remove the file
    local pidfile=$1 pid
    [[ -f "$pidfile" ]] || return 0
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

if [[ "${1:-}" == "stop" ]]; then
    stop_pidfile "$STATE_DIR/worker.pid"
    stop_pidfile "$STATE_DIR/scheduler.pid"
    echo "stopped"
    exit 0
fi

N_WORKERS="${1:-$(nproc)}"
MEMORY="${2:-auto}"
PORT="${3:-8786}"
mkdir -p "$STATE_DIR"

if alive "$STATE_DIR/scheduler.pid" || alive "$STATE_DIR/worker.pid"; then
    echo "local_cluster.sh: error: a cluster started from $STATE_DIR is still running" \
         "(stop it with: bash $0 stop)" >&2
    exit 1
fi
rm -f "$STATE_DIR/scheduler.pid" "$STATE_DIR/worker.pid"

fail() {
    echo "local_cluster.sh: error: $1 (log: $2)" >&2
    tail -n 5 "$2" >&2 || true
    stop_pidfile "$STATE_DIR/worker.pid"
    stop_pidfile "$STATE_DIR/scheduler.pid"
    exit 1
}

# compile the kernels once for this machine before any worker starts (no-op when cached)
stcal-dask warmup

# each in its own process group (setsid), so that stop ends the group and nothing else
setsid dask scheduler --host "$HOST" --port "$PORT" --dashboard-address "$HOST:0" \
    >"$STATE_DIR/scheduler.log" 2>&1 </dev/null &
echo $! >"$STATE_DIR/scheduler.pid"

for _ in $(seq 1 150); do  # until it listens, or it has exited (e.g. the port is in use)
    grep -q "Scheduler at" "$STATE_DIR/scheduler.log" && break
    alive "$STATE_DIR/scheduler.pid" || fail "the scheduler did not start" "$STATE_DIR/scheduler.log"
    sleep 0.2
done
grep -q "Scheduler at" "$STATE_DIR/scheduler.log" \
    || fail "the scheduler did not start within 30 s" "$STATE_DIR/scheduler.log"

OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 \
    setsid dask worker "tcp://$HOST:$PORT" --host "$HOST" --nworkers "$N_WORKERS" --nthreads 1 \
        --memory-limit "$MEMORY" --local-directory "$STATE_DIR/spill" \
        >"$STATE_DIR/worker.log" 2>&1 </dev/null &
echo $! >"$STATE_DIR/worker.pid"

for _ in $(seq 1 300); do  # until every worker has registered
    n=$(grep -c "Registered to" "$STATE_DIR/worker.log" || true)
    [[ "$n" -ge "$N_WORKERS" ]] && break
    alive "$STATE_DIR/worker.pid" || fail "the workers did not start" "$STATE_DIR/worker.log"
    sleep 0.2
done
[[ "$(grep -c "Registered to" "$STATE_DIR/worker.log" || true)" -ge "$N_WORKERS" ]] \
    || fail "the workers did not register within 60 s" "$STATE_DIR/worker.log"

echo "scheduler: tcp://$HOST:$PORT   (logs in $STATE_DIR)"
echo "run:       stcal-dask run INPUT --output-dir OUT --scheduler tcp://$HOST:$PORT"
echo "stop:      bash $0 stop"

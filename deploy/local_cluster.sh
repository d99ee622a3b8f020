#!/usr/bin/env bash
# Start a dask scheduler and N single-threaded worker processes on this host, in the background.
#
#   bash deploy/local_cluster.sh [N_WORKERS [MEMORY_LIMIT_PER_WORKER [PORT]]]   # start
#   bash deploy/local_cluster.sh stop                                          # stop them
#
# Then:  stcal-dask run INPUT --output-dir OUT --scheduler tcp://127.0.0.1:PORT
# Other hosts can join with:
#   OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 dask worker tcp://THIS_HOST:PORT --nworkers N --nthreads 1
set -euo pipefail

STATE_DIR="${STCAL_DASK_CLUSTER_DIR:-${TMPDIR:-/tmp}/stcal-dask-cluster}"

if [[ "${1:-}" == "stop" ]]; then
    for name in worker scheduler; do
        if [[ -f "$STATE_DIR/$name.pid" ]]; then
            kill "$(cat "$STATE_DIR/$name.pid")" 2>/dev/null || true
            rm -f "$STATE_DIR/$name.pid"
        fi
    done
    echo "stopped"
    exit 0
fi

N_WORKERS="${1:-$(nproc)}"
MEMORY="${2:-auto}"
PORT="${3:-8786}"
mkdir -p "$STATE_DIR"

dask scheduler --port "$PORT" --dashboard-address :0 >"$STATE_DIR/scheduler.log" 2>&1 &
echo $! >"$STATE_DIR/scheduler.pid"

# wait until the scheduler listens
for _ in $(seq 1 50); do
    if grep -q "Scheduler at" "$STATE_DIR/scheduler.log"; then break; fi
    sleep 0.2
done

OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 \
    dask worker "tcp://127.0.0.1:$PORT" --nworkers "$N_WORKERS" --nthreads 1 \
        --memory-limit "$MEMORY" --local-directory "$STATE_DIR/spill" \
        >"$STATE_DIR/worker.log" 2>&1 &
echo $! >"$STATE_DIR/worker.pid"

echo "scheduler: tcp://127.0.0.1:$PORT   (logs in $STATE_DIR)"
echo "run:       stcal-dask run INPUT --output-dir OUT --scheduler tcp://127.0.0.1:$PORT"
echo "stop:      bash $0 stop"

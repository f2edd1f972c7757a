#!/usr/bin/env bash
# Several training processes on this machine, joined by jax.distributed over loopback: the
# multi-host code path (per-process data shards, global batch assembly, collectives) on a laptop.
#
#   launch/local_multiprocess.sh NUM_PROCESSES WORKDIR [train flags...]
#   launch/local_multiprocess.sh 2 runs/demo_2proc --config configs/demo.py
#
# Each process gets one CPU device unless XLA_FLAGS says otherwise; the global batch
# (data.global_batch_size) must divide over all devices of all processes. Logs: WORKDIR/proc_<i>.log.
set -euo pipefail
n=${1:?number of processes}; workdir=${2:?workdir}; shift 2
port=${PORT:-$((20000 + RANDOM % 20000))}
mkdir -p "$workdir"
pids=()
for ((i = 0; i < n; i++)); do
  python -m cptrans_jax.train --workdir "$workdir" --multiprocess \
    --coordinator_address "127.0.0.1:$port" --num_processes "$n" --process_id "$i" "$@" \
    > "$workdir/proc_$i.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
tail -n 3 "$workdir/proc_0.log"
exit $status

#!/usr/bin/env bash
# N processes of `flaxlstm train` on this machine, joined by a local coordinator: the same
# multi-controller runtime as a cluster, for trying multi-host runs (and what tests use).
#
#   launch/local.sh N [--dry-run] [flaxlstm train arguments ...]
#   LOCAL_DEVICES=4 launch/local.sh 2 --config ett --workdir runs/two_hosts
#
# Env: LOCAL_DEVICES (CPU devices per process), PORT (coordinator port, default random),
# PYTHON (interpreter with flaxlstm installed, default python3).
set -euo pipefail
if [ $# -lt 1 ] || ! [[ "$1" =~ ^[0-9]+$ ]]; then
  echo "usage: launch/local.sh N [--dry-run] [flaxlstm train args...]" >&2; exit 2
fi
n=$1; shift
dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
port=${PORT:-$((20000 + RANDOM % 20000))}
python=${PYTHON:-python3}
# Huge pages for glibc's large allocations (read at process start): fewer, larger pages for
# the heap where `flaxlstm` keeps each step's temporaries for the next (flaxlstm/host.py).
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup INT TERM
for ((i = 0; i < n; i++)); do
  cmd=("$python" -m flaxlstm.cli train --coordinator "localhost:$port" --num_processes "$n"
       --process_id "$i")
  [ -n "${LOCAL_DEVICES:-}" ] && cmd+=(--local_devices "$LOCAL_DEVICES")
  cmd+=("$@")
  echo "+ ${cmd[*]}"
  [ "$dry" = 1 ] && continue
  "${cmd[@]}" &
  pids+=($!)
done
[ "$dry" = 1 ] && exit 0
status=0
for p in "${pids[@]}"; do
  # One failed process would leave the others waiting on collectives: stop them all.
  if ! wait "$p"; then status=1; cleanup; fi
done
exit $status

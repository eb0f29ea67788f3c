#!/usr/bin/env bash
# A Cloud TPU VM pod slice: every worker runs the same `flaxlstm train` command;
# jax.distributed.initialize() finds the other workers from the TPU metadata.
#
#   launch/tpu_vm.sh TPU_NAME ZONE [--dry-run] [flaxlstm train arguments ...]
#   launch/tpu_vm.sh my-v4-32 us-central2-b --config ett --workdir gs://b/runs/x
#
# Env: REPO_DIR (checkout on the workers, default ~/flaxlstm). flaxlstm must be installed
# there on every worker, e.g. once with the same script: --command "pip install -e ~/flaxlstm".
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: launch/tpu_vm.sh TPU_NAME ZONE [--dry-run] [flaxlstm train args...]" >&2; exit 2
fi
tpu=$1 zone=$2; shift 2
dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
args=""
[ $# -gt 0 ] && args=$(printf '%q ' "$@")  # quoted for the remote shell; none -> nothing
# GLIBC_TUNABLES: huge pages for glibc's large allocations (see launch/local.sh).
remote="cd ${REPO_DIR:-~/flaxlstm} && GLIBC_TUNABLES=glibc.malloc.hugetlb=1 flaxlstm train --distributed $args"
cmd=(gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$remote")
echo "+ ${cmd[*]}"
[ "$dry" = 1 ] && exit 0
exec "${cmd[@]}"

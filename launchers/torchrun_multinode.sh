#!/usr/bin/env bash
# Multi-node training with torchrun, no SLURM needed: run this same command on every node.
#
#   HEAD=node0.example:29500 NNODES=2 NPROC=8 launchers/torchrun_multinode.sh model=qwen0.5b fsdp=hybrid_shard
#
# HEAD is a host:port every node can reach (the c10d rendezvous runs there); NPROC ranks start per node. The
# rendezvous id defaults to one derived from HEAD, the same on every node whenever each is started (RUN_ID= to
# choose one). All nodes must see the same working directory (shared filesystem): rank 0 writes the one run
# directory. tests/test_multinode.py runs this script as two "nodes" on one machine.
set -euo pipefail
: "${HEAD:?set HEAD=host:port of the rendezvous (e.g. the first node)}"
PYTHON=${PYTHON:-python}
NNODES=${NNODES:-2}
NPROC=${NPROC:-$("$PYTHON" -c 'import torch; print(max(1, torch.cuda.device_count()))')}
RUN_ID=${RUN_ID:-cpt-${HEAD//[^A-Za-z0-9]/-}}
exec "$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --nproc_per_node="$NPROC" --rdzv_backend=c10d \
  --rdzv_endpoint="$HEAD" --rdzv_id="$RUN_ID" -m cpt.run "$@"

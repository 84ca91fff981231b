#!/usr/bin/env bash
# Multi-node training with torchrun, no SLURM needed: run this same command on every node.
#
#   HEAD=node0.example:29500 NNODES=2 NPROC=8 launchers/torchrun_multinode.sh model=qwen0.5b fsdp=hybrid_shard
#
# HEAD is a host:port every node can reach (the c10d rendezvous runs there); NPROC ranks start per node.
# All nodes must see the same working directory (shared filesystem): rank 0 writes the one run directory.
set -euo pipefail
: "${HEAD:?set HEAD=host:port of the rendezvous (e.g. the first node)}"
NNODES=${NNODES:-2}
NPROC=${NPROC:-$(python -c 'import torch; print(max(1, torch.cuda.device_count()))')}
RUN_ID=${RUN_ID:-cpt-$(date +%Y%m%d)}
exec torchrun --nnodes="$NNODES" --nproc_per_node="$NPROC" --rdzv_backend=c10d --rdzv_endpoint="$HEAD" \
  --rdzv_id="$RUN_ID" -m cpt.run "$@"

#!/usr/bin/env bash
# SLURM without submitit: one torchrun per node, each starting one rank per GPU. Submit from the repository root:
#
#   sbatch --nodes=2 --gpus-per-node=8 launchers/sbatch_torchrun.sh model=qwen0.5b fsdp=hybrid_shard \
#          hydra.run.dir=outputs/qwen-legal-1
#
# A fixed hydra.run.dir makes `sbatch` of the same script resume from that run's latest checkpoint (resume=auto),
# e.g. after a preemption (`--requeue` below). All nodes must share the working directory.
#
# Two minutes before the time limit Slurm sends SIGUSR2 to every process of the step (--signal below): the ranks
# save a checkpoint at their next log step, stop, and rank 0 requeues the job, which resumes from that checkpoint
# (cpt/train/preemption.py). torchrun's agents ignore the signal (its default action would end them); ranks see it.
#SBATCH --job-name=cpt
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=USR2@120
#SBATCH --output=%x-%j.out
set -euo pipefail
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
NPROC=${NPROC:-${SLURM_GPUS_ON_NODE:-1}}
PYTHON=${PYTHON:-.venv/bin/python}
srun --kill-on-bad-exit=1 bash -c 'trap "" USR2; exec "$@"' torchrun \
  "$PYTHON" -m torch.distributed.run --nnodes="$SLURM_NNODES" --nproc_per_node="$NPROC" \
  --rdzv_backend=c10d --rdzv_endpoint="$HEAD:29500" --rdzv_id="cpt-$SLURM_JOB_ID" -m cpt.run "$@"

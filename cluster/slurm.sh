#!/bin/bash
# Train an orchestrator job on a SLURM allocation: a Ray head on the first node, a Ray
# worker on each other node (one srun step per node), then the driver on the head.
#
#   sbatch cluster/slurm.sh path/to/job.yaml [--set train.steps=500 ...]
#   SHARED=/lustre/$USER VENV=/lustre/$USER/venv sbatch --nodes=4 cluster/slurm.sh job.yaml
#
# Needs, on every node at the same paths:
#   SHARED  a directory on a shared file system (NFS, Lustre, GPFS, ...). Workers write
#           checkpoints and metrics into the run directory and the driver reads them
#           back, so runs go to $SHARED/runs; file data sources must be shared too.
#   VENV    a Python environment with torch==2.13.0 installed first and then
#           orchestrator (pip install torch==2.13.0 && pip install -e .): an unpinned
#           torch would pull PyPI's default CUDA build, which may not match the nodes.
#
# The run directory is named after the SLURM job id, so a requeued job (after a
# preemption or a node failure) finds its run directory and resumes from the newest
# checkpoint instead of starting over.
#
#SBATCH --job-name=orchestrator
#SBATCH --nodes=3
#SBATCH --exclusive
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --gpus-per-node=1
#SBATCH --time=04:00:00
#SBATCH --output=%x-%j.out
#SBATCH --open-mode=append
# Keep the allocation when a node fails: the job goes on at a smaller size.
#SBATCH --no-kill
#SBATCH --requeue
# (Delete --gpus-per-node on a CPU-only partition; Ray finds the GPUs SLURM assigns.)

set -euo pipefail

JOB_FILE=${1:?usage: sbatch cluster/slurm.sh JOB.yaml [orchestrator options]}
shift
SHARED=${SHARED:-/shared/$USER}   # EDIT: your shared directory
VENV=${VENV:-$SHARED/venv}        # EDIT: your environment
RUN_DIR=${RUN_DIR:-$SHARED/runs/${SLURM_JOB_NAME}-${SLURM_JOB_ID}}
PORT=${RAY_PORT:-6379}
CPUS=${SLURM_CPUS_PER_TASK:-$(nproc)}

# shellcheck disable=SC1091
source "$VENV/bin/activate"
mkdir -p "$SHARED/runs"

# Token authentication: clusters started by Ray 2.60 run with token authentication,
# and every node and driver must present the same token. One random token per job,
# exported here; srun passes the environment on to every step. To use a fixed token
# (one you connect with from elsewhere), export RAY_AUTH_TOKEN before sbatch.
export RAY_AUTH_MODE=token
if [[ -z "${RAY_AUTH_TOKEN:-}" ]]; then
    RAY_AUTH_TOKEN=$(python -c 'import secrets; print(secrets.token_hex(32))')
    export RAY_AUTH_TOKEN
fi

mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
HEAD=${NODES[0]}
# The first address of the head (some systems list an IPv6 address first: pick yours).
HEAD_IP=$(srun --nodes=1 --ntasks=1 -w "$HEAD" hostname --ip-address | awk '{print $1}')
ADDRESS=$HEAD_IP:$PORT
echo "Ray head: $HEAD ($ADDRESS), ${#NODES[@]} nodes, run directory $RUN_DIR"

trap 'kill $(jobs -p) 2>/dev/null || true' EXIT

# --cpus-per-task again: recent srun versions do not take it over from sbatch.
srun --nodes=1 --ntasks=1 --cpus-per-task="$CPUS" -w "$HEAD" \
    ray start --head --node-ip-address="$HEAD_IP" --port="$PORT" --num-cpus="$CPUS" --block &
HEAD_STEP=$!
sleep 10
if ! kill -0 "$HEAD_STEP" 2>/dev/null; then
    echo "error: the Ray head did not start on $HEAD (see its output above)" >&2
    exit 1
fi

# One step per worker node, so that losing one node ends only its own step.
for node in "${NODES[@]:1}"; do
    srun --nodes=1 --ntasks=1 --cpus-per-task="$CPUS" -w "$node" \
        ray start --address="$ADDRESS" --num-cpus="$CPUS" --block &
    sleep 1
done

# Wait until every node has joined (at most 5 minutes), so the job is sized on all of them.
timeout 360 python - "$ADDRESS" "${#NODES[@]}" <<'PY'
import logging, sys, time

import ray

address, wanted = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 300
alive = 0
while time.monotonic() < deadline:
    try:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        alive = sum(node["Alive"] for node in ray.nodes())
        ray.shutdown()
    except ConnectionError:
        pass
    if alive >= wanted:
        break
    time.sleep(5)
print(f"{alive} of {wanted} Ray nodes up")
sys.exit(0 if alive else 1)
PY

if [[ -f "$RUN_DIR/job.yaml" ]]; then
    orchestrator resume "$RUN_DIR" --address "$ADDRESS" "$@"
else
    orchestrator launch "$JOB_FILE" --address "$ADDRESS" --run-dir "$RUN_DIR" "$@"
fi

#!/usr/bin/env bash
# Two "nodes" on this machine: two torchrun launchers (--nnodes 2, one process each) that meet
# through a c10d rendezvous on 127.0.0.1, exactly as two hosts would through the first one's
# address. Checks the multi-node path (rendezvous, global ranks, one writer) without a cluster.
#
#   scripts/two_node.sh [fastssl.pretrain flags...]
#   scripts/two_node.sh --dataset cifar10-sample --subset 64 --batch-size 16 --epochs 1 \
#       --device cpu --stem imagenet --no-compile --knn-every 0 --out runs/two_node
#
# On real hosts run the same torchrun line on each, with --rdzv-endpoint HOST0:PORT and
# --nproc-per-node set to that host's GPU count. Exit status: the first non-zero of the two.
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
# A port that was free a moment ago (the rendezvous store binds it).
PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
RDZV_ID="two_node_$$"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
unset WORLD_SIZE RANK LOCAL_RANK MASTER_ADDR MASTER_PORT

pids=()
for node in 0 1; do
    # c10d assigns node ranks in arrival order (--node-rank is only read by static rendezvous).
    "$PYTHON" -m torch.distributed.run --nnodes 2 --nproc-per-node 1 \
        --rdzv-backend c10d --rdzv-endpoint "127.0.0.1:$PORT" --rdzv-id "$RDZV_ID" \
        -m fastssl.pretrain "$@" > >(sed "s/^/[node $node] /") 2>&1 &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
    wait "$pid" || { rc=$?; [ "$status" -eq 0 ] && status=$rc; }
done
exit "$status"

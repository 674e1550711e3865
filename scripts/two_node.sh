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
    if [ "$node" -eq 0 ]; then
        # Both launchers see 127.0.0.1 as their own address, so both would try to host the
        # rendezvous store; the second one starts once the first one's store is listening.
        "$PYTHON" - "$PORT" <<'PY' || { echo "two_node.sh: node 0's rendezvous store never came up on port $PORT" >&2; kill "${pids[@]}" 2>/dev/null; exit 1; }
import socket, sys, time
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.2)
sys.exit(1)
PY
    fi
done
# The first launcher to fail ends the other, which would otherwise wait for its peer forever.
status=0
for _ in "${pids[@]}"; do
    wait -n "${pids[@]}"
    rc=$?
    if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then
        status=$rc
        kill "${pids[@]}" 2>/dev/null
    fi
done
exit "$status"

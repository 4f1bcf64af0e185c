"""The digits model under torchft 0.2.0: one replica group per process (group world size 1), the
replica groups joined by the Lighthouse, gradients averaged with manager.allreduce per gradient
(not torchft's DistributedDataParallel wrapper, whose communication hook asserts when a peer dies:
see shared/notes/peers.md), all four started and then each waited on; with --bucket, one
manager.allreduce of all the gradients flattened into one tensor (as DDP's single bucket does).
bench/torch/compare.sh starts a Lighthouse and three of these:

    RUST_LOG=warn torchft_lighthouse --bind 127.0.0.1:PORT --min_replicas 2 --join_timeout_ms 1000 \
        --heartbeat_timeout_ms 500 --quorum_tick_ms 100
    OMP_NUM_THREADS=1 RUST_LOG=warn python bench/torch/torchft_digits.py --replica I \
        --lighthouse http://127.0.0.1:PORT --ready-dir DIR --replicas 3 [--bucket]

(RUST_LOG=warn: at its default level torchft's Rust manager logs several lines per step.)

Training is examples/torch/digits' (bench/torch/common.py): the same model, seed, Adam at lr 1e-2,
a global batch of 64 (chosen by torchft's step number) split over the replica groups in the step's
quorum. Each group's loss is the sum over its part times participants / 64, so that the
allreduce's average is the gradient of the mean over the 64.

Each process runs its replica group's TCPStore itself (torchrun would otherwise provide it) and a
Manager with min_replica_size 2, a synchronous quorum (use_async_quorum=False, so that the step's
participants and this group's rank among them are known before the forward pass, to split the
batch) and init_sync=False (every group builds the same initial weights from the seed). A group
that joins late or comes back heals from a peer (torchft's HTTP checkpoint transport).

It prints one JSON line per committed step:
    {"event": "step", "step": STEP, "replica": I, "world": PARTICIPANTS, "pid": P, "t": UNIX_TIME}
and {"event": "retry", ...} for a step whose commit failed (a peer died during it).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from datetime import timedelta

import torch
from torch import nn
from torch.distributed import TCPStore
from torchft import Manager, ProcessGroupGloo
from torchft.optim import OptimizerWrapper

from common import GLOBAL_BATCH, Batches, emit, setup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--replica", type=int, required=True, help="this replica group's number")
    parser.add_argument("--lighthouse", required=True, help="the Lighthouse's address, http://HOST:PORT")
    parser.add_argument("--steps", type=int, default=600, help="global steps to train")
    parser.add_argument("--min-replicas", type=int, default=2, help="Manager's min_replica_size")
    parser.add_argument("--bucket", action="store_true",
                        help="one allreduce of all gradients flattened (as DDP's one bucket) instead of one per gradient")
    parser.add_argument("--ready-dir", help="with --replicas: start the loop once that many replica groups "
                        "have written a ready file here (their Managers made, heartbeating)")
    parser.add_argument("--replicas", type=int, default=0, help="replica groups to wait for (see --ready-dir)")
    parser.add_argument("--timeout", type=float, default=10.0, help="collective and RPC timeout, seconds")
    args = parser.parse_args()
    logging.basicConfig(level=os.environ.get("TORCHFT_BENCH_LOG", "WARNING"))

    launched = time.time()
    model, inner, (train_x, train_y, _test_x, _test_y) = setup()
    batches = Batches(len(train_y))
    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)

    def state_dict() -> dict:
        return {"model": model.state_dict(), "optimizer": inner.state_dict()}

    def load_state_dict(state: dict) -> None:
        model.load_state_dict(state["model"])
        inner.load_state_dict(state["optimizer"])

    timeout = timedelta(seconds=args.timeout)
    manager = Manager(
        pg=ProcessGroupGloo(timeout=timeout),
        load_state_dict=load_state_dict,
        state_dict=state_dict,
        min_replica_size=args.min_replicas,
        use_async_quorum=False,
        init_sync=False,
        timeout=timeout,
        quorum_timeout=timedelta(seconds=60),
        connect_timeout=timeout,
        rank=0,
        world_size=1,
        store_addr="127.0.0.1",
        store_port=store.port,
        lighthouse_addr=args.lighthouse,
        replica_id=f"digits_{args.replica}",
        hostname="127.0.0.1",
    )
    optimizer = OptimizerWrapper(manager, inner)
    if args.ready_dir and args.replicas:
        # The harness's start barrier: without it a group that is slow to import torch misses the
        # first quorum (the Lighthouse issues one with min_replicas after its join timeout) and the
        # others train without it until it heals in.
        open(os.path.join(args.ready_dir, f"ready-{args.replica}"), "w").close()
        deadline = time.time() + 120
        while sum(os.path.exists(os.path.join(args.ready_dir, f"ready-{i}")) for i in range(args.replicas)) < args.replicas:
            if time.time() > deadline:
                raise SystemExit(f"not every one of {args.replicas} replica groups was ready within 120 s")
            time.sleep(0.01)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    emit(event="start", replica=args.replica, pid=os.getpid(), setup_s=time.time() - launched)

    while manager.current_step() < args.steps:
        optimizer.zero_grad()  # the quorum (synchronous), and healing if this group is behind
        step = manager.current_step()
        world = manager.num_participants()
        rank = manager.participating_rank()
        samples = batches.shard(step, rank if rank is not None else 0, max(world, 1))
        loss = loss_fn(model(train_x[samples]), train_y[samples]) * (max(world, 1) / GLOBAL_BATCH)
        loss.backward()
        if args.bucket:
            flat = torch.cat([parameter.grad.reshape(-1) for parameter in model.parameters()])
            manager.allreduce(flat).wait()
            for parameter, part in zip(model.parameters(), flat.split([p.numel() for p in model.parameters()])):
                parameter.grad.copy_(part.view_as(parameter.grad))
        else:
            works = [manager.allreduce(parameter.grad) for parameter in model.parameters()]
            for work in works:
                work.wait()
        optimizer.step()  # should_commit: the optimizer steps only if every participant's step went well
        if manager.current_step() > step:
            emit(event="step", step=manager.current_step(), replica=args.replica, world=world, pid=os.getpid())
        else:
            emit(event="retry", step=step, replica=args.replica, world=world, pid=os.getpid())
    emit(event="done", step=manager.current_step(), replica=args.replica, pid=os.getpid())
    manager.shutdown(wait=False)


if __name__ == "__main__":
    main()

"""The digits model under torchrun + DistributedDataParallel over Gloo, elastic, resuming from a
checkpoint after a restart. One worker per torchrun "node"; bench/torch/compare.sh starts three:

    OMP_NUM_THREADS=1 torchrun --nnodes=2:3 --nproc-per-node=1 --rdzv-backend=c10d \
        --rdzv-endpoint=127.0.0.1:PORT --rdzv-id=digits --monitor-interval=0.1 --max-restarts=10 \
        --rdzv-conf=join_timeout=60,last_call_timeout=1,is_host=true \
        bench/torch/ddp_digits.py --steps 600 --checkpoint-dir DIR
    (is_host=false for the other two)

Training is examples/torch/digits' (bench/torch/common.py): the same model, seed, Adam at lr 1e-2,
a global batch of 64 split over the ranks. Each rank's loss is the sum over its part times
world / 64, so that DDP's average of the gradients is the gradient of the mean over the 64.

Rank 0 saves a checkpoint (model, optimizer, steps done) every --checkpoint-every steps (default
10), written to a temporary name and renamed; a worker that starts (first start or restart after a
failure) resumes from the newest one, whose step rank 0 chooses and broadcasts, so every rank runs
the same number of iterations (Gloo needs that).

It prints one JSON line per completed step (after optimizer.step()):
    {"event": "step", "step": STEPS_DONE, "rank": R, "world": W, "restart": N, "pid": P, "t": UNIX_TIME}
and {"event": "start", ...} with the step it resumed from, and {"event": "done", ...} at the end.
"""

from __future__ import annotations

import argparse
import faulthandler
import glob
import os
import re
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from common import GLOBAL_BATCH, Batches, emit, setup


def newest_checkpoint(directory: str) -> int:
    steps = [int(m.group(1)) for path in glob.glob(os.path.join(directory, "ckpt-*.pt"))
             if (m := re.search(r"ckpt-(\d+)\.pt$", path))]
    return max(steps, default=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=600, help="global steps to train")
    parser.add_argument("--checkpoint-dir", required=True, help="where rank 0 saves checkpoints")
    parser.add_argument("--checkpoint-every", type=int, default=10, help="steps between checkpoints")
    args = parser.parse_args()

    launched = time.time()
    # A worker still starting after this long prints where it is (stderr), to show where a
    # restarted group waits when it does not come back.
    faulthandler.dump_traceback_later(30, repeat=True)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    model, optimizer, (train_x, train_y, _test_x, _test_y) = setup()
    batches = Batches(len(train_y))

    start = torch.tensor([newest_checkpoint(args.checkpoint_dir) if rank == 0 else 0])
    dist.broadcast(start, src=0)
    done = int(start.item())
    if done > 0:
        saved = torch.load(os.path.join(args.checkpoint_dir, f"ckpt-{done}.pt"), weights_only=True)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
    ddp = DistributedDataParallel(model)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    emit(event="start", rank=rank, world=world, restart=restart, pid=os.getpid(), resumed_from=done,
         setup_s=time.time() - launched)
    faulthandler.cancel_dump_traceback_later()

    while done < args.steps:
        samples = batches.shard(done, rank, world)
        optimizer.zero_grad()
        loss = loss_fn(ddp(train_x[samples]), train_y[samples]) * (world / GLOBAL_BATCH)
        loss.backward()
        optimizer.step()
        done += 1
        emit(event="step", step=done, rank=rank, world=world, restart=restart, pid=os.getpid())
        if rank == 0 and done % args.checkpoint_every == 0:
            path = os.path.join(args.checkpoint_dir, f"ckpt-{done}.pt")
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "steps": done},
                       path + ".tmp")
            os.replace(path + ".tmp", path)
            old = os.path.join(args.checkpoint_dir, f"ckpt-{done - 2 * args.checkpoint_every}.pt")
            if os.path.exists(old):
                os.remove(old)
    emit(event="done", rank=rank, world=world, restart=restart, pid=os.getpid(), step=done)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

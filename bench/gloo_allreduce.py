#!/usr/bin/env python3
"""PyTorch Gloo all-reduce over TCP on loopback, reported like `ringmaster bench allreduce`.

    gloo_allreduce.py RANKS SIZES          (e.g. gloo_allreduce.py 2 4K,64K,1M)

Needs a Python with torch (see compare-mpi.sh, which runs it with TORCH_PYTHON). Starts RANKS
processes of this script on 127.0.0.1 (a free port, GLOO_SOCKET_IFNAME=lo, one torch thread per
rank), each with backend "gloo" and float32 tensors of SIZES bytes. Measures as mpi_allreduce.py
does: per size 5 warm-up iterations, then at least 20 and at least 1 s; each iteration timed on
each rank with no barrier between iterations; p50 and p99 of the slowest rank per iteration,
algbw = bytes / p50 and busbw = algbw * 2(n-1)/n in 10^9 B/s, and CPU time per operation (user +
system of the whole process, Gloo's threads included) summed over the ranks. Prints one JSON object
per size from rank 0, with the keys mpi_allreduce.py prints.

The all-reduce is in place, so the tensor is checked once (ones in, RANKS out) and then zeroed:
repeated sums of ones would overflow to infinity after some dozens of iterations.
"""
import os
import socket
import subprocess
import sys
import time


from allreduce_report import cpu_seconds, parse, print_row


# MARK: - Rank


def rank_main(rank: int, world: int, sizes: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world)
    for size in [parse(s) for s in sizes.split(",")]:
        tensor = torch.ones(size // 4, dtype=torch.float32)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        if not bool((tensor == world).all()):
            raise SystemExit(f"rank {rank}: all-reduce of {size} bytes of ones did not give {world}")
        tensor.zero_()
        start = time.perf_counter()
        for _ in range(5):
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        per = (time.perf_counter() - start) / 5
        count = torch.tensor([min(100_000, max(20, int(1.0 / max(per, 1e-7)) + 1))], dtype=torch.int64)
        dist.broadcast(count, src=0)
        iterations = int(count.item())
        dist.barrier()
        times = torch.empty(iterations, dtype=torch.float64)
        cpu = cpu_seconds()
        for i in range(iterations):
            t = time.perf_counter()
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            times[i] = time.perf_counter() - t
        cpu = cpu_seconds() - cpu
        dist.reduce(times, dst=0, op=dist.ReduceOp.MAX)
        cpu_total = torch.tensor([cpu], dtype=torch.float64)
        dist.reduce(cpu_total, dst=0, op=dist.ReduceOp.SUM)
        if rank == 0:
            print_row(size, world, times.tolist(), cpu_total.item())
    dist.destroy_process_group()


# MARK: - Launcher


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(world: int, sizes: str) -> int:
    """Starts the ranks and waits for them; if one fails, stops the others and returns its status."""
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE=str(world),
               GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    ranks = [subprocess.Popen([sys.executable, __file__, "--rank", str(rank), str(world), sizes],
                              env=dict(env, RANK=str(rank)))
             for rank in range(world)]
    try:
        while True:
            codes = [rank.poll() for rank in ranks]
            failed = [code for code in codes if code not in (None, 0)]
            if failed:
                print(f"gloo_allreduce.py: a rank exited with status {failed[0]}; stopping the others",
                      file=sys.stderr)
                return failed[0] if failed[0] > 0 else 1
            if all(code == 0 for code in codes):
                return 0
            time.sleep(0.05)
    finally:
        for rank in ranks:
            if rank.poll() is None:
                rank.kill()
                rank.wait()


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--rank":
        rank_main(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    elif len(sys.argv) == 3:
        sys.exit(launch(int(sys.argv[1]), sys.argv[2]))
    else:
        sys.exit("usage: gloo_allreduce.py RANKS SIZES   (e.g. gloo_allreduce.py 2 4K,64K,1M)")


if __name__ == "__main__":
    main()

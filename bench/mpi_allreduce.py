#!/usr/bin/env python3
"""Open MPI all-reduce over TCP, reported like `ringmaster bench allreduce`.

Run under mpirun (see compare-mpi.sh). Per size: 5 warm-up iterations, then at least 20 and at
least 1 s; p50 and p99 of the slowest rank per iteration, algbw and busbw in 10^9 B/s
(busbw = algbw * 2(n-1)/n), and CPU time per operation summed over the ranks. Prints one JSON
object per size on rank 0.
"""
import json
import resource
import sys
import time

import numpy as np
from mpi4py import MPI


def parse(size: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    size = size.strip().upper()
    return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    for size in [parse(s) for s in sys.argv[1].split(",")]:
        send = np.ones(size // 4, dtype=np.float32)
        recv = np.empty_like(send)
        start = time.perf_counter()
        for _ in range(5):
            comm.Allreduce(send, recv, op=MPI.SUM)
        per = (time.perf_counter() - start) / 5
        iterations = comm.bcast(min(100_000, max(20, int(1.0 / max(per, 1e-7)) + 1)), root=0)
        comm.Barrier()
        times = np.empty(iterations)
        cpu = cpu_seconds()
        for i in range(iterations):
            t = time.perf_counter()
            comm.Allreduce(send, recv, op=MPI.SUM)
            times[i] = time.perf_counter() - t
        cpu = cpu_seconds() - cpu
        slowest = np.empty_like(times)
        comm.Reduce(times, slowest, op=MPI.MAX, root=0)
        cpu_total = comm.reduce(cpu, op=MPI.SUM, root=0)
        if rank == 0:
            slowest.sort()
            p50 = slowest[len(slowest) // 2]
            p99 = slowest[min(len(slowest) - 1, int(len(slowest) * 0.99))]
            algbw = size / p50 / 1e9
            print(json.dumps({
                "bytes": size, "iterations": iterations, "p50_us": p50 * 1e6, "p99_us": p99 * 1e6,
                "algbw_gbps": algbw, "busbw_gbps": algbw * 2 * (world - 1) / world,
                "cpu_us_per_op": cpu_total / iterations * 1e6,
            }), flush=True)


if __name__ == "__main__":
    main()

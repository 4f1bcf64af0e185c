#!/usr/bin/env python3
"""Open MPI all-reduce over TCP, reported like `ringmaster bench allreduce`.

Run under mpirun (see compare-mpi.sh). Per size: 5 warm-up iterations, then at least 20 and at
least 1 s; p50 and p99 of the slowest rank per iteration, algbw and busbw in 10^9 B/s
(busbw = algbw * 2(n-1)/n), and CPU time per operation summed over the ranks. Prints one JSON
object per size on rank 0.
"""
import sys
import time

import numpy as np
from mpi4py import MPI

from allreduce_report import cpu_seconds, parse, print_row


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
            print_row(size, world, slowest.tolist(), cpu_total)


if __name__ == "__main__":
    main()

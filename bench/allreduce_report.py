"""What bench/mpi_allreduce.py and bench/gloo_allreduce.py share: size parsing, CPU time, and the
JSON row they print per size (the same fields as `ringmaster bench allreduce --json`)."""
import json
import resource


def parse(size: str) -> int:
    """Bytes from `4096`, `4K`, `16M` or `1G` (binary units)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    size = size.strip().upper()
    return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)


def cpu_seconds() -> float:
    """User and system CPU time of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def print_row(size: int, world: int, slowest: list, cpu_total: float) -> None:
    """One size's row: p50 and p99 of the slowest rank per iteration, algbw = bytes / p50 and
    busbw = algbw * 2(n-1)/n in 10^9 B/s, and CPU time per operation summed over the ranks."""
    slowest = sorted(slowest)
    iterations = len(slowest)
    p50 = slowest[iterations // 2]
    p99 = slowest[min(iterations - 1, int(iterations * 0.99))]
    algbw = size / p50 / 1e9
    print(json.dumps({
        "bytes": size, "iterations": iterations, "p50_us": p50 * 1e6, "p99_us": p99 * 1e6,
        "algbw_gbps": algbw, "busbw_gbps": algbw * 2 * (world - 1) / world,
        "cpu_us_per_op": cpu_total / iterations * 1e6,
    }), flush=True)

#!/usr/bin/env bash
# Side by side: Ringmaster's all-reduce, Open MPI's (over TCP on loopback, through mpi4py) and, when
# PyTorch is installed, PyTorch's Gloo backend (over TCP on loopback), at the same sizes and rank
# counts, in the same run, with Ringmaster's ratio to each per size.
#
#   bench/compare-mpi.sh [RANKS...]          (default: 2 4)
#   SIZES=4K,64K,1M,16M,64M RINGMASTER=path/to/ringmaster TORCH_PYTHON=path/to/python bench/compare-mpi.sh 2 4
#
# Installs openmpi-bin, python3-mpi4py and python3-numpy from Debian if they are missing (they are
# for Debian's /usr/bin/python3: set MPI_PYTHON to use another interpreter that has mpi4py). Use a
# release build of ringmaster for figures: swift build -c release --scratch-path .build-release
# --product ringmaster (the default RINGMASTER below).
#
# The Gloo column (bench/gloo_allreduce.py) needs a Python with torch: TORCH_PYTHON if set (it is an
# error if that one cannot import torch with Gloo), else python3 if it can import torch. Without one
# the script prints the Ringmaster and Open MPI table alone, then the commands that install torch
# in a virtual environment:
#   python3 -m venv ~/torchvenv && ~/torchvenv/bin/pip install torch
#   TORCH_PYTHON=~/torchvenv/bin/python bench/compare-mpi.sh 2 4
# With Gloo, each rank count gets two tables: the figures of all three, then Ringmaster's busbw
# ratio to Open MPI, to Gloo and to the better of the two ("best"), and the better one's p50 over
# Ringmaster's.
set -euo pipefail
torch_python="${TORCH_PYTHON:-}"
case "$torch_python" in
    /* | "") ;;
    */*) torch_python="$PWD/$torch_python" ;; # a path from the caller's directory, kept unresolved for a venv
esac
cd "$(dirname "$0")/.."
sizes="${SIZES:-4K,64K,1M,16M,64M}"
ringmaster="${RINGMASTER:-.build-release/release/ringmaster}"
ranks=("$@")
[ ${#ranks[@]} -gt 0 ] || ranks=(2 4)

source bench/mpi-packages.sh
[ -x "$ringmaster" ] || { echo "no ringmaster at $ringmaster: build it first (see the top of this script)" >&2; exit 1; }

has_gloo='import torch.distributed as d, sys; sys.exit(0 if d.is_available() and d.is_gloo_available() else 1)'
if [ -n "$torch_python" ]; then
    "$torch_python" -c "$has_gloo" 2>/dev/null ||
        { echo "TORCH_PYTHON=$torch_python cannot import torch with its Gloo backend" >&2; exit 1; }
elif python3 -c "$has_gloo" 2>/dev/null; then
    torch_python=python3
fi

for n in "${ranks[@]}"; do
    ours=$("$ringmaster" bench allreduce --ranks "$n" --sizes "$sizes" --json)
    theirs=$(OMPI_MCA_plm_rsh_agent= mpirun --allow-run-as-root --oversubscribe -np "$n" \
        --mca btl tcp,self --mca btl_tcp_if_include lo --mca pml ob1 \
        "${MPI_PYTHON:-/usr/bin/python3}" bench/mpi_allreduce.py "$sizes")
    gloo=""
    if [ -n "$torch_python" ]; then
        gloo=$("$torch_python" bench/gloo_allreduce.py "$n" "$sizes") ||
            { echo "the Gloo run with $n ranks failed (above): no gloo column for it" >&2; gloo=""; }
    fi
    python3 - "$n" "$ours" "$theirs" "$gloo" <<'PY'
import json, sys

def by_size(text):
    return {row["bytes"]: row for row in (json.loads(l) for l in text.splitlines() if l.startswith("{"))}

n, ours, mpi, gloo = int(sys.argv[1]), json.loads(sys.argv[2]), by_size(sys.argv[3]), by_size(sys.argv[4])
print(f"\n{n} ranks, float32 sum, loopback TCP ceiling {ours['ceiling_gbps']:.2f} GB/s")
if not gloo:
    print(f"{'size':>10} | {'ringmaster p50 us':>17} {'busbw':>7} {'cpu us/op':>10} | {'open mpi p50 us':>15} {'busbw':>7} {'cpu us/op':>10} | {'busbw ratio':>11} {'p50 ratio':>9}")
    for row in ours["rows"]:
        other = mpi.get(row["bytes"])
        if other is None:
            continue
        print(f"{row['bytes']:>10} | {row['p50_us']:>17.1f} {row['busbw_gbps']:>7.3f} {row['cpu_us_per_op']:>10.1f} | "
              f"{other['p50_us']:>15.1f} {other['busbw_gbps']:>7.3f} {other['cpu_us_per_op']:>10.1f} | "
              f"{row['busbw_gbps'] / other['busbw_gbps']:>10.2f}x {other['p50_us'] / row['p50_us']:>8.2f}x")
    sys.exit(0)

# With Gloo: the figures of all three, then the ratios (two tables, to stay within 120 columns).
rows = [(row, mpi[size], gloo[size]) for row in ours["rows"] if (size := row["bytes"]) in mpi and size in gloo]
cell = lambda r: f"{r['p50_us']:>10.1f} {r['busbw_gbps']:>7.3f} {r['cpu_us_per_op']:>10.1f}"
print("p50 in us, busbw in 10^9 B/s, cpu in us per operation summed over the ranks")
print(f"{'':>10} | {'ringmaster':^29} | {'open mpi':^29} | {'gloo':^29}".rstrip())
print(f"{'size':>10}" + f" | {'p50 us':>10} {'busbw':>7} {'cpu us/op':>10}" * 3)
for row, by_mpi, by_gloo in rows:
    print(f"{row['bytes']:>10} | {cell(row)} | {cell(by_mpi)} | {cell(by_gloo)}")
print("ringmaster busbw / peer busbw, and best peer p50 / ringmaster p50 (above 1: ringmaster ahead)")
print(f"{'size':>10} | {'vs open mpi':>11} {'vs gloo':>8} {'vs best':>8} {'best':>9} | {'p50 vs best':>11}")
for row, by_mpi, by_gloo in rows:
    name, best = max([("open mpi", by_mpi), ("gloo", by_gloo)], key=lambda peer: peer[1]["busbw_gbps"])
    ratio = lambda peer: row["busbw_gbps"] / peer["busbw_gbps"]
    print(f"{row['bytes']:>10} | {ratio(by_mpi):>10.2f}x {ratio(by_gloo):>7.2f}x {ratio(best):>7.2f}x {name:>9} | "
          f"{best['p50_us'] / row['p50_us']:>10.2f}x")
PY
done
if [ -z "$torch_python" ]; then
    echo "(no torch found, so no gloo column; to add one, install torch in a virtual environment and name it:"
    echo "    python3 -m venv ~/torchvenv && ~/torchvenv/bin/pip install torch"
    echo "    TORCH_PYTHON=~/torchvenv/bin/python bench/compare-mpi.sh ${ranks[*]})"
fi

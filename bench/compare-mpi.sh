#!/usr/bin/env bash
# Side by side: Ringmaster's all-reduce and Open MPI's (over TCP on loopback, through mpi4py), at
# the same sizes and rank counts, in the same run, with the ratio per size.
#
#   bench/compare-mpi.sh [RANKS...]          (default: 2 4)
#   SIZES=4K,64K,1M,16M,64M RINGMASTER=path/to/ringmaster bench/compare-mpi.sh 2 4
#
# Installs openmpi-bin, python3-mpi4py and python3-numpy from Debian if they are missing (they are
# for Debian's /usr/bin/python3: set MPI_PYTHON to use another interpreter that has mpi4py). Use a
# release build of ringmaster for figures: swift build -c release --scratch-path .build-release
# --product ringmaster (the default RINGMASTER below).
set -euo pipefail
cd "$(dirname "$0")/.."
sizes="${SIZES:-4K,64K,1M,16M,64M}"
ringmaster="${RINGMASTER:-.build-release/release/ringmaster}"
ranks=("$@")
[ ${#ranks[@]} -gt 0 ] || ranks=(2 4)

missing=()
for package in openmpi-bin python3-mpi4py python3-numpy; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
[ -x "$ringmaster" ] || { echo "no ringmaster at $ringmaster: build it first (see the top of this script)" >&2; exit 1; }

for n in "${ranks[@]}"; do
    ours=$("$ringmaster" bench allreduce --ranks "$n" --sizes "$sizes" --json)
    theirs=$(OMPI_MCA_plm_rsh_agent= mpirun --allow-run-as-root --oversubscribe -np "$n" \
        --mca btl tcp,self --mca btl_tcp_if_include lo --mca pml ob1 \
        "${MPI_PYTHON:-/usr/bin/python3}" bench/mpi_allreduce.py "$sizes")
    python3 - "$n" "$ours" "$theirs" <<'PY'
import json, sys
n, ours, theirs = int(sys.argv[1]), json.loads(sys.argv[2]), [json.loads(l) for l in sys.argv[3].splitlines() if l.startswith("{")]
mpi = {row["bytes"]: row for row in theirs}
print(f"\n{n} ranks, float32 sum, loopback TCP ceiling {ours['ceiling_gbps']:.2f} GB/s")
print(f"{'size':>10} | {'ringmaster p50 us':>17} {'busbw':>7} {'cpu us/op':>10} | {'open mpi p50 us':>15} {'busbw':>7} {'cpu us/op':>10} | {'busbw ratio':>11} {'p50 ratio':>9}")
for row in ours["rows"]:
    other = mpi.get(row["bytes"])
    if other is None:
        continue
    print(f"{row['bytes']:>10} | {row['p50_us']:>17.1f} {row['busbw_gbps']:>7.3f} {row['cpu_us_per_op']:>10.1f} | "
          f"{other['p50_us']:>15.1f} {other['busbw_gbps']:>7.3f} {other['cpu_us_per_op']:>10.1f} | "
          f"{row['busbw_gbps'] / other['busbw_gbps']:>10.2f}x {other['p50_us'] / row['p50_us']:>8.2f}x")
PY
done
python3 -c "import torch" 2>/dev/null && echo "(torch is installed; a gloo column is not written yet)" || echo "(torch is not installed: no gloo column)"

#!/usr/bin/env bash
# The node-local sum of a torch job's gradients beside Open MPI's shared-memory transport, on one
# machine, at the same sizes and process counts, in the same run.
#
#   bench/node-sum.sh [WORKERS...]          (default: 2 4)
#   SIZES=64K,1M,16M,64M ROUNDS=3 RINGMASTER=path/to/ringmaster PYTHON=.venv/bin/python bench/node-sum.sh 2 4
#
# Ringmaster: `ringmaster bench node-sum`, the agent's own TorchWorkload with N worker processes
# (bench/node_sum_worker.py, the worker protocol with nothing to compute). Per iteration: the step
# request, each worker's bucket messages (1 Mi floats per bucket), the agent's sum of every worker's
# gradients in shared memory, the sum written back into every worker's gradients, and the apply
# round trip.
# Open MPI: MPI_Allreduce (float32 sum) among N processes with `--mca btl vader,self` (its shared
# memory transport), through mpi4py (bench/mpi_allreduce.py, as in bench/compare-mpi.sh).
# Both: 5 warm-up iterations, then at least 20 and at least 1 s per size; p50 and p99 of the
# reduction as the slowest rank timed it: Open MPI's ranks time their MPI_Allreduce call, and
# Ringmaster's workers the span from their gradients final to the node's sum in their gradients.
# Ringmaster's whole iteration as its agent timed it (which adds the step request and the `applied`
# answer, off the reduction's path in a real step) is beside them. CPU per operation over every
# process. Ringmaster's N workers
# plus its agent are N + 1 processes; Open MPI's are N. ROUNDS (default 3) alternates the two, and
# the table gives each one's median p50 over the rounds.
#
# Installs openmpi-bin, python3-mpi4py and python3-numpy from Debian if they are missing. Use a
# release build of ringmaster: swift build -c release --scratch-path .build-release --product ringmaster
set -euo pipefail
cd "$(dirname "$0")/.."
sizes="${SIZES:-64K,1M,16M,64M}"
rounds="${ROUNDS:-3}"
ringmaster="${RINGMASTER:-.build-release/release/ringmaster}"
python="${PYTHON:-.venv/bin/python}"
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(2 4)

source bench/mpi-packages.sh
[ -x "$ringmaster" ] || { echo "no ringmaster at $ringmaster: build it first (see the top of this script)" >&2; exit 1; }
"$python" -c 'import ringmaster' 2>/dev/null ||
    { echo "$python cannot import ringmaster: run scripts/setup-python.sh (or set PYTHON)" >&2; exit 1; }

echo "node-local sum, float32, $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), $rounds round(s)"
for n in "${counts[@]}"; do
    ours=()
    theirs=()
    for ((round = 0; round < rounds; round++)); do
        ours+=("$("$ringmaster" bench node-sum --workers "$n" --sizes "$sizes" --python "$python" --json)")
        theirs+=("$(OMPI_MCA_plm_rsh_agent= mpirun --allow-run-as-root --oversubscribe -np "$n" \
            --mca btl vader,self --mca pml ob1 /usr/bin/python3 bench/mpi_allreduce.py "$sizes")")
    done
    python3 - "$n" "${#ours[@]}" "${ours[@]}" "${theirs[@]}" <<'PY'
import json, statistics, sys

n, rounds = int(sys.argv[1]), int(sys.argv[2])
rows = lambda text: {r["bytes"]: r for r in (json.loads(l) for l in text.splitlines() if l.startswith("{"))}
ours = [rows(t) for t in sys.argv[3:3 + rounds]]
mpi = [rows(t) for t in sys.argv[3 + rounds:3 + 2 * rounds]]
median = lambda runs, size, key: statistics.median(run[size][key] for run in runs)
print(f"\n{n} workers (Ringmaster: {n} workers + the agent; Open MPI: {n} ranks over vader)")
print(f"{'size':>10} | {'ringmaster p50 us':>17} {'p99 us':>9} {'iteration p50':>13} {'cpu us/op':>10} | "
      f"{'open mpi p50 us':>15} {'p99 us':>9} {'cpu us/op':>10} | {'mpi p50 / ours':>14}")
for size in sorted(ours[0]):
    if not all(size in run for run in mpi):
        continue
    a = [median(ours, size, k) for k in ("p50_us", "p99_us", "iteration_p50_us", "cpu_us_per_op")]
    b = [median(mpi, size, k) for k in ("p50_us", "p99_us", "cpu_us_per_op")]
    spread = " ".join(f"{run[size]['p50_us'] / mine[size]['p50_us']:.2f}" for run, mine in zip(mpi, ours))
    print(f"{size:>10} | {a[0]:>17.1f} {a[1]:>9.1f} {a[2]:>13.1f} {a[3]:>10.1f} | "
          f"{b[0]:>15.1f} {b[1]:>9.1f} {b[2]:>10.1f} | {b[0] / a[0]:>13.2f}x  (rounds: {spread})")
PY
done

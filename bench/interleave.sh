#!/usr/bin/env bash
# Compares two ringmaster binaries in one interleaved run, so that both see the same machine:
# ROUNDS times, `demo --json` with each, then `bench allreduce --json` with each (old first, then
# new, alternating). Prints the demo's samples per second and the all-reduce's p50 per size, each
# as median and range over the rounds, for both binaries, and whether the demo's JSON keys match.
#
#   bench/interleave.sh OLD_BINARY NEW_BINARY [ROUNDS]
#
# Environment: DEMO_ARGS (default "--agents 4 --steps 1500"), ALLREDUCE_ARGS (default
# "--ranks 4 --sizes 64K,1M,16M").
set -euo pipefail
old=${1:?usage: bench/interleave.sh OLD_BINARY NEW_BINARY [ROUNDS]}
new=${2:?usage: bench/interleave.sh OLD_BINARY NEW_BINARY [ROUNDS]}
rounds=${3:-5}
demo_args=${DEMO_ARGS:---agents 4 --steps 1500}
allreduce_args=${ALLREDUCE_ARGS:---ranks 4 --sizes 64K,1M,16M}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for round in $(seq 1 "$rounds"); do
    for which in old new; do
        binary=$old
        [ "$which" = new ] && binary=$new
        # shellcheck disable=SC2086
        "$binary" demo $demo_args --json | tail -1 > "$out/demo-$which-$round.json"
        # shellcheck disable=SC2086
        "$binary" bench allreduce $allreduce_args --json > "$out/allreduce-$which-$round.json"
    done
    echo "round $round of $rounds done" >&2
done
python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys, glob, os
out, rounds = sys.argv[1], int(sys.argv[2])
def demo(which):
    return [json.load(open(f"{out}/demo-{which}-{r}.json")) for r in range(1, rounds + 1)]
def allreduce(which):
    return [json.load(open(f"{out}/allreduce-{which}-{r}.json")) for r in range(1, rounds + 1)]
def summary(values, unit, digits=0):
    return f"median {statistics.median(values):,.{digits}f} {unit} (range {min(values):,.{digits}f} to {max(values):,.{digits}f})"
old, new = demo("old"), demo("new")
print("demo --json keys equal:", sorted(old[0]) == sorted(new[0]))
print("demo samples/s, old:", summary([d["samples_per_second"] for d in old], "samples/s"))
print("demo samples/s, new:", summary([d["samples_per_second"] for d in new], "samples/s"))
for which in ("old", "new"):
    sizes = {}
    for run in allreduce(which):
        for row in run["rows"]:
            sizes.setdefault(row["bytes"], []).append((row["p50_us"], row["busbw_gbps"]))
    for size, values in sorted(sizes.items()):
        print(f"allreduce {which} {size:>9} B: p50 {summary([v[0] for v in values], 'us', 1)}; busbw {summary([v[1] for v in values], 'GB/s', 3)}")
PY

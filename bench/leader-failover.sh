#!/usr/bin/env bash
# kill -9 of the leading coordinator of a set sharing etcd, while agents train: how long until a
# standby leads, until every agent is connected to it, and until the first step after the kill.
#
#   bench/leader-failover.sh [RUNS]          (default 10)
#   RINGMASTER=path/to/ringmaster AGENTS=3 COORDINATORS=3 LEASE=2 STEPS=1500 KILL_AT=300 bench/leader-failover.sh 10
#   TLS=1 bench/leader-failover.sh 10        (etcd over TLS with client certificates: etcds://)
#
# Starts a 3-member etcd cluster on loopback (scripts/etcd-cluster.sh) for the whole series; each
# run is `ringmaster demo --coordinators N --etcd ... --kill-leader-at-step S --json` (the reference
# perceptron on the digits), under a key prefix of its own. Prints each run's figures and their
# medians, and checks every run's accounting (0 repeated, 0 skipped) and model (its parameter hash
# against an uninterrupted run of the same job in the same series).
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-10}"
ringmaster="${RINGMASTER:-$(swift build --show-bin-path)/ringmaster}"
agents="${AGENTS:-3}"
coordinators="${COORDINATORS:-3}"
lease="${LEASE:-2}"
steps="${STEPS:-1500}"
kill_at="${KILL_AT:-300}"
[ -x "$ringmaster" ] || { echo "no ringmaster at $ringmaster: swift build first (or set RINGMASTER)" >&2; exit 1; }

etcd_dir="$(mktemp -d /tmp/ringmaster-failover-XXXXXX)"
# Each run's processes' logs are in $etcd_dir/runN, kept (and named) when a run fails.
cleanup() {
    local status=$?
    scripts/etcd-cluster.sh stop "$etcd_dir" >/dev/null 2>&1 || true
    if [ "$status" = 0 ]; then rm -rf "$etcd_dir"; else echo "logs of the runs: $etcd_dir/run*" >&2; fi
}
trap cleanup EXIT
if [ "${TLS:-0}" = 1 ]; then
    endpoints="$(scripts/etcd-cluster.sh start "$etcd_dir" --base-port "${BASE_PORT:-24690}" --tls)"
    store=(--etcd "etcds://$endpoints" --etcd-ca "$etcd_dir/tls/ca.crt" --etcd-cert "$etcd_dir/tls/client.crt"
        --etcd-key "$etcd_dir/tls/client.key")
    transport="TLS with client certificates"
else
    endpoints="$(scripts/etcd-cluster.sh start "$etcd_dir" --base-port "${BASE_PORT:-24690}")"
    store=(--etcd "etcd://$endpoints")
    transport="plain HTTP"
fi

echo "leader failover: $coordinators coordinators on a 3-member etcd ($transport), $agents agents, lease ${lease} s," \
    "kill -9 of the leader at step $kill_at of $steps; $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
reference="$("$ringmaster" demo --agents "$agents" --steps "$steps" --json | python3 -c \
    'import json, sys; print(json.load(sys.stdin)["param_hash"])')"
results=()
for ((run = 0; run < runs; run++)); do
    results+=("$("$ringmaster" demo --agents "$agents" --steps "$steps" --coordinators "$coordinators" \
        "${store[@]}" --directory "$etcd_dir/run$run" --kill-leader-at-step "$kill_at" --leader-lease "$lease" --json)")
done
python3 - "$reference" "${results[@]}" <<'PY'
import json, statistics, sys

reference, runs = sys.argv[1], [json.loads(text) for text in sys.argv[2:]]
keys = ("elected_seconds", "agents_connected_seconds", "first_step_seconds")
print(f"{'run':>4} {'killed':>14} {'new leader':>14} {'elected s':>10} {'agents s':>9} {'first step s':>13}"
      f" {'repeated':>9} {'skipped':>8} {'same model':>11}")
for index, run in enumerate(runs):
    failover = run["leader_failover"]
    print(f"{index:>4} {failover['killed']:>14} {failover['new_leader']:>14}"
          + "".join(f" {failover[key]:>{width}.3f}" for key, width in zip(keys, (10, 9, 13)))
          + f" {run['samples_repeated']:>9} {run['samples_skipped']:>8} {str(run['param_hash'] == reference):>11}")
medians = [statistics.median(run["leader_failover"][key] for run in runs) for key in keys]
print(f"median: elected {medians[0]:.3f} s, every agent connected {medians[1]:.3f} s, first step {medians[2]:.3f} s")
bad = [i for i, run in enumerate(runs) if run["samples_repeated"] or run["samples_skipped"] or run["param_hash"] != reference]
print("every run: 0 repeated, 0 skipped, the uninterrupted run's model" if not bad else f"runs that differ: {bad}")
sys.exit(1 if bad else 0)
PY

#!/usr/bin/env bash
# The all-reduce over RDMA against TCP, and ib_write_bw for the verbs ceiling, in one Soft-RoCE
# guest run (scripts/rdma-guest.sh). Emulation figures: the guest runs under qemu's TCG on this
# machine's cores, so they prove the path works and compare the transports, not real speed.
#
#   bench/rdma-guest-bench.sh [SIZES]        (default 64K,1M,4M)
#
# Needs perftest (ib_write_bw) on the host: apt-get install perftest. Uses the debug or release
# binary given in RINGMASTER (default .build/debug/ringmaster).
set -euo pipefail
cd "$(dirname "$0")/.."
sizes="${1:-64K,1M,4M}"
ringmaster="${RINGMASTER:-.build/debug/ringmaster}"
command -v ib_write_bw >/dev/null || { echo "ib_write_bw not found: apt-get install perftest" >&2; exit 1; }
[ -x "$ringmaster" ] || { echo "no ringmaster at $ringmaster: swift build first" >&2; exit 1; }
echo "Soft-RoCE guest (qemu TCG, 2 vCPUs), $(date -u +%Y-%m-%dT%H:%MZ), host $(nproc) cores"
scripts/rdma-guest.sh --timeout 580 -- bash -c "
set -e
echo '--- ib_write_bw, 1 MiB messages, rxe0 (RoCE v2 GID index 1), server and client in this guest'
ib_write_bw -d rxe0 -x 1 -s 1048576 -n 200 -F >/tmp/server.txt 2>&1 &
sleep 2
ib_write_bw -d rxe0 -x 1 -s 1048576 -n 200 -F 127.0.0.1 2>&1 | grep -E '^ *[0-9]+ +[0-9]+' || true
wait
echo '--- ringmaster bench allreduce --transport tcp --ranks 2'
'$ringmaster' bench allreduce --transport tcp --ranks 2 --sizes $sizes
echo '--- ringmaster bench allreduce --transport rdma --ranks 2'
'$ringmaster' bench allreduce --transport rdma --ranks 2 --sizes $sizes
"

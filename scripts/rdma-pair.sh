#!/usr/bin/env bash
# Runs a command in two Soft-RoCE guests joined by a virtual Ethernet link, as two hosts of one
# RDMA network: guest r (r = 0, 1) is 192.0.2.(r+1)/24 with rxe0 over that link, and COMMAND runs
# in both with RINGMASTER_RDMA_PAIR=r. The two guests' outputs follow one another, each line
# prefixed with its guest; the status is 0 when COMMAND succeeded in both.
#
#   scripts/rdma-pair.sh [--timeout SECONDS] -- COMMAND [ARGUMENTS...]
#
# Each guest is scripts/rdma-guest.sh --link (qemu's dgram netdev: the link's frames travel as UDP
# datagrams between two ports of the host's loopback, and nowhere else).
set -euo pipefail
cd "$(dirname "$0")/.."
timeout_seconds=600
while [ $# -gt 0 ]; do
    case "$1" in
    --timeout) timeout_seconds="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "rdma-pair: unknown option $1 (usage: scripts/rdma-pair.sh [--timeout S] -- COMMAND...)" >&2; exit 2 ;;
    esac
done
[ $# -gt 0 ] || { echo "rdma-pair: no command given (usage: scripts/rdma-pair.sh [--timeout S] -- COMMAND...)" >&2; exit 2; }

# Both guests use the same kernel and initramfs: build them once, before either starts.
scripts/rdma-guest.sh --prepare
# Two UDP ports on loopback, one per end of the link, that nothing else is bound to.
read -r first second < <(python3 -c '
import socket
sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
for s in sockets: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in sockets])')
outputs=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$outputs"' EXIT
scripts/rdma-guest.sh --timeout "$timeout_seconds" --link "1:$first:$second" --env RINGMASTER_RDMA_PAIR=0 -- "$@" \
    >"$outputs/0" 2>&1 &
zero=$!
scripts/rdma-guest.sh --timeout "$timeout_seconds" --link "2:$second:$first" --env RINGMASTER_RDMA_PAIR=1 -- "$@" \
    >"$outputs/1" 2>&1 &
one=$!
set +e
wait "$zero"; status_zero=$?
wait "$one"; status_one=$?
set -e
sed 's/^/[guest 0] /' "$outputs/0"
sed 's/^/[guest 1] /' "$outputs/1"
echo "rdma-pair: guest 0 exited $status_zero, guest 1 exited $status_one"
[ "$status_zero" -eq 0 ] && [ "$status_one" -eq 0 ]

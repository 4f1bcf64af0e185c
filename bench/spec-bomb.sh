#!/usr/bin/env bash
# The "billion laughs" job spec (9 levels of 9 aliases, 489 bytes) against a real coordinator: two
# submits at once and a status request beside them, each timed as a whole CLI process, and the
# coordinator's resident memory and threads before and after (from /proc).
#
#   RINGMASTER=.build-release/release/ringmaster bench/spec-bomb.sh
set -euo pipefail
R="${RINGMASTER:-.build-release/release/ringmaster}"
D=$(mktemp -d)
trap 'kill "$coordinator" 2>/dev/null || true; rm -rf "$D"' EXIT
"$R" coordinator --state-dir "$D/state" --listen 127.0.0.1:0 > "$D/out" 2> "$D/err" &
coordinator=$!
for _ in $(seq 100); do grep -q '^listening ' "$D/out" && break; sleep 0.1; done
address=$(awk '/^listening /{print $2}' "$D/out")
"$R" cert issue --role operator --name bomb --state-dir "$D/state" --out "$D/operator" > /dev/null
{
    echo 'name: bomb'
    echo 'l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'
    for level in 1 2 3 4 5 6 7 8 9; do
        below="*l$((level - 1))"
        echo "l$level: &l$level [$below,$below,$below,$below,$below,$below,$below,$below,$below]"
    done
} > "$D/bomb.yaml"
echo "spec: $(wc -c < "$D/bomb.yaml") bytes"
echo "before: $(grep -E 'VmRSS' /proc/$coordinator/status | tr -s ' \t' ' ')"
pids=()
for _ in 1 2; do
    ( /usr/bin/time -f "submit answered in %e s (exit status %x)" "$R" job submit "$D/bomb.yaml" --coordinator "$address" --identity "$D/operator" 2>&1 | grep -v "^Command exited" | cut -c1-160 ) &
    pids+=($!)
done
( /usr/bin/time -f "status answered in %e s" "$R" job status --coordinator "$address" --identity "$D/operator" 2>&1 | tail -1 ) &
pids+=($!)
wait "${pids[@]}"
echo "after: $(grep -E 'VmRSS|VmHWM|Threads' /proc/$coordinator/status | tr -s ' \t' ' ' | paste -sd ' ')"

#!/usr/bin/env bash
# The digits model (examples/torch/digits: 64 -> 128 -> 10, seed 7, Adam at lr 1e-2, global batch
# 64) on three nodes of one process each (OMP_NUM_THREADS=1), under Ringmaster, torchrun + DDP over
# Gloo, and torchft, in one run, interleaved round by round so that every system sees the same
# machine. For each system: throughput (samples per second, no failure) and recovery (kill -9 of
# one node, then the time from the kill to the first step completed at world size 2).
#
#   bench/torch/compare.sh [--trials N] [--rounds N] [--steps N] [--recovery-steps N] [--warmup N]
#                          [--systems LIST] [--seed N] [--keep DIR]
#
#   --trials N          recovery trials per system (default 10)
#   --rounds N          throughput runs per system (default 5)
#   --steps N           steps of a throughput run (default 600)
#   --recovery-steps N  steps of a recovery run (default 300); the kill comes at a step drawn at
#                       random between a tenth and a half of it, the same step for every system
#                       in a round
#   --warmup N          steps left out of the throughput figure (default 50)
#   --systems LIST      which to run, of: ringmaster, ddp (torchrun + DDP, c10d rendezvous with
#                       its default keep-alive, 5 s x 3), ddp-fast (the same with keep-alive 1 s x 2),
#                       torchft (manager.allreduce per gradient), torchft-bucket (one allreduce of
#                       the gradients flattened); default "ringmaster ddp torchft torchft-bucket"
#                       (ddp-fast is not in it: in one of two trials its survivors' rendezvous
#                       never completed and timed out after join_timeout)
#   --keep DIR          keep every run's logs under DIR (default: a temporary directory, removed)
#
# Environment: RINGMASTER (default .build-release/release/ringmaster: a release build, `swift build
# -c release --scratch-path .build-release --product ringmaster`), VENV (default .venv: python
# with torch, ringmaster and torchft; torchrun and torchft_lighthouse in its bin/).
#
# How each figure is taken, the same way for every system:
# - samples/s: 64 x (steps from --warmup to the last) / (the time between those steps' completions),
#   from each step's wall-clock time as the script prints it: bench/torch/ringmaster_digits.py
#   (examples/torch/digits/train.py plus that line), ddp_digits.py, torchft_digits.py. Start-up
#   (from launching the system to its first completed step) is shown apart. Ringmaster's own
#   figure (`demo --json` samples_per_second, from the job's submission to its end) too.
# - recovery: Ringmaster's `demo --kill-agent-at-step K` kills agent-2 with SIGKILL at step K
#   and reports the time from the kill to the first step committed in the next generation. For
#   torchrun this script waits for step K at world size 3, kills node 2's agent and every
#   descendant (the worker runs in a session of its own), and takes the first step that a
#   survivor prints at world size 2; for torchft, the same with replica group 2's process. Each
#   recovery run then goes on to its last step, and must end well.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

trials=10 rounds=5 steps=600 recovery_steps=300 warmup=50 seed=1 keep=""
systems="ringmaster ddp torchft torchft-bucket"
while [ $# -gt 0 ]; do
    case "$1" in
        --trials) trials=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --steps) steps=$2; shift 2 ;;
        --recovery-steps) recovery_steps=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        --systems) systems=$2; shift 2 ;;
        --seed) seed=$2; shift 2 ;;
        --keep) keep=$2; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
for name in $systems; do
    case "$name" in
        ringmaster | ddp | ddp-fast | torchft | torchft-bucket) ;;
        *) echo "unknown system $name" >&2; exit 2 ;;
    esac
done
[ "$steps" -gt "$warmup" ] || { echo "--steps must be more than --warmup" >&2; exit 2; }
[ "$recovery_steps" -ge 20 ] || { echo "--recovery-steps must be at least 20" >&2; exit 2; }

ringmaster=${RINGMASTER:-$root/.build-release/release/ringmaster}
venv=${VENV:-$root/.venv}
python=$venv/bin/python
torchrun=$venv/bin/torchrun
lighthouse=$venv/bin/torchft_lighthouse
for tool in "$ringmaster" "$python" "$torchrun" "$lighthouse"; do
    [ -x "$tool" ] || { echo "missing $tool (see the top of this script)" >&2; exit 1; }
done
"$python" -c 'import torch, torchft, ringmaster.torch' ||
    { echo "$python cannot import torch, torchft and ringmaster.torch" >&2; exit 1; }

if [ -n "$keep" ]; then
    mkdir -p "$keep"
    work=$(cd "$keep" && pwd)
else
    work=$(mktemp -d)
fi
results=$work/results.jsonl
: > "$results"
export OMP_NUM_THREADS=1 GLOO_SOCKET_IFNAME=lo RUST_LOG=warn PYTHONUNBUFFERED=1

# MARK: - Processes: every one this script starts is recorded, and ended on every path.

started=()

declare -A rc_file=()

# Every process under $1, $1 first, from one snapshot of the process table (walking parent ids:
# torchrun's workers are in sessions of their own, so a process group does not hold them).
descendants() {
    ps -e -o pid=,ppid= | awk -v root="$1" '
        { parent[$1] = $2; pids[NR] = $1 }
        END {
            keep[root] = 1; print root
            do {
                more = 0
                for (i in pids) { p = pids[i]; if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; print p; more = 1 } }
            } while (more)
        }'
}

# kill -9 of $1 and everything under it, all in one signal call, listed before any of them dies.
# Sets killed_at to the time of the signal.
kill_tree() {
    local pids
    pids=$(descendants "$1" | tr '\n' ' ')
    killed_at=$EPOCHREALTIME
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null || true
}

cleanup() {
    local pid
    for pid in "${started[@]}"; do
        kill -0 "$pid" 2>/dev/null && kill_tree "$pid"
    done
    started=()
    return 0
}
finish() {
    local status=$?
    cleanup
    [ -z "$keep" ] && rm -rf "$work"
    exit "$status"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start LOG ERR COMMAND...: runs COMMAND in a session of its own, in the background, and records
# it (last_pid). A small bash around it writes its exit status to ERR.rc; the job is disowned, so
# that bash prints nothing when this script kills it.
start() {
    local log=$1 err=$2
    shift 2
    rm -f "$err.rc"
    setsid bash -c '"$@"; echo $? > "$0"' "$err.rc" "$@" > "$log" 2> "$err" < /dev/null &
    last_pid=$!
    disown "$last_pid"
    started+=("$last_pid")
    rc_file[$last_pid]=$err.rc
}

now() { echo "$EPOCHREALTIME"; }

# wait_for SECONDS WHAT COMMAND...: polls COMMAND every 0.05 s until it succeeds; fails after SECONDS.
wait_for() {
    local seconds=$1 what=$2 deadline
    shift 2
    deadline=$(($(date +%s) + seconds))
    until "$@"; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            echo "gave up after ${seconds} s waiting for $what" >&2
            return 1
        fi
        sleep 0.05
    done
}

alive() {
    local pid
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && return 0; done
    return 1
}
all_exited() { ! alive "$@"; }

# exit_status PID: the exit status of a process from start that has exited ("killed" if it wrote none).
exit_status() {
    local file=${rc_file[$1]}
    if [ -s "$file" ]; then cat "$file"; else echo killed; fi
}

listening() { ss -Hltn "sport = :$1" | grep -q .; }

free_port() { "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# The step watcher: a Python process that follows logs (reading only what is new, every 10 ms, so
# that it costs the training next to nothing) and exits 0 once one of them holds a step line with
# step >= MIN at world size WORLD, completed after the time AFTER.
cat > "$work/watch.py" <<'PY'
import json, sys, time
least, world, after = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
files, rest = {}, {}
while True:
    for path in sys.argv[4:]:
        if path not in files:
            try:
                files[path], rest[path] = open(path), ""
            except FileNotFoundError:
                continue
        text = rest[path] + files[path].read()
        lines = text.split("\n")
        rest[path] = lines.pop()
        for line in lines:
            if line.startswith('{"event": "step"'):
                row = json.loads(line)
                if row["step"] >= least and row["world"] == world and row["t"] > after:
                    sys.exit(0)
    time.sleep(0.01)
PY

# await_step SECONDS MIN WORLD AFTER LOG...: waits (at most SECONDS) for such a step line.
await_step() {
    local seconds=$1 least=$2 world=$3 after=$4 watcher
    shift 4
    start /dev/null "$work/watch.err" "$python" "$work/watch.py" "$least" "$world" "$after" "$@"
    watcher=$last_pid
    if ! wait_for "$seconds" "a step >= $least at world size $world after $after in $*" all_exited "$watcher"; then
        kill_tree "$watcher"
        return 1
    fi
    [ "$(exit_status "$watcher")" = 0 ] || { cat "$work/watch.err" >&2; return 1; }
}

# MARK: - One run of each system. Each appends one JSON line to $results.

# run_ringmaster KIND DIR [KILL_STEP]
run_ringmaster() {
    local kind=$1 dir=$2 kill_step=${3:-} n=$steps launched pid status
    local args=(demo --model torch-digits --python "$python" --agents 3 --json --directory "$dir/demo"
        --script "$root/bench/torch/ringmaster_digits.py" --timeout 300)
    [ "$kind" = recovery ] && { n=$recovery_steps; args+=(--kill-agent-at-step "$kill_step"); }
    args+=(--steps "$n")
    mkdir -p "$dir"
    launched=$(now)
    start "$dir/demo.json" "$dir/demo.err" "$ringmaster" "${args[@]}"
    pid=$last_pid
    wait_for 330 "ringmaster demo to end" all_exited "$pid"
    status=$(exit_status "$pid")
    [ "$status" = 0 ] || { echo "ringmaster demo failed ($status):" >&2; tail -5 "$dir/demo.err" >&2; return 1; }
    "$python" - "$kind" "$dir" "$launched" "$warmup" "${kill_step:-0}" >> "$results" <<'PY'
import glob, json, sys
kind, folder, launched, warmup, kill_step = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
demo = json.load(open(f"{folder}/demo.json"))
row = {"system": "ringmaster", "kind": kind, "demo_samples_per_second": demo["samples_per_second"],
       "samples_repeated": demo["samples_repeated"], "samples_skipped": demo["samples_skipped"],
       "steps": demo["steps"], "test_accuracy": demo["test_accuracy"]}
# Step s + 1 begins on a worker only after step s was applied there: its "begun" time is step s's end.
begun = {}
for line in open(f"{folder}/demo/agent-0/workers/demo.log"):
    if line.startswith('{"begun"'):
        entry = json.loads(line)
        begun.setdefault(entry["begun"], entry["t"])
row["startup_s"] = begun[1] - launched
if kind == "throughput":
    last = max(begun)
    row["samples_per_second"] = 64 * (last - warmup) / (begun[last] - begun[warmup])
else:
    kills = [r for r in demo["recoveries"] if r["cause"] == "disconnected"]
    if not kills:
        sys.exit(f"no recovery from the kill in {folder}/demo.json: {demo['recoveries']}")
    row.update(kill_step=kill_step, recovery_s=kills[0]["seconds"], recoveries=demo["recoveries"])
print(json.dumps(row))
PY
}

# run_ddp KIND DIR [KILL_STEP] [fast]: three torchrun agents ("nodes"), one worker each.
run_ddp() {
    local kind=$1 dir=$2 kill_step=${3:-} variant=${4:-} n=$steps port launched node conf pids=() killed=0 status
    local name=ddp
    [ "$variant" = fast ] && name=ddp-fast
    [ "$kind" = recovery ] && n=$recovery_steps
    mkdir -p "$dir/checkpoints"
    port=$(free_port)
    launched=$(now)
    for node in 0 1 2; do
        conf="join_timeout=60,last_call_timeout=1"
        [ "$variant" = fast ] && conf+=",keep_alive_interval=1,keep_alive_max_attempt=2"
        if [ "$node" = 0 ]; then conf+=",is_host=true"; else conf+=",is_host=false"; fi
        start "$dir/node$node.log" "$dir/node$node.err" "$torchrun" --nnodes=2:3 --nproc-per-node=1 \
            --rdzv-backend=c10d --rdzv-endpoint="127.0.0.1:$port" --rdzv-id="digits-$port" \
            --rdzv-conf="$conf" --monitor-interval=0.1 --max-restarts=10 \
            "$root/bench/torch/ddp_digits.py" --steps "$n" --checkpoint-dir "$dir/checkpoints"
        pids+=("$last_pid")
        # Node 0 hosts the rendezvous store; the others join it once it listens.
        [ "$node" = 0 ] && wait_for 60 "node 0's rendezvous store on port $port" listening "$port"
    done
    if [ "$kind" = recovery ]; then
        await_step 180 "$kill_step" 3 0 "$dir"/node{0,1,2}.log
        kill_tree "${pids[2]}"
        killed=$killed_at
        await_step 180 0 2 "$killed" "$dir"/node{0,1}.log
    fi
    wait_for 300 "torchrun to end" all_exited "${pids[0]}" "${pids[1]}" "${pids[2]}"
    for node in 0 1 2; do
        [ "$kind" = recovery ] && [ "$node" = 2 ] && continue
        status=$(exit_status "${pids[$node]}")
        [ "$status" = 0 ] || { echo "torchrun node $node failed ($status):" >&2; tail -5 "$dir/node$node.err" >&2; return 1; }
    done
    "$python" - "$name" "$kind" "$dir" "$launched" "$warmup" "${kill_step:-0}" "$killed" "$n" >> "$results" <<'PY'
import json, sys
name, kind, folder = sys.argv[1], sys.argv[2], sys.argv[3]
launched, warmup, kill_step, killed, n = float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7]), int(sys.argv[8])
rows = []
for node in range(3):
    for line in open(f"{folder}/node{node}.log"):
        if line.startswith("{"):
            rows.append(dict(json.loads(line), node=node))
steps = [r for r in rows if r["event"] == "step"]
row = {"system": name, "kind": kind, "startup_s": min(r["t"] for r in steps if r["step"] == 1) - launched,
       "final_step": max(r["step"] for r in steps)}
if row["final_step"] != n:
    sys.exit(f"{folder}: the last step is {row['final_step']}, not {n}")
if kind == "throughput":
    zero = {r["step"]: r for r in steps if r["rank"] == 0}
    row["samples_per_second"] = 64 * (n - warmup) / (zero[n]["t"] - zero[warmup]["t"])
    row["steps_below_world_3"] = sum(1 for r in zero.values() if r["world"] != 3 and r["step"] > warmup)
else:
    after = sorted((r for r in steps if r["t"] > killed and r["world"] == 2), key=lambda r: r["t"])
    before = max(r["step"] for r in steps if r["t"] <= killed)
    restarted = [r for r in rows if r["event"] == "start" and r["t"] > killed]
    resumed = min(r["resumed_from"] for r in restarted)
    row.update(kill_step=kill_step, recovery_s=after[0]["t"] - killed, steps_done_before_kill=before,
               resumed_from=resumed, steps_redone=before - resumed,
               workers_restarted=len({r["pid"] for r in restarted}))
print(json.dumps(row))
PY
}

# run_torchft KIND DIR [KILL_STEP] [bucket]: a Lighthouse and three replica groups of one process.
run_torchft() {
    local kind=$1 dir=$2 kill_step=${3:-} variant=${4:-} n=$steps port launched replica pids=() killed=0 status
    local name=torchft extra=()
    [ "$variant" = bucket ] && { name=torchft-bucket; extra=(--bucket); }
    [ "$kind" = recovery ] && n=$recovery_steps
    mkdir -p "$dir"
    port=$(free_port)
    launched=$(now)
    start "$dir/lighthouse.log" "$dir/lighthouse.err" "$lighthouse" --bind "127.0.0.1:$port" --min_replicas 2 \
        --join_timeout_ms 1000 --heartbeat_timeout_ms 500 --quorum_tick_ms 100
    local house=$last_pid
    wait_for 60 "the Lighthouse on port $port" listening "$port"
    for replica in 0 1 2; do
        start "$dir/replica$replica.log" "$dir/replica$replica.err" "$python" "$root/bench/torch/torchft_digits.py" \
            --replica "$replica" --lighthouse "http://127.0.0.1:$port" --steps "$n" --ready-dir "$dir" --replicas 3 \
            "${extra[@]}"
        pids+=("$last_pid")
    done
    if [ "$kind" = recovery ]; then
        await_step 180 "$kill_step" 3 0 "$dir"/replica{0,1,2}.log
        kill_tree "${pids[2]}"
        killed=$killed_at
        await_step 180 0 2 "$killed" "$dir"/replica{0,1}.log
    fi
    wait_for 300 "the replica groups to end" all_exited "${pids[0]}" "${pids[1]}" "${pids[2]}"
    kill_tree "$house"
    for replica in 0 1 2; do
        [ "$kind" = recovery ] && [ "$replica" = 2 ] && continue
        status=$(exit_status "${pids[$replica]}")
        [ "$status" = 0 ] || { echo "torchft replica $replica failed ($status):" >&2; tail -5 "$dir/replica$replica.err" >&2; return 1; }
    done
    "$python" - "$name" "$kind" "$dir" "$launched" "$warmup" "${kill_step:-0}" "$killed" "$n" >> "$results" <<'PY'
import json, sys
name, kind, folder = sys.argv[1], sys.argv[2], sys.argv[3]
launched, warmup, kill_step, killed, n = float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7]), int(sys.argv[8])
rows = []
for replica in range(3):
    for line in open(f"{folder}/replica{replica}.log"):
        if line.startswith("{"):
            rows.append(dict(json.loads(line), replica=replica))
steps = [r for r in rows if r["event"] == "step"]
row = {"system": name, "kind": kind, "startup_s": min(r["t"] for r in steps) - launched,
       "final_step": max(r["step"] for r in steps),
       "retries": sum(1 for r in rows if r["event"] == "retry")}
if row["final_step"] != n:
    sys.exit(f"{folder}: the last step is {row['final_step']}, not {n}")
if kind == "throughput":
    zero = {r["step"]: r for r in steps if r["replica"] == 0}
    row["samples_per_second"] = 64 * (n - warmup) / (zero[n]["t"] - zero[warmup]["t"])
    row["steps_below_world_3"] = sum(1 for r in zero.values() if r["world"] != 3 and r["step"] > warmup)
else:
    after = sorted((r for r in steps if r["t"] > killed and r["world"] == 2), key=lambda r: r["t"])
    before = max(r["step"] for r in steps if r["t"] <= killed)
    row.update(kill_step=kill_step, recovery_s=after[0]["t"] - killed, steps_done_before_kill=before,
               first_step_after=after[0]["step"])
print(json.dumps(row))
PY
}

run_system() {
    local name=$1 kind=$2 dir=$3 kill_step=${4:-}
    case "$name" in
        ringmaster) run_ringmaster "$kind" "$dir" "$kill_step" ;;
        ddp) run_ddp "$kind" "$dir" "$kill_step" ;;
        ddp-fast) run_ddp "$kind" "$dir" "$kill_step" fast ;;
        torchft) run_torchft "$kind" "$dir" "$kill_step" ;;
        torchft-bucket) run_torchft "$kind" "$dir" "$kill_step" bucket ;;
    esac
    cleanup # whatever of this run is left, before the next one starts
}

# MARK: - The rounds: every system in each round, the order turned by one each round.

RANDOM=$seed
read -r -a order <<< "$systems"
total=$((rounds > trials ? rounds : trials))
echo "work directory: $work; $rounds throughput run(s) of $steps steps and $trials recovery trial(s) of $recovery_steps steps per system: $systems" >&2
for round in $(seq 1 "$total"); do
    low=$((recovery_steps / 10)) high=$((recovery_steps / 2))
    kill_step=$((low + RANDOM % (high - low + 1)))
    shift_by=$(((round - 1) % ${#order[@]}))
    this_round=("${order[@]:shift_by}" "${order[@]:0:shift_by}")
    for name in "${this_round[@]}"; do
        for kind in throughput recovery; do
            [ "$kind" = throughput ] && [ "$round" -gt "$rounds" ] && continue
            [ "$kind" = recovery ] && [ "$round" -gt "$trials" ] && continue
            # Each run in a subshell of its own that ends every process it started, however it
            # ends; a run that fails is counted as failed and the others go on.
            lines=$(wc -l < "$results")
            set +e
            (
                set -e
                started=()
                trap cleanup EXIT
                trap 'exit 130' INT
                trap 'exit 143' TERM
                run_system "$name" "$kind" "$work/round$round/$name-$kind" "$kill_step"
            )
            status=$?
            set -e
            if [ "$status" = 130 ] || [ "$status" = 143 ]; then exit "$status"; fi
            if [ "$status" != 0 ] || [ "$(wc -l < "$results")" = "$lines" ]; then
                echo "{\"system\": \"$name\", \"kind\": \"$kind\", \"failed\": true, \"round\": $round}" >> "$results"
                echo "round $round: $name $kind FAILED (status $status; logs in $work/round$round/$name-$kind)" >&2
            else
                echo "round $round: $name $kind: $(tail -1 "$results")" >&2
            fi
        done
    done
done

# MARK: - The table.

"$python" - "$results" "$systems" <<'PY'
import json, statistics, sys
everything = [json.loads(line) for line in open(sys.argv[1])]
rows = [r for r in everything if not r.get("failed")]
names = sys.argv[2].split()

def summary(values, digits, unit=""):
    if not values:
        return "-"
    return (f"{statistics.median(values):,.{digits}f}{unit} ({min(values):,.{digits}f} to {max(values):,.{digits}f}, "
            f"n={len(values)})")

print()
print("| system | samples/s, median (range) | start-up to the first step, s | recovery after kill -9, s, median (range) | notes |")
print("| --- | --- | --- | --- | --- |")
for name in names:
    fast = [r for r in rows if r["system"] == name and r["kind"] == "throughput"]
    slow = [r for r in rows if r["system"] == name and r["kind"] == "recovery"]
    notes = []
    failed = [r["kind"] for r in everything if r["system"] == name and r.get("failed")]
    if failed:
        notes.append(f"FAILED runs: {failed.count('throughput')} throughput, {failed.count('recovery')} recovery")
    if name == "ringmaster":
        notes.append("demo's own samples/s (submit to end): " + summary([r["demo_samples_per_second"] for r in fast], 0))
        notes.append(f"samples repeated {sum(r['samples_repeated'] for r in fast + slow)}, "
                     f"skipped {sum(r['samples_skipped'] for r in fast + slow)} over all runs")
    elif name.startswith("ddp"):
        if slow:
            notes.append("steps redone after the restart: " + summary([r["steps_redone"] for r in slow], 0))
            notes.append(f"workers restarted per trial: {sorted({r['workers_restarted'] for r in slow})}")
        below = sum(r.get("steps_below_world_3", 0) for r in fast)
        if below:
            notes.append(f"{below} measured step(s) below world size 3")
    else:
        if slow:
            notes.append(f"failed commits (steps retried) per trial: {sorted({r['retries'] for r in slow})}")
        below = sum(r.get("steps_below_world_3", 0) for r in fast)
        if below:
            notes.append(f"{below} measured step(s) below world size 3")
    print(f"| {name} | {summary([r['samples_per_second'] for r in fast], 0)} | "
          f"{summary([r['startup_s'] for r in fast + slow], 2)} | "
          f"{summary([r['recovery_s'] for r in slow], 3)} | {'; '.join(notes)} |")
print()
for name in names:
    slow = [r for r in rows if r["system"] == name and r["kind"] == "recovery"]
    if slow:
        print(f"{name} recovery per trial (kill step: seconds): " +
              ", ".join(f"{r['kill_step']}: {r['recovery_s']:.3f}" for r in slow))
PY

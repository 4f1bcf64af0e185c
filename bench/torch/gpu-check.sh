#!/usr/bin/env bash
# The GPU checks of Ringmaster's PyTorch workers, for a machine with an NVIDIA GPU, in under 5
# minutes. Prints what it checks and one table of step times; exits non-zero when a check fails.
#
#   bench/torch/gpu-check.sh [--steps N] [--warmup N]
#   DEVICE=cpu bench/torch/gpu-check.sh     (the same checks on the CPU: tries the script itself)
#
# 1. `python -m ringmaster.torch.check`: the interpreter, torch, the CUDA devices (DEVICE=cuda
#    needs at least one).
# 2. The package's tests (python/tests), the CUDA test among them: a model on the GPU stages its
#    buckets through pinned shared memory and trains as plain PyTorch on CUDA does.
# 3. The digits example on DEVICE, each step's end timed the same way for every system (JSON step
#    lines; on CUDA after torch.cuda.synchronize()): plain single-process PyTorch
#    (bench/torch/plain_digits.py), Ringmaster with 1 agent and with 2 (bench/torch/
#    ringmaster_digits.py through `ringmaster demo`; on a one-GPU machine both workers share it), and
#    torchrun + DDP over Gloo with CUDA tensors at 2 ranks (bench/torch/ddp_digits.py). Ringmaster's
#    runs must also end with every sample once.
# 4. The MiniLM example on DEVICE, when examples/torch/minilm is there: plain.py against
#    `ringmaster demo --model torch-minilm`, wall-clock time per step of each.
#
# Environment: PYTHON (default python3; it needs torch, and numpy and pytest for step 2; the
# ringmaster package is taken from ./python when it is not installed), RINGMASTER (default
# .build-release/release/ringmaster). On a machine without Swift, carry a ringmaster built here with
# the Swift runtime linked in: swift build -c release --static-swift-stdlib --scratch-path
# .build-static --product ringmaster, then strip it, and carry it with the
# Ringmaster_Workload.resources folder beside it.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
steps=600 warmup=100
while [ $# -gt 0 ]; do
    case "$1" in
        --steps) steps=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ "$steps" -gt "$warmup" ] || { echo "--steps must be more than --warmup" >&2; exit 2; }
device=${DEVICE:-cuda}
python=${PYTHON:-python3}
ringmaster=${RINGMASTER:-$root/.build-release/release/ringmaster}
torchrun=$(dirname "$(command -v "$python")")/torchrun
[ -x "$torchrun" ] || torchrun=$(command -v torchrun || true)
"$python" -c 'import ringmaster' 2>/dev/null || export PYTHONPATH=$root/python${PYTHONPATH:+:$PYTHONPATH}
for tool in "$ringmaster" "$torchrun"; do
    [ -n "$tool" ] && [ -x "$tool" ] || { echo "missing ${tool:-torchrun} (see the top of this script)" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMP_NUM_THREADS=1 GLOO_SOCKET_IFNAME=lo PYTHONUNBUFFERED=1 BENCH_DEVICE=$device
started=$(date +%s)

echo "== 1. the interpreter"
"$python" -m ringmaster.torch.check
if [ "$device" = cuda ]; then
    "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' ||
        { echo "DEVICE=cuda, but torch sees no CUDA device" >&2; exit 1; }
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi

echo "== 2. the package's tests"
"$python" -m pytest -q -rs python/tests

echo "== 3. digits on $device, $steps steps (the first $warmup left out)"
"$python" bench/torch/plain_digits.py --steps "$steps" > "$work/plain.log"
for agents in 1 2; do
    "$ringmaster" demo --json --model torch-digits --python "$python" --agents "$agents" --steps "$steps" \
        --script "$root/bench/torch/ringmaster_digits.py" --device "$device" --directory "$work/rm$agents" \
        --timeout 240 > "$work/rm$agents.json"
done
"$torchrun" --standalone --nproc-per-node=2 bench/torch/ddp_digits.py --steps "$steps" \
    --checkpoint-dir "$work" --checkpoint-every 1000000 > "$work/ddp.log"
"$python" - "$work" "$steps" "$warmup" <<'PY'
import json, sys
work, steps, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def per_step(times):
    """Seconds per step from step `warmup`'s end to the last one's."""
    last = max(times)
    return (times[last] - times[warmup]) / (last - warmup)

def step_lines(path, rank=0):
    rows = [json.loads(l) for l in open(path) if l.startswith('{"event": "step"')]
    return {r["step"]: r["t"] for r in rows if r["rank"] == rank}

rows = [("plain PyTorch, 1 process", per_step(step_lines(f"{work}/plain.log")), "")]
for agents in (1, 2):
    demo = json.load(open(f"{work}/rm{agents}.json"))
    if demo["samples_repeated"] or demo["samples_skipped"] or demo["steps"] != steps:
        sys.exit(f"ringmaster with {agents} agent(s): {demo['steps']} steps, repeated {demo['samples_repeated']}, skipped {demo['samples_skipped']}")
    begun = {}
    for line in open(f"{work}/rm{agents}/agent-0/workers/demo.log"):
        if line.startswith('{"begun"'):
            entry = json.loads(line)
            begun.setdefault(entry["begun"], entry["t"])
    # Step s + 1 begins only once step s was applied: its "begun" is step s's end.
    ends = {step - 1: t for step, t in begun.items() if step > 0}
    rows.append((f"ringmaster, {agents} agent(s)", per_step(ends), f"test accuracy {demo['test_accuracy']:.3f}"))
rows.append(("torchrun + DDP over Gloo, 2 ranks", per_step(step_lines(f"{work}/ddp.log")), ""))
plain = rows[0][1]
print(f"{'system':<36} {'ms per step':>11} {'samples/s':>10} {'vs plain':>9}")
for name, seconds, note in rows:
    print(f"{name:<36} {seconds * 1e3:>11.3f} {64 / seconds:>10.0f} {seconds / plain:>8.2f}x  {note}".rstrip())
PY

if [ -d examples/torch/minilm ]; then
    echo "== 4. MiniLM on $device"
    t0=$EPOCHREALTIME
    "$python" examples/torch/minilm/plain.py --device "$device" --steps 60 | tail -2
    t1=$EPOCHREALTIME
    "$ringmaster" demo --json --model torch-minilm --python "$python" --agents 1 --steps 60 --device "$device" \
        --directory "$work/minilm" --timeout 240 > "$work/minilm.json"
    t2=$EPOCHREALTIME
    "$python" - "$work/minilm.json" "$t0" "$t1" "$t2" <<'PY'
import json, sys
demo = json.load(open(sys.argv[1]))
t0, t1, t2 = map(float, sys.argv[2:5])
print(f"plain.py, 60 steps: {t1 - t0:.1f} s in all (start-up included)")
print(f"ringmaster demo, 1 agent, 60 steps: {t2 - t1:.1f} s in all, {demo['samples_per_second']:.0f} samples/s "
      f"from submission to end, test accuracy {demo['test_accuracy']:.3f}, repeated {demo['samples_repeated']}, "
      f"skipped {demo['samples_skipped']}")
PY
fi
echo "== done in $(($(date +%s) - started)) s"

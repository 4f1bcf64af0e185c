#!/usr/bin/env python3
"""One worker of `ringmaster bench node-sum`: speaks the worker protocol (docs/worker-protocol.md)
with a "model" of SLOTS float32 gradients and nothing to compute, so that the agent's timing holds
only the node-local reduction: the step request, a `bucket` message per bucket (1 Mi slots each, as
`ringmaster.torch.init` cuts them by default), the agent's sum of every worker's buckets in shared
memory into the node's result region, and the `apply` round trip, in which this worker reads the
result, scaled, into its own gradients, as the ringmaster package does. Where the agent offers
doorbells (docs/worker-protocol.md, "Doorbells") it uses them as the package does: each event rung
(its message sent only when the agent sleeps), and a spin on the `apply` counter before it sleeps
on the socket.

The worker also times its own side, as an MPI rank times its MPI_Allreduce call: from the moment
its gradients are final (the step request, as there is no backward) to the moment its gradients
hold the node's sum (the end of `apply`'s copy). At `stop` it writes those times, one per line in
seconds, to RINGMASTER_BENCH_TIMES when the agent gave that path.

Started by the agent (it needs RINGMASTER_WORKER_SOCKET and RINGMASTER_WORKER_TOKEN); the slot count
comes in RINGMASTER_BENCH_SLOTS.
"""

import mmap
import os
import time

import numpy as np

from ringmaster._agent import PROTOCOL_VERSION, AgentConnection, Doorbells, WorkerEnvironment

BUCKET_SLOTS = 1 << 20


def main() -> None:
    environment = WorkerEnvironment.read()
    slots = int(os.environ["RINGMASTER_BENCH_SLOTS"])
    buckets = [[start, min(slots, start + BUCKET_SLOTS)] for start in range(0, slots, BUCKET_SLOTS)]
    connection = AgentConnection.connect(environment)
    connection.send(
        {
            "type": "hello",
            "token": environment.token,
            "protocol": PROTOCOL_VERSION,
            "parameters": slots,
            "state": slots,
            "parameter_slots": slots,
            "buckets": buckets,
            "tensors": [],
            "samples": None,
            "torch": None,
            "device": "cpu",
        }
    )
    result = gradients = None
    ready = 0.0
    times = []
    pending = False

    def apply(scale: float) -> None:
        # As the package does: the job's sum, scaled, from the result region into this worker's
        # gradients (the optimizer's step, which reads them, is the script's work, not timed).
        np.multiply(result, scale, out=gradients)
        times.append(time.perf_counter() - ready)
        connection.send_event({"type": "applied"})

    while True:
        bells = connection.bells
        if pending and bells is not None:
            # As the package does once it has sent its gradients: spin on `apply` for a moment.
            rung = bells.wait_apply()
            if rung is not None:
                pending = False
                bells.take_apply(rung[0])
                apply(rung[1])
                continue
        message = connection.receive()
        if bells is not None:
            bells.awake()
        kind = message["type"]
        if kind in ("memory", "result"):
            descriptor = os.open(message["path"], os.O_RDWR)
            try:
                mapped = mmap.mmap(descriptor, message["bytes"], mmap.MAP_SHARED)
            finally:
                os.close(descriptor)
            # The gradient region first (the state after it is not used here), or the node's result.
            view = np.frombuffer(mapped, dtype="<f4", count=slots)
            if kind == "memory":
                gradients = view
            else:
                result = view
                if isinstance(message.get("bells"), int) and Doorbells.offered_here():
                    spin = message.get("spin_us") or 0
                    connection.bells = Doorbells(mapped, message["bells"], message["worker"], spin / 1e6)
            connection.send({"type": "ready"})
        elif kind == "step":
            ready = time.perf_counter()
            # The gradients are already in shared memory (the agent fills them): say each bucket is
            # final, in order, as backward would.
            for index in range(len(buckets)):
                connection.send_event({"type": "bucket", "index": index})
            connection.send_event({"type": "gradients", "loss_sum": 0.0}, loss_sum=0.0)
            pending = True
        elif kind == "apply":
            if connection.bells is not None and not connection.bells.take_apply(message.get("seq")):
                continue  # the message of the apply taken from the doorbell
            pending = False
            apply(message["scale"])
        elif kind == "stop":
            path = os.environ.get("RINGMASTER_BENCH_TIMES")
            if path:
                with open(path, "w", encoding="utf-8") as file:
                    file.writelines(f"{seconds!r}\n" for seconds in times)
            connection.close()
            return
        else:
            connection.send_error(f"node_sum_worker: unexpected request {kind!r}")
            raise SystemExit(1)


if __name__ == "__main__":
    main()

"""The worker's side of docs/worker-protocol.md, against a fake agent written from the document.

The fake agent is the test's own thread: it listens on a Unix socket, reads the hello, creates the
shared memory in /dev/shm, and sends requests one at a time, reading the replies. The worker (a
training loop as a user writes it) runs in a thread of the same process, so the test can compare
its model with a plain PyTorch one.
"""

from __future__ import annotations

import importlib.util
import json
import mmap
import os
import secrets
import select
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ringmaster._agent
import ringmaster.torch
from ringmaster import RingmasterError
from ringmaster._agent import NOT_STARTED_BY_AGENT, SOCKET_VARIABLE, TOKEN_VARIABLE

TOKEN = "5e" * 32
DEADLINE_SECONDS = 20.0
REPOSITORY = Path(__file__).resolve().parents[2]


# MARK: - The fake agent


class FakeAgent:
    """The agent's side of the protocol, as the document describes it."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "agent.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(4)
        self.listener.settimeout(DEADLINE_SECONDS)
        self.connection: Optional[socket.socket] = None
        self.memory: Optional[mmap.mmap] = None
        self.hello: Dict[str, Any] = {}
        self.gradients = np.zeros(0, dtype="<f4")
        self.state = np.zeros(0, dtype=np.uint8)

    def accept(self) -> Dict[str, Any]:
        """Accepts the worker's connection and returns its hello."""
        if self.connection is not None:
            self.connection.close()
        self.connection, _ = self.listener.accept()
        self.connection.settimeout(DEADLINE_SECONDS)
        self.hello = self.expect("hello")
        return self.hello

    def share_memory(self) -> None:
        """Creates the shared memory the hello asks for, has the worker map it, then unlinks it."""
        parameters, state = self.hello["parameters"], self.hello["state"]
        self.memory = self._share("memory", 4 * (parameters + state))
        self.gradients = np.frombuffer(self.memory, dtype="<f4", count=parameters)
        self.state = np.frombuffer(self.memory, dtype=np.uint8, count=4 * state, offset=4 * parameters)

    def share_result(self, *, bells_spin_us: Optional[int] = None) -> None:
        """Creates the node's result region (the gradients' size, plus the loss) and has the worker map
        it; with ``bells_spin_us``, doorbells after it, for this worker as worker 1 of the node."""
        floats = 4 * (self.hello["parameters"] + 1)
        if bells_spin_us is None:
            self.result_memory = self._share("result", floats)
        else:
            offset = (floats + 63) // 64 * 64
            fields = {"bells": offset, "worker": 1, "spin_us": bells_spin_us}
            self.result_memory = self._share("result", offset + 64 * 3, **fields)
            lines = np.frombuffer(self.result_memory, dtype=np.uint8, offset=offset)
            self.apply_bell, self.scale_bell = lines[0:4].view("<u4"), lines[4:8].view("<f4")
            self.agent_sleeping = lines[8:12].view("<u4")
            self.event_bell, self.worker_sleeping = lines[128:132].view("<u4"), lines[132:136].view("<u4")
            self.loss_bell = lines[136:144].view("<f8")
        self.result = np.frombuffer(self.result_memory, dtype="<f4", count=self.hello["parameters"])

    def _share(self, kind: str, size: int, **fields: Any) -> mmap.mmap:
        """Creates ``size`` bytes of shared memory, sends their path in a ``kind`` request, waits for
        ``ready``, then unlinks the file (the mappings stay)."""
        path = f"/dev/shm/ringmaster-test-{secrets.token_hex(8)}"
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(descriptor, size)
            memory = mmap.mmap(descriptor, size)
        finally:
            os.close(descriptor)
        self.send({"type": kind, "path": path, "bytes": size, **fields})
        try:
            self.expect("ready")
        finally:
            os.unlink(path)
        return memory

    def send(self, message: Dict[str, Any]) -> None:
        body = json.dumps(message).encode()
        assert self.connection is not None
        self.connection.sendall(struct.pack("<I", len(body)) + body)

    def receive(self) -> Dict[str, Any]:
        (length,) = struct.unpack("<I", self._read(4))
        return json.loads(self._read(length))

    def expect(self, kind: str) -> Dict[str, Any]:
        message = self.receive()
        assert message["type"] == kind, message
        return message

    def request(self, kind: str, reply: str, **fields: Any) -> Dict[str, Any]:
        self.send({"type": kind, **fields})
        return self.expect(reply)

    def step(self, number: int, samples: List[int]) -> Tuple[List[int], List[np.ndarray], Optional[float]]:
        """Sends a step; returns the buckets in the order they came, each bucket's slots as they were
        when its message came, and the loss sum."""
        self.send({"type": "step", "step": number, "samples": samples})
        order: List[int] = []
        seen: List[np.ndarray] = []
        while True:
            message = self.receive()
            if message["type"] == "bucket":
                start, end = self.hello["buckets"][message["index"]]
                order.append(message["index"])
                seen.append(self.gradients[start:end].copy())
            else:
                assert message["type"] == "gradients", message
                return order, seen, message["loss_sum"]

    def train(self, number: int, samples: List[int]) -> None:
        """A step then its apply, as with one rank."""
        self.step(number, samples)
        self.request("apply", "applied", scale=1.0 / len(samples))

    def saved_state(self) -> bytes:
        self.request("save", "saved")
        return self.state.tobytes()

    def _read(self, count: int) -> bytes:
        assert self.connection is not None
        data = b""
        while len(data) < count:
            chunk = self.connection.recv(count - len(data))
            assert chunk, "the worker closed the connection"
            data += chunk
        return data

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None
        self.listener.close()


class Worker:
    """A worker loop in a thread; ``join`` returns what it raised (SystemExit included)."""

    def __init__(self, target: Callable[[], None]) -> None:
        self.raised: Optional[BaseException] = None
        self._target = target
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._target()
        except BaseException as error:  # SystemExit too: the worker's clean exit
            self.raised = error

    def join(self) -> Optional[BaseException]:
        self._thread.join(DEADLINE_SECONDS)
        assert not self._thread.is_alive(), "the worker did not end"
        return self.raised


@pytest.fixture
def agent(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAgent]:
    directory = tempfile.mkdtemp(prefix="rm-", dir="/tmp")  # short: a socket path has at most 107 bytes
    os.chmod(directory, 0o700)
    fake = FakeAgent(directory)
    monkeypatch.setenv(SOCKET_VARIABLE, fake.path)
    monkeypatch.setenv(TOKEN_VARIABLE, TOKEN)
    yield fake
    fake.close()
    shutil.rmtree(directory, ignore_errors=True)


# MARK: - Models, data and the user's loop


def make_model(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))


def make_data() -> Tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return torch.randn(64, 8, generator=generator), torch.randint(0, 4, (64,), generator=generator)


OPTIMIZERS: Dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "adam": lambda parameters: torch.optim.Adam(parameters, lr=1e-2),
    "adam-weight-decay": lambda parameters: torch.optim.Adam(parameters, lr=1e-2, weight_decay=1e-2),
    "sgd-momentum": lambda parameters: torch.optim.SGD(parameters, lr=0.1, momentum=0.9),
}

# For the small model with bucket_slots=70, last registered first: 2.bias (4) and 2.weight (64)
# share bucket 0; 0.bias (16) is bucket 1; 0.weight (128) is larger than a bucket, so its own.
BUCKET_SLOTS = 70
BUCKETS = [[0, 68], [68, 84], [84, 212]]


def user_loop(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ran: List[int],
    *,
    reduction: str = "mean",
    body: Optional[Callable[[ringmaster.torch.Step], None]] = None,
    **options: Any,
) -> Callable[[], None]:
    """The loop a user writes, as the worker thread's target."""
    inputs, targets = make_data()

    def loop() -> None:
        job = ringmaster.torch.init(model, optimizer, loss_reduction=reduction, **options)
        for step in job.steps():
            with step:
                ran.append(step.step)
                if body is not None:
                    body(step)
                    continue
                loss = F.cross_entropy(model(inputs[step.samples]), targets[step.samples], reduction=reduction)
                loss.backward()
                step.finish(loss=loss.item())

    return loop


def start(agent: FakeAgent, loop: Callable[[], None]) -> Tuple[Worker, Dict[str, Any]]:
    worker = Worker(loop)
    hello = agent.accept()
    agent.share_memory()
    return worker, hello


def stop(agent: FakeAgent, worker: Worker) -> None:
    agent.send({"type": "stop"})
    assert worker.join() is None


def flat_gradient(model: nn.Module) -> torch.Tensor:
    """The model's gradients in the gradient region's order: last registered parameter first."""
    return torch.cat([parameter.grad.reshape(-1) for parameter in reversed(list(model.parameters()))])


def plain_step(model: nn.Module, optimizer: torch.optim.Optimizer, samples: List[int]) -> None:
    inputs, targets = make_data()
    optimizer.zero_grad()
    F.cross_entropy(model(inputs[samples]), targets[samples]).backward()
    optimizer.step()


def batch(index: int, size: int = 8) -> List[int]:
    return [(index * 11 + 5 * k) % 64 for k in range(size)]


# MARK: - Hello


def test_hello_announcesParametersStateAndBuckets_ofASequentialWithAdam(agent: FakeAgent) -> None:
    model = make_model()
    worker = Worker(user_loop(model, torch.optim.Adam(model.parameters()), [], bucket_slots=BUCKET_SLOTS, samples=64))
    hello = agent.accept()

    assert hello["token"] == TOKEN
    assert hello["protocol"] == 3
    assert hello["parameters"] == 212
    assert hello["parameter_slots"] == 212
    # Parameters (212 slots), then per parameter exp_avg, exp_avg_sq and step (a float32 each).
    assert hello["state"] == 212 + 4 * 1 + 2 * 212
    assert hello["buckets"] == BUCKETS
    assert hello["samples"] == 64
    assert hello["torch"] == torch.__version__
    assert hello["device"] == "cpu"
    # The tensor table: every tensor in the state's order, back to back, with shape and dtype.
    tensors = hello["tensors"]
    assert [t["name"] for t in tensors[:2]] == ["parameter 0.weight", "parameter 0.bias"]
    assert tensors[0]["shape"] == list(model[0].weight.shape) and tensors[0]["dtype"] == "float32"
    assert [t["offset"] for t in tensors] == [sum(t["bytes"] for t in tensors[:i]) for i in range(len(tensors))]
    assert sum(t["bytes"] for t in tensors) == 4 * hello["state"]
    assert sum(1 for t in tensors if "exp_avg_sq" in t["name"]) == 4
    agent.share_memory()
    stop(agent, worker)


def test_hello_countsFloatBuffers_andLeavesOutIntegerOnes(agent: FakeAgent) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    worker = Worker(user_loop(model, optimizer, []))
    hello = agent.accept()

    assert hello["parameters"] == 12 + 3 + 3 + 3
    # Parameters, running_mean and running_var (num_batches_tracked is int64), momentum buffers.
    assert hello["state"] == 21 + 6 + 21
    assert hello["buckets"] == [[0, 21]]
    assert hello["samples"] is None
    agent.share_memory()
    stop(agent, worker)


def test_frozenParameter_hasNoGradientSlots_butStaysInTheState(agent: FakeAgent) -> None:
    model, reference = make_model(), make_model()
    for frozen in (model[0].weight, reference[0].weight):
        frozen.requires_grad_(False)
    worker, hello = start(agent, user_loop(model, torch.optim.Adam(model.parameters()), [], bucket_slots=BUCKET_SLOTS))
    assert hello["parameters"] == 84 and hello["buckets"] == [[0, 68], [68, 84]]
    assert hello["parameter_slots"] == 212
    assert hello["state"] == 212 + 2 * 84 + 3  # Adam keeps no state for the frozen weight
    inputs, targets = make_data()
    F.cross_entropy(reference(inputs[batch(0)]), targets[batch(0)], reduction="sum").backward()
    expected = torch.cat([p.grad.reshape(-1) for p in reversed(list(reference.parameters())) if p.requires_grad])

    order, _, _ = agent.step(0, batch(0))

    assert order == [0, 1]
    np.testing.assert_array_equal(agent.gradients, expected.numpy())
    stop(agent, worker)


def test_hello_carriesTheToken_andAnAgentThatRefusesItEndsTheWorkerCleanly(
    agent: FakeAgent, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    impostor = "0f" * 32
    monkeypatch.setenv(TOKEN_VARIABLE, impostor)
    model = make_model()
    worker = Worker(user_loop(model, torch.optim.Adam(model.parameters()), []))
    hello = agent.accept()
    assert hello["token"] == impostor != TOKEN

    agent.close()  # the agent refuses a hello whose token is not its own
    raised = worker.join()
    assert isinstance(raised, SystemExit) and raised.code == 0
    assert "the agent closed its connection to this worker" in capsys.readouterr().err


def test_init_withoutTheAgentsEnvironment_raisesTheErrorThatSaysWhatToDo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SOCKET_VARIABLE, raising=False)
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    model = make_model()
    with pytest.raises(RingmasterError) as raised:
        ringmaster.torch.init(model, torch.optim.Adam(model.parameters()))
    assert str(raised.value) == NOT_STARTED_BY_AGENT
    assert "ringmaster job submit" in NOT_STARTED_BY_AGENT and "ringmaster demo" in NOT_STARTED_BY_AGENT


def test_init_refusesFloat64AndNonCPUParameters_namingTheParameter(agent: FakeAgent) -> None:
    model = make_model().double()
    with pytest.raises(RingmasterError, match=r"parameter 0\.weight is torch\.float64.*float32"):
        ringmaster.torch.init(model, torch.optim.Adam(model.parameters()))
    model = make_model().to("meta")
    with pytest.raises(RingmasterError, match=r"parameter 0\.weight is on meta; ringmaster trains on the CPU or on CUDA"):
        ringmaster.torch.init(model, torch.optim.Adam(model.parameters()))


# MARK: - Steps and gradients


# Staged: the gradients live in a buffer of their own (on CUDA, the GPU's) and each bucket is copied
# into shared memory by the package before its message; here on the CPU, without streams.
STAGED = [pytest.param(False, id="shared"), pytest.param(True, id="staged")]


@pytest.mark.parametrize("staged", STAGED)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_step_sendsBucketsInOrder_holdingTheGradientOfTheSumOfLosses(
    agent: FakeAgent, reduction: str, staged: bool
) -> None:
    model, reference = make_model(), make_model()
    optimizer = torch.optim.Adam(model.parameters())
    worker, _ = start(
        agent,
        user_loop(model, optimizer, [], reduction=reduction, bucket_slots=BUCKET_SLOTS, _stage_gradients=staged),
    )
    samples = batch(0)
    inputs, targets = make_data()
    loss = F.cross_entropy(reference(inputs[samples]), targets[samples], reduction="sum")
    loss.backward()
    expected = flat_gradient(reference).numpy()

    order, seen, loss_sum = agent.step(0, samples)

    assert order == [0, 1, 2]
    # Bit for bit: with 8 samples, scaling a mean's gradient by the count is exact.
    for (start_slot, end_slot), slots in zip(BUCKETS, seen):
        np.testing.assert_array_equal(slots, expected[start_slot:end_slot])
    np.testing.assert_array_equal(agent.gradients, expected)
    assert loss_sum == pytest.approx(loss.item(), rel=1e-6)
    stop(agent, worker)


@pytest.mark.parametrize("staged", STAGED)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_apply_withScaleOneOverN_matchesAPlainPyTorchStep_bitForBit(agent: FakeAgent, name: str, staged: bool) -> None:
    model, reference = make_model(), make_model()
    optimizer, plain = OPTIMIZERS[name](model.parameters()), OPTIMIZERS[name](reference.parameters())
    worker, _ = start(agent, user_loop(model, optimizer, [], bucket_slots=BUCKET_SLOTS, _stage_gradients=staged))

    for number in range(4):
        agent.train(number, batch(number))
        plain_step(reference, plain, batch(number))
        for mine, theirs in zip(model.parameters(), reference.parameters()):
            assert torch.equal(mine, theirs), f"step {number}: parameters differ from plain PyTorch"
    stop(agent, worker)


@pytest.mark.parametrize("staged", STAGED)
def test_apply_readsTheJobsSumFromTheResultRegion_onceTheAgentSharedOne(agent: FakeAgent, staged: bool) -> None:
    model, reference = make_model(), make_model()
    optimizer, plain = torch.optim.Adam(model.parameters(), lr=1e-2), torch.optim.Adam(reference.parameters(), lr=1e-2)
    worker, _ = start(agent, user_loop(model, optimizer, [], bucket_slots=BUCKET_SLOTS, _stage_gradients=staged))
    agent.share_result()
    for number in range(3):
        samples = batch(number)
        agent.step(number, samples)
        agent.result[:] = agent.gradients  # the node's sum, as the agent leaves it
        agent.gradients[:] = np.float32(1e6)  # and nothing the update may take from here
        agent.request("apply", "applied", scale=1.0 / len(samples))
        plain_step(reference, plain, samples)
        for mine, theirs in zip(model.parameters(), reference.parameters()):
            assert torch.equal(mine, theirs), f"step {number}: the update did not come from the result region"
    stop(agent, worker)


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Spins on shared memory until ``condition`` holds; fails, naming ``what``, at the deadline."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"waited {DEADLINE_SECONDS} s for {what}"
        os.sched_yield()


def assert_no_message(agent: FakeAgent, what: str) -> None:
    assert agent.connection is not None
    readable, _, _ = select.select([agent.connection], [], [], 0)
    assert not readable, f"{what}: the worker sent a message"


def start_with_doorbells(
    agent: FakeAgent, staged: bool, *, spin_us: int
) -> Tuple[Worker, nn.Module, nn.Module, torch.optim.Optimizer]:
    """A worker whose result region has doorbells (its spin for apply ``spin_us``), and a plain
    PyTorch copy of its model with its optimizer to compare it with."""
    if not ringmaster._agent.Doorbells.offered_here():
        pytest.skip("doorbells are offered on x86-64 only")
    model, reference = make_model(), make_model()
    optimizer, plain = torch.optim.Adam(model.parameters(), lr=1e-2), torch.optim.Adam(reference.parameters(), lr=1e-2)
    worker, _ = start(agent, user_loop(model, optimizer, [], bucket_slots=BUCKET_SLOTS, _stage_gradients=staged))
    agent.share_result(bells_spin_us=spin_us)
    return worker, model, reference, plain


@pytest.mark.parametrize("staged", STAGED)
def test_doorbells_withBothSidesSpinning_carryEveryEventAndApply_withoutAMessage(
    agent: FakeAgent, staged: bool
) -> None:
    worker, model, reference, plain = start_with_doorbells(agent, staged, spin_us=int(DEADLINE_SECONDS * 1e6))
    events = 0
    for number in range(3):
        samples = batch(number)
        agent.send({"type": "step", "step": number, "samples": samples})
        events += len(BUCKETS) + 1  # the buckets, then the gradients
        wait_for(lambda: int(agent.event_bell[0]) == events, f"step {number}'s buckets and gradients on the doorbell")
        assert float(agent.loss_bell[0]) > 0, "the loss sum is beside the counter"
        assert_no_message(agent, f"step {number}, with the agent spinning")
        agent.result[:] = agent.gradients
        agent.scale_bell[0] = 1.0 / len(samples)
        agent.apply_bell[0] = number + 1
        events += 1
        wait_for(lambda: int(agent.event_bell[0]) == events, f"step {number}'s `applied` on the doorbell")
        assert_no_message(agent, f"apply {number}, with the agent spinning")
        assert int(agent.worker_sleeping[0]) == 0, "the worker never slept"
        plain_step(reference, plain, samples)
        for mine, theirs in zip(model.parameters(), reference.parameters()):
            assert torch.equal(mine, theirs), f"step {number}: the update from the doorbell differs from plain PyTorch"
    # After steps with no message at all, the worker still answers the next request.
    assert len(agent.saved_state()) > 0
    stop(agent, worker)


@pytest.mark.parametrize("staged", STAGED)
def test_doorbells_withBothSidesAsleep_sendEachEventsMessageWithItsNumber_andApplyComesAsAMessage(
    agent: FakeAgent, staged: bool
) -> None:
    worker, model, reference, plain = start_with_doorbells(agent, staged, spin_us=0)  # the worker sleeps at once
    agent.agent_sleeping[0] = 1
    events = 0
    for number in range(3):
        samples = batch(number)
        agent.send({"type": "step", "step": number, "samples": samples})
        for kind in ["bucket"] * len(BUCKETS) + ["gradients"]:
            message = agent.expect(kind)
            events += 1
            assert message["event"] == events, f"step {number}: {message}"
            assert int(agent.event_bell[0]) >= events, f"step {number}: `{kind}` came before its doorbell"
        assert float(agent.loss_bell[0]) == message["loss_sum"]
        wait_for(lambda: int(agent.worker_sleeping[0]) == 1, f"the worker's flag, asleep after step {number}")
        agent.result[:] = agent.gradients
        agent.scale_bell[0] = 1.0 / len(samples)
        agent.apply_bell[0] = number + 1
        # As the agent does when the worker's flag is up: the message too.
        applied = agent.request("apply", "applied", scale=1.0 / len(samples), seq=number + 1)
        events += 1
        assert applied["event"] == events and int(agent.event_bell[0]) == events
        assert int(agent.worker_sleeping[0]) == 0, "the worker lowered its flag once the message woke it"
        plain_step(reference, plain, samples)
        for mine, theirs in zip(model.parameters(), reference.parameters()):
            assert torch.equal(mine, theirs), f"step {number}: the update from the message differs from plain PyTorch"
    stop(agent, worker)


def test_twoRanksApplyingTheSameSum_stayBitIdentical_andMatchTheFullBatchStep(
    agent: FakeAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tempfile.mkdtemp(prefix="rm-", dir="/tmp")
    second = FakeAgent(directory)
    try:
        models = [make_model(), make_model()]
        reference = make_model()
        plain = torch.optim.Adam(reference.parameters(), lr=1e-2)
        workers = []
        for fake, model in zip((agent, second), models):
            monkeypatch.setenv(SOCKET_VARIABLE, fake.path)
            workers.append(start(fake, user_loop(model, torch.optim.Adam(model.parameters(), lr=1e-2), []))[0])
        for number in range(3):
            samples = batch(number, size=16)
            for fake, share in zip((agent, second), (samples[:11], samples[11:])):  # uneven shares
                fake.step(number, share)
            total = agent.gradients + second.gradients
            for fake in (agent, second):
                fake.gradients[:] = total
                fake.request("apply", "applied", scale=1.0 / len(samples))
            plain_step(reference, plain, samples)
        assert agent.saved_state() == second.saved_state()
        for mine, theirs in zip(models[0].parameters(), reference.parameters()):
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
        for fake, worker in zip((agent, second), workers):
            stop(fake, worker)
    finally:
        second.close()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("staged", STAGED)
def test_zeroSampleStep_isAnsweredWithZeroGradients_withoutRunningTheBody(agent: FakeAgent, staged: bool) -> None:
    model = make_model()
    ran: List[int] = []
    worker, _ = start(
        agent,
        user_loop(
            model, torch.optim.Adam(model.parameters()), ran, bucket_slots=BUCKET_SLOTS, _stage_gradients=staged
        ),
    )
    agent.gradients[:] = 1.0  # what a previous step left

    order, _, loss_sum = agent.step(7, [])

    assert order == [0, 1, 2] and loss_sum == 0.0
    assert not agent.gradients.any()
    assert ran == []
    agent.request("apply", "applied", scale=1.0)
    agent.train(8, batch(8))
    assert ran == [8]
    stop(agent, worker)


@pytest.mark.parametrize("staged", STAGED)
def test_userWhoStillCallsZeroGrad_getsTheSameGradientsInSharedMemory(agent: FakeAgent, staged: bool) -> None:
    model, reference = make_model(), make_model()
    optimizer = torch.optim.Adam(model.parameters())
    inputs, targets = make_data()

    def body(step: ringmaster.torch.Step) -> None:
        optimizer.zero_grad()  # set_to_none: backward puts the gradients elsewhere, the package copies them in
        loss = F.cross_entropy(model(inputs[step.samples]), targets[step.samples])
        loss.backward()
        step.finish(loss=loss.item())

    worker, _ = start(
        agent, user_loop(model, optimizer, [], body=body, bucket_slots=BUCKET_SLOTS, _stage_gradients=staged)
    )
    F.cross_entropy(reference(inputs[batch(0)]), targets[batch(0)], reduction="sum").backward()

    order, _, _ = agent.step(0, batch(0))

    assert order == [0, 1, 2]
    np.testing.assert_array_equal(agent.gradients, flat_gradient(reference).numpy())
    stop(agent, worker)


# MARK: - State


def test_saveThenLoad_isBitExact_andTrainingAfterLoadContinuesAsWithout(agent: FakeAgent) -> None:
    model = make_model(seed=1)
    worker, _ = start(agent, user_loop(model, torch.optim.Adam(model.parameters(), lr=1e-2), []))
    for number in range(2):
        agent.train(number, batch(number))
    checkpoint = agent.saved_state()
    for number in range(2, 5):
        agent.train(number, batch(number))
    uninterrupted = agent.saved_state()

    agent.state[:] = np.frombuffer(checkpoint, dtype=np.uint8)
    agent.request("load", "loaded")
    assert agent.saved_state() == checkpoint
    for number in range(2, 5):
        agent.train(number, batch(number))
    assert agent.saved_state() == uninterrupted
    stop(agent, worker)

    # A fresh worker whose model was built from another seed becomes the same replica once loaded.
    other = make_model(seed=99)
    worker, _ = start(agent, user_loop(other, torch.optim.Adam(other.parameters(), lr=1e-2), []))
    agent.state[:] = np.frombuffer(checkpoint, dtype=np.uint8)
    agent.request("load", "loaded")
    for number in range(2, 5):
        agent.train(number, batch(number))
    assert agent.saved_state() == uninterrupted
    for mine, theirs in zip(other.parameters(), model.parameters()):
        assert torch.equal(mine, theirs)
    stop(agent, worker)


def test_stateStartsWithTheParameters_inModelOrder(agent: FakeAgent) -> None:
    model = make_model()
    worker, _ = start(agent, user_loop(model, torch.optim.SGD(model.parameters(), lr=0.1), []))
    state = np.frombuffer(agent.saved_state(), dtype="<f4")
    flat = torch.cat([parameter.detach().reshape(-1) for parameter in model.parameters()]).numpy()
    assert agent.hello["state"] == 212  # plain SGD keeps no optimizer state
    assert np.array_equal(state, flat)
    stop(agent, worker)


# MARK: - Requests the package refuses, evaluation


def test_applyAfterAnotherRequest_isRefused_becauseTheStepsGradientsWereDiscarded(agent: FakeAgent) -> None:
    model = make_model()
    worker, _ = start(agent, user_loop(model, torch.optim.Adam(model.parameters()), []))
    agent.step(0, batch(0))
    agent.request("save", "saved")

    refusal = agent.request("apply", "error", scale=0.125)

    assert "no step's gradients" in refusal["message"]
    raised = worker.join()
    assert isinstance(raised, RingmasterError) and str(raised) == refusal["message"]


def test_stepWithoutFinish_raisesAClearError_andTellsTheAgent(agent: FakeAgent) -> None:
    model = make_model()
    inputs, targets = make_data()

    def body(step: ringmaster.torch.Step) -> None:
        F.cross_entropy(model(inputs[step.samples]), targets[step.samples]).backward()

    worker, _ = start(agent, user_loop(model, torch.optim.Adam(model.parameters()), [], body=body))
    agent.send({"type": "step", "step": 3, "samples": batch(3)})
    message = agent.receive()
    while message["type"] == "bucket":
        message = agent.receive()

    assert message["type"] == "error"
    assert "step 3 ended without step.finish(loss=...)" in message["message"]
    raised = worker.join()
    assert isinstance(raised, RingmasterError) and "without step.finish" in str(raised)


def test_optimizerStepInsideTheBody_isRefused(agent: FakeAgent) -> None:
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters())
    worker, _ = start(agent, user_loop(model, optimizer, [], body=lambda step: optimizer.step()))
    message = agent.request("step", "error", step=0, samples=batch(0))
    assert "optimizer.step() was called inside a step" in message["message"]
    assert isinstance(worker.join(), RingmasterError)


def test_evaluate_answersWithTheScriptsFigures_orNullWithoutEvaluation(agent: FakeAgent) -> None:
    model = make_model()
    worker, _ = start(agent, user_loop(model, torch.optim.Adam(model.parameters()), [], evaluate=lambda: (0.75, 1.5)))
    assert agent.request("evaluate", "evaluated") == {"type": "evaluated", "accuracy": 0.75, "loss": 1.5}
    stop(agent, worker)

    worker, _ = start(agent, user_loop(model, torch.optim.Adam(model.parameters()), []))
    assert agent.request("evaluate", "evaluated") == {"type": "evaluated", "accuracy": None, "loss": None}
    stop(agent, worker)


# MARK: - The example


def test_digitsExample_trainsUnderTheAgent_andEvaluatesOnTheTestSet(agent: FakeAgent) -> None:
    path = REPOSITORY / "examples" / "torch" / "digits" / "train.py"
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location("digits_train", path)
        assert spec is not None and spec.loader is not None
        example = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(example)
    finally:
        sys.path.remove(str(path.parent))
    worker, hello = start(agent, lambda: example.main([]))
    assert hello["samples"] == 1437

    order = torch.randperm(1437, generator=torch.Generator().manual_seed(5)).tolist()
    for number in range(30):
        agent.train(number, order[number * 32 : (number + 1) * 32])
    evaluated = agent.request("evaluate", "evaluated")

    assert 0.8 < evaluated["accuracy"] <= 1.0 and 0.0 < evaluated["loss"] < 1.0
    stop(agent, worker)


# MARK: - CUDA


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device here: the CUDA path runs on a machine with an NVIDIA GPU (bench/torch/gpu-check.sh)",
)
def test_cudaModel_stagesItsBucketsThroughPinnedMemory_andTrainsAsPlainPyTorchOnCUDA(agent: FakeAgent) -> None:
    device = torch.device("cuda")
    model, reference = make_model().to(device), make_model().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    plain = torch.optim.Adam(reference.parameters(), lr=1e-2)
    inputs, targets = (tensor.to(device) for tensor in make_data())

    def body(step: ringmaster.torch.Step) -> None:
        samples = step.samples.to(device)
        loss = F.cross_entropy(model(inputs[samples]), targets[samples])
        loss.backward()
        step.finish(loss=loss.item())

    worker, hello = start(agent, user_loop(model, optimizer, [], body=body, bucket_slots=BUCKET_SLOTS))
    assert hello["device"].startswith("cuda")
    for number in range(4):
        samples = batch(number)
        order, _, _ = agent.step(number, samples)
        assert order == [0, 1, 2]
        reference.zero_grad()
        F.cross_entropy(reference(inputs[samples]), targets[samples], reduction="sum").backward()
        # The shared memory holds the GPU's gradients once each bucket's message came.
        torch.testing.assert_close(
            torch.from_numpy(agent.gradients.copy()), flat_gradient(reference).cpu(), rtol=1e-5, atol=1e-6
        )
        agent.request("apply", "applied", scale=1.0 / len(samples))
        for parameter in reference.parameters():
            parameter.grad /= len(samples)
        plain.step()
        for mine, theirs in zip(model.parameters(), reference.parameters()):
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
    stop(agent, worker)

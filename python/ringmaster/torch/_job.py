"""The training loop's side of the worker protocol: ``init``, ``Job`` and ``Step``.

The agent decides; the job carries out. After ``init`` has announced the model's layouts in the
``hello``, ``Job.steps()`` waits for the agent's requests and answers them:

* ``memory``: map the shared memory, point every trainable parameter's ``.grad`` at its slice of the
  gradient region, answer ``ready``;
* ``step``: zero the gradient region and hand the step to the user's loop (a step without samples
  is answered here, with zero gradients, and the loop never sees it). While backward runs, a hook
  on each parameter marks it final; buckets whose parameters are all final are released strictly in
  order, each with a ``bucket`` message. ``step.finish(loss=...)`` releases what is left and sends
  ``gradients``;
* ``apply``: the gradient region holds every rank's sum; scale it, take one optimizer step;
* ``save`` / ``load``: copy the whole training state into / out of the state region;
* ``evaluate``: run the script's evaluation; ``stop``: end the loop.

The gradient the agent sums is the gradient of the SUM of the per-sample losses: with a mean loss
(the default), each bucket is multiplied by the rank's sample count before it is released, and the
agent's ``apply`` scale (one over the global sample count) turns the global sum back into a mean.
"""

from __future__ import annotations

import mmap
import os
import queue
import threading
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from .._agent import PROTOCOL_VERSION, AgentConnection, Doorbells, WorkerEnvironment
from .._errors import RingmasterError
from ._layout import SLOT_BYTES, GradientLayout, StateLayout, state_tensors

#: What ``evaluate`` returns: (accuracy, loss) on the script's held-out data.
Evaluation = Tuple[float, float]

_REDUCTIONS = ("mean", "sum")

# Optimizers whose state, freshly created, is all zeros with a step count of 0: for them, creating
# the state eagerly at init (a step with zero gradients, then zeroing) changes nothing in training.
_ZERO_STATE_OPTIMIZERS = (
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.Adamax,
    torch.optim.RAdam,
    torch.optim.RMSprop,
    torch.optim.Adadelta,
)


# MARK: - init


def init(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    evaluate: Optional[Callable[[], Evaluation]] = None,
    loss_reduction: str = "mean",
    bucket_slots: int = 1 << 20,
    samples: Optional[int] = None,
    _stage_gradients: Optional[bool] = None,
) -> "Job":
    """Connects to the agent that started this process and announces the model; returns the job.

    ``model`` and ``optimizer`` must be built the same way on every rank (same seed), with float32
    parameters on the CPU. ``evaluate`` (optional) returns ``(accuracy, loss)`` on held-out data;
    it runs under ``torch.no_grad()``. ``loss_reduction`` says what the loss passed to
    ``step.finish`` and differentiated by the script is over the step's samples: ``"mean"`` (as
    ``nn.CrossEntropyLoss()`` by default) or ``"sum"``. ``bucket_slots`` is the most gradient
    slots (float32 values) the agent sums at once. ``samples`` is the training set's size, if the
    script wants the agent to know it.

    On CUDA, the gradients stay on the GPU (``.grad`` views of one flat buffer); each bucket, once
    final, is copied into the shared memory (pinned) on a side stream while backward goes on, and the
    summed result is copied back before the optimizer's step. ``_stage_gradients`` forces that path
    on (or off) whatever the device, for the package's own tests.
    """
    environment = WorkerEnvironment.read()
    if loss_reduction not in _REDUCTIONS:
        raise RingmasterError(f"ringmaster: loss_reduction must be 'mean' or 'sum', not {loss_reduction!r}")
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 0):
        raise RingmasterError(f"ringmaster: samples must be the training set's size (an int), not {samples!r}")
    device = _check_model(model)
    gradients = GradientLayout(list(model.named_parameters()), bucket_slots)
    if gradients.slots == 0:
        raise RingmasterError("ringmaster: the model has no trainable parameters (none with requires_grad)")
    _create_optimizer_state(model, optimizer)
    state = StateLayout(state_tensors(model, optimizer))

    connection = AgentConnection.connect(environment)
    connection.send(
        {
            "type": "hello",
            "token": environment.token,
            "protocol": PROTOCOL_VERSION,
            "parameters": gradients.slots,
            "state": state.slots,
            # Not in the document's table: the state's first slots that are parameters (trainable or
            # not; all are float32), which the agent hashes to compare replicas.
            "parameter_slots": sum(parameter.numel() for parameter in model.parameters()),
            "buckets": [[start, end] for start, end in gradients.buckets],
            "tensors": state.describe(),
            "samples": samples,
            "torch": torch.__version__,
            "device": str(device),
        }
    )
    staged = device.type == "cuda" if _stage_gradients is None else _stage_gradients
    return Job(connection, model, optimizer, gradients, state, evaluate, loss_reduction, staged=staged)


def _check_model(model: torch.nn.Module) -> torch.device:
    """Returns the one device the model's parameters are on (the CPU, or one CUDA device)."""
    device: Optional[torch.device] = None
    for name, parameter in model.named_parameters():
        if parameter.device.type not in ("cpu", "cuda"):
            raise RingmasterError(
                f"ringmaster: parameter {name} is on {parameter.device}; ringmaster trains on the CPU or on CUDA: "
                "move the model to one of them (model.to('cuda') or model.cpu())"
            )
        if device is None:
            device = parameter.device
        elif parameter.device != device:
            raise RingmasterError(
                f"ringmaster: parameter {name} is on {parameter.device}, others on {device}; a worker trains on "
                "one device: move the whole model there (each worker of a node sees its own GPU as cuda:0)"
            )
        if parameter.dtype != torch.float32:
            raise RingmasterError(
                f"ringmaster: parameter {name} is {parameter.dtype}; this version supports float32 parameters "
                "only: build the model in float32 (model.float())"
            )
    return device if device is not None else torch.device("cpu")


def _create_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Creates the optimizer's per-parameter state now, so that the state's size is fixed from the hello.

    One optimizer step with zero gradients creates it; the parameters are then put back bit for bit,
    every state tensor is zeroed (step counts included) and every number in the state becomes a
    zero tensor.
    """
    if any(optimizer.state.values()):
        raise RingmasterError(
            "ringmaster: the optimizer already has state; give init a freshly built optimizer (the agent "
            "restores checkpoints itself)"
        )
    parameters = list(model.parameters())
    known = {id(parameter) for parameter in parameters}
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            if id(parameter) not in known:
                raise RingmasterError(
                    "ringmaster: the optimizer holds a parameter that is not in the model; build it from "
                    "model.parameters()"
                )
    _warn_unless_zero_state(optimizer)

    kept = [parameter.detach().clone() for parameter in parameters]
    kept_gradients = [parameter.grad for parameter in parameters]
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            if parameter.requires_grad:
                parameter.grad = torch.zeros_like(parameter)
    try:
        optimizer.step()
    except Exception as error:
        raise RingmasterError(
            f"ringmaster: {type(optimizer).__name__} cannot take the step with zero gradients that creates its state "
            f"at init ({type(error).__name__}: {error}); this version needs an optimizer whose step() takes no "
            "arguments"
        ) from error
    with torch.no_grad():
        for parameter, value, gradient in zip(parameters, kept, kept_gradients):
            parameter.copy_(value)
            parameter.grad = gradient

    for parameter, state in optimizer.state.items():
        for key in list(state):
            value = state[key]
            if isinstance(value, torch.Tensor):
                with torch.no_grad():
                    value.zero_()
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RingmasterError(
                    f"ringmaster: the optimizer's state {key!r} is a {type(value).__name__}; this version saves "
                    "optimizer state made of tensors and numbers only"
                )
            else:
                state[key] = torch.zeros((), dtype=torch.int64 if isinstance(value, int) else torch.float64)


def _warn_unless_zero_state(optimizer: torch.optim.Optimizer) -> None:
    exact = isinstance(optimizer, _ZERO_STATE_OPTIMIZERS)
    if isinstance(optimizer, torch.optim.SGD):
        exact = all(group["momentum"] == 0 or group["dampening"] == 0 for group in optimizer.param_groups)
    if isinstance(optimizer, torch.optim.Adagrad):
        exact = all(group["initial_accumulator_value"] == 0 for group in optimizer.param_groups)
    if not exact:
        warnings.warn(
            f"ringmaster: {type(optimizer).__name__}'s state is created at init and zeroed; if its fresh state "
            "is not all zeros, its first step differs from a plain PyTorch run",
            stacklevel=4,  # the script's call of init
        )


# MARK: - Step


class Step:
    """One training step the agent asked for: forward and backward over ``samples``.

    Use it as a context manager; the body computes the loss over ``samples``, calls
    ``loss.backward()`` once, then ``step.finish(loss=loss.item())``.
    """

    def __init__(self, job: "Job", step: int, samples: torch.Tensor) -> None:
        #: The global step number the agent gave.
        self.step: int = step
        #: This rank's sample ids (indices into the training set), a LongTensor.
        self.samples: torch.Tensor = samples
        self._job = job
        self._finished = False

    def finish(self, loss: Any) -> None:
        """Ends the step: ``loss`` is the loss over ``samples`` (their mean, or their sum with
        ``loss_reduction="sum"``) as a float. Sends any gradient bucket not sent yet, then the step's
        loss to the agent."""
        if self._finished:
            raise RingmasterError(f"ringmaster: step.finish was called twice in step {self.step}")
        self._finished = True
        self._job._finish_step(self, float(loss))

    def __enter__(self) -> "Step":
        return self

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> bool:
        if kind is not None:
            if isinstance(error, RingmasterError):
                self._job._fail(str(error))
            else:
                self._job._fail(f"ringmaster: step {self.step} failed in the script: {kind.__name__}: {error}")
            return False
        if not self._finished:
            message = self._unfinished_message()
            self._job._fail(message)
            raise RingmasterError(message)
        return False

    def _unfinished_message(self) -> str:
        return (
            f"ringmaster: step {self.step} ended without step.finish(loss=...); call it once at the end of "
            "the step, after loss.backward()"
        )

    def __repr__(self) -> str:
        return f"Step(step={self.step}, samples={self.samples.numel()})"


# MARK: - Job


class Job:
    """The worker's side of one job: the model, its optimizer and the connection to the agent."""

    def __init__(
        self,
        connection: AgentConnection,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        gradients: GradientLayout,
        state: StateLayout,
        evaluate: Optional[Callable[[], Evaluation]],
        loss_reduction: str,
        *,
        staged: bool = False,
    ) -> None:
        self._connection = connection
        self._staged = staged
        self._store: Optional[_GradientStore] = None
        self._model = model
        self._optimizer = optimizer
        self._gradients = gradients
        self._state = state
        self._evaluate = evaluate
        self._mean = loss_reduction == "mean"

        self._memory: Optional[mmap.mmap] = None
        self._result_memory: Optional[mmap.mmap] = None
        self._gradient_region: Optional[torch.Tensor] = None
        self._state_region: Optional[torch.Tensor] = None
        self._views: List[torch.Tensor] = []

        # The step in progress in the user's body, and which of its parameters and buckets are done.
        self._active: Optional[Step] = None
        self._final: List[bool] = [False] * len(gradients.parameters)
        self._waiting: List[int] = [len(members) for members in gradients.members]
        self._next_bucket = 0
        self._count = 0
        # Whether the gradient region holds a step's gradients, sent, that an apply may use.
        self._pending = False
        self._iterating = False
        self._failed = False

        for index, parameter in enumerate(gradients.parameters):
            parameter.register_post_accumulate_grad_hook(self._hook(index))
        optimizer.register_step_pre_hook(self._refuse_step_in_body)

    # MARK: - The loop

    def steps(self) -> Iterator[Step]:
        """Answers the agent's requests until it says ``stop``, yielding each step for the script."""
        if self._iterating:
            raise RingmasterError("ringmaster: job.steps() can be iterated only once")
        self._iterating = True
        try:
            while True:
                bells = self._connection.bells
                if self._pending and bells is not None:
                    rung = bells.wait_apply()
                    if rung is not None:
                        seq, scale = rung
                        self._request("apply", lambda: self._apply(scale, seq))
                        continue
                message = self._connection.receive()
                if bells is not None:
                    bells.awake()
                kind = message["type"]
                if kind == "apply" and bells is not None and not bells.take_apply(message.get("seq")):
                    continue  # the message of the apply taken from the doorbell
                if kind == "stop":
                    if self._store is not None:
                        self._store.close()
                    self._connection.close()
                    return
                if kind == "step":
                    step = self._request(kind, lambda: self._begin_step(message))
                    if step is None:
                        continue
                    yield step
                    if not step._finished:
                        self._end_body()
                        raise RingmasterError(step._unfinished_message())
                else:
                    self._request(kind, lambda: self._answer(kind, message))
        except GeneratorExit:
            self._fail("ringmaster: the script left the loop over job.steps() before the agent said stop")
            raise
        except RingmasterError as error:
            self._fail(str(error))
            raise

    # MARK: - Requests

    def _request(self, kind: str, handle: Callable[[], Any]) -> Any:
        """Runs one request; a failure is told to the agent (an ``error``), then raised in the script."""
        if kind != "apply":
            self._pending = False  # the step's gradients are discarded unless the next request applies them
        try:
            return handle()
        except RingmasterError:
            raise
        except Exception as error:
            self._fail(f"ringmaster: the {kind!r} request failed: {type(error).__name__}: {error}")
            raise

    def _answer(self, kind: str, message: Dict[str, Any]) -> None:
        if kind == "memory":
            self._map(message)
        elif kind == "result":
            self._map_result(message)
        elif kind == "apply":
            self._apply(message.get("scale"), message.get("seq"))
        elif kind == "save":
            self._state.save(self._training_state(), self._mapped_state())
            self._connection.send({"type": "saved"})
        elif kind == "load":
            self._state.load(self._training_state(), self._mapped_state())
            self._connection.send({"type": "loaded"})
        elif kind == "evaluate":
            self._run_evaluation()
        else:
            raise RingmasterError(f"ringmaster: the agent sent an unknown request {kind!r}")

    def _map(self, message: Dict[str, Any]) -> None:
        path = message.get("path")
        size = message.get("bytes")
        needed = SLOT_BYTES * (self._gradients.slots + self._state.slots)
        if not isinstance(path, str) or not isinstance(size, int) or size < needed:
            raise RingmasterError(
                f"ringmaster: the shared memory ({size!r} bytes at {path!r}) cannot hold the {needed} bytes "
                "announced in the hello"
            )
        memory = _map_file(path, size)
        whole = torch.frombuffer(memory, dtype=torch.uint8, count=size)
        gradient_bytes = SLOT_BYTES * self._gradients.slots
        self._memory = memory
        self._gradient_region = whole[:gradient_bytes].view(torch.float32)
        self._state_region = whole[gradient_bytes : gradient_bytes + SLOT_BYTES * self._state.slots]
        if self._staged:
            device = self._gradients.parameters[0].device
            self._store = _StagedGradients(self._gradient_region, device, self._connection)
        else:
            self._store = _SharedGradients(self._gradient_region, self._connection)
        self._views = self._gradients.views(self._store.flat)
        self._attach_gradients()
        self._connection.send({"type": "ready"})

    def _map_result(self, message: Dict[str, Any]) -> None:
        """Maps the node's result region, which ``apply`` reads the job's sum from from now on."""
        store = self._mapped_store()
        path = message.get("path")
        size = message.get("bytes")
        needed = SLOT_BYTES * self._gradients.slots
        if not isinstance(path, str) or not isinstance(size, int) or size < needed:
            raise RingmasterError(
                f"ringmaster: the result region ({size!r} bytes at {path!r}) cannot hold the {needed} bytes of "
                "the gradients"
            )
        memory = _map_file(path, size)
        self._result_memory = memory
        store.attach_result(torch.frombuffer(memory, dtype=torch.float32, count=self._gradients.slots))
        offset, worker, spin = message.get("bells"), message.get("worker"), message.get("spin_us")
        if isinstance(offset, int) and isinstance(worker, int) and Doorbells.offered_here():
            spin_seconds = spin / 1e6 if isinstance(spin, (int, float)) and spin > 0 else 0.0
            self._connection.bells = Doorbells(memory, offset, worker, spin_seconds)
        self._connection.send({"type": "ready"})

    def _begin_step(self, message: Dict[str, Any]) -> Optional[Step]:
        store = self._mapped_store()
        number = message.get("step")
        ids = message.get("samples")
        if isinstance(number, bool) or not isinstance(number, int):
            raise RingmasterError(f"ringmaster: the agent sent a step without a step number ({number!r})")
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise RingmasterError(f"ringmaster: the agent sent step {number} without a list of sample ids")
        store.zero(shared_too=not ids)
        self._attach_gradients()
        if not ids:
            for index in range(len(self._gradients.buckets)):
                self._connection.send_event({"type": "bucket", "index": index})
            self._connection.send_event({"type": "gradients", "loss_sum": 0.0}, loss_sum=0.0)
            self._pending = True
            return None
        step = Step(self, number, torch.tensor(ids, dtype=torch.long))
        self._final = [False] * len(self._gradients.parameters)
        self._waiting = [len(members) for members in self._gradients.members]
        self._next_bucket = 0
        self._count = len(ids)
        self._active = step
        return step

    def _finish_step(self, step: Step, loss: float) -> None:
        if step is not self._active:
            raise RingmasterError(f"ringmaster: step.finish was called for step {step.step}, which is over")
        for index in range(len(self._gradients.parameters)):
            if not self._final[index]:
                self._take_gradient(index)
        self._release_buckets()
        self._end_body()
        self._mapped_store().drain()
        loss_sum = loss * self._count if self._mean else loss
        self._connection.send_event({"type": "gradients", "loss_sum": loss_sum}, loss_sum=loss_sum)
        self._pending = True

    def _apply(self, scale: Any, seq: Any) -> None:
        """Applies the job's sum times ``scale``; ``seq`` is the ``apply`` counter's value for it (when the
        agent rang one: from the doorbell, or in the message, then counted here)."""
        bells = self._connection.bells
        if bells is not None and seq != bells.applied:
            bells.take_apply(seq)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise RingmasterError(f"ringmaster: the agent sent apply without a scale ({scale!r})")
        if not self._pending:
            raise RingmasterError("ringmaster: the agent sent apply, but no step's gradients are waiting for it")
        self._pending = False
        store = self._mapped_store()
        with torch.no_grad():
            store.take_result(scale)
        self._attach_gradients()
        self._optimizer.step()
        store.synchronize()
        self._connection.send_event({"type": "applied"})

    def _run_evaluation(self) -> None:
        if self._evaluate is None:
            self._connection.send({"type": "evaluated", "accuracy": None, "loss": None})
            return
        with torch.no_grad():
            accuracy, loss = self._evaluate()
        self._connection.send({"type": "evaluated", "accuracy": float(accuracy), "loss": float(loss)})

    # MARK: - Gradients

    def _hook(self, index: int) -> Callable[[torch.Tensor], None]:
        def gradient_final(parameter: torch.Tensor) -> None:
            self._gradient_final(index)

        return gradient_final

    def _gradient_final(self, index: int) -> None:
        step = self._active
        if step is None:
            return  # a backward outside the steps (the script's own business): nothing to send
        if self._final[index]:
            raise RingmasterError(
                f"ringmaster: backward ran more than once in step {step.step} ({self._gradients.names[index]} "
                "got a second gradient); add the losses up and call backward once per step"
            )
        self._take_gradient(index)
        self._release_buckets()

    def _take_gradient(self, index: int) -> None:
        """Marks a parameter final, copying its gradient into shared memory if it is elsewhere."""
        parameter = self._gradients.parameters[index]
        view = self._views[index]
        gradient = parameter.grad
        if gradient is not None and gradient.data_ptr() != view.data_ptr():
            with torch.no_grad():
                view.copy_(gradient)
        if gradient is not view:
            parameter.grad = view
        self._final[index] = True
        self._waiting[self._gradients.bucket_of[index]] -= 1

    def _release_buckets(self) -> None:
        """Sends every bucket that is complete and next in order."""
        buckets = self._gradients.buckets
        store = self._mapped_store()
        while self._next_bucket < len(buckets) and self._waiting[self._next_bucket] == 0:
            start, end = buckets[self._next_bucket]
            with torch.no_grad():
                if self._mean:
                    store.flat[start:end].mul_(self._count)
                store.release(self._next_bucket, start, end)
            self._next_bucket += 1

    def _attach_gradients(self) -> None:
        for parameter, view in zip(self._gradients.parameters, self._views):
            if parameter.grad is not view:
                parameter.grad = view

    def _refuse_step_in_body(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._active is not None:
            raise RingmasterError(
                "ringmaster: optimizer.step() was called inside a step; remove it (and optimizer.zero_grad()): "
                "the package steps the optimizer once every rank's gradients are summed"
            )

    # MARK: - Helpers

    def _end_body(self) -> None:
        self._active = None

    def _training_state(self) -> List[Tuple[str, torch.Tensor]]:
        self._mapped_state()
        return state_tensors(self._model, self._optimizer)

    def _mapped_store(self) -> "_GradientStore":
        if self._store is None:
            raise RingmasterError("ringmaster: the agent sent a request before the shared memory")
        return self._store

    def _mapped_state(self) -> torch.Tensor:
        if self._state_region is None:
            raise RingmasterError("ringmaster: the agent sent a request before the shared memory")
        return self._state_region

    def _fail(self, text: str) -> None:
        """Tells the agent, once, why the worker is about to fail."""
        self._end_body()
        if not self._failed:
            self._failed = True
            self._connection.send_error(text)


def _map_file(path: str, size: int) -> mmap.mmap:
    """Maps ``size`` bytes of the shared memory file at ``path``, read and write."""
    try:
        descriptor = os.open(path, os.O_RDWR)
    except OSError as error:
        raise RingmasterError(f"ringmaster: cannot open the shared memory at {path}: {error.strerror}") from error
    try:
        length = os.fstat(descriptor).st_size
        if length < size:
            raise RingmasterError(f"ringmaster: the shared memory at {path} has {length} bytes, not {size}")
        return mmap.mmap(descriptor, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(descriptor)


# MARK: - Where the gradients live


class _GradientStore:
    """The gradients backward writes (``flat``, the trainable parameters' ``.grad`` are views of it)
    and how each bucket reaches the agent's shared memory (``shared``)."""

    def __init__(self, flat: torch.Tensor, shared: torch.Tensor, connection: AgentConnection) -> None:
        self.flat = flat
        self.shared = shared
        #: The node's result region, once the agent shared it: ``apply`` reads the job's sum there.
        self.result: Optional[torch.Tensor] = None
        self._connection = connection

    def attach_result(self, result: torch.Tensor) -> None:
        self.result = result

    def zero(self, *, shared_too: bool) -> None:
        """Zeroes the gradients before a step (and the shared memory's, for a step without samples)."""
        self.flat.zero_()
        if shared_too and self.shared is not self.flat:
            self.shared.zero_()

    def release(self, index: int, start: int, end: int) -> None:
        """Bucket ``index`` (``flat[start:end]``) is final: get it to the agent."""
        self._connection.send_event({"type": "bucket", "index": index})

    def drain(self) -> None:
        """Returns once every released bucket was told to the agent."""

    def take_result(self, scale: float) -> None:
        """The result region (or, without one, the gradient region) holds the job's sum: make
        ``flat`` that sum times ``scale``."""
        if self.result is not None:
            torch.mul(self.result, scale, out=self.flat)
        else:
            self.flat.mul_(scale)

    def synchronize(self) -> None:
        """Returns once the optimizer's step is done with the shared memory."""

    def close(self) -> None:
        """Releases what the store holds."""


class _SharedGradients(_GradientStore):
    """On the CPU: the gradients are the shared memory itself, so nothing is copied."""

    def __init__(self, shared: torch.Tensor, connection: AgentConnection) -> None:
        super().__init__(shared, shared, connection)


class _StagedGradients(_GradientStore):
    """On CUDA: the gradients stay on the GPU, in one flat buffer; each final bucket is copied into
    the shared memory (registered with CUDA as pinned, so the copy is a DMA) on a side stream while
    backward goes on, and a sender thread tells the agent once the copy is done, in bucket order.
    The job's sum comes back in one host-to-device copy before the optimizer's step.

    On the CPU (the package's tests) the same path runs with plain copies and no streams.
    """

    def __init__(self, shared: torch.Tensor, device: torch.device, connection: AgentConnection) -> None:
        super().__init__(torch.zeros(shared.numel(), dtype=torch.float32, device=device), shared, connection)
        self._cuda = device.type == "cuda"
        self._pinned = False
        self._result_pinned = False
        self._stream: Any = None
        if self._cuda:
            self._stream = torch.cuda.Stream(device=device)
            self._pinned = _pin(shared)
        self._queue: "queue.Queue[Optional[Tuple[int, Any]]]" = queue.Queue()
        self._failure: Optional[BaseException] = None
        self._sender = threading.Thread(target=self._send_buckets, name="ringmaster-buckets", daemon=True)
        self._sender.start()

    def zero(self, *, shared_too: bool) -> None:
        self.drain()
        super().zero(shared_too=shared_too)

    def release(self, index: int, start: int, end: int) -> None:
        if not self._cuda:
            self.shared[start:end].copy_(self.flat[start:end])
            self._queue.put((index, None))
            return
        ready = torch.cuda.Event()
        ready.record()  # on the stream backward runs on
        with torch.cuda.stream(self._stream):
            self._stream.wait_event(ready)
            self.shared[start:end].copy_(self.flat[start:end], non_blocking=self._pinned)
            # The side stream's copy reads flat, which the compute stream may zero next step.
            self.flat[start:end].record_stream(self._stream)
            copied = torch.cuda.Event()
            copied.record(self._stream)
        self._queue.put((index, copied))

    def _send_buckets(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                index, copied = item
                if self._failure is None:
                    if copied is not None:
                        copied.synchronize()
                    self._connection.send_event({"type": "bucket", "index": index})
            except BaseException as error:  # a CUDA error, or the agent gone (SystemExit)
                self._failure = error
            finally:
                self._queue.task_done()

    def drain(self) -> None:
        self._queue.join()
        if self._failure is not None:
            failure, self._failure = self._failure, None
            if isinstance(failure, SystemExit):
                raise failure
            raise RingmasterError(
                f"ringmaster: copying a gradient bucket to the agent failed: {type(failure).__name__}: {failure}"
            ) from failure

    def attach_result(self, result: torch.Tensor) -> None:
        super().attach_result(result)
        if self._cuda:
            self._result_pinned = _pin(result)

    def take_result(self, scale: float) -> None:
        self.drain()
        source = self.shared if self.result is None else self.result
        pinned = self._pinned if self.result is None else self._result_pinned
        self.flat.copy_(source, non_blocking=pinned)
        self.flat.mul_(scale)

    def synchronize(self) -> None:
        # The agent may write the shared memory again once it reads `applied`: the copy out of it
        # must be over by then.
        if self._cuda:
            torch.cuda.current_stream(self.flat.device).synchronize()

    def close(self) -> None:
        self._queue.put(None)
        self._sender.join(timeout=5)
        if self._pinned:
            torch.cuda.cudart().cudaHostUnregister(self.shared.data_ptr())
            self._pinned = False
        if self._result_pinned and self.result is not None:
            torch.cuda.cudart().cudaHostUnregister(self.result.data_ptr())
            self._result_pinned = False


def _pin(shared: torch.Tensor) -> bool:
    """Registers the shared memory with CUDA as pinned; says whether it could (else copies are
    synchronous, through pageable memory, and a warning says so)."""
    result = torch.cuda.cudart().cudaHostRegister(shared.data_ptr(), shared.numel() * shared.element_size(), 0)
    code = getattr(result, "value", result)
    if code != 0:
        warnings.warn(
            f"ringmaster: could not pin the shared memory for CUDA (cudaHostRegister said {result}); gradient "
            "copies go through pageable memory and do not overlap backward",
            stacklevel=2,
        )
        return False
    return True


__all__: Sequence[str] = ["Evaluation", "Job", "Step", "init"]

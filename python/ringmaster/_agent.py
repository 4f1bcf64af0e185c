"""The one connection between a worker process and the Ringmaster agent that started it.

The agent listens on a Unix stream socket and passes its path and a one-time token to the worker in
the environment (``RINGMASTER_WORKER_SOCKET``, ``RINGMASTER_WORKER_TOKEN``). Both directions carry
messages framed as a 4-byte little-endian length followed by that many bytes of one UTF-8 JSON
object with a ``"type"`` field (``docs/worker-protocol.md``, "Framing").

Reads never time out on the worker's side: the agent owns every deadline and ends a worker that
takes too long. When the agent closes the connection (it stopped, or it gave up on this worker) the
worker has nothing left to do, so it prints why on standard error and exits with status 0.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import platform
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, NoReturn, Optional, Tuple

from ._errors import RingmasterError

#: Environment variable holding the path of the agent's Unix socket.
SOCKET_VARIABLE = "RINGMASTER_WORKER_SOCKET"
#: Environment variable holding the token the worker's first message carries (64 hex digits).
TOKEN_VARIABLE = "RINGMASTER_WORKER_TOKEN"
#: Environment variable holding the job's name (informative only).
JOB_VARIABLE = "RINGMASTER_JOB"
#: Environment variable holding the rank this worker had when it started (informative only).
RANK_HINT_VARIABLE = "RINGMASTER_RANK_HINT"

#: The protocol version the worker announces in its ``hello`` (2: the ``result`` region, 3: doorbells).
PROTOCOL_VERSION = 3
#: A message whose body is longer than this is a protocol error, in both directions.
MAXIMUM_MESSAGE_BYTES = 64 * 1024 * 1024

#: What a user sees when the script is run by hand instead of by an agent.
NOT_STARTED_BY_AGENT = (
    "ringmaster: this process was not started by a Ringmaster agent; "
    "run it with `ringmaster job submit` or `ringmaster demo`"
)

_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class WorkerEnvironment:
    """What the agent told this worker through its environment."""

    #: Path of the agent's Unix stream socket.
    socket_path: str
    #: The token the ``hello`` carries; kept out of ``repr`` so that it never reaches a log.
    token: str = field(repr=False)
    #: The job's name, when the agent gave it.
    job: Optional[str] = None
    #: The rank at start, when the agent gave it; ranks change with generations, so only for logs.
    rank_hint: Optional[str] = None

    @staticmethod
    def read(environ: Optional[Mapping[str, str]] = None) -> "WorkerEnvironment":
        """Reads the variables; raises :class:`RingmasterError` when the socket or the token is missing."""
        values = os.environ if environ is None else environ
        socket_path = values.get(SOCKET_VARIABLE, "")
        token = values.get(TOKEN_VARIABLE, "")
        if not socket_path or not token:
            raise RingmasterError(NOT_STARTED_BY_AGENT)
        return WorkerEnvironment(
            socket_path=socket_path,
            token=token,
            job=values.get(JOB_VARIABLE) or None,
            rank_hint=values.get(RANK_HINT_VARIABLE) or None,
        )


class Doorbells:
    """The fast path of a step's hand-overs (``docs/worker-protocol.md``, "Doorbells").

    Counters and flags in the node's result region, one 64-byte line per writer. Line 0 is the
    agent's: its ``apply`` counter, the scale beside it, and its ``sleeping`` flag. Line
    ``1 + worker`` is this worker's: its events counter, its ``sleeping`` flag, and the last loss
    sum. A side that waits spins on the other's counter for a moment, then raises its own
    ``sleeping`` flag and sleeps on the socket; a side that rings sends the message too only when
    the other's flag is up. The flag and the counter are each stored, then the other one read,
    with a full fence between, so that of two sides crossing at least one sees the other.

    The agent offers doorbells on x86-64 only, where stores are seen in the order they are made (so
    a plain store of the counter comes after the gradients it announces) and where the atomic
    exchange of a lock is a full fence (``_fence``): Python has no fence of its own to call.
    """

    #: Bytes per line.
    LINE = 64

    def __init__(self, memory: mmap.mmap, offset: int, worker: int, spin_seconds: float) -> None:
        if offset % self.LINE or worker < 0 or offset + self.LINE * (2 + worker) > len(memory):
            raise RingmasterError(
                f"ringmaster: the agent placed the doorbells of worker {worker} at {offset}, outside its "
                f"{len(memory)}-byte result region; the agent and the package do not speak the same protocol"
            )
        view = memoryview(memory)[offset : offset + self.LINE * (2 + worker)]
        self._words = view.cast("I")
        self._floats = view.cast("f")
        self._doubles = view.cast("d")
        self._events_word = (1 + worker) * self.LINE // 4
        self._sleeping_word = self._events_word + 1
        self._loss = (1 + worker) * self.LINE // 8 + 1
        self._spin = spin_seconds
        self._fence_lock = threading.Lock()
        self._events = 0
        #: The last ``apply`` counter's value this worker has applied.
        self.applied = 0

    @staticmethod
    def offered_here() -> bool:
        """Whether this machine's memory order is what doorbells need (see the class comment)."""
        return platform.machine().lower() in ("x86_64", "amd64")

    def _fence(self) -> None:
        # Acquiring an uncontended lock is an atomic exchange (lock cmpxchg): a full fence on x86-64.
        self._fence_lock.acquire()
        self._fence_lock.release()

    def ring(self, loss_sum: Optional[float] = None) -> Optional[int]:
        """Raises this worker's events counter (after the loss sum of a ``gradients`` event); returns
        the event's number when the agent sleeps, so that its message must be sent, else None."""
        if loss_sum is not None:
            self._doubles[self._loss] = loss_sum
        self._events = (self._events + 1) & 0xFFFFFFFF
        self._words[self._events_word] = self._events
        self._fence()
        return self._events if self._words[2] else None

    def wait_apply(self) -> Optional[Tuple[int, float]]:
        """The ``apply`` rung after the last one applied, as ``(seq, scale)``, if it rings within the
        spin; else raises this worker's ``sleeping`` flag (the agent then sends ``apply``) and
        returns None: the caller reads the socket, then calls ``awake``."""
        words = self._words
        if words[0] == self.applied and self._spin > 0:
            deadline = time.perf_counter() + self._spin
            while words[0] == self.applied and time.perf_counter() < deadline:
                os.sched_yield()  # gives the core to the agent where there are more processes than cores
        if words[0] == self.applied:
            words[self._sleeping_word] = 1
            self._fence()
            if words[0] == self.applied:
                return None
            words[self._sleeping_word] = 0
        return words[0], self._floats[1]

    def awake(self) -> None:
        """Lowers this worker's ``sleeping`` flag."""
        self._words[self._sleeping_word] = 0

    def take_apply(self, seq: Any) -> bool:
        """Whether an ``apply`` message with ``seq`` is new (else it is the one taken from the counter);
        raises when it is neither."""
        if seq == self.applied:
            return False
        if not isinstance(seq, int) or seq != (self.applied + 1) & 0xFFFFFFFF:
            raise RingmasterError(
                f"ringmaster: the agent sent apply {seq!r} after apply {self.applied}; the agent and the package "
                "do not speak the same protocol"
            )
        self.applied = seq
        return True


class AgentConnection:
    """A framed JSON connection to the local agent.

    ``send`` may be called from the autograd engine's hooks as well as from the training loop, so it
    takes a lock; ``receive`` is only called from the loop.
    """

    def __init__(self, connected: socket.socket) -> None:
        self._socket = connected
        self._socket.settimeout(None)
        self._send_lock = threading.Lock()
        self._closed = False
        #: The doorbells, once the agent has shared them: ``send_event`` rings them.
        self.bells: Optional[Doorbells] = None

    @staticmethod
    def connect(environment: WorkerEnvironment) -> "AgentConnection":
        """Connects to the agent's socket; raises :class:`RingmasterError` when it cannot be reached."""
        connected = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            connected.connect(environment.socket_path)
        except OSError as error:
            connected.close()
            raise RingmasterError(
                f"ringmaster: cannot reach the agent at {environment.socket_path} ({error.strerror or error}); "
                "the agent that started this worker is gone: run the script with `ringmaster job submit` "
                "or `ringmaster demo`"
            ) from error
        return AgentConnection(connected)

    # MARK: - Sending

    def send(self, message: Dict[str, Any]) -> None:
        """Sends one message; exits the process cleanly when the agent has gone."""
        body = json.dumps(_finite(message), separators=(",", ":"), allow_nan=False).encode("utf-8")
        if len(body) > MAXIMUM_MESSAGE_BYTES:
            raise RingmasterError(
                f"ringmaster: a {message.get('type')!r} message of {len(body)} bytes is over the protocol's "
                f"limit of {MAXIMUM_MESSAGE_BYTES} bytes"
            )
        with self._send_lock:
            try:
                self._socket.sendall(_LENGTH.pack(len(body)) + body)
            except (BrokenPipeError, ConnectionResetError):
                self._agent_gone("while the worker was sending to it")

    def send_event(self, message: Dict[str, Any], loss_sum: Optional[float] = None) -> None:
        """Tells the agent of a ``bucket``, ``gradients`` or ``applied`` event: on the doorbell, and
        in a message (with the event's number) when the agent sleeps; without doorbells, in a message."""
        with self._send_lock:  # the counter's order is the messages' order
            if self.bells is not None:
                number = self.bells.ring(loss_sum)
                if number is None:
                    return  # the agent is spinning on the counter
                message = {**message, "event": number}
            body = json.dumps(_finite(message), separators=(",", ":"), allow_nan=False).encode("utf-8")
            try:
                self._socket.sendall(_LENGTH.pack(len(body)) + body)
            except (BrokenPipeError, ConnectionResetError):
                self._agent_gone("while the worker was sending to it")

    def send_error(self, text: str) -> None:
        """Sends an ``error`` message if the connection still works; never raises."""
        if self._closed:
            return
        body = json.dumps({"type": "error", "message": text}).encode("utf-8")
        try:
            with self._send_lock:
                self._socket.sendall(_LENGTH.pack(len(body)) + body)
        except OSError:
            pass

    # MARK: - Receiving

    def receive(self) -> Dict[str, Any]:
        """Waits, without a deadline, for the next message from the agent and decodes it."""
        header = self._read_exactly(_LENGTH.size, at_boundary=True)
        (length,) = _LENGTH.unpack(header)
        if length > MAXIMUM_MESSAGE_BYTES:
            raise RingmasterError(
                f"ringmaster: the agent sent a message of {length} bytes, over the protocol's limit of "
                f"{MAXIMUM_MESSAGE_BYTES}; the agent and the package do not speak the same protocol"
            )
        body = self._read_exactly(length, at_boundary=False)
        try:
            message = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RingmasterError(f"ringmaster: the agent sent a message that is not JSON ({error})") from error
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise RingmasterError("ringmaster: the agent sent a message that is not a JSON object with a type")
        return message

    def close(self) -> None:
        """Closes the connection; the agent reads end of file."""
        if not self._closed:
            self._closed = True
            self._socket.close()

    def _read_exactly(self, count: int, *, at_boundary: bool) -> bytes:
        buffer = bytearray(count)
        view = memoryview(buffer)
        received = 0
        while received < count:
            try:
                chunk = self._socket.recv_into(view[received:])
            except ConnectionResetError:
                chunk = 0
            if chunk == 0:
                self._agent_gone("" if at_boundary and received == 0 else "in the middle of a message")
            received += chunk
        return bytes(buffer)

    def _agent_gone(self, detail: str) -> NoReturn:
        self.close()
        suffix = f" {detail}" if detail else ""
        print(
            f"ringmaster: the agent closed its connection to this worker{suffix}; the worker exits",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(0)


def _finite(value: Any) -> Any:
    """The message with every non-finite float replaced by null: JSON has no NaN or infinity."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value

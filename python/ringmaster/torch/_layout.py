"""Where a model's gradients and training state lie in the memory the agent shares with the worker.

Both layouts are fixed at ``init`` and announced in the ``hello`` (``docs/worker-protocol.md``,
"Shared memory"):

* the gradient region holds the trainable parameters' gradients, parameters in reverse registration
  order (the order backward finishes them), each flattened, cut into buckets of consecutive
  parameters of at most ``bucket_slots`` float32 slots (a larger parameter is a bucket of its own);
* the state region holds raw bytes: every parameter, every floating-point buffer, then the
  optimizer's per-parameter state tensors (parameters in optimizer order, keys sorted), one after
  the other with no gaps, the whole padded with zeros to a multiple of 4 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch

from .._errors import RingmasterError

#: Bytes in one slot of the shared memory (a little-endian float32).
SLOT_BYTES = 4


# MARK: - Gradients


class GradientLayout:
    """The trainable parameters' places in the gradient region, and the buckets that group them."""

    def __init__(self, named_parameters: Sequence[Tuple[str, torch.nn.Parameter]], bucket_slots: int) -> None:
        if bucket_slots < 1:
            raise RingmasterError(f"ringmaster: bucket_slots must be at least 1, not {bucket_slots}")
        trainable = [(name, parameter) for name, parameter in named_parameters if parameter.requires_grad]
        trainable.reverse()
        #: Trainable parameters, last registered first.
        self.parameters: List[torch.nn.Parameter] = [parameter for _, parameter in trainable]
        #: Their names in the model, for messages.
        self.names: List[str] = [name for name, _ in trainable]
        #: Each parameter's first slot.
        self.offsets: List[int] = []
        #: Each parameter's bucket.
        self.bucket_of: List[int] = []
        #: Each bucket's slots, ``[start, end)``.
        self.buckets: List[Tuple[int, int]] = []
        #: Each bucket's parameters (indices into ``parameters``).
        self.members: List[List[int]] = []

        offset = 0
        bucket_start = 0
        current: List[int] = []
        for index, parameter in enumerate(self.parameters):
            size = parameter.numel()
            if current and offset - bucket_start + size > bucket_slots:
                self._close_bucket(bucket_start, offset, current)
                bucket_start = offset
                current = []
            current.append(index)
            self.offsets.append(offset)
            self.bucket_of.append(len(self.buckets))
            offset += size
        if current:
            self._close_bucket(bucket_start, offset, current)
        #: Slots in the gradient region.
        self.slots: int = offset

    def _close_bucket(self, start: int, end: int, members: List[int]) -> None:
        self.buckets.append((start, end))
        self.members.append(members)

    def views(self, region: torch.Tensor) -> List[torch.Tensor]:
        """Each parameter's gradient as a view of ``region`` (float32, ``slots`` long), shaped like it."""
        return [
            region[offset : offset + parameter.numel()].view(parameter.shape)
            for offset, parameter in zip(self.offsets, self.parameters)
        ]


# MARK: - State


@dataclass(frozen=True)
class StateEntry:
    """One tensor of the training state, as it was at ``init``."""

    #: What it is, for messages (``parameter 0.weight``, ``optimizer state exp_avg of 0.weight``).
    name: str
    dtype: torch.dtype
    shape: Tuple[int, ...]
    #: Bytes it takes in the state region.
    nbytes: int


def state_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> List[Tuple[str, torch.Tensor]]:
    """The tensors of the training state, named, in the state region's order (read afresh each time)."""
    names: Dict[int, str] = {}
    tensors: List[Tuple[str, torch.Tensor]] = []
    for name, parameter in model.named_parameters():
        names[id(parameter)] = name
        tensors.append((f"parameter {name}", parameter))
    for name, buffer in model.named_buffers():
        if buffer.is_floating_point():
            tensors.append((f"buffer {name}", buffer))
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            state = optimizer.state.get(parameter)
            if not state:
                continue
            owner = names.get(id(parameter), "?")
            for key in sorted(state):
                value = state[key]
                label = f"optimizer state {key!r} of {owner}"
                if not isinstance(value, torch.Tensor):
                    raise RingmasterError(
                        f"ringmaster: the {label} became a {type(value).__name__}; the training state must "
                        "stay tensors of a fixed size after init"
                    )
                tensors.append((label, value))
    return tensors


class StateLayout:
    """The state region's layout: the tensors of ``state_tensors`` as they were at ``init``."""

    def __init__(self, tensors: Sequence[Tuple[str, torch.Tensor]]) -> None:
        #: The tensors, in order.
        self.entries: List[StateEntry] = [
            StateEntry(name, tensor.dtype, tuple(tensor.shape), tensor.numel() * tensor.element_size())
            for name, tensor in tensors
        ]
        #: Bytes the tensors take, before padding.
        self.nbytes: int = sum(entry.nbytes for entry in self.entries)
        #: Slots in the state region (the bytes padded to a multiple of 4).
        self.slots: int = (self.nbytes + SLOT_BYTES - 1) // SLOT_BYTES

    def describe(self) -> List[Dict[str, object]]:
        """The tensors as the hello names them: name, dtype, shape, byte offset in the state, bytes."""
        described: List[Dict[str, object]] = []
        offset = 0
        for entry in self.entries:
            described.append(
                {
                    "name": entry.name,
                    "dtype": str(entry.dtype).replace("torch.", ""),
                    "shape": list(entry.shape),
                    "offset": offset,
                    "bytes": entry.nbytes,
                }
            )
            offset += entry.nbytes
        return described

    def check(self, tensors: Sequence[Tuple[str, torch.Tensor]]) -> None:
        """Raises :class:`RingmasterError` unless ``tensors`` still match the layout fixed at ``init``."""
        current = [(name, tensor.dtype, tuple(tensor.shape)) for name, tensor in tensors]
        expected = [(entry.name, entry.dtype, entry.shape) for entry in self.entries]
        if current == expected:
            return
        for now, then in zip(current, expected):
            if now != then:
                raise RingmasterError(
                    f"ringmaster: the training state changed since init: {then[0]} was {then[1]} {list(then[2])}, "
                    f"it is now {now[0]}, {now[1]} {list(now[2])}; the model, its buffers and the optimizer's "
                    "state must keep their tensors after init"
                )
        raise RingmasterError(
            f"ringmaster: the training state changed since init: it had {len(expected)} tensors, it has "
            f"{len(current)}; the model, its buffers and the optimizer's state must keep their tensors after init"
        )

    def save(self, tensors: Sequence[Tuple[str, torch.Tensor]], region: torch.Tensor) -> None:
        """Copies the tensors' bytes into ``region`` (uint8, ``4 * slots`` long), zeroing the padding."""
        self.check(tensors)
        offset = 0
        with torch.no_grad():
            for _, tensor in tensors:
                size = tensor.numel() * tensor.element_size()
                region[offset : offset + size].copy_(_bytes_of(tensor.detach().contiguous()))
                offset += size
            region[offset:].zero_()

    def load(self, tensors: Sequence[Tuple[str, torch.Tensor]], region: torch.Tensor) -> None:
        """Writes ``region``'s bytes back into the tensors, in place."""
        self.check(tensors)
        offset = 0
        with torch.no_grad():
            for _, tensor in tensors:
                size = tensor.numel() * tensor.element_size()
                target = tensor.detach()
                if target.is_contiguous():
                    _bytes_of(target).copy_(region[offset : offset + size])
                else:
                    staged = torch.empty_like(target, memory_format=torch.contiguous_format)
                    _bytes_of(staged).copy_(region[offset : offset + size])
                    target.copy_(staged)
                offset += size


def _bytes_of(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor's bytes, as a flat uint8 view that shares its memory."""
    return tensor.view(-1).view(torch.uint8)

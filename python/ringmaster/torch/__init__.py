"""Ringmaster for PyTorch: a training loop whose steps the agent hands out.

A script changes a handful of lines of a plain loop::

    import ringmaster.torch

    job = ringmaster.torch.init(model, optimizer, evaluate=evaluate)
    for step in job.steps():
        with step:
            loss = loss_fn(model(inputs[step.samples]), targets[step.samples])
            loss.backward()
            step.finish(loss=loss.item())

There is no ``optimizer.zero_grad()`` or ``optimizer.step()`` in the loop and no rank arithmetic:
the agent says which samples each step uses, sums the gradients of every rank, and asks for the
optimizer step, checkpoints and evaluations itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._errors import RingmasterError

if TYPE_CHECKING:
    from ._job import Evaluation, Job, Step, init

__all__ = ["Evaluation", "Job", "RingmasterError", "Step", "init"]


def __getattr__(name: str) -> Any:
    # PyTorch is imported on first use, so that `python -m ringmaster.torch.check` can say that it
    # is missing instead of failing on the import of this package.
    if name not in ("Evaluation", "Job", "Step", "init"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from . import _job
    except ImportError as error:
        if error.name != "torch":
            raise
        raise ImportError(
            "ringmaster: PyTorch is not installed for this interpreter; install it (the CPU or the CUDA build), "
            "then `python -m ringmaster.torch.check` shows what the interpreter sees",
            name="torch",
        ) from error
    return getattr(_job, name)

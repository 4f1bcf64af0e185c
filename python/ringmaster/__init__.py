"""Ringmaster's worker package.

A training script started by a Ringmaster agent (``ringmaster job submit`` or ``ringmaster demo``)
imports :mod:`ringmaster.torch` and changes a handful of lines of its loop; the agent decides
everything else (membership, ranks, which samples each step uses, checkpoints, what to do after a
failure) and the package only carries out what the agent asks. See ``docs/worker-protocol.md``
for the protocol between the two.
"""

from __future__ import annotations

from ._errors import RingmasterError

__all__ = ["RingmasterError"]
__version__ = "0.1.0"

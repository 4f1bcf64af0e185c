"""The one error type the package raises."""

from __future__ import annotations


class RingmasterError(RuntimeError):
    """Something the package refuses or cannot do; the message says what to do about it.

    Every message starts with ``ringmaster:`` so that it stands out in the worker's log, which the
    agent shows when the worker fails.
    """


RingmasterError.__module__ = "ringmaster"  # tracebacks name it as users import it

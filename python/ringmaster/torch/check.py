"""``python -m ringmaster.torch.check``: what this interpreter sees, before an agent starts a worker with it.

Prints the interpreter, the PyTorch version and the CUDA devices visible; exits 0 when PyTorch
imports, 1 otherwise.
"""

from __future__ import annotations

import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    """Prints the report; returns the exit status."""
    print(f"interpreter: {sys.executable} (Python {sys.version.split()[0]})")
    try:
        import torch
    except Exception as error:  # an ImportError, or a broken install raising something else
        print(f"torch: cannot be imported ({type(error).__name__}: {error}); install PyTorch for this interpreter")
        return 1
    print(f"torch: {torch.__version__}")
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        names = ", ".join(f"{index}: {torch.cuda.get_device_name(index)}" for index in range(count))
        print(f"cuda devices: {count} ({names}); an agent runs one worker per GPU unless the job sets workers_per_node")
    else:
        print("cuda devices: none")
    return 0


if __name__ == "__main__":
    sys.exit(main())

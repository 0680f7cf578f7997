"""Run the bookmatch CLI, SIGKILLing the process right after optimizer step N (the resume tests' hard kill).

    python tests/launch_kill_at_step.py N train contrastive --data ... --out ...
    python -m torch.distributed.run --nproc_per_node 2 tests/launch_kill_at_step.py N train contrastive ...

The kill is a callback the trainer runs after each step (after that step's evaluation and checkpoint), passed in
through click's context object; production code has no kill switch.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's bookmatch, not an installed one


def kill_at(step: int):
    def on_step(global_step: int) -> None:
        if global_step == step:
            os.kill(os.getpid(), signal.SIGKILL)

    return on_step


if __name__ == "__main__":
    from bookmatch.cli import main

    main(args=sys.argv[2:], obj={"on_step": kill_at(int(sys.argv[1]))}, prog_name="bookmatch")

"""A test-only denoiser for tests/test_liveness.py: in its first round, worker rank
``fault_rank`` dies the way an NCCL peer does, as far as rank 0 can see: its process exits, but
its connections stay open (a forked child holds them; it sleeps ``fault_s``, default 600 s, and
its pid is written to ``fault_stamp/orphan``). Rank 0 must name it from the process, not the socket."""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Mapping

import torch

from chords.models.digits import DigitsModel


class SilentDeathDigits(DigitsModel):
    def velocity(self, xs: torch.Tensor, steps: torch.Tensor, cond: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.role == "denoiser" and mp.current_process().name == f"chords-rank{self.cfg.get('fault_rank', 1)}":
            pid = os.fork()
            if pid == 0:  # the child keeps every socket of the worker open
                time.sleep(float(self.cfg.get("fault_s", 600)))
                os._exit(0)
            Path(self.cfg["fault_stamp"], "orphan").write_text(str(pid))
            os._exit(7)
        return super().velocity(xs, steps, cond)

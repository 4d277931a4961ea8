"""Test-only adapters that misbehave on purpose, in real worker processes.

Used as ``model.adapter=tests.fault_adapters.FaultyDigits +model.fault=KIND +model.fault_rank=R``
(or the same keys in a model config dict). The fault hits only the worker whose process is
named ``chords-rank{R}`` (``fault_rank: all`` = every worker); rank 0 never faults.

KIND: ``die_load`` (exits while loading), ``fail_load`` (raises while loading),
``hang_load`` / ``slow_load`` (sleeps ``fault_s`` seconds while loading, default 3600 / 60),
``hang_velocity`` (never answers a round), ``die_velocity`` (exits in its first round). With ``fault_stamp: DIR`` the faulty worker writes
``DIR/rank{R}`` (the time) just before it misbehaves.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from chords.models.digits import DigitsModel


class FaultyDigits(DigitsModel):
    config_keys = ("fault", "fault_rank", "fault_s", "fault_stamp")  # added with +model.KEY=... (chords.config)
    def __init__(self, cfg: Mapping[str, Any], device: torch.device | str = "cpu", role: str = "full"):
        super().__init__(cfg, device, role)
        fault = cfg.get("fault")
        if not self._faulty() or fault in ("hang_velocity", "die_velocity"):
            return
        self._stamp()
        if fault == "die_load":
            os._exit(3)
        if fault == "fail_load":
            raise RuntimeError("injected load failure")
        if fault in ("hang_load", "slow_load"):
            time.sleep(float(cfg.get("fault_s") or (3600 if fault == "hang_load" else 60)))

    def _faulty(self) -> bool:
        if self.role != "denoiser":
            return False
        target = self.cfg.get("fault_rank", 1)
        if target == "all":
            return True
        if "TORCHELASTIC_RUN_ID" in os.environ:  # a rank started by torchrun: its global rank
            return os.environ.get("RANK") == str(target)
        return mp.current_process().name == f"chords-rank{target}"

    def _stamp(self) -> None:
        folder = self.cfg.get("fault_stamp")
        if folder:
            path = Path(folder) / mp.current_process().name.removeprefix("chords-")
            path.write_text(repr(time.time()))

    def velocity(self, xs: torch.Tensor, steps: torch.Tensor, cond: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.cfg.get("fault") == "hang_velocity" and self._faulty():
            self._stamp()
            time.sleep(3600)
        if self.cfg.get("fault") == "die_velocity" and self._faulty():
            self._stamp()
            os._exit(5)
        return super().velocity(xs, steps, cond)

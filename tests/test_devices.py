"""Device mix-ups a first GPU run would hit, caught on the CPU (tests/foreign_device.py)."""
from __future__ import annotations

import pytest
import torch

from chords.runner import run, summary_table
from tests.conftest import ROOT, compose
from tests.foreign_device import OnDevice, on_device


def test_the_stand_in_refuses_what_cuda_refuses():
    x, host = on_device(torch.ones(3)), torch.ones(3)
    with pytest.raises(RuntimeError, match="same device"):
        x - host
    with pytest.raises(RuntimeError, match="same device"):
        torch.stack([x, host])
    with pytest.raises(TypeError):
        x.numpy()
    assert isinstance(x * torch.tensor(2.0), OnDevice)  # a 0-d CPU scalar mixes, as with CUDA
    back = x.cpu()
    assert type(back) is torch.Tensor and torch.equal(back - host, torch.zeros(3))
    assert type(x.to("cpu")) is torch.Tensor and type(x.to(torch.float64)) is OnDevice


@pytest.mark.parametrize("model", ["digits", "moving-digits"])
def test_outputs_on_the_device_reach_the_summary_quality_and_grid(tmp_path, monkeypatch, model):
    """Two settings in one output tree: the second reuses the sequential reference, read back
    from disk (CPU) while its own output is on the device; the summary compares the two and
    scores both with the CPU classifier; the grid reads the folders."""
    monkeypatch.chdir(ROOT)
    adapter = {"digits": "DigitsOnDevice", "moving-digits": "MovingDigitsOnDevice"}[model]
    prompts = {"digits": "prompts/digits_demo.txt", "moving-digits": "prompts/moving_digits_demo.txt"}[model]
    base = [f"model={model}", f"model.adapter=tests.foreign_device.{adapter}", f"output_base_path={tmp_path}",
            "hardware=batched", "model.num_inference_steps=8", f"prompt_file={prompts}", "algo=chords"]
    from chords.grid import write_job_grids

    tables = []
    for k, init in ((2, "0-4"), (3, "0-2-4")):
        outcomes = run(compose(base + [f"algo.num_cores={k}", f"algo.init_t={init}"]))
        assert isinstance(outcomes[0][0].output, OnDevice) or outcomes[0][0].skipped
        tables.append(summary_table(outcomes))
        assert write_job_grids(outcomes)
    assert outcomes[0][1].skipped and not outcomes[0][0].skipped  # the reference came from disk
    assert "accuracy" in tables[-1] and "e-" in tables[-1]

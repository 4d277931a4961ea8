"""Step arithmetic and backends, measured (a script, not a test): `python bench/step_parity.py`.

For each tiny family (built in code, no download) in bf16 and float32, with one intra-op
thread on every rank (as the harness runs them):

* ``seq-pipe``: max |sequential through the adapter - ``pipe(..., output_type="latent")``| with
  ``step_precision: model`` (the default), and ``f32opt-pipe`` the same with ``float32``;
* ``proc-loop``: max |process backend (2 ranks) - local loop| over two rounds, one of them mixing
  the float32 noise with a stepped state; ``dtype`` whether the dtypes agree too;
* ``batch-loop``: max |batched - local loop|, also in units of eps(dtype) * max|v| (``ulps``);
* ``threads``: max |loop velocity with 2 threads - with 1 thread| (why every rank uses one setting).

tests/test_step_parity.py asserts the zeros; this prints the numbers.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from chords.backends import LocalBackend, ProcessBackend, thread_setting  # noqa: E402
from chords.core import Sequential, sample  # noqa: E402
from tests.multi_adapter import MultiAdapter  # noqa: E402
from tests.test_adapters import PROMPT, load_cfg, reference_latents  # noqa: E402

FAMILIES = ["flux", "sd3-5", "hunyuan", "wan2-1", "cogvideo"]


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def sequential(adapter, enc) -> torch.Tensor:
    return sample(Sequential(), lambda xs, s: adapter.velocity(xs, s, enc.cond), enc.x0, enc.step, enc.num_steps).output


def main() -> None:
    members = [(f, d) for d in ("bfloat16", "float32") for f in FAMILIES]
    cfg = {"model_name": "tiny-multi", "members": [{**load_cfg(f"tiny-{f}"), "dtype": d} for f, d in members]}
    rows = []
    with thread_setting(1):
        multi = MultiAdapter(cfg, "cpu", "full")
        with ProcessBackend(multi, "tests.multi_adapter.MultiAdapter", cfg, 2, threads_per_process=1) as procs:
            for k, (family, dtype) in enumerate(members):
                a, mcfg = multi.members[k], cfg["members"][k]
                ref = reference_latents(family, a.pipe, mcfg)
                enc = multi.encode(PROMPT, mcfg["seed"], member=k)
                seq = sequential(multi, enc)
                a.step_precision = "float32"
                enc32 = multi.encode(PROMPT, mcfg["seed"], member=k)
                seq32 = sequential(multi, enc32)
                a.step_precision = "model"

                def own(x, i):
                    return multi.velocity(x[None], torch.tensor([i]), enc.cond)[0]

                x1 = enc.step(enc.x0, own(enc.x0, 0), 0, 1)
                x3 = enc.step(x1, own(x1, 1), 1, 3)
                loop, batched = LocalBackend(multi, "loop"), LocalBackend(multi, "batched")
                for b in (procs, loop, batched):
                    b.set_condition(enc.cond)
                proc_d = batch_d = ulps = 0.0
                same_dtype = True
                for states, idx in (([enc.x0, x3], [0, 3]), ([x1, x3], [1, 3])):
                    xs, steps = torch.stack(states), torch.tensor(idx)
                    lv, pv, bv = loop.velocity(xs, steps), procs.velocity(xs, steps), batched.velocity(xs, steps)
                    same_dtype &= lv.dtype == pv.dtype == bv.dtype
                    proc_d = max(proc_d, maxdiff(pv, lv))
                    batch_d = max(batch_d, maxdiff(bv, lv))
                    ulps = max(ulps, maxdiff(bv, lv) / (torch.finfo(lv.dtype).eps * lv.double().abs().max().item()))
                xs, steps = torch.stack([x1, x3]), torch.tensor([1, 3])
                with thread_setting(2):
                    v2 = loop.velocity(xs, steps)
                rows.append((f"tiny-{family}", dtype, maxdiff(seq, ref) if seq.dtype == ref.dtype else float("nan"),
                             maxdiff(seq32, ref), proc_d, same_dtype, batch_d, ulps, maxdiff(v2, loop.velocity(xs, steps))))
    head = f"{'model':<14} {'dtype':<9} {'seq-pipe':>9} {'f32opt-pipe':>11} {'proc-loop':>9} {'dtype':>5} {'batch-loop':>10} {'ulps':>6} {'threads':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r[0]:<14} {r[1]:<9} {r[2]:>9.3g} {r[3]:>11.3g} {r[4]:>9.3g} {str(r[5]):>5} {r[6]:>10.3g} {r[7]:>6.1f} {r[8]:>9.3g}")


if __name__ == "__main__":
    main()

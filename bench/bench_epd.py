"""EPD side by side with Euler, CHORDS, ParaDIGMS and SRDS on model=digits (issue 18, item 5).

    python bench/bench_epd.py                          # 2 seeds x 10 classes, ~10 min on 2 shared cores
    python bench/bench_epd.py --seeds 1 --classes 3    # a quick look

Every method runs in this process on the same noises (evaluation seeds 0..seeds-1, one prompt
per digit class, the model config's guidance 2 and shift 1), with the batched velocity (one
forward per round), and is scored by the latent RMSE of its output against

* the model's Euler-50 sequential solve (the harness's usual reference), and
* a 1000-step Euler solve (``--ref-steps``), the best estimate of the exact ODE solution here;

next to rounds (parallel depth), NFE and wall seconds per sample (median over samples; one
process, machine shared, so read ratios, not absolute times). Rows:

* ``epd``: K = 2 and 4 directions on M = 2..10 coarse steps (2M rounds), with the committed table
  for (M, K) when there is one (``chords/models/weights/epd/digits-n{M}-k{K}.json``) and the
  untrained rule (K = 1 r = 1/2 is the midpoint rule; K directions at r = (k - 1/2) / K);
* ``euler``: sequential Euler with the same number of rounds (2M steps) and with M steps;
* ``chords``: K = 4, the paper's preset scaled to N = 50 (0-8-16-32), every streamed hit;
* ``paradigms`` and ``srds``: K = 4, N = 50, over their tolerances.

Writes ``--out``.json (every row), .md (the table) and .png (RMSE against the 1000-step solve
versus rounds, log scale). Quality metrics are left out on purpose: on this model the class
accuracy is 100% down to one Euler step (/work/shared/ENVIRONMENT.md, docs/results), so it
cannot rank these methods.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from baselines import SRDS, ParaDIGMS  # noqa: E402
from baselines.epd import EPD  # noqa: E402
from chords import CHORDS, Sequential, sample  # noqa: E402
from chords.epd_tables import TABLE_DIR, read_table  # noqa: E402
from chords.models.embedded import DigitsDiT  # noqa: E402


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).pow(2).mean().sqrt())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--ref-steps", type=int, default=1000)
    ap.add_argument("--coarse", default="2,4,6,8,10", help="EPD coarse steps M")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "epd_digits")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    base = OmegaConf.load(ROOT / "configs" / "model" / "digits.yaml")
    adapter = DigitsDiT(base)

    def run(n: int, algorithm, prompt: str, seed: int):
        adapter.cfg = OmegaConf.merge(base, {"num_inference_steps": n})
        enc = adapter.encode(prompt, seed)
        t0 = time.perf_counter()
        with torch.no_grad():
            res = sample(algorithm, lambda xs, s: adapter.velocity(xs, s, enc.cond), enc.x0, enc.step, n)
        return res, time.perf_counter() - t0

    methods: list[tuple[str, dict, int, object]] = []  # (method, settings, N, algorithm)
    for m in [int(v) for v in a.coarse.split(",")]:
        for k in (2, 4):
            methods.append(("epd", {"M": m, "K": k, "table": "untrained"}, m, EPD(k)))
            path = TABLE_DIR / f"digits-n{m}-k{k}.json"
            if path.is_file():
                methods.append(("epd", {"M": m, "K": k, "table": path.name}, m, EPD(k, read_table(path)[0])))
        methods.append(("euler", {"steps": 2 * m, "as": f"EPD M={m} rounds"}, 2 * m, Sequential()))
        methods.append(("euler", {"steps": m, "as": f"EPD M={m} steps"}, m, Sequential()))
    methods.append(("chords", {"K": 4, "init_t": "0-8-16-32"}, 50, CHORDS(num_cores=4, init_t=(0, 8, 16, 32))))
    for tol in (0.05, 0.1, 0.2, 0.4):
        methods.append(("paradigms", {"K": 4, "tolerance": tol}, 50, ParaDIGMS(num_cores=4, tolerance=tol)))
    for tol in (0.02, 0.05, 0.1, 0.2):
        methods.append(("srds", {"K": 4, "tolerance": tol}, 50, SRDS(num_cores=4, tolerance=tol)))

    cases = [(f"a handwritten digit {c}", s) for c in range(a.classes) for s in range(a.seeds)]
    refs50, refs_fine = {}, {}
    for prompt, seed in cases:
        refs50[(prompt, seed)] = run(50, Sequential(), prompt, seed)[0].output
        refs_fine[(prompt, seed)] = run(a.ref_steps, Sequential(), prompt, seed)[0].output
    spread = statistics.fmean(float(r.double().std()) for r in refs_fine.values())
    e50 = statistics.fmean(rmse(refs50[c], refs_fine[c]) for c in cases)
    print(f"{len(cases)} samples; latent std {spread:.3f}; Euler-50 vs Euler-{a.ref_steps}: RMSE {e50:.4f}", flush=True)

    rows = []
    for method, settings, n, algo in methods:
        per_hit: dict[int, list] = {}
        walls = []
        for prompt, seed in cases:
            res, wall = run(n, algo, prompt, seed)
            walls.append(wall)
            hits = res.hits if method == "chords" else [res.hits[-1]]
            for i, h in enumerate(hits):
                per_hit.setdefault(i, []).append((h.round, rmse(h.x, refs50[(prompt, seed)]),
                                                  rmse(h.x, refs_fine[(prompt, seed)]), res.nfe))
        for i, vals in per_hit.items():
            row = {"method": method, **settings, "N": n, "hit": i if method == "chords" else None,
                   "rounds": statistics.fmean(v[0] for v in vals), "nfe": statistics.fmean(v[3] for v in vals),
                   "rmse_vs_euler50": statistics.fmean(v[1] for v in vals),
                   "rmse_vs_fine": statistics.fmean(v[2] for v in vals), "wall_s": statistics.median(walls)}
            rows.append(row)
            print(json.dumps(row), flush=True)

    a.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"samples": len(cases), "seeds": list(range(a.seeds)), "classes": a.classes, "ref_steps": a.ref_steps,
            "latent_std": spread, "euler50_vs_fine": e50, "torch": torch.__version__, "threads": a.threads}
    a.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n", encoding="utf-8")
    lines = [f"{len(cases)} samples (digits, guidance 2, shift 1); latent std {spread:.3f}; Euler-50 vs Euler-{a.ref_steps} "
             f"RMSE {e50:.4f}.", "",
             "| method | settings | rounds | NFE | RMSE vs Euler-50 | RMSE vs Euler-1000 | wall s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        s = {k: v for k, v in r.items() if k not in ("method", "rounds", "nfe", "rmse_vs_euler50", "rmse_vs_fine", "wall_s")
             and v is not None}
        lines.append(f"| {r['method']} | {', '.join(f'{k}={v}' for k, v in s.items())} | {r['rounds']:.1f} | {r['nfe']:.1f} | "
                     f"{r['rmse_vs_euler50']:.4f} | {r['rmse_vs_fine']:.4f} | {r['wall_s']:.3f} |")
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups = {}
    for r in rows:
        if r["method"] == "epd":
            label = f"EPD K={r['K']} {'trained' if r['table'] != 'untrained' else 'untrained'}"
        elif r["method"] == "euler":
            label = "Euler (sequential)"
        else:
            label = f"{r['method']} K=4"
        groups.setdefault(label, []).append((r["rounds"], r["rmse_vs_fine"]))
    for label, pts in groups.items():
        pts.sort()
        style = "o" if "EPD" in label and "untrained" not in label else ("s" if "EPD" in label else ".")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style + ("-" if label.startswith(("EPD", "Euler")) else ""), label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rounds (parallel depth)")
    ax.set_ylabel(f"latent RMSE vs Euler-{a.ref_steps}")
    ax.set_title("model=digits: speed vs accuracy (nearly straight ODE)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(a.out.with_suffix(".png"), dpi=120)
    print(f"wrote {a.out.with_suffix('.md')}, .json, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

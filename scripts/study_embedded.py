#!/usr/bin/env python
"""The CHORDS study on the embedded models, in one command: the paper's tables and figures, the
methods side by side, an init-sequence search, and an analysis next to the paper's numbers.

    python scripts/study_embedded.py                       # the study -> study_out/ (run folders in runs/study/)
    python scripts/study_embedded.py --out docs/results    # what docs/results/ holds (it writes there only when asked)
    python scripts/study_embedded.py --reduced --out /tmp/study --runs /tmp/study_runs   # a smoke test (~90 s)

What it runs (in this process, one thread, hardware=batched: the K states of a round in one
forward, the closest a single CPU gets to K devices), with the experiment configs the GPU
sweeps use (configs/experiment/), their models replaced by the embedded ones:

* image model ``digits``: table2 (methods x K), table3_image (presets vs uniform), table4 (N), fig4 (K=2..8);
* video model ``moving-digits``: table1, table3, table4, fig4 (skipped, with one line, while the
  model is not installed: it arrives with the embedded-models work);
* one prompt per digit class x ``--seeds`` seeds (default 10 per class);
* CHORDS keeps every hit (criterion none), so eval applies each table's stop rule afterwards.

Then eval (python -m eval, in-process) writes the tables (mean [95% CI], n, NFE), Figures 4 and
5, quality against speedup, wall-clock against K, the grids, ``whatif.csv``; the init search
(scripts/search_init.py) runs per image model for K = 4, 8; and ``README.md`` in ``--out`` holds
the analysis: which method wins at which K at equal latent RMSE, whether the calibrated
sequences beat uniform ones at a common budget, how speedup grows with N, and where the numbers
disagree with the paper's (every sentence is computed from the numbers it cites).

``--reduced``: the digits model only, 3 classes x 2 seeds, K=4 (fig4: K=2, 4), N=20 (table4:
N=20, 30), a small search: every table, figure and grid is produced, in a few minutes.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

#: The paper's published numbers (arXiv 2507.15260, Tables 1-4): speedup and latent RMSE per K.
PAPER_MAIN = {
    "HunyuanVideo": {"ParaDIGMS": {4: (1.3, 0.188), 6: (1.4, 0.203), 8: (1.4, 0.202)},
                     "SRDS": {4: (1.4, 0.068), 6: (2.2, 0.068), 8: (2.6, 0.068)},
                     "CHORDS": {4: (2.1, 0.066), 6: (2.5, 0.067), 8: (2.9, 0.068)}},
    "Wan2.1": {"ParaDIGMS": {4: (1.5, 0.083), 6: (1.6, 0.090), 8: (1.7, 0.097)},
               "SRDS": {4: (1.3, 0.041), 6: (2.0, 0.043), 8: (2.3, 0.041)},
               "CHORDS": {4: (1.8, 0.034), 6: (2.3, 0.040), 8: (2.7, 0.043)}},
    "CogVideoX1.5": {"ParaDIGMS": {4: (1.3, 0.132), 6: (1.4, 0.159), 8: (1.6, 0.187)},
                     "SRDS": {4: (1.2, 0.056), 6: (1.8, 0.056), 8: (2.1, 0.056)},
                     "CHORDS": {4: (2.0, 0.054), 6: (2.3, 0.054), 8: (2.4, 0.055)}},
    "SD3.5-Large": {"ParaDIGMS": {4: (1.4, 0.347), 6: (1.6, 0.377), 8: (1.7, 0.405)},
                    "SRDS": {4: (1.2, 0.216), 6: (1.8, 0.216), 8: (2.1, 0.216)},
                    "CHORDS": {4: (2.0, 0.208), 6: (2.2, 0.210), 8: (2.4, 0.211)}},
    "Flux": {"ParaDIGMS": {4: (1.4, 0.223), 6: (1.5, 0.256), 8: (1.6, 0.301)},
             "SRDS": {4: (1.3, 0.183), 6: (1.9, 0.183), 8: (2.3, 0.183)},
             "CHORDS": {4: (2.0, 0.173), 6: (2.3, 0.178), 8: (2.6, 0.179)}},
}
PAPER_TABLE3 = {"HunyuanVideo": {8: (2.9, 2.6), 6: (2.5, 2.1), 4: (2.1, 1.8)},  # K: (ours, uniform) speedup
                "Flux": {8: (2.4, 2.2), 6: (2.3, 2.0), 4: (2.0, 1.8)}}
PAPER_TABLE4 = {50: 2.9, 75: 3.4, 100: 3.6}  # HunyuanVideo, K=8: speedup per N
MEDIA_PAPER = {"image": ["SD3.5-Large", "Flux"], "video": ["HunyuanVideo", "Wan2.1", "CogVideoX1.5"]}


class Fail(Exception):
    """Bad input: one line, exit status 2."""


@dataclass
class Settings:
    models: list[str]
    seeds: int
    classes: int
    cores: list[int]  # the tables' K
    scaling_cores: list[int]  # fig4's K
    steps: int
    table4_steps: list[int]
    search_cores: list[int]
    search_theorem: int
    search_local: int
    out: Path
    runs: Path
    eval_overrides: list[str] = field(default_factory=list)
    video_seeds: int | None = None  # seeds per class of the video model (None: seeds)
    command: str = "python scripts/study_embedded.py"

    def seeds_of(self, media: str) -> int:
        return self.video_seeds if media == "video" and self.video_seeds else self.seeds


def settings(a: argparse.Namespace) -> Settings:
    def ints(text: str, name: str) -> list[int]:
        try:
            vals = [int(x) for x in str(text).split(",") if x.strip()]
        except ValueError:
            raise Fail(f"--{name} {text!r} is invalid: give integers separated by commas") from None
        if not vals or min(vals) < 1:
            raise Fail(f"--{name} {text!r} is invalid: give integers >= 1 separated by commas")
        return vals

    if a.reduced:
        s = Settings(["digits"], 2, 3, [4], [2, 4], 20, [20, 30], [4], 6, 6, a.out, a.runs)
    else:
        s = Settings(a.models.split(","), a.seeds, 10, ints(a.cores, "cores"), ints(a.scaling_cores, "scaling-cores"),
                     a.steps, ints(a.table4_steps, "table4-steps"), ints(a.search_cores, "search-cores") if a.search_cores else [],
                     40, 60, a.out, a.runs)
    if a.models and a.reduced and a.models != "digits,moving-digits":
        s.models = a.models.split(",")
    if a.no_search:
        s.search_cores = []
    if s.seeds < 1 or not 1 <= s.classes <= 10:
        raise Fail("--seeds must be >= 1")
    if max(s.cores + s.scaling_cores) > min([s.steps, *s.table4_steps]):
        raise Fail(f"--cores up to {max(s.cores + s.scaling_cores)} need at least that many steps (--steps {s.steps})")
    s.eval_overrides = list(a.eval_override)
    if a.video_seeds is not None:
        if a.video_seeds < 1:
            raise Fail(f"--video-seeds {a.video_seeds} is invalid: it must be >= 1")
        s.video_seeds = a.video_seeds
    return s


# --------------------------------------------------------------------------- sampling


def model_media(model: str) -> str | None:
    from omegaconf import OmegaConf

    from chords.config import CONFIG_DIR

    p = CONFIG_DIR / "model" / f"{model}.yaml"
    return str(OmegaConf.load(p).get("media", "image")) if p.is_file() else None


def prompts_for(media: str, classes: int) -> list[str]:
    """One prompt per digit class; video prompts also name a direction (cycling left, right, up, down)."""
    from chords.digitnet import DIRECTIONS

    if media == "video":
        return [f"a {d} moving {DIRECTIONS[d % len(DIRECTIONS)]}" for d in range(classes)]
    return [f"a handwritten digit {d}" for d in range(classes)]


def sweeps(model: str, media: str, st: Settings, prompt_file: Path) -> list[tuple[str, list[str]]]:
    """(experiment, overrides) for one model: the paper's experiments, the model replaced."""
    main_exp, abl_exp = ("table1", "table3") if media == "video" else ("table2", "table3_image")
    common = [f"model={model}", "hardware=batched", f"prompt_file={prompt_file}", f"model.seed=range(0,{st.seeds_of(media)})",
              f"output_base_path={st.runs}", "summary=false"]
    k = ",".join(map(str, st.cores))
    n = f"model.num_inference_steps={st.steps}"
    return [
        (main_exp, [*common, f"ngpu={k}", n]),
        (abl_exp, [*common, f"ngpu={k}", n]),
        ("table4", [*common, f"ngpu={max(st.cores)}", f"model.num_inference_steps={','.join(map(str, st.table4_steps))}"]),
        ("fig4", [*common, f"ngpu={','.join(map(str, st.scaling_cores))}", n]),
    ]


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _sweep_worker(args: tuple[list[tuple[str, list[str]]], int]) -> int:
    """One model's sweeps in a process of its own (``--jobs``)."""
    jobs, threads = args
    torch.set_num_threads(threads)
    logging.getLogger("chords").setLevel(logging.WARNING)
    try:
        return run_sweeps(jobs, _say)
    except Fail as e:  # a Fail does not cross the process boundary as such
        raise RuntimeError(str(e)) from None


def run_all_sweeps(by_model: list[list[tuple[str, list[str]]]], jobs: int, threads: int) -> int:
    """Every model's sweeps: in this process (jobs=1), or one process per model, ``jobs`` at a time."""
    if jobs == 1 or len(by_model) == 1:
        return sum(run_sweeps(j, _say) for j in by_model)
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(min(jobs, len(by_model))) as pool:
        try:
            return sum(pool.map(_sweep_worker, [(j, threads) for j in by_model]))
        except RuntimeError as e:
            raise Fail(str(e)) from None


def run_sweeps(jobs: list[tuple[str, list[str]]], log) -> int:
    """Every job of every experiment, in this process (complete run folders are skipped)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from chords.config import CONFIG_DIR, ConfigError, expand_overrides, validate
    from chords.runner import run

    GlobalHydra.instance().clear()
    expanded = []
    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        for exp, overrides in jobs:
            for job in expand_overrides([f"+experiment={exp}", *overrides], "base"):
                expanded.append((exp, job))
        done = 0
        for i, (exp, job) in enumerate(expanded):
            cfg = compose(config_name="base", overrides=job)
            try:
                spec = validate(cfg)
            except ConfigError as e:
                raise Fail(f"{exp}: {e}") from None
            t0 = time.perf_counter()
            outcomes = run(cfg, spec)
            fresh = sum(1 for o, _ in outcomes if not o.skipped)
            done += fresh
            if fresh or i == len(expanded) - 1:
                keys = " ".join(o for o in job if not o.startswith(("prompt_file", "output_base_path", "summary", "+experiment")))
                log(f"[{i + 1}/{len(expanded)}] {exp}: {keys}: {fresh} new run(s), {time.perf_counter() - t0:.1f}s")
    return done


# --------------------------------------------------------------------------- eval


#: eval's per-run files: large, and regenerated from the run folders; kept next to them, not in --out
BULKY = ("runs.csv", "whatif_runs.csv", "figure5_data.csv", "eval.log", "cache")


def evaluate(st: Settings, log) -> dict[str, Any]:
    from eval.cli import compose_config, run_eval, validate

    st.out.mkdir(parents=True, exist_ok=True)
    results = {}
    plans = {
        "tables": ["tables=[table1,table2,table3,table4]", "figures=[figure5,grids]",
                   f"filter.num_cores=[{','.join(map(str, st.cores))}]"],
        "figures": ["tables=[]", "figures=[figure4,tradeoff,wallclock]"],
    }
    for name, args in plans.items():
        out = st.out / name
        cfg = validate(compose_config([f"runs=[{st.runs}]", f"out={out}", "formats=[md,csv]", "figure_formats=[png]",
                                       *args, *st.eval_overrides]))
        log(f"eval -> {out}")
        results[name] = run_eval(cfg)
        keep = st.runs / f"eval_{name}"
        keep.mkdir(parents=True, exist_ok=True)
        for bulky in BULKY:
            if (out / bulky).exists():
                if (keep / bulky).exists():
                    shutil.rmtree(keep / bulky) if (keep / bulky).is_dir() else (keep / bulky).unlink()
                shutil.move(str(out / bulky), str(keep / bulky))
    return results


# --------------------------------------------------------------------------- analysis


def _f(x: float, d: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"


def _g(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def _cell(summary, model: str, method: str, k: int, n: int):
    s = summary[(summary["model"] == model) & (summary["method"] == method) & (summary["num_cores"] == k)
                & (summary["num_steps"] == n)]
    return s.iloc[0] if len(s) else None


def _pct(c, col: str) -> str:
    v = c.get(col) if hasattr(c, "get") else None
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.0f}%"


def _quality_head(media: str) -> str:
    return "class acc. / Fréchet dist." if media == "image" else "class acc. / frame consistency / direction acc."


def _quality(c, media: str) -> str:
    """A cell's embedded quality columns (eval.embedded_quality), n/a where eval had none."""
    if media == "image":
        return f"{_pct(c, 'class_accuracy')} / {_f(c.get('frechet_distance'), 1)}"
    return f"{_pct(c, 'class_accuracy')} / {_pct(c, 'frame_consistency')} / {_pct(c, 'direction_accuracy')}"


def analysis(st: Settings, results: dict[str, Any], searches: dict, media_of: dict[str, str], seconds: float,
             skipped: list[str]) -> str:
    tables = results["tables"]
    summary = tables.summaries.get("core_index=1", tables.summary)
    whatif = tables.whatif
    n = st.steps
    lines = [
        "# CHORDS on the embedded models",
        "",
        f"Generated by `{st.command}` "
        f"in {seconds / 60:.1f} min on {platform.processor() or platform.machine()} ({torch.get_num_threads()} thread); "
        f"torch {torch.__version__}. Models: {', '.join(st.models)}; one prompt per digit class x {st.seeds} seeds "
        f"= {st.classes * st.seeds} samples per cell"
        + (f" ({st.video_seeds} seeds, {st.classes * st.video_seeds} samples, for the video model; video prompts name a "
           "direction, cycling left, right, up, down)" if st.video_seeds and st.video_seeds != st.seeds else "")
        + f"; N={n}; K={', '.join(map(str, st.cores))}. Every sentence below "
        "is computed from the numbers it cites; the paper's numbers are from arXiv 2507.15260, Tables 1-4.",
        "",
    ]
    if skipped:
        lines += [f"Not run: {', '.join(skipped)} (model config not installed).", ""]
    lines += ["Files: [tables/](tables/) (table1-4 .md/.csv, whatif.csv, grids, figure5), [figures/](figures/) "
              "(figure4, tradeoff, wallclock)" + (", [search/](search/) (init-sequence search)" if searches else "")
              + f"; the per-run CSVs (runs.csv, whatif_runs.csv) stay next to the run folders ({st.runs.name}/eval_*).", ""]
    lines += ["Speedup counts sequential network passes over the rounds at the returned output (the paper's); CHORDS "
              "returns hit 1 (the fastest core, `core_index=1`, the official default) in Tables 1, 2 and 4, and in "
              "Table 3 the earliest hit within a common latent-RMSE budget (`rmse=auto`); cells are mean [95% CI] over "
              "prompts x seeds. Quality is the digit classifier's verdict on the decoded outputs (README, \"Embedded "
              "models\"): class accuracy and the Fréchet distance of its features to held-out digits (images), class "
              "accuracy, frame consistency and direction accuracy (videos).", ""]
    for model in st.models:
        media = media_of.get(model)
        if media is None:
            continue
        lines += [f"## {model} ({media})", ""]
        # -------- main table next to the paper
        paper = MEDIA_PAPER[media]
        head = "| method | K | speedup | NFE | latent RMSE | " + _quality_head(media) + " | paper speedup (" + ", ".join(paper) + ") |"
        lines += [head, "|---|---|---|---|---|---|---|"]
        seq = summary[(summary["model"] == model) & (summary["method"] == "Sequential") & (summary["num_steps"] == n)]
        if len(seq):
            lines.append(f"| Sequential | 1 | 1.00 | {_f(seq.iloc[0]['nfe'], 0)} | 0 | {_quality(seq.iloc[0], media)} | 1.0 |")
        wins = []
        for k in st.cores:
            best = None
            for method in ("ParaDIGMS", "SRDS", "CHORDS"):
                c = _cell(summary, model, method, k, n)
                if c is None:
                    continue
                pap = ", ".join(_f(PAPER_MAIN[p][method][k][0], 1) if k in PAPER_MAIN[p][method] else "-" for p in paper)
                lines.append(f"| {method} | {k} | {_f(c['speedup'])} [{_f(c.get('speedup_lo'))}, {_f(c.get('speedup_hi'))}] "
                             f"| {_f(c['nfe'], 0)} | {_g(c['latent_rmse'])} | {_quality(c, media)} | {pap} |")
                if best is None or c["speedup"] > best[1]:
                    best = (method, c["speedup"], c["latent_rmse"])
            if best:
                wins.append((k, best))
        lines.append("")
        # -------- equal quality: CHORDS' best fixed hit index whose mean RMSE is within each baseline's
        eq = []
        if whatif is not None and not whatif.empty:
            w = whatif[(whatif["model"] == model) & (whatif["method"] == "CHORDS") & (whatif["num_steps"] == n)
                       & whatif["rule"].str.startswith("core_index=")]
            for k in st.cores:
                wk = w[w["num_cores"] == k]
                for base in ("SRDS", "ParaDIGMS"):
                    c = _cell(summary, model, base, k, n)
                    if c is None or wk.empty or math.isnan(c["latent_rmse"]):
                        continue
                    ok = wk[wk["latent_rmse"] <= c["latent_rmse"]]
                    if ok.empty:
                        eq.append(f"K={k}: no CHORDS hit is, on average, within {base}'s latent RMSE {_g(c['latent_rmse'])} "
                                  f"except the last (speedup 1.0); {base} wins at equal RMSE ({_f(c['speedup'])}x).")
                        continue
                    top = ok.sort_values("speedup", ascending=False).iloc[0]
                    winner = "CHORDS" if top["speedup"] > c["speedup"] else base
                    eq.append(f"K={k}: at {base}'s latent RMSE ({_g(c['latent_rmse'])}, {_f(c['speedup'])}x) CHORDS "
                              f"returns {top['rule'].replace('core_index=', 'hit ')} at {_f(top['speedup'])}x "
                              f"(RMSE {_g(top['latent_rmse'])}): {winner} is faster at equal or lower RMSE.")
        lines += ["**Which method wins at which K.** " + " ".join(
            f"K={k}: {m} has the highest speedup ({_f(sp)}x, RMSE {_g(r)})." for k, (m, sp, r) in wins), ""]
        if eq:
            lines += ["**At equal latent RMSE** (CHORDS' fastest fixed hit index whose mean RMSE is within the "
                      "baseline's, from whatif.csv):", "", *[f"- {e}" for e in eq], ""]
        # -------- calibrated vs uniform (table 3, common budget)
        t3 = tables.summaries.get("rmse=auto")
        if t3 is not None and not t3.empty:
            rows = []
            for k in st.cores:
                ours = t3[(t3["model"] == model) & (t3["num_cores"] == k) & (t3["method"] == "CHORDS") & (t3["num_steps"] == n)]
                uni = t3[(t3["model"] == model) & (t3["num_cores"] == k) & (t3["method"] == "CHORDS (uniform)")
                         & (t3["num_steps"] == n)]
                if len(ours) and len(uni):
                    o, u = ours.iloc[0], uni.iloc[0]
                    pk = PAPER_TABLE3["Flux" if media == "image" else "HunyuanVideo"].get(k)
                    rows.append((k, o, u, pk))
            if rows:
                lines += ["**Calibrated against uniform sequences** at a common latent-RMSE budget (Table 3's rule "
                          "`rmse=auto`: the median hit-1 RMSE of the presets):", "",
                          "| K | preset speedup | uniform speedup | preset RMSE | uniform RMSE | paper (preset / uniform) |",
                          "|---|---|---|---|---|---|"]
                for k, o, u, pk in rows:
                    lines.append(f"| {k} | {_f(o['speedup'])} [{_f(o.get('speedup_lo'))}, {_f(o.get('speedup_hi'))}] | "
                                 f"{_f(u['speedup'])} [{_f(u.get('speedup_lo'))}, {_f(u.get('speedup_hi'))}] | "
                                 f"{_g(o['latent_rmse'])} | {_g(u['latent_rmse'])} | "
                                 f"{'-' if pk is None else f'{pk[0]} / {pk[1]}'} |")
                better = [k for k, o, u, _ in rows if o["speedup"] > u.get("speedup_hi", u["speedup"])]
                worse = [k for k, o, u, _ in rows if o.get("speedup_hi", o["speedup"]) < u["speedup"]]
                lines += ["", f"Presets beat uniform starts (intervals apart) at K = {better or 'none'}; uniform beats "
                          f"the presets at K = {worse or 'none'}; the paper has the presets ahead at every K.", ""]
        # -------- speedup with N (table 4)
        k8 = max(st.cores)
        t4 = summary[(summary["model"] == model) & (summary["method"] == "CHORDS") & (summary["num_cores"] == k8)]
        if len(t4):
            ns = sorted(int(x) for x in t4["num_steps"])
            sp = {int(r["num_steps"]): r for _, r in t4.iterrows()}
            speeds = [sp[m]["speedup"] for m in ns]
            trend = ("grows with N" if all(b > a for a, b in zip(speeds, speeds[1:])) else
                     "does not grow monotonically with N")
            lines += [f"**Speedup against N** (CHORDS, K={k8}, hit 1): " + ", ".join(
                f"N={m}: {_f(sp[m]['speedup'])}x (RMSE {_g(sp[m]['latent_rmse'])})" for m in ns)
                + ("; the paper (HunyuanVideo, K=8): " + ", ".join(f"N={m}: {v}x" for m, v in PAPER_TABLE4.items())
                   if k8 == 8 else "") + f". Here the speedup {trend}; with a fixed hit index it is "
                "N / (K - 1 + N - init_t[-1]) for the preset scaled to N, so the first K - 1 rounds weigh less as N grows.", ""]
        # -------- wall-clock
        fig = results["figures"].summary
        wall = fig[(fig["model"] == model) & (fig["algorithm"] != "sequential") & (fig["num_steps"] == n)]
        if len(wall) and wall["wall_speedup"].notna().any():
            lo, hi = wall["wall_speedup"].min(), wall["wall_speedup"].max()
            slo, shi = wall["speedup"].min(), wall["speedup"].max()
            lines += [f"**Wall-clock** (figures/wallclock_{model}.png): wall-clock speedups {_f(lo)}-{_f(hi)}x against "
                      f"round speedups {_f(slo)}-{_f(shi)}x, hardware {', '.join(sorted(set(wall['hardware'])))}. "
                      + ("On one CPU a batched round of K states costs more than one state, so the rounds saved do "
                         "not all become seconds saved; the round count is the device-independent measure (GPUs run "
                         "the K states of a round on K devices)." if hi < shi else ""), ""]
        # -------- disagreements
        dis = []
        for k, (m, sp, r) in wins:
            if m != "CHORDS":
                dis.append(f"K={k}: {m} is faster than CHORDS here; the paper has CHORDS fastest at every K.")
        for k in st.cores:
            c = _cell(summary, model, "CHORDS", k, n)
            if c is None:
                continue
            paper_sp = [PAPER_MAIN[p]["CHORDS"][k][0] for p in paper if k in PAPER_MAIN[p]["CHORDS"]]
            if paper_sp and not min(paper_sp) - 0.05 <= c["speedup"] <= max(paper_sp) + 0.05:
                rng = f"{min(paper_sp)}x" if min(paper_sp) == max(paper_sp) else f"{min(paper_sp)}-{max(paper_sp)}x"
                dis.append(f"K={k}: CHORDS {_f(c['speedup'])}x with hit 1, the paper {rng}: "
                           f"the paper's speedups vary by model at a fixed K, which a fixed hit index cannot do "
                           f"(docs/results.md: which stop rule reproduces which number).")
        if dis:
            lines += ["**Where this disagrees with the paper:**", "", *[f"- {d}" for d in dis], ""]
        # -------- search
        for k, rep in sorted(searches.get(model, {}).items()):
            lines += [f"**Init-sequence search, K={k}** ([search/{model}_k{k}.md](search/{model}_k{k}.md)): "
                      f"best `{'-'.join(map(str, rep.best))}` against the preset `{'-'.join(map(str, rep.preset))}`. "
                      + rep.verdict, ""]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--reduced", action="store_true", help="digits only, 3 classes x 2 seeds, K=4, N=20: a smoke test")
    ap.add_argument("--models", default="digits,moving-digits", help="embedded models (configs/model names)")
    ap.add_argument("--seeds", type=int, default=10, help="seeds per class (default 10)")
    ap.add_argument("--cores", default="4,6,8", help="K of the tables (default 4,6,8)")
    ap.add_argument("--scaling-cores", default="2,3,4,5,6,7,8", help="K of Figure 4 (default 2..8)")
    ap.add_argument("--steps", type=int, default=50, help="N (default 50)")
    ap.add_argument("--table4-steps", default="50,75,100", help="N of Table 4 (default 50,75,100)")
    ap.add_argument("--search-cores", default="4,8", help="K of the init-sequence search ('' for none)")
    ap.add_argument("--no-search", action="store_true", help="skip the init-sequence search")
    ap.add_argument("--out", type=Path, default=ROOT / "study_out",
                    help="where the results go (default study_out; the committed study: --out docs/results)")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "study", help="run folders (default runs/study)")
    ap.add_argument("--eval-override", action="append", default=[], help="extra eval override, e.g. clip.enabled=true")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fastest for these small models)")
    ap.add_argument("--video-seeds", type=int, default=None, help="seeds per class of the video model (default: --seeds)")
    ap.add_argument("--jobs", type=int, default=2, help="sampling processes, one model each (default 2: image and video side by side)")
    ap.add_argument("--fresh", action="store_true", help="delete --runs first (otherwise complete run folders are reused)")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    say = _say
    try:
        if a.threads < 1:
            raise Fail(f"--threads {a.threads} is invalid: it must be >= 1")
        if a.jobs < 1:
            raise Fail(f"--jobs {a.jobs} is invalid: it must be >= 1")
        torch.set_num_threads(a.threads)
        st = settings(a)
        st.command = " ".join(["python scripts/study_embedded.py", *(sys.argv[1:] if argv is None else argv)])
        logging.getLogger("chords").setLevel(logging.WARNING)
        logging.getLogger("eval").setLevel(logging.WARNING)
        if a.fresh and st.runs.exists():
            shutil.rmtree(st.runs)
        st.runs.mkdir(parents=True, exist_ok=True)
        media_of = {m: model_media(m) for m in st.models}
        skipped = [m for m, md in media_of.items() if md is None]
        for m in skipped:
            say(f"study: model {m!r} is not installed (configs/model/{m}.yaml); skipped")
        present = [m for m in st.models if media_of[m]]
        if not present:
            raise Fail(f"--models {','.join(st.models)}: none is installed")
        by_model = []
        for m in present:
            prompt_file = st.runs / f"prompts_{media_of[m]}.txt"
            prompt_file.write_text("".join(p + "\n" for p in prompts_for(media_of[m], st.classes)), encoding="utf-8")
            by_model.append(sweeps(m, media_of[m], st, prompt_file))
        made = run_all_sweeps(by_model, a.jobs, a.threads)
        say(f"sampling done: {made} new run folder(s) in {time.perf_counter() - t0:.0f}s")
        results = evaluate(st, say)
        searches: dict[str, dict[int, Any]] = {}
        if st.search_cores:
            import importlib.util

            spec = importlib.util.spec_from_file_location("search_init", ROOT / "scripts" / "search_init.py")
            S = importlib.util.module_from_spec(spec)
            sys.modules["search_init"] = S
            spec.loader.exec_module(S)
            prompts = prompts_for("image", st.classes)
            half = max(1, st.seeds // 2)
            for m in present:
                if media_of[m] != "image":
                    continue  # the search samples in-process; videos would take most of the time budget
                problem = S.Problem(m, st.steps)
                for k in st.search_cores:
                    say(f"init search: {m}, K={k}")
                    rep = S.search(problem, k, prompts, list(range(half)), list(range(half, max(st.seeds, half + 1))),
                                   theorem_count=st.search_theorem, local_evals=st.search_local)
                    (st.out / "search").mkdir(parents=True, exist_ok=True)
                    (st.out / "search" / f"{m}_k{k}.md").write_text(rep.markdown(), encoding="utf-8")
                    searches.setdefault(m, {})[k] = rep
        text = analysis(st, results, searches, media_of, time.perf_counter() - t0, skipped)
        (st.out / "README.md").write_text(text, encoding="utf-8")
        (st.out / "study.json").write_text(json.dumps({
            "models": st.models, "skipped": skipped, "seeds": st.seeds, "video_seeds": st.seeds_of("video"), "classes": st.classes, "cores": st.cores,
            "scaling_cores": st.scaling_cores, "steps": st.steps, "table4_steps": st.table4_steps,
            "seconds": time.perf_counter() - t0, "threads": torch.get_num_threads(),
        }, indent=1), encoding="utf-8")
    except Fail as e:
        print(f"study_embedded.py: {e}", file=sys.stderr)
        return 2
    say(f"study done in {(time.perf_counter() - t0) / 60:.1f} min: {st.out / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

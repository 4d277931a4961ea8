"""What-if stop rules (eval/whatif.py) against real runs that used those rules, bitwise.

Runs come from the runner itself (embedded models, in-process backend): one run per model
without a stop rule (criterion none: every hit kept) and one real run per rule
(``core_index=i`` for every index, ``residual=t`` for thresholds that stop at different hits).
Eval's what-if view of the kept hits must equal each real run exactly: the returned latent
(bitwise), output index and round, rounds, nfe, and the latent RMSE against the reference.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from chords.config import validate
from chords.runner import run
from eval import whatif as W
from eval.cli import compose_config, run_eval
from eval.cli import validate as eval_validate
from eval.metrics import run_rows
from eval.runs import Problems, assign_labels, load_runs, pair_references
from tests.conftest import compose

MODELS = {"gaussian": 12, "digits": 16}  # model -> N


def _run(tmp: Path, model: str, n: int, stop: list[str], k: int = 4) -> Path:
    prompts = tmp / "prompts.txt"
    prompts.write_text("a handwritten digit 3\na handwritten digit 8\n")
    out = tmp / "_".join([model, *[s.split("=")[-1] for s in stop]])
    cfg = compose([f"model={model}", "algo=chords", "hardware=local", f"ngpu={k}", f"model.num_inference_steps={n}",
                   f"prompt_file={prompts}", f"output_base_path={out}", "algo.full_return=false", "summary=false", *stop])
    run(cfg, validate(cfg))
    return out


def _load(root: Path):
    problems = Problems()
    runs = load_runs([root], problems)
    assign_labels(runs, problems)
    return runs, pair_references(runs, problems), problems


def _chords(runs):
    return sorted((r for r in runs if r.algorithm == "chords"), key=lambda r: r.prompt)


@pytest.fixture(scope="module", params=sorted(MODELS))
def kept(request, tmp_path_factory):
    model = request.param
    tmp = tmp_path_factory.mktemp(model)
    root = _run(tmp, model, MODELS[model], ["algo.stopping_kwargs.criterion=none"])
    return model, tmp, root


def _check_same(view_run, real_run, refs_view, refs_real) -> None:
    assert view_run.output_index == real_run.output_index
    assert view_run.output_round == real_run.output_round == real_run.rounds
    assert view_run.rounds == real_run.rounds and view_run.nfe == real_run.nfe
    a = view_run.load_latent(view_run.output_latent)
    b = real_run.load_latent("output")
    assert a.dtype == b.dtype and torch.equal(a, b)  # bitwise
    ref_a, ref_b = refs_view[view_run.path], refs_real[real_run.path]
    assert torch.equal(ref_a.load_latent("output"), ref_b.load_latent("output"))


def test_core_index_what_if_equals_real_runs_bitwise(kept):
    model, tmp, root = kept
    runs, refs, problems = _load(root)
    trs = W.traces(runs, refs, ["chords"], problems)
    assert len(trs) == 2 and not problems.lines
    for i in range(5):  # K=4: the coarse shot and 4 cores
        real_root = _run(tmp, model, MODELS[model], ["algo.stopping_kwargs.criterion=core_index",
                                                      f"algo.stopping_kwargs.index={i}"])
        real, real_refs, _ = _load(real_root)
        view = W.view(runs, W.parse_rule(f"core_index={i}"), trs, {}, problems)
        for v, r in zip(_chords(view), _chords(real)):
            assert v.prompt == r.prompt and v.whatif == f"core_index={i}"
            _check_same(v, r, refs, real_refs)
        # the latent RMSE eval reports: the same float, whether from the trace or from the real output
        rows_v = run_rows(_chords(view), refs, problems).set_index("prompt")
        rows_r = run_rows(_chords(real), real_refs, problems).set_index("prompt")
        for col in ("latent_rmse", "speedup", "output_round", "nfe"):
            assert (rows_v[col] == rows_r[col]).all(), col


def test_residual_what_if_equals_real_runs_bitwise(kept):
    model, tmp, root = kept
    runs, refs, problems = _load(root)
    trs = W.traces(runs, refs, ["chords"], problems)
    # thresholds between consecutive residuals of the first prompt, so each stops at another hit
    res = sorted(x for x in next(iter(trs.values())).residual if math.isfinite(x))
    thresholds = [res[0] / 2] + [math.sqrt(a * b) for a, b in zip(res, res[1:]) if b > a] + [res[-1] * 2]
    picked = set()
    for t in thresholds:
        real_root = _run(tmp, model, MODELS[model], ["algo.stopping_kwargs.criterion=residual",
                                                      f"algo.stopping_kwargs.threshold={t!r}"])
        real, real_refs, _ = _load(real_root)
        view = W.view(runs, W.Rule("residual", t), trs, {}, problems)
        for v, r in zip(_chords(view), _chords(real)):
            _check_same(v, r, refs, real_refs)
            picked.add(v.output_index)
    assert len(picked) >= 3  # the thresholds did stop at different hits


def test_tables_from_kept_hits_equal_tables_from_real_runs(kept, tmp_path):
    """Table 2 under stop.table2=core_index=2 from the kept hits: the same speedup, NFE and latent
    RMSE as Table 2 from real core_index=2 runs, and its caption names the rule."""
    model, tmp, root = kept
    real_root = _run(tmp, model, MODELS[model], ["algo.stopping_kwargs.criterion=core_index",
                                                  "algo.stopping_kwargs.index=2"])
    cfg = lambda runs, out, *o: eval_validate(compose_config([f"runs=[{runs}]", f"out={out}", "figures=[]", *o]))  # noqa: E731
    a = run_eval(cfg(root, tmp_path / "a", "stop.table2=core_index:2", "tables=[table2]"))
    b = run_eval(cfg(real_root, tmp_path / "b", "tables=[table2]"))
    ta, tb = a.tables["table2"].numeric, b.tables["table2"].numeric
    for col in ("K4_speedup", "K4_speedup_lo", "K4_speedup_hi", "K4_nfe", "K4_latent_rmse", "K4_latent_rmse_lo", "K4_n"):
        assert ta[col].tolist() == pytest.approx(tb[col].tolist(), nan_ok=True, rel=0, abs=0), col
    assert "core_index=2" in a.tables["table2"].caption and "what-if" in a.tables["table2"].caption
    assert "what-if" not in b.tables["table2"].caption
    # whatif.csv lists every index and the residual thresholds per cell
    w = a.whatif
    rules = set(w["rule"])
    assert {f"core_index={i}" for i in range(5)} <= rules and "residual=0.0004" in rules and "rmse=auto" in rules
    row = w[(w["rule"] == "core_index=2") & (w["method"] == "CHORDS")].iloc[0]
    assert row["speedup"] == pytest.approx(float(tb["K4_speedup"].iloc[-1]), rel=0, abs=0)


def test_rmse_budget_picks_the_earliest_hit_within_it(kept):
    model, tmp, root = kept
    runs, refs, problems = _load(root)
    trs = W.traces(runs, refs, ["chords"], problems)
    for t in trs.values():
        rm = t.rmse
        assert rm[-1] == 0.0  # CHORDS' last hit is the sequential solution
        b = sorted(rm)[len(rm) // 2]
        i = W.choose(t, W.Rule("rmse", b))
        assert rm[i] <= b and all(x > b for x in rm[:i])
    budgets = W.auto_budgets(trs)
    assert set(budgets) == {(model, 4, MODELS[model])}  # one fixed budget per (model, K, N)
    import statistics

    assert all(t.run.init_kind == "ours" for t in trs.values())  # init_t: preset
    assert budgets[(model, 4, MODELS[model])] == statistics.median(t.rmse[1] for t in trs.values())


def test_auto_budget_of_a_cell_does_not_move_when_other_runs_join(kept):
    """rmse=auto: the K=4 budget is the same whether K=6 preset runs sit in the eval folder or not,
    and the caption prints each (model, K, N) budget."""
    model, tmp, root = kept
    runs, refs, problems = _load(root)
    alone = W.auto_budgets(W.traces(runs, refs, ["chords"], problems))
    more = _run(tmp, model, MODELS[model], ["algo.stopping_kwargs.criterion=none", "algo.num_cores=6"], k=6)
    runs2, refs2, problems2 = _load(tmp)
    both = W.auto_budgets(W.traces([r for r in runs2 if r.path.is_relative_to(root) or r.path.is_relative_to(more)],
                                   refs2, ["chords"], problems2))
    k4 = (model, 4, MODELS[model])
    assert both[k4] == alone[k4] and (model, 6, MODELS[model]) in both
    text = W.parse_rule("rmse=auto").describe(both)
    assert f"{model} K=4 N={MODELS[model]}: {alone[k4]:.3g}" in text and f"{model} K=6 N={MODELS[model]}" in text


def test_parse_rule():
    assert W.parse_rule("core_index=2") == W.Rule("core_index", 2)
    assert W.parse_rule("residual=4e-4") == W.Rule("residual", 4e-4)
    assert W.parse_rule("rmse=auto").auto and W.parse_rule("as_run").kind == "as_run"
    for bad in ("core_index=1.5", "residual=-1", "rmse=x", "index", "speedup=2"):
        with pytest.raises(ValueError, match="is invalid: use as_run, core_index=I"):
            W.parse_rule(bad)


def test_bad_stop_rule_in_eval_config_is_one_line_exit_2(tmp_path, capsys):
    from eval.cli import main

    (tmp_path / "runs").mkdir()
    code = main([f"runs=[{tmp_path / 'runs'}]", f"out={tmp_path / 'o'}", "stop.table3=fastest"])
    err = capsys.readouterr().err
    assert code == 2 and "stop.table3: stop rule 'fastest' is invalid" in err and not (tmp_path / "o").exists()

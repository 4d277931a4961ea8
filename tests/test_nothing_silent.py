"""Nothing is silently accepted: keys added with '+', inline prompts, samples per prompt, and
eval's own settings (issue 19, item 4). Each refusal is one line and exit status 2."""
from __future__ import annotations

import pytest

from chords.config import ConfigError, precheck_argv, validate
from chords.runner import run
from tests.conftest import compose


def _main_refuses(argv, capsys) -> str:
    from chords.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("override,words", [
    ("+foo=1", "unknown key 'foo' in '+foo=1'"),
    ("+model.foo=1", "unknown key 'model.foo' in '+model.foo=1'"),
    ("++algo.bar=2", "unknown key 'algo.bar' in '++algo.bar=2'"),
    ("+prompt=a 7", "'prompt' is a setting already: write 'prompt=a 7'"),
    ("model.num_images_per_prompt=2", "model.num_images_per_prompt 2 is not supported by model 'digits'"),
    ("prompt=[]", "prompt [] is invalid"),
])
def test_added_or_unusable_keys_are_one_line_exit_2(override, words, capsys):
    assert words in _main_refuses([override], capsys)


def test_experiment_keys_added_with_plus_still_compose():
    with pytest.raises(ConfigError, match="prompt_file"):  # gets past the keys to the prompt file check
        precheck_argv(["-m", "+experiment=table2", "model=digits", "prompt_file=nope.txt"])


def test_samples_per_prompt_where_a_pipeline_batches_them():
    cfg = compose(["model=tiny-flux", "model.num_images_per_prompt=2", "algo=sequential", "ngpu=1"])
    validate(cfg, check_output=False, check_weights=False)  # the diffusers adapters sample n per prompt


@pytest.mark.parametrize("value,prompts", [
    ('"a handwritten digit 7"', ["a handwritten digit 7"]),
    ('["a handwritten digit 3","a handwritten digit 7"]', ["a handwritten digit 3", "a handwritten digit 7"]),
])
def test_inline_prompts_replace_the_prompt_file(tmp_path, value, prompts):
    cfg = compose(["model=gaussian", "hardware=local", "ngpu=2", "model.num_inference_steps=6", f"prompt={value}",
                   f"output_base_path={tmp_path}", "prompt_file=does-not-exist.txt", "summary=false", "grid=false"])
    spec = validate(cfg)
    assert spec.prompts == prompts
    outcomes = run(cfg, spec)
    assert [o.prompt for o, _ in outcomes] == prompts
    # the same prompts from a file give the same run folders: prompt= is not part of a run's identity
    f = tmp_path / "p.txt"
    f.write_text("\n".join(prompts) + "\n")
    cfg2 = compose(["model=gaussian", "hardware=local", "ngpu=2", "model.num_inference_steps=6", f"prompt_file={f}",
                    f"output_base_path={tmp_path}", "summary=false", "grid=false"])
    again = run(cfg2, validate(cfg2))
    assert [o.folder for o, _ in again] == [o.folder for o, _ in outcomes] and all(o.skipped for o, _ in again)


@pytest.mark.parametrize("override,words", [
    ("table4.algorithms=[nosuch]", "table4.algorithms: unknown 'nosuch'"),
    ("cache=maybe", "cache='maybe': accepted: true, false"),
    ("clip.device=nonsense", "clip.device='nonsense': accepted: auto"),
    ("vbench.device=gpu7", "vbench.device='gpu7'"),
    ("+foo=1", "unknown key 'foo'"),
    ("+clip.foo=2", "unknown key 'clip.foo'"),
    ("clip.enabled=maybe", "clip.enabled='maybe'"),
])
def test_eval_settings_are_one_line_exit_2(override, words, tmp_path, capsys):
    from eval.cli import main

    assert main([f"runs=[{tmp_path}]", f"out={tmp_path / 'ev'}", override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "ev").exists()


def test_keys_an_adapter_reads_may_still_be_added():
    """'+model.KEY' stays open for the optional keys the adapters read (chords.config.OPTIONAL_MODEL_KEYS)
    and for those an adapter of one's own declares in ``config_keys``."""
    precheck_argv(["model=tiny-flux", "+model.scheduler=euler", "algo=sequential", "ngpu=1"])
    precheck_argv(["model.adapter=tests.fault_adapters.FaultyDigits", "+model.fault=slow_load", "+model.fault_s=1",
                   "hardware=cpu", "ngpu=2"])
    with pytest.raises(ConfigError, match="unknown key 'model.fault'"):
        precheck_argv(["+model.fault=slow_load"])  # the default adapter does not read it

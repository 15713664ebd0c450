"""params.yaml validation: every bad value gets one clear error naming the key and the value."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tripletml.params import ParamsError, load_params, validate_params

REPO = Path(__file__).resolve().parents[1]


def test_the_committed_params_file_is_valid():
    p = load_params(REPO / "params.yaml")
    hard = p.strategy("hard")
    assert hard["strategy"] == "hard" and hard["loops"] == p.train.loops


def test_strategy_overrides_fall_back_to_train():
    p = validate_params({"train": {"loops": 7, "batch_size": 32}, "strategies": {"hard": {"batch_size": 16}}})
    assert p.strategy("hard")["batch_size"] == 16
    assert p.strategy("hard")["loops"] == 7
    assert p.strategy("random")["batch_size"] == 32
    p = validate_params({"train": {"classes_per_batch": 6}, "strategies": {"hard": {"batches": "triplets"}, "batch_all": {"classes_per_batch": 16}}})
    assert (p.strategy("random")["batches"], p.strategy("hard")["batches"]) == ("classes", "triplets")
    assert (p.strategy("random")["classes_per_batch"], p.strategy("batch_all")["classes_per_batch"]) == (6, 16)
    assert p.strategy("hard")["samples_per_class"] is None  # every drawing (selection.make_strategy)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"train": {"lerning_rate": 0.1}}, "unknown key 'train.lerning_rate' (did you mean 'learning_rate'?)"),
        ({"strategies": {"hard": {"refresh_evry": 5}}}, "unknown key 'strategies.hard.refresh_evry' (did you mean 'refresh_every'?)"),
        ({"modle": {}}, "unknown key 'modle' (did you mean 'model'?)"),
        ({"train": {"loops": 0}}, "train.loops = 0"),
        ({"train": {"steps_per_loop": -5}}, "train.steps_per_loop = -5"),
        ({"train": {"batch_size": 0}}, "train.batch_size = 0"),
        ({"train": {"margin": -0.1}}, "train.margin = -0.1"),
        ({"train": {"loops": "ten"}}, "train.loops = 'ten'"),
        ({"model": {"arch": "resnet"}}, "model.arch = 'resnet'"),
        ({"extra_strategies": ["hardest"]}, "unknown strategy 'hardest'"),
        ({"data": {"image_size": 28}, "model": {"arch": "schroff"}}, "data.image_size = 28: too small for model.arch 'schroff' (needs >= 38)"),
        ({"strategies": {"hard": {"warmup_loops": 10}}}, "strategies.hard.warmup_loops = 10: must be below loops"),
        ({"train": {"distribute": "spark"}}, "train.distribute = 'spark'"),
        ({"train": {"cpu_replicas": 0}}, "train.cpu_replicas = 0"),
        ({"evaluate": {"tta_shift": -1}}, "evaluate.tta_shift = -1"),
        ({"model": {"pool_padding": "full"}}, "model.pool_padding = 'full'"),
        ({"model": {"final_pool": "sometimes"}}, "model.final_pool = 'sometimes'"),
        ({"train": {"batches": "pairs"}}, "train.batches = 'pairs'"),
        ({"train": {"classes_per_batch": 1}}, "train.classes_per_batch = 1"),
        ({"strategies": {"batch_all": {"batches": "triplets"}}}, "strategies.batch_all.batches = 'triplets': batch_all always trains on class batches"),
        ({"strategies": {"hard": {"samples_per_class": 5}}}, "strategies.hard.samples_per_class = 5: hard in class batches takes the nearest"),
        ({"data": {"image_size": 28}, "evaluate": {"tta_shift": 14}}, "evaluate.tta_shift = 14: shifts must stay below half of data.image_size (28)"),
    ],
)
def test_bad_values_name_the_key_and_value(raw, expected):
    with pytest.raises(ParamsError) as err:
        validate_params(raw, "params.yaml")
    assert expected in str(err.value)
    assert str(err.value).startswith("params.yaml: ")
    assert "\n" not in str(err.value)


def test_n_way_above_the_smallest_official_evaluation_alphabet_is_refused(tmp_path):
    # Nothing prepared yet: the check uses the official evaluation set (Angelic, 20 characters).
    raw = {"data": {"prepared_dir": str(tmp_path)}, "evaluate": {"n_way": 21}}
    with pytest.raises(ParamsError, match=r"evaluate.n_way = 21: larger than .*'Angelic', 20 characters"):
        validate_params(raw)
    raw["evaluate"]["n_way"] = 20
    validate_params(raw)


def test_n_way_is_checked_against_the_prepared_test_set(tmp_path):
    summary = {"test": {"smallest_alphabet": {"name": "Eval0", "characters": 5}}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    raw = {"data": {"prepared_dir": str(tmp_path)}, "evaluate": {"n_way": 6}}
    with pytest.raises(ParamsError, match=r"params.yaml: evaluate.n_way = 6: .*'Eval0', 5 characters"):
        validate_params(raw)
    raw["evaluate"]["n_way"] = 5
    validate_params(raw)
    # prepare, which rewrites that summary, checks against the official set instead
    raw["evaluate"]["n_way"] = 20
    validate_params(raw, use_prepared=False)


def test_unreadable_yaml_is_one_line(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match=r"params.yaml: not valid YAML"):
        load_params(bad)


def test_a_stage_with_bad_params_exits_before_work(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": {"margin": -1}}))
    res = subprocess.run([sys.executable, str(REPO / "stages" / "prepare.py")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [res.stderr.strip()], "one line"
    assert "train.margin = -1" in res.stderr
    assert not (tmp_path / "data").exists(), "nothing written"


def test_the_readme_command_for_the_assignment_profile_gives_its_settings():
    """README's `dvc exp run -S ...` applied to params.yaml is the course's configuration."""
    import re

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split("### The assignment's own configuration", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    for key, value in re.findall(r"-S '?([\w.]+)=([^'\s]+)'?", block):
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    p = validate_params(raw, use_prepared=False)
    assert (p.data.image_size, p.model.arch, p.evaluate.tta_shift, p.extra_strategies) == (105, "schroff", 0, [])
    for name in ("random", "hard"):
        s = p.strategy(name)
        assert s["batches"] == "triplets" and s["batch_size"] == 64  # 64 triplets through the 3-branch network
        assert (s["loops"], s["steps_per_loop"], s["margin"], s["learning_rate"]) == (10, 100, 0.2, 0.001)
        assert (s["optimizer"], s["lr_schedule"], s["augment"], s["precision"]) == (
            "adam", "constant", {"rotations": False, "affine": 0.0, "flips": False}, "float32")
        assert s["warmup_loops"] == 0
    assert p.strategy("hard")["refresh_every"] == 0  # exact mining against the current network

"""The named profiles resolve to exactly the protocol they claim."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

from tripletml.params import apply_overrides, validate_params

REPO = Path(__file__).resolve().parents[1]


def _runner():
    spec = importlib.util.spec_from_file_location("profile_run", REPO / "profiles" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _resolved(name: str):
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    return validate_params(apply_overrides(raw, _runner().overrides(name)), f"profiles/{name}.yaml", use_prepared=False)


def test_the_assignment_profile_is_the_assignments_protocol():
    p = _resolved("assignment")
    assert (p.data.image_size, p.data.validation_alphabets) == (105, 0)  # every pixel; all 30 background alphabets
    assert (p.model.arch, p.model.embedding_dim) == ("schroff", None)  # its network at its own width
    assert p.trained() == ["random", "hard"]
    settings = {name: p.strategy(name) for name in p.trained()}
    for name, s in settings.items():
        assert (s.sampler, s.miner, s.batch_size) == ("triplets", name, 64)  # hard: exact, every step
        assert (s.loops, s.steps_per_loop) == (10, 100)
        assert (s.margin, s.soft_margin, s.distance) == (0.2, False, "sqeuclidean")
        assert (s.optimizer, s.learning_rate, s.lr_schedule) == ("adam", 0.001, "constant")  # Keras defaults
        assert s.augment.model_dump() == {"rotations": False, "affine": 0.0, "flips": False}
        assert (s.test_tasks, s.n_way) == (250, 20)  # 250 fresh 20-way tasks per loop, best loop reported
        assert s.precision == "mixed_bfloat16"  # set by the profile: bf16 products, float32 weights (README)
    a, b = (s.model_dump() for s in settings.values())
    assert {k for k in a if a[k] != b[k]} == {"miner", "strategy"}  # the pair differs only in the miner
    assert (p.evaluate.tta_shift, p.evaluate.assignment_tasks, p.evaluate.n_way) == (0, 250, 20)


def test_the_profile_becomes_dvc_set_params_that_parse_back():
    run = _runner()
    values = run.overrides("assignment")
    args = run.set_params(values)
    assert args[::2] == ["-S"] * len(values)
    parsed = {k: yaml.safe_load(v) for k, _, v in (a.partition("=") for a in args[1::2])}
    assert parsed == values and parsed["model.embedding_dim"] is None and parsed["extra_strategies"] == []


def test_the_readme_runs_the_profile():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split("### The assignment's own configuration", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    assert "python profiles/run.py assignment" in block


def _flat(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def test_the_long_profile_is_the_default_but_for_its_chosen_levers():
    default = validate_params(yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8")), use_prepared=False)
    long = _resolved("long")
    a, b = _flat(default.model_dump()), _flat(long.model_dump())
    assert {k for k in a if a[k] != b[k]} == set(_runner().overrides("long")), "every override changes something"
    assert long.data == default.data, "the same data and validation alphabets: chosen on those, scored on the test set"
    assert long.trained() == default.trained() and long.model.residual
    assert all(long.strategy(name).val_within_alphabet for name in long.trained()), "chosen on its aim: within one alphabet"
    s = long.strategy("batch_all")
    assert s.loops * s.steps_per_loop > 4 * default.strategy("batch_all").loops * default.strategy("batch_all").steps_per_loop


def test_the_readme_runs_the_long_profile():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split("### The long profile", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    assert "python profiles/run.py long" in block

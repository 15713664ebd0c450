"""params.yaml validation: every bad value gets one clear error naming the key and the value."""

import json
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from tripletml.params import (
    MAX_IMAGES_PER_STEP,
    Params,
    ParamsError,
    StrategyParams,
    apply_overrides,
    data_facts,
    load_params,
    validate_params,
)

REPO = Path(__file__).resolve().parents[1]
PAIR = {"random": {"sampler": "triplets", "miner": "random"}, "hard": {"sampler": "triplets", "miner": "hard"}}


def _with(**strategies) -> dict:
    """A strategies mapping: the assignment's pair plus (or replaced by) the given ones."""
    return {**PAIR, **strategies}


def _error(raw: dict) -> str:
    with pytest.raises(ParamsError) as err:
        validate_params(raw, "params.yaml")
    message = str(err.value)
    assert message.startswith("params.yaml: ") and "\n" not in message
    return message


# ----------------------------------------------------------------------------- the committed file


def test_the_committed_params_file_is_valid_and_trains_its_design():
    p = load_params(REPO / "params.yaml")
    assert p.trained() == ["random", "hard", *p.extra_strategies]
    design = {name: (p.strategy(name).sampler, p.strategy(name).miner) for name in p.trained()}
    assert design["random"] == ("triplets", "random") and design["hard"] == ("triplets", "hard")
    for name, (sampler, miner) in design.items():
        assert sampler in ("triplets", "classes")
        if sampler == "triplets":
            assert miner in ("random", "hard")


@pytest.mark.parametrize("pair", [("random", "hard"), ("random_classes", "hard_classes")])
def test_the_committed_pairs_differ_in_the_miner_only(pair):
    """The paired comparisons are fair only if nothing but the miner differs."""
    p = load_params(REPO / "params.yaml")
    a, b = (p.strategy(name).model_dump() for name in pair)
    assert a.keys() == b.keys()
    assert {k for k in a if a[k] != b[k]} == {"miner", "strategy"}
    assert (a["miner"], b["miner"]) == ("random", "hard")


def test_the_committed_samplers_differ_in_the_sampler_only():
    """Likewise the sampler comparisons: random against random_classes, hard against hard_classes.

    Only the sampler and its own key (samples_per_class, unset: every drawing) may differ."""
    p = load_params(REPO / "params.yaml")
    for triplets, classes in (("random", "random_classes"), ("hard", "hard_classes")):
        a, b = p.strategy(triplets).model_dump(), p.strategy(classes).model_dump()
        assert {k for k in a if a[k] != b[k]} == {"sampler", "strategy"}


# ----------------------------------------------------------------------------- effective settings


def test_strategy_overrides_fall_back_to_train():
    p = validate_params(
        {
            "train": {"loops": 7, "batch_size": 32, "classes_per_batch": 6, "test_tasks": 100},
            "strategies": _with(
                hard={"sampler": "triplets", "miner": "hard", "batch_size": 16},
                batch_all={"sampler": "classes", "miner": "batch_all", "classes_per_batch": 16, "samples_per_class": 4},
            ),
            "extra_strategies": ["batch_all"],
        }
    )
    hard, random, batch_all = p.strategy("hard"), p.strategy("random"), p.strategy("batch_all")
    assert (hard.batch_size, random.batch_size) == (16, 32)
    assert hard.loops == random.loops == batch_all.loops == 7
    assert hard.test_tasks == 100
    assert (random.classes_per_batch, batch_all.classes_per_batch) == (6, 16)
    assert (batch_all.sampler, batch_all.miner, batch_all.samples_per_class) == ("classes", "batch_all", 4)
    assert hard.samples_per_class is None  # no shared value: every drawing
    assert (hard.strategy, batch_all.strategy) == ("hard", "batch_all")
    with pytest.raises(ParamsError, match=r"strategies.hardd: no such strategy \(did you mean 'hard'\?\)"):
        p.strategy("hardd")


def test_defaults_are_the_assignment_pair():
    p = validate_params({})
    assert p.trained() == ["random", "hard"]
    assert (p.strategy("random").sampler, p.strategy("random").miner) == ("triplets", "random")
    assert (p.strategy("hard").sampler, p.strategy("hard").miner) == ("triplets", "hard")
    assert p.train.test_tasks == 250


def test_trained_order_is_the_pair_then_the_extras_as_listed():
    strategies = _with(
        batch_all={"sampler": "classes", "miner": "batch_all"},
        random_classes={"sampler": "classes", "miner": "random"},
        semi_hard={"sampler": "classes", "miner": "semi_hard"},
    )
    p = validate_params({"strategies": strategies, "extra_strategies": ["batch_all", "random_classes", "batch_all"]})
    assert p.trained() == ["random", "hard", "batch_all", "random_classes"]  # once each; semi_hard defined, not trained
    p = validate_params({"strategies": strategies, "extra_strategies": ["semi_hard"]})
    assert p.trained() == ["random", "hard", "semi_hard"]


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"train": {"lerning_rate": 0.1}}, "unknown key 'train.lerning_rate' (did you mean 'learning_rate'?)"),
        ({"strategies": _with(hard={**PAIR["hard"], "magin": 1.0})}, "unknown key 'strategies.hard.magin' (did you mean 'margin'?)"),
        ({"modle": {}}, "unknown key 'modle' (did you mean 'model'?)"),
        ({"train": {"loops": 0}}, "train.loops = 0"),
        ({"train": {"steps_per_loop": -5}}, "train.steps_per_loop = -5"),
        ({"train": {"batch_size": 0}}, "train.batch_size = 0"),
        ({"train": {"margin": -0.1}}, "train.margin = -0.1"),
        ({"train": {"loops": "ten"}}, "train.loops = 'ten'"),
        ({"train": {"test_tasks": 0}}, "train.test_tasks = 0"),
        ({"model": {"arch": "resnet"}}, "model.arch = 'resnet'"),
        ({"data": {"image_size": 28}, "model": {"arch": "schroff"}}, "data.image_size = 28: too small for model.arch 'schroff' (needs >= 38)"),
        ({"train": {"distribute": "spark"}}, "train.distribute = 'spark'"),
        ({"train": {"cpu_replicas": 0}}, "train.cpu_replicas = 0"),
        ({"evaluate": {"tta_shift": -1}}, "evaluate.tta_shift = -1"),
        ({"model": {"pool_padding": "full"}}, "model.pool_padding = 'full'"),
        ({"model": {"final_pool": "sometimes"}}, "model.final_pool = 'sometimes'"),
        ({"train": {"classes_per_batch": 1}}, "train.classes_per_batch = 1"),
        ({"data": {"image_size": 12}, "evaluate": {"tta_shift": 6}}, "evaluate.tta_shift = 6: shifts must stay below half of data.image_size (12); must be 0..5"),
        # removed keys are refused, not silently ignored
        ({"train": {"batches": "triplets"}}, "unknown key 'train.batches'"),
        ({"strategies": _with(hard={**PAIR["hard"], "refresh_every": 5})}, "unknown key 'strategies.hard.refresh_every'"),
        ({"strategies": _with(hard={**PAIR["hard"], "warmup_loops": 2})}, "unknown key 'strategies.hard.warmup_loops'"),
        # sampler and miner
        ({"strategies": _with(hard={"sampler": "pairs", "miner": "hard"})}, "strategies.hard.sampler = 'pairs'"),
        ({"strategies": _with(x={"sampler": "classes", "miner": "hardest"})}, "strategies.x.miner = 'hardest'"),
        ({"strategies": _with(x={"miner": "batch_all"})}, "strategies.x.sampler"),
        ({"strategies": _with(x={"sampler": "classes"})}, "strategies.x.miner"),
        (
            {"strategies": _with(x={"sampler": "triplets", "miner": "batch_all"}), "extra_strategies": ["x"]},
            "strategies.x.miner = 'batch_all': the triplets sampler takes the random or hard miner",
        ),
        (
            {"strategies": _with(x={"sampler": "triplets", "miner": "semi_hard"}), "extra_strategies": ["x"]},
            "strategies.x.miner = 'semi_hard': the triplets sampler takes the random or hard miner",
        ),
        (
            {"strategies": _with(hard={"sampler": "classes", "miner": "hard", "samples_per_class": 5})},
            "strategies.hard.samples_per_class = 5: the hard miner takes the nearest of every drawing",
        ),
        ({"strategies": _with(x={"sampler": "classes", "miner": "batch_all", "samples_per_class": 21})}, "strategies.x.samples_per_class = 21"),
        # the pair and the names
        ({"strategies": _with(random={"sampler": "triplets", "miner": "hard"})}, "strategies.random.miner = 'hard': the random strategy uses the random miner"),
        ({"strategies": _with(hard={"sampler": "classes", "miner": "random"})}, "strategies.hard.miner = 'random': the hard strategy uses the hard miner"),
        ({"strategies": {"random": PAIR["random"]}}, "strategies.hard is missing"),
        ({"strategies": _with(**{"Bad-Name": {"sampler": "classes", "miner": "batch_all"}})}, "strategy name 'Bad-Name': use lower-case letters, digits and _"),
        ({"strategies": _with(ensemble={"sampler": "classes", "miner": "batch_all"})}, "strategy name 'ensemble'"),
        (
            {"strategies": _with(hard_classes={"sampler": "classes", "miner": "hard"}), "extra_strategies": ["hard_clases"]},
            "extra_strategies: 'hard_clases' is not a strategy defined under strategies (besides random and hard) (did you mean 'hard_classes'?)",
        ),
        ({"extra_strategies": ["hard"]}, "extra_strategies: 'hard' is not a strategy defined under strategies (besides random and hard)"),
    ],
)
def test_bad_values_name_the_key_and_value(raw, expected):
    assert expected in _error(raw)


def test_the_triplets_sampler_takes_the_assignment_miners_only():
    for miner in ("random", "hard"):
        validate_params({"strategies": _with(x={"sampler": "triplets", "miner": miner}), "extra_strategies": ["x"]})
    for miner in ("batch_all", "batch_hard", "semi_hard"):
        validate_params({"strategies": _with(x={"sampler": "classes", "miner": miner}), "extra_strategies": ["x"]})
        message = _error({"strategies": _with(x={"sampler": "triplets", "miner": miner}), "extra_strategies": ["x"]})
        assert f"strategies.x.miner = {miner!r}" in message
    # The hard miner on class batches takes every drawing; the random one may take fewer.
    validate_params({"strategies": _with(x={"sampler": "classes", "miner": "random", "samples_per_class": 5}), "extra_strategies": ["x"]})


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
    with pytest.raises(ParamsError, match=r"params.yaml: not valid YAML") as err:
        load_params(bad)
    assert "\n" not in str(err.value)
    with pytest.raises(ParamsError, match=r"nowhere.yaml: cannot read"):
        load_params(tmp_path / "nowhere.yaml")


def test_a_stage_with_bad_params_exits_before_work(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": {"margin": -1}}))
    res = subprocess.run([sys.executable, str(REPO / "stages" / "prepare.py")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [res.stderr.strip()], "one line"
    assert "train.margin = -1" in res.stderr
    assert not (tmp_path / "data").exists(), "nothing written"


def test_validation_alphabets_count_is_checked_at_load():
    for bad in (-1, 30):
        with pytest.raises(ParamsError, match=rf"^params.yaml: data.validation_alphabets = {bad}: must be 0 \(none held out\) to 29"):
            validate_params({"data": {"validation_alphabets": bad}}, use_prepared=False)
    assert validate_params({"data": {"validation_alphabets": 0}}, use_prepared=False).data.validation_alphabets == 0
    for bad in ([], [f"A{i}" for i in range(30)]):
        with pytest.raises(ParamsError, match=r"data.validation_alphabets = .*: a list must name 1 to 29 of the 30"):
            validate_params({"data": {"validation_alphabets": bad}}, use_prepared=False)


# ----------------------------------------------------------------------------- bounds from the data


def _summary(folder: Path, held_out: int = 5, train: int = 200, val: int = 60, test: int = 300, smallest: int = 20) -> None:
    """A prepared set's summary.json, as prepare writes it."""
    summary = {
        "train": {"alphabets": 25, "characters": train, "drawings_per_character": 20},
        "val": {"alphabets": held_out, "characters": val, "names": [f"Val{i}" for i in range(held_out)]},
        "test": {"alphabets": 20, "characters": test, "smallest_alphabet": {"name": "Eval0", "characters": smallest}},
    }
    (folder / "summary.json").write_text(json.dumps(summary))


def test_the_official_counts_reproduce_the_prepared_split(tmp_path):
    """Without a summary, the held-out alphabets are drawn as prepare draws them (seed 0: 836 / 128)."""
    facts = data_facts(validate_params({"data": {"prepared_dir": str(tmp_path)}}).data)
    assert (facts.background_alphabets, facts.train_characters, facts.val_characters) == (30, 836, 128)
    assert (facts.test_characters, facts.smallest_test_alphabet) == (659, ("Angelic", 20))
    facts = data_facts(validate_params({"data": {"prepared_dir": str(tmp_path), "validation_alphabets": 0}}).data)
    assert (facts.train_characters, facts.val_characters) == (964, 0)
    facts = data_facts(validate_params({"data": {"prepared_dir": str(tmp_path), "validation_alphabets": ["Greek", "Latin"]}}).data)
    assert (facts.train_characters, facts.val_characters) == (964 - 24 - 26, 24 + 26)


def test_classes_per_batch_is_bounded_by_the_augmented_training_classes(tmp_path):
    # The case: 836 training characters x 4 rotations = 3344 classes.
    raw = {"data": {"prepared_dir": str(tmp_path)}, "train": {"classes_per_batch": 100000, "augment": {"rotations": True}}}
    assert re.search(r"train.classes_per_batch = 100000: must be 2..3344, the training classes of strategies.random: "
                     r"836 characters x 4 rotations \(the official Omniglot counts\)", _error(raw))
    raw["train"]["classes_per_batch"] = 3344
    validate_params(raw)
    raw["train"]["augment"]["flips"] = True  # flips double them
    validate_params(apply_overrides(raw, {"train.classes_per_batch": 6688}))
    assert "must be 2..6688" in _error(apply_overrides(raw, {"train.classes_per_batch": 6689}))
    # A strategy's own value and augmentation, against the prepared set's characters.
    _summary(tmp_path, train=30)
    raw = {
        "data": {"prepared_dir": str(tmp_path)},
        "strategies": _with(x={"sampler": "classes", "miner": "batch_all", "classes_per_batch": 31}),
    }
    assert re.search(r"strategies.x.classes_per_batch = 31: must be 2..30, .*: 30 characters \(.*summary.json\)", _error(raw))
    validate_params(apply_overrides(raw, {"strategies.x.augment.rotations": True}))  # 120 classes


def test_class_batches_are_bounded_in_images_per_step(tmp_path):
    # random / hard class batches hold every drawing: 20 per class
    raw = {"data": {"prepared_dir": str(tmp_path)}, "train": {"augment": {"rotations": True}},
           "strategies": _with(x={"sampler": "classes", "miner": "random", "classes_per_batch": MAX_IMAGES_PER_STEP // 20 + 1})}
    assert f"must be 2..{MAX_IMAGES_PER_STEP // 20}" in _error(raw)
    validate_params(apply_overrides(raw, {"strategies.x.samples_per_class": 4}))


def test_train_n_way_is_bounded_by_the_validation_and_test_characters(tmp_path):
    raw = {"data": {"prepared_dir": str(tmp_path)}, "train": {"n_way": 5000}}
    assert "train.n_way = 5000: must be 2..128, the validation characters (the official Omniglot counts)" in _error(raw)
    raw["data"]["validation_alphabets"] = 0  # no validation tasks: the test characters bound it
    assert "train.n_way = 5000: must be 2..659, the evaluation characters" in _error(raw)
    _summary(tmp_path, val=12, test=300)
    raw = {"data": {"prepared_dir": str(tmp_path)}, "train": {"n_way": 13}}
    assert re.search(r"train.n_way = 13: must be 2..12, the validation characters \(.*summary.json\)", _error(raw))
    raw["train"]["n_way"] = 12
    validate_params(raw)
    assert validate_params(raw, use_prepared=False).train.n_way == 12  # official: 128 validation characters


def test_a_summary_of_another_split_is_not_used(tmp_path):
    """After `-S data.validation_alphabets=...`, the old summary describes the old split."""
    _summary(tmp_path, held_out=5, train=30)
    raw = {"data": {"prepared_dir": str(tmp_path), "validation_alphabets": 0}, "train": {"classes_per_batch": 900}}
    assert validate_params(raw).train.classes_per_batch == 900  # 964 official characters, not the summary's 30
    raw["data"]["validation_alphabets"] = 5
    assert "must be 2..30" in _error(raw)


# ----------------------------------------------------------------------------- every numeric key


WALKED_STRATEGIES = ("hard", "batch_all")  # a triplets and a classes strategy: every override applies


def _numeric_keys(model: type[BaseModel] = Params, prefix: str = "") -> list[str]:
    """Every int or float key of the schema (bools excluded), walked from the models themselves
    so that a key added later is walked too."""
    keys = []
    for name, field in model.model_fields.items():
        args = typing.get_args(field.annotation) or (field.annotation,)
        if typing.get_origin(field.annotation) is dict:  # strategies: one of each sampler
            for strategy in WALKED_STRATEGIES:
                keys += _numeric_keys(StrategyParams, f"{prefix}{name}.{strategy}.")
            continue
        sub = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is not None:
            keys += _numeric_keys(sub, f"{prefix}{name}.")
        elif bool not in args and (int in args or float in args):
            keys.append(prefix + name)
    return keys


NUMERIC_KEYS = _numeric_keys()
# The only (key, value) pairs of the walk that are valid; every other value must be refused.
ACCEPTED = {
    ("data.seed", 0), ("train.seed", 0), ("evaluate.seed", 0),
    ("data.validation_alphabets", 0),  # the assignment's split: no alphabet held out
    ("train.margin", 0), ("strategies.*.margin", 0),
    ("train.augment.affine", 0), ("strategies.*.augment.affine", 0),
    ("evaluate.tta_shift", 0),  # no test-time augmentation
}  # fmt: skip


def test_the_walk_covers_the_schema():
    assert len(NUMERIC_KEYS) >= 38
    assert {
        "data.validation_alphabets", "model.filters", "model.embedding_dim", "train.classes_per_batch", "train.augment.affine",
        "train.n_way", "evaluate.n_way", "evaluate.tta_shift", "strategies.hard.batch_size", "strategies.batch_all.classes_per_batch",
        "strategies.batch_all.samples_per_class", "strategies.batch_all.augment.affine",
    } <= set(NUMERIC_KEYS)  # fmt: skip


@pytest.mark.parametrize("prepared", [False, True], ids=["official", "prepared"])
@pytest.mark.parametrize("key", NUMERIC_KEYS)
def test_every_numeric_key_refuses_zero_negative_huge_and_wrong_type(key, prepared, tmp_path):
    if prepared:
        _summary(tmp_path)
    base = {
        "data": {"prepared_dir": str(tmp_path)},
        "strategies": _with(batch_all={"sampler": "classes", "miner": "batch_all"}),
        "extra_strategies": ["batch_all"],
    }
    validate_params(base)
    pattern = re.sub(r"^strategies\.\w+\.", "strategies.*.", key)
    for value in (0, -1, 10**12, "abc"):
        raw = apply_overrides(base, {key: value})
        if (pattern, value) in ACCEPTED:
            validate_params(raw)
            continue
        message = _error(raw)  # a ParamsError of one line, naming the file
        assert f"{key} = {value!r}" in message, message
        assert "must be" in message, f"no allowed range: {message}"


# ----------------------------------------------------------------------------- for real, in a stage


@pytest.mark.parametrize(
    "stage, bad, expected",
    [
        (["train.py", "--strategy", "random"], {"train": {"classes_per_batch": 100000, "augment": {"rotations": True}}},
         "train.classes_per_batch = 100000: must be 2..3344"),
        (["evaluate.py"], {"model": {"filters": 10**9}}, "model.filters = 1000000000: must be a width 1..1024"),
    ],
    ids=["train", "evaluate"],
)
def test_a_stage_refuses_bad_params_in_one_line_before_importing_tensorflow(tmp_path, stage, bad, expected):
    """The stage script as DVC runs it; ``-X importtime`` lists every module imported before the exit."""
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"data": {"prepared_dir": "prepared"}, **bad}))
    res = subprocess.run(
        [sys.executable, "-X", "importtime", str(REPO / "stages" / stage[0]), *stage[1:]],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TRIPLETML_PARAMS": "bad.yaml"},
    )
    assert res.returncode == 1, res.stderr[-2000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")]
    assert "tripletml.params" in imported, "importtime listed the imports"
    assert not [m for m in imported if m.split(".")[0] in ("tensorflow", "keras")], "TensorFlow imported before validation"
    other = [line for line in res.stderr.splitlines() if not line.startswith("import time:")]
    assert other == [f"error: bad.yaml: {other[0].split('bad.yaml: ', 1)[-1]}"] and expected in other[0], other
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"], "nothing written"


def test_filters_take_one_width_per_block_and_say_so_when_they_do_not_fit():
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    ok = validate_params(apply_overrides(base, {"model.filters": [64, 96, 128, 256], "model.residual": True}))
    assert ok.model.filters == [64, 96, 128, 256] and ok.model.residual
    assert _error(apply_overrides(base, {"model.filters": [64, 96]})) == (
        "params.yaml: model.filters gives 2 widths but model.blocks = 4: give one per block"
    )
    assert "model.filters = [64, 0]: must be a width 1..1024" in _error(apply_overrides(base, {"model.filters": [64, 0], "model.blocks": 2}))

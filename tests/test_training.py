"""Tests for tripletml.training: every strategy trains, determinism, best-on-validation,
NaN / collapse stops, and checkpoint resume. Tiny synthetic data and models keep it fast."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tripletml import training
from tripletml.data import OmniglotSet
from tripletml.errors import TrainingError
from tripletml.params import validate_params
from tripletml.training import LoopRecord, Trainer, TrainResult, train

S = 16
MODEL = {"arch": "convnet", "embedding_dim": 16, "filters": 8, "blocks": 4}


def _make_set(n_cls: int, seed: int, alphabets: int = 2) -> OmniglotSet:
    """Class prototypes + per-drawing noise, ink-positive model images in [0, 1]."""
    rng = np.random.default_rng(seed)
    protos = (rng.random((n_cls, 1, S, S)) < 0.25).astype(np.float32)
    X = np.clip(protos + rng.normal(0.0, 0.3, (n_cls, 20, S, S)), 0.0, 1.0).astype(np.float32)
    bounds = np.linspace(0, n_cls, alphabets + 1).astype(int)
    c = {f"A{i}": (int(bounds[i]), int(bounds[i + 1])) for i in range(alphabets)}
    return OmniglotSet(X, c)


@pytest.fixture(scope="module")
def data() -> tuple[OmniglotSet, OmniglotSet, OmniglotSet]:
    return _make_set(12, 0), _make_set(6, 1), _make_set(6, 2)


def settings(name: str, **overrides) -> dict:
    """Effective settings through the real params schema, at toy sizes."""
    strat = {} if name in ("random", "hard") else {"samples_per_class": 3}
    strat.update(overrides.pop("strategy", {}))
    train_params = {"loops": 2, "steps_per_loop": 2, "batch_size": 8, "val_tasks": 12, "n_way": 5, "seed": 3}
    train_params.update(batches="triplets", classes_per_batch=4)  # the assignment's triplets unless a test asks
    train_params.update(overrides)
    params = validate_params(
        {"data": {"image_size": S}, "model": {k: v for k, v in MODEL.items() if k != "arch"}, "train": train_params, "strategies": {name: strat}}
    )
    return params.strategy(name)


def _check_result(result: TrainResult, loops: int, warmup: int = 0) -> None:
    assert isinstance(result, TrainResult)
    assert [r.loop for r in result.history] == list(range(1, loops + 1))
    assert all(np.isfinite(r.loss) and r.loss >= 0 for r in result.history)
    assert all(0.0 <= r.val_acc20 <= 100.0 and r.test_acc20 is not None for r in result.history)
    assert [r.phase for r in result.history] == ["warmup"] * warmup + ["main"] * (loops - warmup)
    assert 1 <= result.best_loop <= loops
    assert result.best_val_acc20 == max(r.val_acc20 for r in result.history)
    assert result.steps == loops * result.history[0].steps and result.seconds_per_step > 0


CASES = {
    "random": ("random", {}),
    "random_classes": ("random", {"batches": "classes"}),
    "hard_classes": ("hard", {"batches": "classes"}),
    "hard_exact": ("hard", {"refresh_every": 0}),
    "hard_refresh": ("hard", {"refresh_every": 3}),
    "batch_all": ("batch_all", {}),
    "batch_hard": ("batch_hard", {}),
    "semi_hard": ("semi_hard", {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_strategy_trains(case: str, data) -> None:
    name, strat = CASES[case]
    result = train(settings(name, strategy=strat), MODEL, *data)
    _check_result(result, loops=2)
    emb = result.embedding.predict(data[1].X[:3, 0, ..., None], verbose=0)
    assert emb.shape == (3, 16) and np.all(np.isfinite(emb))


def test_hard_with_random_warmup(data, monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings("hard", loops=3, strategy={"warmup_loops": 2, "refresh_every": 0})
    trainer = Trainer(s, MODEL, *data)
    mined = []
    real_sample = trainer.strategy.sample
    monkeypatch.setattr(trainer.strategy, "sample", lambda: mined.append(1) or real_sample())
    result = trainer.run()
    _check_result(result, loops=3, warmup=2)
    assert len(mined) == s["steps_per_loop"]  # hard mining only in the one main loop
    assert result.extra["mined"]["first"]["loop"] == 3  # the first *main* loop's triplets


def test_hard_in_class_batches_warms_up_on_random_class_batches(data) -> None:
    s = settings("hard", loops=3, strategy={"batches": "classes", "warmup_loops": 1})
    trainer = Trainer(s, MODEL, *data)
    assert (trainer.warmup.name, trainer.strategy.name) == ("random", "hard")
    assert trainer.strategy.K == 20 and trainer.warmup.K == 20  # every drawing of each class
    assert set(trainer._steppers) == {"random", "hard"}  # no 3-branch network is built
    result = trainer.run()
    _check_result(result, loops=3, warmup=1)
    # The report's examples are valid triplets of the batch (tests/test_losses.py checks that
    # they are the very triplets the loss trains on).
    example = result.extra["mined"]["first"]
    classes, drawings = np.array(example["classes"]), np.array(example["drawings"])
    assert example["loop"] == 2 and len(classes) == 8
    assert np.all(classes[:, 0] == classes[:, 1]) and np.all(classes[:, 0] != classes[:, 2])
    assert np.all(drawings[:, 0] != drawings[:, 1])


@pytest.mark.parametrize("augment, factor", [({}, 1), ({"rotations": True}, 4), ({"rotations": True, "flips": True}, 8)])
def test_augmented_classes_are_what_the_strategy_draws_from(augment: dict, factor: int, data) -> None:
    trainer = Trainer(settings("random", augment=augment), MODEL, *data)
    n = len(data[0].X)
    assert trainer.X.shape == (factor * n, *data[0].X.shape[1:]) and trainer.strategy.X is trainer.X
    if augment.get("flips"):  # the mirrored classes follow every rotated class
        np.testing.assert_array_equal(trainer.X[4 * n + 1], data[0].X[1][..., ::-1])


def test_hard_in_class_batches_needs_every_drawing(data) -> None:
    with pytest.raises(ValueError, match="strategies.hard.samples_per_class = 5"):
        Trainer(settings("hard", strategy={"batches": "classes", "samples_per_class": 5}), MODEL, *data)


def _weights(model) -> list[np.ndarray]:
    return [np.array(w) for w in model.get_weights()]


def _assert_weights_close(a: list[np.ndarray], b: list[np.ndarray], atol: float = 1e-5) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=atol, rtol=0)


def test_same_seed_same_run(data) -> None:
    s = settings("hard", strategy={"refresh_every": 0})
    a, b = train(s, MODEL, *data), train(s, MODEL, *data)
    np.testing.assert_allclose([r.loss for r in a.history], [r.loss for r in b.history], rtol=1e-5)
    assert [r.val_acc20 for r in a.history] == [r.val_acc20 for r in b.history]
    _assert_weights_close(_weights(a.embedding), _weights(b.embedding))
    # Another seed: other initial weights and batches.
    c = train(settings("hard", seed=4, strategy={"refresh_every": 0}), MODEL, *data)
    assert not np.allclose(_weights(a.embedding)[0], _weights(c.embedding)[0])


def test_returns_weights_of_best_validation_loop(data, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = Trainer(settings("random", loops=4), MODEL, *data)
    # Validation accuracy the test controls: best at loop 2, tied by loop 3 (the earlier wins).
    scripted = iter([10.0, 60.0, 60.0, 30.0])
    real_score = trainer.score

    def score(data_set, tasks):
        acc, emb = real_score(data_set, tasks)
        return (next(scripted) if tasks is trainer.val_tasks else acc), emb

    monkeypatch.setattr(trainer, "score", score)
    per_loop: dict[int, list[np.ndarray]] = {}
    result = trainer.run(on_loop=lambda r: per_loop.__setitem__(r.loop, _weights(trainer.embedding)))
    assert [r.val_acc20 for r in result.history] == [10.0, 60.0, 60.0, 30.0]
    assert (result.best_loop, result.best_val_acc20) == (2, 60.0)
    assert not np.allclose(per_loop[2][0], per_loop[4][0])  # training moved on after loop 2
    _assert_weights_close(_weights(result.embedding), per_loop[2], atol=0)


def test_best_loop_is_first_argmax_on_real_scores(data) -> None:
    result = train(settings("random", loops=3), MODEL, *data)
    accs = [r.val_acc20 for r in result.history]
    assert result.best_loop == int(np.argmax(accs)) + 1  # np.argmax: first on ties


def test_nan_loss_stops_naming_the_loop(data, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = Trainer(settings("random", loops=3), MODEL, *data)
    stepper = trainer._steppers["triplets"]
    calls = []

    def step(batch):  # real steps in loop 1, NaN from loop 2 on
        calls.append(1)
        return stepper(batch) if len(calls) <= 2 else (tf.constant(np.nan), tf.zeros((len(batch.y), 1)))

    monkeypatch.setitem(trainer._steppers, "triplets", step)
    with pytest.raises(TrainingError, match=r"loss is nan at loop 2\b"):
        trainer.run()
    assert [r.loop for r in trainer.history] == [1]


def test_huge_learning_rate_stops_with_training_error(data) -> None:
    with pytest.raises(TrainingError, match=r"at loop 1\b"):
        train(settings("random", learning_rate=1e30), MODEL, *data)


def test_collapsed_embedding_stops_naming_the_loop(data) -> None:
    trainer = Trainer(settings("random", loops=3), MODEL, *data)
    real_embed = trainer.embed

    def collapse_after_loop_1(record: LoopRecord) -> None:
        # From now on the network maps every image to one point.
        trainer.embed = lambda images: np.tile(real_embed(images[:1]), (len(images), 1))

    with pytest.raises(TrainingError, match=r"collapsed at loop 2\b.*one point"):
        trainer.run(on_loop=collapse_after_loop_1)
    assert [r.loop for r in trainer.history] == [1]


class _Crash(Exception):
    pass


@pytest.mark.parametrize("name,strat", [("random", {}), ("hard", {"refresh_every": 0}), ("hard", {"batches": "classes"})])
def test_checkpoint_resume_matches_uninterrupted_run(name: str, strat: dict, data, tmp_path: Path) -> None:
    s = settings(name, loops=3, strategy=strat)
    full = train(s, MODEL, *data)

    def crash_in_loop_3(record: LoopRecord) -> None:
        if record.loop == 3:  # before loop 3's checkpoint: the last one on disk is loop 2's
            raise _Crash

    ckpt = tmp_path / "ckpt"
    with pytest.raises(_Crash):
        Trainer(s, MODEL, *data).run(on_loop=crash_in_loop_3, checkpoint_dir=ckpt)
    assert json.loads((ckpt / training.CHECKPOINT_STATE).read_text())["next_loop"] == 2

    resumed_trainer = Trainer(s, MODEL, *data)
    assert resumed_trainer.load_checkpoint(ckpt)
    assert resumed_trainer.start_loop == 2
    ran = []
    resumed = resumed_trainer.run(on_loop=lambda r: ran.append(r.loop), checkpoint_dir=ckpt)
    assert ran == [3]
    assert [r.loop for r in resumed.history] == [1, 2, 3]
    np.testing.assert_allclose([r.loss for r in resumed.history], [r.loss for r in full.history], rtol=1e-5)
    assert [r.val_acc20 for r in resumed.history] == [r.val_acc20 for r in full.history]
    assert resumed.best_loop == full.best_loop
    _assert_weights_close(_weights(resumed.embedding), _weights(full.embedding))

    # train() resumes by itself; a finished checkpoint means nothing left to run.
    again = train(s, MODEL, *data, on_loop=lambda r: ran.append(r.loop), checkpoint_dir=ckpt)
    assert ran == [3] and [r.loop for r in again.history] == [1, 2, 3]
    _assert_weights_close(_weights(again.embedding), _weights(full.embedding))


def test_checkpoint_of_other_settings_is_ignored(data, tmp_path: Path) -> None:
    train(settings("random", loops=1), MODEL, *data, checkpoint_dir=tmp_path)
    other = Trainer(settings("random", loops=1, learning_rate=0.01), MODEL, *data)
    assert not other.load_checkpoint(tmp_path) and other.start_loop == 0
    assert not Trainer(settings("random", loops=1), MODEL, *data).load_checkpoint(tmp_path / "missing")


def test_replica_split_checks_the_batch_form_in_use() -> None:
    from tripletml.params import ParamsError

    base = {"strategy": "hard", "batch_size": 8, "classes_per_batch": 5, "distribute": "mirrored"}
    with pytest.raises(ParamsError, match=r"^classes_per_batch = 5 .*multiple of the 2 replicas"):
        training._check_replica_split({**base, "batches": "classes"}, 2)
    training._check_replica_split({**base, "batches": "triplets"}, 2)  # 8 triplets split evenly
    with pytest.raises(ParamsError, match=r"^batch_size = 7 "):
        training._check_replica_split({**base, "batches": "triplets", "batch_size": 7}, 2)
    training._check_replica_split({**base, "batches": "classes"}, 1)  # one device: anything goes

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
from tripletml.errors import ParamsError, TrainingError
from tripletml.params import ModelParams, StrategySettings, validate_params
from tripletml.training import LoopRecord, Trainer, TrainResult, train

S = 16
MODEL = ModelParams(arch="convnet", embedding_dim=16, filters=8, blocks=4)


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


STRATEGIES = {
    "random": {"sampler": "triplets", "miner": "random"},
    "hard": {"sampler": "triplets", "miner": "hard"},
    "random_classes": {"sampler": "classes", "miner": "random"},
    "hard_classes": {"sampler": "classes", "miner": "hard"},
    "batch_all": {"sampler": "classes", "miner": "batch_all", "samples_per_class": 3},
    "batch_hard": {"sampler": "classes", "miner": "batch_hard", "samples_per_class": 3},
    "semi_hard": {"sampler": "classes", "miner": "semi_hard", "samples_per_class": 3},
}


def settings(name: str, **overrides) -> StrategySettings:
    """Effective settings through the real params schema, at toy sizes."""
    strategies = {k: dict(v) for k, v in STRATEGIES.items()}
    strategies[name].update(overrides.pop("strategy", {}))
    train_params = {"loops": 2, "steps_per_loop": 2, "batch_size": 8, "val_tasks": 12, "test_tasks": 10, "n_way": 5, "seed": 3}
    train_params.update(classes_per_batch=4)
    train_params.update(overrides)
    params = validate_params(
        {"data": {"image_size": S}, "model": MODEL.model_dump(exclude={"arch"}), "train": train_params,
         "strategies": strategies}
    )
    return params.strategy(name)


def _tasks_right(acc: float, tasks: int) -> int:
    """An accuracy on ``tasks`` tasks as the whole number of tasks right it must be."""
    right = acc * tasks / 100.0
    assert abs(right - round(right)) < 1e-6 and 0 <= round(right) <= tasks, (acc, tasks)
    return round(right)


def _check_result(result: TrainResult, loops: int, val_tasks: int = 12, test_tasks: int = 10) -> None:
    assert isinstance(result, TrainResult)
    assert [r.loop for r in result.history] == list(range(1, loops + 1))
    assert all(np.isfinite(r.loss) and r.loss >= 0 for r in result.history)
    for r in result.history:  # each figure is a count of tasks right out of the tasks scored
        _tasks_right(r.val_acc20, val_tasks)
        _tasks_right(r.test_acc20_250, test_tasks)
    assert 1 <= result.best_loop <= loops
    assert result.history[result.best_loop - 1].val_acc20 == result.best_val_acc20  # the chosen loop's own figure
    assert result.steps == loops * result.history[0].steps and result.seconds_per_step > 0


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_each_strategy_trains(name: str, data) -> None:
    result = train(settings(name), MODEL, *data)
    _check_result(result, loops=2)
    emb = result.embedding.predict(data[1].X[:3, 0, ..., None], verbose=0)
    assert emb.shape == (3, 16) and np.all(np.isfinite(emb))
    # The report's examples are valid triplets of the very batch the step trained on.
    for key in ("first", "last"):
        example = result.extra["mined"][key]
        classes, drawings = np.array(example["classes"]), np.array(example["drawings"])
        assert example["loop"] == (1 if key == "first" else 2) and len(classes) >= 4
        assert np.all(classes[:, 0] == classes[:, 1]) and np.all(classes[:, 0] != classes[:, 2])
        assert np.all(drawings[:, 0] != drawings[:, 1])


def test_the_assignments_pair_differs_only_in_the_miner(data) -> None:
    """random and hard: the same initial weights, anchors, positives and negative classes; only
    the negative's drawing differs, and hard's is the nearest under the network in inference mode."""
    rand, hard = Trainer(settings("random"), MODEL, *data), Trainer(settings("hard"), MODEL, *data)
    _assert_weights_close(_weights(rand.embedding), _weights(hard.embedding), atol=0)
    a, b = rand.sample(), hard.sample()
    np.testing.assert_array_equal(a.y, b.y)
    np.testing.assert_array_equal(a.drawings[:, :2], b.drawings[:, :2])
    assert not np.array_equal(a.drawings[:, 2], b.drawings[:, 2])
    # Brute force, in float64: every drawing of each negative class, embedded in inference mode.
    X = hard.X
    emb = lambda images: hard.embedding(images[..., None], training=False).numpy().astype(np.float64)  # noqa: E731
    for (ac, _, nc), (ad, _, nd) in zip(b.y, b.drawings):
        d = ((emb(X[nc]) - emb(X[ac, ad][None])) ** 2).sum(axis=1)
        assert nd == int(np.argmin(d)) or d[nd] <= d.min() + 1e-5


def test_hard_mining_uses_inference_mode(data) -> None:
    """BatchNorm's batch statistics (training mode) would pick other negatives than its moving
    statistics (inference mode, the assignment's model.predict): hard follows the latter."""
    trainer = Trainer(settings("hard", batch_size=32), MODEL, *data)
    for _ in range(5):
        trainer.train_step()  # move BatchNorm's moving statistics away from their initial values
    state = trainer.rng.bit_generator.state
    pairs = trainer.sampler.pairs()
    trainer.rng.bit_generator.state = state
    mined = trainer.sample().drawings[:, 2]
    X = trainer.X

    def nearest(training: bool) -> np.ndarray:
        images = np.concatenate([X[pairs.anchor_cls, pairs.anchor_drawing][:, None], X[pairs.negative_cls]], axis=1)
        e = trainer.embedding(images.reshape(-1, S, S, 1), training=training).numpy().astype(np.float64)
        e = e.reshape(len(images), -1, e.shape[-1])
        return np.argmin(((e[:, 1:] - e[:, :1]) ** 2).sum(-1), axis=1)

    assert (mined == nearest(False)).mean() >= 0.95
    assert (nearest(True) != nearest(False)).any()  # the test could tell the two apart


def test_hard_in_class_batches_trains_on_the_nearest_drawing(data) -> None:
    trainer = Trainer(settings("hard_classes"), MODEL, *data)
    assert trainer.sampler.K == 20  # every drawing of each class
    batch = trainer.sample()
    triplets = trainer.mined(batch)
    assert len(triplets) == 4 * 20 * 19  # every anchor-positive pair of the batch
    emb = trainer.embedding(batch.x, training=False).numpy().astype(np.float64)
    for a, p, n in triplets[::37]:
        same = np.flatnonzero(batch.y == batch.y[n])
        d = ((emb[same] - emb[a]) ** 2).sum(1)
        assert batch.y[a] == batch.y[p] and batch.y[n] != batch.y[a]
        assert d[list(same).index(n)] <= d.min() + 1e-5


@pytest.mark.parametrize("augment, factor", [({}, 1), ({"rotations": True}, 4), ({"rotations": True, "flips": True}, 8)])
def test_augmented_classes_are_what_the_sampler_draws_from(augment: dict, factor: int, data) -> None:
    trainer = Trainer(settings("random", augment=augment), MODEL, *data)
    n = len(data[0].X)
    assert trainer.X.shape == (factor * n, *data[0].X.shape[1:]) and trainer.sampler.X is trainer.X
    if augment.get("flips"):  # the mirrored classes follow every rotated class
        np.testing.assert_array_equal(trainer.X[4 * n + 1], data[0].X[1][..., ::-1])


def test_hard_in_class_batches_needs_every_drawing(data) -> None:
    from tripletml.params import ParamsError

    with pytest.raises(ParamsError, match="strategies.hard_classes.samples_per_class = 5"):
        settings("hard_classes", strategy={"samples_per_class": 5})


def test_fresh_test_tasks_every_loop(data) -> None:
    trainer = Trainer(settings("random"), MODEL, *data)
    a, b = trainer.loop_test_tasks(0), trainer.loop_test_tasks(1)
    assert len(a) == len(b) == 10
    assert not np.array_equal(a.support_chars, b.support_chars)
    np.testing.assert_array_equal(a.support_chars, trainer.loop_test_tasks(0).support_chars)  # seeded


def _weights(model) -> list[np.ndarray]:
    return [np.array(w) for w in model.get_weights()]


def _assert_weights_close(a: list[np.ndarray], b: list[np.ndarray], atol: float = 1e-5) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=atol, rtol=0)


def test_same_seed_same_run(data) -> None:
    s = settings("hard")
    a, b = train(s, MODEL, *data), train(s, MODEL, *data)
    np.testing.assert_allclose([r.loss for r in a.history], [r.loss for r in b.history], rtol=1e-5)
    assert [r.val_acc20 for r in a.history] == [r.val_acc20 for r in b.history]
    _assert_weights_close(_weights(a.embedding), _weights(b.embedding))
    # Another seed: other initial weights and batches.
    c = train(settings("hard", seed=4), MODEL, *data)
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
    stepper = trainer._stepper
    calls = []

    def step(batch):  # real steps in loop 1, NaN from loop 2 on
        calls.append(1)
        return stepper(batch) if len(calls) <= 2 else tf.constant(np.nan)

    monkeypatch.setattr(trainer, "_stepper", step)
    with pytest.raises(TrainingError, match=r"loss is nan at loop 2\b"):
        trainer.run()
    assert [r.loop for r in trainer.history] == [1]


def test_huge_learning_rate_stops_with_training_error(data) -> None:
    s = settings("random").model_copy(update={"learning_rate": 1e30})  # past params' bound (10): the trainer's guard is under test
    with pytest.raises(TrainingError, match=r"at loop 1\b"):
        train(s, MODEL, *data)


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


@pytest.mark.parametrize("name", ["random", "hard", "hard_classes"])
def test_checkpoint_resume_matches_uninterrupted_run(name: str, data, tmp_path: Path) -> None:
    s = settings(name, loops=3)
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


def test_checkpoint_key_separates_runs_so_one_never_overwrites_anothers(data, tmp_path: Path) -> None:
    s = settings("random", loops=2)
    first = Trainer(s, MODEL, *data)
    same = Trainer(s, MODEL, *data)
    wider = Trainer(s, MODEL.model_copy(update={"filters": 12}), *data)  # same strategy settings, another network
    train_only, val, test = data
    fewer_val = OmniglotSet(val.X[:-1], {a: (lo, min(hi, len(val.X) - 1)) for a, (lo, hi) in val.c.items()})
    other_split = Trainer(s, MODEL, train_only, fewer_val, test)
    assert first.checkpoint_key == same.checkpoint_key
    assert len({first.checkpoint_key, wider.checkpoint_key, other_split.checkpoint_key}) == 3

    def stop_after_loop_1(record: LoopRecord) -> None:
        if record.loop == 2:
            raise _Crash

    with pytest.raises(_Crash):
        first.run(on_loop=stop_after_loop_1, checkpoint_dir=tmp_path / first.checkpoint_key)
    wider.run(checkpoint_dir=tmp_path / wider.checkpoint_key)  # another run in between, to the end
    # Its checkpoint cannot stand in for the first run's (a restore would fail on shapes) ...
    assert not same.load_checkpoint(tmp_path / wider.checkpoint_key)
    # ... and the first run's resume point is still there.
    assert same.load_checkpoint(tmp_path / same.checkpoint_key) and same.start_loop == 1


def test_replica_split_checks_the_batch_form_in_use() -> None:
    from tripletml.params import ParamsError

    base = settings("hard", batch_size=8, classes_per_batch=5, distribute="mirrored")
    with pytest.raises(ParamsError, match=r"^classes_per_batch = 5 .*multiple of the 2 replicas"):
        training._check_replica_split(base.model_copy(update={"sampler": "classes"}), 2)
    training._check_replica_split(base, 2)  # 8 triplets split evenly
    with pytest.raises(ParamsError, match=r"^batch_size = 7 "):
        training._check_replica_split(base.model_copy(update={"batch_size": 7}), 2)
    training._check_replica_split(base.model_copy(update={"sampler": "classes"}), 1)  # one device: anything goes


def test_without_validation_alphabets_the_last_loop_is_kept(data) -> None:
    """data.validation_alphabets: 0 (the assignment's split): nothing to choose on, no validation score."""
    train_set, val_set, test_set = data
    empty = val_set.subset([])
    assert empty.n_characters == 0
    trainer = Trainer(settings("random", loops=3), MODEL, train_set, empty, test_set)
    per_loop = {}
    result = trainer.run(on_loop=lambda r: per_loop.__setitem__(r.loop, _weights(trainer.embedding)))
    assert [r.val_acc20 for r in result.history] == [None, None, None]
    assert all(r.test_acc20_250 is not None for r in result.history)
    assert (result.best_loop, result.best_val_acc20) == (3, None)
    _assert_weights_close(_weights(result.embedding), per_loop[3], atol=0)


def test_validation_tasks_within_one_alphabet_when_asked(data) -> None:
    """val_within_alphabet: every validation task's candidates share one alphabet, and only
    alphabets with n_way characters are drawn from; the default draws across alphabets."""
    val = _make_set(12, 1, alphabets=3)  # alphabets A0..A2 of 4 characters each
    alphabet_of = np.repeat(np.arange(3), 4)
    across = Trainer(settings("random", n_way=4, val_tasks=60), MODEL, data[0], val, data[2]).val_tasks
    assert len(np.unique(alphabet_of[across.support_chars], axis=None)) == 3
    assert any(len(set(alphabet_of[row])) > 1 for row in across.support_chars)
    within = Trainer(settings("random", n_way=4, val_tasks=60, val_within_alphabet=True), MODEL, data[0], val, data[2]).val_tasks
    assert all(len(set(alphabet_of[row])) == 1 for row in within.support_chars)
    assert set(alphabet_of[within.support_chars[:, 0]]) == {0, 1, 2}


def test_validation_within_alphabets_too_small_for_n_way_is_a_params_error(data) -> None:
    val = _make_set(12, 1, alphabets=3)  # 4 characters per alphabet, fewer than n_way = 5
    with pytest.raises(ParamsError, match=r"train\.val_within_alphabet = true with train\.n_way = 5.*sizes"):
        Trainer(settings("random", val_within_alphabet=True), MODEL, data[0], val, data[2])


def test_without_validation_the_checkpoint_holds_one_copy_of_the_weights_and_resumes(data, tmp_path: Path) -> None:
    """No validation alphabets: the kept model is the last loop's, so the checkpoint (committed
    between machines for the assignment's hours-long run) carries no second copy of the weights."""
    train_set, val_set, test_set = data
    empty = val_set.subset([])
    s = settings("hard", loops=3)
    full = train(s, MODEL, train_set, empty, test_set)

    def crash_in_loop_3(record: LoopRecord) -> None:
        if record.loop == 3:
            raise _Crash

    ckpt = tmp_path / "ckpt"
    with pytest.raises(_Crash):
        Trainer(s, MODEL, train_set, empty, test_set).run(on_loop=crash_in_loop_3, checkpoint_dir=ckpt)
    names = [name for name, _ in tf.train.list_variables(str(ckpt / json.loads((ckpt / training.CHECKPOINT_STATE).read_text())["checkpoint"]))]
    assert any(n.startswith("model/") for n in names) and not any(n.startswith("best/") for n in names)
    with_val = tmp_path / "with_val"
    train(settings("hard", loops=1), MODEL, *data, checkpoint_dir=with_val)
    state = json.loads((with_val / training.CHECKPOINT_STATE).read_text())
    assert any(n.startswith("best/") for n, _ in tf.train.list_variables(str(with_val / state["checkpoint"])))

    resumed = train(s, MODEL, train_set, empty, test_set, checkpoint_dir=ckpt)
    assert [r.loop for r in resumed.history] == [1, 2, 3] and resumed.best_loop == 3
    np.testing.assert_allclose([r.loss for r in resumed.history], [r.loss for r in full.history], rtol=1e-5)
    _assert_weights_close(_weights(resumed.embedding), _weights(full.embedding))


# ----------------------------------------------------------------------------- as shipped: bf16, and learning


@pytest.fixture
def restores_precision():
    """The trainer sets Keras's global precision policy; later tests expect float32."""
    yield
    import keras

    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("name", ["random", "hard", "hard_classes", "batch_all"])
def test_bf16_as_every_committed_run_trains(name: str, data, restores_precision) -> None:
    result = train(settings(name, precision="mixed_bfloat16"), MODEL, *data)
    _check_result(result, loops=2)
    assert result.embedding.layers[1].compute_dtype == "bfloat16", "the products ran in bf16"
    assert all(w.dtype == "float32" for w in result.embedding.trainable_weights), "the weights stay float32"


def test_hard_mining_in_bf16_picks_the_nearest_drawing_in_inference_mode(data, restores_precision) -> None:
    trainer = Trainer(settings("hard", batch_size=32, precision="mixed_bfloat16"), MODEL, *data)
    for _ in range(3):
        trainer.train_step()
    state = trainer.rng.bit_generator.state
    pairs = trainer.sampler.pairs()
    trainer.rng.bit_generator.state = state
    mined = trainer.sample().drawings[:, 2]
    images = np.concatenate([trainer.X[pairs.anchor_cls, pairs.anchor_drawing][:, None], trainer.X[pairs.negative_cls]], axis=1)
    e = tf.cast(trainer.embedding(images.reshape(-1, S, S, 1), training=False), tf.float32).numpy().astype(np.float64)
    e = e.reshape(len(images), -1, e.shape[-1])
    d = ((e[:, 1:] - e[:, :1]) ** 2).sum(-1)
    rows = np.arange(len(d))
    assert (mined == d.argmin(axis=1)).mean() >= 0.8
    # Where another drawing came out nearer here, it is nearer by bf16 rounding only (the mining
    # pass embeds other batches than this check), far less than the spread of the candidates.
    assert np.all(d[rows, mined] - d.min(axis=1) <= 0.02 * (d.max(axis=1) - d.min(axis=1)))


@pytest.mark.parametrize("name, precision", [("hard", "float32"), ("hard", "mixed_bfloat16")])
def test_a_strategy_learns_far_above_chance_through_the_trainer(name: str, precision: str, data, restores_precision) -> None:
    s = settings(name, loops=3, steps_per_loop=30, val_tasks=48, learning_rate=0.003, precision=precision)
    result = train(s, MODEL, *data)
    chance = 100.0 / s.n_way
    assert result.history[-1].loss < result.history[0].loss
    assert result.best_val_acc20 >= chance + 40, [r.val_acc20 for r in result.history]  # chance is 20 %

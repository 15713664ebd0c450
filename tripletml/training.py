"""The training loop: loops x steps, per-loop scoring, best-on-validation, checkpoints.

One strategy trains one fresh model. After every loop the loop's mean loss and the
20-way one-shot accuracy on the validation alphabets (which chooses the model) and
on the test alphabets (reported for parity with the assignment, never used to
choose) go to a callback. A checkpoint after every loop lets a killed run resume
with at most one loop lost.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tripletml import oneshot
from tripletml.atomic import atomic_path, write_json
from tripletml.data import OmniglotSet
from tripletml.distribute import replicas, split_batch
from tripletml.embedder import make_embed_fn
from tripletml.errors import TrainingError
from tripletml.losses import TripletLoss, collapse_reason, get_loss
from tripletml.models import build_embedding, build_triplet_network
from tripletml.params import ONLINE_STRATEGIES, ParamsError
from tripletml.selection import Batch, augment_flips, augment_rotations, in_batch_triplets, make_strategy

CHECKPOINT_STATE = "state.json"
CHECKPOINT_ARRAYS = "arrays.npz"


@dataclass
class LoopRecord:
    """What one loop produced; ``phase`` is "warmup" for random warm-up loops."""

    loop: int
    loss: float
    val_acc20: float
    test_acc20: float | None
    loop_seconds: float
    steps: int
    phase: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class TrainResult:
    embedding: keras.Model
    history: list[LoopRecord]
    best_loop: int
    best_val_acc20: float
    train_seconds: float
    steps: int
    extra: dict = field(default_factory=dict)

    @property
    def seconds_per_step(self) -> float:
        return self.train_seconds / max(self.steps, 1)

    def weights_digest(self) -> str:
        """sha256 of the chosen weights: equal on every worker of a distributed run."""
        h = hashlib.sha256()
        for w in self.embedding.get_weights():
            h.update(np.ascontiguousarray(w).tobytes())
        return h.hexdigest()


def make_optimizer(settings: dict, total_steps: int) -> keras.optimizers.Optimizer:
    lr = settings["learning_rate"]
    if settings["lr_schedule"] == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(total_steps, 1), alpha=0.01)
    if settings["optimizer"] == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True)
    return keras.optimizers.Adam(lr)  # Keras defaults otherwise, as the assignment used


def make_augmenter(strength: float, seed: int) -> keras.Sequential | None:
    """Small random affine distortions (Koch et al. 2015), run on-graph in the train step."""
    if not strength:
        return None
    return keras.Sequential(
        [
            keras.layers.RandomRotation(0.03 * strength, fill_mode="constant", seed=seed),
            keras.layers.RandomTranslation(0.1 * strength, 0.1 * strength, fill_mode="constant", seed=seed + 1),
            keras.layers.RandomZoom(0.15 * strength, fill_mode="constant", seed=seed + 2),
        ],
        name="affine_augment",
    )


class _Stepper:
    """A compiled train step for one (model, loss) pair, on one device or under a tf.distribute strategy."""

    def __init__(self, model: keras.Model, loss_fn: Callable, optimizer, augmenter, image_shape, distribution=None):
        self.model, self.optimizer, self.augmenter = model, optimizer, augmenter
        if isinstance(loss_fn, keras.losses.Loss):
            # A Keras Loss divides by the replica count on its own under tf.distribute; take the
            # plain batch mean so that the one explicit scaling below is the only one.
            keras_loss = loss_fn
            loss_fn = lambda y, pred: tf.reduce_mean(keras_loss.call(y, pred))  # noqa: E731 - triplet batches: no draws
        self.loss_fn = loss_fn
        self.image_shape = image_shape
        self.distribution = distribution
        # Each replica's mean loss is scaled by 1/R: the summed gradients are the global batch's mean.
        self.scale = 1.0 / replicas(distribution)
        step = self._train_step if distribution is None else self._distributed_step
        self._step = tf.function(step, reduce_retracing=True)

    def _distributed_step(self, *arrays):
        loss, pred = self.distribution.run(self._train_step, args=arrays)
        total = self.distribution.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
        return total, self.distribution.gather(pred, axis=0)  # the global batch's embeddings, in order

    def _train_step(self, x, y, *draws):
        if self.augmenter is not None:
            flat = tf.reshape(x, (-1, *self.image_shape))
            x = tf.reshape(self.augmenter(flat, training=True), tf.shape(x))
        with tf.GradientTape() as tape:
            pred = tf.cast(self.model(x, training=True), tf.float32)  # losses in float32 under mixed precision
            loss = self.loss_fn(y, pred, *draws)
            if self.model.losses:  # kernel regularisers of the assignment's archs
                loss = loss + tf.add_n(self.model.losses)
            loss = loss * self.scale
        grads = tape.gradient(loss, self.model.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
        return loss, pred

    def __call__(self, batch: Batch) -> tuple[tf.Tensor, tf.Tensor]:
        """One step; returns the loss and the batch's embeddings (for strategies that observe them)."""
        arrays = batch.arrays()
        if self.distribution is None:
            return self._step(*(tf.constant(a) for a in arrays))
        return self._step(*split_batch(self.distribution, *arrays))


class Trainer:
    """Trains one strategy; see :func:`train` for the one-call form."""

    def __init__(
        self,
        settings: dict,
        model_params: dict,
        train_set: OmniglotSet,
        val_set: OmniglotSet,
        test_set: OmniglotSet | None = None,
        distribution: tf.distribute.Strategy | None = None,
    ):
        self.s = settings
        self.distribution = distribution
        _check_replica_split(settings, replicas(distribution))
        self.name = settings["strategy"]
        seed = int(settings["seed"])
        keras.utils.set_random_seed(seed)  # same seed -> same initial weights for every strategy
        # bfloat16 compute (float32 weights) runs about 1.6x faster on CPUs with AVX512-BF16.
        keras.mixed_precision.set_global_policy(settings.get("precision", "float32"))
        self.image_size = int(train_set.X.shape[-1])
        options = {k: v for k, v in model_params.items() if k not in ("arch", "embedding_dim")}
        if model_params["arch"] != "convnet":
            options = {}
        scope = distribution.scope() if distribution is not None else contextlib.nullcontext()
        with scope:  # variables (weights, optimizer slots) become mirrored under a strategy
            self._build(settings, model_params, options, train_set, seed)
        # The same tasks for every loop and every strategy: seeded apart from training.
        n_way, k = settings["n_way"], settings["val_tasks"]
        self.val_set, self.test_set = val_set, test_set
        self.val_tasks = oneshot.sample_tasks(val_set.c, val_set.n_characters, n_way, k, np.random.default_rng([seed, 1]))
        self.test_tasks = (
            oneshot.sample_tasks(test_set.c, test_set.n_characters, n_way, k, np.random.default_rng([seed, 2]))
            if test_set is not None
            else None
        )
        self.history: list[LoopRecord] = []
        self.best_loop, self.best_val = -1, -math.inf
        self.best_weights: list[np.ndarray] | None = None
        self.train_seconds = 0.0
        self.start_loop = 0
        self.extra: dict = {}

    def _build(self, settings: dict, model_params: dict, options: dict, train_set: OmniglotSet, seed: int) -> None:
        dist = self.distribution
        self.embedding = build_embedding(
            model_params["arch"], self.image_size, model_params.get("embedding_dim"), sync_batchnorm=dist is not None, **options
        )
        self.embed = make_embed_fn(self.embedding)
        X = train_set.X
        if settings["augment"]["rotations"]:
            X = augment_rotations(X)
        if settings["augment"].get("flips"):
            X = augment_flips(X)
        self.X = X
        self.rng = np.random.default_rng(seed)
        self.strategy = make_strategy(self.name, X, settings, self.rng, self.embed)
        # Warm-up: random triplets in the same batch form as the strategy's own.
        self.warmup = make_strategy("random", X, settings, self.rng) if settings["warmup_loops"] else None
        self.total_steps = settings["loops"] * settings["steps_per_loop"]
        self.optimizer = make_optimizer(settings, self.total_steps)
        self.optimizer.build(self.embedding.trainable_variables)
        self.augmenter = make_augmenter(settings["augment"]["affine"], seed)
        image_shape = (self.image_size, self.image_size, 1)
        # One compiled step per batch form: the 3-branch network for triplet batches, the
        # embedding with the strategy's batch loss for class batches.
        self._steppers: dict[str, _Stepper] = {}
        loss_args = dict(margin=settings["margin"], soft=settings["soft_margin"], distance=settings["distance"])
        for strategy in filter(None, (self.strategy, self.warmup)):
            key = _stepper_key(strategy)
            if key in self._steppers:
                continue
            if strategy.uses_triplet_network:
                net = build_triplet_network(self.embedding, self.image_size)
                self._steppers[key] = _Stepper(net, TripletLoss(**loss_args), self.optimizer, self.augmenter, image_shape, dist)
            else:
                batch_loss = get_loss(strategy.name, **loss_args)
                loss_fn = lambda y, e, *draws, loss=batch_loss: loss(e, y, *draws)  # noqa: E731
                self._steppers[key] = _Stepper(self.embedding, loss_fn, self.optimizer, self.augmenter, image_shape, dist)

    # -- scoring ---------------------------------------------------------------------------

    def score(self, data: OmniglotSet, tasks) -> tuple[float, np.ndarray]:
        emb = oneshot.embed_set(self.embed, data.X, used=tasks)
        return 100.0 * float(oneshot.evaluate_tasks(emb, tasks).mean()), emb

    # -- checkpoints -----------------------------------------------------------------------

    def _state_arrays(self) -> dict[str, np.ndarray]:
        arrays = {f"w{i}": w for i, w in enumerate(self.embedding.get_weights())}
        arrays.update({f"o{i}": v.numpy() for i, v in enumerate(self.optimizer.variables)})
        if self.augmenter is not None:
            arrays.update({f"a{i}": w for i, w in enumerate(self.augmenter.get_weights())})
        for i, w in enumerate(self.best_weights or []):
            arrays[f"b{i}"] = w
        return arrays

    def save_checkpoint(self, folder: str | Path) -> None:
        """Everything needed to resume after the last finished loop, written atomically."""
        folder = Path(folder)
        with atomic_path(folder / CHECKPOINT_ARRAYS) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **self._state_arrays())
        state = {
            "next_loop": len(self.history),
            "history": [r.as_dict() for r in self.history],
            "best_loop": self.best_loop,
            "best_val": self.best_val,
            "train_seconds": self.train_seconds,
            "rng": self.rng.bit_generator.state,
            "strategy_state": getattr(self.strategy, "_steps", None),
            "settings": self.s,
            "extra": self.extra,
        }
        # The state file is written last: it names a complete arrays file.
        write_json(folder / CHECKPOINT_STATE, json.loads(json.dumps(state, default=_json_default)))

    def load_checkpoint(self, folder: str | Path) -> bool:
        """Resume from ``folder`` if it holds a checkpoint of the same settings."""
        folder = Path(folder)
        state_file = folder / CHECKPOINT_STATE
        if not state_file.is_file() or not (folder / CHECKPOINT_ARRAYS).is_file():
            return False
        state = json.loads(state_file.read_text())
        if state["settings"] != json.loads(json.dumps(self.s, default=_json_default)):
            return False  # params changed: start afresh
        with np.load(folder / CHECKPOINT_ARRAYS) as z:
            n_w = len(self.embedding.weights)
            self.embedding.set_weights([z[f"w{i}"] for i in range(n_w)])
            for i, v in enumerate(self.optimizer.variables):
                v.assign(z[f"o{i}"])
            if self.augmenter is not None:
                self.augmenter.set_weights([z[f"a{i}"] for i in range(len(self.augmenter.weights))])
            self.best_weights = [z[f"b{i}"] for i in range(n_w)] if "b0" in z else None
        self.history = [LoopRecord(**r) for r in state["history"]]
        self.best_loop, self.best_val = state["best_loop"], state["best_val"]
        self.train_seconds = state["train_seconds"]
        self.rng.bit_generator.state = state["rng"]
        if state["strategy_state"] is not None:
            self.strategy._steps = state["strategy_state"]
            if getattr(self.strategy, "refresh_every", 0):
                self.strategy.table = None  # rebuilt from the restored weights
                self.strategy._steps -= self.strategy._steps % self.strategy.refresh_every
        self.extra = state.get("extra", {})
        self.start_loop = state["next_loop"]
        return True

    def train_step(self, strategy, batch: Batch | None = None) -> tuple[tf.Tensor, Batch]:
        """Train on one batch (drawn from ``strategy`` unless given); returns the loss and the batch."""
        batch = strategy.sample() if batch is None else batch
        loss, embeddings = self._steppers[_stepper_key(strategy)](batch)
        if hasattr(strategy, "observe"):  # e.g. hard mining's table takes the fresh embeddings
            strategy.observe(batch, embeddings.numpy())
        self._last_embeddings = embeddings
        return loss, batch

    def _record_examples(self, batch: Batch, loop: int, n: int = 8) -> None:
        """Keep a few mined triplets of the first and last main loop, for the report."""
        if batch.y.ndim == 2:  # triplet batches: (anchor, positive, negative) rows
            classes, drawings = batch.y[:n], batch.drawings[:n]
        elif batch.draws is not None:  # class batches: the triplets the loss took, spread over the batch
            emb, draws = np.asarray(self._last_embeddings), batch.arrays()[2]  # the float32 draws the step used
            # Each replica mined inside its own contiguous slice of the batch: so does the twin.
            share = len(batch.y) // replicas(self.distribution)
            found = [in_batch_triplets(emb[i : i + share], batch.y[i : i + share], draws[i : i + share], self.strategy.name)
                     for i in range(0, len(batch.y), share)]
            a, p, neg = (np.concatenate([t[j] + i * share for i, t in enumerate(found)]) for j in range(3))
            rows = np.unique(np.linspace(0, len(a) - 1, n).astype(int)) if len(a) else np.zeros(0, int)
            idx = np.stack([a[rows], p[rows], neg[rows]], axis=1)
            classes, drawings = batch.y[idx], batch.drawings[idx]
        else:
            return
        example = {"loop": loop + 1, "classes": classes.tolist(), "drawings": drawings.tolist()}
        for key, at in (("first", self.s["warmup_loops"]), ("last", self.s["loops"] - 1)):
            if loop == at:
                self.extra.setdefault("mined", {})[key] = example

    # -- the loop --------------------------------------------------------------------------

    def run(
        self,
        on_loop: Callable[[LoopRecord], None] | None = None,
        checkpoint_dir: str | Path | None = None,
        progress: bool = False,
    ) -> TrainResult:
        s = self.s
        for loop in range(self.start_loop, s["loops"]):
            warm = self.warmup is not None and loop < s["warmup_loops"]
            strategy = self.warmup if warm else self.strategy
            t0 = time.perf_counter()
            losses = []
            steps = range(s["steps_per_loop"])
            if progress:
                from tqdm import tqdm

                steps = tqdm(steps, desc=f"{self.name} loop {loop + 1}/{s['loops']}", leave=False)
            for i in steps:
                loss, batch = self.train_step(strategy)
                losses.append(loss)
                if i == 0 and not warm:
                    self._record_examples(batch, loop)
            loss = float(np.mean([float(v) for v in losses]))
            seconds = time.perf_counter() - t0
            self.train_seconds += seconds
            if not np.isfinite(loss):
                raise TrainingError(f"{self.name}: loss is {loss} at loop {loop + 1}; stopping (try a lower learning rate)")
            val_acc, val_emb = self.score(self.val_set, self.val_tasks)
            reason = collapse_reason(val_emb[np.isfinite(val_emb).all(axis=-1)], loss, s["margin"])
            if reason:
                raise TrainingError(f"{self.name}: the embedding collapsed at loop {loop + 1} ({reason}); stopping")
            test_acc = self.score(self.test_set, self.test_tasks)[0] if self.test_set is not None else None
            record = LoopRecord(loop + 1, loss, val_acc, test_acc, seconds, s["steps_per_loop"], "warmup" if warm else "main")
            self.history.append(record)
            if val_acc > self.best_val:  # ties keep the earlier loop
                self.best_val, self.best_loop = val_acc, loop + 1
                self.best_weights = self.embedding.get_weights()
            if on_loop is not None:
                on_loop(record)
            if checkpoint_dir is not None:
                self.save_checkpoint(checkpoint_dir)
        self.embedding.set_weights(self.best_weights)
        return TrainResult(
            self.embedding, self.history, self.best_loop, self.best_val, self.train_seconds, self.total_steps, self.extra
        )


def _stepper_key(strategy) -> str:
    """Strategies that train the same network with the same loss share a compiled step."""
    return "triplets" if strategy.uses_triplet_network else strategy.name


def _check_replica_split(settings: dict, n_replicas: int) -> None:
    """Every replica gets whole triplets (or whole classes): the global batch must split evenly."""
    if n_replicas == 1:
        return
    classes = settings["strategy"] in ONLINE_STRATEGIES or settings.get("batches") == "classes"
    key = "classes_per_batch" if classes else "batch_size"
    if settings[key] % n_replicas:
        raise ParamsError(
            f"{key} = {settings[key]} (train.{key}, or strategies.{settings['strategy']}.{key} where set): must be a multiple of the "
            f"{n_replicas} replicas of train.distribute = {settings.get('distribute')!r}"
        )


def _json_default(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def train(
    settings: dict,
    model_params: dict,
    train_set: OmniglotSet,
    val_set: OmniglotSet,
    test_set: OmniglotSet | None = None,
    on_loop: Callable[[LoopRecord], None] | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train a fresh model with ``settings["strategy"]``; resume from ``checkpoint_dir`` if it holds one."""
    trainer = Trainer(settings, model_params, train_set, val_set, test_set)
    if checkpoint_dir is not None:
        trainer.load_checkpoint(checkpoint_dir)
    return trainer.run(on_loop, checkpoint_dir, progress)

"""The training loop: loops x steps, per-loop scoring, best-on-validation, checkpoints.

One strategy (a sampler and a miner) trains one fresh model. After every loop the loop's
mean loss, the 20-way one-shot accuracy on fixed validation tasks (which chooses the
model) and on ``test_tasks`` test tasks drawn afresh for that loop (the assignment's
per-loop figure, reported as the assignment reports it, never used to choose) go to a
callback. A checkpoint after every loop lets a killed run resume
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
from tripletml.atomic import write_json
from tripletml.data import OmniglotSet
from tripletml.distribute import replicas, split_batch
from tripletml.embedder import make_embed_fn
from tripletml.errors import ParamsError, TrainingError
from tripletml.losses import TripletMarginLoss, collapse_reason
from tripletml.miners import NEGATIVE_MINERS, get_miner, pairs_with_negative_class
from tripletml.models import build_embedding
from tripletml.params import ModelParams, StrategySettings
from tripletml.samplers import Batch, ClassSampler, TripletPairs, TripletSampler, augment_flips, augment_rotations

CHECKPOINT_STATE = "state.json"


@dataclass
class LoopRecord:
    """What one loop produced; ``test_acc20_250``: accuracy on the loop's fresh test tasks."""

    loop: int
    loss: float
    val_acc20: float | None
    test_acc20_250: float | None
    loop_seconds: float
    steps: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class TrainResult:
    embedding: keras.Model
    history: list[LoopRecord]
    best_loop: int
    best_val_acc20: float | None  # None: no validation alphabets, the last loop's model
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


def make_optimizer(settings: StrategySettings, total_steps: int) -> keras.optimizers.Optimizer:
    lr = settings.learning_rate
    if settings.lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(total_steps, 1), alpha=0.01)
    if settings.optimizer == "sgd":
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
    """The compiled train step of one strategy, on one device or under a tf.distribute strategy.

    Every form embeds the batch once in training mode and trains
    ``TripletMarginLoss(embeddings, (a, p, n))``; they differ in where (a, p, n) come from:
    triplet batches bring them chosen (rows 3i, 3i+1, 3i+2); class batches mine them here,
    the hard rule from an inference-mode pass of the same weights.
    """

    def __init__(self, model: keras.Model, sampler_name: str, miner, loss: TripletMarginLoss, optimizer, augmenter, image_shape, distribution=None):
        self.model, self.sampler_name, self.miner, self.loss = model, sampler_name, miner, loss
        self.optimizer, self.augmenter, self.image_shape = optimizer, augmenter, image_shape
        self.distribution = distribution
        # Each replica's mean loss is scaled by 1/R: the summed gradients are the global batch's mean.
        self.scale = 1.0 / replicas(distribution)
        step = self._train_step if distribution is None else self._distributed_step
        self._step = tf.function(step, reduce_retracing=True)

    def _distributed_step(self, *arrays):
        loss = self.distribution.run(self._train_step, args=arrays)
        return self.distribution.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)

    def _indices(self, images, embeddings, y, draws):
        if self.sampler_name == "triplets":
            rows = tf.range(tf.shape(images)[0] // 3) * 3
            return rows, rows + 1, rows + 2
        if self.miner.name in NEGATIVE_MINERS:
            anchors, positives, candidates, u = pairs_with_negative_class(y, draws[0])
            mine_on = tf.cast(self.model(images, training=False), tf.float32) if self.miner.needs_embeddings else None
            return anchors, positives, self.miner(mine_on, anchors, candidates, u)
        return self.miner(embeddings, y)

    def _train_step(self, x, y, *draws):
        images = tf.reshape(x, (-1, *self.image_shape))  # triplet batches: (B, 3, ...) -> 3B rows a, p, n, a, ...
        if self.augmenter is not None:
            images = self.augmenter(images, training=True)
        with tf.GradientTape() as tape:
            embeddings = tf.cast(self.model(images, training=True), tf.float32)  # losses in float32 under mixed precision
            indices = self._indices(images, embeddings, tf.reshape(y, [-1]), draws)
            loss = self.loss(embeddings, indices)
            if self.model.losses:  # kernel regularisers of the assignment's archs
                loss = loss + tf.add_n(self.model.losses)
            loss = loss * self.scale
        grads = tape.gradient(loss, self.model.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
        return loss

    def __call__(self, batch: Batch) -> tf.Tensor:
        arrays = batch.arrays()
        if self.distribution is None:
            return self._step(*(tf.constant(a) for a in arrays))
        return self._step(*split_batch(self.distribution, *arrays))


def _validation_tasks(s: StrategySettings, val_set: OmniglotSet, seed: int) -> oneshot.OneShotTasks:
    """The validation tasks every loop is scored on, across or within the validation alphabets."""
    rng = np.random.default_rng([seed, 1])
    try:
        return oneshot.sample_tasks(val_set.c, val_set.n_characters, s.n_way, s.val_tasks, rng, within_alphabet=s.val_within_alphabet)
    except ValueError as e:
        if not s.val_within_alphabet:
            raise
        # no validation alphabet has n_way characters
        raise ParamsError(f"train.val_within_alphabet = true with train.n_way = {s.n_way}: {e}; lower train.n_way or hold out a larger alphabet") from None


class Trainer:
    """Trains one strategy (a sampler and a miner); see :func:`train` for the one-call form."""

    def __init__(
        self,
        settings: StrategySettings,
        model_params: ModelParams,
        train_set: OmniglotSet,
        val_set: OmniglotSet,
        test_set: OmniglotSet | None = None,
        distribution: tf.distribute.Strategy | None = None,
    ):
        self.s = settings
        self.distribution = distribution
        _check_replica_split(settings, replicas(distribution))
        self.name = settings.strategy
        seed = int(settings.seed)
        keras.utils.set_random_seed(seed)  # same seed -> same initial weights for every strategy
        # bfloat16 compute (float32 weights) runs about 1.6x faster on CPUs with AVX512-BF16.
        keras.mixed_precision.set_global_policy(settings.precision)
        self.image_size = int(train_set.X.shape[-1])
        # convnet's own options (filters, blocks, ...); the assignment's archs take none
        options = model_params.model_dump(exclude={"arch", "embedding_dim"}) if model_params.arch == "convnet" else {}
        scope = distribution.scope() if distribution is not None else contextlib.nullcontext()
        with scope:  # variables (weights, optimizer slots) become mirrored under a strategy
            self._build(settings, model_params, options, train_set, seed)
        # Validation: the same tasks every loop and for every strategy, seeded apart from training.
        # No validation alphabets (the assignment's split): no model is chosen, the last loop's is kept.
        self.val_set, self.test_set = val_set, test_set
        self._identity = _run_identity(settings, model_params, train_set, val_set)
        self.val_tasks = _validation_tasks(settings, val_set, seed) if val_set is not None and val_set.n_characters else None
        self.history: list[LoopRecord] = []
        self.best_loop, self.best_val = -1, -math.inf
        self._manager: tf.train.CheckpointManager | None = None
        self.train_seconds = 0.0
        self.start_loop = 0
        self.extra: dict = {}

    def _build(self, settings: StrategySettings, model_params: ModelParams, options: dict, train_set: OmniglotSet, seed: int) -> None:
        dist = self.distribution
        self.embedding = build_embedding(
            model_params.arch, self.image_size, model_params.embedding_dim, sync_batchnorm=dist is not None, **options
        )
        self.embed = make_embed_fn(self.embedding)
        X = train_set.X
        if settings.augment.rotations:
            X = augment_rotations(X)
        if settings.augment.flips:
            X = augment_flips(X)
        self.X = X
        self.rng = np.random.default_rng(seed)
        self.miner = get_miner(settings.miner, settings.distance)
        self.sampler = make_sampler(settings, X, self.rng)
        self.total_steps = settings.loops * settings.steps_per_loop
        self.optimizer = make_optimizer(settings, self.total_steps)
        self.optimizer.build(self.embedding.trainable_variables)
        self.augmenter = make_augmenter(settings.augment.affine, seed)
        # The best loop's weights, as variables so that the checkpoint holds them too.
        self._best = [tf.Variable(w, trainable=False) for w in self.embedding.weights]
        loss = TripletMarginLoss(
            settings.margin, settings.soft_margin, settings.distance, getattr(self.miner, "reducer", "mean")
        )
        image_shape = (self.image_size, self.image_size, 1)
        self._stepper = _Stepper(self.embedding, settings.sampler, self.miner, loss, self.optimizer, self.augmenter, image_shape, dist)
        self._index_rule = self._stepper._indices  # the step's own triplet rule, for the report's examples

    # -- scoring ---------------------------------------------------------------------------

    def score(self, data: OmniglotSet, tasks) -> tuple[float, np.ndarray]:
        emb = oneshot.embed_set(self.embed, data.X, used=tasks)
        return 100.0 * float(oneshot.evaluate_tasks(emb, tasks).mean()), emb

    def loop_test_tasks(self, loop: int) -> oneshot.OneShotTasks:
        """The assignment's per-loop test: ``test_tasks`` 20-way tasks drawn afresh for every loop."""
        t = self.test_set
        return oneshot.sample_tasks(
            t.c, t.n_characters, self.s.n_way, self.s.test_tasks, np.random.default_rng([int(self.s.seed), 2, loop])
        )

    # -- checkpoints -----------------------------------------------------------------------

    def _checkpoint(self) -> tf.train.Checkpoint:
        parts = {"model": self.embedding, "optimizer": self.optimizer}
        if self.val_tasks is not None:  # without validation the kept model is the last loop's: no second copy
            parts["best"] = self._best
        if self.augmenter is not None:  # its random layers carry seed-generator state
            parts["augmenter"] = self.augmenter
        return tf.train.Checkpoint(**parts)

    def save_checkpoint(self, folder: str | Path) -> None:
        """Everything needed to resume after the last finished loop.

        Weights, optimizer slots and the best loop's weights go to a ``tf.train.Checkpoint``;
        the sampler's RNG state and the history to ``state.json`` beside it, written last and
        naming its checkpoint, so a kill at any moment leaves the previous loop's pair whole.
        """
        folder = Path(folder)
        if self._manager is None or Path(self._manager.directory) != folder:
            self._manager = tf.train.CheckpointManager(self._checkpoint(), str(folder), max_to_keep=2)
        path = self._manager.save(checkpoint_number=len(self.history))
        state = {
            "checkpoint": Path(path).name,
            "next_loop": len(self.history),
            "history": [r.as_dict() for r in self.history],
            "best_loop": self.best_loop,
            "best_val": self.best_val,
            "train_seconds": self.train_seconds,
            "rng": self.rng.bit_generator.state,
            "settings": self._identity,
            "extra": self.extra,
        }
        write_json(folder / CHECKPOINT_STATE, json.loads(json.dumps(state, default=_json_default)))

    @property
    def checkpoint_key(self) -> str:
        """A short digest of what this run is (strategy settings, model params, data split):
        one checkpoint folder per run, so a run of other params never overwrites its resume point."""
        return hashlib.sha256(json.dumps(self._identity, sort_keys=True).encode()).hexdigest()[:12]

    def load_checkpoint(self, folder: str | Path) -> bool:
        """Resume from ``folder`` if it holds a checkpoint of the same run (``checkpoint_key``)."""
        folder = Path(folder)
        state_file = folder / CHECKPOINT_STATE
        if not state_file.is_file():
            return False
        state = json.loads(state_file.read_text())
        if state.get("settings") != self._identity or "checkpoint" not in state:
            return False  # another run's (or an older format): start afresh
        self._checkpoint().restore(str(folder / state["checkpoint"])).assert_existing_objects_matched()
        self.history = [LoopRecord(**r) for r in state["history"]]
        self.best_loop, self.best_val = state["best_loop"], state["best_val"]
        self.train_seconds = state["train_seconds"]
        self.rng.bit_generator.state = state["rng"]
        self.extra = state.get("extra", {})
        self.start_loop = len(self.history)
        return True

    # -- one step --------------------------------------------------------------------------

    def mine_triplets(self, pairs: TripletPairs) -> np.ndarray:
        """The negative drawing of each triplet-batch pair, by the miner (hard: one batched
        inference-mode pass over the anchors and every drawing of each negative class)."""
        b, n_draw = len(pairs.u), self.X.shape[1]
        anchors = np.arange(b)
        if not self.miner.needs_embeddings:
            return self.miner(None, anchors, np.tile(np.arange(n_draw), (b, 1)), pairs.u).numpy()
        anchor_images = self.X[pairs.anchor_cls, pairs.anchor_drawing][:, None, ..., None]
        images = np.concatenate([anchor_images, self.sampler.candidates(pairs)], axis=1)
        emb = self.embed(images.reshape(-1, *images.shape[2:]))  # (B * (1 + n_draw), D): anchor, its candidates
        rows = anchors * (1 + n_draw)
        chosen = self.miner(emb, rows, rows[:, None] + 1 + np.arange(n_draw), pairs.u).numpy()
        return chosen - rows - 1

    def sample(self) -> Batch:
        """The next batch of the strategy: its images, and for triplet batches the mined negatives."""
        if isinstance(self.sampler, TripletSampler):
            pairs = self.sampler.pairs()
            return self.sampler.batch(pairs, self.mine_triplets(pairs))
        return self.sampler.sample()

    def train_step(self, batch: Batch | None = None) -> tuple[tf.Tensor, Batch]:
        """Train on one batch (drawn from the strategy unless given); returns the loss and the batch."""
        batch = self.sample() if batch is None else batch
        return self._stepper(batch), batch

    def mined(self, batch: Batch) -> np.ndarray:
        """(T, 3) batch rows of the triplets the strategy trains on in ``batch``, under the current
        weights: the step's own rule, run eagerly on each replica's slice (inference-mode embeddings)."""
        x, y, *draws = batch.arrays()
        share = len(y) // replicas(self.distribution)
        found = []
        for i in range(0, len(y), share):
            rows = slice(i, i + share)
            images = tf.reshape(x[rows], (-1, self.image_size, self.image_size, 1))
            idx = self._index_rule(images, tf.constant(self.embed(images.numpy())), y[rows], [d[rows] for d in draws])
            found.append(np.stack([np.asarray(t) for t in idx], axis=1) + (3 * i if batch.y.ndim == 2 else i))
        return np.concatenate(found)

    def _record_examples(self, batch: Batch, loop: int, n: int = 8) -> None:
        """Keep a few mined triplets of the first and last loop, for the report."""
        if loop not in (0, self.s.loops - 1):
            return
        triplets = self.mined(batch)
        rows = np.unique(np.linspace(0, len(triplets) - 1, n).astype(int)) if len(triplets) else np.zeros(0, int)
        classes, drawings = batch.y.reshape(-1)[triplets[rows]], batch.drawings.reshape(-1)[triplets[rows]]
        example = {"loop": loop + 1, "classes": classes.tolist(), "drawings": drawings.tolist()}
        self.extra.setdefault("mined", {})["first" if loop == 0 else "last"] = example

    # -- the loop --------------------------------------------------------------------------

    def run(
        self,
        on_loop: Callable[[LoopRecord], None] | None = None,
        checkpoint_dir: str | Path | None = None,
        progress: bool = False,
    ) -> TrainResult:
        s = self.s
        for loop in range(self.start_loop, s.loops):
            t0 = time.perf_counter()
            losses = []
            steps = range(s.steps_per_loop)
            if progress:
                steps = progress_bar(steps, f"{self.name} loop {loop + 1}/{s.loops}")
            for i in steps:
                batch = self.sample()
                if i == 0:  # before the step: the triplets this very step trains on
                    self._record_examples(batch, loop)
                losses.append(self._stepper(batch))
            loss = float(np.mean([float(v) for v in losses]))
            seconds = time.perf_counter() - t0
            self.train_seconds += seconds
            if not np.isfinite(loss):
                raise TrainingError(f"{self.name}: loss is {loss} at loop {loop + 1}; stopping (try a lower learning rate)")
            val_acc, emb = self.score(self.val_set, self.val_tasks) if self.val_tasks is not None else (None, None)
            test_acc = None
            if self.test_set is not None:
                test_acc, test_emb = self.score(self.test_set, self.loop_test_tasks(loop))
                emb = test_emb if emb is None else emb  # the collapse check only stops training: any set will do
            if emb is not None:
                reason = collapse_reason(emb[np.isfinite(emb).all(axis=-1)], loss, s.margin)
                if reason:
                    raise TrainingError(f"{self.name}: the embedding collapsed at loop {loop + 1} ({reason}); stopping")
            record = LoopRecord(loop + 1, loss, val_acc, test_acc, seconds, s.steps_per_loop)
            self.history.append(record)
            if val_acc is None:  # no validation: the last loop's model, the weights as they are
                self.best_loop = loop + 1
            elif val_acc > self.best_val:  # ties keep the earlier loop
                self.best_val, self.best_loop = val_acc, loop + 1
                for kept, w in zip(self._best, self.embedding.weights):
                    kept.assign(w)
            if on_loop is not None:
                on_loop(record)
            if checkpoint_dir is not None:
                self.save_checkpoint(checkpoint_dir)
        best_val = None
        if self.val_tasks is not None:
            self.embedding.set_weights([w.numpy() for w in self._best])
            best_val = self.best_val
        return TrainResult(self.embedding, self.history, self.best_loop, best_val, self.train_seconds, self.total_steps, self.extra)


def _run_identity(settings: StrategySettings, model_params: ModelParams, *sets: OmniglotSet | None) -> dict:
    """What must match for a checkpoint to resume: the strategy's settings, the network, and
    the data split (each set's shape and alphabet ranges: other validation alphabets or image
    size give other arrays)."""
    data = [None if d is None else {"shape": list(d.X.shape), "c": sorted([a, *map(int, r)] for a, r in d.c.items())} for d in sets]
    return {"train": settings.model_dump(mode="json"), "model": model_params.model_dump(mode="json"), "data": data}


def progress_bar(steps, desc: str):
    """A tqdm bar on a terminal; elsewhere (a log file, a pipe) no per-step frames at all."""
    import sys

    from tqdm import tqdm

    return tqdm(steps, desc=desc, leave=False, disable=not sys.stderr.isatty())


def make_sampler(settings: StrategySettings, X: np.ndarray, rng: np.random.Generator) -> TripletSampler | ClassSampler:
    """The strategy's sampler from its effective settings (``params.strategy(name)``)."""
    if settings.sampler == "triplets":
        return TripletSampler(X, settings.batch_size, rng)
    n_draw = X.shape[1]
    k = settings.drawings_per_class(n_draw)
    if settings.miner == "hard" and k != n_draw:
        raise ValueError(
            f"samples_per_class = {k}: hard takes the nearest of every drawing of the negative class, "
            f"so a class batch holds all {n_draw} drawings of each class; leave it unset"
        )
    return ClassSampler(X, settings.classes_per_batch, k, rng, draws=settings.miner in NEGATIVE_MINERS)


def _check_replica_split(settings: StrategySettings, n_replicas: int) -> None:
    """Every replica gets whole triplets (or whole classes): the global batch must split evenly."""
    if n_replicas == 1:
        return
    key = "classes_per_batch" if settings.sampler == "classes" else "batch_size"
    if getattr(settings, key) % n_replicas:
        raise ParamsError(
            f"{key} = {getattr(settings, key)} (train.{key}, or strategies.{settings.strategy}.{key} where set): must be a multiple of the "
            f"{n_replicas} replicas of train.distribute = {settings.distribute!r}"
        )


def _json_default(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def train(
    settings: StrategySettings,
    model_params: ModelParams,
    train_set: OmniglotSet,
    val_set: OmniglotSet,
    test_set: OmniglotSet | None = None,
    on_loop: Callable[[LoopRecord], None] | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train a fresh model with ``settings.strategy``; resume from ``checkpoint_dir`` if it holds one."""
    trainer = Trainer(settings, model_params, train_set, val_set, test_set)
    if checkpoint_dir is not None:
        trainer.load_checkpoint(checkpoint_dir)
    return trainer.run(on_loop, checkpoint_dir, progress)

"""Run by tests/test_distribute.py in a fresh process (logical CPU devices must be set
before TensorFlow starts): train the same steps on one device and mirrored over two
logical CPUs from the same weights and batches; print both runs' losses and weights as JSON."""

import json
import sys

import numpy as np

from tripletml.distribute import make_distribution

mirrored = make_distribution("mirrored", cpu_replicas=2)  # first: before any other TensorFlow work

from test_training import MODEL, _make_set, settings  # noqa: E402

from tripletml.training import Trainer  # noqa: E402

arg = sys.argv[1]  # a strategy, or "random_classes" / "hard_classes" for their class batches
name = arg.removesuffix("_classes")
extra = {"batches": "classes"} if arg != name else {"refresh_every": 2} if name == "hard" else {}
s = settings(name, strategy=extra, batch_size=8)
s["distribute"] = "mirrored"
train, val = _make_set(12, 0), _make_set(6, 1)
one = Trainer(s, MODEL, train, val)
two = Trainer(s, MODEL, train, val, distribution=mirrored)
two.embedding.set_weights(one.embedding.get_weights())
out = {"replicas": int(mirrored.num_replicas_in_sync)}
if not one.strategy.uses_triplet_network:
    # Online miners mine inside each replica's half of the classes: the first step's loss is
    # the mean of the two halves' batch losses, with BatchNorm over the whole batch.
    from tripletml.losses import get_loss
    from tripletml.selection import make_strategy

    first = make_strategy(name, one.X, s, np.random.default_rng(7)).sample()
    emb = one.embedding(first.x.astype(np.float32), training=True)
    loss = get_loss(name, margin=s["margin"], soft=s["soft_margin"], distance=s["distance"])
    halves = [slice(None, len(first.y) // 2), slice(len(first.y) // 2, None)]
    draws = [() if first.draws is None else (first.draws[h],) for h in halves]
    out["per_replica_first"] = float(sum(loss(emb[h], first.y[h], *d) for h, d in zip(halves, draws)) / 2)
for key, trainer in (("one", one), ("two", two)):
    trainer.rng = np.random.default_rng(7)  # the same batches for both
    trainer.strategy.rng = trainer.rng
    losses = [float(trainer.train_step(trainer.strategy)[0]) for _ in range(4)]
    out[key] = {"losses": losses, "weights": [w.ravel()[:50].tolist() for w in trainer.embedding.get_weights()]}
print("RESULT " + json.dumps(out))

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

name = sys.argv[1]  # a strategy of test_training.STRATEGIES
s = settings(name, batch_size=8, distribute="mirrored")
train, val = _make_set(12, 0), _make_set(6, 1)
one = Trainer(s, MODEL, train, val)
two = Trainer(s, MODEL, train, val, distribution=mirrored)
two.embedding.set_weights(one.embedding.get_weights())
out = {"replicas": int(mirrored.num_replicas_in_sync)}
if s.sampler == "classes":
    # Class batches mine inside each replica's half of the classes: the first step's loss is the
    # mean of the two halves' losses, with BatchNorm's statistics over the whole batch.
    one.rng = one.sampler.rng = np.random.default_rng(7)
    first = one.sample()
    x, y, *draws = first.arrays()
    emb = one.embedding(x, training=True)
    halves = [slice(None, len(y) // 2), slice(len(y) // 2, None)]
    step = one._stepper
    out["per_replica_first"] = float(
        sum(step.loss(emb[h], step._indices(x[h], emb[h], y[h], [d[h] for d in draws])) for h in halves) / 2
    )
for key, trainer in (("one", one), ("two", two)):
    trainer.rng = trainer.sampler.rng = np.random.default_rng(7)  # the same batches for both
    losses = [float(trainer.train_step()[0]) for _ in range(4)]
    out[key] = {"losses": losses, "weights": [w.ravel()[:50].tolist() for w in trainer.embedding.get_weights()]}
print("RESULT " + json.dumps(out))

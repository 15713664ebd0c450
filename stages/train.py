"""Stage `train_<strategy>`: train a fresh model with one selection strategy.

Writes models/<strategy>/{embedding.keras, meta.json, mined.json},
metrics/train/<strategy>.json and metrics/history/<strategy>.csv, and logs the run
(params, per-loop loss / val_acc20 / test_acc20_250 / loop_seconds, the model) to MLflow
when the store answers (`python -m tripletml.tracking sync` catches up otherwise).
A checkpoint after every loop (checkpoints/<strategy>/<run key>/, one folder per params) lets a
killed stage resume, also after a run of other params (a profile, an experiment) in between.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
from pathlib import Path

import common
import numpy as np
import pandas as pd

from tripletml import tracking
from tripletml.atomic import atomic_path, ensure_writable, write_json
from tripletml.data import load_prepared


def _is_chief() -> bool:
    from tripletml.distribute import is_chief  # imports TensorFlow: only after the params are checked

    return is_chief()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--strategy", required=True, help="a strategy defined under `strategies` in the params file")
    name = ap.parse_args().strategy
    params = common.params()
    settings = params.strategy(name)  # an unknown name: one line naming it
    prepared = Path(params.data.prepared_dir)
    train_set, val_set, test_set = (load_prepared(prepared / f"{s}.npz") for s in ("train", "val", "test"))
    checkpoints, model_dir = Path("checkpoints") / name, Path("models") / name
    # Under multi_worker only the chief writes anything (TF_CONFIG says who is chief).
    chief = settings.distribute != "multi_worker" or _is_chief()
    if chief:
        ensure_writable(checkpoints, model_dir, "metrics/train", "metrics/history")

    from tripletml.distribute import make_distribution
    from tripletml.embedder import save_embedder
    from tripletml.training import Trainer  # TensorFlow runs only once the inputs are known good

    distribution = make_distribution(settings.distribute, settings.cpu_replicas)  # before other TF work
    trainer = Trainer(settings, params.model, train_set, val_set, test_set, distribution)
    run_checkpoints = checkpoints / trainer.checkpoint_key
    resumed = trainer.load_checkpoint(run_checkpoints)  # other workers read the chief's, on shared storage
    if resumed:
        print(f"resuming {name} after loop {trainer.start_loop}")

    def show(record) -> None:
        print(
            f"{name} loop {record.loop}/{settings.loops}: loss {record.loss:.4f} "
            f"val_acc20 {_pct(record.val_acc20)} test_acc20_250 {_pct(record.test_acc20_250)} ({record.loop_seconds:.0f} s)",
            flush=True,
        )

    if not chief:  # a worker trains in lockstep with the chief and writes nothing
        result = trainer.run(show)
        print(f"{name}: worker finished; weights sha256 {result.weights_digest()}")
        return
    # An observer: a lost MLflow store costs a warning, never the stage (tripletml/tracking.py).
    live = tracking.LiveRun(f"train_{name}", {"train": settings, "model": params.model, "data": params.data})

    def on_loop(record) -> None:
        live.log_loop(record.as_dict())
        show(record)

    result = trainer.run(on_loop, run_checkpoints, progress=True)

    meta = {
        "strategy": name,
        "architecture": params.model.arch,
        "image_size": params.data.image_size,
        "embedding_dim": int(result.embedding.output_shape[-1]),
        "chosen_loop": result.best_loop,
        "best_val_acc20": _round(result.best_val_acc20),
        "params": {"train": settings.model_dump(), "model": params.model.model_dump(), "data": params.data.model_dump()},
    }
    save_embedder(model_dir, result.embedding, meta)
    write_json(model_dir / "mined.json", result.extra.get("mined", {}))
    # The assignment's figure: the best of the per-loop accuracies on fresh test tasks,
    # chosen on test, so optimistic; reported beside the validation-chosen model, never for it.
    per_loop = [r.test_acc20_250 for r in result.history]
    # Figures to compare only (dvc metrics show / diff); the strategy's settings are params.
    summary = {
        "final_loss": round(result.history[-1].loss, 5),
        "assignment_best_acc20": _round(max(per_loop)),
        "assignment_best_loop": int(np.argmax(per_loop)) + 1,
        "best_loop": result.best_loop,
        "best_val_acc20": _round(result.best_val_acc20),  # null: no validation alphabets, the last loop's model
        "train_seconds": round(result.train_seconds, 2),
        "seconds_per_step": round(result.seconds_per_step, 5),
    }
    write_json(Path("metrics/train") / f"{name}.json", summary)
    with atomic_path(Path("metrics/history") / f"{name}.csv") as tmp:
        pd.DataFrame([r.as_dict() for r in result.history]).to_csv(tmp, index=False)
    live.finish()  # params, metrics, the model (registered), the datasets: from the outputs just written
    shutil.rmtree(run_checkpoints, ignore_errors=True)  # a finished run leaves no checkpoint litter ...
    with contextlib.suppress(OSError):
        checkpoints.rmdir()  # ... and no empty folder; other params' resume points stay
    print(f"{name}: chosen loop {result.best_loop}, val_acc20 {_pct(result.best_val_acc20)}, {result.train_seconds:.0f} s")
    print(f"{name}: weights sha256 {result.weights_digest()}")


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


if __name__ == "__main__":
    common.run(main)

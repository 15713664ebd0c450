"""Stage `prepare`: raw Omniglot (zips or the course's pickles) -> data/prepared/{train,val,test}.npz + summary.json."""

from __future__ import annotations

from pathlib import Path

import common

from tripletml import data
from tripletml.course_pickle import load_course_pickle
from tripletml.atomic import atomic_paths, ensure_writable, json_text
from tripletml.download import OFFICIAL_MD5, file_digest


def main() -> None:
    p = common.params(use_prepared=False).data
    raw_dir = Path(p.raw_dir)
    out = Path(p.prepared_dir)
    ensure_writable(out)
    # Read and validate everything before writing anything.
    if p.course_pickles is None:
        sources = [raw_dir / name for name in OFFICIAL_MD5]
        background = data.read_omniglot_zip(sources[0], "background")
        evaluation = data.read_omniglot_zip(sources[1], "evaluation")
    else:
        sources = [raw_dir / p.course_pickles.train, raw_dir / p.course_pickles.test]
        background, evaluation = map(load_course_pickle, sources)
    train, val = data.split_train_val(background, p.validation_alphabets, p.seed)
    splits = {"train": train, "val": val, "test": evaluation}
    summary = {"image_size": p.image_size}
    # The three splits and their summary replace the old ones together, once all are written.
    with atomic_paths(*(out / f"{name}.npz" for name in splits), out / "summary.json") as tmps:
        for tmp, (name, raw) in zip(tmps, splits.items()):
            data.save_prepared(tmp, data.to_model_set(raw, p.image_size))
            summary[name] = data.summarize(raw)
        summary["val"]["names"] = val.alphabets
        summary["source"] = {f.name: {"sha256": file_digest(f, "sha256")} for f in sources}
        tmps[-1].write_text(json_text(summary), encoding="utf-8")
    print(f"prepared {', '.join(f'{k}: {v.n_characters} characters' for k, v in splits.items())} at {p.image_size}px")


if __name__ == "__main__":
    common.run(main)

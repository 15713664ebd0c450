"""Stage `download`: make sure data/raw holds the Omniglot images (the official zips, downloaded
if missing, or the course's pickles) and Lake's one-shot runs."""

from __future__ import annotations

import common

from tripletml.download import ensure_raw_zips


def main() -> None:
    d = common.params(use_prepared=False).data
    pickles = (d.course_pickles.train, d.course_pickles.test) if d.course_pickles else None
    for name, path in ensure_raw_zips(d.raw_dir, course_pickles=pickles).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    common.run(main)

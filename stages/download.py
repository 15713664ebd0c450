"""Stage `download`: make sure data/raw holds both Omniglot zips (download if missing)."""

from __future__ import annotations

import common

from tripletml.download import ensure_raw_zips


def main() -> None:
    for name, path in ensure_raw_zips(common.params(use_prepared=False).data.raw_dir).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    common.run(main)

"""The course's pickles give `prepare` the same arrays as the official zips."""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from synthetic import make_raw_dir

from tripletml import data

REPO = Path(__file__).resolve().parents[1]


def _write_course_pickle(path: Path, s: data.OmniglotSet, inclusive: bool, as_255: bool) -> None:
    """The course's layout: (X, c), paper high, alphabets in an order that is not by name."""
    alphabets = list(reversed(s.c))  # the course's loader kept the file system's order
    X = np.concatenate([s.X[slice(*s.c[a])] for a in alphabets])
    X = (X * 255).astype(np.uint8) if as_255 else X.astype(np.float64)
    c, start = {}, 0
    for a in alphabets:
        n = s.c[a][1] - s.c[a][0]
        c[a] = [start, start + n - 1] if inclusive else [start, start + n]
        start += n
    with open(path, "wb") as fh:
        pickle.dump((X, c), fh, protocol=2)


def _prepare(work: Path, data_params: dict) -> subprocess.CompletedProcess:
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["data"].update(validation_alphabets=2, image_size=28, **data_params)
    p["evaluate"].update(n_way=5)
    (work / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / "stages" / "prepare.py")], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("inclusive, as_255", [(True, False), (False, True)], ids=["c-inclusive", "c-half-open"])
def test_prepare_from_course_pickles_matches_the_zips(tmp_path, inclusive, as_255):
    raw = make_raw_dir(tmp_path / "data" / "raw")
    for name, set_name in (("omniglot_train.p", "background"), ("omniglot_test.p", "evaluation")):
        s = data.read_omniglot_zip(raw / f"images_{set_name}.zip", set_name)
        _write_course_pickle(raw / name, s, inclusive, as_255)

    from_zips = _prepare(tmp_path, {"prepared_dir": "from_zips"})
    assert from_zips.returncode == 0, from_zips.stderr
    pickles = {"train": "omniglot_train.p", "test": "omniglot_test.p"}
    from_pickles = _prepare(tmp_path, {"prepared_dir": "from_pickles", "course_pickles": pickles})
    assert from_pickles.returncode == 0, from_pickles.stderr

    for split in ("train", "val", "test"):
        a, b = (data.load_prepared(tmp_path / d / f"{split}.npz") for d in ("from_zips", "from_pickles"))
        assert a.c == b.c and a.names == b.names, split
        np.testing.assert_array_equal(a.X, b.X)
    # the same validation alphabets are held out, whichever source
    summaries = [yaml.safe_load((tmp_path / d / "summary.json").read_text()) for d in ("from_zips", "from_pickles")]
    assert summaries[0]["val"]["names"] == summaries[1]["val"]["names"]
    assert set(summaries[1]["source"]) == {"omniglot_train.p", "omniglot_test.p"}


def test_missing_course_pickle_is_one_line_naming_it(tmp_path):
    make_raw_dir(tmp_path / "data" / "raw")
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["data"]["course_pickles"] = {"train": "omniglot_train.p", "test": "omniglot_test.p"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, str(REPO / "stages" / "download.py")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: data/raw/omniglot_train.p: not found"), res.stderr
    assert "course_pickles: null" in lines[0]

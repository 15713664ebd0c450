"""Reading Omniglot: round trips, polarity, resizing, splits, pickles and every bad input."""

import pickle
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from synthetic import BACKGROUND, make_raw_dir, make_zip, png_bytes

from tripletml import data
from tripletml.course_pickle import load_course_pickle

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bg_zip(tmp_path_factory):
    path = tmp_path_factory.mktemp("raw") / "images_background.zip"
    images = make_zip(path, "background", BACKGROUND, seed=1)
    return path, images


def test_zip_round_trip_keeps_every_pixel_and_the_layout(bg_zip):
    path, images = bg_zip
    s = data.read_omniglot_zip(path, "background")
    assert s.X.shape == (sum(BACKGROUND.values()), 20, 105, 105)
    assert list(s.c) == sorted(BACKGROUND)
    # half-open, contiguous ranges with the right sizes
    for a, (lo, hi) in s.c.items():
        assert hi - lo == BACKGROUND[a]
    assert s.c["Alpha5"][1] == s.X.shape[0]
    lo = s.c["Alpha2"][0]
    member = f"images_background/Alpha2/character03/{2:04d}{2:02d}_07.png"
    np.testing.assert_array_equal(s.X[lo + 2, 6], images[member])
    assert s.names[lo + 2] == "Alpha2/character03"


def test_polarity_and_range_of_model_images(bg_zip):
    s = data.read_omniglot_zip(bg_zip[0])
    raw = s.X[:2]
    assert set(np.unique(raw)) == {0, 1}
    model = data.raw_to_model(raw, 105)
    assert model.dtype == np.float32
    # ink (raw 0) becomes 1.0; paper (raw 1) becomes 0.0, pixel for pixel
    np.testing.assert_array_equal(model, 1.0 - raw)
    assert (raw == 1).mean() > 0.5, "paper dominates a character image"
    small = data.raw_to_model(raw, 28)
    assert small.shape == (2, 20, 28, 28)
    assert small.min() >= 0.0 and small.max() <= 1.0


@pytest.mark.parametrize("size", [28, 35, 52, 64])
def test_resize_is_exact_area_averaging(size):
    rng = np.random.default_rng(size)
    raw = (rng.random((3, 105, 105)) > 0.3).astype(np.uint8)
    got = data.raw_to_model(raw, size)
    # reference: supersample each pixel `size` times, then average size-blocks of 105
    ink = 1.0 - raw.astype(np.float64)
    up = np.repeat(np.repeat(ink, size, axis=1), size, axis=2)
    ref = up.reshape(3, size, 105, size, 105).mean(axis=(2, 4))
    np.testing.assert_allclose(got, ref, atol=1e-5)
    # total ink is preserved up to the scale factor
    np.testing.assert_allclose(got.sum(axis=(1, 2)) * (105 / size) ** 2, ink.sum(axis=(1, 2)), rtol=1e-5)


def test_validation_split_is_reproducible_and_disjoint(bg_zip):
    s = data.read_omniglot_zip(bg_zip[0])
    t1, v1 = data.split_train_val(s, 2, seed=7)
    t2, v2 = data.split_train_val(s, 2, seed=7)
    assert v1.alphabets == v2.alphabets and len(v1.alphabets) == 2
    assert not set(t1.alphabets) & set(v1.alphabets)
    assert t1.n_characters + v1.n_characters == s.n_characters
    others = {tuple(data.split_train_val(s, 2, seed=k)[1].alphabets) for k in range(10)}
    assert len(others) > 1, "the seed must change the draw"
    _, vn = data.split_train_val(s, ["Alpha3"], seed=0)
    assert vn.alphabets == ["Alpha3"]
    np.testing.assert_array_equal(vn.X, s.X[slice(*s.c["Alpha3"])])
    with pytest.raises(ValueError, match="Nope"):
        data.split_train_val(s, ["Nope"], seed=0)


def test_prepared_file_round_trip(bg_zip, tmp_path):
    s = data.to_model_set(data.read_omniglot_zip(bg_zip[0]), 28)
    data.save_prepared(tmp_path / "x.npz", s)
    back = data.load_prepared(tmp_path / "x.npz")
    assert back.c == s.c and back.names == s.names
    np.testing.assert_allclose(back.X, s.X, atol=0.5 / 255 + 1e-7)
    assert [p.name for p in tmp_path.iterdir()] == ["x.npz"], "no temporary file left behind"


# ----------------------------------------------------------------------------- course pickles


def _course_pickle(path, s, inclusive):
    c = {a: [lo, hi - 1] if inclusive else [lo, hi] for a, (lo, hi) in s.c.items()}
    with open(path, "wb") as fh:
        pickle.dump((s.X.astype(np.float64), c), fh, protocol=2)


@pytest.mark.parametrize("inclusive", [True, False])
def test_course_pickle_import(bg_zip, tmp_path, inclusive):
    s = data.read_omniglot_zip(bg_zip[0])
    _course_pickle(tmp_path / "omniglot_train.p", s, inclusive)
    got = load_course_pickle(tmp_path / "omniglot_train.p")
    assert got.c == s.c
    np.testing.assert_array_equal(got.X, s.X)


class _Evil:
    def __reduce__(self):
        return (subprocess.call, (["touch", "/tmp/tripletml-pwned"],))


def test_course_pickle_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.p"
    path.write_bytes(pickle.dumps((np.zeros((1, 20, 105, 105)), {"A": [0, 0]}, _Evil())))
    Path("/tmp/tripletml-pwned").unlink(missing_ok=True)
    with pytest.raises(data.DataError, match=r"evil\.p.*refused.*subprocess"):
        load_course_pickle(path)
    assert not Path("/tmp/tripletml-pwned").exists()


# ----------------------------------------------------------------------------- bad input


def _bad_zip(tmp_path, kind):
    path = tmp_path / "images_background.zip"
    alph = {"Alpha0": 3, "Alpha1": 3}
    good = png_bytes(np.ones((105, 105), np.uint8))
    if kind == "corrupt":
        make_zip(path, "background", alph)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return path, "not a readable zip"
    if kind == "garbage":
        path.write_bytes(b"this is not a zip at all")
        return path, "not a readable zip"
    if kind == "top":
        make_zip(path, "evaluation", alph)
        return path, "unexpected top folder 'images_evaluation'"
    if kind == "drawings":
        make_zip(path, "background", alph, extra={"images_background/Alpha1/character09/x_01.png": good})
        return path, "Alpha1/character09 has 1 drawings, expected 20"
    if kind == "not_png":
        extra = {f"images_background/Alpha1/character09/x_{d:02d}.png": good for d in range(1, 20)}
        extra["images_background/Alpha1/character09/x_20.png"] = b"GIF89a....."
        make_zip(path, "background", alph, extra=extra)
        return path, "x_20.png: not a PNG"
    if kind == "size":
        extra = {f"images_background/Alpha1/character09/x_{d:02d}.png": good for d in range(1, 20)}
        extra["images_background/Alpha1/character09/x_20.png"] = png_bytes(np.ones((100, 105), np.uint8))
        make_zip(path, "background", alph, extra=extra)
        return path, "x_20.png: image is 105x100, expected 105x105"
    if kind == "bomb":  # a valid header declaring 30000 x 30000 (Pillow: DecompressionBombError)
        extra = {f"images_background/Alpha1/character09/x_{d:02d}.png": good for d in range(1, 20)}
        extra["images_background/Alpha1/character09/x_20.png"] = _declaring(good, 30000, 30000)
        make_zip(path, "background", alph, extra=extra)
        return path, "Alpha1/character09/x_20.png: image is 30000x30000, expected 105x105"
    if kind == "empty_alphabet":
        make_zip(path, "background", alph, extra={"images_background/Empty/": b""})
        return path, "alphabet 'Empty' is empty"
    if kind == "slip":
        make_zip(path, "background", alph, extra={"images_background/../../evil.png": good})
        return path, "would land outside the target folder"
    raise AssertionError(kind)


def _declaring(png: bytes, width: int, height: int) -> bytes:
    """``png`` with its IHDR chunk claiming another size (CRC recomputed, so only the size is wrong)."""
    ihdr = b"IHDR" + struct.pack(">II", width, height) + png[24:29]
    return png[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


def test_a_bomb_header_is_refused_before_pillow_sees_it():
    from PIL import Image

    bomb = _declaring(png_bytes(np.ones((105, 105), np.uint8)), 30000, 30000)
    with pytest.raises(Image.DecompressionBombError):  # what Pillow itself would do with it
        Image.open(__import__("io").BytesIO(bomb))
    with pytest.raises(data.DataError, match="image is 30000x30000, expected 105x105"):
        data._decode_png(bomb, "x.png")


BAD = ["corrupt", "garbage", "top", "drawings", "not_png", "size", "bomb", "empty_alphabet", "slip"]


@pytest.mark.parametrize("kind", BAD)
def test_bad_zip_gives_an_error_naming_the_file(tmp_path, kind):
    path, message = _bad_zip(tmp_path, kind)
    with pytest.raises(data.DataError) as err:
        data.read_omniglot_zip(path, "background")
    assert str(path) in str(err.value)
    assert message in str(err.value)


def _stage_repo(tmp_path):
    """A working folder with params and raw data where the prepare stage can run."""
    work = tmp_path / "work"
    make_raw_dir(work / "data" / "raw")
    (work / "params.yaml").write_text("data:\n  image_size: 28\n  validation_alphabets: 2\n")
    return work


def _prepare(work):
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / "prepare.py")], cwd=work, capture_output=True, text=True
    )


def test_prepare_stage_writes_all_splits_and_summary(tmp_path):
    work = _stage_repo(tmp_path)
    res = _prepare(work)
    assert res.returncode == 0, res.stderr
    import json

    summary = json.loads((work / "data/prepared/summary.json").read_text())
    assert summary["image_size"] == 28
    assert summary["train"]["alphabets"] + summary["val"]["alphabets"] == len(BACKGROUND)
    assert summary["train"]["characters"] + summary["val"]["characters"] == sum(BACKGROUND.values())
    assert summary["test"]["alphabets"] == 3
    assert set(summary["source"]) == {"images_background.zip", "images_evaluation.zip"}
    val = data.load_prepared(work / "data/prepared/val.npz")
    assert val.X.shape[1:] == (20, 28, 28) and val.alphabets == summary["val"]["names"]


@pytest.mark.parametrize("kind", ["corrupt", "drawings", "bomb", "slip"])
def test_prepare_stage_bad_input_one_line_error_and_outputs_intact(tmp_path, kind):
    work = _stage_repo(tmp_path)
    assert _prepare(work).returncode == 0
    before = {p.name: p.read_bytes() for p in (work / "data/prepared").iterdir()}
    path, message = _bad_zip(work / "data" / "raw", kind)
    res = _prepare(work)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path.name) in lines[0] and message in lines[0]
    after = {p.name: p.read_bytes() for p in (work / "data/prepared").iterdir()}
    assert after == before, "earlier outputs must stay whole and no partial file may appear"


def test_prepare_stage_without_zips_says_where_to_put_them(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    (work / "params.yaml").write_text("data:\n  raw_dir: data/raw\n")
    res = subprocess.run(
        [sys.executable, str(REPO / "stages" / "download.py")], cwd=work, capture_output=True, text=True,
        env={**__import__("os").environ, "no_proxy": "", "https_proxy": "http://127.0.0.1:9"},
    )
    assert res.returncode == 1
    assert "images_background.zip" in res.stderr and "data/raw/" in res.stderr
    assert not any((work / "data" / "prepared").glob("*")), "nothing written"


def test_no_validation_alphabets_trains_on_every_background_alphabet():
    X = np.zeros((6, 20, 4, 4), np.float32)
    background = data.OmniglotSet(X, {"A": (0, 2), "B": (2, 4), "C": (4, 6)})
    train, val = data.split_train_val(background, 0, seed=0)
    assert train.alphabets == ["A", "B", "C"] and train.n_characters == 6
    assert val.n_characters == 0 and val.alphabets == []
    with pytest.raises(ValueError, match=r"out of range \(0\.\.2\)"):
        data.split_train_val(background, 3, seed=0)


def test_prepare_with_validation_alphabets_the_data_lack_is_one_line(tmp_path):
    work = _stage_repo(tmp_path)
    (work / "params.yaml").write_text("data:\n  image_size: 28\n  validation_alphabets: [Alpha1, Klingon]\n")
    res = _prepare(work)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "data.validation_alphabets: unknown alphabet(s) ['Klingon']" in lines[0], res.stderr
    assert not any((work / "data" / "prepared").glob("*")), "nothing written"

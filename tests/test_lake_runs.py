"""Lake et al.'s 20 one-shot runs: reading all_runs.zip, every bad member, scoring, download."""

import io
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from synthetic import glyph, make_runs_zip, png_bytes

from tripletml import data, download
from tripletml.lake_runs import lake_figures, read_lake_runs, score_lake_runs, to_model_images

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "omniglot" / "all_runs.zip"
needs_real = pytest.mark.skipif(not REAL.is_file(), reason=f"{REAL} is absent")


@pytest.fixture(scope="module")
def runs_zip(tmp_path_factory):
    path = tmp_path_factory.mktemp("runs") / "all_runs.zip"
    return path, make_runs_zip(path, seed=3)


def _error(path: Path) -> str:
    with pytest.raises(data.DataError) as err:
        read_lake_runs(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    return msg


# ----------------------------------------------------------------------------- reading


def test_read_gives_every_pixel_and_the_answer_key(runs_zip):
    path, made = runs_zip
    runs = read_lake_runs(path)
    assert runs.train.shape == runs.test.shape == (20, 20, 105, 105)
    assert runs.train.dtype == np.uint8 and runs.answer.shape == (20, 20)
    np.testing.assert_array_equal(runs.train, made["train"])
    np.testing.assert_array_equal(runs.test, made["test"])
    np.testing.assert_array_equal(runs.answer, made["answer"])
    assert not (runs.answer == np.arange(20)).all(axis=1).any(), "the synthetic key must not be the identity"


def test_raw_convention_matches_the_omniglot_reader(runs_zip):
    path, made = runs_zip
    runs = read_lake_runs(path)
    # the same PNG through data.py's zip reader: 1 = paper (the glyph is mostly paper)
    one = path.parent / "images_evaluation.zip"
    with zipfile.ZipFile(one, "w") as zf:
        for d in range(20):
            zf.writestr(f"images_evaluation/A/character01/0001_{d + 1:02d}.png", png_bytes(made["train"][4, 7]))
    np.testing.assert_array_equal(data.read_omniglot_zip(one, "evaluation").X[0, 0], runs.train[4, 7])
    assert runs.train.mean() > 0.5 and set(np.unique(runs.train)) == {0, 1}


def test_to_model_images_is_the_prepare_conversion(runs_zip):
    runs = read_lake_runs(runs_zip[0])
    for size in (105, 28):
        train, test = to_model_images(runs, size)
        assert train.shape == test.shape == (20, 20, size, size) and train.dtype == np.float32
        expect = data.to_model_set(data.OmniglotSet(runs.test, {"x": (0, 20)}), size).X
        np.testing.assert_array_equal(test, expect)
    train, _ = to_model_images(runs, 105)
    np.testing.assert_array_equal(train, 1.0 - runs.train)  # ink = 1


@pytest.mark.parametrize(
    "member, replacement, message",
    [
        ("run07/test/item13.png", None, "missing member run07/test/item13.png"),
        ("run02/training/class20.png", None, "missing member run02/training/class20.png"),
        ("run03/training/class05.png", png_bytes(np.ones((105, 104), np.uint8)), "run03/training/class05.png: image is 104x105"),
        ("run11/test/item01.png", b"GIF89a not a png", "run11/test/item01.png: not a PNG file"),
        ("run12/test/item02.png", png_bytes(glyph(1, 1))[:60], "run12/test/item02.png: cannot decode PNG"),
        ("run01/extra.png", png_bytes(glyph(1, 1)), "unexpected member 'run01/extra.png'"),
        ("run21/class_labels.txt", b"", "unexpected member 'run21/class_labels.txt'"),
    ],
)
def test_bad_member_is_one_line_error_naming_it(tmp_path, member, replacement, message):
    path = tmp_path / "all_runs.zip"
    make_runs_zip(path, members={member: replacement})
    assert message in _error(path)


def test_missing_run_folder_is_named(tmp_path):
    path = tmp_path / "all_runs.zip"
    full = tmp_path / "full.zip"
    make_runs_zip(full)
    with zipfile.ZipFile(full) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            if not info.filename.startswith("run09/"):
                dst.writestr(info, src.read(info))
    assert "run folder run09/ is missing" in _error(path)


def test_size_is_checked_from_the_header_before_decoding(tmp_path):
    # a 4000x4000 PNG cut short: data.py alone would fail at decoding ("cannot decode");
    # the header check must refuse it for its size first
    buf = io.BytesIO()
    Image.new("1", (4000, 4000), 1).save(buf, format="PNG")
    path = tmp_path / "all_runs.zip"
    make_runs_zip(path, members={"run05/test/item09.png": buf.getvalue()[:200]})
    assert "run05/test/item09.png: image is 4000x4000, expected 105x105" in _error(path)


def _key(r: int, pairs) -> bytes:
    run = f"run{r:02d}"
    return "".join(f"{run}/test/item{i:02d}.png {run}/training/class{j:02d}.png\n" for i, j in pairs).encode()


PERM = [(i, 21 - i) for i in range(1, 21)]


@pytest.mark.parametrize(
    "key, message",
    [
        (_key(5, PERM[:19]), "no answer for test item(s) [20]"),
        (_key(5, PERM) + b"garbage\n", "line 21: expected"),
        (_key(5, PERM[:19] + [(19, 1)]), "line 20: expected"),  # item 19 answered twice
        (_key(5, PERM[:19] + [(20, 2)]), "name a training class twice"),
        (_key(5, PERM[:19] + [(20, 21)]), "line 20: expected"),  # class out of range
        (_key(4, PERM), "line 1: expected"),  # another run's key
        (_key(5, PERM).replace(b" ", b"\t", 1), "line 1: expected"),
        (b"\xff\xfe" + _key(5, PERM), "not ASCII text"),
    ],
    ids=["short", "extra-line", "item-twice", "class-twice", "class-range", "other-run", "tab", "binary"],
)
def test_malformed_answer_key_names_the_member(tmp_path, key, message):
    path = tmp_path / "all_runs.zip"
    make_runs_zip(path, members={"run05/class_labels.txt": key})
    msg = _error(path)
    assert "run05/class_labels.txt" in msg and message in msg


def test_answer_key_with_crlf_and_any_line_order_reads(tmp_path):
    path = tmp_path / "all_runs.zip"
    made = make_runs_zip(path)
    pairs = [(i + 1, made["answer"][5, i] + 1) for i in range(20)][::-1]
    make_runs_zip(path, members={"run06/class_labels.txt": _key(6, pairs).replace(b"\n", b"\r\n")})
    np.testing.assert_array_equal(read_lake_runs(path).answer, made["answer"])


def test_corrupt_and_oversized_members_are_named(tmp_path):
    path = tmp_path / "all_runs.zip"
    png = png_bytes(glyph(999, 9))
    make_runs_zip(path, members={"run08/test/item08.png": png})  # stored uncompressed: findable
    blob = bytearray(path.read_bytes())
    blob[blob.find(png) + len(png) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    assert "corrupt member run08/test/item08.png" in _error(path)
    make_runs_zip(path, members={"run10/class_labels.txt": b" " * (2 << 20)})
    assert "run10/class_labels.txt: 2097152 bytes" in _error(path)


def test_missing_file_and_non_zip_are_data_errors(tmp_path):
    assert "file not found" in _error(tmp_path / "all_runs.zip")
    (tmp_path / "all_runs.zip").write_bytes(b"not a zip")
    assert "not a readable zip archive" in _error(tmp_path / "all_runs.zip")


@needs_real
def test_real_all_runs_zip_reads_completely():
    runs = read_lake_runs(REAL)
    assert runs.train.shape == runs.test.shape == (20, 20, 105, 105)
    assert (np.sort(runs.answer, axis=1) == np.arange(20)).all()  # each run: a permutation
    assert runs.answer[0, 0] == 7 and runs.answer[19, 19] != -1  # run01/test/item01.png -> class08
    assert 0.5 < runs.train.mean() < 1.0 and 0.5 < runs.test.mean() < 1.0  # 1 = paper, mostly paper


# ----------------------------------------------------------------------------- scoring


def _projection(dim: int, size: int, seed: int = 0):
    W = np.random.default_rng(seed).normal(size=(size * size, dim))

    def embed(x: np.ndarray) -> np.ndarray:
        assert x.ndim == 3, "the project's embed functions take (m, S, S)"
        return x.reshape(len(x), -1).astype(np.float64) @ W

    return embed


def _reference(embed, train, test, answer) -> np.ndarray:
    """Brute force, float64, one image and one pair at a time."""
    right = np.zeros(train.shape[0], dtype=np.int64)
    for r in range(train.shape[0]):
        for i in range(test.shape[1]):
            q = np.asarray(embed(test[r, i][None]), np.float64)[0]
            d = [float(np.sum((q - np.asarray(embed(train[r, j][None]), np.float64)[0]) ** 2)) for j in range(train.shape[1])]
            right[r] += int(np.argmin(d)) == int(answer[r, i])
    return right


def test_score_matches_brute_force_and_embeds_once(runs_zip):
    runs = read_lake_runs(runs_zip[0])
    train, test = to_model_images(runs, 28)
    embed = _projection(3, 28)  # few dimensions, so some items are wrong
    calls = []

    def counted(x):
        calls.append(x.shape)
        return embed(x)

    right = score_lake_runs(counted, train, test, runs.answer)
    assert calls == [(800, 28, 28)]
    assert right.shape == (20,)
    expect = _reference(embed, train, test, runs.answer)
    np.testing.assert_array_equal(right, expect)
    assert 0 < expect.sum() < 400 and len(set(expect.tolist())) > 1, "a reference that tells runs apart"


def test_score_counts_known_by_construction(tmp_path):
    path = tmp_path / "all_runs.zip"
    made = make_runs_zip(path, same_images=True)
    runs = read_lake_runs(path)
    train, test = to_model_images(runs, 105)
    flat = lambda x: x.reshape(len(x), -1)  # noqa: E731
    np.testing.assert_array_equal(score_lake_runs(flat, train, test, runs.answer), np.full(20, 20))
    # a wrong key: in run r, the first m_r answers rotated by one, so exactly m_r are wrong
    wrong, m = made["answer"].copy(), np.array([0, 0, *range(2, 20)])
    for r in range(20):
        wrong[r, : m[r]] = np.roll(wrong[r, : m[r]], 1)
    right = score_lake_runs(flat, train, test, wrong)
    np.testing.assert_array_equal(right, 20 - m)
    fig = lake_figures(right)
    np.testing.assert_allclose(fig["run_errors"], 5.0 * m)
    assert fig["error"] == pytest.approx(5.0 * m.mean()) and fig["accuracy"] == pytest.approx(100 - 5.0 * m.mean())


def test_score_takes_a_channel_axis_and_rejects_bad_shapes(runs_zip):
    runs = read_lake_runs(runs_zip[0])
    train, test = to_model_images(runs, 14)
    flat = lambda x: x.reshape(len(x), -1)  # noqa: E731
    plain = score_lake_runs(flat, train, test, runs.answer)
    np.testing.assert_array_equal(score_lake_runs(flat, train[..., None], test[..., None], runs.answer), plain)
    with pytest.raises(ValueError, match="shapes disagree"):
        score_lake_runs(flat, train, test[:, :19], runs.answer)
    with pytest.raises(ValueError, match="must index"):
        score_lake_runs(flat, train, test, runs.answer + 1)
    with pytest.raises(ValueError, match="embed must return"):
        score_lake_runs(lambda x: flat(x)[:10], train, test, runs.answer)


def test_lake_figures_are_the_demo_figures():
    fig = lake_figures(np.array([20, 19, 0] + [10] * 17))
    assert fig["run_errors"][:3] == [0.0, 5.0, 100.0]
    assert fig["error"] == pytest.approx((0 + 5 + 100 + 50 * 17) / 20)
    assert fig["accuracy"] == pytest.approx(100 - fig["error"])


# ----------------------------------------------------------------------------- download


@pytest.fixture
def no_network(monkeypatch):
    def refuse(url, *a, **k):
        raise AssertionError(f"tried to download {url}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def _placed(raw: Path, names) -> dict[str, bytes]:
    raw.mkdir(parents=True, exist_ok=True)
    for n in names:
        (raw / n).write_bytes(f"placed {n}".encode())  # any checksum: a placed copy is kept as is
    return {n: (raw / n).read_bytes() for n in names}


def test_download_keeps_the_image_zips_apart_from_the_runs():
    # stages/prepare.py reads every zip in OFFICIAL_MD5 as an image set
    assert set(download.OFFICIAL_MD5) == {"images_background.zip", "images_evaluation.zip"}
    assert download.RUNS_MD5 == {"all_runs.zip": "e8996daecdf12afeeb4a53a179f06b19"}
    url = download.BASE_URL + download.URL_PATHS["all_runs.zip"]
    assert url == "https://github.com/brendenlake/omniglot/raw/master/python/one-shot-classification/all_runs.zip"


def test_placed_all_runs_zip_is_accepted_without_download(tmp_path, no_network):
    raw = tmp_path / "raw"
    before = _placed(raw, ["images_background.zip", "images_evaluation.zip", "all_runs.zip"])
    paths = download.ensure_raw_zips(raw)
    assert paths == {n: raw / n for n in before}
    assert {n: p.read_bytes() for n, p in paths.items()} == before


def _mirror(tmp_path: Path, runs: bytes | None) -> str:
    """A file:// stand-in for the official repository's python/ folder."""
    root = tmp_path / "mirror"
    (root / "one-shot-classification").mkdir(parents=True)
    if runs is not None:
        (root / "one-shot-classification" / "all_runs.zip").write_bytes(runs)
    return root.as_uri() + "/"


def test_missing_all_runs_zip_is_fetched_and_checked_against_its_md5(tmp_path):
    raw = tmp_path / "raw"
    _placed(raw, ["images_background.zip", "images_evaluation.zip"])
    make_runs_zip(tmp_path / "fake.zip")
    with pytest.raises(download.DownloadError) as err:
        download.ensure_raw_zips(raw, base_url=_mirror(tmp_path, (tmp_path / "fake.zip").read_bytes()))
    assert "one-shot-classification/all_runs.zip" in str(err.value) and "e8996daecdf12afeeb4a53a179f06b19" in str(err.value)
    assert sorted(p.name for p in raw.iterdir()) == ["images_background.zip", "images_evaluation.zip"]


def test_unreachable_all_runs_zip_says_where_to_put_it(tmp_path):
    raw = tmp_path / "raw"
    _placed(raw, ["images_background.zip", "images_evaluation.zip"])
    with pytest.raises(download.DownloadError) as err:
        download.ensure_raw_zips(raw, base_url=_mirror(tmp_path, None))
    msg = str(err.value)
    assert "all_runs.zip" in msg and f"{raw}/" in msg and "images_background.zip" not in msg


@needs_real
def test_official_all_runs_zip_downloads(tmp_path):
    raw = tmp_path / "raw"
    _placed(raw, ["images_background.zip", "images_evaluation.zip"])
    paths = download.ensure_raw_zips(raw, base_url=_mirror(tmp_path, REAL.read_bytes()))
    assert paths["all_runs.zip"].read_bytes() == REAL.read_bytes()
    assert download.file_digest(paths["all_runs.zip"]) == download.RUNS_MD5["all_runs.zip"]


"""Lake et al.'s 20 official one-shot classification runs (``all_runs.zip``): read and score.

Layout: ``runNN/training/classYY.png`` (one drawing of each of 20 characters),
``runNN/test/itemXX.png`` (another drawing of each) and ``runNN/class_labels.txt``, the
answer key ("runNN/test/itemXX.png runNN/training/classYY.png" per line). A test item is
right when its nearest training image of the same run is its own character's; a run's
error is 100 - 5 x right, the benchmark figure the mean over the runs.

The runs are 800 images of images_evaluation.zip: test data only, never for training or
model selection.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tripletml.data import PNG_MAGIC, RAW_SIZE, DataError, _decode_png, open_zip, raw_to_model

RUNS = 20
CLASSES = 20  # training images (one per character) per run
ITEMS = 20  # test images per run
# The official members are a few hundred bytes; refuse a member that would inflate to a
# large buffer before reading it (a zip bomb costs memory before any check could run).
_MAX_MEMBER_BYTES = 1 << 20
_LABEL_RE = re.compile(r"^run(\d{2})/test/item(\d{2})\.png run(\d{2})/training/class(\d{2})\.png$")


@dataclass(frozen=True)
class LakeRuns:
    """Raw images (uint8, 1 = paper, 0 = ink, as data.py decodes PNGs) and the answer key.

    ``train[r, j]`` is ``run{r+1:02d}/training/class{j+1:02d}.png``, ``test[r, i]`` is
    ``run{r+1:02d}/test/item{i+1:02d}.png``; ``answer[r, i]`` is the j of test item i's
    character.
    """

    train: np.ndarray  # (20, 20, 105, 105) uint8
    test: np.ndarray  # (20, 20, 105, 105) uint8
    answer: np.ndarray  # (20, 20) int64


def _run(r: int) -> str:
    return f"run{r + 1:02d}"


def _train_member(r: int, j: int) -> str:
    return f"{_run(r)}/training/class{j + 1:02d}.png"


def _test_member(r: int, i: int) -> str:
    return f"{_run(r)}/test/item{i + 1:02d}.png"


def _labels_member(r: int) -> str:
    return f"{_run(r)}/class_labels.txt"


def _decode(data: bytes, where: str) -> np.ndarray:
    """data.py's PNG decoding and checks, with the size checked from the header first.

    ``_decode_png`` unpacks the pixels before it looks at the size; Pillow reads only the
    header on ``open``, so a wrong-size (possibly huge) image is refused before decoding.
    """
    if data.startswith(PNG_MAGIC):  # otherwise _decode_png says "not a PNG file"
        try:
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
        except Image.DecompressionBombError as exc:
            raise DataError(f"{where}: {exc}") from exc
        except (UnidentifiedImageError, OSError, SyntaxError):
            pass  # _decode_png reports it with its own message
        else:
            if (w, h) != (RAW_SIZE, RAW_SIZE):
                raise DataError(f"{where}: image is {w}x{h}, expected {RAW_SIZE}x{RAW_SIZE}")
    return _decode_png(data, where)


def _parse_labels(text: bytes, r: int, where: str) -> np.ndarray:
    """One run's answer key -> (ITEMS,) training index per test item; must be a bijection."""
    try:
        lines = [ln.strip() for ln in text.decode("ascii").splitlines() if ln.strip()]
    except UnicodeDecodeError as exc:
        raise DataError(f"{where}: not ASCII text ({exc})") from exc
    answer = np.full(ITEMS, -1, dtype=np.int64)
    for n, line in enumerate(lines, 1):
        m = _LABEL_RE.match(line)
        run_a, item, run_b, cls = map(int, m.groups()) if m else (0, 0, 0, 0)
        ok = run_a == run_b == r + 1 and 1 <= item <= ITEMS and 1 <= cls <= CLASSES
        if not ok or answer[item - 1] >= 0:  # wrong run, out of range, or an item answered twice
            raise DataError(
                f"{where}: line {n}: expected a new '{_run(r)}/test/itemXX.png "
                f"{_run(r)}/training/classYY.png' (XX 01..{ITEMS}, YY 01..{CLASSES}), got {line[:100]!r}"
            )
        answer[item - 1] = cls - 1
    missing = np.flatnonzero(answer < 0) + 1
    if missing.size:
        raise DataError(f"{where}: no answer for test item(s) {missing.tolist()}")
    # Each test item is another drawing of a different one of the run's characters.
    if np.unique(answer).size != CLASSES:
        raise DataError(f"{where}: the answers name a training class twice; expected each of the {CLASSES} once")
    return answer


def read_lake_runs(path: str | os.PathLike) -> LakeRuns:
    """Read ``all_runs.zip`` without extracting it; any bad member -> one-line DataError."""
    path = Path(path)
    with open_zip(path) as zf:
        members = {  # files only; macOS and dot-file debris is ignored, as data.py does
            i.filename: i
            for i in zf.infolist()
            if not (i.is_dir() or i.filename.startswith("__MACOSX/") or i.filename.rsplit("/", 1)[-1].startswith("."))
        }
        expected = [_labels_member(r) for r in range(RUNS)]
        expected += [_train_member(r, j) for r in range(RUNS) for j in range(CLASSES)]
        expected += [_test_member(r, i) for r in range(RUNS) for i in range(ITEMS)]
        unexpected = sorted(set(members) - set(expected))
        if unexpected:
            raise DataError(
                f"{path}: unexpected member {unexpected[0]!r} (expected run01..run{RUNS:02d}, each "
                f"class_labels.txt, training/class01..{CLASSES:02d}.png, test/item01..{ITEMS:02d}.png)"
            )
        for name in expected:
            if name not in members:
                run = name.split("/", 1)[0]
                if not any(m.startswith(run + "/") for m in members):
                    raise DataError(f"{path}: run folder {run}/ is missing")
                raise DataError(f"{path}: missing member {name}")

        def read(name: str) -> bytes:
            info = members[name]
            if info.file_size > _MAX_MEMBER_BYTES:
                raise DataError(f"{path}: {name}: {info.file_size} bytes, more than any Omniglot PNG or answer key")
            try:
                return zf.read(info)
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
                raise DataError(f"{path}: corrupt member {name} ({exc})") from exc

        train = np.empty((RUNS, CLASSES, RAW_SIZE, RAW_SIZE), np.uint8)
        test = np.empty((RUNS, ITEMS, RAW_SIZE, RAW_SIZE), np.uint8)
        answer = np.empty((RUNS, ITEMS), np.int64)
        for r in range(RUNS):  # 820 small members: decoding is per file by nature
            answer[r] = _parse_labels(read(_labels_member(r)), r, f"{path}: {_labels_member(r)}")
            for j in range(CLASSES):
                train[r, j] = _decode(read(_train_member(r, j)), f"{path}: {_train_member(r, j)}")
            for i in range(ITEMS):
                test[r, i] = _decode(read(_test_member(r, i)), f"{path}: {_test_member(r, i)}")
    return LakeRuns(train, test, answer)


def to_model_images(runs: LakeRuns, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) as model images, float32 (20, 20, S, S), 1 = ink: data.to_model_set's conversion."""
    return raw_to_model(runs.train, image_size), raw_to_model(runs.test, image_size)


def score_lake_runs(
    embed: Callable[[np.ndarray], np.ndarray], train: np.ndarray, test: np.ndarray, answer: np.ndarray
) -> np.ndarray:
    """Test items right per run, shape (R,), nearest training image of the run (squared L2).

    ``train`` (R, C, ...) and ``test`` (R, T, ...) are model images; ``embed`` maps
    (m, ...) model images to (m, D), like ``Embedder.embed_prepared``. Every image is
    embedded in one call; ties go to the lowest training index.
    """
    train, test, answer = np.asarray(train), np.asarray(test), np.asarray(answer)
    R, C, T = train.shape[0], train.shape[1], test.shape[1]
    if test.shape[0] != R or test.shape[2:] != train.shape[2:] or answer.shape != (R, T):
        raise ValueError(f"shapes disagree: train {train.shape}, test {test.shape}, answer {answer.shape}")
    if answer.size and not (0 <= answer.min() and answer.max() < C):
        raise ValueError(f"answer must index the {C} training images of a run")
    images = np.concatenate([train.reshape(R * C, *train.shape[2:]), test.reshape(R * T, *test.shape[2:])])
    e = np.asarray(embed(images))
    if e.ndim != 2 or len(e) != len(images):
        raise ValueError(f"embed must return ({len(images)}, D), got {e.shape}")
    e = e.astype(np.float64)  # 800 x D: exact enough that only true ties are ties
    et, eq = e[: R * C].reshape(R, C, -1), e[R * C :].reshape(R, T, -1)
    diff = eq[:, :, None, :] - et[:, None, :, :]  # (R, T, C, D)
    pred = np.argmin(np.einsum("rtcd,rtcd->rtc", diff, diff), axis=2)
    return (pred == answer).sum(axis=1)


def lake_figures(right: np.ndarray, items: int = ITEMS) -> dict[str, float | list[float]]:
    """The figures Lake's demo reports: mean accuracy % over runs and each run's error %.

    A run's error is 100 - 100 x right / items (100 - 5 x right for 20 items); the mean
    error over equal-size runs is also the error over all items.
    """
    err = 100.0 - 100.0 * np.asarray(right, np.float64) / items
    return {"accuracy": float(100.0 - err.mean()), "error": float(err.mean()), "run_errors": err.tolist()}

"""Small Omniglot look-alikes the tests make themselves: glyphs in the official zip layout."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def glyph(char_seed: int, drawing: int, size: int = 105) -> np.ndarray:
    """A raw image (uint8, 1 = paper, 0 = ink): a character's strokes, jittered per drawing."""
    rng = np.random.default_rng(char_seed)
    points = rng.uniform(20, size - 20, size=(4, 2))
    jitter = np.random.default_rng((char_seed, drawing)).normal(0, 2.0, size=points.shape)
    img = Image.new("1", (size, size), 1)
    ImageDraw.Draw(img).line([tuple(p) for p in points + jitter], fill=0, width=5)
    return np.asarray(img, dtype=np.uint8)


def png_bytes(raw: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(raw.astype(bool)).save(buf, format="PNG")
    return buf.getvalue()


def make_zip(
    path: Path,
    set_name: str,
    alphabets: dict[str, int],
    drawings: int = 20,
    seed: int = 0,
    extra: dict[str, bytes] | None = None,
) -> dict[str, np.ndarray]:
    """Write ``images_<set_name>.zip``-style archive; returns {member: raw image}."""
    images = {}
    with zipfile.ZipFile(path, "w") as zf:
        for ai, (alphabet, n_chars) in enumerate(alphabets.items()):
            zf.writestr(f"images_{set_name}/{alphabet}/", b"")
            for ci in range(n_chars):
                char_seed = seed * 100_000 + ai * 1000 + ci
                for d in range(drawings):
                    member = f"images_{set_name}/{alphabet}/character{ci + 1:02d}/{ai:04d}{ci:02d}_{d + 1:02d}.png"
                    raw = glyph(char_seed, d)
                    images[member] = raw
                    zf.writestr(member, png_bytes(raw))
        for member, data in (extra or {}).items():
            zf.writestr(member, data)
    return images


def make_runs_zip(
    path: Path,
    seed: int = 3,
    answer: np.ndarray | None = None,
    same_images: bool = False,
    members: dict[str, bytes | None] | None = None,
) -> dict[str, np.ndarray]:
    """Write an ``all_runs.zip``-style archive (20 runs of 20 + 20 105x105 PNGs, answer keys).

    ``answer[r, i]`` (default: a seeded permutation per run) is the training class of test
    item i; ``same_images`` makes each test item a copy of its training image, otherwise
    another drawing. ``members`` replaces members (None drops one). Returns the raw
    ``train``, ``test`` and ``answer`` arrays written.
    """
    rng = np.random.default_rng(seed)
    if answer is None:
        answer = np.stack([rng.permutation(20) for _ in range(20)])
    train = np.stack([[glyph(seed * 100_000 + r * 100 + j, 0) for j in range(20)] for r in range(20)])
    test = np.stack([
        [train[r, answer[r, i]] if same_images else glyph(seed * 100_000 + r * 100 + answer[r, i], 1) for i in range(20)]
        for r in range(20)
    ])
    files: dict[str, bytes | None] = {}
    for r in range(20):
        run = f"run{r + 1:02d}"
        files[f"{run}/"] = b""
        files[f"{run}/class_labels.txt"] = "".join(
            f"{run}/test/item{i + 1:02d}.png {run}/training/class{answer[r, i] + 1:02d}.png\n" for i in range(20)
        ).encode()
        for folder, name, images in (("test", "item", test), ("training", "class", train)):
            files[f"{run}/{folder}/"] = b""
            files.update({f"{run}/{folder}/{name}{k + 1:02d}.png": png_bytes(images[r, k]) for k in range(20)})
    files.update(members or {})
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in files.items():
            if data is not None:
                zf.writestr(member, data)
    return {"train": train, "test": test, "answer": np.asarray(answer)}


BACKGROUND = {f"Alpha{i}": 6 + i % 3 for i in range(6)}
EVALUATION = {f"Eval{i}": 5 + i % 2 for i in range(3)}


def make_raw_dir(raw_dir: Path) -> Path:
    raw_dir.mkdir(parents=True, exist_ok=True)
    make_zip(raw_dir / "images_background.zip", "background", BACKGROUND, seed=1)
    make_zip(raw_dir / "images_evaluation.zip", "evaluation", EVALUATION, seed=2)
    make_runs_zip(raw_dir / "all_runs.zip")  # present, so the download stage fetches nothing
    return raw_dir

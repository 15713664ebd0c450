"""Omniglot in the course's form: read, validate, resize, split, save and load.

Pixel conventions (see also the package docstring):

* raw images, as decoded from the official PNGs: uint8, 1 = paper, 0 = ink, 105x105;
* model images: float32 in [0, 1], 1 = ink, 0 = paper, area-averaged to S x S;
* prepared ``.npz`` files store model images as uint8 ink coverage 0..255 (exact at
  S = 105, where every pixel is 0 or 255) to keep them small; :func:`load_prepared`
  turns them back into float32 model images.
"""

from __future__ import annotations

import io
import os
import re
import struct
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from tripletml.atomic import atomic_path
from tripletml.errors import DataError  # defined there; tripletml.data.DataError still works

RAW_SIZE = 105
DRAWINGS = 20
INK = 1.0  # model-image value of ink
PAPER = 0.0  # model-image value of paper
RAW_PAPER = 1  # raw (PNG) value of paper; raw ink is 0
SETS = ("background", "evaluation")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class OmniglotSet:
    """Characters in the course's form.

    ``X`` has shape (n_characters, 20, H, W); ``c`` maps alphabet -> (start, stop),
    a half-open range of character indices into ``X``; ``names`` holds
    "Alphabet/characterNN" for each character.
    """

    X: np.ndarray
    c: dict[str, tuple[int, int]]
    names: list[str] = field(default_factory=list)

    @property
    def alphabets(self) -> list[str]:
        return list(self.c)

    @property
    def n_characters(self) -> int:
        return int(self.X.shape[0])

    def labels(self) -> np.ndarray:
        """Character index of every image, shape (n_characters, 20)."""
        return np.repeat(np.arange(self.n_characters), self.X.shape[1]).reshape(self.X.shape[:2])

    def subset(self, alphabets: Iterable[str]) -> OmniglotSet:
        """The characters of ``alphabets`` (in the given order), re-indexed from 0."""
        parts, c, names, start = [], {}, [], 0
        for a in alphabets:
            lo, hi = self.c[a]
            parts.append(self.X[lo:hi])
            names.extend(self.names[lo:hi] if self.names else [f"{a}/{i}" for i in range(hi - lo)])
            c[a] = (start, start + hi - lo)
            start += hi - lo
        X = np.concatenate(parts) if parts else self.X[:0]
        return OmniglotSet(X, c, names)


# ----------------------------------------------------------------------------- reading


def _decode_png(data: bytes, where: str) -> np.ndarray:
    """Decode one Omniglot PNG to a raw uint8 array (1 = paper, 0 = ink)."""
    if not data.startswith(PNG_MAGIC):
        raise DataError(f"{where}: not a PNG file")
    # The size the header declares, checked before Pillow allocates or decodes anything
    # (a header claiming 30000 x 30000 would otherwise end in DecompressionBombError).
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise DataError(f"{where}: cannot decode PNG (no IHDR header)")
    width, height = struct.unpack(">II", data[16:24])
    if (width, height) != (RAW_SIZE, RAW_SIZE):
        raise DataError(f"{where}: image is {width}x{height}, expected {RAW_SIZE}x{RAW_SIZE}")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode == "1":
                return np.asarray(img, dtype=np.uint8)
            return (np.asarray(img.convert("L")) >= 128).astype(np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{where}: cannot decode PNG ({exc})") from exc


def _check_member_path(name: str, where: str) -> PurePosixPath:
    """Refuse archive members that would land outside the target folder (zip slip)."""
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or re.match(r"^[A-Za-z]:", name):
        raise DataError(f"{where}: archive member {name!r} would land outside the target folder")
    return p


def _drawer_key(filename: str) -> tuple[int, str]:
    """Sort drawings by drawer number (the ``_NN`` in ``<id>_<NN>.png``)."""
    m = re.search(r"_(\d+)\.png$", filename)
    return (int(m.group(1)) if m else 10**6, filename)


def _assemble(
    files: dict[tuple[str, str], list[tuple[str, object]]],
    alphabets: set[str],
    read: callable,
    source: str,
) -> OmniglotSet:
    """Turn {(alphabet, character): [(filename, handle)]} into an OmniglotSet."""
    for a in sorted(alphabets):
        if not any(key[0] == a for key in files):
            raise DataError(f"{source}: alphabet {a!r} is empty")
    if not files:
        raise DataError(f"{source}: no characters found")
    keys = sorted(files)
    for a, ch in keys:
        n = len(files[(a, ch)])
        if n != DRAWINGS:
            raise DataError(f"{source}: {a}/{ch} has {n} drawings, expected {DRAWINGS}")
    X = np.empty((len(keys), DRAWINGS, RAW_SIZE, RAW_SIZE), dtype=np.uint8)
    c: dict[str, tuple[int, int]] = {}
    names = []
    for i, (a, ch) in enumerate(keys):
        lo, _ = c.get(a, (i, i))
        c[a] = (lo, i + 1)
        names.append(f"{a}/{ch}")
        for j, (fname, handle) in enumerate(sorted(files[(a, ch)], key=lambda t: _drawer_key(t[0]))):
            X[i, j] = _decode_png(read(handle), f"{source}: {a}/{ch}/{fname}")
    return OmniglotSet(X, c, names)


def _top_folder(set_name: str | None) -> set[str]:
    return {f"images_{set_name}"} if set_name else {f"images_{s}" for s in SETS}


def open_zip(path: str | os.PathLike) -> zipfile.ZipFile:
    """An existing, readable zip archive, or a one-line DataError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: not a readable zip archive ({exc})") from exc


def read_omniglot_zip(path: str | os.PathLike, set_name: str | None = None) -> OmniglotSet:
    """Read an official Omniglot zip (``images_<set>/<Alphabet>/characterNN/*.png``).

    Returns raw images (uint8, 1 = paper). ``set_name`` ("background" or
    "evaluation") pins the expected top folder.
    """
    path = Path(path)
    with open_zip(path) as zf:
        files: dict[tuple[str, str], list[tuple[str, object]]] = {}
        alphabets: set[str] = set()
        tops: set[str] = set()
        expected = _top_folder(set_name)
        for info in zf.infolist():
            p = _check_member_path(info.filename, str(path))
            parts = [q for q in p.parts if q]
            if not parts or parts[0] == "__MACOSX" or parts[-1].startswith("."):
                continue
            tops.add(parts[0])
            if parts[0] not in expected:
                raise DataError(
                    f"{path}: unexpected top folder {parts[0]!r}, expected {' or '.join(sorted(expected))}"
                )
            if len(parts) >= 2:
                alphabets.add(parts[1])
            if info.is_dir():
                if len(parts) == 3:  # a character folder, possibly empty
                    files.setdefault((parts[1], parts[2]), [])
                continue
            if len(parts) != 4:
                raise DataError(f"{path}: unexpected member {info.filename!r}, expected {parts[0]}/<Alphabet>/characterNN/<file>.png")
            files.setdefault((parts[1], parts[2]), []).append((parts[3], info))
        if not tops:
            raise DataError(f"{path}: empty archive, expected top folder {' or '.join(sorted(expected))}")

        def read(info: zipfile.ZipInfo) -> bytes:
            try:
                return zf.read(info)
            except (zipfile.BadZipFile, OSError, EOFError, zipfile.LargeZipFile) as exc:
                raise DataError(f"{path}: corrupt member {info.filename} ({exc})") from exc

        return _assemble(files, alphabets, read, str(path))


# ----------------------------------------------------------------------------- pixels


def area_matrix(src: int, dst: int) -> np.ndarray:
    """(dst, src) matrix of area-averaging weights; ``A @ img @ A.T`` resizes exactly.

    Output pixel i covers [i*src/dst, (i+1)*src/dst) of the input; each weight is the
    overlap with input pixel j divided by the output pixel's width, so rows sum to 1
    (the same result as Pillow's BOX filter).
    """
    edges = np.arange(dst + 1) * (src / dst)
    lo, hi = edges[:-1, None], edges[1:, None]
    j = np.arange(src)[None, :]
    overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0.0, None)
    return (overlap / (src / dst)).astype(np.float64)


def raw_to_model(raw: np.ndarray, image_size: int) -> np.ndarray:
    """Raw images (..., 105, 105), 1 = paper, to model images (..., S, S) float32, 1 = ink."""
    raw = np.asarray(raw)
    if raw.shape[-2:] != (RAW_SIZE, RAW_SIZE):
        raise ValueError(f"expected images of {RAW_SIZE}x{RAW_SIZE}, got {raw.shape[-2:]}")
    ink = (RAW_PAPER - raw.astype(np.float32))  # 1 where ink
    if image_size == RAW_SIZE:
        return ink
    A = area_matrix(RAW_SIZE, image_size).astype(np.float32)
    flat = ink.reshape(-1, RAW_SIZE, RAW_SIZE)
    out = np.empty((flat.shape[0], image_size, image_size), np.float32)
    for s in range(0, flat.shape[0], 4096):  # chunks bound the float32 temporaries
        out[s : s + 4096] = A @ flat[s : s + 4096] @ A.T
    return np.clip(out, 0.0, 1.0).reshape(*raw.shape[:-2], image_size, image_size)


def to_model_set(raw: OmniglotSet, image_size: int) -> OmniglotSet:
    """The same characters as model images of size ``image_size``."""
    return OmniglotSet(raw_to_model(raw.X, image_size), dict(raw.c), list(raw.names))


# ----------------------------------------------------------------------------- splitting


def validation_alphabets(
    alphabets: Sequence[str], spec: int | Sequence[str], seed: int
) -> list[str]:
    """Background alphabets held out for model selection.

    ``spec`` is a count (drawn reproducibly from ``seed``) or a list of names; 0 holds none
    out (the assignment trains on every background alphabet; no model is then chosen).
    """
    alphabets = sorted(alphabets)
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        if not 0 <= spec < len(alphabets):
            raise DataError(f"data.validation_alphabets: {spec} is out of range (0..{len(alphabets) - 1})")
        rng = np.random.default_rng(seed)
        return sorted(rng.choice(alphabets, size=int(spec), replace=False).tolist())
    names = list(spec)
    unknown = [a for a in names if a not in alphabets]
    if unknown:
        raise DataError(f"data.validation_alphabets: unknown alphabet(s) {unknown}; the background set has {', '.join(alphabets)}")
    if not names or len(set(names)) == len(alphabets):
        raise DataError("data.validation_alphabets: must hold out at least one and not all alphabets")
    return sorted(set(names))


def split_train_val(
    background: OmniglotSet, spec: int | Sequence[str], seed: int
) -> tuple[OmniglotSet, OmniglotSet]:
    val = validation_alphabets(background.alphabets, spec, seed)
    train = [a for a in background.alphabets if a not in val]
    return background.subset(train), background.subset(val)


# ----------------------------------------------------------------------------- prepared files


def save_prepared(path: str | os.PathLike, data: OmniglotSet) -> None:
    """Write model images atomically as an ``.npz`` (uint8 ink coverage, see module doc)."""
    X8 = np.rint(np.clip(data.X, 0.0, 1.0) * 255).astype(np.uint8)
    alphabets = np.array(list(data.c), dtype=str)
    bounds = np.array([data.c[a] for a in data.c], dtype=np.int64).reshape(-1, 2)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, X=X8, alphabets=alphabets, bounds=bounds, names=np.array(data.names, dtype=str))


def load_prepared(path: str | os.PathLike) -> OmniglotSet:
    """Load a prepared ``.npz`` as float32 model images (1 = ink)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (run `dvc repro prepare` first)")
    with np.load(path, allow_pickle=False) as z:
        X = z["X"].astype(np.float32) / 255.0
        c = {str(a): (int(lo), int(hi)) for a, (lo, hi) in zip(z["alphabets"], z["bounds"])}
        names = [str(n) for n in z["names"]]
    return OmniglotSet(X, c, names)


def summarize(data: OmniglotSet) -> dict:
    sizes = {name: hi - lo for name, (lo, hi) in data.c.items()}
    smallest = min(sizes, key=sizes.get) if sizes else None
    return {
        "alphabets": len(data.c),
        "characters": data.n_characters,
        "drawings_per_character": int(data.X.shape[1]),
        # params validation checks evaluate.n_way against it before any stage works
        "smallest_alphabet": {"name": smallest, "characters": sizes.get(smallest, 0)},
    }

"""Fetch the official Omniglot zips and Lake's one-shot runs, or accept a copy the user placed.

A downloaded file must match the official MD5; a placed copy is validated by its
structure instead (when prepared), because re-packed copies carry other checksums.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from tripletml.atomic import atomic_path
from tripletml.errors import DownloadError  # defined there; tripletml.download.DownloadError still works

BASE_URL = "https://github.com/brendenlake/omniglot/raw/master/python/"
OFFICIAL_MD5 = {
    "images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811",
}
# Lake et al.'s 20 one-shot runs (test data for evaluation). Apart from OFFICIAL_MD5
# because the prepare stage reads every zip that mapping names as an image set.
RUNS_MD5 = {"all_runs.zip": "e8996daecdf12afeeb4a53a179f06b19"}
URL_PATHS = {"all_runs.zip": "one-shot-classification/all_runs.zip"}  # under BASE_URL; default: the name


def file_digest(path: str | os.PathLike, algorithm: str = "md5") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fetch(url: str, dest: Path, md5: str, timeout: float) -> None:
    with atomic_path(dest) as tmp:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
            for block in iter(lambda: resp.read(1 << 20), b""):
                out.write(block)
        got = file_digest(tmp)
        if got != md5:
            raise DownloadError(f"{url}: MD5 {got} does not match the official {md5}")


def ensure_raw_zips(
    raw_dir: str | os.PathLike,
    base_url: str = BASE_URL,
    timeout: float = 30.0,
    course_pickles: tuple[str, str] | None = None,
) -> dict[str, Path]:
    """Return the paths of the image zips and all_runs.zip in ``raw_dir``, downloading any missing.

    With ``course_pickles`` (the course's train and test pickle names) those two files stand
    in for the image zips: they are not published anywhere, so they must already be there.
    """
    raw_dir = Path(raw_dir)
    paths, missing = {}, []
    images = OFFICIAL_MD5
    if course_pickles is not None:
        absent = [n for n in course_pickles if not (raw_dir / n).is_file()]
        if absent:
            raise DownloadError(
                f"{raw_dir}/{absent[0]}: not found; data.course_pickles names the course's pickles, which cannot be "
                f"downloaded: put {' and '.join(absent)} in {raw_dir}/, or set data.course_pickles: null to use the official zips"
            )
        paths.update({n: raw_dir / n for n in course_pickles})
        images = {}
    for name, md5 in {**images, **RUNS_MD5}.items():
        dest = raw_dir / name
        paths[name] = dest
        if dest.is_file():
            continue
        try:
            _fetch(base_url + URL_PATHS.get(name, name), dest, md5, timeout)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            missing.append((name, f"{name} ({getattr(exc, 'reason', exc)})"))
    if missing:
        names = [name for name, _ in missing]
        listed = " and ".join(filter(None, [", ".join(names[:-1]), names[-1]]))
        raise DownloadError(
            f"cannot download {', '.join(why for _, why in missing)}: put {listed} "
            f"in {raw_dir}/ (cp {' '.join(f'<dir>/{n}' for n in names)} {raw_dir}/)"
        )
    return paths

"""The report's figures: accuracy and loss per loop, test tasks with each strategy's pick,
the triplets the hard strategy mined.

Drawn on :class:`matplotlib.figure.Figure` objects directly rather than through ``pyplot``:
no global backend is switched and no figure is left registered, so importing this module is
harmless in a notebook or a long-running process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from tripletml.atomic import atomic_path

__all__ = ["class_image", "plot_accuracy", "plot_tasks", "plot_hard_triplets", "plot_embedding_maps", "plot_distances", "plot_mistakes", "missed_tasks"]

PathLike = str | os.PathLike
DPI = 110
TRUE_COLOUR = "#1a9641"  # green: the true match / a correct pick
WRONG_COLOUR = "#d7191c"  # red: a wrong pick
CELL_IN = 0.55  # inches per image cell in the image grids: small but legible


def _save(fig: Figure, path: PathLike) -> Path:
    # The temp name ends in .tmp, so the format must be given explicitly.
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return Path(path)


def _image(X: np.ndarray, char: int, drawing: int) -> np.ndarray:
    img = np.asarray(X[char, drawing])
    return img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img


def class_image(X: np.ndarray, c: int, d: int) -> np.ndarray:
    """Drawing ``d`` of class ``c`` of ``X`` (n_chars, 20, S, S[, 1]), rotation-augmented classes included.

    Class ``c >= n_chars`` is character ``c % n_chars`` turned by ``c // n_chars`` quarter
    turns (``np.rot90``), the training set's augmentation.
    """
    n = int(X.shape[0])
    c, d = int(c), int(d)
    if c < 0 or not 0 <= d < X.shape[1]:
        raise IndexError(f"class {c}, drawing {d} outside a set of {n} characters x {X.shape[1]} drawings")
    return np.rot90(_image(X, c % n, d), c // n)


def _show(ax, img: np.ndarray, x: float, y: float) -> None:
    """Place one image with its top-left corner at data (x, y); ink dark on white."""
    h, w = img.shape
    ax.imshow(img, cmap="gray_r", vmin=0.0, vmax=1.0, extent=(x, x + w, y + h, y), interpolation="nearest")


def _frame(ax, x: float, y: float, size: float, colour: str, lw: float, ls: str = "-", pad: float = 0.0) -> None:
    ax.add_patch(
        Rectangle((x - pad, y - pad), size + 2 * pad, size + 2 * pad, fill=False, ec=colour, lw=lw, ls=ls)
    )


def plot_accuracy(
    histories: Mapping[str, pd.DataFrame], path: PathLike, n_way: int = 20, margins: Mapping[str, float] | None = None
) -> Path:
    """Two panels per loop, one colour per strategy: accuracy (validation solid, the loop's
    fresh test tasks dashed) and the training loss as a fraction of the strategy's margin.

    The right panel answers the assignment's Task 2.2: a loss that falls below the margin
    (1 on this scale) means the network separates triplets rather than collapsing every
    embedding onto one point, where the hinge loss sits exactly at the margin.
    """
    fig = Figure(figsize=(12.0, 4.6), layout="constrained")
    acc_ax, loss_ax = fig.subplots(1, 2)
    handles = []
    for i, (strategy, h) in enumerate(histories.items()):
        colour = f"C{i % 10}"
        h = h.sort_values("loop")
        val = h.dropna(subset=["val_acc20"])
        acc_ax.plot(val["loop"], val["val_acc20"], color=colour, ls="-", lw=1.6, marker="o", ms=2.5)
        if "test_acc20_250" in h and h["test_acc20_250"].notna().any():
            test = h.dropna(subset=["test_acc20_250"])
            acc_ax.plot(test["loop"], test["test_acc20_250"], color=colour, ls="--", lw=1.3)
        margin = (margins or {}).get(strategy)
        if margin is not None and margin > 0:  # the soft margin has none: no curve to scale
            loss_ax.plot(h["loop"], h["loss"] / margin, color=colour, lw=1.6, marker="o", ms=2.5)
        handles.append(Line2D([], [], color=colour, lw=2, label=strategy))
    acc_ax.axhline(100.0 / n_way, color="0.4", ls=":", lw=1)
    loss_ax.axhline(1.0, color="0.4", ls=":", lw=1)
    handles += [
        Line2D([], [], color="k", ls="-", label="validation (chooses)"),
        Line2D([], [], color="k", ls="--", label="test, fresh tasks each loop"),
        Line2D([], [], color="0.4", ls=":", label=f"chance ({100 / n_way:g}%) / the margin"),
    ]
    # Outside the axes: inside, it would hide whichever curve happens to run under it.
    fig.legend(handles=handles, loc="outside right upper", fontsize=8)
    for ax in (acc_ax, loss_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("training loop")
        ax.grid(alpha=0.3)
    acc_ax.set_ylabel(f"{n_way}-way one-shot accuracy (%)")
    acc_ax.set_title(f"{n_way}-way one-shot accuracy per loop")
    acc_ax.set_ylim(0, 100)
    loss_ax.set_ylabel("mean training loss / margin")
    loss_ax.set_title("Loss per loop against the margin (collapse sits at 1)")
    loss_ax.set_ylim(bottom=0)
    return _save(fig, path)


def _pick_tasks(predictions: Mapping[str, np.ndarray], strategies: Sequence[str], n_tasks: int) -> list[int]:
    """Tasks where the strategies disagree first (the instructive ones), then the rest, in order."""
    target = np.asarray(predictions["target"])
    correct = np.stack([np.asarray(predictions[f"pred_{s}"]) == target for s in strategies])
    split = correct.any(axis=0) & ~correct.all(axis=0)
    order = np.concatenate([np.flatnonzero(split), np.flatnonzero(~split)])
    return [int(t) for t in order[:n_tasks]]


def plot_tasks(
    X_test: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    strategies: Sequence[str],
    path: PathLike,
    n_tasks: int = 4,
    tasks: Sequence[int] | None = None,
) -> Path:
    """A few across-alphabet test tasks: query, then the support set with each strategy's pick.

    The true match is framed green; under every picked image each strategy that picked it
    is named with ✓/✗, and a wrong pick is framed dashed red. By default the tasks where
    the strategies disagree are shown first.
    """
    strategies = list(strategies)
    tasks = list(tasks) if tasks is not None else _pick_tasks(predictions, strategies, n_tasks)
    qc, qd = np.asarray(predictions["query_char"]), np.asarray(predictions["query_drawing"])
    sc, sd = np.asarray(predictions["support_chars"]), np.asarray(predictions["support_drawings"])
    target = np.asarray(predictions["target"])
    n_way = int(sc.shape[1])
    S = int(_image(X_test, 0, 0).shape[0])

    # Layout in pixel units of the images: a cell is an image plus a gap; the query sits apart.
    gap = S * 0.25
    cell = S + gap
    x0 = cell + S * 0.5  # supports start after the query and a wider gap
    width = x0 + n_way * cell
    label_h = S * 0.42  # one line of "strategy ✓" under an image
    row_h = S + gap + label_h * max(1, len(strategies))
    fig_w = width / S * CELL_IN
    fig_h = max(1, len(tasks)) * (row_h / S * CELL_IN + 0.3)
    fig = Figure(figsize=(fig_w, fig_h), layout="constrained")
    axes = fig.subplots(max(1, len(tasks)), 1, squeeze=False)[:, 0]
    font = 7.5

    for ax, t in zip(axes, tasks):
        ax.set_xlim(-gap, width)
        ax.set_ylim(row_h, -gap)  # y grows downwards, like the images
        ax.set_aspect("equal")
        ax.axis("off")
        _show(ax, _image(X_test, qc[t], qd[t]), 0, 0)
        _frame(ax, 0, 0, S, "0.2", 1.2, pad=1)
        ax.text(S / 2, S + gap * 0.5, "query", ha="center", va="top", fontsize=font)
        picks: dict[int, list[str]] = {}
        summary = []
        for s in strategies:
            p = int(np.asarray(predictions[f"pred_{s}"])[t])
            picks.setdefault(p, []).append(s)
            summary.append(f"{s} {'✓' if p == target[t] else '✗'}")
        for j in range(n_way):
            x = x0 + j * cell
            _show(ax, _image(X_test, sc[t, j], sd[t, j]), x, 0)
            if j == target[t]:
                _frame(ax, x, 0, S, TRUE_COLOUR, 2.6, pad=1.5)
            elif j in picks:
                _frame(ax, x, 0, S, WRONG_COLOUR, 1.8, ls="--", pad=1.5)
            else:
                _frame(ax, x, 0, S, "0.8", 0.5)
            for k, s in enumerate(picks.get(j, [])):
                ok = j == target[t]
                ax.text(
                    x + S / 2,
                    S + gap * 0.5 + k * label_h,
                    f"{s} {'✓' if ok else '✗'}",
                    ha="center",
                    va="top",
                    fontsize=font,
                    color=TRUE_COLOUR if ok else WRONG_COLOUR,
                    fontweight="bold",
                )
        ax.set_title(
            f"task {t}: " + ", ".join(summary),
            loc="left",
            fontsize=9,
        )
    for ax in axes[len(tasks) :]:
        ax.axis("off")
    fig.suptitle(
        f"{n_way}-way one-shot test tasks: query, then the support set "
        "(true match framed green, a wrong pick dashed red)",
        fontsize=11,
    )
    return _save(fig, path)


def _rotation_label(c: int, n: int) -> str:
    turns = (int(c) // n) % 4
    return f"char {int(c) % n}" + (f", {90 * turns}°" if turns else "")


def plot_hard_triplets(
    X_train: np.ndarray, mined: Mapping[str, Mapping], path: PathLike, n: int = 8, title: str = "Triplets mined by the hard strategy"
) -> Path:
    """Triplets a strategy mined at its first and last loop, anchor | positive | negative.

    Each image is labelled with its character and rotation, so a negative that is a rotated
    copy of the anchor's own character is visible as such.
    """
    n_chars = int(X_train.shape[0])
    S = int(_image(X_train, 0, 0).shape[0])
    gap = S * 0.2
    label_h = S * 0.38
    cell_w, cell_h = S + gap, S + label_h + gap * 0.5
    panels = [("first", "first loop"), ("last", "last loop")]
    rows = max(1, min(n, max((len(mined.get(k, {}).get("classes", [])) for k, _ in panels), default=0)))
    fig = Figure(figsize=(2 * 3 * cell_w / S * CELL_IN * 1.35 + 0.4, rows * cell_h / S * CELL_IN * 1.35 + 0.8),
                 layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, (key, name) in zip(axes, panels):
        ax.set_xlim(-gap, 3 * cell_w)
        ax.set_ylim(rows * cell_h, -S * 0.45)
        ax.set_aspect("equal")
        ax.axis("off")
        entry = mined.get(key)
        if not entry:
            ax.set_title(f"{name}: none recorded", fontsize=10)
            continue
        classes = np.asarray(entry.get("classes", []), dtype=int).reshape(-1, 3)[:n]
        drawings = np.asarray(entry.get("drawings", []), dtype=int).reshape(-1, 3)[:n]
        loop = entry.get("loop")
        ax.set_title(f"{name}" + (f" (loop {loop})" if loop is not None else ""), fontsize=10)
        for col, head in enumerate(("anchor", "positive", "negative")):
            ax.text(col * cell_w + S / 2, -S * 0.12, head, ha="center", va="bottom", fontsize=8, fontweight="bold")
        for r, (cls, drw) in enumerate(zip(classes, drawings)):
            y = r * cell_h
            for col in range(3):
                x = col * cell_w
                _show(ax, class_image(X_train, cls[col], drw[col]), x, y)
                _frame(ax, x, y, S, WRONG_COLOUR if col == 2 else "0.75", 0.8 if col < 2 else 1.2)
                ax.text(x + S / 2, y + S + 1, _rotation_label(cls[col], n_chars), ha="center", va="top", fontsize=6)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def plot_embedding_maps(
    maps: Mapping[str, np.ndarray], chars: Mapping[str, np.ndarray], n_drawings: int, path: PathLike
) -> Path:
    """Each strategy's test embeddings of a few evaluation alphabets in 2-D (t-SNE), side by side.

    ``maps[strategy]`` holds one point per drawing, character by character in the order of
    ``chars`` (alphabet -> character indices); a character's drawings share a colour, an
    alphabet its marker. Tight, well-apart clusters are what a one-shot task needs.
    """
    markers = "o^sDv<>P"
    fig = Figure(figsize=(4.2 * max(1, len(maps)) + 1.6, 4.6), layout="constrained")
    axes = fig.subplots(1, max(1, len(maps)), squeeze=False)[0]
    n_chars = sum(len(v) for v in chars.values())
    colours = [f"C{i % 10}" if n_chars <= 10 else _hsv(i, n_chars) for i in range(n_chars)]
    for ax, (strategy, xy) in zip(axes, maps.items()):
        k = 0
        for a, (alphabet, members) in enumerate(chars.items()):
            for j in range(len(members)):
                pts = xy[k * n_drawings : (k + 1) * n_drawings]
                ax.scatter(pts[:, 0], pts[:, 1], s=9, color=colours[k], marker=markers[a % len(markers)], lw=0)
                k += 1
        ax.set_title(strategy, fontsize=11)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Line2D([], [], color="0.3", marker=markers[a % len(markers)], ls="", label=name.replace("_", " "))
               for a, name in enumerate(chars)]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, title="alphabet (marker)")
    fig.suptitle(f"Test embeddings in 2-D (t-SNE): {n_chars} characters x {n_drawings} drawings, "
                 "one colour per character", fontsize=11)
    return _save(fig, path)


def _hsv(i: int, n: int) -> tuple[float, float, float]:
    import colorsys

    return colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.75, 0.85 - 0.25 * (i % 3) / 2)


def plot_distances(
    distances: Mapping[str, Mapping[str, np.ndarray]],
    margins: Mapping[str, float],
    overlaps: Mapping[str, Mapping[str, float]],
    path: PathLike,
) -> Path:
    """Per strategy, the squared distances of same-character pairs against different-character
    pairs (any two characters, and two of one alphabet), with the margin drawn from the median
    same-character distance: the loss asks every negative to lie beyond that line."""
    fig = Figure(figsize=(4.2 * max(1, len(distances)), 3.8), layout="constrained")
    axes = fig.subplots(1, max(1, len(distances)), squeeze=False, sharey=True)[0]
    styles = {"same": ("same character", TRUE_COLOUR), "across": ("other character", "0.45"),
              "within": ("other character, same alphabet", WRONG_COLOUR)}
    top = max(float(np.percentile(np.concatenate(list(d.values())), 99.5)) for d in distances.values())
    bins = np.linspace(0.0, top, 60)
    for ax, (strategy, d) in zip(axes, distances.items()):
        for kind, (label, colour) in styles.items():
            ax.hist(d[kind], bins=bins, density=True, histtype="stepfilled" if kind == "same" else "step",
                    alpha=0.35 if kind == "same" else 1.0, color=colour, lw=1.4, label=label)
        margin = margins.get(strategy)
        if margin:
            edge = float(np.median(d["same"])) + margin
            ax.axvline(edge, color="k", ls=":", lw=1.2, label="median same + margin")
        o = overlaps.get(strategy, {})
        ax.set_title(f"{strategy}\noverlap {o.get('across', float('nan')):.1f} % any, "
                     f"{o.get('within', float('nan')):.1f} % same alphabet", fontsize=9)
        ax.set_xlabel("squared distance between two test drawings")
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize=7, loc="upper right")
    fig.suptitle("How far apart drawings are: same character against other characters "
                 "(overlap: chance that an other-character pair is the closer)", fontsize=10)
    return _save(fig, path)


def missed_tasks(
    predictions: Mapping[str, np.ndarray], strategy: str, prefix: str = "within_", n: int = 8
) -> tuple[list[tuple[tuple[int, int], tuple[int, int], tuple[int, int]]], int]:
    """The first ``n`` tasks ``strategy`` got wrong, each as (query, true match, chosen) (character,
    drawing) pairs, and how many it got wrong in all."""
    target = np.asarray(predictions[f"{prefix}target"])
    pred = np.asarray(predictions[f"{prefix}pred_{strategy}"])
    qc, qd = np.asarray(predictions[f"{prefix}query_char"]), np.asarray(predictions[f"{prefix}query_drawing"])
    sc, sd = np.asarray(predictions[f"{prefix}support_chars"]), np.asarray(predictions[f"{prefix}support_drawings"])
    wrong = np.flatnonzero(pred != target)
    shown = [((int(qc[t]), int(qd[t])), (int(sc[t, target[t]]), int(sd[t, target[t]])), (int(sc[t, pred[t]]), int(sd[t, pred[t]])))
             for t in wrong[:n]]
    return shown, int(len(wrong))


def plot_mistakes(
    X_test: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    strategy: str,
    path: PathLike,
    prefix: str = "within_",
    n: int = 8,
    alphabet_of: Sequence[str] | None = None,
) -> Path:
    """Tasks the strategy got wrong: the query, the true match and the drawing it chose, so a
    reader sees which characters it confuses (within-alphabet tasks by default)."""
    wrong, missed = missed_tasks(predictions, strategy, prefix, n)
    cols = 2
    rows = max(1, -(-len(wrong) // cols))
    fig = Figure(figsize=(cols * 3 * 0.95 + 0.6, rows * 1.25 + 0.7), layout="constrained")
    grid = fig.subplots(rows, cols * 3, squeeze=False)
    for ax in grid.ravel():
        ax.axis("off")
    for i, images in enumerate(wrong):
        r, c0 = divmod(i, cols)
        cells = zip(images, ("query", "true match", f"{strategy} chose"), ("0.2", TRUE_COLOUR, WRONG_COLOUR))
        for k, ((char, drawing), label, colour) in enumerate(cells):
            ax = grid[r, c0 * 3 + k]
            ax.imshow(_image(X_test, char, drawing), cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(2.0 if k else 1.0)
            title = label if k or alphabet_of is None else alphabet_of[int(char)].replace("_", " ")[:20]
            ax.set_title(title, fontsize=7, color=colour)
    fig.suptitle(f"{strategy}: {len(wrong)} of the {missed} {'within-alphabet ' if prefix else ''}test tasks it got wrong",
                 fontsize=10)
    return _save(fig, path)

"""The architectures as data: flat lists of layer specs, and their spatial sizes.

Pure Python (no TensorFlow), so params validation can check an image size against
an architecture before any stage imports Keras. :mod:`tripletml.models` turns a
spec into Keras layers.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

# --------------------------------------------------------------------------------
# Architecture specs: lists of tuples, turned into layers by _make_layer.
#   ("conv", filters, kernel, stride, padding, l2, activation)
#   ("pool", padding)  2x2 max pool, stride 2; "valid" (Keras default) drops an odd last row
#                      and column, "same" pads them so that every position reaches the output
#   ("bn",) ("relu",) ("dropout", rate) ("flatten",) ("l2norm",)
#   ("resblock", filters)  two 3x3 same convs with BatchNorm and a shortcut (models.ResidualBlock)
#   ("dense", units, activation, l2)


def _conv(filters, kernel, stride=1, padding="valid", l2=None, activation="relu"):
    return ("conv", filters, kernel, stride, padding, l2, activation)


_POOL = ("pool", "valid")


def _schroff(embedding_dim: int | None = None) -> list:
    # The course default (Schroff et al. 2015's NN1, reduced): 5,782,208 params at 105.
    return [
        _conv(64, 1), _conv(64, 3), ("bn",), _POOL,
        _conv(192, 1), _conv(192, 3), _POOL,
        _conv(384, 1), _conv(384, 3),
        _conv(256, 1), _conv(256, 3),
        _conv(256, 1), _conv(256, 3), _POOL,
        ("flatten",), ("dense", embedding_dim or 128, None, None), ("l2norm",),
    ]  # fmt: skip


def _hoffer(embedding_dim: int | None = None) -> list:
    return [
        _conv(3, 5, stride=3, padding="same"), _POOL,
        _conv(64, 3, padding="same"), _POOL,
        _conv(128, 3), _POOL,
        _conv(256, 2), _POOL,
        ("flatten",), ("dense", embedding_dim or 4096, "sigmoid", None),
    ]  # fmt: skip


def _practical(embedding_dim: int | None = None) -> list:
    reg = 2e-4
    return [
        _conv(64, 10, l2=reg), _POOL, ("bn",), ("dropout", 0.25),
        _conv(128, 7, l2=reg), _POOL, ("bn",), ("dropout", 0.25),
        _conv(128, 4, l2=reg), _POOL, ("bn",), ("dropout", 0.25),
        _conv(256, 4, l2=reg),
        ("flatten",), ("bn",), ("dropout", 0.25),
        ("dense", embedding_dim or 4096, "sigmoid", 1e-3),
    ]  # fmt: skip


def _custom(embedding_dim: int | None = None) -> list:
    return [
        _conv(64, 10, padding="same"), _POOL,
        _conv(128, 7, padding="same"), _POOL,
        _conv(256, 4, padding="same"), _POOL,
        _conv(256, 4, padding="same"), _POOL,
        ("dropout", 0.2), ("flatten",),
        ("dense", embedding_dim or 4098, "sigmoid", None),  # 4098 as specified
        ("l2norm",),
    ]  # fmt: skip


def _convnet(
    embedding_dim: int | None = None,
    filters: int | Sequence[int] = 64,
    blocks: int | None = None,
    dropout: float = 0.0,
    pool_padding: str = "valid",
    final_pool: bool = True,
    residual: bool = False,
) -> list:
    """``blocks`` x (conv 3x3 same, BN, ReLU, pool); ``filters`` is one width for all
    blocks or one per block (then ``blocks`` defaults to its length, else 4).

    ``pool_padding="valid"`` is the usual one-shot convnet (28 px: 28-14-7-3-1, a 64-d
    feature); a valid pool of an odd map ignores its last row and column, so at 28 px the
    last two pools see 36 of 49 and 4 of 9 positions. ``"same"`` keeps them all
    (28-14-7-4-2: a 2x2x64 feature) for a few percent more compute. ``final_pool=False``
    leaves the last block's map unpooled (same padding at 28 px: a 4x4x64 feature), at the
    same conv cost. ``residual=True`` makes each block a residual block (two 3x3 convs
    with BatchNorm and a shortcut, then ReLU and the pool): twice the convs, the same sizes.
    """
    if pool_padding not in ("valid", "same"):
        raise ValueError(f"convnet: pool_padding must be 'valid' or 'same', got {pool_padding!r}")
    if isinstance(filters, int):
        widths = [filters] * (4 if blocks is None else blocks)
    else:
        widths = [int(f) for f in filters]
        if blocks is not None and blocks != len(widths):
            raise ValueError(f"convnet: blocks={blocks} but {len(widths)} filter widths given")
    if not widths or min(widths) < 1:
        raise ValueError(f"convnet: need at least one block of >= 1 filters, got {widths}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"convnet: dropout must be in [0, 1), got {dropout}")
    spec = []
    for i, w in enumerate(widths):
        if residual:
            spec.append(("resblock", w))
        else:  # no conv bias: the BatchNorm right after has its own shift
            spec += [_conv(w, 3, padding="same", activation=None), ("bn",), ("relu",)]
        if final_pool or i < len(widths) - 1:
            spec.append(("pool", pool_padding))
    spec.append(("flatten",))
    if dropout:
        spec.append(("dropout", dropout))
    spec += [("dense", embedding_dim or 128, None, None), ("l2norm",)]
    return spec


_ARCH_SPECS: dict[str, Callable[..., list]] = {
    "schroff": _schroff,
    "hoffer": _hoffer,
    "practical": _practical,
    "custom": _custom,
    "convnet": _convnet,
}
ARCHITECTURES: tuple[str, ...] = tuple(_ARCH_SPECS)


def _arch_options(arch: str) -> set[str]:
    if arch not in _ARCH_SPECS:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {list(ARCHITECTURES)}")
    return set(inspect.signature(_ARCH_SPECS[arch]).parameters) - {"embedding_dim"}


def _spec(arch: str, embedding_dim: int | None, options: dict) -> list:
    allowed = _arch_options(arch)
    if embedding_dim is not None and int(embedding_dim) < 1:
        raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
    fn = _ARCH_SPECS[arch]
    options = {k: v for k, v in options.items() if v is not None}  # None: arch default
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(
            f"unknown option(s) {sorted(unknown)} for architecture {arch!r}; "
            f"it accepts {sorted(allowed) or 'none'}"
        )
    return fn(embedding_dim=embedding_dim, **options)


# --------------------------------------------------------------------------------
# Spatial sizes.


def _spatial_sizes(spec: list, size: int) -> list[int]:
    """Spatial size after each conv/pool, stopping at the first one below 1."""
    sizes = []
    for op in spec:
        if op[0] == "conv":
            _, _, k, stride, padding, _, _ = op
            size = math.ceil(size / stride) if padding == "same" else (size - k) // stride + 1
        elif op[0] == "pool":
            size = math.ceil(size / 2) if op[1] == "same" else (size - 2) // 2 + 1
        else:
            continue
        sizes.append(size)
        if size < 1:
            break
    return sizes


def _fits(spec: list, size: int) -> bool:
    return size >= 1 and all(s >= 1 for s in _spatial_sizes(spec, size))


def _min_size(spec: list) -> int:
    # Output size is monotone in input size, so the first size that fits is the
    # minimum; every arch here fits well below the cap.
    for size in range(1, 4097):
        if _fits(spec, size):
            return size
    raise ValueError("architecture does not fit any image size up to 4096")


def min_image_size(arch: str, **options) -> int:
    """Smallest square image size ``arch`` (with ``options``) can embed.

    Options ``arch`` does not take (another arch's, the Dense width, ...) are
    ignored, so one shared model config can be passed for any arch.
    """
    allowed = _arch_options(arch)
    return _min_size(_spec(arch, None, {k: v for k, v in options.items() if k in allowed}))

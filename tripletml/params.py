"""Load and validate ``params.yaml`` before any stage does any work.

The schema is a set of pydantic models with ``extra="forbid"``: pydantic gives types,
ranges and literal choices; this module turns its errors into one line naming the
key and the value, with the nearest valid key suggested for a typo.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SAMPLERS = ("triplets", "classes")  # tripletml.samplers
NEGATIVE_MINERS = ("random", "hard")  # the assignment's rules: a random other class, then a random / the nearest drawing
ONLINE_MINERS = ("batch_all", "batch_hard", "semi_hard")  # in-batch mining over P x K batches
MINERS = NEGATIVE_MINERS + ONLINE_MINERS
PAIR = ("random", "hard")  # the assignment's comparison: stages train_random and train_hard
ARCHS = ("convnet", "schroff", "hoffer", "practical", "custom")
# The official evaluation set's smallest alphabet: what within-alphabet tasks are checked
# against until `prepare` has written the prepared set's own summary.json.
OMNIGLOT_SMALLEST_EVALUATION_ALPHABET = ("Angelic", 20)
OMNIGLOT_BACKGROUND_ALPHABETS = 30


class ParamsError(ValueError):
    """A bad params file; the message names the file, the key and the value."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataParams(_Strict):
    image_size: int = Field(28, ge=8, le=105)
    validation_alphabets: int | list[str] = 5  # 0: train on every background alphabet (the assignment); no model is chosen
    seed: int = 0
    raw_dir: str = "data/raw"
    prepared_dir: str = "data/prepared"


class ModelParams(_Strict):
    arch: Literal[ARCHS] = "convnet"  # type: ignore[valid-type]
    embedding_dim: int | None = Field(128, ge=2)
    filters: int = Field(64, ge=1)
    blocks: int = Field(4, ge=1, le=6)
    pool_padding: Literal["valid", "same"] = "same"  # convnet only; "same" keeps odd maps' last row and column
    final_pool: bool = True  # convnet only; false: the last block's map goes to the Dense layer unpooled


class AugmentParams(_Strict):
    rotations: bool = False  # 90-degree rotations as new classes (Vinyals et al. 2016)
    affine: float = Field(0.0, ge=0.0, le=1.0)  # strength of random affine distortions (Koch et al. 2015)
    flips: bool = False  # left-right mirror images (of the rotated classes too) as new classes


class StrategyParams(_Strict):
    """One strategy: a sampler and a miner, and overrides of any ``train`` key (``None``
    falls back to it). ``samples_per_class`` has no shared value: unset, it is every
    drawing for the random and hard miners and 4 for the online ones."""

    sampler: Literal[SAMPLERS]  # type: ignore[valid-type]
    miner: Literal[MINERS]  # type: ignore[valid-type]
    loops: int | None = Field(None, ge=1)
    steps_per_loop: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=2)
    learning_rate: float | None = Field(None, gt=0)
    margin: float | None = Field(None, ge=0)
    soft_margin: bool | None = None
    classes_per_batch: int | None = Field(None, ge=2)  # class batches: P
    samples_per_class: int | None = Field(None, ge=2, le=20)  # class batches: K
    augment: AugmentParams | None = None


class TrainParams(_Strict):
    seed: int = 0
    loops: int = Field(10, ge=1)
    steps_per_loop: int = Field(100, ge=1)
    batch_size: int = Field(64, ge=2)  # triplets per step with the triplets sampler
    classes_per_batch: int = Field(8, ge=2)  # P of class batches
    margin: float = Field(0.2, ge=0)
    soft_margin: bool = False
    distance: Literal["sqeuclidean", "euclidean", "cosine"] = "sqeuclidean"
    optimizer: Literal["adam", "sgd"] = "adam"
    learning_rate: float = Field(0.001, gt=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    augment: AugmentParams = AugmentParams()
    val_tasks: int = Field(500, ge=1)  # 20-way validation tasks scored after each loop (the same every loop)
    test_tasks: int = Field(250, ge=1)  # the assignment's per-loop test: tasks drawn afresh every loop
    n_way: int = Field(20, ge=2)
    distribute: Literal["none", "mirrored", "multi_worker"] = "none"
    cpu_replicas: int = Field(2, ge=1)  # mirrored without a GPU: logical CPU devices to mirror over
    precision: Literal["float32", "mixed_bfloat16"] = "float32"


class EvaluateParams(_Strict):
    tasks: int = Field(2000, ge=1)
    assignment_tasks: int = Field(250, ge=1)
    n_way: int = Field(20, ge=2)
    seed: int = 1234
    tta_shift: int = Field(1, ge=0)  # test-time shift averaging radius in pixels (tripletml/tta.py); 0: off


class Params(_Strict):
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    strategies: dict[str, StrategyParams] = {
        "random": StrategyParams(sampler="triplets", miner="random"),
        "hard": StrategyParams(sampler="triplets", miner="hard"),
    }
    extra_strategies: list[str] = []
    evaluate: EvaluateParams = EvaluateParams()

    @model_validator(mode="after")
    def _known_strategies(self) -> Params:
        for name in self.strategies:
            if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or name == "ensemble":
                raise ValueError(f"strategy name {name!r}: use lower-case letters, digits and _ (it names a stage and a folder); 'ensemble' is taken")
        for name in PAIR:
            if name not in self.strategies:
                raise ValueError(f"strategies.{name} is missing: random and hard are the pipeline's paired comparison")
            if self.strategies[name].miner != name:
                raise ValueError(f"strategies.{name}.miner = {self.strategies[name].miner!r}: the {name} strategy uses the {name} miner")
        for name in self.extra_strategies:
            if name not in self.strategies or name in PAIR:
                raise ValueError(
                    f"extra_strategies: {name!r} is not a strategy defined under strategies (besides random and hard)"
                    f"{_suggest(name, [s for s in self.strategies if s not in PAIR])}"
                )
        return self

    def trained(self) -> list[str]:
        """Every strategy the pipeline trains, in report order: the assignment's pair first."""
        return list(PAIR) + [s for s in dict.fromkeys(self.extra_strategies)]

    def strategy(self, name: str) -> dict[str, Any]:
        """The effective training settings of one strategy: ``train`` with its overrides."""
        merged = self.train.model_dump()
        if name not in self.strategies:
            raise ParamsError(f"strategies.{name}: no such strategy{_suggest(name, self.strategies)}; defined: {', '.join(self.strategies)}")
        own = self.strategies[name].model_dump()
        for key, value in own.items():
            if value is not None or key not in merged:  # strategy-only keys are always present
                merged[key] = value
        merged["strategy"] = name
        return merged


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _model_in(annotation: Any) -> Any:
    """The pydantic model inside an annotation (``X | None``, ``dict[str, X]``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _fields_at(loc: tuple) -> list[str]:
    """Valid keys of the mapping at ``loc``, for suggestions."""
    model: Any = Params
    for part in loc:
        fields = getattr(model, "model_fields", {})
        if part in fields:
            model = _model_in(fields[part].annotation)
        # otherwise ``part`` is a dict key (a strategy name): stay on the value model
    return list(getattr(model, "model_fields", {}))


def _format_error(err: dict, source: str) -> str:
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc) or "<top>"
    if err["type"] == "extra_forbidden":
        parent_fields = _fields_at(loc[:-1])
        return f"{source}: unknown key {key!r}{_suggest(str(loc[-1]), parent_fields)}"
    msg = err["msg"].removeprefix("Value error, ")
    if not loc:  # a check across keys: its message names them
        return f"{source}: {msg}"
    if err["type"] == "missing":
        return f"{source}: {key} is required"
    return f"{source}: {key} = {err.get('input')!r}: {msg}"


def validate_params(raw: dict, source: str = "params.yaml", use_prepared: bool = True) -> Params:
    """Validate a parsed params mapping; raise :class:`ParamsError` on the first problem.

    ``use_prepared=False`` checks ``evaluate.n_way`` against the official evaluation set
    rather than the prepared one (for the stages that make the prepared set).
    """
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping at the top level")
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(_format_error(exc.errors()[0], source)) from None
    _cross_checks(params, source, use_prepared)
    return params


def _cross_checks(p: Params, source: str, use_prepared: bool = True) -> None:
    """Checks that span several keys, made before any work starts."""
    from tripletml.architectures import min_image_size  # pure Python: no TensorFlow at start-up

    need = min_image_size(p.model.arch, filters=p.model.filters, blocks=p.model.blocks, pool_padding=p.model.pool_padding, final_pool=p.model.final_pool)
    if p.data.image_size < need:
        raise ParamsError(
            f"{source}: data.image_size = {p.data.image_size}: too small for model.arch {p.model.arch!r} (needs >= {need})"
        )
    if 2 * p.evaluate.tta_shift >= p.data.image_size:
        raise ParamsError(
            f"{source}: evaluate.tta_shift = {p.evaluate.tta_shift}: shifts must stay below half of data.image_size ({p.data.image_size})"
        )
    held_out = p.data.validation_alphabets
    if isinstance(held_out, int) and not 0 <= held_out < OMNIGLOT_BACKGROUND_ALPHABETS:
        raise ParamsError(
            f"{source}: data.validation_alphabets = {held_out}: must be 0 (none held out) to "
            f"{OMNIGLOT_BACKGROUND_ALPHABETS - 1} of the {OMNIGLOT_BACKGROUND_ALPHABETS} background alphabets, or a list of names"
        )
    alphabet, size = smallest_evaluation_alphabet(p.data.prepared_dir if use_prepared else None)
    if p.evaluate.n_way > size:
        raise ParamsError(
            f"{source}: evaluate.n_way = {p.evaluate.n_way}: larger than the smallest alphabet the within-alphabet "
            f"evaluation draws from ({alphabet!r}, {size} characters)"
        )
    for name in p.strategies:  # every strategy defined, trained in this run or not
        s = p.strategy(name)
        if s["sampler"] == "triplets" and s["miner"] not in NEGATIVE_MINERS:
            raise ParamsError(
                f"{source}: strategies.{name}.miner = {s['miner']!r}: the triplets sampler takes the random or hard miner; "
                "online miners need sampler: classes"
            )
        if s["sampler"] == "classes" and s["miner"] == "hard" and s["samples_per_class"] is not None:
            raise ParamsError(
                f"{source}: strategies.{name}.samples_per_class = {s['samples_per_class']}: the hard miner takes the nearest "
                "of every drawing of the negative class, so its class batches hold all drawings; leave the key unset"
            )


def smallest_evaluation_alphabet(prepared_dir: str | os.PathLike | None) -> tuple[str, int]:
    """(name, characters) of the test set's smallest alphabet: from prepare's summary, else Omniglot's."""
    import json

    if prepared_dir is None:
        return OMNIGLOT_SMALLEST_EVALUATION_ALPHABET
    try:
        found = json.loads((Path(prepared_dir) / "summary.json").read_text(encoding="utf-8"))["test"]["smallest_alphabet"]
        return str(found["name"]), int(found["characters"])
    except (OSError, ValueError, KeyError, TypeError):  # not prepared yet, or an older summary
        return OMNIGLOT_SMALLEST_EVALUATION_ALPHABET


def apply_overrides(raw: dict, overrides: dict[str, Any]) -> dict:
    """``{"train.margin": 0.5, ...}`` (dotted keys, as ``dvc exp run -S`` takes them) applied to a
    copy of a parsed params mapping."""
    import copy

    out = copy.deepcopy(raw)
    for key, value in overrides.items():
        *parents, leaf = str(key).split(".")
        node = out
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[leaf] = value
    return out


def load_params(path: str | os.PathLike = "params.yaml", use_prepared: bool = True) -> Params:
    """Read and validate a params file (``use_prepared``: see :func:`validate_params`)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ParamsError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({exc})".replace("\n", " ")) from None
    return validate_params(raw or {}, str(path), use_prepared)

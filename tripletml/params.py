"""Load and validate ``params.yaml`` before any stage does any work (and before TensorFlow loads).

The schema is a set of pydantic models with ``extra="forbid"`` and bounds on every number;
this module turns their errors into one line naming the file, the key, the value and the
allowed range, with the nearest valid key suggested for a typo. Values bounded by the data
(classes per batch, n-way, held-out alphabets) are checked against prepare's ``summary.json``
where it describes the current split, else against the official Omniglot counts.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tripletml.data_facts import OMNIGLOT_DRAWINGS, DataFacts, data_facts
from tripletml.errors import ParamsError  # defined there; tripletml.params.ParamsError still works

SAMPLERS = ("triplets", "classes")  # tripletml.samplers
NEGATIVE_MINERS = ("random", "hard")  # the assignment's rules: a random other class, then a random / the nearest drawing
ONLINE_MINERS = ("batch_all", "batch_hard", "semi_hard")  # in-batch mining over P x K batches
MINERS = NEGATIVE_MINERS + ONLINE_MINERS
PAIR = ("random", "hard")  # the assignment's comparison: stages train_random and train_hard
ARCHS = ("convnet", "schroff", "hoffer", "practical", "custom")

# Upper bounds for values that would otherwise exhaust memory or time. Generous: each is far
# above anything this project runs (in brackets: the committed params.yaml), and there only to
# turn a typo (an extra zero, 10**9) into a one-line error instead of a crash an hour in.
MAX_SEED = 2**32 - 1  # keras.utils.set_random_seed seeds NumPy's legacy generator: 0..2**32-1
MAX_FILTERS = 1024  # convnet filters per block (64): 1024 at 105 px is ~45 MB of activations per image and block
MAX_EMBEDDING_DIM = 8192  # final Dense width (128; the sigmoid archs' own: 4096)
MAX_BATCH_SIZE = 4096  # triplets a step (64): 12288 images, and 20x that embedded by the hard miner
MAX_IMAGES_PER_STEP = 3 * MAX_BATCH_SIZE  # class batches: classes_per_batch x samples_per_class (64-160)
MAX_LOOPS = 10_000  # (10) each loop also scores the validation tasks and writes a checkpoint
MAX_STEPS_PER_LOOP = 1_000_000  # (160-450)
MAX_TASKS = 100_000  # one-shot tasks per score (250-2000)
MAX_CPU_REPLICAS = 64  # logical CPU devices to mirror over (2): more than any machine's cores only slows it
MAX_LEARNING_RATE = 10.0  # (0.003) anything above diverges with either optimizer
MAX_MARGIN = 10_000.0  # (0.2-1.0) above every distance the embeddings reach (unit-norm: <= 4; sigmoid: <= embedding_dim)
MAX_TTA_SHIFT = 8  # (1) each image is embedded (2r+1)^2 times: 289 at 8


class _Strict(BaseModel):
    # No NaN or infinity: every bound below compares false against NaN.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class CoursePickles(_Strict):
    """The course's own pickles, read in place of the official zips."""

    train: str = "omniglot_train.p"  # the 30 background alphabets
    test: str = "omniglot_test.p"  # the 20 evaluation alphabets


class DataParams(_Strict):
    image_size: int = Field(28, ge=8, le=105)
    # a count (0: train on every background alphabet, the assignment's; no model is chosen) or
    # a list of names; its range depends on the data, so it is checked in _check_data
    validation_alphabets: int | list[str] = Field(5, description="a count of background alphabets (0: none) or a list of their names")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    raw_dir: str = "data/raw"
    course_pickles: CoursePickles | None = None  # null: the official zips; else the course's pickles in raw_dir
    prepared_dir: str = "data/prepared"


class ModelParams(_Strict):
    arch: Literal[ARCHS] = "convnet"  # type: ignore[valid-type]
    embedding_dim: int | None = Field(128, ge=2, le=MAX_EMBEDDING_DIM)
    # one width for every block, or one per block (then blocks must match: [64, 96, 128, 256]); checked in _cross_checks
    filters: int | list[int] = Field(64, description=f"a width 1..{MAX_FILTERS} for every block, or a list of one per block")
    blocks: int = Field(4, ge=1, le=6)
    pool_padding: Literal["valid", "same"] = "same"  # convnet only; "same" keeps odd maps' last row and column
    final_pool: bool = True  # convnet only; false: the last block's map goes to the Dense layer unpooled
    residual: bool = False  # convnet only; true: each block two 3x3 convs with a shortcut (twice the convs)


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
    loops: int | None = Field(None, ge=1, le=MAX_LOOPS)
    steps_per_loop: int | None = Field(None, ge=1, le=MAX_STEPS_PER_LOOP)
    batch_size: int | None = Field(None, ge=2, le=MAX_BATCH_SIZE)
    learning_rate: float | None = Field(None, gt=0, le=MAX_LEARNING_RATE)
    margin: float | None = Field(None, ge=0, le=MAX_MARGIN)
    soft_margin: bool | None = None
    classes_per_batch: int | None = Field(None, ge=2)  # class batches: P; at most the training classes (_check_data)
    samples_per_class: int | None = Field(None, ge=2, le=OMNIGLOT_DRAWINGS)  # class batches: K
    augment: AugmentParams | None = None


class TrainParams(_Strict):
    seed: int = Field(0, ge=0, le=MAX_SEED)
    loops: int = Field(10, ge=1, le=MAX_LOOPS)
    steps_per_loop: int = Field(100, ge=1, le=MAX_STEPS_PER_LOOP)
    batch_size: int = Field(64, ge=2, le=MAX_BATCH_SIZE)  # triplets per step with the triplets sampler
    classes_per_batch: int = Field(8, ge=2)  # P of class batches; at most the training classes (_check_data)
    margin: float = Field(0.2, ge=0, le=MAX_MARGIN)
    soft_margin: bool = False
    distance: Literal["sqeuclidean", "euclidean", "cosine"] = "sqeuclidean"
    optimizer: Literal["adam", "sgd"] = "adam"
    learning_rate: float = Field(0.001, gt=0, le=MAX_LEARNING_RATE)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    augment: AugmentParams = AugmentParams()
    val_tasks: int = Field(500, ge=1, le=MAX_TASKS)  # 20-way validation tasks scored after each loop (the same every loop)
    # true: each validation task's candidates come from one validation alphabet (Lake et al.'s
    # form), drawn among those with at least n_way characters; false: across all of them
    val_within_alphabet: bool = False
    test_tasks: int = Field(250, ge=1, le=MAX_TASKS)  # the assignment's per-loop test: tasks drawn afresh every loop
    n_way: int = Field(20, ge=2)  # at most the validation and the test characters (_check_data)
    distribute: Literal["none", "mirrored", "multi_worker"] = "none"
    cpu_replicas: int = Field(2, ge=1, le=MAX_CPU_REPLICAS)  # mirrored without a GPU: logical CPU devices to mirror over
    precision: Literal["float32", "mixed_bfloat16"] = "float32"


class EvaluateParams(_Strict):
    tasks: int = Field(2000, ge=1, le=MAX_TASKS)
    assignment_tasks: int = Field(250, ge=1, le=MAX_TASKS)
    n_way: int = Field(20, ge=2)  # at most the smallest evaluation alphabet's characters (_check_data)
    seed: int = Field(1234, ge=0, le=MAX_SEED)
    # test-time shift averaging radius in pixels (tripletml/tta.py); 0: off; below half of data.image_size
    tta_shift: int = Field(1, ge=0, le=MAX_TTA_SHIFT)


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

    def strategy(self, name: str) -> StrategySettings:
        """The effective training settings of one strategy: ``train`` with its overrides."""
        if name not in self.strategies:
            raise ParamsError(f"strategies.{name}: no such strategy{_suggest(name, self.strategies)}; defined: {', '.join(self.strategies)}")
        own = self.strategies[name].model_dump(exclude_none=True)
        return StrategySettings.model_validate({**self.train.model_dump(), **own, "strategy": name})


class StrategySettings(TrainParams):
    """What a trainer reads: the ``train`` keys with one strategy's overrides, its sampler,
    miner and ``samples_per_class`` (unset: every drawing for random and hard, else 4)."""

    strategy: str
    sampler: Literal[SAMPLERS]  # type: ignore[valid-type]
    miner: Literal[MINERS]  # type: ignore[valid-type]
    samples_per_class: int | None = Field(None, ge=2, le=OMNIGLOT_DRAWINGS)

    def drawings_per_class(self, drawings: int = OMNIGLOT_DRAWINGS) -> int:
        """K of a class batch: ``samples_per_class``, unset every drawing (random, hard) or 4."""
        return self.samples_per_class or (drawings if self.miner in NEGATIVE_MINERS else 4)


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


def _locate(loc: tuple) -> tuple[str, Any, list[str]]:
    """The dotted key a pydantic error location names, the field it ends on, and the keys
    valid beside it (for suggestions)."""
    model: Any = Params
    parts: list[str] = []
    field, siblings = None, []
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if fields is None:  # past a leaf: a union member pydantic tried (``data.validation_alphabets.int``)
            break
        parts.append(str(part))
        field, siblings = fields.get(part), list(fields)
        if field is not None:
            model = _model_in(field.annotation)
        # otherwise ``part`` is a dict key (a strategy name) or unknown: stay on the value model
    return ".".join(parts), field, siblings


def _allowed(field: Any) -> str | None:
    """What a field takes, as a message says it: ``an integer 1..10000``."""
    if field is None:
        return None
    if field.description:  # a range that depends on the data (_check_data): say what the key takes
        return field.description
    bounds = {name: getattr(m, name) for m in field.metadata for name in ("ge", "gt", "le", "lt") if getattr(m, name, None) is not None}
    if not bounds:
        return None
    args = getattr(field.annotation, "__args__", (field.annotation,))
    kind = "an integer" if int in args and float not in args else "a number"
    if "ge" in bounds and "le" in bounds:
        text = f"{bounds['ge']}..{bounds['le']}"
    else:
        signs = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
        text = " and ".join(f"{signs[name]} {value}" for name, value in bounds.items())
    return f"{kind} {text}" + (" (or null)" if type(None) in args else "")


def _format_error(err: dict, source: str) -> str:
    loc = tuple(err["loc"])
    key, field, siblings = _locate(loc)
    if err["type"] == "extra_forbidden":
        return f"{source}: unknown key {key!r}{_suggest(str(loc[-1]), siblings)}"
    msg = err["msg"].removeprefix("Value error, ")
    if not loc:  # a check across keys: its message names them
        return f"{source}: {msg}"
    if err["type"] == "missing":
        return f"{source}: {key} is required"
    allowed = _allowed(field)
    if allowed and err["type"] in ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number"):
        return f"{source}: {key} = {err.get('input')!r}: must be {allowed}"
    return f"{source}: {key} = {err.get('input')!r}: {msg}" + (f"; must be {allowed}" if allowed else "")


def validate_params(raw: dict, source: str = "params.yaml", use_prepared: bool = True) -> Params:
    """Validate a parsed params mapping; raise :class:`ParamsError` on the first problem.

    ``use_prepared=False`` checks the data-dependent values against the official Omniglot
    counts rather than the prepared set's (for the stages that make the prepared set).
    """
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping at the top level")
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(" ".join(_format_error(exc.errors()[0], source).splitlines())) from None
    _cross_checks(params, source, use_prepared)
    return params


# ----------------------------------------------------------------------------- checks across keys


def _cross_checks(p: Params, source: str, use_prepared: bool = True) -> None:
    """Checks that span several keys or depend on the data, made before any work starts."""
    from tripletml.architectures import min_image_size  # pure Python: no TensorFlow at start-up

    m = p.model
    widths = m.filters if isinstance(m.filters, list) else [m.filters]
    if not widths or not all(1 <= w <= MAX_FILTERS for w in widths):
        raise ParamsError(f"{source}: model.filters = {m.filters!r}: must be a width 1..{MAX_FILTERS} for every block, or a list of one per block")
    if isinstance(m.filters, list) and len(widths) != m.blocks:
        raise ParamsError(f"{source}: model.filters gives {len(widths)} widths but model.blocks = {m.blocks}: give one per block")
    need = min_image_size(m.arch, filters=m.filters, blocks=m.blocks, pool_padding=m.pool_padding, final_pool=m.final_pool, residual=m.residual)
    if p.data.image_size < need:
        raise ParamsError(f"{source}: data.image_size = {p.data.image_size}: too small for model.arch {p.model.arch!r} (needs >= {need})")
    if 2 * p.evaluate.tta_shift >= p.data.image_size:
        half = f"half of data.image_size ({p.data.image_size}); must be 0..{(p.data.image_size - 1) // 2}"
        raise ParamsError(f"{source}: evaluate.tta_shift = {p.evaluate.tta_shift}: shifts must stay below {half}")
    facts = data_facts(p.data, use_prepared)
    _check_data(p, source, facts)
    for name in p.strategies:  # every strategy defined, trained in this run or not
        s = p.strategy(name)
        _check_batches(p, name, s, source, facts)
        if s.sampler == "triplets" and s.miner not in NEGATIVE_MINERS:
            raise ParamsError(
                f"{source}: strategies.{name}.miner = {s.miner!r}: the triplets sampler takes the random or hard miner; "
                "online miners need sampler: classes"
            )
        if s.sampler == "classes" and s.miner == "hard" and s.samples_per_class is not None:
            raise ParamsError(
                f"{source}: strategies.{name}.samples_per_class = {s.samples_per_class}: the hard miner takes the nearest "
                "of every drawing of the negative class, so its class batches hold all drawings; leave the key unset"
            )


def _check_data(p: Params, source: str, facts: DataFacts) -> None:
    """The values bounded by the data: held-out alphabets and n-way tasks."""
    spec, n_alphabets = p.data.validation_alphabets, facts.background_alphabets
    of_all = f"{n_alphabets - 1} of the {n_alphabets} background alphabets"
    if isinstance(spec, int) and not 0 <= spec < n_alphabets:
        raise ParamsError(f"{source}: data.validation_alphabets = {spec}: must be 0 (none held out) to {of_all}, or a list of names")
    if isinstance(spec, list) and not 0 < len(set(spec)) < n_alphabets:
        raise ParamsError(f"{source}: data.validation_alphabets = {spec!r}: a list must name 1 to {of_all} (or give a count; 0 holds none out)")
    # train.n_way: the validation tasks draw across the validation characters, the per-loop
    # test tasks across the evaluation characters.
    limits = []
    if facts.val_characters:  # 0: no validation alphabets, no validation tasks
        limits.append((facts.val_characters, f"the validation characters ({facts.split_source})"))
    if facts.test_characters:
        limits.append((facts.test_characters, f"the evaluation characters the per-loop test tasks draw from ({facts.test_source})"))
    for limit, what in sorted(limits):
        if p.train.n_way > limit:
            raise ParamsError(f"{source}: train.n_way = {p.train.n_way}: must be 2..{limit}, {what}")
    alphabet, size = facts.smallest_test_alphabet
    if p.evaluate.n_way > size:
        raise ParamsError(
            f"{source}: evaluate.n_way = {p.evaluate.n_way}: larger than the smallest alphabet the within-alphabet "
            f"evaluation draws from ({alphabet!r}, {size} characters, {facts.test_source}); must be 2..{size}"
        )


def _check_batches(p: Params, name: str, s: StrategySettings, source: str, facts: DataFacts) -> None:
    """A strategy's classes per batch: at most its training classes, and a batch that fits in memory."""
    per_batch = s.classes_per_batch
    key = f"strategies.{name}.classes_per_batch" if p.strategies[name].classes_per_batch is not None else "train.classes_per_batch"
    if facts.train_characters is not None:
        # tripletml.training: rotations make 4 classes of a character, flips 2 of each
        aug = s.augment
        classes = facts.train_characters * (4 if aug.rotations else 1) * (2 if aug.flips else 1)
        if per_batch > classes:
            made = "".join([" x 4 rotations" if aug.rotations else "", " x 2 flips" if aug.flips else ""])
            raise ParamsError(
                f"{source}: {key} = {per_batch}: must be 2..{classes}, the training classes of strategies.{name}: "
                f"{facts.train_characters} characters{made} ({facts.split_source})"
            )
    if s.sampler == "classes":
        k = s.drawings_per_class()
        if per_batch * k > MAX_IMAGES_PER_STEP:
            raise ParamsError(
                f"{source}: {key} = {per_batch}: {per_batch} classes x {k} drawings = {per_batch * k} images a step for "
                f"strategies.{name}, above {MAX_IMAGES_PER_STEP}; must be 2..{MAX_IMAGES_PER_STEP // k}"
            )


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

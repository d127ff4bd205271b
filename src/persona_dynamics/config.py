"""Typed experiment configuration: one TOML file describes a whole study, validated up front.

Every section has defaults, so a config names only what differs. An unknown key, a wrong type
or a missing field is a `PersonaDynamicsError` naming the file, the key path and what was expected.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from persona_dynamics.errors import PersonaDynamicsError, located
from persona_dynamics.layers import check as check_layers
from persona_dynamics.roles import read_text, shipped_dir, shipped_questions, upstream_default

LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+\-]*")


def safe_name(text: str) -> str:
    """`text` as a label or file-name part: runs of other characters than LABEL's become '_'."""
    return re.sub(r"[^A-Za-z0-9_.+\-]+", "_", text).strip("_")


class Shard(NamedTuple):
    """One worker's share of a stage: shard `index` of `count` (written 'I/N', I from 0)."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


WHOLE = Shard(0, 1)


def _shard(value: str | Shard) -> Shard:
    """'I/N' -> Shard(I, N) with 0 <= I < N; a ValueError (pydantic names the key) otherwise."""
    if isinstance(value, tuple):
        value = "/".join(map(str, value))
    try:
        i, n = (int(x) for x in str(value).split("/"))
    except ValueError:
        raise ValueError(f"shard '{value}': expected I/N, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard '{value}': need 0 <= I < N")
    return Shard(i, n)


ShardField = Annotated[
    Shard | None,
    BeforeValidator(lambda v: v if v is None else _shard(v)),
    PlainSerializer(lambda v: None if v is None else str(v), return_type=str | None),
]


def _layer_spec(value: list[int] | str) -> list[int] | str:
    """A layer spec, checked without a model (a ValueError: pydantic names the key)."""
    try:
        return check_layers(value)
    except PersonaDynamicsError as exc:
        raise ValueError(str(exc)) from None


LayerSpec = Annotated[list[int] | str, AfterValidator(_layer_spec)]


# vllm.LLM keywords the study already sets: a [generation.vllm] table may not give them again.
VLLM_OWNED = {
    "model": "the checkpoint's model",
    "revision": "the checkpoint's revision",
    "tokenizer_revision": "the checkpoint's revision",
    "dtype": "generation.dtype",
    "seed": "generation.seed",
    "tensor_parallel_size": "generation.tensor_parallel_size",
    "max_model_len": "generation.max_model_len",
}


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Checkpoint(Section):
    """One set of weights to study: a hub id at a revision or a local path, plus an adapter."""

    label: str = Field(description="short name used in file names and plots, e.g. 'sft'")
    model: str = Field(description="hub model id or local directory")
    revision: str = "main"
    adapter: str | None = Field(default=None, description="PEFT adapter directory applied on top")
    stage: int | None = Field(
        default=None, description="order along training; defaults to the position in the list"
    )
    intervention: str | None = Field(
        default=None, description="a [[steering.settings]] name applied while it runs"
    )

    @field_validator("label")
    @classmethod
    def _label(cls, v: str) -> str:
        if not LABEL.fullmatch(v):
            raise ValueError("label must be letters, digits and _ - . + (no spaces or slashes)")
        return v


class Roles(Section):
    """Which roles and questions the study uses; no `dir`/`questions` means the shipped set."""

    dir: Path | None = Field(default=None, description="role files; default: the shipped set")
    questions: Path | None = Field(default=None, description="default: the shipped questions")
    include: list[str] = Field(default_factory=list, description="role names; empty means all")
    question_count: int | None = Field(default=None, ge=1, description="first N questions only")
    per_role_questions: bool = False
    include_default: bool = True
    default_prompts: Path | None = Field(
        default=None, description="the default Assistant's prompts; default: <dir>/default.json"
    )

    @property
    def role_dir(self) -> Path:
        """The role files' directory: the configured one, else the shipped set's."""
        return self.dir or shipped_dir()

    @property
    def default_file(self) -> Path:
        """The default Assistant's prompts: roles.default_prompts, else the roles dir's."""
        return self.default_prompts or self.role_dir / "default.json"

    @property
    def question_file(self) -> Path:
        """The shared questions file: the configured one, else the shipped one."""
        return self.questions or shipped_questions()


class Generation(Section):
    """How transcripts are sampled from the reference checkpoint."""

    backend: Literal["auto", "hf", "vllm", "openai"] = "auto"
    checkpoint: str | None = Field(default=None, description="label; default: the reference")
    model_display_name: str | None = Field(
        default=None, description="fills {model_name} in default prompts; default: model id tail"
    )
    num_rollouts: int = Field(default=1, ge=1)
    temperature: float = Field(default=0.7, ge=0.0)
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    max_tokens: int = Field(default=512, gt=0)
    seed: int = 0
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"
    batch_tokens: int = Field(default=16384, gt=0, description="hf: prompt+new tokens per batch")
    tensor_parallel_size: int = Field(default=1, ge=1)
    max_model_len: int | None = Field(default=None, gt=0)
    vllm: dict[str, Any] = Field(
        default_factory=dict, description="vllm: more vllm.LLM(...) keywords, as given"
    )
    base_urls: list[str] = Field(default_factory=list, description="openai: server replicas")
    api_key_env: str | None = Field(default=None, description="openai: env var holding the key")
    max_in_flight: int = Field(default=32, ge=1)
    timeout_s: float = Field(default=50.0, gt=0, description="openai: seconds per request")
    max_retries: int = Field(
        default=1, ge=0, description="openai: re-asks after a timeout, 429 or 5xx (worst ~2 min)"
    )
    resume: bool = Field(default=True, description="skip keys already written; false refuses")
    shard: ShardField = Field(default=None, description="'I/N': this worker's share, I from 0")

    @field_validator("vllm")
    @classmethod
    def _vllm(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in v:
            if key in VLLM_OWNED:
                raise ValueError(f"'{key}' is set by {VLLM_OWNED[key]}, not here")
        return v


class Judge(Section):
    """The LLM judge that scores role expression 0-3."""

    backend: Literal["openai", "local"] = "openai"
    model: str = "gpt-4.1-mini"
    revision: str = "main"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    max_in_flight: int = Field(default=16, ge=1)
    max_requests: int | None = Field(default=None, ge=1, description="budget cap per run")
    max_tokens: int = Field(default=32, gt=0)
    temperature: float = Field(default=0.0, ge=0.0)
    timeout_s: float = Field(default=30.0, gt=0, description="seconds per request")
    max_retries: int = Field(
        default=2, ge=0, description="re-asks after a timeout, 429 or 5xx (worst ~1.5 min)"
    )


class Capture(Section):
    """How activations are captured for every checkpoint."""

    backend: Literal["hooks", "nnsight", "lens"] = "hooks"
    layers: LayerSpec = Field(
        default="middle", description="indices, 'middle', 'all' or text like '3,7,11', '46:54'"
    )
    aggregation: Literal["mean", "last", "none"] = "mean"
    dtype: Literal["float32", "float16"] = "float32"
    model_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"
    batch_tokens: int = Field(default=8192, gt=0)
    checkpoints: list[str] = Field(default_factory=list, description="labels; empty means all")
    none_max_samples: int = Field(default=256, ge=1, description="aggregation='none': subset size")
    block_samples: int = Field(default=1024, ge=1, description="samples per part (resume unit)")
    shard: ShardField = Field(default=None, description="'I/N': this worker's share, I from 0")
    transcript_dir: Path | None = Field(
        default=None, description="read whole; default: the run's transcripts, the roles selection"
    )
    output_dir: Path | None = Field(default=None, description="default: activations/<run>")


class Analysis(Section):
    """Persona space, Assistant Axis and cross-checkpoint comparison."""

    layers: LayerSpec = Field(
        default_factory=list, description="as capture.layers; empty means every captured layer"
    )
    lead_layer: int | None = Field(default=None, description="default: the middle layer")
    n_components: int = Field(default=10, ge=1)
    score_categories: list[int] = Field(default_factory=lambda: [3, 2])
    axis_category: int = 3
    min_samples: int = Field(default=10, ge=1)
    bootstrap: int = Field(default=200, ge=0)
    seed: int = 0
    refit: bool = False

    @field_validator("score_categories")
    @classmethod
    def _cats(cls, v: list[int]) -> list[int]:
        if not v or any(c not in (0, 1, 2, 3) for c in v):
            raise ValueError("score categories are judge scores 0-3, at least one")
        return v


class Report(Section):
    """Where the HTML report goes and what it shows."""

    dir: Path | None = Field(default=None, description="default: <output_root>/reports/<run>")
    layer: int | None = Field(default=None, description="layer shown; default: the lead layer")
    png: bool = Field(default=True, description="also write one PNG per figure")


NO_SETTING = "none"  # the unsteered baseline of a steering grid (a zero addition)


class SteeringSetting(Section):
    """One intervention of a steering grid (docs/definitions.md, "Using the axis")."""

    name: str = Field(description="label part, e.g. 'cap-p25': instruct+cap-p25")
    mode: Literal["add", "ablate", "mean_ablate", "cap"] = "add"
    coefficient: float = Field(default=0.0, description="add: c, in `unit`s")
    unit: Literal["norm", "raw"] = Field(
        default="norm", description="norm: c times the layer's mean residual norm (calibration)"
    )
    percentile: float | None = Field(
        default=None,
        ge=0.0,
        le=100.0,
        description="cap τ / mean-ablate value: a calibration percentile",
    )
    value: float | None = Field(default=None, description="cap τ / mean-ablate value, raw units")
    direction: Literal["floor", "ceiling"] = Field(
        default="floor", description="cap: keep the projection at least (floor) or at most τ"
    )
    scope: Literal["all", "prompt", "response", "last"] = "all"
    layers: LayerSpec | None = Field(default=None, description="default: steering.layers")
    vector: str | None = Field(default=None, description="default: steering.vector")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not LABEL.fullmatch(v):
            raise ValueError("name must be letters, digits and _ - . + (no spaces or slashes)")
        return v

    @model_validator(mode="after")
    def _target(self) -> SteeringSetting:
        if self.mode in ("cap", "mean_ablate") and (self.percentile is None) == (
            self.value is None
        ):
            raise ValueError(f"{self.mode} '{self.name}' needs exactly one of percentile or value")
        return self


class Steering(Section):
    """Using a direction: which vector, at which layers, on which checkpoint, and the settings."""

    checkpoint: str | None = Field(default=None, description="label; default: the reference")
    vector: str = Field(
        default="axis", description="axis or pc<k> of the run's space.h5, or a .gguf / .pt file"
    )
    layers: LayerSpec = Field(default="middle", description="as capture.layers")
    calibration_samples: int = Field(
        default=2000, ge=1, description="transcripts whose response tokens set τ percentiles"
    )
    prompts: Literal["study", "jailbreaks"] = Field(
        default="study",
        description="`steer` asks the study's roles and questions, or the shipped persona "
        "jailbreaks (harmful requests, judged for compliance 0-3)",
    )
    roles: list[str] = Field(
        default_factory=list, description="`steer`: roles to answer as (default: roles.include)"
    )
    question_count: int | None = Field(
        default=None, ge=1, description="`steer`: first N questions (default: roles')"
    )
    temperature: float | None = Field(
        default=None, ge=0.0, description="`steer`: sampling (default: generation's; 0: greedy)"
    )
    capability_text: Path | None = Field(
        default=None, description="plain passages, one per line; default: baseline's default text"
    )
    bootstrap: int = Field(default=200, ge=0, description="replicates over questions")
    seed: int = 0
    settings: list[SteeringSetting] = Field(default_factory=list)

    @model_validator(mode="after")
    def _names(self) -> Steering:
        names = [s.name for s in self.settings]
        dup = sorted({x for x in names if names.count(x) > 1})
        if dup:
            raise ValueError(f"duplicate steering setting names: {', '.join(dup)}")
        return self


class Drift(Section):
    """Persona drift: multi-turn conversations, each assistant turn projected on the axis."""

    scripts: list[Path] = Field(
        default_factory=list, description="scripted user turns per domain; default: shipped sets"
    )
    transcripts: list[Path] = Field(
        default_factory=list, description="upstream-format conversations (persona_drift/*.json)"
    )
    regenerate: bool = Field(
        default=False, description="transcripts: write the assistant side anew instead of as is"
    )
    turns: int | None = Field(
        default=None, ge=1, description="first N user turns; with a simulator, N turns in all"
    )
    user_simulator: str | None = Field(
        default=None, description="label whose model writes every user turn after the first"
    )
    checkpoints: list[str] = Field(default_factory=list, description="labels; empty means all")
    layers: LayerSpec = Field(
        default_factory=list, description="as capture.layers; empty means every analyzed layer"
    )
    max_tokens: int = Field(default=128, gt=0)
    temperature: float = Field(default=0.0, ge=0.0)
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    seed: int = 0
    bootstrap: int = Field(default=200, ge=0, description="replicates over conversations")


class Traits(Section):
    """Trait vectors (persona_vectors' method): contrasting system prompts, judged 0-100."""

    specs: list[Path] = Field(default_factory=list, description="persona_vectors trait files")
    checkpoint: str | None = Field(default=None, description="label; default: the reference")
    question_count: int | None = Field(default=None, ge=1, description="first N questions")
    holdout: float = Field(
        default=0.2, ge=0.0, lt=1.0, description="share of questions left out, for the AUC"
    )
    rollouts: int = Field(default=1, ge=1)
    temperature: float = Field(default=0.7, ge=0.0)
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    max_tokens: int = Field(default=128, gt=0)
    seed: int = 0
    threshold: float = Field(default=50.0, description="kept: positive >= it, negative < it")
    coherence: float = Field(default=50.0, description="kept: coherence >= it")
    layers: LayerSpec = Field(default="all", description="as capture.layers")


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class AdapterTraining(Section):
    """One LoRA persona adapter: its data, the checkpoint it is trained on, its hyper-parameters."""

    name: str = Field(description="directory name under <output_root>/adapters/<run_name>")
    data: Annotated[list[Path], Field(min_length=1)] = Field(
        description="persona conversation .jsonl and/or survey .json files"
    )
    base: str | None = Field(default=None, description="checkpoint label; default: the reference")
    holdout: float = Field(default=0.2, ge=0.0, lt=1.0, description="survey items held out")
    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: Annotated[list[str], Field(min_length=1)] = Field(
        default_factory=lambda: list(LORA_TARGETS)
    )
    learning_rate: float = Field(default=2e-4, gt=0.0)
    epochs: float = Field(default=3.0, gt=0.0)
    max_steps: int | None = Field(default=None, ge=1, description="wins over epochs when set")
    batch_size: int = Field(default=8, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    warmup: float = Field(default=0.03, ge=0.0, description="< 1: ratio of steps; else steps")
    max_length: int = Field(default=1024, gt=0)
    seed: int = 0

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not LABEL.fullmatch(v):
            raise ValueError("name must be letters, digits and _ - . + (no spaces or slashes)")
        return v


class Adapters(Section):
    """Persona adapters: the training runs, and how they are trained and evaluated."""

    training: list[AdapterTraining] = Field(default_factory=list)
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    activation_checkpointing: bool = Field(default=False, description="trade compute for memory")
    eval_max_tokens: int = Field(default=128, gt=0, description="held-out answers: new tokens")

    @model_validator(mode="after")
    def _names(self) -> Adapters:
        names = [a.name for a in self.training]
        dup = sorted({x for x in names if names.count(x) > 1})
        if dup:
            raise ValueError(f"duplicate adapter names: {', '.join(dup)}")
        return self


Stage = Literal[
    "generate", "judge", "adapters", "capture", "analyze", "compare", "place",
    "calibrate", "steer", "drift", "traits", "report",
]  # fmt: skip
STAGES: tuple[str, ...] = Stage.__args__
USE_STAGES = ("calibrate", "steer", "drift", "traits")  # using the axis: optional, by section


Kind = Literal[
    "transcripts",
    "scores",
    "adapters",
    "activations",
    "analysis",
    "reports",
    "steering",
    "drift",
    "traits",
]
KINDS: tuple[str, ...] = Kind.__args__


class Study(Section):
    """A whole study: which model line, which checkpoints, and how each stage runs."""

    run_name: str
    preset: Literal["upstream"] | None = Field(
        default=None, description="defaults of another pipeline; keys given here still win"
    )
    output_root: Path = Path("outputs")
    reference: str | None = Field(
        default=None, description="label of the reference checkpoint; default: the last one"
    )
    stages: list[Stage] = Field(
        default_factory=lambda: list(STAGES),
        description="stages `run` executes, in pipeline order; a stage whose section is absent "
        "(judge, adapters, steering settings, drift, traits specs) is skipped",
    )
    checkpoints: Annotated[list[Checkpoint], Field(min_length=1)]
    roles: Roles = Field(default_factory=Roles)
    generation: Generation = Field(default_factory=Generation)
    judge: Judge | None = None
    capture: Capture = Field(default_factory=Capture)
    analysis: Analysis = Field(default_factory=Analysis)
    adapters: Adapters | None = None
    steering: Steering = Field(default_factory=Steering)
    drift: Drift | None = None
    traits: Traits = Field(default_factory=Traits)
    report: Report = Field(default_factory=Report)
    _source: str = PrivateAttr(default="<config>")  # the file it was read from, for errors

    @property
    def source(self) -> str:
        """The config file this study was read from ('<config>' when built in code)."""
        return self._source

    @field_validator("run_name")
    @classmethod
    def _run_name(cls, v: str) -> str:
        if not LABEL.fullmatch(v):
            raise ValueError("run_name must be letters, digits, '_', '-', '.', '+'")
        return v

    @model_validator(mode="after")
    def _labels(self) -> Study:
        labels = [c.label for c in self.checkpoints]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"duplicate checkpoint labels: {', '.join(dup)}")
        for field, value in (
            ("reference", self.reference),
            ("generation.checkpoint", self.generation.checkpoint),
            *(("capture.checkpoints", x) for x in self.capture.checkpoints),
            *(("adapters.training.base", a.base) for a in getattr(self.adapters, "training", [])),
            ("steering.checkpoint", self.steering.checkpoint),
            *(("drift.checkpoints", x) for x in getattr(self.drift, "checkpoints", [])),
            ("drift.user_simulator", getattr(self.drift, "user_simulator", None)),
            ("traits.checkpoint", self.traits.checkpoint),
        ):
            if value is not None and value not in labels:
                raise ValueError(f"{field} names unknown checkpoint '{value}' (known: {labels})")
        settings = [s.name for s in self.steering.settings]
        for c in self.checkpoints:
            if c.intervention is not None and c.intervention not in settings:
                raise ValueError(
                    f"checkpoint '{c.label}': intervention '{c.intervention}' is not a "
                    f"[[steering.settings]] name (known: {settings})"
                )
        return self

    def checkpoint(self, label: str) -> Checkpoint:
        """The checkpoint with this label, or an error listing the known ones."""
        for c in self.checkpoints:
            if c.label == label:
                return c
        known = ", ".join(c.label for c in self.checkpoints)
        raise PersonaDynamicsError(f"unknown checkpoint label '{label}' (known: {known})")

    @property
    def reference_label(self) -> str:
        return self.reference or self.checkpoints[-1].label

    def generating_checkpoint(self) -> Checkpoint:
        """The checkpoint transcripts are sampled from: generation.checkpoint, else reference."""
        return self.checkpoint(self.generation.checkpoint or self.reference_label)

    def path(self, kind: Kind, *parts: str) -> Path:
        """`<output_root>/<kind>/<run_name>[/parts...]`: the one layout of every stage's files."""
        if kind not in KINDS:
            raise PersonaDynamicsError(f"unknown output kind '{kind}' (known: {', '.join(KINDS)})")
        return self.output_root.joinpath(kind, self.run_name, *parts)

    def departures(self) -> dict[str, Any]:
        """The preset's keys this config sets otherwise (explicit values win), with our value."""
        out = {}
        for key, value in PRESETS.get(self.preset or "", {}).items():
            section, _, field = key.partition(".")
            if getattr(self, section) is None:  # a section the config leaves out (judge)
                continue
            ours = getattr(getattr(self, section), field)
            if (str(ours) if isinstance(ours, Path) else ours) != value:
                out[key] = str(ours) if isinstance(ours, Path) else ours
        return out


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _describe(err: dict[str, Any]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "missing required field"
    got = err.get("input")
    shown = repr(got) if not isinstance(got, dict) else "a table"
    return f"{err['msg']} (got {shown})"


# Each preset: dotted key -> value, applied where the config does not give the key. "upstream" is
# safety-research/assistant-axis's pipeline defaults (docs/definitions.md lists each difference).
PRESETS: dict[str, dict[str, Any]] = {
    "upstream": {
        "roles.question_count": 240,
        "roles.default_prompts": str(upstream_default()),
        "generation.temperature": 0.7,
        "generation.top_p": 0.9,
        "generation.max_tokens": 512,
        "generation.num_rollouts": 1,
        "generation.max_model_len": 2048,
        "judge.model": "gpt-4.1-mini",
        "judge.temperature": 1.0,
        "judge.max_tokens": 10,
        "capture.layers": "all",
        "capture.aggregation": "mean",
        "analysis.score_categories": [3],
        "analysis.axis_category": 3,
        "analysis.min_samples": 50,
    }
}
OPTIONAL = ("judge", "adapters")  # sections a preset fills only when the config has them


def with_preset(data: dict[str, Any], source: str | Path) -> dict[str, Any]:
    """The config dict with its preset's values filled in where it gives none."""
    name = data.get("preset")
    if name is None:
        return data
    if name not in PRESETS:
        raise PersonaDynamicsError(
            located(source, f"preset: unknown preset {name!r} (known: {', '.join(PRESETS)})")
        )
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for key, value in PRESETS[name].items():
        section, _, field = key.partition(".")
        if section in OPTIONAL and section not in out:
            continue
        table = out.setdefault(section, {})
        if isinstance(table, dict):  # else validation names the key
            table.setdefault(field, value)
    return out


def parse(data: dict[str, Any], source: str | Path = "<config>") -> Study:
    """Validate a config dict (its preset applied first); errors name the source, the key path
    and what was expected."""
    data = with_preset(data, source)
    try:
        study = Study.model_validate(data)
    except ValidationError as exc:
        lines = [f"{_loc(tuple(e['loc']))}: {_describe(e)}" for e in exc.errors()]
        raise PersonaDynamicsError(located(source, "; ".join(lines))) from None
    study._source = str(source)
    return study


def load(path: str | Path, overrides: dict[str, Any] | None = None) -> Study:
    """Read a TOML study config; `overrides` (dotted keys, e.g. from CLI flags) win over the file.

    Relative paths inside are taken from the working directory, as paths on a command line are.
    """
    path = Path(path)
    text = read_text(path, "config")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # Python < 3.14 only puts the position in the message: "... (at line 3, column 10)"
        m = re.search(r"^(.*?)\s*\(at line (\d+), column (\d+)\)$", str(exc))
        msg, line, col = (m[1], int(m[2]), int(m[3])) if m else (str(exc), None, None)
        raise PersonaDynamicsError(located(path, f"invalid TOML: {msg}", line, col)) from None
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return parse(data, path)


def build(
    path: str | Path | None,
    overrides: dict[str, Any] | None = None,
    model: str | None = None,
    revision: str | None = None,
) -> Study:
    """The study a command runs: a config file plus dotted overrides, or flags alone.

    Overrides whose value is None are not given. With a file, `model` and `revision` replace the
    generating checkpoint's. Without one, the study is one checkpoint of `model` at `revision`
    (default main), labelled by the local directory's name, else by the revision.
    """
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if path is not None:
        cfg = load(path, given)
        if model or revision:
            ckpt = cfg.generating_checkpoint()
            ckpt.model = model or ckpt.model
            ckpt.revision = revision or ckpt.revision
        return cfg
    if not model:
        raise PersonaDynamicsError("give a config file, or --model-name")
    if "run_name" not in given:
        raise PersonaDynamicsError("without a config file, --run-name names the run")
    from persona_dynamics.models import is_local

    rev = revision or "main"
    label = safe_name(Path(model).name if is_local(model) else rev)
    data: dict[str, Any] = {"checkpoints": [{"label": label, "model": model, "revision": rev}]}
    for key, value in given.items():
        set_dotted(data, key, value)
    return parse(data, "<command line>")


def add_revisions(cfg: Study, model: str, revisions: list[str]) -> Study:
    """The study with one checkpoint per revision of `model`, in natural order (step_200 before
    step_1000), placed just before the reference checkpoint, which stays the reference."""
    natural = sorted(
        revisions, key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)]
    )
    added = [{"label": safe_name(n), "model": model, "revision": n} for n in natural]
    data = cfg.model_dump(mode="json", exclude_none=True)
    at = next(i for i, c in enumerate(data["checkpoints"]) if c["label"] == cfg.reference_label)
    data["checkpoints"][at:at] = added
    data["reference"] = cfg.reference_label
    return parse(data, f"revisions of {model}")


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set `a.b.c = value` in nested dicts, creating tables as needed."""
    *parents, last = key.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value


def dump(cfg: Study) -> str:
    """The resolved config as TOML-like text, for `config check` and manifests."""
    return _toml(cfg.model_dump(mode="json", exclude_none=True))


def _toml(data: dict[str, Any], prefix: str = "") -> str:
    import json

    scalars, tables, arrays = [], [], []
    for k, v in data.items():
        if isinstance(v, dict):
            tables.append((k, v))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            arrays.append((k, v))
        else:
            scalars.append(f"{k} = {json.dumps(v)}")
    out = "\n".join(scalars) + ("\n" if scalars else "")
    for k, items in arrays:
        for item in items:
            out += f"\n[[{prefix}{k}]]\n" + _toml(item, f"{prefix}{k}.")
    for k, v in tables:
        out += f"\n[{prefix}{k}]\n" + _toml(v, f"{prefix}{k}.")
    return out

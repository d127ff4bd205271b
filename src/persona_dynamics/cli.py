"""The `persona-dynamics` command line: one command per stage, `run` for a config, `demo` offline.

Every command is a thin wrapper over a `run_<stage>` function; errors a user can cause and OS
errors (disk full, read-only) print one line and exit 2, Ctrl-C one line saying what was kept and
exit 130 (`--debug` shows the traceback).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from persona_dynamics import __version__
from persona_dynamics.errors import Interrupted, PersonaDynamicsError
from persona_dynamics.roles import SHIPPED_MIN_ROLES, SHIPPED_VARIANTS

app = typer.Typer(
    help="Persona space and the Assistant Axis across post-training checkpoints.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
roles_app = typer.Typer(help="Inspect and validate role instruction files.", no_args_is_help=True)
config_app = typer.Typer(help="Check experiment configs.", no_args_is_help=True)
app.add_typer(roles_app, name="roles")
app.add_typer(config_app, name="config")

DEBUG = {"on": False}

ConfigArg = Annotated[Path, typer.Argument(help="experiment config (TOML)", show_default=False)]


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
) -> None:
    DEBUG["on"] = debug
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )


@app.command()
def version() -> None:
    """Print the package version."""
    typer.echo(__version__)


# --- roles ---------------------------------------------------------------------------------------

RolesDir = Annotated[Path | None, typer.Option(help="roles directory (default: the shipped set)")]


@roles_app.command("list")
def roles_list(dir: RolesDir = None) -> None:
    """List role names, one per line."""
    from persona_dynamics.roles import role_paths, shipped_dir

    for p in role_paths(dir or shipped_dir()):
        typer.echo(p.stem)


@roles_app.command("show")
def roles_show(
    role: Annotated[str, typer.Argument(help="role name (file stem), or 'default'")],
    dir: RolesDir = None,
) -> None:
    """Print a role's system-prompt variants and judge rubric."""
    from persona_dynamics.roles import DEFAULT, load_default, load_roles, shipped_dir

    dir = dir or shipped_dir()
    r = load_default(dir) if role == DEFAULT else load_roles(dir, [role])[0]
    typer.echo(f"# {r.name}")
    for i, text in enumerate(r.instructions):
        typer.echo(f"[{i}] {text!r}" if not text else f"[{i}] {text}")
    if r.eval_prompt:
        typer.echo(f"\neval_prompt: {r.eval_prompt}")
    for q in r.questions:
        typer.echo(f"question: {q}")


@roles_app.command("validate")
def roles_validate(
    dir: Annotated[
        Path | None, typer.Argument(help="roles directory (default: the shipped set)")
    ] = None,
    questions: Annotated[
        Path | None,
        typer.Option(help="questions JSONL (default: the shipped set with the shipped roles)"),
    ] = None,
    min_roles: Annotated[
        int, typer.Option(help="policy: at least this many roles")
    ] = SHIPPED_MIN_ROLES,
    variants: Annotated[
        int, typer.Option(help="policy: exactly this many variants per role")
    ] = SHIPPED_VARIANTS,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="policy findings (counts, variants, near-duplicates) fail; "
            "always so for the shipped set",
        ),
    ] = False,
) -> None:
    """Check a roles directory: schema errors fail; policy findings warn (fail with --strict)."""
    from persona_dynamics.roles import shipped_dir, shipped_questions, validate

    shipped = dir is None or dir.resolve() == shipped_dir().resolve()
    if shipped:  # the shipped set promises the paper's scale
        dir, questions = shipped_dir(), questions or shipped_questions()
    rep = validate(dir, questions, min_roles=min_roles, variants=variants, strict=strict or shipped)
    if rep.warnings:
        typer.echo(
            f"warning: {len(rep.warnings)} policy finding(s), errors with --strict:", err=True
        )
        for w in rep.warnings:
            typer.echo(f"  {w}", err=True)
    for p in rep.problems:
        typer.echo(p, err=True)
    summary = f"{rep.n_roles} roles, {rep.n_default_prompts} default prompts"
    if questions is not None:
        summary += f", {rep.n_questions} questions"
    if rep.problems:
        raise PersonaDynamicsError(f"{dir}: {len(rep.problems)} problem(s) ({summary})")
    typer.echo(f"ok: {summary}" + (f"; {len(rep.warnings)} warning(s)" if rep.warnings else ""))


# --- config --------------------------------------------------------------------------------------


Preset = Annotated[
    str | None, typer.Option(help="'upstream': assistant-axis's defaults; the config's keys win")
]


@config_app.command("check")
def config_check(file: ConfigArg, preset: Preset = None) -> None:
    """Validate a config and print it resolved, with every default filled in."""
    from persona_dynamics.config import PRESETS, build, dump

    cfg = build(file, {"preset": preset})
    for key, ours in cfg.departures().items():
        typer.echo(f"# preset {cfg.preset}: {key} = {ours!r} here, {PRESETS[cfg.preset][key]!r} "
                   "in the preset")  # fmt: skip
    typer.echo(dump(cfg))


@config_app.command("labels")
def config_labels(file: ConfigArg) -> None:
    """Print the checkpoint labels of a config, one per line in config order (for batch scripts)."""
    from persona_dynamics.config import build

    for c in build(file).checkpoints:
        typer.echo(c.label)


# --- capture -------------------------------------------------------------------------------------


class _DefaultRun(typer.core.TyperGroup):
    """`capture ARGS` runs the capture; `capture merge ARGS` consolidates parts."""

    def parse_args(self, ctx, args):
        if not args or args[0] not in self.commands:
            args = ["run", *args]
        return super().parse_args(ctx, args)


capture_app = typer.Typer(cls=_DefaultRun, help="Capture activations into HDF5 stores.")
app.add_typer(capture_app, name="capture")

OptConfig = Annotated[
    Path | None, typer.Argument(help="experiment config (TOML); optional with --model-name")
]
Labels = Annotated[
    list[str] | None,
    typer.Option(
        "--checkpoint", help="with a config: labels to capture; without: the model's revision"
    ),
]
ModelName = Annotated[str | None, typer.Option(help="hub id or local directory (no config needed)")]
OutputDir = Annotated[Path | None, typer.Option(help="where <label>.h5 goes")]


def _capture_study(config, checkpoint, model_name, overrides: dict):
    """With a config, --checkpoint picks labels; without, it is the one revision of --model-name."""
    from persona_dynamics.config import build

    if config is not None:
        if model_name:
            raise PersonaDynamicsError("--model-name replaces a config; give one or the other")
        return build(config, {**overrides, "capture.checkpoints": checkpoint})
    if checkpoint and len(checkpoint) > 1:
        raise PersonaDynamicsError("without a config, --checkpoint is one revision of --model-name")
    revision = checkpoint[0] if checkpoint else None
    return build(None, {"run_name": "capture", **overrides}, model_name, revision)


def _layers(text: str) -> str:
    from persona_dynamics.layers import check

    return check(text, "--layers")


@capture_app.command("run", hidden=True)
def capture(
    config: OptConfig = None,
    checkpoint: Labels = None,
    model_name: ModelName = None,
    transcript_dir: Annotated[Path | None, typer.Option(help="transcripts to read")] = None,
    output_dir: OutputDir = None,
    layers: Annotated[
        str | None, typer.Option(help="block indices, e.g. 3,7,11 (default: middle)")
    ] = None,
    all_layers: Annotated[bool, typer.Option("--all-layers", help="every block")] = False,
    aggregation: Annotated[str | None, typer.Option(help="mean, last or none")] = None,
    backend: Annotated[str | None, typer.Option(help="hooks, nnsight or lens")] = None,
    shard: Annotated[str | None, typer.Option(help="I/N: this worker's share (I from 0)")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1 ...")] = None,
    preset: Preset = None,
) -> None:
    """Capture residual-stream activations of each checkpoint; `capture merge` joins shards."""
    from persona_dynamics.capture import run_capture

    overrides = {
        "preset": preset,
        "capture.transcript_dir": transcript_dir and str(transcript_dir),
        "capture.output_dir": output_dir and str(output_dir),
        "capture.layers": "all" if all_layers else (layers and _layers(layers)),
        "capture.aggregation": aggregation,
        "capture.backend": backend,
        "capture.shard": shard,
        "capture.device": device,
    }
    typer.echo(run_capture(_capture_study(config, checkpoint, model_name, overrides)))


@capture_app.command("merge")
def capture_merge(
    config: OptConfig = None,
    checkpoint: Labels = None,
    model_name: ModelName = None,
    output_dir: OutputDir = None,
) -> None:
    """Consolidate the part files of sharded captures into one store per label."""
    from persona_dynamics.capture import merge

    overrides = {"capture.output_dir": output_dir and str(output_dir)}
    for path in merge(_capture_study(config, checkpoint, model_name, overrides)):
        typer.echo(path)


@app.command()
def revisions(
    model_id: Annotated[str, typer.Argument(help="hub model id")],
    match: Annotated[str | None, typer.Option(help="keep names matching this regex")] = None,
    add_to: Annotated[
        Path | None, typer.Option(help="a study config to add the revisions to, as checkpoints")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="with --add-to: where the new config goes")
    ] = None,
) -> None:
    """List a hub repo's branches and tags (e.g. RLVR steps) with their commits.

    With --add-to, write a copy of a study config with one checkpoint per revision, in natural
    order, placed just before the reference checkpoint (the final model of the line).
    """
    import re

    from persona_dynamics.config import add_revisions, build, dump
    from persona_dynamics.models import list_revisions

    refs = [r for r in list_revisions(model_id) if not match or re.search(match, r[1])]
    if add_to is None:
        for kind, name, commit in refs:
            typer.echo(f"{kind}\t{name}\t{commit}")
        return
    if out is None:
        raise PersonaDynamicsError("--add-to needs --out (the new config file)")
    cfg = build(add_to)
    out.write_text(dump(add_revisions(cfg, model_id, [name for _, name, _ in refs])))
    typer.echo(f"{out}: {len(refs)} revision(s) of {model_id} added before '{cfg.reference_label}'")


# --- vectors -------------------------------------------------------------------------------------

vectors_app = typer.Typer(
    help="Directions in and out: llama.cpp control vectors.", no_args_is_help=True
)
app.add_typer(vectors_app, name="vectors")


@vectors_app.command("export")
def vectors_export(
    config: ConfigArg,
    out: Annotated[Path, typer.Option(help="the .gguf file to write")],
    vector: Annotated[str, typer.Option(help="axis, pc<k>, trait:<name>, a .pt file")] = "axis",
    scale: Annotated[float, typer.Option(help="multiply every direction (unit: 1/‖v‖)")] = 1.0,
    unit: Annotated[bool, typer.Option(help="write unit vectors (then times --scale)")] = False,
    model_hint: Annotated[str, typer.Option(help="controlvector.model_hint")] = "olmo2",
) -> None:
    """Write a study's direction as a llama.cpp control vector (direction.i = block i's output)."""
    import numpy as np

    from persona_dynamics.config import build
    from persona_dynamics.steering.spec import study_vector
    from persona_dynamics.vectors import write_gguf

    dirs = study_vector(build(config, {}), vector)
    if 0 in dirs:
        typer.echo("note: block 0 left out (llama.cpp control vectors cannot act on it)", err=True)
    dirs = {i: (v / np.linalg.norm(v) if unit else v) * scale for i, v in dirs.items() if i > 0}
    typer.echo(write_gguf(out, dirs, model_hint))


# --- adapters ------------------------------------------------------------------------------------

adapters_app = typer.Typer(
    help="Train LoRA persona adapters, check their fidelity, place them in persona space.",
    no_args_is_help=True,
)
app.add_typer(adapters_app, name="adapters")

Only = Annotated[
    list[str] | None, typer.Option("--only", help="adapter name (repeatable); default: all")
]
Device = Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1 ...")]


def _adapter_step(name: str, target: str, doc: str) -> None:
    """Declare `adapters NAME CONFIG [--only A] [--device D]` calling `target(cfg, only)`."""

    def command(config: ConfigArg, only: Only = None, device: Device = None) -> None:
        import importlib

        from persona_dynamics.config import build

        module, function = target.split(":")
        step = getattr(importlib.import_module(module), function)
        typer.echo(step(build(config, {"adapters.device": device}), only))

    command.__doc__ = doc
    adapters_app.command(name)(command)


_adapter_step(
    "train",
    "persona_dynamics.adapters.train:run_adapters",
    "Train the config's LoRA persona adapters (adapters.training); current ones are skipped.",
)
_adapter_step(
    "evaluate",
    "persona_dynamics.adapters.fidelity:run_adapters_evaluate",
    "Answer each adapter's held-out survey items; write fidelity.json per category.",
)


@adapters_app.command("place")
def adapters_place(
    config: ConfigArg,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="adapter checkpoint label (repeatable); default: all"),
    ] = None,
) -> None:
    """Own-text: each adapter answers the default prompts; then place it in persona space."""
    from persona_dynamics.adapters.place import run_place
    from persona_dynamics.config import build
    from persona_dynamics.pipeline import run_own_text

    cfg = build(config)
    run_own_text(cfg, only)
    typer.echo(run_place(cfg, only))


# --- generate and judge --------------------------------------------------------------------------

GenConfig = Annotated[
    Path | None, typer.Argument(help="experiment config (TOML); optional with --model-name")
]
GenModel = Annotated[
    str | None,
    typer.Option("--model-name", help="hub id or local directory of the generating model"),
]
GenRevision = Annotated[
    str | None, typer.Option("--checkpoint", help="revision (branch, tag, commit) of the model")
]
RunName = Annotated[str | None, typer.Option("--run-name", help="name of this run's outputs")]
RoleNames = Annotated[
    str | None, typer.Option("--roles", help="comma-separated role names (default: all)")
]
OutputRoot = Annotated[Path | None, typer.Option("--output-root", help="default: outputs")]


def _names(text: str | None) -> list[str] | None:
    """The role names of --roles; given but naming none (e.g. ',') is an error, never 'all'."""
    if text is None:
        return None
    names = [x.strip() for x in text.split(",") if x.strip()]
    if not names:
        raise PersonaDynamicsError(
            f"--roles {text!r} names no role; give comma-separated role names (see "
            "`persona-dynamics roles list`), or leave --roles out for every role"
        )
    return names


@app.command()
def generate(
    config: GenConfig = None,
    model_name: GenModel = None,
    checkpoint: GenRevision = None,
    run_name: RunName = None,
    roles: RoleNames = None,
    num_rollouts: Annotated[int | None, typer.Option(help="samples per prompt")] = None,
    temperature: Annotated[float | None, typer.Option(help="default 0.7")] = None,
    top_p: Annotated[float | None, typer.Option(help="default 0.9")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="new tokens per response (512)")] = None,
    seed: Annotated[int | None, typer.Option(help="base seed of every rollout")] = None,
    question_count: Annotated[int | None, typer.Option(help="first N questions only")] = None,
    backend: Annotated[str | None, typer.Option(help="auto, hf, vllm or openai")] = None,
    base_url: Annotated[
        list[str] | None, typer.Option(help="openai backend: server URL (repeat for replicas)")
    ] = None,
    display_name: Annotated[str | None, typer.Option(help="fills {model_name}")] = None,
    batch_tokens: Annotated[int | None, typer.Option(help="hf: tokens per batch")] = None,
    device: Annotated[str | None, typer.Option(help="hf: auto, cpu, cuda ...")] = None,
    output_root: OutputRoot = None,
    resume: Annotated[
        bool | None, typer.Option("--resume/--no-resume", help="skip written keys (default)")
    ] = None,
    shard: Annotated[str | None, typer.Option(help="I/N: this worker's share (I from 0)")] = None,
    preset: Preset = None,
) -> None:
    """Sample role-play and default-Assistant transcripts from the generating checkpoint."""
    from persona_dynamics.config import build
    from persona_dynamics.generation import run_generate

    cfg = build(
        config,
        model=model_name,
        revision=checkpoint,
        overrides={
            "preset": preset,
            "run_name": run_name,
            "output_root": output_root and str(output_root),
            "roles.include": _names(roles),
            "roles.question_count": question_count,
            "generation.num_rollouts": num_rollouts,
            "generation.temperature": temperature,
            "generation.top_p": top_p,
            "generation.max_tokens": max_tokens,
            "generation.seed": seed,
            "generation.backend": backend,
            "generation.base_urls": base_url,
            "generation.model_display_name": display_name,
            "generation.batch_tokens": batch_tokens,
            "generation.device": device,
            "generation.resume": resume,
            "generation.shard": shard,
        },
    )
    typer.echo(run_generate(cfg))


@app.command()
def judge(
    config: GenConfig = None,
    model_name: GenModel = None,
    checkpoint: GenRevision = None,
    run_name: RunName = None,
    roles: RoleNames = None,
    judge_model: Annotated[str | None, typer.Option(help="judge model id or local path")] = None,
    judge_backend: Annotated[str | None, typer.Option(help="openai or local")] = None,
    base_url: Annotated[str | None, typer.Option(help="judge endpoint (OpenAI-compatible)")] = None,
    api_key_env: Annotated[str | None, typer.Option(help="env var holding the key")] = None,
    max_in_flight: Annotated[int | None, typer.Option(help="concurrent requests (16)")] = None,
    max_requests: Annotated[int | None, typer.Option(help="budget cap for this run")] = None,
    output_root: OutputRoot = None,
) -> None:
    """Score every role transcript 0-3 with an LLM judge; print the per-role distribution."""
    from persona_dynamics.config import build
    from persona_dynamics.judge import run_judge
    from persona_dynamics.scores import format_table, load_scores, summarize

    cfg = build(
        config,
        model=model_name,
        revision=checkpoint,
        overrides={
            "run_name": run_name,
            "output_root": output_root and str(output_root),
            "roles.include": _names(roles),
            "judge.model": judge_model,
            "judge.backend": judge_backend,
            "judge.base_url": base_url,
            "judge.api_key_env": api_key_env,
            "judge.max_in_flight": max_in_flight,
            "judge.max_requests": max_requests,
        },
    )
    out = run_judge(cfg)
    typer.echo(format_table(summarize(load_scores(out))))
    typer.echo(out)


# --- analyze and compare -------------------------------------------------------------------------

AnLayers = Annotated[
    str | None, typer.Option("--layers", help="e.g. 4,8,12 (default: every captured layer)")
]
Bootstrap = Annotated[int | None, typer.Option(help="bootstrap replicates over questions (200)")]
Seed = Annotated[int | None, typer.Option(help="bootstrap seed (0)")]


@app.command()
def analyze(
    config: ConfigArg,
    layers: AnLayers = None,
    lead_layer: Annotated[int | None, typer.Option(help="layer to lead with (middle)")] = None,
    min_samples: Annotated[int | None, typer.Option(help="samples to keep a vector (10)")] = None,
    bootstrap: Bootstrap = None,
    seed: Seed = None,
) -> None:
    """Fit the reference checkpoint's persona space and Assistant Axis at each layer."""
    from persona_dynamics.analysis import run_analyze
    from persona_dynamics.config import build

    overrides = {
        "analysis.layers": layers and _layers(layers),
        "analysis.lead_layer": lead_layer,
        "analysis.min_samples": min_samples,
        "analysis.bootstrap": bootstrap,
        "analysis.seed": seed,
    }
    typer.echo(run_analyze(build(config, overrides)))


@app.command()
def calibrate(
    config: ConfigArg,
    checkpoint: Annotated[
        str | None, typer.Option(help="label to calibrate (default: steering.checkpoint)")
    ] = None,
    vector: Annotated[str | None, typer.Option(help="axis, pc<k>, or a .gguf / .pt file")] = None,
    samples: Annotated[int | None, typer.Option(help="transcripts to measure (2000)")] = None,
) -> None:
    """Percentiles of per-token projections on the steering vector, for caps and norm units."""
    from persona_dynamics.config import build
    from persona_dynamics.steering.calibrate import run_calibrate

    overrides = {
        "steering.checkpoint": checkpoint,
        "steering.vector": vector,
        "steering.calibration_samples": samples,
    }
    typer.echo(run_calibrate(build(config, overrides)))


@app.command("steer")
def steer_stage(config: ConfigArg) -> None:
    """Generate, judge and measure every [[steering.settings]] entry: the dose-response table."""
    from persona_dynamics.config import build
    from persona_dynamics.pipeline import run_steer

    typer.echo(run_steer(build(config, {})))


@app.command()
def drift(
    config: ConfigArg,
    turns: Annotated[
        int | None, typer.Option(help="first N user turns of each conversation")
    ] = None,
    labels: Annotated[
        str | None, typer.Option(help="comma-separated labels (default: all)")
    ] = None,
) -> None:
    """Multi-turn conversations under each checkpoint, each assistant turn on the axis."""
    from persona_dynamics.config import build
    from persona_dynamics.drift.run import run_drift

    overrides = {"drift.turns": turns, "drift.checkpoints": labels and labels.split(",")}
    typer.echo(run_drift(build(config, overrides)))


@app.command()
def traits(config: ConfigArg) -> None:
    """Trait vectors from contrasting system prompts, judged 0-100 (persona_vectors' method)."""
    from persona_dynamics.config import build
    from persona_dynamics.traits.run import run_traits

    typer.echo(run_traits(build(config, {})))


@app.command()
def shift(config: ConfigArg) -> None:
    """How far each adapter and stage moved along each trait and the axis, and the prediction."""
    from persona_dynamics.config import build
    from persona_dynamics.traits.shift import run_shift

    typer.echo(run_shift(build(config, {})))


@app.command("compare")
def compare_stage(
    config: ConfigArg,
    across_models: Annotated[
        Path | None,
        typer.Option(help="another run's config: set the two spaces side by side (no projection)"),
    ] = None,
    labels: Annotated[
        str | None, typer.Option(help="comma-separated labels in stage order (default: all)")
    ] = None,
    refit: Annotated[
        bool | None, typer.Option("--refit/--no-refit", help="also report each label's own space")
    ] = None,
    layers: AnLayers = None,
    bootstrap: Bootstrap = None,
    seed: Seed = None,
) -> None:
    """Project every checkpoint into the reference space and measure its movement."""
    from persona_dynamics.analysis import run_compare
    from persona_dynamics.config import build

    overrides = {
        "analysis.layers": layers and _layers(layers),
        "analysis.refit": refit,
        "analysis.bootstrap": bootstrap,
        "analysis.seed": seed,
    }
    cfg = build(config, overrides)
    other = across_models and build(across_models)
    typer.echo(run_compare(cfg, across_models=other, labels=_names(labels)))


# --- run and demo --------------------------------------------------------------------------------


@app.command("run")
def run_cmd(
    config: ConfigArg,
    stage: Annotated[
        list[str] | None,
        typer.Option("--stage", "-s", help="only these stages (repeatable); default: the config's"),
    ] = None,
) -> None:
    """Run every stage a config names, in order, skipping work already done."""
    from persona_dynamics.config import build
    from persona_dynamics.pipeline import run_study

    outputs = run_study(build(config), stage)
    for name, path in outputs.items():
        typer.echo(f"{name}: {path}")


# --- report --------------------------------------------------------------------------------------


@app.command()
def report(
    config: ConfigArg,
    out: Annotated[
        Path | None, typer.Option(help="directory for report.html and png/ (outputs/reports/RUN)")
    ] = None,
    layer: Annotated[int | None, typer.Option(help="layer to show (default: lead layer)")] = None,
    png: Annotated[bool | None, typer.Option("--png/--no-png", help="also write PNGs")] = None,
) -> None:
    """Write the run's self-contained HTML report (plots, tables, provenance) and PNGs."""
    from persona_dynamics.config import build
    from persona_dynamics.report import run_report

    overrides = {"report.dir": out and str(out), "report.layer": layer, "report.png": png}
    typer.echo(run_report(build(config, overrides)))


@app.command("demo")
def demo_cmd(
    out: Annotated[Path, typer.Option(help="output root")] = Path("outputs"),
    seed: Annotated[int, typer.Option(help="toy organism seed")] = 0,
    all_stages: Annotated[
        bool, typer.Option("--all", help="also calibrate and steer (and drift, traits)")
    ] = False,
) -> None:
    """Run the whole study offline on the toy organism and print where the report is."""
    from persona_dynamics.pipeline import run_demo

    report = run_demo(out, seed, all_stages)
    typer.echo(f"report: {report}")


# --- toy -----------------------------------------------------------------------------------------

toy_app = typer.Typer(help="The toy organism: tiny OLMo-2 checkpoints built offline.")
app.add_typer(toy_app, name="toy")


@toy_app.command("build")
def toy_build(
    out: Annotated[
        Path | None, typer.Option(help="directory to build into (default: the content-hash cache)")
    ] = None,
    seed: Annotated[int, typer.Option(help="seed: the same seed gives the same weights")] = 0,
) -> None:
    """Build (or reuse) base, sft, dpo, rlvr-1..N, instruct and the toy judge, with toy.json."""
    from persona_dynamics.toy import build, cached_build

    family = cached_build(seed) if out is None else build(out, seed)
    truth = family.truth
    typer.echo(
        f"{family.root}: {' '.join(truth['stages'])} + judge "
        f"(built in {truth['build_seconds']} s; judge agreement "
        f"{truth['judge']['held_out_agreement']:.2f})"
    )


# --- entry point ---------------------------------------------------------------------------------


RESUME = "re-run the same command to resume"


def main() -> None:
    """Console entry point: user errors and OS errors become one line and exit code 2; Ctrl-C
    says what was kept and exits 130."""
    try:
        rc = app(standalone_mode=False)
    except Interrupted as exc:
        _fail(f"interrupted: {exc}; {RESUME}", 130)
    except PersonaDynamicsError as exc:
        _fail(f"error: {exc}", 2)
    except OSError as exc:  # disk full, read-only, permissions: name the file the OS refused
        where = f"{exc.filename}: " if exc.filename else ""
        _fail(f"error: {where}{exc.strerror or exc}", 2)
    except typer.Abort:
        _fail("aborted", 130)
    except typer.TyperException as exc:  # usage errors: bad flag, unknown command
        exc.show()
        sys.exit(exc.exit_code)
    if rc == 130:  # Ctrl-C outside a stage's own accounting (typer turns it into 130)
        _fail(f"interrupted: finished files are kept; {RESUME}", 130)
    sys.exit(rc if isinstance(rc, int) else 0)


def _fail(line: str, code: int) -> None:
    """Print one line to stderr and exit (with --debug, re-raise the error being handled)."""
    if DEBUG["on"] and sys.exc_info()[0] is not None:
        raise
    typer.echo(line, err=True)
    sys.exit(code)

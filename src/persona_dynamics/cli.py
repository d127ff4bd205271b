"""The `persona-dynamics` command line: one command per stage, `run` for a config, `demo` offline.

Every command is a thin wrapper over a `run_<stage>` function; errors a user can cause print one
line and exit 2 (`--debug` shows the traceback).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from persona_dynamics import __version__
from persona_dynamics.errors import PersonaDynamicsError

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

DEFAULT_ROLES = Path("data/roles/instructions")
DEFAULT_QUESTIONS = Path("data/roles/questions.jsonl")


@roles_app.command("list")
def roles_list(
    dir: Annotated[Path, typer.Option(help="roles directory")] = DEFAULT_ROLES,
) -> None:
    """List role names, one per line."""
    from persona_dynamics.roles import role_paths

    for p in role_paths(dir):
        typer.echo(p.stem)


@roles_app.command("show")
def roles_show(
    role: Annotated[str, typer.Argument(help="role name (file stem), or 'default'")],
    dir: Annotated[Path, typer.Option(help="roles directory")] = DEFAULT_ROLES,
) -> None:
    """Print a role's system-prompt variants and judge rubric."""
    from persona_dynamics.roles import DEFAULT, load_default, load_roles

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
    dir: Annotated[Path, typer.Argument(help="roles directory")] = DEFAULT_ROLES,
    questions: Annotated[
        Path | None,
        typer.Option(help="questions JSONL (default: the shipped set with the shipped roles)"),
    ] = None,
    min_roles: Annotated[
        int | None, typer.Option(help="fail below this many roles (shipped set: 275)")
    ] = None,
    variants: Annotated[
        int | None, typer.Option(help="demand exactly this many variants (shipped set: 5)")
    ] = None,
) -> None:
    """Check a roles directory: schema, counts, unique and non-empty texts, near-duplicates."""
    from persona_dynamics.roles import validate

    if dir == DEFAULT_ROLES:  # the shipped set promises the paper's scale
        questions = questions or DEFAULT_QUESTIONS
        min_roles = 275 if min_roles is None else min_roles
        variants = 5 if variants is None else variants
    rep = validate(dir, questions, min_roles=min_roles or 1, variants=variants)
    for p in rep.problems:
        typer.echo(p, err=True)
    summary = f"{rep.n_roles} roles, {rep.n_default_prompts} default prompts"
    if questions is not None:
        summary += f", {rep.n_questions} questions"
    if rep.problems:
        raise PersonaDynamicsError(f"{dir}: {len(rep.problems)} problem(s) ({summary})")
    typer.echo(f"ok: {summary}")


# --- config --------------------------------------------------------------------------------------


@config_app.command("check")
def config_check(file: ConfigArg) -> None:
    """Validate a config and print it resolved, with every default filled in."""
    from persona_dynamics.config import dump, load

    typer.echo(dump(load(file)))


# --- entry point ---------------------------------------------------------------------------------


def main() -> None:
    """Console entry point: run the app, turning user errors into one line and exit code 2."""
    try:
        rc = app(standalone_mode=False)
    except PersonaDynamicsError as exc:
        if DEBUG["on"]:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors: bad flag, unknown command
        exc.show()
        sys.exit(exc.exit_code)
    sys.exit(rc if isinstance(rc, int) else 0)

"""`python -m persona_dynamics` is the CLI."""

from persona_dynamics.cli import main

main()

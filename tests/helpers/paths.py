"""Where the tests find the repository and the shipped role set."""

from __future__ import annotations

from pathlib import Path

from persona_dynamics.roles import shipped_dir, shipped_questions

ROOT = Path(__file__).resolve().parents[2]
ROLES_DIR = shipped_dir()
QUESTIONS = shipped_questions()

"""Persona drift over multi-turn conversations (run.py) and its per-turn slopes (slopes.py)."""

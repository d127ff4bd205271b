"""Trait vectors (persona_vectors' method): specs (spec.py) and the `traits` stage (run.py)."""

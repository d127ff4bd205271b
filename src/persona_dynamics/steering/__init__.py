"""Using a direction: interventions applied to a model while it runs (apply.py)."""

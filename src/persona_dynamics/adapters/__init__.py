"""Persona adapters: training data formats, LoRA training, fidelity, place in persona space."""

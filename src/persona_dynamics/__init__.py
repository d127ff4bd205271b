"""persona-dynamics: how a language model's persona space forms and moves during post-training."""

from persona_dynamics.errors import PersonaDynamicsError

__version__ = "0.1.0"
__all__ = ["PersonaDynamicsError", "__version__"]

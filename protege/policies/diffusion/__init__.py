from .policy import DiffusionPolicy

__all__ = ["DiffusionPolicy"]

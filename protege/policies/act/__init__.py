from .policy import ACTPolicy

__all__ = ["ACTPolicy"]

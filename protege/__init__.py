"""protege: teach robot arms manipulation skills from demonstrations."""

__version__ = "0.1.0"

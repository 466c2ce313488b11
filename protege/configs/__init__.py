"""Hydra config groups (robot/, task/, policy/, ...), shipped as package data."""

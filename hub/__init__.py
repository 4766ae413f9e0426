"""Cohort Hub: the community side of virtual mentoring programs on Matrix and email."""

__version__ = "0.1.0"

__all__ = ["__version__"]

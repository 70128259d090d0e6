"""Allting: AI assistants for the public sector."""

__version__ = "0.1.0"

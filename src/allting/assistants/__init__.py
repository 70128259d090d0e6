"""Assistants domain."""

"""Spaces domain."""

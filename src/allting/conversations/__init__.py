"""Conversations domain."""

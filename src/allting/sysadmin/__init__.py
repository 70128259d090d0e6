"""Sysadmin domain."""

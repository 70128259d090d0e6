"""Test doubles that ship with Allting, so tests and benchmarks never need a paid provider."""

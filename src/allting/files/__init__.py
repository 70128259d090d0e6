"""Files domain."""

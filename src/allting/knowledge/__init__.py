"""Knowledge: reading uploaded documents safely and splitting them into token-aware passages."""

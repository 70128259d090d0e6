from __future__ import annotations

import pytest
from argon2 import PasswordHasher

from allting.platform import security


@pytest.fixture(scope="module", autouse=True)
def cheap_password_hashing():
    """argon2id with minimal cost while these tests run; tests/auth checks the production parameters."""
    production = security._hasher, security._DUMMY_HASH
    security._hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    security._DUMMY_HASH = security._hasher.hash("not a password of anyone")
    yield
    security._hasher, security._DUMMY_HASH = production

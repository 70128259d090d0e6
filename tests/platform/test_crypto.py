from uuid import uuid4

import pytest
from cryptography.fernet import Fernet

from allting.platform.crypto import (
    TOKEN_PREFIX,
    SecretBindingError,
    SecretUnreadableError,
    decrypt_secret,
    encrypt_secret,
    mask_secret,
    rotate_secret,
)

PLANTED = "sk-planted-secret-ABCDEFGHIJ0123456789"


@pytest.fixture
def key() -> str:
    return Fernet.generate_key().decode()


def test_round_trip_bound_to_tenant_and_purpose(key):
    tenant = uuid4()
    token = encrypt_secret(PLANTED, tenant_id=tenant, purpose="provider:openai", keys=[key])
    assert token.startswith(TOKEN_PREFIX)
    assert PLANTED not in token
    assert decrypt_secret(token, tenant_id=tenant, purpose="provider:openai", keys=[key]) == PLANTED


def test_platform_wide_secret_is_not_readable_as_a_tenant_secret(key):
    token = encrypt_secret(PLANTED, tenant_id=None, purpose="provider:openai", keys=[key])
    assert decrypt_secret(token, tenant_id=None, purpose="provider:openai", keys=[key]) == PLANTED
    with pytest.raises(SecretBindingError):
        decrypt_secret(token, tenant_id=uuid4(), purpose="provider:openai", keys=[key])


def test_ciphertexts_swapped_between_tenants_are_refused(key):
    tenant_a, tenant_b = uuid4(), uuid4()
    token_a = encrypt_secret("key-of-a-" + PLANTED, tenant_id=tenant_a, purpose="provider:openai", keys=[key])
    token_b = encrypt_secret("key-of-b-" + PLANTED, tenant_id=tenant_b, purpose="provider:openai", keys=[key])
    # Row of tenant B now holds tenant A's ciphertext, and the other way round.
    for token, reader in ((token_a, tenant_b), (token_b, tenant_a)):
        with pytest.raises(SecretBindingError) as refused:
            decrypt_secret(token, tenant_id=reader, purpose="provider:openai", keys=[key])
        assert PLANTED not in str(refused.value)
        assert str(tenant_a) not in str(refused.value) and str(tenant_b) not in str(refused.value)


def test_purpose_mismatch_is_refused(key):
    tenant = uuid4()
    token = encrypt_secret(PLANTED, tenant_id=tenant, purpose="provider:openai", keys=[key])
    with pytest.raises(SecretBindingError):
        decrypt_secret(token, tenant_id=tenant, purpose="oidc:client_secret", keys=[key])


def test_rotation_makes_every_secret_readable_with_the_new_key_alone():
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    tenant = uuid4()
    tokens = [
        encrypt_secret(f"{PLANTED}-{n}", tenant_id=tenant, purpose="provider:openai", keys=[old_key])
        for n in range(3)
    ]
    rotated = [rotate_secret(token, keys=[new_key, old_key]) for token in tokens]
    for n, token in enumerate(rotated):
        assert decrypt_secret(token, tenant_id=tenant, purpose="provider:openai", keys=[new_key]) == (
            f"{PLANTED}-{n}"
        )
        with pytest.raises(SecretUnreadableError):
            decrypt_secret(token, tenant_id=tenant, purpose="provider:openai", keys=[old_key])
    # Before rotation, the new key alone cannot read them: rotation is what made them readable.
    with pytest.raises(SecretUnreadableError):
        decrypt_secret(tokens[0], tenant_id=tenant, purpose="provider:openai", keys=[new_key])


def test_corrupted_token_raises_typed_error_without_secret(key):
    tenant = uuid4()
    token = encrypt_secret(PLANTED, tenant_id=tenant, purpose="p", keys=[key])
    body = token[len(TOKEN_PREFIX) :]
    flipped = body[:40] + ("A" if body[40] != "A" else "B") + body[41:]
    for damaged in (TOKEN_PREFIX + flipped, token[:-10], "plaintext-" + PLANTED, TOKEN_PREFIX + "!!"):
        with pytest.raises(SecretUnreadableError) as unreadable:
            decrypt_secret(damaged, tenant_id=tenant, purpose="p", keys=[key])
        assert PLANTED not in str(unreadable.value)
        assert body not in str(unreadable.value)


def test_unknown_key_gives_unreadable_and_rotation_refuses(key):
    token = encrypt_secret(PLANTED, tenant_id=None, purpose="p", keys=[key])
    other = Fernet.generate_key().decode()
    with pytest.raises(SecretUnreadableError):
        decrypt_secret(token, tenant_id=None, purpose="p", keys=[other])
    with pytest.raises(SecretUnreadableError):
        rotate_secret(token, keys=[other])


def test_keys_default_to_settings(monkeypatch, key):
    class FakeSettings:
        def secret(self, name):
            assert name == "ENCRYPTION_KEY"
            return f"{key}, {Fernet.generate_key().decode()}"

    monkeypatch.setattr("allting.platform.crypto.get_settings", lambda: FakeSettings())
    token = encrypt_secret(PLANTED, tenant_id=None, purpose="p")
    assert decrypt_secret(token, tenant_id=None, purpose="p", keys=[key]) == PLANTED


@pytest.mark.parametrize(
    ("value", "shown"),
    [("sk-abcdefghijklmnop1234", "…1234"), ("short", "…"), ("", ""), (None, "")],
)
def test_mask_secret(value, shown):
    assert mask_secret(value) == shown

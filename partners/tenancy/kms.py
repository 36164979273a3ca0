"""Key management: per-partner data keys wrapped by a master key behind a small KMS interface.

Only wrapped data keys are stored. `LocalKeyManager` wraps with AES-256-GCM under the master
key from settings, binding each wrapped key to its partner id (the AAD), so a wrapped key
copied onto another partner's row does not unwrap. A cloud KMS (AWS KMS `Encrypt`/`Decrypt`
with an encryption context, GCP KMS with additional authenticated data) implements the same
three methods.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Sequence
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kit.errors import AppError

DATA_KEY_SIZE = 32
_WRAP_VERSION = b"\x01"


class KeyUnavailable(AppError):
    """A wrapped data key cannot be unwrapped: unknown master key, or not this partner's key."""

    status_code, type, title = 500, "key-unavailable", "Key unavailable"


class KeyManager(Protocol):
    """Wraps and unwraps data keys; the master key never leaves it."""

    @property
    def key_id(self) -> str:
        """The id of the master key that new wraps use."""
        ...

    def wrap(self, partner_id: str, data_key: bytes) -> bytes:
        """Encrypt a data key for `partner_id`."""
        ...

    def unwrap(self, partner_id: str, wrapped: bytes) -> bytes:
        """Decrypt a data key wrapped for `partner_id`; raises KeyUnavailable otherwise."""
        ...


def _decode_key(key: bytes | str) -> bytes:
    raw = base64.b64decode(key, validate=True) if isinstance(key, str) else key
    if len(raw) != 32:
        raise ValueError("a master key must be 32 bytes (base64 in settings)")
    return raw


def _fingerprint(raw: bytes) -> str:
    return hashlib.sha256(b"mediagate kek id|" + raw).hexdigest()[:16]


class LocalKeyManager:
    """AES-256-GCM key wrap under a master key held in process (from settings).

    `previous` lists retired master keys that can still unwrap, for master key rotation:
    deploy the new key with the old one in `previous`, run `ArtifactStore.rewrap_data_keys`,
    then drop the old key.
    """

    def __init__(self, master_key: bytes | str, *, previous: Sequence[bytes | str] = ()) -> None:
        current = _decode_key(master_key)
        self._current_id = _fingerprint(current)
        self._keys = {self._current_id: AESGCM(current)}
        for old in previous:
            raw = _decode_key(old)
            self._keys.setdefault(_fingerprint(raw), AESGCM(raw))

    @classmethod
    def from_settings(cls) -> LocalKeyManager:
        """The key manager for the configured `MEDIAGATE_MASTER_KEY`."""
        from kit.settings import get_settings

        return cls(get_settings().master_key)

    @property
    def key_id(self) -> str:
        return self._current_id

    def wrap(self, partner_id: str, data_key: bytes) -> bytes:
        """`version | master key id | nonce | AES-GCM(data key, aad=partner id)`."""
        nonce = os.urandom(12)
        sealed = self._keys[self._current_id].encrypt(nonce, data_key, _aad(partner_id))
        return _WRAP_VERSION + self._current_id.encode() + nonce + sealed

    def unwrap(self, partner_id: str, wrapped: bytes) -> bytes:
        """The data key, if it was wrapped for this partner under a master key we hold."""
        if len(wrapped) < 1 + 16 + 12 + 16 or wrapped[:1] != _WRAP_VERSION:
            raise KeyUnavailable("wrapped data key has an unknown format")
        kek_id = wrapped[1:17].decode("ascii", "replace")
        aead = self._keys.get(kek_id)
        if aead is None:
            raise KeyUnavailable(f"data key is wrapped under master key {kek_id}, which is not loaded")
        try:
            return aead.decrypt(wrapped[17:29], wrapped[29:], _aad(partner_id))
        except InvalidTag:
            raise KeyUnavailable("data key does not unwrap for this partner") from None

    def wrapped_key_id(self, wrapped: bytes) -> str:
        """The master key id a wrapped key names."""
        return wrapped[1:17].decode("ascii", "replace")


def _aad(partner_id: str) -> bytes:
    return b"mediagate data key|" + partner_id.encode()


def new_data_key() -> bytes:
    """A fresh random AES-256 data key."""
    return AESGCM.generate_key(bit_length=256)

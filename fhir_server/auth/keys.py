"""The server's token signing keys: RSA key pairs kept as PEM files in the data directory.

Files are named `signing-<serial>.pem`; the highest serial is the current key, which signs.
Older keys stay until pruned so the tokens they signed keep verifying until they expire. Each
file is written whole to a temporary name and then hard-linked to its final name, which fails
if that name exists: two processes (the server and the CLI) creating or rotating at once get
one key per serial, never a half-written file.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

ALGORITHM = "RS256"
KEY_BITS = 2048
_FILE = re.compile(r"signing-(\d{6})\.pem")


def thumbprint(public_key: rsa.RSAPublicKey) -> str:
    """RFC 7638 JWK thumbprint: SHA-256 of the required members in lexical order, no spaces."""
    jwk = RSAAlgorithm.to_jwk(public_key, as_dict=True)
    canonical = orjson.dumps({"e": jwk["e"], "kty": "RSA", "n": jwk["n"]})
    digest = hashlib.sha256(canonical).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass(frozen=True)
class SigningKey:
    serial: int
    kid: str
    private_key: rsa.RSAPrivateKey
    created: float
    """Epoch seconds the file was written."""

    def public_jwk(self) -> dict[str, Any]:
        jwk = RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        return {
            "kty": "RSA", "kid": self.kid, "use": "sig", "alg": ALGORITHM,
            "n": jwk["n"], "e": jwk["e"],
        }


class KeyRing:
    """The signing keys in one folder. Rescans the folder on `current` and on an unknown kid,
    so a rotation by another process is picked up without restarting."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._keys: dict[int, SigningKey] = {}

    @classmethod
    def load_or_create(cls, folder: Path) -> KeyRing:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        # mkdir leaves an existing folder's mode alone; private keys live here.
        folder.chmod(0o700)
        ring = cls(folder)
        ring._scan()
        if not ring._keys:
            ring._create(1)
            ring._scan()
        return ring

    @property
    def current(self) -> SigningKey:
        self._scan()
        return self._keys[max(self._keys)]

    def get(self, kid: str) -> SigningKey | None:
        key = self._find(kid)
        if key is None:
            self._scan()
            key = self._find(kid)
        return key

    def all_keys(self) -> list[SigningKey]:
        """Every key, newest first."""
        return [self._keys[serial] for serial in sorted(self._keys, reverse=True)]

    def rotate(self) -> SigningKey:
        """Make a new current key. If another process rotates at the same moment, its key is
        the new one (either way there is a single new current key)."""
        self._scan()
        self._create(max(self._keys) + 1)
        return self.current

    def prune(self, older_than: float, now: float | None = None) -> list[str]:
        """Remove the keys that stopped being current more than `older_than` seconds ago (no
        token they signed can still be valid); return their kids."""
        now = time.time() if now is None else now
        self._scan()
        ordered = sorted(self._keys)
        removed = []
        for serial, successor in itertools.pairwise(ordered):
            if self._keys[successor].created < now - older_than:
                self._path(serial).unlink(missing_ok=True)
                removed.append(self._keys.pop(serial).kid)
        return removed

    def jwks(self) -> dict[str, Any]:
        """The public keys, as served at the JWKS endpoint."""
        return {"keys": [key.public_jwk() for key in self.all_keys()]}

    def _find(self, kid: str) -> SigningKey | None:
        return next((key for key in self._keys.values() if key.kid == kid), None)

    def _path(self, serial: int) -> Path:
        return self.folder / f"signing-{serial:06d}.pem"

    def _scan(self) -> None:
        present: dict[int, Path] = {}
        for path in self.folder.iterdir():
            match = _FILE.fullmatch(path.name)
            if match:
                present[int(match.group(1))] = path
        self._keys = {s: k for s, k in self._keys.items() if s in present}
        for serial, path in present.items():
            if serial not in self._keys:
                try:
                    self._keys[serial] = _load(serial, path)
                except FileNotFoundError:
                    continue  # pruned by another process since the listing

    def _create(self, serial: int) -> None:
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
        pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        temporary = self.folder / f".signing-{secrets.token_hex(8)}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(pem)
                file.flush()
                os.fsync(file.fileno())
            # Another process may have made this serial first; its key is as good as ours.
            with contextlib.suppress(FileExistsError):
                os.link(temporary, self._path(serial))
        finally:
            temporary.unlink()


def _load(serial: int, path: Path) -> SigningKey:
    private_key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise ValueError(f"{path}: not an RSA private key")
    return SigningKey(
        serial=serial,
        kid=thumbprint(private_key.public_key()),
        private_key=private_key,
        created=path.stat().st_mtime,
    )

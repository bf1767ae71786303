"""Shared helpers for the signing tests: the fixed vectors, fixed-key signers, and trust documents."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from signing import CryptoSigner, PublicKey, Role, Signer, TrustDocument

VECTORS_DIR = Path(__file__).resolve().parent.parent / "vectors" / "signing"
TRANSFER_TYPE = "application/vnd.carbon-gateway.transfer.v1+json"
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@cache
def load_vectors(name: str) -> dict[str, Any]:
    """Load ``tests/vectors/signing/NAME``."""
    with (VECTORS_DIR / name).open(encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def fixed_signer(name: str) -> CryptoSigner:
    """A signer holding the fixed TEST private key ``name`` of ``signing_vectors.json``."""
    record = load_vectors("signing_vectors.json")["keys"][name]
    key = serialization.load_pem_private_key(record["private_key_pem"].encode("ascii"), None)
    assert isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey)
    return CryptoSigner(key)


def fixed_public_key(name: str) -> PublicKey:
    """The public key record of the fixed TEST key ``name`` (keyid as written in the vectors)."""
    record = load_vectors("signing_vectors.json")["keys"][name]
    return PublicKey.from_pem(record["public_key_pem"].encode("ascii"), record["keyid"])


def make_document(
    *,
    version: int,
    trust: Sequence[Signer],
    transfer: Sequence[Signer] = (),
    trust_threshold: int = 1,
    transfer_threshold: int = 1,
    party: str = "CHN",
    expires: datetime | None = None,
) -> TrustDocument:
    """A trust document whose ``trust`` and ``transfer`` roles hold the given signers' keys."""
    transfer = transfer or trust
    keys = {s.public_key.keyid: s.public_key for s in [*trust, *transfer]}
    return TrustDocument(
        party=party,
        version=version,
        expires=expires if expires is not None else NOW + timedelta(days=365),
        keys=keys,
        roles={
            "trust": Role(keyids=tuple(s.keyid for s in trust), threshold=trust_threshold),
            "transfer": Role(keyids=tuple(s.keyid for s in transfer), threshold=transfer_threshold),
        },
    )

"""Signing and trust for the carbon gateway: DSSE envelopes, signers by URI, keys and trust documents.

This package depends on nothing else in the project. It works on byte strings and its own small value
types; the protobuf envelope is converted at the edge.

- `signing.dsse`: ``pae``, `Envelope`, `Signature`, `sign_envelope`, and the structural caps
  `MAX_SIGNATURES`, `MAX_KEYID_LENGTH`, `MAX_SIGNATURE_SIZE`;
- `signing.keys`: `Algorithm`, `PublicKey`, `compute_keyid`, `generate_key`;
- `signing.signers`: `Signer`, `CryptoSigner`, `signer_from_uri`, `register_signer_scheme`;
- `signing.verify`: `verify_envelope`, `VerificationResult`;
- `signing.trust`: `TrustDocument`, `Role`, `TrustedParty`, `sign_trust_document`;
- `signing.errors`: the error hierarchy, rooted at `SigningError`.
"""

from signing.dsse import (
    MAX_KEYID_LENGTH,
    MAX_SIGNATURE_SIZE,
    MAX_SIGNATURES,
    Envelope,
    Signature,
    pae,
    sign_envelope,
)
from signing.errors import (
    EnvelopeFormatError,
    ExpiredTrustError,
    InvalidSignatureError,
    KeyFormatError,
    RollbackError,
    SignerError,
    SigningError,
    ThresholdError,
    TooManySignaturesError,
    TrustDocumentFormatError,
    TrustError,
    UnknownKeyError,
    VerificationError,
)
from signing.keys import Algorithm, PublicKey, compute_keyid, generate_key
from signing.signers import CryptoSigner, Signer, SignerFactory, register_signer_scheme, signer_from_uri
from signing.trust import (
    REQUIRED_ROLES,
    TRUST_PAYLOAD_TYPE,
    Role,
    TrustDocument,
    TrustedParty,
    sign_trust_document,
)
from signing.verify import VerificationResult, verify_envelope

__all__ = [
    "MAX_KEYID_LENGTH",
    "MAX_SIGNATURES",
    "MAX_SIGNATURE_SIZE",
    "REQUIRED_ROLES",
    "TRUST_PAYLOAD_TYPE",
    "Algorithm",
    "CryptoSigner",
    "Envelope",
    "EnvelopeFormatError",
    "ExpiredTrustError",
    "InvalidSignatureError",
    "KeyFormatError",
    "PublicKey",
    "Role",
    "RollbackError",
    "Signature",
    "Signer",
    "SignerError",
    "SignerFactory",
    "SigningError",
    "ThresholdError",
    "TooManySignaturesError",
    "TrustDocument",
    "TrustDocumentFormatError",
    "TrustError",
    "TrustedParty",
    "UnknownKeyError",
    "VerificationError",
    "VerificationResult",
    "compute_keyid",
    "generate_key",
    "pae",
    "register_signer_scheme",
    "sign_envelope",
    "sign_trust_document",
    "signer_from_uri",
    "verify_envelope",
]

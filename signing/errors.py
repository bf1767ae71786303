"""The errors raised by the `signing` package.

Every error is a `SigningError`, so a caller can catch the whole family at once. The subclasses say what
went wrong; the message says what to do about it.

```
SigningError
├── EnvelopeFormatError        an envelope (or a PAE input) is malformed
├── KeyFormatError             a public key record or PEM is malformed or of an unsupported kind
├── SignerError                a signer could not be created or could not sign
├── VerificationError          signatures do not meet the trust requirement
│   ├── UnknownKeyError        no signature is from any trusted key
│   ├── InvalidSignatureError  a signature names a trusted key but does not verify
│   ├── ThresholdError         some signatures verify, but from too few distinct keys
│   └── TooManySignaturesError more signatures than trusted keys; refused before any is checked
└── TrustError                 a trust document is not acceptable
    ├── TrustDocumentFormatError  the document is malformed
    ├── RollbackError          an update would go back to an older (or the same) version
    └── ExpiredTrustError      the trust document has expired
```
"""

from __future__ import annotations

__all__ = [
    "EnvelopeFormatError",
    "ExpiredTrustError",
    "InvalidSignatureError",
    "KeyFormatError",
    "RollbackError",
    "SignerError",
    "SigningError",
    "ThresholdError",
    "TooManySignaturesError",
    "TrustDocumentFormatError",
    "TrustError",
    "UnknownKeyError",
    "VerificationError",
]


class SigningError(Exception):
    """Base class of every error raised by the `signing` package."""


class EnvelopeFormatError(SigningError):
    """An envelope, or an input to PAE, is malformed (bad JSON, bad base64, a non-ASCII payload type...)."""


class KeyFormatError(SigningError):
    """A public key record or PEM is malformed, or its key is of an unsupported algorithm or curve."""


class SignerError(SigningError):
    """A signer could not be created from its URI, or the signing backend failed."""


class VerificationError(SigningError):
    """The signatures on an envelope do not satisfy the trust requirement (keys and threshold)."""


class UnknownKeyError(VerificationError):
    """No signature on the envelope is from a trusted key.

    Nothing verified, and no signature's keyid names a trusted key: the message was most likely signed by a
    key this party does not (or no longer) trust, or sent to the wrong receiver. (A signature whose keyid
    names no trusted key is not tried at all; only one with an empty keyid is tried against every key.)
    """


class InvalidSignatureError(VerificationError):
    """A signature names a trusted key but does not verify, and the threshold is not met.

    The payload or payload type was altered after signing, or the signature is corrupt.
    """


class ThresholdError(VerificationError):
    """Some signatures verify, but they come from fewer distinct trusted keys than the threshold requires."""


class TooManySignaturesError(VerificationError):
    """The envelope carries more signatures than the trusted keys it is verified against could have made.

    Each trusted key contributes at most one signature to a threshold, so the extra signatures can only be
    padding; checking them all would let a sender make the receiver do unbounded work. The envelope is
    refused before any signature is checked: the sender must send at most one signature per key of the role.
    """


class TrustError(SigningError):
    """A trust document is not acceptable: bad format, bad party, bad version, expired, and so on."""


class TrustDocumentFormatError(TrustError):
    """A trust document's payload is malformed or violates a structural rule."""


class RollbackError(TrustError):
    """A trust document update has a version lower than or equal to the one already trusted."""


class ExpiredTrustError(TrustError):
    """The trust document has expired; the partner must publish, and we must apply, a newer version."""

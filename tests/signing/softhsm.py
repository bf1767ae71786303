"""Creating SoftHSM2 tokens with a signing key, for tests that sign through ``pkcs11:`` URIs.

Usage in a test::

    from tests.signing.softhsm import create_softhsm_key, require_softhsm

    def test_something(tmp_path: Path) -> None:
        require_softhsm()                      # skip, or fail under CARBON_GATEWAY_REQUIRE_SERVICES=1
        key = create_softhsm_key(tmp_path / "hsm", token_label="chn-gateway")
        signer = signer_from_uri(key.uri)      # key.public_key is the matching PublicKey
        ...

Each call creates its own SoftHSM2 configuration and token directory under ``directory``. SoftHSM2 reads
``SOFTHSM2_CONF`` once, when the module is initialized in a process, and never sees tokens created later.
So that tokens created by different tests stay independent in one process, each call copies the SoftHSM2
module into ``directory`` (a different file is a separate instance of the library) and initializes that
copy in this process while ``SOFTHSM2_CONF`` points at its configuration. ``key.uri`` names that copy, so
`signer_from_uri` in this process finds the token without any environment variable. A child process that
uses ``key.uri`` needs ``key.env`` (``SOFTHSM2_CONF``) in its environment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pkcs11
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from pkcs11 import Attribute, KeyType

from signing import Algorithm, PublicKey
from tests.services import require_service

__all__ = [
    "SoftHsmKey",
    "add_softhsm_key",
    "create_softhsm_key",
    "find_softhsm_module",
    "find_softhsm_util",
    "require_softhsm",
    "softhsm_available",
]

MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)
"""Where distributions install the SoftHSM2 PKCS#11 module. ``SOFTHSM2_MODULE`` overrides them."""

_P256_PARAMS = bytes.fromhex("06082a8648ce3d030107")  # namedCurve OID 1.2.840.10045.3.1.7
_ED25519_PARAMS = bytes.fromhex("06032b6570")  # OID 1.3.101.112


def find_softhsm_module() -> Path | None:
    """The SoftHSM2 module: ``$SOFTHSM2_MODULE`` if set, else the first installed candidate, else None."""
    override = os.environ.get("SOFTHSM2_MODULE")
    if override:
        return Path(override) if Path(override).is_file() else None
    for candidate in MODULE_CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate)
    return None


def find_softhsm_util() -> Path | None:
    """The ``softhsm2-util`` program, or None."""
    found = shutil.which("softhsm2-util")
    return Path(found) if found else None


def softhsm_available() -> tuple[bool, str]:
    """Whether SoftHSM2 is usable here, and if not, why."""
    if find_softhsm_util() is None:
        return False, "SoftHSM2 is not installed: softhsm2-util is not on PATH (apt-get install softhsm2)"
    if find_softhsm_module() is None:
        return False, (
            "SoftHSM2 is not installed: libsofthsm2.so not found in "
            f"{', '.join(MODULE_CANDIDATES)} (set SOFTHSM2_MODULE, or apt-get install softhsm2)"
        )
    return True, ""


def require_softhsm() -> None:
    """Skip the calling test if SoftHSM2 is absent (fail under ``CARBON_GATEWAY_REQUIRE_SERVICES=1``)."""
    available, reason = softhsm_available()
    require_service(available, reason)


@dataclass(frozen=True)
class SoftHsmKey:
    """A key pair generated in a fresh SoftHSM2 token, and how to reach it.

    ``uri`` is the ``pkcs11:`` signer URI (PIN read from ``pin_path``); ``public_key`` is the matching
    `PublicKey`; ``env`` is what a child process needs in its environment to use ``uri``.
    """

    uri: str
    public_key: PublicKey
    token_label: str
    key_label: str
    pin: str
    module_path: Path
    conf_path: Path
    pin_path: Path

    @property
    def env(self) -> dict[str, str]:
        """The environment variables a child process needs to use ``uri``."""
        return {"SOFTHSM2_CONF": str(self.conf_path)}

    def uri_with(self, **query: str) -> str:
        """``uri`` with its query replaced by module-path plus ``query`` (e.g. ``pin_env="VAR"``)."""
        path_part = self.uri.split("?", 1)[0]
        params = {"module-path": str(self.module_path)}
        params.update({name.replace("_", "-"): value for name, value in query.items()})
        return path_part + "?" + "&".join(f"{name}={quote(value, safe='/:')}" for name, value in params.items())


@contextlib.contextmanager
def _softhsm_conf(conf_path: Path) -> Iterator[None]:
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf_path)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["SOFTHSM2_CONF"]
        else:
            os.environ["SOFTHSM2_CONF"] = previous


def create_softhsm_key(
    directory: Path,
    *,
    token_label: str = "carbon-gateway",
    key_label: str = "signing-key",
    algorithm: Algorithm = Algorithm.ECDSA_P256_SHA256,
    pin: str = "1234",
    so_pin: str = "12345678",
) -> SoftHsmKey:
    """Create a SoftHSM2 token in ``directory``, generate a signing key in it, and return its URI and key.

    The token is initialized with ``softhsm2-util``; the key pair (P-256 by default, or Ed25519) is
    generated inside the token through python-pkcs11 and never leaves it. Call `require_softhsm` first.
    Raises `RuntimeError` if SoftHSM2 is missing or a step fails.
    """
    util = find_softhsm_util()
    system_module = find_softhsm_module()
    if util is None or system_module is None:
        raise RuntimeError(softhsm_available()[1])
    directory = directory.resolve()
    tokens = directory / "tokens"
    tokens.mkdir(parents=True, exist_ok=False)
    conf_path = directory / "softhsm2.conf"
    conf_path.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
        encoding="utf-8",
    )
    module_path = directory / "libsofthsm2.so"
    shutil.copyfile(system_module, module_path)

    result = subprocess.run(
        [str(util), "--init-token", "--free", "--label", token_label, "--pin", pin, "--so-pin", so_pin],
        env={**os.environ, "SOFTHSM2_CONF": str(conf_path)},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"softhsm2-util --init-token failed ({result.returncode}): {result.stderr.strip()}")

    with _softhsm_conf(conf_path):
        pkcs11.lib(str(module_path))  # initializes this copy of the module with its configuration
    pin_path = directory / "user.pin"
    pin_path.write_text(pin + "\n", encoding="utf-8")
    pin_path.chmod(0o600)
    public_key = _generate(module_path, token_label, pin, key_label, algorithm)
    return SoftHsmKey(
        uri=_uri(token_label, key_label, module_path, pin_path),
        public_key=public_key,
        token_label=token_label,
        key_label=key_label,
        pin=pin,
        module_path=module_path,
        conf_path=conf_path,
        pin_path=pin_path,
    )


def add_softhsm_key(
    existing: SoftHsmKey, key_label: str, *, algorithm: Algorithm = Algorithm.ECDSA_P256_SHA256
) -> SoftHsmKey:
    """Generate another key pair, labelled ``key_label``, in the token of ``existing``."""
    public_key = _generate(existing.module_path, existing.token_label, existing.pin, key_label, algorithm)
    return dataclasses.replace(
        existing,
        uri=_uri(existing.token_label, key_label, existing.module_path, existing.pin_path),
        public_key=public_key,
        key_label=key_label,
    )


def _uri(token_label: str, key_label: str, module_path: Path, pin_path: Path) -> str:
    return (
        f"pkcs11:token={quote(token_label, safe='')};object={quote(key_label, safe='')}"
        f"?module-path={quote(str(module_path), safe='/')}&pin-source={quote('file:' + str(pin_path), safe='/:')}"
    )


def _generate(module_path: Path, token_label: str, pin: str, key_label: str, algorithm: Algorithm) -> PublicKey:
    token = pkcs11.lib(str(module_path)).get_token(token_label=token_label)
    ed25519_key = Algorithm(algorithm) is Algorithm.ED25519
    try:
        session = token.open(rw=True, user_pin=pin)
    except pkcs11.exceptions.UserAlreadyLoggedIn:  # a signer of this process is logged in to the token
        session = token.open(rw=True)
    with session:
        if ed25519_key:
            params = session.create_domain_parameters(
                KeyType.EC_EDWARDS, {Attribute.EC_PARAMS: _ED25519_PARAMS}, local=True
            )
        else:
            params = session.create_domain_parameters(KeyType.EC, {Attribute.EC_PARAMS: _P256_PARAMS}, local=True)
        public, _private = params.generate_keypair(store=True, label=key_label, id=key_label.encode("utf-8"))
        point = bytes(public[Attribute.EC_POINT])
    if ed25519_key:
        raw = point[2:] if len(point) == 34 else point  # strip the DER OCTET STRING header
        return PublicKey.from_crypto(ed25519.Ed25519PublicKey.from_public_bytes(raw))
    raw = point[2:] if len(point) == 67 else point
    return PublicKey.from_crypto(ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw))

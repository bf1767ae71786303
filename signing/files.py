"""Small file helpers shared by key generation and signers (and by the gateway's tools)."""

from __future__ import annotations

import os
from pathlib import Path


def write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to a file that must not exist yet, with permission bits ``mode``, and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def passphrase_from_file_bytes(data: bytes) -> bytes:
    """A passphrase file's contents without one trailing newline (``\\n`` or ``\\r\\n``), as editors add one."""
    if data.endswith(b"\r\n"):
        return data[:-2]
    if data.endswith(b"\n"):
        return data[:-1]
    return data

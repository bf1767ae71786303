"""Small file helpers shared by key generation and signers (and by the gateway's tools)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

MAX_FILE_BYTES = 1 << 20
"""The most a key, passphrase, PIN or other small configured file may hold; `read_small_file`'s default."""


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


def read_small_file(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of ``path``, which must be a regular file (after following symlinks) of at most ``limit`` bytes.

    Opened without blocking, so a FIFO never hangs the caller, and checked before anything is read, so a device
    such as ``/dev/zero`` is never read at all. A folder raises `IsADirectoryError`; any other kind of file, a
    larger one, or a name holding a NUL character (which no file name can hold, and a URI may spell ``%00``), an
    `OSError` whose ``strerror`` says what is wrong; the others as ``open`` raises them.
    """
    if "\x00" in os.fspath(path):
        # os.open would raise ValueError, which no caller expects of a file that cannot be read.
        raise OSError(
            errno.EINVAL,
            "the file name holds a NUL character (%00), which no file name can hold",
            os.fspath(path).replace("\x00", "%00"),
        )
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(path))
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a device, FIFO or socket); name a file", str(path))
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes, too large for this file", str(path))
        return b"".join(chunks)
    finally:
        os.close(fd)


def passphrase_from_file_bytes(data: bytes) -> bytes:
    """A passphrase file's contents without one trailing newline (``\\n`` or ``\\r\\n``), as editors add one."""
    if data.endswith(b"\r\n"):
        return data[:-2]
    if data.endswith(b"\n"):
        return data[:-1]
    return data

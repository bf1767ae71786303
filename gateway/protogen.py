"""Generates the protobuf and gRPC Python code (and type stubs) from the ``.proto`` files in ``proto/``.

Run through ``make proto``. The generated modules sit beside their ``.proto`` files and form the package
``carbon_gateway.v1``. Generation needs the pinned ``grpcio-tools`` and ``mypy-protobuf`` (the ``dev`` extra).
"""

from __future__ import annotations

import shutil
import sys
import sysconfig
from importlib import resources
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent.parent / "proto"
PACKAGE_DIR = Path("carbon_gateway") / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def proto_files(root: Path = PROTO_ROOT) -> list[Path]:
    """The ``.proto`` files of the wire contract, relative to ``root``."""
    return sorted(p.relative_to(root) for p in (root / PACKAGE_DIR).glob("*.proto"))


def generated_files(root: Path) -> list[Path]:
    """The generated files under ``root``, relative to it."""
    return sorted(p.relative_to(root) for p in (root / PACKAGE_DIR).iterdir() if p.name.endswith(GENERATED_SUFFIXES))


def generate(out: Path, root: Path = PROTO_ROOT) -> list[Path]:
    """Generate the code for every ``.proto`` file under ``root`` into ``out``; return the files written."""
    from grpc_tools import protoc  # type: ignore[import-untyped]

    out.mkdir(parents=True, exist_ok=True)
    (out / PACKAGE_DIR).mkdir(parents=True, exist_ok=True)
    well_known = resources.files("grpc_tools") / "_proto"
    scripts = Path(sysconfig.get_path("scripts"))
    plugin_mypy = shutil.which("protoc-gen-mypy", path=str(scripts)) or shutil.which("protoc-gen-mypy")
    plugin_grpc = shutil.which("protoc-gen-mypy_grpc", path=str(scripts)) or shutil.which("protoc-gen-mypy_grpc")
    if plugin_mypy is None or plugin_grpc is None:
        raise SystemExit("protoc-gen-mypy not found: install the dev extra (pip install -e '.[dev]')")
    args = [
        "grpc_tools.protoc",
        f"-I{root}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={plugin_mypy}",
        f"--plugin=protoc-gen-mypy_grpc={plugin_grpc}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *(str(p) for p in proto_files(root)),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")
    for package in (out / "carbon_gateway", out / PACKAGE_DIR):
        init = package / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated protobuf package: run `make proto` to regenerate."""\n')
    return generated_files(out)


def main() -> None:
    """Entry point of ``make proto``."""
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT
    for path in generate(out):
        print(f"generated {path}")


if __name__ == "__main__":
    main()

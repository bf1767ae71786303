"""The committed protobuf code must be exactly what `make proto` produces from the .proto files."""

from __future__ import annotations

from pathlib import Path

from gateway.protogen import PROTO_ROOT, generate, generated_files


def test_committed_generated_code_matches_the_proto_files(tmp_path: Path) -> None:
    fresh = generate(tmp_path)
    committed = generated_files(PROTO_ROOT)
    assert fresh == committed, "generated file set differs: run `make proto` and commit the result"
    stale = [str(p) for p in fresh if (tmp_path / p).read_bytes() != (PROTO_ROOT / p).read_bytes()]
    assert not stale, f"stale generated code in {stale}: run `make proto` and commit the result"


def test_every_proto_file_has_generated_code() -> None:
    protos = {p.stem for p in (PROTO_ROOT / "carbon_gateway" / "v1").glob("*.proto")}
    generated = {p.name.removesuffix("_pb2.py") for p in generated_files(PROTO_ROOT) if p.name.endswith("_pb2.py")}
    assert protos == generated

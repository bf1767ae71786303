"""The entry-point registry and the ``adapters`` / ``map`` commands."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path

import openpyxl
import pytest

from adapters import registry
from adapters.aef_columns import Table, headers
from adapters.commands import register
from adapters.serial_lists import SerialListAdapter
from adapters.serials import vcs
from tests.adapters import strategies as s
from tests.adapters.strategies import ACTION_CONTEXT_JSON

BUILT_IN = set(s.built_in_adapters())


class _Renamed(SerialListAdapter):
    """A third-party adapter: the VCS grammar under another name."""

    def __init__(self) -> None:
        super().__init__(vcs.GRAMMAR)
        self.info = type(self.info)("third-party-vcs", "a plug-in", self.info.reads, self.info.writes, "UnitBlock")


THIRD_PARTY = _Renamed()


@pytest.fixture
def fake_entry_points(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[EntryPoint]]:
    points: list[EntryPoint] = []
    monkeypatch.setattr(registry, "entry_points", lambda group: [p for p in points if p.group == group])
    registry.reload()
    yield points
    registry.reload()


def _ep(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=registry.ENTRY_POINT_GROUP)


def test_installed_distribution_registers_every_built_in_adapter() -> None:
    registry.reload()
    infos = registry.list_adapters()
    names = {i.name for i in infos}
    if not names >= BUILT_IN:
        pytest.fail("install the project (pip install -e .) so that its entry points are registered")
    by_name = {i.name: i for i in infos}
    assert by_name["cn-ccer"].reads == ("cn-ccer+json", "cn-ccer+csv")
    assert by_name["aef-actions"].writes == ("aef-actions+csv", "aef-actions+xlsx")
    assert registry.get_adapter("cadt-v2-units").info.record == "RegistryUnit"


def test_a_third_party_adapter_is_found_and_broken_ones_are_reported(fake_entry_points: list[EntryPoint]) -> None:
    fake_entry_points += [
        _ep("third-party-vcs", "tests.adapters.test_registry:THIRD_PARTY"),
        _ep("broken", "no_such_module:ADAPTER"),
        _ep("misnamed", "adapters.serial_lists:VCS"),
        _ep("not-an-adapter", "adapters.vocab:PARTY_CODES"),
    ]
    assert [i.name for i in registry.list_adapters()] == ["third-party-vcs"]
    problems = {p.entry_point: p.message for p in registry.load_problems()}
    assert set(problems) == {"broken", "misnamed", "not-an-adapter"}
    assert "cannot be imported" in problems["broken"] and "same name" in problems["misnamed"]
    with pytest.raises(registry.AdapterNotFound, match="third-party-vcs"):
        registry.get_adapter("cn-ccer")


def test_no_installed_adapters_gives_a_clear_error(fake_entry_points: list[EntryPoint]) -> None:
    with pytest.raises(registry.NoAdaptersInstalled, match="pip install -e"):
        registry.list_adapters()


def _run(argv: list[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="carbon-gateway")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    code: int = args.func(args, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_adapters_command_lists_schemas(fake_entry_points: list[EntryPoint]) -> None:
    fake_entry_points.append(_ep("third-party-vcs", "tests.adapters.test_registry:THIRD_PARTY"))
    code, out, _ = _run(["adapters", "--json"])
    assert code == 0
    assert json.loads(out)[0]["reads"] == ["serial-vcs+text", "serial-vcs+json"]
    fake_entry_points.clear()
    registry.reload()
    code, _, err = _run(["adapters"])
    assert code == 2 and "no adapters are registered" in err


CONTEXT = ACTION_CONTEXT_JSON
CSV = (
    "ccer_id,project_id,project_name,project_type_code,methodology_code,province,monitoring_period_start,"
    "monitoring_period_end,vintage,certified_quantity,block_start,block_end\n"
    "CCER-1,P-1,Mangroves,N0102,CCER-14-002-V01,Hainan,2023-01-01,2023-12-31,2023,1000,1,1000\n"
    "CCER-2,P-2,Offshore wind,A0102,CCER-01-002-V01,Fujian,2023-01-01,2023-12-31,2023,500,1001,1500\n"
)


@pytest.fixture
def installed() -> None:
    registry.reload()
    if not {i.name for i in registry.list_adapters()} >= BUILT_IN:
        pytest.fail("install the project (pip install -e .) so that its entry points are registered")


def test_map_command_writes_an_aef_workbook(tmp_path: Path, installed: None) -> None:
    (tmp_path / "ccer.csv").write_text(CSV, encoding="utf-8")
    (tmp_path / "context.json").write_text(json.dumps(CONTEXT), encoding="utf-8")
    out = tmp_path / "actions.xlsx"
    code, _, err = _run(
        [
            "map",
            "--from",
            "cn-ccer",
            "--to",
            "aef-actions",
            str(tmp_path / "ccer.csv"),
            "--context",
            str(tmp_path / "context.json"),
            "--out",
            str(out),
        ]
    )
    assert code == 0, err
    assert "lost: 2 record(s)" in err
    # One note for both records, not one line per record.
    notes = [line for line in err.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and notes[0].startswith("note: records 1-2, field 'Underlying unit registry ID'")
    assert notes[0].endswith("[nomenclature_extension]")
    workbook = openpyxl.load_workbook(out, read_only=True)
    try:
        rows = list(workbook["Actions"].iter_rows(values_only=True))
    finally:
        workbook.close()
    assert list(rows[0]) == list(headers(Table.ACTIONS))
    assert [r[15] for r in rows[1:]] == [1000, 500]


def test_map_command_refuses_a_value_the_workbook_cannot_hold_and_writes_nothing(
    tmp_path: Path, installed: None
) -> None:
    (tmp_path / "ccer.csv").write_text(CSV, encoding="utf-8")
    context = {**CONTEXT, "facts": {**CONTEXT["facts"], "additional_information": "x\u0000y"}}
    (tmp_path / "context.json").write_text(json.dumps(context), encoding="utf-8")
    out = tmp_path / "actions.xlsx"
    argv = ["map", "--from", "cn-ccer", "--to", "aef-actions", str(tmp_path / "ccer.csv")]
    code, _, err = _run([*argv, "--context", str(tmp_path / "context.json"), "--out", str(out)])
    assert code == 1 and not out.exists()
    assert "Additional explanatory information" in err and "control character" in err
    assert "nothing was written" in err and "Traceback" not in err
    code, _, err = _run([*argv, "--context", str(tmp_path / "context.json"), "--out", str(tmp_path / "no" / "a.csv")])
    assert code == 2 and err.endswith(f"error: {tmp_path / 'no' / 'a.csv'}: No such file or directory\n")


def test_map_command_writes_an_empty_table_for_an_empty_batch(tmp_path: Path, installed: None) -> None:
    """No records is an empty table (its header), written over what --out held, not nothing."""
    (tmp_path / "none.json").write_text("[]", encoding="utf-8")
    (tmp_path / "context.json").write_text(json.dumps(CONTEXT), encoding="utf-8")
    argv = ["map", "--from", "cn-ccer", str(tmp_path / "none.json"), "--context", str(tmp_path / "context.json")]
    out = tmp_path / "actions.csv"
    out.write_text("stale\n", encoding="utf-8")
    code, _, err = _run([*argv, "--to", "aef-actions", "--out", str(out)])
    assert code == 0 and "mapped 0 record(s)" in err, err
    assert out.read_text(encoding="utf-8").splitlines() == [",".join(headers(Table.ACTIONS))]
    code, printed, err = _run([*argv, "--to", "cadt-v2-units", "--to-format", "json"])
    assert code == 0 and json.loads(printed) == [], err


def test_map_command_reads_a_context_file_that_starts_with_a_byte_order_mark(tmp_path: Path, installed: None) -> None:
    (tmp_path / "ccer.csv").write_text(CSV, encoding="utf-8")
    (tmp_path / "context.json").write_text(json.dumps(CONTEXT), encoding="utf-8-sig")
    argv = ["map", "--from", "cn-ccer", "--to", "aef-actions", str(tmp_path / "ccer.csv"), "--to-format", "csv"]
    code, printed, err = _run([*argv, "--context", str(tmp_path / "context.json")])
    assert code == 0 and "mapped 2 record(s)" in err, err
    assert len(printed.splitlines()) == 3


def test_map_command_refuses_a_bad_batch_and_writes_nothing(tmp_path: Path, installed: None) -> None:
    bad = CSV.replace("1001,1500", "901,1400")
    (tmp_path / "ccer.csv").write_text(bad, encoding="utf-8")
    out = tmp_path / "out.json"
    code, _, err = _run(["map", "--from", "cn-ccer", "--to", "cn-ccer", str(tmp_path / "ccer.csv"), "--out", str(out)])
    assert code == 1 and not out.exists()
    assert "record 2, field 'block_start'" in err and "duplicate_serial" in err
    code, _, err = _run(
        ["map", "--from", "cn-ccer", "--to", "cn-ccer", str(tmp_path / "ccer.csv"), "--out", str(out), "--per-record"]
    )
    assert code == 1 and len(json.loads(out.read_text(encoding="utf-8"))) == 1


def test_map_command_strict_and_usage_errors(tmp_path: Path, installed: None) -> None:
    (tmp_path / "ccer.csv").write_text(CSV, encoding="utf-8")
    (tmp_path / "context.json").write_text(json.dumps(CONTEXT), encoding="utf-8")
    code, out, err = _run(
        [
            "map",
            "--from",
            "cn-ccer",
            "--to",
            "aef-actions",
            str(tmp_path / "ccer.csv"),
            "--context",
            str(tmp_path / "context.json"),
            "--strict",
            "--to-format",
            "csv",
        ]
    )
    assert code == 1 and out == "" and "lossy_mapping" in err
    code, _, err = _run(["map", "--from", "cn-nope", "--to", "aef-actions", str(tmp_path / "ccer.csv")])
    assert code == 2 and "no adapter named 'cn-nope'" in err
    code, _, err = _run(["map", "--from", "cn-ccer", "--to", "aef-actions", str(tmp_path / "ccer.csv")])
    assert code == 2 and "--to-format" in err


@pytest.mark.parametrize(
    ("context", "problem"),
    [
        ("[" * 100_000, "nests arrays or objects too deeply"),
        ('{"facts": {"party_registry": "CHN01", "party_registry": "CHE01"}}', '"party_registry" appears twice'),
        ('{"facts": {"quantity": NaN}}', "NaN is not a JSON number"),
    ],
    ids=["nested too deeply", "a repeated name", "NaN"],
)
def test_map_command_refuses_a_malformed_context_file(
    tmp_path: Path, installed: None, context: str, problem: str
) -> None:
    (tmp_path / "ccer.csv").write_text(CSV, encoding="utf-8")
    (tmp_path / "context.json").write_text(context, encoding="utf-8")
    code, out, err = _run(
        [
            "map",
            "--from",
            "cn-ccer",
            "--to",
            "cn-ccer",
            str(tmp_path / "ccer.csv"),
            "--context",
            str(tmp_path / "context.json"),
            "--to-format",
            "csv",
        ]
    )
    assert code == 2 and out == ""
    assert "context.json is not valid JSON" in err and problem in err


def test_map_command_names_a_missing_input_file_without_an_errno(tmp_path: Path, installed: None) -> None:
    missing = tmp_path / "absent.csv"
    code, out, err = _run(["map", "--from", "cn-ccer", "--to", "cn-ccer", str(missing), "--to-format", "json"])
    assert (code, out) == (2, "")
    assert err == f"error: {missing}: No such file or directory\n"


def test_map_command_refuses_an_out_that_is_its_input_and_leaves_it_alone(tmp_path: Path, installed: None) -> None:
    """--out naming the file to map (or the context file) wrote the result over the source."""
    (tmp_path / "ccer.csv").write_text(CSV, encoding="utf-8")
    (tmp_path / "context.json").write_text(json.dumps(CONTEXT), encoding="utf-8")
    argv = ["map", "--from", "cn-ccer", "--to", "aef-actions", str(tmp_path / "ccer.csv")]
    argv += ["--context", str(tmp_path / "context.json"), "--to-format", "csv"]
    for target, what in (("ccer.csv", "the file to map"), ("context.json", "the --context file")):
        before = (tmp_path / target).read_bytes()
        code, _, err = _run([*argv, "--out", str(tmp_path / target)])
        assert code == 2 and f"is {what}" in err and err.count("\n") == 1, err
        assert (tmp_path / target).read_bytes() == before

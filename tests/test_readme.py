"""The README's response-code table is the code's table, so documentation and behaviour cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.domain.errors import RESPONSE_CODE_MEANINGS, ResponseCode

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_lists_every_response_code_with_its_meaning() -> None:
    rows = re.findall(r"^\| (\d+) \| `([A-Z_]+)` \| (.+?) \|$", README.read_text(), flags=re.MULTILINE)
    documented = {(int(value), name, meaning) for value, name, meaning in rows}
    expected = {(int(code), code.name, RESPONSE_CODE_MEANINGS[code]) for code in ResponseCode}
    assert documented == expected


def test_readme_opens_with_the_two_setup_commands() -> None:
    text = README.read_text()
    quick_start = text[text.index("## Quick start") :]
    assert quick_start.index("make run") < quick_start.index("make test") < quick_start.index("## Running")


def test_the_readme_configuration_example_loads(tmp_path: Path) -> None:
    import datetime as dt

    from gateway.config import load_config
    from gateway.domain.protocol import Verdict

    example = re.search(r"```toml\n(party = .*?)```", README.read_text(), flags=re.DOTALL)
    assert example is not None
    path = tmp_path / "gateway.toml"
    path.write_text(example.group(1))
    config = load_config(path)
    assert config.party == "CHN"
    assert config.database == tmp_path / "chn.db"
    assert config.http_listen == "0.0.0.0:8443"
    assert config.tls is not None and config.tls.ca_certificate == tmp_path / "tls" / "ca.crt"
    assert [(p.party, p.http_url) for p in config.partners] == [("CHE", "https://che.example:8443")]
    assert [r.verdict for r in config.policy.rules] == [Verdict.ACCEPT, Verdict.HOLD]
    assert config.hold_deadline == dt.timedelta(hours=48)
    assert config.decision_timeout == dt.timedelta(hours=72)
    assert config.status_query_after == dt.timedelta(minutes=15)
    assert sorted(config.signers) == ["default", "next"]
    assert config.signers["next"] == f"file:{tmp_path / 'keys' / 'chn-2.key'}"
    assert [p.max_envelope_bytes for p in config.partners] == [1 << 20]
    assert {code: (r.unit_kinds, r.party) for code, r in config.nomenclature.registries.items()} == {
        "CN-CCER": (("CCER",), "CHN"),
        "CN-CEA": (("CEA",), "CHN"),
    }

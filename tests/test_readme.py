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

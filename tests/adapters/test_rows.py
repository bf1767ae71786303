"""`map_rows`: the rows the mapping RPCs carry equal `map_batch`'s, whichever path produced them."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings

from adapters.mapping import map_batch
from adapters.rows import from_batch, map_rows
from gateway.domain.canonical import CcerCredit
from gateway.domain.mapping import IssueCode
from tests.adapters.test_domestic import GOOD
from tests.adapters.test_mapping import CTX, _rows, distinct_credits


@settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(distinct_credits)
def test_the_fast_ccer_to_actions_path_gives_exactly_the_full_paths_rows(credits: list[CcerCredit]) -> None:
    payload = json.dumps(_rows(credits), default=str).encode()
    fast = map_rows("cn-ccer", "aef-actions", payload, source_format="json", context=CTX)
    full = from_batch(map_batch("cn-ccer", "aef-actions", payload, source_format="json", context=CTX))
    assert full.applied and full.rows
    assert fast == full


def test_a_refused_record_goes_the_full_path_and_is_named() -> None:
    bad = [GOOD, {**GOOD, "ccer_id": "CCER-44-2024-0002", "block_start": -5}]
    mapped = map_rows("cn-ccer", "aef-actions", json.dumps(bad).encode(), source_format="json", context=CTX)
    assert not mapped.applied
    assert mapped.rows == ()
    assert [(i.first, i.last, i.field) for i in mapped.issues] == [(2, 2, "block_start")]
    assert mapped.records == 2


def test_the_notes_every_record_shares_are_one_run() -> None:
    credits = [
        {**GOOD, "ccer_id": f"CCER-{n}", "block_start": n * 10_000 + 1, "block_end": n * 10_000 + 100}
        for n in (1, 2, 3)
    ]
    mapped = map_rows("cn-ccer", "aef-actions", json.dumps(credits).encode(), source_format="json", context=CTX)
    assert mapped == from_batch(map_batch("cn-ccer", "aef-actions", credits, context=CTX))
    assert [(n.first, n.last, n.field, n.code) for n in mapped.notes] == [
        (1, 3, "Underlying unit registry ID", IssueCode.NOMENCLATURE_EXTENSION)
    ]

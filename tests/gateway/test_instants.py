"""Instants on the wire and in the stores: the fast forms give exactly what the library forms give."""

from __future__ import annotations

import datetime as dt

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from gateway import wire
from gateway.store import codec

_ZONES = st.sampled_from(
    [dt.UTC, dt.timezone(dt.timedelta(hours=8)), dt.timezone(dt.timedelta(hours=-11, minutes=-30))]
)
_INSTANTS = st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30), timezones=_ZONES)


@given(_INSTANTS)
def test_a_timestamp_is_the_instant_from_datetime_gives(moment: dt.datetime) -> None:
    expected = Timestamp()
    expected.FromDatetime(moment.astimezone(dt.UTC))
    assert wire.timestamp(moment) == expected
    assert wire.from_timestamp(wire.timestamp(moment)) == moment


@given(_INSTANTS)
def test_a_stored_instant_is_utc_text_with_microseconds_and_reads_back(moment: dt.datetime) -> None:
    written = codec.to_text(moment)
    assert written == moment.astimezone(dt.UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    assert codec.from_text(written) == moment

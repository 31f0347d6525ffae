"""The server's clock (fhirtime.Clock): strictly increasing, fixed-width UTC instants, past any
instant a write must follow, and right across second boundaries (it formats each second once)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fhir_server import fhirtime
from fhir_server.fhirtime import Clock, parse_instant


def test_instants_increase_strictly_and_keep_their_width() -> None:
    clock = Clock()
    instants = [clock.next() for _ in range(2000)]
    assert instants == sorted(set(instants))
    assert {len(i) for i in instants} == {27}
    now = datetime.now(UTC)
    assert abs(parse_instant(instants[-1]) - now) < timedelta(seconds=5)


@pytest.mark.parametrize("after", [
    "2999-01-01T00:00:00.000000Z",
    "2999-01-01T00:00:00.000Z",  # another width: compared as a moment, not as text
    "2999-01-01T23:59:59.999999Z",
])
def test_an_instant_follows_the_one_it_must_come_after(after: str) -> None:
    clock = Clock()
    stepped = clock.next(after)
    assert parse_instant(stepped) > fhirtime.parse_range(after)[0]
    assert clock.next() > stepped  # and the clock goes on from there


def test_a_past_instant_does_not_hold_the_clock_back() -> None:
    clock = Clock()
    first = clock.next()
    assert clock.next("2000-01-01T00:00:00.000000Z") > first


def test_each_second_gets_its_own_text(monkeypatch: pytest.MonkeyPatch) -> None:
    nanoseconds = [1_700_000_000_999_998_000, 1_700_000_000_999_999_000,
                   1_700_000_001_000_000_000, 1_700_000_060_000_000_000]
    moments = iter(nanoseconds)
    monkeypatch.setattr(fhirtime.time, "time_ns", lambda: next(moments))
    clock = Clock()
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    expected = [fhirtime.format_instant(epoch + timedelta(microseconds=ns // 1000))
                for ns in nanoseconds]
    assert [clock.next() for _ in nanoseconds] == expected

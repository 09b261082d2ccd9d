"""The small shared helpers of the core: one-line errors, warning records, duration units."""

from __future__ import annotations

import pytest

from quantlab_pipeline.core.durations import UNIT_MS, format_duration_ms, parse_duration_ms
from quantlab_pipeline.core.errors import ErrorRecord, InputError, first_line


def test_first_line_of_an_error():
    assert first_line(InputError("\n  table not found\nTraceback: ...")) == "table not found"
    assert first_line(KeyError()) == "KeyError"  # no message: named by its type
    assert first_line("Catalog Error: x\nLINE 1") == "Catalog Error: x"
    assert first_line("") == ""


def test_warning_record_puts_keywords_in_details():
    record = ErrorRecord.warning("inputs", "null_field", "alert skipped", call_id="c", null_fields=["mint"])
    assert record == ErrorRecord(
        level="warning",
        phase="inputs",
        reason="null_field",
        message="alert skipped",
        call_id="c",
        mint=None,
        details={"null_fields": ["mint"]},
    )


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "0w"),
        (1, "1ms"),
        (1_500, "1500ms"),
        (90_000, "90s"),
        (5_400_000, "90m"),
        (86_400_000, "1d"),
        (1_209_600_000, "2w"),
    ],
)
def test_format_duration_uses_the_largest_unit_that_divides(ms, text):
    assert format_duration_ms(ms) == text
    assert parse_duration_ms(text) == ms


def test_units_are_largest_first_and_every_unit_parses():
    sizes = list(UNIT_MS.values())
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] == 1
    for unit, size in UNIT_MS.items():
        assert parse_duration_ms(f"3{unit}") == 3 * size

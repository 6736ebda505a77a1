"""cf-aig-metadata parsing: a JSON object of at most five scalar entries."""

from __future__ import annotations

import pytest

from services.policy.errors import InvalidRequestError
from services.policy.identity import parse_metadata


def test_metadata_scalars_become_text() -> None:
    metadata = parse_metadata('{"user": "ann", "n": 3, "ok": true}')

    assert metadata == {"user": "ann", "n": "3", "ok": "true"}


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("[1, 2]", "expected a JSON object"),
        ("{not json", "expected a JSON object"),
        ('{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6}', "at most 5"),
        ('{"user": {"id": 1}}', "string, number or boolean"),
        ('{"user": "a\\u0000b"}', "control character"),
        ('{"user": "line\\nbreak"}', "control character"),
    ],
)
def test_metadata_rejects_invalid(header: str, reason: str) -> None:
    with pytest.raises(InvalidRequestError, match=reason):
        parse_metadata(header)

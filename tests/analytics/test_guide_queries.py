"""Every SQL example in docs/analytics.md runs against a migrated database."""

from __future__ import annotations

import re
from pathlib import Path

from tests.analytics.conftest import ChdevServer, ServiceFactory
from tests.analytics.events import random_events
from tests.analytics.test_analytics_service import send_all

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "analytics.md"


def guide_queries() -> list[str]:
    text = GUIDE.read_text(encoding="utf-8")
    return [
        block.strip().rstrip(";")
        for block in re.findall(r"```sql\n(.*?)```", text, re.S)
    ]


def test_guide_has_the_required_examples() -> None:
    joined = "\n".join(guide_queries())
    for needle in (
        "user_id",
        "quantileExact(0.95)",
        "toDate(",
        "saved_cost_usd_micros",
    ):
        assert needle in joined


async def test_every_guide_query_runs(
    chdev: ChdevServer, make_service: ServiceFactory, database: str
) -> None:
    from gateway.analytics.v1 import analytics_pb2

    service = await make_service(chdev.url(database))
    events = random_events(20, seed=3)
    await send_all(service, [analytics_pb2.IngestRequest(sequence=1, events=events)])
    queries = guide_queries()
    assert len(queries) >= 10
    for sql in queries:
        await service.sink.query(sql)

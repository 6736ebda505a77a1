"""The CheckStream RPC: Check and Settle for the ingress on one long-lived stream.

A unary gRPC call costs about twice the CPU of one message each way on an
open stream, and the ingress makes one Check and one Settle per call. On
CheckStream each item runs in its own task, as a unary call would, and its
result goes back as soon as it is ready. Results that are ready together
share one message. A denial travels as the serialized ``google.rpc.Status``
(code, message, details) that the unary Check would have ended with, so the
ingress maps both paths through the same table.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable

import grpc
from google.protobuf import any_pb2
from google.rpc import status_pb2

from gateway.policy.v1 import policy_pb2
from services.common.logs import request_id_var
from services.policy.errors import LimitExceededError, PolicyError, status_code_for
from services.policy.limit_decisions import rich_status
from services.policy.metrics import PolicyMetrics

logger = logging.getLogger(__name__)

CheckFn = Callable[[policy_pb2.CheckRequest], Awaitable[policy_pb2.CheckResponse]]
SettleFn = Callable[[policy_pb2.SettleRequest], Awaitable[None]]


def error_status(exc: Exception) -> status_pb2.Status:
    """Return the google.rpc.Status that Check ends with for ``exc``.

    A denial after the caller is known carries it (identity and metadata) as
    a detail, so that the ingress records the denied call under its user.
    """
    if isinstance(exc, PolicyError):
        if isinstance(exc, LimitExceededError):
            status = rich_status(exc)
        else:
            status = status_pb2.Status(
                code=status_code_for(exc).value[0], message=str(exc)
            )
        if exc.caller is not None:
            caller = any_pb2.Any()
            caller.Pack(exc.caller)
            status.details.append(caller)
        return status
    return status_pb2.Status(
        code=grpc.StatusCode.UNKNOWN.value[0],
        message=f"unexpected error in the policy service: {type(exc).__name__}",
    )


class CheckStreamHandler:
    """Serves one CheckStream: reads items, runs them, writes their results."""

    def __init__(
        self, check: CheckFn, settle: SettleFn, metrics: PolicyMetrics | None
    ) -> None:
        self._check = check
        self._settle = settle
        self._metrics = metrics
        self._results: list[policy_pb2.CheckStreamResult] = []
        self._ready = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._reading = True

    async def serve(
        self, requests: AsyncIterable[policy_pb2.CheckStreamRequest]
    ) -> AsyncIterator[policy_pb2.CheckStreamResponse]:
        reader = asyncio.create_task(self._read(requests), name="check-stream-read")
        try:
            while True:
                await self._ready.wait()
                # Let the other items that finish in this loop iteration
                # join the message.
                await asyncio.sleep(0)
                self._ready.clear()
                if self._results:
                    results, self._results = self._results, []
                    yield policy_pb2.CheckStreamResponse(results=results)
                if not self._reading and not self._tasks and not self._results:
                    break
        finally:
            reader.cancel()
            for task in list(self._tasks):
                task.cancel()

    async def _read(
        self, requests: AsyncIterable[policy_pb2.CheckStreamRequest]
    ) -> None:
        try:
            async for message in requests:
                for item in message.items:
                    task = asyncio.create_task(self._run(item))
                    self._tasks.add(task)
                    task.add_done_callback(self._done)
        finally:
            self._reading = False
            self._ready.set()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not self._tasks:
            self._ready.set()

    async def _run(self, item: policy_pb2.CheckStreamItem) -> None:
        kind = item.WhichOneof("kind")
        started = time.perf_counter()
        if kind == "settle":
            request_id_var.set(item.settle.request_id or "-")
            code = "OK"
            try:
                await self._settle(item.settle)
            except PolicyError as exc:
                code = status_code_for(exc).name
                logger.warning("settle on the stream failed: %s", exc)
            self._record("Settle", code, started)
            return
        if kind != "check":
            logger.warning("CheckStream item %d carries nothing; ignored", item.id)
            return
        request_id_var.set(item.check.request_id or "-")
        try:
            response = await self._check(item.check)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status
            if not isinstance(exc, PolicyError):
                logger.exception("Check on the stream failed unexpectedly")
            status = error_status(exc)
            self._record("Check", _code_name(status.code), started)
            result = policy_pb2.CheckStreamResult(
                id=item.id, status=status.SerializeToString()
            )
        else:
            self._record("Check", "OK", started)
            result = policy_pb2.CheckStreamResult(id=item.id, response=response)
        self._results.append(result)
        self._ready.set()

    def _record(self, method: str, code: str, started: float) -> None:
        if self._metrics is not None:
            self._metrics.record(method, code, time.perf_counter() - started)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _code_name(value: int) -> str:
    return _CODES.get(value, grpc.StatusCode.UNKNOWN).name

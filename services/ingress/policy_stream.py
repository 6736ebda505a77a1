"""Check and Settle on one long-lived ``PolicyService.CheckStream``.

A unary gRPC call costs the ingress and the policy service about twice the
CPU of one message each way on an open stream. The ingress therefore keeps
one stream open and multiplexes every Check and Settle over it by item id. Items
queued while a message is being written go out together in the next one.

Decisions (also in docs/performance.md):

- Deadline: each Check waits at most the policy timeout for its result; on
  timeout it fails with DEADLINE_EXCEEDED, which the gateway's fail mode
  handles exactly as a unary deadline.
- A denial arrives as a serialized ``google.rpc.Status`` and is raised as a
  ``grpc.aio.AioRpcError`` with the same code, message and
  ``grpc-status-details-bin`` trailer that a unary Check carries, so
  ``policy_outcomes`` maps both paths through one table.
- Breakage: when the stream breaks, the Checks in flight on it fail with
  UNAVAILABLE and follow the fail mode, as unary calls in flight on a dying
  server do. They are not retried: the service may already have reserved
  their limits. While the stream is down (until it reconnects, with
  backoff), :meth:`PolicyClient.check` uses the unary Check instead.
- Settle is fire and forget on the stream, and not urgent: a Settle waits
  up to ``SETTLE_DELAY_S`` to ride along with the next Check, so that at low
  rates a call costs one message each way, not two. Settles still queued when it
  breaks are handed back to be sent as unary calls. NOTE: a Settle written
  just before the break may be lost; the reservation then stays counted
  until its window ends and the concurrency lease expires, as with a lost
  unary Settle.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc
from google.rpc import status_pb2
from grpc.aio import Metadata

from gateway.policy.v1 import policy_pb2, policy_pb2_grpc

logger = logging.getLogger(__name__)

RECONNECT_MIN_S = 0.05
RECONNECT_MAX_S = 2.0
# Maximum wait of a queued Settle for a Check to share its message.
SETTLE_DELAY_S = 0.05
STATUS_DETAILS_KEY = "grpc-status-details-bin"
_CODES = {code.value[0]: code for code in grpc.StatusCode}


def status_error(status_bytes: bytes) -> grpc.aio.AioRpcError:
    """Rebuild the AioRpcError of a unary Check from its google.rpc.Status."""
    status = status_pb2.Status.FromString(status_bytes)
    code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    return grpc.aio.AioRpcError(
        code,
        Metadata(),
        Metadata((STATUS_DETAILS_KEY, status_bytes)),
        details=status.message,
    )


def stream_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, Metadata(), Metadata(), details=details)


class StreamDown(Exception):
    """The stream is not open; the caller uses the unary RPC."""


class PolicyStream:
    def __init__(
        self,
        stub: policy_pb2_grpc.PolicyServiceStub,
        *,
        timeout_s: float,
        resend_settle: Callable[[policy_pb2.SettleRequest], None],
    ) -> None:
        self._stub = stub
        self._timeout_s = timeout_s
        self._resend_settle = resend_settle
        self._call: grpc.aio.StreamStreamCall | None = None
        self._futures: dict[int, asyncio.Future[policy_pb2.CheckStreamResult]] = {}
        self._outbox: list[policy_pb2.CheckStreamItem] = []
        self._wake = asyncio.Event()
        self._flushed = asyncio.Event()
        self._flushed.set()
        self._next_id = 0
        self._task: asyncio.Task[None] | None = None
        self._settle_timer: asyncio.TimerHandle | None = None

    @property
    def is_open(self) -> bool:
        return self._call is not None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="policy-stream")

    async def close(self, timeout_s: float) -> None:
        """Send what is queued (at most ``timeout_s``), then end the stream."""
        if self._call is not None and self._outbox:
            self._wake.set()
            try:
                await asyncio.wait_for(self._flushed.wait(), timeout_s)
            except TimeoutError:
                logger.warning(
                    "policy stream closed with %d items not sent", len(self._outbox)
                )
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def check(self, request: policy_pb2.CheckRequest) -> policy_pb2.CheckResponse:
        """Check on the stream; raises StreamDown, or AioRpcError as unary does."""
        if self._call is None:
            raise StreamDown
        self._next_id += 1
        item_id = self._next_id
        future: asyncio.Future[policy_pb2.CheckStreamResult] = (
            asyncio.get_running_loop().create_future()
        )
        self._futures[item_id] = future
        self._queue(policy_pb2.CheckStreamItem(id=item_id, check=request))
        try:
            result = await asyncio.wait_for(future, self._timeout_s)
        except TimeoutError:
            raise stream_error(
                grpc.StatusCode.DEADLINE_EXCEEDED, "policy check deadline exceeded"
            ) from None
        finally:
            self._futures.pop(item_id, None)
        if result.WhichOneof("outcome") == "response":
            return result.response
        raise status_error(result.status)

    def settle(self, request: policy_pb2.SettleRequest) -> bool:
        """Queue a Settle on the stream; False when it is down."""
        if self._call is None:
            return False
        self._outbox.append(policy_pb2.CheckStreamItem(settle=request))
        self._flushed.clear()
        if self._settle_timer is None:
            self._settle_timer = asyncio.get_running_loop().call_later(
                SETTLE_DELAY_S, self._wake.set
            )
        return True

    # ------------------------------------------------------------ internals

    def _queue(self, item: policy_pb2.CheckStreamItem) -> None:
        self._outbox.append(item)
        self._flushed.clear()
        self._wake.set()

    async def _run(self) -> None:
        delay = RECONNECT_MIN_S
        while True:
            call = self._stub.CheckStream()
            self._call = call
            writer = asyncio.create_task(self._write(call), name="policy-stream-write")
            try:
                got_any = await self._read(call)
                if got_any:
                    delay = RECONNECT_MIN_S
                reason = "ended by the policy service"
            except grpc.aio.AioRpcError as exc:
                reason = f"{exc.code().name}: {exc.details()}"
            finally:
                self._call = None
                writer.cancel()
                call.cancel()
            self._fail_in_flight(reason)
            logger.warning(
                "policy stream broke (%s); unary calls until it reconnects in %.2f s",
                reason,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    async def _read(self, call: grpc.aio.StreamStreamCall) -> bool:
        got_any = False
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                return got_any
            got_any = True
            futures = self._futures
            for result in message.results:
                future = futures.get(result.id)
                if future is not None and not future.done():
                    future.set_result(result)

    async def _write(self, call: grpc.aio.StreamStreamCall) -> None:
        while True:
            await self._wake.wait()
            # Let the other calls of this loop iteration queue their items,
            # so that they share the message.
            await asyncio.sleep(0)
            self._wake.clear()
            if self._settle_timer is not None:
                self._settle_timer.cancel()
                self._settle_timer = None
            if not self._outbox:
                self._flushed.set()
                continue
            items, self._outbox = self._outbox, []
            await call.write(policy_pb2.CheckStreamRequest(items=items))
            if not self._outbox:
                self._flushed.set()

    def _fail_in_flight(self, reason: str) -> None:
        error = stream_error(
            grpc.StatusCode.UNAVAILABLE, f"policy stream broke: {reason}"
        )
        for future in self._futures.values():
            if not future.done():
                future.set_exception(error)
        items, self._outbox = self._outbox, []
        self._flushed.set()
        if self._settle_timer is not None:
            self._settle_timer.cancel()
            self._settle_timer = None
        for item in items:
            if item.WhichOneof("kind") == "settle":
                self._resend_settle(item.settle)

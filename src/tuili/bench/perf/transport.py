"""The two ways `tuili perf` talks to a server, each sending pre-encoded bytes and checking only the
status of the answer, so the client spends as little CPU per request as the protocol allows.

HTTP: HTTP/1.1 keep-alive connections on asyncio streams (one request in flight per connection, as
perf_analyzer's HTTP client does). gRPC: one ``grpc.aio`` channel, the ``ModelInfer`` method called
with the request's bytes and no (de)serialization on the client.
"""
from __future__ import annotations

import asyncio

from tuili.errors import TuiliError


class RequestFailed(TuiliError):
    """The server answered a request with an error."""


class HttpConnection:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def send(self, request: bytes) -> bytes:
        """Send one whole request; returns the response body; raises RequestFailed on a non-200."""
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        try:
            self._writer.write(request)
            head = await self._reader.readuntil(b"\r\n\r\n")
            status, length, chunked, close = _parse_head(head)
            body = await (_read_chunked(self._reader) if chunked else self._reader.readexactly(length))
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            await self.close()
            raise
        if close:
            await self.close()
        if status != 200:
            raise RequestFailed(f"HTTP {status}: {body[:300].decode(errors='replace')}")
        return body

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._reader = self._writer = None


def _parse_head(head: bytes) -> tuple[int, int, bool, bool]:
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, chunked, close = 0, False, False
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        key = key.strip().lower()
        if key == b"content-length":
            length = int(value)
        elif key == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif key == b"connection":
            close = value.strip().lower() == b"close"
    return status, length, chunked, close


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        data = await reader.readexactly(size + 2)
        if size == 0:
            return b"".join(parts)
        parts.append(data[:-2])


class GrpcClient:
    def __init__(self, url: str):
        import grpc

        self._grpc = grpc
        opts = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        self._channel = grpc.aio.insecure_channel(url, options=opts)
        self._infer = self._channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        self.open_stream = self._channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")

    async def send(self, request: bytes) -> bytes:
        try:
            return await self._infer(request)
        except self._grpc.aio.AioRpcError as e:
            raise RequestFailed(f"gRPC {e.code().name}: {e.details()}") from None

    async def close(self) -> None:
        await self._channel.close()


class GrpcStream:
    """One ModelStreamInfer stream, one request in flight: ``send`` returns once the request's final
    response arrived (``triton_final_response``; a response without the flag is final, as for a
    model that is not decoupled)."""

    def __init__(self, client: GrpcClient):
        import grpc
        from tritonclient.grpc import service_pb2

        self._client, self._call = client, None
        self._eof, self._rpc_error, self._parse = grpc.aio.EOF, grpc.aio.AioRpcError, service_pb2.ModelStreamInferResponse.FromString

    async def send(self, request: bytes):
        """Returns the request's first response that carries outputs (an ``inference.ModelInferResponse``),
        or None when none did."""
        first = None
        if self._call is None:
            self._call = self._client.open_stream()
        try:
            await self._call.write(request)
            while True:
                raw = await self._call.read()
                if raw is self._eof:
                    self._call = None
                    raise RequestFailed("the server closed the stream")
                resp = self._parse(raw)
                if resp.error_message:
                    raise RequestFailed(f"gRPC stream: {resp.error_message}")
                if first is None and resp.infer_response.outputs:
                    first = resp.infer_response
                final = resp.infer_response.parameters.get("triton_final_response")
                if final is None or final.bool_param:
                    return first
        except self._rpc_error as e:
            self._call = None
            raise RequestFailed(f"gRPC {e.code().name}: {e.details()}") from None

    async def close(self) -> None:
        if self._call is not None:
            await self._call.done_writing()
            self._call = None

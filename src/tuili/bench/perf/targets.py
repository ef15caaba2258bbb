"""A server as `tuili perf` sees it: model metadata and config, statistics, shared-memory
registration, and a sender of pre-encoded inference requests — over HTTP or gRPC."""
from __future__ import annotations

import json
from collections.abc import Iterator
from multiprocessing import shared_memory

import numpy as np

from tuili import dtypes
from tuili.bench.perf.payload import ModelInputs, Payload, encode_grpc, encode_http
from tuili.bench.perf.transport import GrpcClient, GrpcStream, HttpConnection, RequestFailed
from tuili.errors import InvalidInputError


def split_url(url: str, default_port: int) -> tuple[str, int]:
    host, _, port = url.removeprefix("http://").rstrip("/").rpartition(":")
    if not host:
        return port or "127.0.0.1", default_port
    try:
        return host, int(port)
    except ValueError:
        raise InvalidInputError(f"-u {url!r}: expected HOST:PORT") from None


class HttpTarget:
    protocol = "http"

    def __init__(self, url: str):
        self.host, self.port = split_url(url, 8000)
        self._control = HttpConnection(self.host, self.port)

    async def _call(self, method: str, path: str, doc: dict | None = None) -> dict:
        body = b"" if doc is None else json.dumps(doc).encode()
        req = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(body)}\r\n"
               f"Content-Type: application/json\r\n\r\n").encode() + body
        out = await self._control.send(req)
        return json.loads(out) if out else {}

    async def model(self, name: str, version: str) -> ModelInputs:
        base = f"/v2/models/{name}" + (f"/versions/{version}" if version else "")
        return ModelInputs.from_server(await self._call("GET", base), await self._call("GET", base + "/config"), version)

    async def stats(self, name: str, version: str) -> dict | None:
        doc = await self._call("GET", f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/stats")
        return _pick_stats(doc.get("model_stats", []), version)

    async def register_shm(self, region: str, key: str, size: int) -> None:
        await self._call("POST", f"/v2/systemsharedmemory/region/{region}/register", {"key": key, "offset": 0, "byte_size": size})

    async def unregister_shm(self, region: str) -> None:
        await self._call("POST", f"/v2/systemsharedmemory/region/{region}/unregister")

    def encode(self, p: Payload, params: dict | None = None) -> bytes:
        return encode_http(p, f"{self.host}:{self.port}", params)

    def sender(self, requests: Iterator[bytes]):
        conn = HttpConnection(self.host, self.port)
        return lambda: conn.send(next(requests))

    async def output_types(self, request: bytes, streaming: bool = False) -> dict[str, tuple[str, list[int]]]:
        body = await HttpConnection(self.host, self.port).send(request)
        header, _ = json.JSONDecoder().raw_decode(body.decode("latin-1"))
        return {o["name"]: (o["datatype"], o["shape"]) for o in header["outputs"]}

    async def close(self) -> None:
        await self._control.close()


class GrpcTarget:
    protocol = "grpc"

    def __init__(self, url: str):
        from tritonclient.grpc import aio

        host, port = split_url(url, 8001)
        self.url = f"{host}:{port}"
        self._client = aio.InferenceServerClient(self.url)
        self._infer = GrpcClient(self.url)

    async def model(self, name: str, version: str) -> ModelInputs:
        from tritonclient.utils import InferenceServerException
        try:
            meta = await self._client.get_model_metadata(name, version, as_json=True)
            config = (await self._client.get_model_config(name, version, as_json=True))["config"]
        except InferenceServerException as e:
            raise RequestFailed(str(e)) from None
        return ModelInputs.from_server(meta, config, version)

    async def stats(self, name: str, version: str) -> dict | None:
        doc = await self._client.get_inference_statistics(name, version, as_json=True)
        return _pick_stats(doc.get("model_stats", []), version)

    async def register_shm(self, region: str, key: str, size: int) -> None:
        await self._client.register_system_shared_memory(region, key, size)

    async def unregister_shm(self, region: str) -> None:
        await self._client.unregister_system_shared_memory(region)

    def encode(self, p: Payload, params: dict | None = None) -> bytes:
        return encode_grpc(p, params)

    def sender(self, requests: Iterator[bytes]):
        return lambda: self._infer.send(next(requests))

    def stream_sender(self, requests: Iterator[bytes]):
        """Requests over one ModelStreamInfer stream (opened on first use); a send completes with
        the request's final response (decoupled models may send several)."""
        stream = GrpcStream(self._infer)
        return lambda: stream.send(next(requests))

    async def output_types(self, request: bytes, streaming: bool = False) -> dict[str, tuple[str, list[int]]]:
        from tritonclient.grpc import service_pb2

        if streaming:
            stream = GrpcStream(self._infer)
            try:
                resp = await stream.send(request)
            finally:
                await stream.close()
        else:
            resp = service_pb2.ModelInferResponse.FromString(await self._infer.send(request))
        return {o.name: (o.datatype, list(o.shape)) for o in resp.outputs} if resp is not None else {}

    async def close(self) -> None:
        await self._client.close()
        await self._infer.close()


_DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


def _pick_stats(entries: list[dict], version: str) -> dict | None:
    """The statistics of ``version``, or the sum over the versions listed when none is named (the
    server chooses which serves). gRPC's JSON leaves out zero counters and renders int64 as strings."""
    chosen = [e for e in entries if not version or str(e.get("version")) == version]
    if not chosen:
        return None
    total = {"inference_count": 0, "execution_count": 0, "inference_stats": {k: {"count": 0, "ns": 0} for k in _DURATIONS}}
    for e in chosen:
        for k in ("inference_count", "execution_count"):
            total[k] += int(e.get(k, 0))
        for k in _DURATIONS:
            d = e.get("inference_stats", {}).get(k, {})
            total["inference_stats"][k]["count"] += int(d.get("count", 0))
            total["inference_stats"][k]["ns"] += int(d.get("ns", 0))
    return total


class SystemShm:
    """The payload's inputs and outputs placed in system shared-memory regions of this process
    (created, registered with the server, and removed again by ``close``)."""

    def __init__(self, target, prefix: str):
        self.target, self.prefix = target, prefix
        self.blocks: dict[str, shared_memory.SharedMemory] = {}

    async def place(self, p: Payload, outputs: dict[str, tuple[str, list[int]]]) -> None:
        sizes = {name: a.nbytes for name, a in p.tensors.items()}
        for name, (datatype, shape) in outputs.items():
            dt = dtypes.from_v2(datatype)
            if dt.v2 == "BYTES":
                raise InvalidInputError(f"output {name!r} is BYTES (variable size): it cannot go to shared memory")
            sizes[name] = int(np.prod(shape)) * dt.to_numpy().itemsize
        for i, (name, size) in enumerate(sizes.items()):
            if name in p.tensors and p.tensors[name].dtype == object:
                raise InvalidInputError(f"input {name!r} is BYTES: use --shared-memory none for this model")
            region = f"{self.prefix}_{i}"
            block = shared_memory.SharedMemory(name=region, create=True, size=max(size, 1))
            self.blocks[region] = block
            if name in p.tensors:
                block.buf[:size] = p.tensors[name].tobytes()
            await self.target.register_shm(region, region, size)
            p.shm[name] = (region, size)

    async def close(self) -> None:
        for region, block in self.blocks.items():
            try:
                await self.target.unregister_shm(region)
            finally:
                block.close()
                block.unlink()
        self.blocks.clear()

"""HTTP adapter: the KServe V2 REST protocol (Triton's flavour) over starlette, served by uvicorn.

Endpoints: health (live/ready), server metadata, model metadata / ready / config, infer (JSON
tensors and the binary tensor data extension, ``Inference-Header-Content-Length``), the
repository extension (index/load/unload), the statistics, logging and system shared-memory
extensions (CUDA shared memory is refused: no GPU) and, inside infer, the classification
extension. A client that disconnects while its request waits takes the request out of the queue
(``infer_unless_disconnected``). Every body is read by ``read_body``: within a time limit,
within a size limit, and gzip / deflate bodies inflated in a thread with the size limit enforced
while inflating (a small bomb cannot blow up memory or stall the event loop). Errors become ``{"error": "..."}`` with the status of serve.errors' table, answered by
starlette exception handlers (and by the one try/except of the infer fast path).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import zlib

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tuili.errors import InvalidInputError, TuiliError
from tuili.serve.errors import RequestTimeoutError, RequestTooLargeError, clip, log_failure, message_of, status_of
from tuili.serve.generate import generate_request, generate_response, sse_event
from tuili.serve.shm import NO_GPU, in_shared_memory
from tuili.serve.types import (
    InferInput,
    InferRequest,
    InferResponse,
    RequestedOutput,
    deserialize_bytes_tensor,
    serialize_bytes_tensor,
)
from tuili.serve.validation import check_shape, input_dtype

log = logging.getLogger(__name__)

HEADER_LEN = b"inference-header-content-length"
DEFAULT_MAX_BODY = 64 * 1024 * 1024
DEFAULT_BODY_TIMEOUT = 60.0
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def json_response(obj, status: int = 200) -> Response:
    return Response(_dumps(obj).encode(), status_code=status, media_type="application/json")


def error_response(exc: BaseException) -> Response:
    """The V2 error body of ``exc`` with the HTTP status serve.errors gives its class. A body left
    unread (too large, too slow) closes the connection: what is still coming is not a request."""
    status = status_of(exc)
    r = json_response({"error": message_of(exc)}, status.http)
    if status.retry_after is not None:
        r.headers["retry-after"] = str(status.retry_after)
    if isinstance(exc, (RequestTooLargeError, RequestTimeoutError)):
        r.headers["connection"] = "close"
    return r


def _header(scope, name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k == name:
            return v.decode("latin-1")
    return None


async def read_body(scope, receive, limit: int, timeout: float = DEFAULT_BODY_TIMEOUT) -> bytes:
    """The request body, decompressed (Content-Encoding gzip / deflate); RequestTooLargeError over
    ``limit`` bytes (sent or inflated), RequestTimeoutError when it takes longer than ``timeout`` s."""
    declared = _header(scope, b"content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise InvalidInputError(f"Content-Length header {clip(repr(declared))} is not an integer") from None
        if n > limit:
            raise RequestTooLargeError(f"request body of {n} bytes is {_too_large(limit)}")
    try:
        async with asyncio.timeout(timeout):
            body = await _receive_all(receive, limit)
    except TimeoutError:
        raise RequestTimeoutError(f"the request body did not arrive within {timeout:g} s; send it at once "
                                  f"(the server's --body-timeout-secs)") from None
    encoding = _header(scope, b"content-encoding")
    if encoding and encoding != "identity" and body:
        if encoding not in ("gzip", "deflate"):
            raise InvalidInputError(f"unsupported Content-Encoding {clip(repr(encoding))}; use gzip, deflate or identity")
        body = await asyncio.to_thread(inflate, body, encoding, limit)
    return body


def _too_large(limit: int) -> str:
    return f"over the limit of {limit} bytes; send less data per request or raise --max-body-bytes"


async def _receive_all(receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise InvalidInputError("client disconnected while sending the request")
        chunk = msg.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise RequestTooLargeError(f"request body is {_too_large(limit)}")
            chunks.append(chunk)
        if not msg.get("more_body"):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def inflate(data: bytes, encoding: str, limit: int) -> bytes:
    """``data`` decompressed, stopping as soon as the output passes ``limit`` bytes (blocking: run
    it in a thread)."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as e:
        raise InvalidInputError(f"request body is not valid {encoding} data: {e}") from None
    if len(out) > limit:
        raise RequestTooLargeError(f"decompressed request body is {_too_large(limit)}")
    if not d.eof:
        raise InvalidInputError(f"request body is not valid {encoding} data: the compressed stream is truncated")
    if d.unused_data:
        raise InvalidInputError(f"request body holds {len(d.unused_data)} bytes after the end of its {encoding} stream")
    return out


def _load_json(data, what: str) -> dict:
    if not data:
        return {}
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidInputError(f"malformed JSON in the {what}: {e}") from None
    except RecursionError:  # the C decoder's own bound on nesting (about 1000 levels)
        raise InvalidInputError(f"the JSON of the {what} is nested too deep") from None
    if not isinstance(obj, dict):
        raise InvalidInputError(f"the {what} must be a JSON object, got {type(obj).__name__}")
    return obj


def _flag(doc: dict, key: str, what: str) -> bool:
    v = doc.get(key, False)
    if not isinstance(v, bool):
        raise InvalidInputError(f"{key!r} of the {what} must be true or false, got {clip(repr(v))}")
    return v


def _logged(scope, send):
    """``send`` that logs the status of the response (verbose logging)."""
    async def logging_send(message):
        if message["type"] == "http.response.start":
            log.debug("HTTP %s %s -> %d", scope["method"], clip(scope["path"]), message["status"])
        await send(message)

    return logging_send


def _parameters(doc: dict, what: str) -> dict:
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInputError(f"\"parameters\" of the {what} must be a JSON object")
    return params


def _base64_param(key: str, value) -> bytes:
    """The content of a ``file:<path>`` load parameter (base64, as tritonclient sends it)."""
    try:
        return base64.b64decode(value, validate=True)
    except (TypeError, ValueError, binascii.Error):
        raise InvalidInputError(f"load parameter {key!r} must be the file's content in base64") from None


# --------------------------------------------------------------------------- request decoding
def parse_infer_request(model: str, version: str, body: bytes, header_len: str | None) -> tuple[InferRequest, bool]:
    """Returns the request and whether outputs default to binary (``binary_data_output``)."""
    if header_len is not None:
        try:
            hl = int(header_len)
        except ValueError:
            raise InvalidInputError(f"Inference-Header-Content-Length {clip(repr(header_len))} is not an integer") from None
        if not 0 <= hl <= len(body):
            raise InvalidInputError(f"Inference-Header-Content-Length is {hl} but the body has only {len(body)} bytes")
        mv = memoryview(body)
        header, binary = mv[:hl], mv[hl:]
        doc = _load_json(bytes(header), "inference request header")
    else:
        doc = _load_json(body, "inference request")
        binary = memoryview(b"")
    inputs_doc = doc.get("inputs")
    if not isinstance(inputs_doc, list):
        raise InvalidInputError("inference request needs \"inputs\": a list of {name, shape, datatype, data}")
    rid = doc.get("id", "")
    if not isinstance(rid, str):
        raise InvalidInputError(f"\"id\" of the inference request must be a string, got {clip(repr(rid))}")
    params = _parameters(doc, "request")
    inputs = []
    offset = 0
    for i, d in enumerate(inputs_doc):
        if not isinstance(d, dict):
            raise InvalidInputError(f"inputs[{i}] must be a JSON object")
        name = d.get("name")
        datatype = d.get("datatype")
        if not isinstance(name, str):
            raise InvalidInputError(f"inputs[{i}] needs a string \"name\"")
        what = clip(repr(name))
        if not isinstance(datatype, str):
            raise InvalidInputError(f"input {what} needs a string \"datatype\" such as \"FP32\"")
        dt = input_dtype(clip(name), datatype)
        shape = d.get("shape")
        count = check_shape(name, shape, 8 if datatype == "BYTES" else max(1, dt.bits // 8))
        ip = _parameters(d, f"input {what}")
        if in_shared_memory(ip):  # read from its region by the core
            if "data" in d or "binary_data_size" in ip:
                raise InvalidInputError(f"input {what} is in a shared memory region and also carries data; send one of them")
            arr = None
        elif "binary_data_size" in ip:
            size = ip["binary_data_size"]
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInputError(f"binary_data_size of input {what} must be a non-negative integer")
            if offset + size > len(binary):
                raise InvalidInputError(
                    f"input {what} declares binary_data_size {size} but only {len(binary) - offset} bytes of binary data remain"
                )
            chunk = binary[offset:offset + size]
            offset += size
            if datatype == "BYTES":
                arr = deserialize_bytes_tensor(chunk, count).reshape(shape)
            else:
                want = count * (dt.bits // 8)
                if size != want:
                    raise InvalidInputError(
                        f"input {what}: binary data has {size} bytes but shape {shape} of {datatype} needs {want}"
                    )
                arr = np.frombuffer(chunk, dtype=dt.numpy).reshape(shape)
        else:
            if "data" not in d:
                raise InvalidInputError(f"input {what} has neither \"data\" nor a binary_data_size parameter")
            arr = _json_tensor(what, d["data"], datatype, dt.numpy, shape, count)
        inputs.append(InferInput(name, datatype, shape, arr, ip))
    if offset != len(binary):
        raise InvalidInputError(
            f"the request carries {len(binary) - offset} bytes of binary data that no input claims (binary_data_size sums to {offset})"
        )
    outputs = None
    out_doc = doc.get("outputs")
    if out_doc is not None:
        if not isinstance(out_doc, list):
            raise InvalidInputError("\"outputs\" must be a list of {name, parameters}")
        outputs = []
        for i, o in enumerate(out_doc):
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise InvalidInputError(f"outputs[{i}] needs a string \"name\"")
            outputs.append(RequestedOutput(o["name"], _parameters(o, f"output {clip(repr(o['name']))}")))
    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise InvalidInputError(
            f"parameter 'binary_data_output' of the request must be true or false, got {clip(repr(binary_default))}")
    return InferRequest(model, version, rid, inputs, outputs, params), binary_default


def _json_tensor(what, data, datatype, dtype, shape, count) -> np.ndarray:
    """The ``data`` of a JSON input (``what``: its quoted name), nested at most as deep as its shape."""
    if datatype in ("BYTES", "BOOL"):
        flat = _flatten(data, len(shape), what) if isinstance(data, list) else [data]
        if len(flat) != count:
            raise InvalidInputError(f"input {what} has {len(flat)} elements but shape {shape} needs {count}")
        if datatype == "BOOL":
            if not all(isinstance(x, bool) for x in flat):
                raise InvalidInputError(f"input {what} is BOOL: elements must be true/false")
            return np.array(flat, dtype=dtype).reshape(shape)
        arr = np.empty(count, dtype=object)
        for j, x in enumerate(flat):
            if not isinstance(x, str):
                raise InvalidInputError(f"input {what} is BYTES: elements must be strings, element {j} is {type(x).__name__}")
            arr[j] = x.encode("utf-8", "surrogatepass")
        return arr.reshape(shape)
    try:
        arr = np.array(data, dtype=dtype)
        if datatype.startswith(("INT", "UINT")) and isinstance(data, list):
            if any(isinstance(x, (float, bool)) for x in _flatten(data, len(shape), what)):
                raise InvalidInputError(f"input {what} is {datatype}: elements must be integers")
    except InvalidInputError:
        raise
    except (ValueError, TypeError, OverflowError) as e:
        raise InvalidInputError(f"input {what}: \"data\" is not a valid {datatype} array: {clip(str(e))}") from None
    if arr.size != count:
        raise InvalidInputError(f"input {what} has {arr.size} elements but shape {shape} needs {count}")
    return arr.reshape(shape)


def _flatten(data: list, depth: int, what: str) -> list:
    """The scalars of nested lists, row-major; the nesting may be at most ``depth`` deep."""
    if not data or not isinstance(data[0], list):
        if any(isinstance(x, list) for x in data):
            raise InvalidInputError(f"\"data\" of input {what} mixes nested lists and scalars")
        return data
    if depth <= 1:
        raise InvalidInputError(f"\"data\" of input {what} is nested deeper than its shape")
    out = []
    for x in data:
        if not isinstance(x, list):
            raise InvalidInputError(f"\"data\" of input {what} mixes nested lists and scalars")
        out.extend(_flatten(x, depth - 1, what))
    return out


# --------------------------------------------------------------------------- response encoding
def encode_infer_response(resp: InferResponse, req: InferRequest, binary_default: bool) -> Response:
    want_binary = {}
    if req.outputs:
        for o in req.outputs:
            want_binary[o.name] = bool(o.parameters.get("binary_data", binary_default))
    outputs, buffers = [], []
    for out in resp.outputs:
        arr = out.data
        d = {"name": out.name, "datatype": out.datatype, "shape": out.shape}
        if in_shared_memory(out.parameters):
            # written into the client's region: no data and, as Triton, no parameters (Triton's C++
            # client reads a "parameters" object of an output as binary data and needs binary_data_size)
            pass
        elif want_binary.get(out.name, binary_default):
            if out.datatype == "BYTES":
                buf = serialize_bytes_tensor(arr)
            else:
                buf = np.ascontiguousarray(arr).data.cast("B") if arr.size else b""
            d["parameters"] = {"binary_data_size": len(buf)}
            buffers.append(buf)
        else:
            if out.datatype == "BYTES":
                d["data"] = [x.decode("utf-8", "replace") if isinstance(x, (bytes, bytearray)) else str(x) for x in arr.ravel()]
            elif out.datatype in ("FP16", "BF16"):
                d["data"] = arr.astype(np.float32).ravel().tolist()
            else:
                d["data"] = arr.ravel().tolist()
        outputs.append(d)
    doc = {"model_name": resp.model_name, "model_version": resp.model_version}
    if resp.id:
        doc["id"] = resp.id
    if resp.parameters:
        doc["parameters"] = resp.parameters
    doc["outputs"] = outputs
    header = _dumps(doc).encode()
    if not buffers:
        return Response(header, media_type="application/json")
    body = b"".join([header, *buffers])
    return Response(body, media_type="application/octet-stream", headers={"Inference-Header-Content-Length": str(len(header))})


# --------------------------------------------------------------------------- the app
async def infer_response(core, scope, receive, limit: int, model: str, version: str,
                         timeout: float = DEFAULT_BODY_TIMEOUT) -> Response | None:
    """One inference over HTTP: body -> InferRequest -> core.infer -> V2 response; None when the
    client disconnected before the answer (there is no one to send it to)."""
    body = await read_body(scope, receive, limit, timeout)
    req, binary_default = parse_infer_request(model, version, body, _header(scope, HEADER_LEN))
    resp = await infer_unless_disconnected(core, req, receive)
    return None if resp is None else encode_infer_response(resp, req, binary_default)


async def infer_unless_disconnected(core, req: InferRequest, receive) -> InferResponse | None:
    """``core.infer(req)``, given up when the client disconnects first (None then).

    uvicorn does not cancel a handler whose client went away; it answers ``receive`` with
    ``http.disconnect``. A watcher waits for that and cancels this task, which takes a queued
    request out of its queue (the scheduler drops a request whose awaiting task is cancelled, as
    for a gRPC cancel), so it never runs."""
    task = asyncio.current_task()
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":  # the body is read: nothing else comes
            pass
        gone = True
        task.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        return await core.infer(req)
    except asyncio.CancelledError:
        if not gone:
            raise
        task.uncancel()
        log.debug("client of a request to model %r disconnected before the answer; request dropped", clip(req.model_name))
        return None
    finally:
        watcher.cancel()


def create_app(core, max_body_bytes: int = DEFAULT_MAX_BODY, body_timeout: float = DEFAULT_BODY_TIMEOUT):
    """The ASGI app of the HTTP endpoint, calling ``core`` (an InferenceServer); a body must arrive
    within ``body_timeout`` seconds and be at most ``max_body_bytes`` long (inflated)."""

    def _mv(request: Request) -> tuple[str, str]:
        p = request.path_params
        return p["model"], p.get("version", "")

    async def _body_json(request: Request, what: str) -> dict:
        return _load_json(await read_body(request.scope, request.receive, max_body_bytes, body_timeout), what)

    async def live(request: Request):
        return Response(status_code=200 if core.live() else 503)

    async def ready(request: Request):
        return Response(status_code=200 if core.ready() else 503)

    async def server_metadata(request: Request):
        return json_response(core.metadata())

    async def model_metadata(request: Request):
        return json_response(core.model_metadata(*_mv(request)))

    async def model_ready(request: Request):
        name, version = _mv(request)
        if core.model_ready(name, version):
            return Response(status_code=200)
        try:
            core.get_model(name, version)
            msg = f"model {clip(repr(name))} is not ready"
        except TuiliError as e:
            msg = message_of(e)
        return json_response({"error": msg}, 400)

    async def model_config(request: Request):
        from tuili.model_config import config_to_json

        return json_response(config_to_json(core.model_config(*_mv(request))))

    async def model_stats(request: Request):
        return json_response(core.model_statistics(*_mv(request)))

    async def all_stats(request: Request):
        return json_response(core.model_statistics())

    async def infer(request: Request):  # reached for non-POST methods only (405): FastInfer serves POST
        return await infer_response(core, request.scope, request.receive, max_body_bytes, *_mv(request), body_timeout)

    async def generate(request: Request):
        name, version = _mv(request)
        req = generate_request(name, version, core.get_model(name, version).spec, await _body_json(request, "generate request"))
        answers = []
        async for r in core.infer_stream(req):
            if r.error is not None:
                raise r.error
            if r.response is not None:
                answers.append(r.response)
        if len(answers) != 1:
            raise InvalidInputError(f"model {clip(name)!r} sent {len(answers)} responses; /generate answers with exactly "
                                    f"one: use /generate_stream")
        return json_response(generate_response(answers[0]))

    async def generate_stream(request: Request):
        name, version = _mv(request)
        req = generate_request(name, version, core.get_model(name, version).spec, await _body_json(request, "generate request"))
        responses = core.infer_stream(req)
        first = await anext(responses)  # errors before the first response are the request's status

        async def events():
            try:
                r = first
                while True:
                    if r.error is not None:
                        log_failure(r.error, f"POST {clip(request.url.path)}")
                        yield sse_event({"error": message_of(r.error)})
                    elif r.response is not None:
                        yield sse_event(generate_response(r.response))
                    r = await anext(responses, None)
                    if r is None:
                        return
            finally:  # the client went away (starlette cancels this) or the stream ended
                await responses.aclose()

        return StreamingResponse(events(), media_type="text/event-stream; charset=utf-8")

    async def repo_index(request: Request):
        doc = await _body_json(request, "repository index request")
        return json_response(core.repository_index(_flag(doc, "ready", "repository index request")))

    async def repo_load(request: Request):
        params = _parameters(await _body_json(request, "load request"), "load request")
        files = {k[len("file:"):]: _base64_param(k, v) for k, v in params.items() if k.startswith("file:")}
        config = params.get("config")
        if config is not None and not isinstance(config, str):
            if not isinstance(config, dict):
                raise InvalidInputError(f"parameter 'config' of the load request must be a JSON string or object, got {clip(repr(config))}")
            try:
                config = json.dumps(config)
            except RecursionError:
                raise InvalidInputError("parameter 'config' of the load request is nested too deep") from None
        await core.load_model(request.path_params["model"], config, files)
        return Response(status_code=200)

    async def repo_unload(request: Request):
        params = _parameters(await _body_json(request, "unload request"), "unload request")
        await core.unload_model(request.path_params["model"], _flag(params, "unload_dependents", "unload request"))
        return Response(status_code=200)

    async def logging_settings(request: Request):
        update = await _body_json(request, "log settings") if request.method == "POST" else None
        return json_response(core.log_settings(update))

    async def shm_status(request: Request):
        return json_response(core.shared_memory.status(request.path_params.get("region", "")))

    async def shm_register(request: Request):
        doc = await _body_json(request, "shared memory register request")
        core.shared_memory.register(request.path_params["region"], doc.get("key"), doc.get("offset", 0), doc.get("byte_size"))
        return Response(status_code=200)

    async def shm_unregister(request: Request):
        await read_body(request.scope, request.receive, max_body_bytes, body_timeout)  # empty; read so the connection stays usable
        core.shared_memory.unregister(request.path_params.get("region", ""))
        return Response(status_code=200)

    async def no_cuda(request: Request):
        # No GPU, so no CUDA region can exist: status lists none and unregistering (perf_analyzer's
        # clean-up unregisters all) succeeds; registering is refused, naming the system alternative.
        rest = request.path_params.get("rest", "")
        if request.method == "POST":
            await read_body(request.scope, request.receive, max_body_bytes, body_timeout)  # keep the connection usable
        if rest == "status":
            return json_response([])
        if rest == "unregister" or (rest.startswith("region/") and rest.endswith("/unregister")):
            return json_response({})
        return json_response({"error": NO_GPU}, 400)

    async def on_error(request: Request, exc: TuiliError):
        log_failure(exc, f"{request.method} {clip(request.url.path)}")
        return error_response(exc)

    async def on_bug(request: Request, exc: Exception):  # starlette re-raises it afterwards: uvicorn logs the traceback
        return error_response(exc)

    async def not_found(request: Request, exc):
        return json_response({"error": f"no such endpoint: {request.method} {clip(request.url.path)}"}, 404)

    async def bad_method(request: Request, exc):
        return json_response({"error": f"method {request.method} is not allowed on {clip(request.url.path)}"}, 405)

    m = "/v2/models/{model}"
    mv = "/v2/models/{model}/versions/{version}"
    routes = [
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/models/stats", all_stats, methods=["GET"]),
        Route("/v2/repository/index", repo_index, methods=["POST"]),
        Route("/v2/logging", logging_settings, methods=["GET", "POST"]),
        Route("/v2/repository/models/{model}/load", repo_load, methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", repo_unload, methods=["POST"]),
        Route("/v2/systemsharedmemory/status", shm_status, methods=["GET"]),
        Route("/v2/systemsharedmemory/region/{region}/status", shm_status, methods=["GET"]),
        Route("/v2/systemsharedmemory/region/{region}/register", shm_register, methods=["POST"]),
        Route("/v2/systemsharedmemory/unregister", shm_unregister, methods=["POST"]),
        Route("/v2/systemsharedmemory/region/{region}/unregister", shm_unregister, methods=["POST"]),
        Route("/v2/cudasharedmemory/{rest:path}", no_cuda, methods=["GET", "POST"]),
    ]
    for base in (m, mv):
        routes += [
            Route(base, model_metadata, methods=["GET"]),
            Route(base + "/ready", model_ready, methods=["GET"]),
            Route(base + "/config", model_config, methods=["GET"]),
            Route(base + "/stats", model_stats, methods=["GET"]),
            Route(base + "/infer", infer, methods=["POST"]),
            Route(base + "/generate", generate, methods=["POST"]),
            Route(base + "/generate_stream", generate_stream, methods=["POST"]),
        ]
    handlers = {TuiliError: on_error, Exception: on_bug, 404: not_found, 405: bad_method}
    app = Starlette(routes=routes, exception_handlers=handlers)
    return FastInfer(app, core, max_body_bytes, body_timeout)


class FastInfer:
    """ASGI wrapper that serves ``POST /v2/models/{model}[/versions/{v}]/infer`` directly (no
    routing table walk, no Request objects: the per-request overhead decides serving rankings
    on small machines) and hands everything else to the starlette app."""

    def __init__(self, app: Starlette, core, max_body_bytes: int, body_timeout: float = DEFAULT_BODY_TIMEOUT):
        self.app = app
        self.core = core
        self.limit = max_body_bytes
        self.timeout = body_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            if path.startswith("/v2/models/") and path.endswith("/infer"):
                parts = path[11:-6].split("/")
                if len(parts) == 1 and parts[0]:
                    return await self._infer(scope, receive, send, parts[0], "")
                if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
                    return await self._infer(scope, receive, send, parts[0], parts[2])
        if scope["type"] == "http" and log.isEnabledFor(logging.DEBUG):
            return await self.app(scope, receive, _logged(scope, send))
        await self.app(scope, receive, send)

    async def _infer(self, scope, receive, send, model: str, version: str):
        try:
            r = await infer_response(self.core, scope, receive, self.limit, model, version, self.timeout)
        except Exception as e:  # outside starlette: the one place its exception handlers do not reach
            log_failure(e, f"POST {clip(scope['path'])}")
            r = error_response(e)
        if r is None:  # the client is gone
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug("HTTP POST %s -> %d", clip(scope["path"]), r.status_code)
        await send({"type": "http.response.start", "status": r.status_code, "headers": r.raw_headers})
        await send({"type": "http.response.body", "body": r.body})

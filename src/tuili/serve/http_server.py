"""HTTP adapter: the KServe V2 REST protocol (Triton's flavour) over starlette, served by uvicorn.

Endpoints: health (live/ready), server metadata, model metadata / ready / config, infer (JSON
tensors and the binary tensor data extension, ``Inference-Header-Content-Length``), the
repository extension (index/load/unload), the statistics extension and, inside infer, the
classification extension. Errors are ``{"error": "..."}`` with the status of the error class.
"""
from __future__ import annotations

import json
import logging
import zlib

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tuili import dtypes
from tuili.errors import (ConfigError, InvalidGraphError, InvalidInputError, ModelLoadError, ModelNotFoundError,
                          ServerBusyError, ShapeInferenceError, TuiliError, UnsupportedOpError)
from tuili.serve.types import (InferInput, InferRequest, InferResponse, RequestedOutput, deserialize_bytes_tensor,
                               element_count, serialize_bytes_tensor)

log = logging.getLogger(__name__)

HEADER_LEN = "inference-header-content-length"
DEFAULT_MAX_BODY = 64 * 1024 * 1024
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class BodyTooLarge(TuiliError):
    pass


def status_of(e: BaseException, loading: bool = False) -> int:
    if isinstance(e, BodyTooLarge):
        return 413
    if isinstance(e, ModelNotFoundError):
        return 404
    if isinstance(e, ServerBusyError):
        return 503
    if isinstance(e, InvalidInputError):
        return 400
    if isinstance(e, (ConfigError, ModelLoadError, InvalidGraphError, UnsupportedOpError, ShapeInferenceError)) and loading:
        return 400
    if isinstance(e, ConfigError):
        return 400
    return 500


def error_response(e: BaseException | str, status: int | None = None, loading: bool = False) -> Response:
    if isinstance(e, BaseException):
        msg = str(e) or type(e).__name__
        if status is None:
            status = status_of(e, loading)
        if status == 500 and not isinstance(e, TuiliError):
            log.exception("internal error", exc_info=e)
            msg = f"internal error: {type(e).__name__}: {msg}"
    else:
        msg = e
    return Response(_dumps({"error": msg}).encode(), status_code=status or 400, media_type="application/json")


def json_response(obj, status: int = 200) -> Response:
    return Response(_dumps(obj).encode(), status_code=status, media_type="application/json")


async def read_body(request: Request, limit: int) -> bytes:
    cl = request.headers.get("content-length")
    if cl is not None:
        try:
            n = int(cl)
        except ValueError:
            raise InvalidInputError(f"Content-Length header {cl!r} is not an integer") from None
        if n > limit:
            raise BodyTooLarge(f"request body of {n} bytes is over the limit of {limit} bytes; send less data per request or raise --max-body-bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body is over the limit of {limit} bytes; send less data per request or raise --max-body-bytes")
        chunks.append(chunk)
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    enc = request.headers.get("content-encoding")
    if enc and body:
        try:
            if enc == "gzip":
                body = zlib.decompress(body, 16 + zlib.MAX_WBITS)
            elif enc == "deflate":
                body = zlib.decompress(body)
            elif enc != "identity":
                raise InvalidInputError(f"unsupported Content-Encoding {enc!r}; use gzip, deflate or identity")
        except zlib.error as e:
            raise InvalidInputError(f"request body is not valid {enc} data: {e}") from None
        if len(body) > limit:
            raise BodyTooLarge(f"decompressed request body of {len(body)} bytes is over the limit of {limit} bytes")
    return body


def _load_json(data, what: str):
    if not data:
        return {}
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidInputError(f"malformed JSON in the {what}: {e}") from None
    if not isinstance(obj, dict):
        raise InvalidInputError(f"the {what} must be a JSON object, got {type(obj).__name__}")
    return obj


# --------------------------------------------------------------------------- request decoding
def parse_infer_request(model: str, version: str, body: bytes, header_len: str | None) -> tuple[InferRequest, bool]:
    """Returns the request and whether outputs default to binary (``binary_data_output``)."""
    if header_len is not None:
        try:
            hl = int(header_len)
        except ValueError:
            raise InvalidInputError(f"Inference-Header-Content-Length {header_len!r} is not an integer") from None
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
        rid = str(rid)
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInputError("request \"parameters\" must be a JSON object")
    inputs = []
    offset = 0
    for i, d in enumerate(inputs_doc):
        if not isinstance(d, dict):
            raise InvalidInputError(f"inputs[{i}] must be a JSON object")
        name = d.get("name")
        datatype = d.get("datatype")
        shape = d.get("shape")
        if not isinstance(name, str):
            raise InvalidInputError(f"inputs[{i}] needs a string \"name\"")
        if not isinstance(datatype, str):
            raise InvalidInputError(f"input {name!r} needs a string \"datatype\" such as \"FP32\"")
        if not isinstance(shape, list) or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in shape):
            raise InvalidInputError(f"input {name!r} needs \"shape\": a list of non-negative integers, got {shape!r}")
        dtype = dtypes.from_v2(datatype).numpy
        ip = d.get("parameters") or {}
        if not isinstance(ip, dict):
            raise InvalidInputError(f"parameters of input {name!r} must be a JSON object")
        count = element_count(shape)
        if "binary_data_size" in ip:
            size = ip["binary_data_size"]
            if not isinstance(size, int) or size < 0:
                raise InvalidInputError(f"binary_data_size of input {name!r} must be a non-negative integer")
            if offset + size > len(binary):
                raise InvalidInputError(
                    f"input {name!r} declares binary_data_size {size} but only {len(binary) - offset} bytes of binary data remain"
                )
            chunk = binary[offset:offset + size]
            offset += size
            if datatype == "BYTES":
                arr = deserialize_bytes_tensor(chunk, count).reshape(shape)
            else:
                want = count * dtype.itemsize
                if size != want:
                    raise InvalidInputError(
                        f"input {name!r}: binary data has {size} bytes but shape {shape} of {datatype} needs {want}"
                    )
                arr = np.frombuffer(chunk, dtype=dtype).reshape(shape)
        else:
            if "data" not in d:
                raise InvalidInputError(f"input {name!r} has neither \"data\" nor a binary_data_size parameter")
            arr = _json_tensor(name, d["data"], datatype, dtype, shape, count)
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
            op = o.get("parameters") or {}
            if not isinstance(op, dict):
                raise InvalidInputError(f"parameters of output {o['name']!r} must be a JSON object")
            outputs.append(RequestedOutput(o["name"], op))
    binary_default = bool(params.get("binary_data_output", False))
    return InferRequest(model, version, rid, inputs, outputs, params), binary_default


def _json_tensor(name, data, datatype, dtype, shape, count) -> np.ndarray:
    if datatype == "BYTES":
        flat = _flatten(data) if isinstance(data, list) else [data]
        if len(flat) != count:
            raise InvalidInputError(f"input {name!r} has {len(flat)} elements but shape {shape} needs {count}")
        arr = np.empty(count, dtype=object)
        for j, x in enumerate(flat):
            if isinstance(x, str):
                arr[j] = x.encode("utf-8")
            else:
                raise InvalidInputError(f"input {name!r} is BYTES: elements must be strings, element {j} is {type(x).__name__}")
        return arr.reshape(shape)
    try:
        if datatype == "BOOL":
            flat = _flatten(data) if isinstance(data, list) else [data]
            if not all(isinstance(x, bool) for x in flat):
                raise InvalidInputError(f"input {name!r} is BOOL: elements must be true/false")
            arr = np.array(flat, dtype=dtype)
        else:
            arr = np.array(data, dtype=dtype)
            if datatype.startswith(("INT", "UINT")) and isinstance(data, list):
                flat = _flatten(data)
                if any(isinstance(x, float) or isinstance(x, bool) for x in flat):
                    raise InvalidInputError(f"input {name!r} is {datatype}: elements must be integers")
    except InvalidInputError:
        raise
    except (ValueError, TypeError, OverflowError) as e:
        raise InvalidInputError(f"input {name!r}: \"data\" is not a valid {datatype} array: {e}") from None
    if arr.size != count:
        raise InvalidInputError(f"input {name!r} has {arr.size} elements but shape {shape} needs {count}")
    return arr.reshape(shape)


def _flatten(data) -> list:
    if not data or not isinstance(data[0], list):
        if any(isinstance(x, list) for x in data):
            raise InvalidInputError("\"data\" mixes nested lists and scalars")
        return data
    out = []
    for x in data:
        if not isinstance(x, list):
            raise InvalidInputError("\"data\" mixes nested lists and scalars")
        out.extend(_flatten(x))
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
        if want_binary.get(out.name, binary_default):
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
def create_app(core, max_body_bytes: int = DEFAULT_MAX_BODY):
    """The ASGI app of the HTTP endpoint, calling ``core`` (an InferenceServer)."""

    async def live(request: Request):
        return Response(status_code=200 if core.live() else 503)

    async def ready(request: Request):
        return Response(status_code=200 if core.ready() else 503)

    async def server_metadata(request: Request):
        return json_response(core.metadata())

    def _mv(request: Request) -> tuple[str, str]:
        p = request.path_params
        return p["model"], p.get("version", "")

    async def model_metadata(request: Request):
        try:
            return json_response(core.model_metadata(*_mv(request)))
        except Exception as e:
            return error_response(e)

    async def model_ready(request: Request):
        name, version = _mv(request)
        if core.model_ready(name, version):
            return Response(status_code=200)
        try:
            core.get_model(name, version)
            msg = f"model {name!r} is not ready"
        except TuiliError as e:
            msg = str(e)
        return error_response(msg, 400)

    async def model_config(request: Request):
        try:
            from tuili.model_config import config_to_json

            return json_response(config_to_json(core.model_config(*_mv(request))))
        except Exception as e:
            return error_response(e)

    async def model_stats(request: Request):
        try:
            return json_response(core.model_statistics(*_mv(request)))
        except Exception as e:
            return error_response(e)

    async def all_stats(request: Request):
        return json_response(core.model_statistics())

    async def infer(request: Request):
        name, version = _mv(request)
        try:
            body = await read_body(request, max_body_bytes)
            req, binary_default = parse_infer_request(name, version, body, request.headers.get(HEADER_LEN))
            resp = await core.infer(req)
            return encode_infer_response(resp, req, binary_default)
        except Exception as e:
            return error_response(e)

    async def repo_index(request: Request):
        try:
            doc = _load_json(await read_body(request, max_body_bytes), "repository index request")
            return json_response(core.repository_index(bool(doc.get("ready", False))))
        except Exception as e:
            return error_response(e)

    async def repo_load(request: Request):
        name = request.path_params["model"]
        try:
            doc = _load_json(await read_body(request, max_body_bytes), "load request")
            params = doc.get("parameters") or {}
            if not isinstance(params, dict):
                raise InvalidInputError("load request \"parameters\" must be a JSON object")
            config = params.get("config")
            if config is not None and not isinstance(config, str):
                config = json.dumps(config)
            if any(k.startswith("file:") for k in params):
                raise InvalidInputError("loading models from file content (\"file:\" parameters) is not supported; put the files in the repository")
            await core.load_model(name, config)
            return Response(status_code=200)
        except Exception as e:
            return error_response(e, loading=True)

    async def repo_unload(request: Request):
        name = request.path_params["model"]
        try:
            doc = _load_json(await read_body(request, max_body_bytes), "unload request")
            params = doc.get("parameters") or {}
            await core.unload_model(name, bool(params.get("unload_dependents", False)) if isinstance(params, dict) else False)
            return Response(status_code=200)
        except Exception as e:
            return error_response(e, loading=True)

    async def logging_settings(request: Request):
        try:
            update = None
            if request.method == "POST":
                update = _load_json(await read_body(request, max_body_bytes), "log settings")
            return json_response(core.log_settings(update))
        except Exception as e:
            return error_response(e)

    async def not_found(request: Request, exc):
        return error_response(f"no such endpoint: {request.method} {request.url.path}", 404)

    async def bad_method(request: Request, exc):
        return error_response(f"method {request.method} is not allowed on {request.url.path}", 405)

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
    ]
    for base in (m, mv):
        routes += [
            Route(base, model_metadata, methods=["GET"]),
            Route(base + "/ready", model_ready, methods=["GET"]),
            Route(base + "/config", model_config, methods=["GET"]),
            Route(base + "/stats", model_stats, methods=["GET"]),
            Route(base + "/infer", infer, methods=["POST"]),
        ]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: bad_method})
    return FastInfer(app, core, max_body_bytes)


class FastInfer:
    """ASGI wrapper that serves ``POST /v2/models/{model}[/versions/{v}]/infer`` directly (no
    routing table walk, no Request/Response objects: the per-request overhead decides serving
    rankings on small machines) and hands everything else to the starlette app."""

    def __init__(self, app: Starlette, core, max_body_bytes: int):
        self.app = app
        self.core = core
        self.limit = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            if path.startswith("/v2/models/") and path.endswith("/infer"):
                parts = path[11:-6].split("/")
                if len(parts) == 1 and parts[0]:
                    return await self._infer(scope, receive, send, parts[0], "")
                if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
                    return await self._infer(scope, receive, send, parts[0], parts[2])
        await self.app(scope, receive, send)

    async def _infer(self, scope, receive, send, model: str, version: str):
        header_len = None
        content_length = None
        encoding = None
        for k, v in scope["headers"]:
            if k == b"inference-header-content-length":
                header_len = v.decode("latin-1")
            elif k == b"content-length":
                content_length = v
            elif k == b"content-encoding":
                encoding = v.decode("latin-1")
        try:
            body = await self._body(receive, content_length, encoding)
            req, binary_default = parse_infer_request(model, version, body, header_len)
            resp = await self.core.infer(req)
            r = encode_infer_response(resp, req, binary_default)
        except Exception as e:
            r = error_response(e)
        await send({"type": "http.response.start", "status": r.status_code, "headers": r.raw_headers})
        await send({"type": "http.response.body", "body": r.body})

    async def _body(self, receive, content_length, encoding) -> bytes:
        limit = self.limit
        if content_length is not None:
            try:
                n = int(content_length)
            except ValueError:
                raise InvalidInputError(f"Content-Length header {content_length!r} is not an integer") from None
            if n > limit:
                raise BodyTooLarge(f"request body of {n} bytes is over the limit of {limit} bytes; "
                                   f"send less data per request or raise --max-body-bytes")
        msg = await receive()
        body = msg.get("body", b"")
        if msg.get("more_body"):
            chunks, size = [body], len(body)
            while msg.get("more_body"):
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    raise InvalidInputError("client disconnected while sending the request")
                chunk = msg.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(f"request body is over the limit of {limit} bytes; "
                                       f"send less data per request or raise --max-body-bytes")
                chunks.append(chunk)
            body = b"".join(chunks)
        elif len(body) > limit:
            raise BodyTooLarge(f"request body is over the limit of {limit} bytes; send less data per request or raise --max-body-bytes")
        if encoding and encoding != "identity" and body:
            try:
                if encoding == "gzip":
                    body = zlib.decompress(body, 16 + zlib.MAX_WBITS)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                else:
                    raise InvalidInputError(f"unsupported Content-Encoding {encoding!r}; use gzip, deflate or identity")
            except zlib.error as e:
                raise InvalidInputError(f"request body is not valid {encoding} data: {e}") from None
            if len(body) > limit:
                raise BodyTooLarge(f"decompressed request body of {len(body)} bytes is over the limit of {limit} bytes")
        return body

"""gRPC adapter: the KServe V2 / Triton ``inference.GRPCInferenceService``.

It turns protobuf messages (tuili/serve/protos/grpc_service.proto) into the
protocol-independent types of tuili.serve.types, calls the
``InferenceServer`` (tuili.serve.core) and turns the answers back. Nothing
model-specific happens here: classification, batching and statistics live in
the core, shared with the HTTP adapter.

Errors raised by the core are tuili.errors classes; they become the gRPC status
code of serve.errors' table (the one the HTTP adapter uses too) with the error's
message as details. Requests arrive as bytes and are parsed by the handlers, so a
message that is not valid protobuf is INVALID_ARGUMENT (grpc's own deserializer
hook would answer INTERNAL); messages over ``max_receive_bytes`` are refused by grpc
with RESOURCE_EXHAUSTED before they are read.

Next to the inference service: the standard health-checking service
(``grpc.health.v1.Health``: Check and Watch, SERVING while the server is ready).

Usage (inside a running asyncio loop)::

    server = await start_grpc_server(core, "127.0.0.1", 8001)
    ...
    await server.stop(grace=5)
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError

from tuili import dtypes
from tuili.errors import ConfigError, InvalidInputError
from tuili.model_config.protos import model_config_pb2 as mc
from tuili.model_config.protos import service_pb2 as pb
from tuili.serve.errors import clip, log_failure, message_of, status_of
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

#: The fully-qualified service name clients call (fixed by the protocol).
SERVICE_NAME = "inference.GRPCInferenceService"
#: Largest message sent (grpc's default of 4 MiB is too small for images/batches; outputs are ours).
MAX_SEND_BYTES = 2**31 - 1
#: Largest request accepted by default: the HTTP body limit (--grpc-max-receive-bytes changes it).
DEFAULT_MAX_RECEIVE_BYTES = 64 * 1024 * 1024

# Typed-contents field of InferTensorContents for each V2 datatype (FP16/BF16: raw only).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

_TYPED_FIELDS = tuple(sorted(set(_CONTENTS_FIELD.values())))

def status_for(exc: BaseException) -> grpc.StatusCode:
    """gRPC status code for an exception raised while serving a call (serve.errors' table)."""
    return grpc.StatusCode[status_of(exc).grpc]


# --------------------------------------------------------------------------- conversions
def _param_value(p: Any) -> Any:
    which = p.WhichOneof("parameter_choice")
    return getattr(p, which) if which else None


def _params_to_dict(params) -> dict:
    return {k: _param_value(v) for k, v in params.items()}


def _set_param(target, value: Any) -> None:
    if isinstance(value, (bool, np.bool_)):
        target.bool_param = bool(value)
    elif isinstance(value, (int, np.integer)):
        v = int(value)
        if v >= 2**63:
            target.uint64_param = v
        else:
            target.int64_param = v
    elif isinstance(value, (float, np.floating)):
        target.double_param = float(value)
    elif isinstance(value, bytes):
        target.string_param = value.decode("utf-8", "replace")
    else:
        target.string_param = str(value)


def _decode_raw(name: str, datatype: str, shape: list[int], count: int, raw: bytes) -> np.ndarray:
    if datatype == "BYTES":
        try:
            flat = deserialize_bytes_tensor(raw, count)
        except InvalidInputError as exc:
            raise InvalidInputError(f"input {name!r} (BYTES, shape {shape}): {exc}") from None
        return flat.reshape(shape)
    dtype = input_dtype(name, datatype).to_numpy()
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInputError(
            f"input {name!r}: raw_input_contents holds {len(raw)} bytes but datatype {datatype} with "
            f"shape {shape} needs {expected} ({count} elements x {dtype.itemsize} bytes)"
        )
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape)


def _decode_typed(name: str, datatype: str, shape: list[int], count: int, contents) -> np.ndarray:
    dtype = input_dtype(name, datatype).to_numpy()
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInputError(
            f"input {name!r}: datatype {datatype} has no typed contents field; send it in raw_input_contents"
        )
    values = getattr(contents, field)
    if len(values) != count:
        raise InvalidInputError(
            f"input {name!r}: contents.{field} holds {len(values)} values but shape {shape} needs {count}"
        )
    if datatype == "BYTES":
        arr = np.empty(count, dtype=object)
        arr[:] = list(values)
        return arr.reshape(shape)
    try:
        return np.array(values, dtype=dtype).reshape(shape)
    except (OverflowError, ValueError) as exc:
        raise InvalidInputError(f"input {name!r}: contents.{field} do not fit datatype {datatype}: {exc}") from None


def _has_typed_contents(t) -> bool:
    return t.HasField("contents") and any(len(getattr(t.contents, f)) for f in _TYPED_FIELDS)


def request_from_proto(msg: pb.ModelInferRequest) -> InferRequest:
    """ModelInferRequest -> InferRequest (InvalidInputError for malformed tensors)."""
    if not msg.model_name:
        raise InvalidInputError("ModelInferRequest.model_name is empty; name the model to run")
    raw = msg.raw_input_contents
    params = [_params_to_dict(t.parameters) for t in msg.inputs]
    carried = sum(not in_shared_memory(p) for p in params)  # the others are read from their region by the core
    if len(raw) and len(raw) != carried:
        raise InvalidInputError(
            f"request has {carried} inputs not in shared memory but {len(raw)} raw_input_contents entries; "
            f"send one raw entry per such input, in input order (or none and use typed contents)"
        )
    inputs = []
    raw_index = 0
    for i, t in enumerate(msg.inputs):
        if not t.name:
            raise InvalidInputError(f"input #{i} of the request has no name")
        name = clip(t.name)
        if not t.datatype:
            raise InvalidInputError(f"input {name!r} has no datatype")
        shape = list(t.shape)
        itemsize = 8 if t.datatype == "BYTES" else input_dtype(name, t.datatype).to_numpy().itemsize
        count = check_shape(t.name, shape, itemsize)
        if in_shared_memory(params[i]):
            if _has_typed_contents(t):
                raise InvalidInputError(f"input {name!r} is in a shared memory region and also carries contents; send one of them")
            data = None
        elif len(raw):
            if _has_typed_contents(t):
                raise InvalidInputError(
                    f"input {name!r} has both typed contents and raw_input_contents; send one of them"
                )
            data = _decode_raw(name, t.datatype, shape, count, raw[raw_index])
            raw_index += 1
        elif _has_typed_contents(t) or count == 0:
            data = _decode_typed(name, t.datatype, shape, count, t.contents)
        else:
            raise InvalidInputError(
                f"input {name!r} carries no data: fill contents or raw_input_contents"
            )
        inputs.append(InferInput(t.name, t.datatype, shape, data, params[i]))
    outputs = None
    if len(msg.outputs):
        outputs = [RequestedOutput(o.name, _params_to_dict(o.parameters)) for o in msg.outputs]
    return InferRequest(
        model_name=msg.model_name,
        model_version=msg.model_version,
        id=msg.id,
        inputs=inputs,
        outputs=outputs,
        parameters=_params_to_dict(msg.parameters),
    )


def _raw_bytes(datatype: str, data: np.ndarray) -> bytes:
    if datatype == "BYTES":
        return serialize_bytes_tensor(np.asarray(data, dtype=object))
    arr = np.asarray(data)
    want = dtypes.from_v2(datatype).to_numpy().newbyteorder("<")
    if arr.dtype != want:
        arr = arr.astype(want)
    return np.ascontiguousarray(arr).tobytes()


def response_to_proto(resp: InferResponse) -> pb.ModelInferResponse:
    """InferResponse -> ModelInferResponse with every output in raw_output_contents; an output
    written into shared memory gets an empty entry (Triton's: entries stay in output order)."""
    msg = pb.ModelInferResponse(model_name=resp.model_name, model_version=str(resp.model_version), id=resp.id)
    for k, v in (resp.parameters or {}).items():
        _set_param(msg.parameters[k], v)
    for out in resp.outputs:
        t = msg.outputs.add(name=out.name, datatype=out.datatype)
        t.shape.extend(int(d) for d in out.shape)
        for k, v in (out.parameters or {}).items():
            if k == "binary_data":  # an HTTP notion; gRPC outputs are always raw
                continue
            _set_param(t.parameters[k], v)
        msg.raw_output_contents.append(b"" if in_shared_memory(out.parameters) else _raw_bytes(out.datatype, out.data))
    return msg


def _model_metadata_to_proto(d: dict) -> pb.ModelMetadataResponse:
    msg = pb.ModelMetadataResponse(name=d.get("name", ""), platform=d.get("platform", ""))
    msg.versions.extend(str(v) for v in d.get("versions", []))
    for key, target in (("inputs", msg.inputs), ("outputs", msg.outputs)):
        for t in d.get(key, []):
            tm = target.add(name=t["name"], datatype=t["datatype"])
            tm.shape.extend(int(s) for s in t.get("shape", []))
    return msg


def _statistics_to_proto(stats: Any) -> pb.ModelStatisticsResponse:
    if isinstance(stats, list):
        stats = {"model_stats": stats}
    msg = pb.ModelStatisticsResponse()
    json_format.ParseDict(stats, msg, ignore_unknown_fields=True)
    return msg


def _config_to_proto(cfg: Any) -> mc.ModelConfig:
    if isinstance(cfg, mc.ModelConfig):
        return cfg
    if isinstance(cfg, dict):
        out = mc.ModelConfig()
        json_format.ParseDict(cfg, out, ignore_unknown_fields=True)
        return out
    # A ModelConfig from another descriptor pool (same schema): go through bytes.
    return mc.ModelConfig.FromString(cfg.SerializeToString())


# --------------------------------------------------------------------------- the service
class GRPCInferenceService:
    """Handlers of inference.GRPCInferenceService, bound to one InferenceServer."""

    def __init__(self, core: Any):
        self.core = core

    # -- health ----------------------------------------------------------------------------------
    async def ServerLive(self, request: pb.ServerLiveRequest, context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=bool(self.core.live()))

    async def ServerReady(self, request: pb.ServerReadyRequest, context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=bool(self.core.ready()))

    async def ModelReady(self, request: pb.ModelReadyRequest, context) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=bool(self.core.model_ready(request.name, request.version)))

    # -- metadata --------------------------------------------------------------------------------
    async def ServerMetadata(self, request, context) -> pb.ServerMetadataResponse:
        d = self.core.metadata()
        msg = pb.ServerMetadataResponse(name=d.get("name", ""), version=str(d.get("version", "")))
        msg.extensions.extend(d.get("extensions", []))
        return msg

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context) -> pb.ModelMetadataResponse:
        return _model_metadata_to_proto(self.core.model_metadata(request.name, request.version))

    async def ModelConfig(self, request: pb.ModelConfigRequest, context) -> pb.ModelConfigResponse:
        cfg = _config_to_proto(self.core.model_config(request.name, request.version))
        resp = pb.ModelConfigResponse()
        resp.config.CopyFrom(cfg)
        return resp

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context) -> pb.ModelStatisticsResponse:
        return _statistics_to_proto(self.core.model_statistics(request.name, request.version))

    # -- inference -------------------------------------------------------------------------------
    async def ModelInfer(self, request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        req = request_from_proto(request)
        resp = await self.core.infer(req)
        return response_to_proto(resp)

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[bytes], context):
        """Bidirectional stream: each request is answered by one stream message, in
        completion order; a failed (or undecodable) request yields ``error_message`` and the
        stream goes on."""
        queue: asyncio.Queue = asyncio.Queue()
        done = object()

        def error(exc: BaseException, msg) -> pb.ModelStreamInferResponse:
            log_failure(exc, f"gRPC ModelStreamInfer on model {clip(msg.model_name)!r}")
            err = pb.ModelStreamInferResponse(error_message=message_of(exc))
            err.infer_response.model_name = msg.model_name
            err.infer_response.id = msg.id
            return err

        async def one(data: bytes) -> None:
            msg = pb.ModelInferRequest()
            try:
                msg = parse_request(pb.ModelInferRequest, data)
                req = request_from_proto(msg)
                if not self.core.is_decoupled(req.model_name, req.model_version):
                    resp = response_to_proto(await self.core.infer(req))
                    await queue.put(pb.ModelStreamInferResponse(infer_response=resp))
                    return
                # a decoupled model: each response as it comes, flagged triton_final_response; an empty final
                # one only when the request asks for it (triton_enable_empty_final_response), as Triton does
                empty_final = req.parameters.get("triton_enable_empty_final_response") is True
                async for r in self.core.infer_stream(req):
                    if r.error is not None:
                        await queue.put(error(r.error, msg))
                        continue
                    if r.response is None:
                        if not empty_final:
                            continue
                        resp = pb.ModelInferResponse(model_name=msg.model_name, id=msg.id,
                                                     model_version=self.core.get_model(msg.model_name, msg.model_version).version)
                    else:
                        resp = response_to_proto(r.response)
                    resp.parameters["triton_final_response"].bool_param = r.final
                    await queue.put(pb.ModelStreamInferResponse(infer_response=resp))
            except Exception as exc:  # reported in-band; the stream stays open
                await queue.put(error(exc, msg))

        async def reader() -> None:
            tasks = set()
            try:
                async for data in request_iterator:
                    tasks.add(asyncio.ensure_future(one(data)))
                if tasks:
                    await asyncio.gather(*tasks)
            finally:
                for t in tasks:  # the client closed the stream: its requests are cancelled (decoupled models see it)
                    t.cancel()
                await queue.put(done)

        feeder = asyncio.ensure_future(reader())
        try:
            while True:
                item = await queue.get()
                if item is done:
                    break
                yield item
        finally:
            if not feeder.done():
                feeder.cancel()

    # -- repository ------------------------------------------------------------------------------
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context) -> pb.RepositoryIndexResponse:
        msg = pb.RepositoryIndexResponse()
        for m in self.core.repository_index(ready_only=request.ready):
            msg.models.add(name=m.get("name", ""), version=str(m.get("version", "") or ""),
                           state=m.get("state", ""), reason=m.get("reason", "") or "")
        return msg

    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest, context):
        if not request.model_name:
            raise InvalidInputError("RepositoryModelLoad: model_name is empty")
        config, files = None, {}
        for key, p in request.parameters.items():
            value = _param_value(p)
            if key == "config":
                if not isinstance(value, str):
                    raise InvalidInputError(f"RepositoryModelLoad parameter 'config' must be a string_param holding JSON, got {clip(repr(value))}")
                config = value
            elif key.startswith("file:"):
                if not isinstance(value, bytes):
                    raise InvalidInputError(f"RepositoryModelLoad parameter {key!r} must be the file's content "
                                            f"(bytes_param)")
                files[key[len("file:"):]] = value
        await self.core.load_model(request.model_name, config=config, files=files)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest, context):
        if not request.model_name:
            raise InvalidInputError("RepositoryModelUnload: model_name is empty")
        dependents = _param_value(request.parameters["unload_dependents"]) if "unload_dependents" in request.parameters else False
        if not isinstance(dependents, bool):
            raise InvalidInputError(f"RepositoryModelUnload parameter 'unload_dependents' must be a bool_param, got {clip(repr(dependents))}")
        await self.core.unload_model(request.model_name, unload_dependents=dependents)
        return pb.RepositoryModelUnloadResponse()

    # -- shared-memory extensions ----------------------------------------------------------------
    async def SystemSharedMemoryStatus(self, request, context) -> pb.SystemSharedMemoryStatusResponse:
        resp = pb.SystemSharedMemoryStatusResponse()
        for r in self.core.shared_memory.status(request.name):
            resp.regions[r["name"]].CopyFrom(pb.SystemSharedMemoryStatusResponse.RegionStatus(**r))
        return resp

    async def SystemSharedMemoryRegister(self, request, context) -> pb.SystemSharedMemoryRegisterResponse:
        self.core.shared_memory.register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(self, request, context) -> pb.SystemSharedMemoryUnregisterResponse:
        self.core.shared_memory.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    # -- logging extension -----------------------------------------------------------------------
    async def LogSettings(self, request: pb.LogSettingsRequest, context) -> pb.LogSettingsResponse:
        update = {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in request.settings.items()
                  if v.WhichOneof("parameter_choice")}
        resp = pb.LogSettingsResponse()
        for k, v in self.core.log_settings(update or None).items():
            target = resp.settings[k]
            if isinstance(v, bool):
                target.bool_param = v
            elif isinstance(v, int):
                target.uint32_param = v
            else:
                target.string_param = str(v)
        return resp


# Method name -> (request type, response type, kind)
_METHODS: dict[str, tuple[type, type, str]] = {
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse, "unary"),
    "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse, "unary"),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse, "unary"),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse, "unary"),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse, "unary"),
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse, "unary"),
    "ModelStreamInfer": (pb.ModelInferRequest, pb.ModelStreamInferResponse, "stream"),
    "ModelConfig": (pb.ModelConfigRequest, pb.ModelConfigResponse, "unary"),
    "ModelStatistics": (pb.ModelStatisticsRequest, pb.ModelStatisticsResponse, "unary"),
    "RepositoryIndex": (pb.RepositoryIndexRequest, pb.RepositoryIndexResponse, "unary"),
    "RepositoryModelLoad": (pb.RepositoryModelLoadRequest, pb.RepositoryModelLoadResponse, "unary"),
    "RepositoryModelUnload": (pb.RepositoryModelUnloadRequest, pb.RepositoryModelUnloadResponse, "unary"),
    "LogSettings": (pb.LogSettingsRequest, pb.LogSettingsResponse, "unary"),
    "SystemSharedMemoryStatus": (pb.SystemSharedMemoryStatusRequest, pb.SystemSharedMemoryStatusResponse, "unary"),
    "SystemSharedMemoryRegister": (pb.SystemSharedMemoryRegisterRequest, pb.SystemSharedMemoryRegisterResponse, "unary"),
    "SystemSharedMemoryUnregister": (pb.SystemSharedMemoryUnregisterRequest, pb.SystemSharedMemoryUnregisterResponse, "unary"),
    "CudaSharedMemoryStatus": (pb.CudaSharedMemoryStatusRequest, pb.CudaSharedMemoryStatusResponse, "cuda"),
    "CudaSharedMemoryRegister": (pb.CudaSharedMemoryRegisterRequest, pb.CudaSharedMemoryRegisterResponse, "cuda"),
    "CudaSharedMemoryUnregister": (pb.CudaSharedMemoryUnregisterRequest, pb.CudaSharedMemoryUnregisterResponse, "cuda"),
}


def parse_request(req_t: type, data: bytes):
    """``data`` as a ``req_t`` message; InvalidInputError (INVALID_ARGUMENT) when it is not one."""
    try:
        return req_t.FromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise InvalidInputError(f"the request is not a valid {req_t.DESCRIPTOR.full_name} message: {clip(str(exc))}") from None


def _unary(name: str, req_t: type, fn: Callable) -> Callable:
    async def handler(data: bytes, context):
        try:
            resp = await fn(parse_request(req_t, data), context)
        except Exception as exc:
            log_failure(exc, f"gRPC {name}")
            log.debug("gRPC %s -> %s", name, status_for(exc).name)
            await context.abort(status_for(exc), message_of(exc))
        log.debug("gRPC %s -> OK", name)
        return resp

    handler.__name__ = name
    return handler


async def _no_gpu(data: bytes, context):
    """CUDA shared-memory registration: UNAVAILABLE, this server has no GPU."""
    await context.abort(grpc.StatusCode.UNAVAILABLE, NO_GPU)


def _no_cuda_regions(resp_t: type, name: str) -> Callable:
    """CUDA shared-memory status (of all regions) and unregistration: there are none, so an empty
    answer; a named region's status is not found."""
    async def handler(data: bytes, context):
        req = parse_request(_METHODS[name][0], data)
        if name == "CudaSharedMemoryStatus" and req.name:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"Unable to find cuda shared memory region: {NO_GPU}")
        return resp_t()
    return handler


def build_handler(core: Any) -> grpc.GenericRpcHandler:
    """The generic handler serving inference.GRPCInferenceService for ``core``; requests reach the
    handlers as bytes (parse_request decodes them)."""
    service = GRPCInferenceService(core)
    handlers = {}
    for name, (req_t, resp_t, kind) in _METHODS.items():
        if kind == "cuda":
            fn = _no_gpu if name == "CudaSharedMemoryRegister" else _no_cuda_regions(resp_t, name)
            handlers[name] = grpc.unary_unary_rpc_method_handler(fn, response_serializer=resp_t.SerializeToString)
            continue
        fn = getattr(service, name)
        if kind == "unary":
            handlers[name] = grpc.unary_unary_rpc_method_handler(
                _unary(name, req_t, fn), response_serializer=resp_t.SerializeToString)
        else:
            handlers[name] = grpc.stream_stream_rpc_method_handler(fn, response_serializer=resp_t.SerializeToString)
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


# --------------------------------------------------------------------------- grpc.health.v1
HEALTH_SERVICE_NAME = "grpc.health.v1.Health"


def _health_messages() -> tuple[type, type]:
    """HealthCheckRequest and HealthCheckResponse of grpc's health.proto, built from its two messages
    (grpcio-health-checking is not a dependency; the wire format is all that matters)."""
    f = descriptor_pb2.FileDescriptorProto(name="tuili/grpc_health_v1.proto", package="grpc.health.v1", syntax="proto3")
    f.message_type.add(name="HealthCheckRequest").field.add(
        name="service", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    resp = f.message_type.add(name="HealthCheckResponse")
    status = resp.enum_type.add(name="ServingStatus")
    for number, value in enumerate(("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")):
        status.value.add(name=value, number=number)
    resp.field.add(name="status", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_ENUM,
                   type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus",
                   label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    fd = pool.Add(f)
    return (message_factory.GetMessageClass(fd.message_types_by_name["HealthCheckRequest"]),
            message_factory.GetMessageClass(fd.message_types_by_name["HealthCheckResponse"]))


HealthCheckRequest, HealthCheckResponse = _health_messages()
SERVING, NOT_SERVING, SERVICE_UNKNOWN = 1, 2, 3
#: How often Watch looks at the server's readiness.
WATCH_INTERVAL_SECS = 0.5


def build_health_handler(core: Any) -> grpc.GenericRpcHandler:
    """grpc.health.v1.Health for ``core``: the server ("") and the inference service are SERVING
    while the server is ready (Triton's readiness rule), NOT_SERVING otherwise."""

    def status(service: str) -> int | None:
        if service not in ("", SERVICE_NAME):
            return None
        return SERVING if core.ready() else NOT_SERVING

    async def check(data: bytes, context):
        try:
            req = parse_request(HealthCheckRequest, data)
        except InvalidInputError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message_of(exc))
        st = status(req.service)
        if st is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {clip(req.service)!r}; "
                                f"known: '' (the server) and {SERVICE_NAME!r}")
        return HealthCheckResponse(status=st)

    async def watch(data: bytes, context):
        try:
            req = parse_request(HealthCheckRequest, data)
        except InvalidInputError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message_of(exc))
        last = None
        while True:  # ends when the client cancels (the task is cancelled)
            st = status(req.service)
            st = SERVICE_UNKNOWN if st is None else st
            if st != last:
                yield HealthCheckResponse(status=st)
                last = st
            await asyncio.sleep(WATCH_INTERVAL_SECS)

    return grpc.method_handlers_generic_handler(HEALTH_SERVICE_NAME, {
        "Check": grpc.unary_unary_rpc_method_handler(check, response_serializer=HealthCheckResponse.SerializeToString),
        "Watch": grpc.unary_stream_rpc_method_handler(watch, response_serializer=HealthCheckResponse.SerializeToString),
    })


async def start_grpc_server(core: Any, host: str = "127.0.0.1", port: int = 8001, *,
                            max_receive_bytes: int = DEFAULT_MAX_RECEIVE_BYTES) -> grpc.aio.Server:
    """Start serving ``core`` over gRPC on host:port (port 0: an ephemeral port); requests larger
    than ``max_receive_bytes`` are refused (RESOURCE_EXHAUSTED) before they are read.

    Returns the started ``grpc.aio.Server``; its ``bound_port`` attribute holds
    the port actually bound. The caller stops it with ``await server.stop(grace)``."""
    server = grpc.aio.server(options=[
        ("grpc.max_send_message_length", MAX_SEND_BYTES),
        ("grpc.max_receive_message_length", max_receive_bytes),
        ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
    ])
    server.add_generic_rpc_handlers((build_handler(core), build_health_handler(core)))
    address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise ConfigError(f"gRPC server cannot bind {address}: {exc}; pick another --grpc-port") from None
    if bound == 0:
        raise ConfigError(f"gRPC server cannot bind {address} (in use?); pick another --grpc-port")
    await server.start()
    try:
        server.bound_port = bound
    except AttributeError:  # pragma: no cover - grpc.aio.Server without __dict__
        pass
    log.info("gRPC (KServe V2) listening on %s:%d", host, bound)
    return server

"""What tuili implements of Triton's model configuration, field by field, so that nothing a config
asks for is accepted and then silently ignored.

Every field of ``ModelConfig`` (model_config.proto, walked recursively) falls in one of three sets:

    IMPLEMENTED   the server does what the field says (some only for certain values: VALUES)
    WARNED        Triton itself serves on without it (no cache configured, no GPU, no rate limiter):
                  the model loads, with a warning in the log and in the model's state reason
    anything else refused at load: a ModelConfigError naming the field and what to do (REFUSED
                  holds the specific hints)

Paths are written as in error messages, with ``[]`` for the elements of a repeated field and ``{}``
for the values of a map (``input[].dims``, ``parameters{}.string_value``). A field counts as set when
protobuf lists it (a message present, a scalar not at its default, a non-empty list or map); a set
message is only walked into when the message itself is implemented.

``parameters`` keys are checked against the keys the backend reads (``Backend.parameter_keys``) plus
the server's own (``SERVER_PARAMETERS``).
"""
from __future__ import annotations

from collections.abc import Collection, Iterator

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from tuili.model_config.locate import Locator, ModelConfigError
from tuili.model_config.protos import ModelConfig
from tuili.model_config.protos import model_config_pb2 as mc

_QUEUE_POLICY = ("timeout_action", "default_timeout_microseconds", "allow_timeout_override", "max_queue_size")
_TENSOR = ("name", "data_type", "dims", "reshape", "reshape.shape")
_DIRECT = ("max_queue_delay_microseconds", "minimum_slot_utilization")
_OLDEST = ("max_candidate_sequences", "preferred_batch_size", "max_queue_delay_microseconds")
_CONTROL = ("kind", "int32_false_true", "fp32_false_true", "bool_false_true", "data_type")
_STATE = ("input_name", "output_name", "data_type", "dims")
_INITIAL = ("data_type", "dims", "zero_data", "data_file", "name")

IMPLEMENTED: frozenset[str] = frozenset({
    "name", "platform", "backend", "max_batch_size", "default_model_filename",
    "version_policy", "version_policy.latest", "version_policy.latest.num_versions", "version_policy.all",
    "version_policy.specific", "version_policy.specific.versions",
    "input", *(f"input[].{f}" for f in _TENSOR), "input[].optional",
    "input[].format",  # descriptive, as in Triton: reported in the model config, never acted on
    "output", *(f"output[].{f}" for f in _TENSOR), "output[].label_filename",
    "dynamic_batching", "dynamic_batching.preferred_batch_size", "dynamic_batching.max_queue_delay_microseconds",
    "dynamic_batching.priority_levels", "dynamic_batching.default_priority_level",
    "dynamic_batching.default_queue_policy", *(f"dynamic_batching.default_queue_policy.{f}" for f in _QUEUE_POLICY),
    "dynamic_batching.priority_queue_policy", *(f"dynamic_batching.priority_queue_policy{{}}.{f}" for f in _QUEUE_POLICY),
    "ensemble_scheduling", "ensemble_scheduling.step", "ensemble_scheduling.step[].model_name",
    "ensemble_scheduling.step[].model_version", "ensemble_scheduling.step[].input_map",
    "ensemble_scheduling.step[].output_map",
    "instance_group", "instance_group[].name", "instance_group[].count", "instance_group[].kind",
    "parameters", "parameters{}.string_value",
    # the sequence batcher (tuili.serve.sequence)
    "sequence_batching", "sequence_batching.max_sequence_idle_microseconds",
    "sequence_batching.direct", *(f"sequence_batching.direct.{f}" for f in _DIRECT),
    "sequence_batching.oldest", *(f"sequence_batching.oldest.{f}" for f in _OLDEST),
    "sequence_batching.control_input", "sequence_batching.control_input[].name", "sequence_batching.control_input[].control",
    *(f"sequence_batching.control_input[].control[].{f}" for f in _CONTROL),
    "sequence_batching.state", *(f"sequence_batching.state[].{f}" for f in _STATE),
    "sequence_batching.state[].initial_state", *(f"sequence_batching.state[].initial_state[].{f}" for f in _INITIAL),
    # decoupled python models (tuili.serve.streaming); other backends are refused at load
    "model_transaction_policy.decoupled",
    # containers whose fields are checked one by one (an explicit `decoupled: false` is fine)
    "optimization", "model_transaction_policy", "response_cache",
})

#: implemented only for these values of an enum field
VALUES: dict[str, tuple[frozenset[int], str]] = {
    "instance_group[].kind": (frozenset({mc.ModelInstanceGroup.KIND_AUTO, mc.ModelInstanceGroup.KIND_CPU}),
                              "this server has no GPUs and runs every instance on the CPU: use kind: KIND_CPU"),
}

WARNED: dict[str, str] = {
    "response_cache.enable": "the response cache is not implemented: every request is computed (Triton does the "
                             "same when the server has no cache configured)",
    "optimization.input_pinned_memory": "pinned memory stages GPU copies; this CPU server has none",
    "optimization.output_pinned_memory": "pinned memory stages GPU copies; this CPU server has none",
    "optimization.priority": "model priority is not implemented: every model is scheduled alike",
    "instance_group[].rate_limiter": "there is no rate limiter (Triton also applies it only when started with "
                                     "--rate-limit): instances run whenever they have work",
    "cc_model_filenames": "per-GPU model files: this server has no GPU and uses default_model_filename",
}

_NO_GPU = "this server runs on the CPU only; remove it"
REFUSED: dict[str, str] = {
    "runtime": "backend shared libraries are Triton's; set backend to one of tuili's: onnxruntime, pytorch, "
               "python, tuili",
    "batch_input": "ragged batching is not implemented; remove batch_input and send whole tensors",
    "batch_output": "ragged batching is not implemented; remove batch_output",
    "input[].allow_ragged_batch": "ragged batching is not implemented: requests in a batch must have equal shapes",
    "input[].is_shape_tensor": "shape tensors are a TensorRT feature; remove it",
    "output[].is_shape_tensor": "shape tensors are a TensorRT feature; remove it",
    "input[].is_non_linear_format_io": "non-linear formats are a TensorRT feature; remove it",
    "output[].is_non_linear_format_io": "non-linear formats are a TensorRT feature; remove it",
    "optimization.graph": "set the backend's parameter instead: optimization_level (onnxruntime) or opt_level (tuili)",
    "optimization.cuda": _NO_GPU,
    "optimization.execution_accelerators": "execution accelerators (TensorRT, OpenVINO) are not available; "
                                           "remove them",
    "optimization.gather_kernel_buffer_threshold": _NO_GPU,
    "optimization.eager_batching": "eager batching is not implemented; remove it",
    "dynamic_batching.preserve_ordering": "responses are sent as each request finishes, not in arrival order; "
                                          "remove it",
    "sequence_batching.oldest.preserve_ordering": "responses are sent as each request finishes, not in arrival "
                                                  "order; remove it",
    "sequence_batching.iterative_sequence": "iterative sequences (the model rescheduling a request) are not "
                                            "implemented; remove it",
    "sequence_batching.state[].use_same_buffer_for_input_output": "state buffers are host arrays kept per sequence; "
                                                                  "remove it",
    "sequence_batching.state[].use_growable_memory": "growable state memory is a GPU allocation option; remove it",
    "ensemble_scheduling.max_inflight_requests": "an ensemble's in-flight requests are not limited; remove it",
    "ensemble_scheduling.step[].model_namespace": "model namespaces are not implemented; remove it",
    "instance_group[].gpus": _NO_GPU,
    "instance_group[].secondary_devices": _NO_GPU,
    "instance_group[].profile": "TensorRT optimization profiles are not available; remove it",
    "instance_group[].passive": "every instance takes requests; remove passive",
    "instance_group[].host_policy": "host policies are not implemented; remove it",
    "model_warmup": "warm-up samples are not run; remove model_warmup (the first requests then warm the model)",
    "model_operations": "custom operation libraries are not loaded; remove model_operations",
    "model_repository_agents": "repository agents (checksum, encryption) are not run; remove them",
    "model_metrics": "per-model metric settings are not implemented; the server's metrics are fixed",
    "metric_tags": "metric tags are not added to the metrics; remove them",
}

#: config parameters the server itself reads, whatever the backend: process isolation of instances
#: (backends/worker.py), the latency objective (serve/batching.py), an ensemble's aggregation policy
#: (serve/ensemble.py), canary releases (serve/canary.py). Where one does not apply to a model (a canary
#: on an ensemble, an aggregation policy on a plain model) the server refuses it when it loads the model.
SERVER_PARAMETERS: frozenset[str] = frozenset({
    "instance_isolation", "execution_timeout_ms", "idempotent", "load_timeout_ms", "slo_ms", "aggregation_policy",
    "canary_version", "canary_weight", "canary_shadow", "canary_min_requests", "canary_error_margin",
    "canary_latency_margin",
})


def _set_fields(msg: Message, path: str, pattern: str) -> Iterator[tuple[str, str, FieldDescriptor, object]]:
    """(path, pattern, field, value) of every set field below ``msg``, walking only into implemented messages."""
    for fd, value in msg.ListFields():
        p, pat = f"{path}{fd.name}", f"{pattern}{fd.name}"
        yield p, pat, fd, value
        if pat not in IMPLEMENTED or fd.message_type is None:
            continue
        if fd.message_type.GetOptions().map_entry:
            if fd.message_type.fields_by_name["value"].message_type is not None:
                for key, item in value.items():
                    yield from _set_fields(item, f'{p}["{key}"].', f"{pat}{{}}.")
        elif fd.is_repeated:
            for i, item in enumerate(value):
                yield from _set_fields(item, f"{p}[{i}].", f"{pat}[].")
        else:
            yield from _set_fields(value, f"{p}.", f"{pat}.")


def check_supported(config: ModelConfig, parameter_keys: Collection[str] | None, *, source: str | None = None,
                    text: str | None = None) -> list[str]:
    """Refuse a config that sets a field tuili does not implement (ModelConfigError naming the field,
    with its line and column when ``text``, the config.pbtxt source, is given) and return the
    warnings for the fields Triton too serves without.

    ``parameter_keys``: the ``parameters`` keys the model's backend reads (None: any key, the model
    reads its own), to which the server's own keys (SERVER_PARAMETERS) are added."""
    loc = Locator(text, ModelConfig.DESCRIPTOR) if text else None

    def refuse(field: str, message: str):
        line, col = loc.where(field) if loc is not None else (None, None)
        raise ModelConfigError(message, file=source, line=line, column=col, field=field)

    warnings = []
    for path, pattern, fd, value in _set_fields(config, "", ""):
        if pattern in WARNED:
            warnings.append(f"{path} is not implemented and has no effect: {WARNED[pattern]}")
        elif pattern not in IMPLEMENTED:
            hint = REFUSED.get(pattern, "remove it (docs/reliability.md lists what the server implements)")
            refuse(path, f"{path} is not implemented by tuili: {hint}")
        elif pattern in VALUES and value not in VALUES[pattern][0]:
            name = fd.enum_type.values_by_number[value].name if fd.enum_type else value
            refuse(path, f"{path}: {name} is not implemented by tuili: {VALUES[pattern][1]}")
    if parameter_keys is not None:
        known = set(parameter_keys) | SERVER_PARAMETERS
        for key in config.parameters:
            if key not in known:
                refuse(f'parameters["{key}"]', f"parameter {key!r} is not read by this model's backend, which reads "
                                               f"{', '.join(sorted(known))}; remove it or fix its spelling")
    return warnings

"""Builds a small model repository for the server tests (tiny ONNX models made with onnx.helper,
python-backend models, an ensemble). Fast: a fraction of a second."""
from __future__ import annotations

import os
import textwrap
import time
import urllib.request

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _save(model: onnx.ModelProto, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    model.ir_version = 8
    onnx.save(model, path)


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(textwrap.dedent(text).lstrip())


def python_model(root: str, name: str, source: str, extra_config: str = "", max_batch_size: int = 0) -> None:
    """A python-backend model ``name`` in ``root``: ``source`` as its model.py, one FP32 [1] input X and
    output Y, and ``extra_config`` (batching, instance groups, parameters) appended to its config."""
    _write(f"{root}/{name}/1/model.py", source)
    _write(f"{root}/{name}/config.pbtxt", f"""
        name: "{name}"
        backend: "python"
        max_batch_size: {max_batch_size}
        input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }} ]
        output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }} ]
        {extra_config}
    """)


def add_sub_model(n: int = 16, batch: bool = True, dtype=TensorProto.FLOAT) -> onnx.ModelProto:
    shape = ["N", n] if batch else [n]
    a = helper.make_tensor_value_info("INPUT0", dtype, shape)
    b = helper.make_tensor_value_info("INPUT1", dtype, shape)
    o0 = helper.make_tensor_value_info("OUTPUT0", dtype, shape)
    o1 = helper.make_tensor_value_info("OUTPUT1", dtype, shape)
    g = helper.make_graph([helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
                           helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"])], "add_sub", [a, b], [o0, o1])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def linear_classifier(n_in: int = 64, n_out: int = 10, seed: int = 0) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n_in, n_out)).astype(np.float32)
    bias = rng.standard_normal(n_out).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n_out])
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["mm"]), helper.make_node("Add", ["mm", "B"], ["logits"])],
                          "linear", [x], [y], initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(bias, "B")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), w, bias


PREPROCESS_PY = '''
import io
import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image


class TritonPythonModel:
    def initialize(self, args):
        self.name = args["model_name"]

    def execute(self, requests):
        responses = []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            out = []
            try:
                for item in raw.reshape(raw.shape[0], -1)[:, 0]:
                    img = Image.open(io.BytesIO(item)).convert("L").resize((8, 8))
                    out.append(np.asarray(img, dtype=np.float32).reshape(64) / 255.0)
            except Exception as e:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"cannot decode the image: {e}", pb_utils.TritonError.INVALID_ARG)))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("PIXELS", np.stack(out))]))
        return responses
'''

SLEEPY_PY = '''
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "X").as_numpy()
            time.sleep(float(x.reshape(-1)[0]))
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x.copy())]))
        return out

    def finalize(self):
        pass
'''

UPPER_PY = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        import json
        cfg = json.loads(args["model_config"])
        out = pb_utils.get_output_config_by_name(cfg, "TEXT_OUT")
        self.dtype = pb_utils.triton_string_to_numpy(out["data_type"])

    def execute(self, requests):
        responses = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "TEXT").as_numpy()
            y = np.array([s.upper() for s in x.reshape(-1)], dtype=self.dtype).reshape(x.shape)
            n = np.array([len(s) for s in x.reshape(-1)], dtype=np.int32).reshape(x.shape)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("TEXT_OUT", y), pb_utils.Tensor("LENGTH", n)]))
        return responses
'''


def build_test_repository(root: str) -> dict:
    """Returns facts the tests check against (weights of the classifier, ...)."""
    # add_sub: batching model with dynamic batching, two versions.
    for v in (1, 2):
        _save(add_sub_model(), f"{root}/add_sub/{v}/model.onnx")
    _write(f"{root}/add_sub/config.pbtxt", """
        name: "add_sub"
        backend: "onnxruntime"
        max_batch_size: 8
        version_policy: { all: {} }
        input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
                { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
        output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
                 { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
        instance_group [ { count: 2 kind: KIND_CPU } ]
        dynamic_batching { max_queue_delay_microseconds: 2000 }
    """)
    # add_sub_tuili: the same model on tuili's own engine (fails to load if the engine is missing).
    _save(add_sub_model(), f"{root}/add_sub_tuili/1/model.onnx")
    _write(f"{root}/add_sub_tuili/config.pbtxt", """
        name: "add_sub_tuili"
        backend: "tuili"
        max_batch_size: 8
        dynamic_batching { }
    """)
    # add_sub_int: no config at all (auto-complete), non-batching shapes, INT32.
    _save(add_sub_model(4, batch=False, dtype=TensorProto.INT32), f"{root}/add_sub_int/1/model.onnx")
    # classifier: with labels, for the classification extension.
    model, w, b = linear_classifier()
    _save(model, f"{root}/classifier/1/model.onnx")
    _write(f"{root}/classifier/labels.txt", "\n".join(f"digit_{i}" for i in range(10)) + "\n")
    _write(f"{root}/classifier/config.pbtxt", """
        name: "classifier"
        platform: "onnxruntime_onnx"
        max_batch_size: 16
        input [ { name: "x" data_type: TYPE_FP32 dims: [ 64 ] } ]
        output [ { name: "logits" data_type: TYPE_FP32 dims: [ 10 ] label_filename: "labels.txt" } ]
        dynamic_batching { }
    """)
    # preprocess: python backend, image bytes -> pixels.
    _write(f"{root}/preprocess/1/model.py", PREPROCESS_PY)
    _write(f"{root}/preprocess/config.pbtxt", """
        name: "preprocess"
        backend: "python"
        max_batch_size: 16
        input [ { name: "IMAGE" data_type: TYPE_STRING dims: [ 1 ] } ]
        output [ { name: "PIXELS" data_type: TYPE_FP32 dims: [ 64 ] } ]
    """)
    # ensemble: image bytes -> preprocess -> classifier.
    os.makedirs(f"{root}/image_classifier/1", exist_ok=True)
    _write(f"{root}/image_classifier/config.pbtxt", """
        name: "image_classifier"
        platform: "ensemble"
        max_batch_size: 16
        input [ { name: "IMAGE" data_type: TYPE_STRING dims: [ 1 ] } ]
        output [ { name: "LOGITS" data_type: TYPE_FP32 dims: [ 10 ] label_filename: "labels.txt" } ]
        ensemble_scheduling {
          step [
            { model_name: "preprocess" model_version: -1
              input_map { key: "IMAGE" value: "IMAGE" }
              output_map { key: "PIXELS" value: "pixels" } },
            { model_name: "classifier" model_version: -1
              input_map { key: "x" value: "pixels" }
              output_map { key: "logits" value: "LOGITS" } }
          ]
        }
    """)
    _write(f"{root}/image_classifier/labels.txt", "\n".join(f"digit_{i}" for i in range(10)) + "\n")
    # sleepy: a python model that sleeps X seconds; a queue of 1, for the 503 test.
    _write(f"{root}/sleepy/1/model.py", SLEEPY_PY)
    _write(f"{root}/sleepy/config.pbtxt", """
        name: "sleepy"
        backend: "python"
        max_batch_size: 0
        input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]
        output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]
        dynamic_batching { default_queue_policy { max_queue_size: 1 } }
    """)
    # upper: python, BYTES in and out.
    _write(f"{root}/upper/1/model.py", UPPER_PY)
    _write(f"{root}/upper/config.pbtxt", """
        name: "upper"
        backend: "python"
        max_batch_size: 0
        input [ { name: "TEXT" data_type: TYPE_STRING dims: [ -1 ] } ]
        output [ { name: "TEXT_OUT" data_type: TYPE_STRING dims: [ -1 ] },
                 { name: "LENGTH" data_type: TYPE_INT32 dims: [ -1 ] } ]
    """)
    # reshaped: the client sends [batch, 16], the model sees [batch, 4, 4] (config reshape).
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4, 4])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 4, 4])
    g = helper.make_graph([helper.make_node("Transpose", ["X"], ["Y"], perm=[0, 2, 1])], "t", [x], [y])
    _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), f"{root}/reshaped/1/model.onnx")
    _write(f"{root}/reshaped/config.pbtxt", """
        name: "reshaped"
        backend: "onnxruntime"
        max_batch_size: 4
        input [ { name: "X" data_type: TYPE_FP32 dims: [ 16 ] reshape: { shape: [ 4, 4 ] } } ]
        output [ { name: "Y" data_type: TYPE_FP32 dims: [ 16 ] reshape: { shape: [ 4, 4 ] } } ]
    """)
    # torch_linear: an ExportedProgram (torch.export) on the pytorch backend.
    import torch

    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 3).eval()
    ep = torch.export.export(lin, (torch.randn(2, 8),), dynamic_shapes=({0: torch.export.Dim("batch", max=16)},))
    os.makedirs(f"{root}/torch_linear/1", exist_ok=True)
    torch.export.save(ep, f"{root}/torch_linear/1/model.pt2")
    _write(f"{root}/torch_linear/config.pbtxt", """
        name: "torch_linear"
        platform: "pytorch_libtorch"
        max_batch_size: 16
        input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 8 ] } ]
        output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 3 ] } ]
        dynamic_batching { }
    """)
    return {"classifier_w": w, "classifier_b": b,
            "torch_w": lin.weight.detach().numpy().copy(), "torch_b": lin.bias.detach().numpy().copy()}


def pending_requests(server, model: str) -> int:
    """The server's nv_inference_pending_request_count for ``model`` (0 when it has none)."""
    text = urllib.request.urlopen(f"http://{server.metrics}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(f'nv_inference_pending_request_count{{model="{model}"'):
            return int(float(line.split()[-1]))
    return 0


def wait_for(cond, tries: int = 400) -> None:
    """Poll ``cond`` every 25 ms until it holds (10 s by default); fail the test if it never does."""
    for _ in range(tries):
        if cond():
            return
        time.sleep(0.025)
    raise AssertionError("condition never held")

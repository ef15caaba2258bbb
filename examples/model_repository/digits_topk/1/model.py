"""Python backend model: logits -> the k most likely labels and their softmax probabilities
(k = the dims of the LABELS output in config.pbtxt)."""
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        self.k = int(pb_utils.get_output_config_by_name(cfg, "LABELS")["dims"][-1])
        labels_file = cfg.get("parameters", {}).get("labels_file", {}).get("string_value", "labels.txt")
        with open(os.path.join(args["model_repository"], labels_file), encoding="utf-8") as f:
            self.labels = np.array([line.strip().encode() for line in f if line.strip()], dtype=object)

    def execute(self, requests):
        responses = []
        for request in requests:
            logits = pb_utils.get_input_tensor_by_name(request, "LOGITS").as_numpy()
            z = logits - logits.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            top = np.argsort(-p, axis=1)[:, : self.k]
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("LABELS", self.labels[top]),
                pb_utils.Tensor("SCORES", np.take_along_axis(p, top, axis=1).astype(np.float32)),
            ]))
        return responses

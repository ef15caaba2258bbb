"""LitServe with its dynamic batching (max_batch_size 16, batch_timeout 2 ms): POST /predict with
JSON {"b64": <float32 bytes, base64>, "shape": [...]} (LitServe decodes requests as JSON in its
worker processes, so the bytes travel base64-encoded), answered with JSON {"b64": ...}.

    python benchmarks/peers/litserve_app.py MODEL.onnx PORT"""
import base64
import sys

import litserve as ls
import numpy as np
from common import run, session


class OnnxAPI(ls.LitAPI):
    def setup(self, device):
        self.sess = session(sys.argv[1])

    def decode_request(self, request):
        return np.frombuffer(base64.b64decode(request["b64"]), np.float32).reshape(request["shape"][1:])

    def batch(self, inputs):
        return np.stack(inputs)

    def predict(self, x):
        return run(self.sess, x)

    def unbatch(self, output):
        return list(output)

    def encode_response(self, output):
        return {"b64": base64.b64encode(np.ascontiguousarray(output, np.float32).tobytes()).decode()}


if __name__ == "__main__":
    server = ls.LitServer(OnnxAPI(max_batch_size=16, batch_timeout=0.002), accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=int(sys.argv[2]), generate_client_file=False, log_level="warning")

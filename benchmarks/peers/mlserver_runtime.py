"""An MLServer runtime running the ONNX model in onnxruntime, for the peers benchmark; MLServer's
adaptive batching is set in the generated model-settings.json (max_batch_size 16, 2 ms)."""
import os
import sys

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import session  # noqa: E402


class OnnxRuntimeModel(MLModel):
    async def load(self) -> bool:
        self.sess = session(self.settings.parameters.uri)
        self.input_name = self.sess.get_inputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32)
        y = self.sess.run(None, {self.input_name: x})[0]
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("logits", y)])

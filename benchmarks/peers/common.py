"""What every peer server shares: the same onnxruntime session settings as tuili's onnxruntime
backend (intra-op threads = the cores, one inter-op thread, no spinning), and the raw-bytes request
format (float32 C-order bytes; the shape in the X-Shape header or beside the data)."""
from __future__ import annotations

import os

import numpy as np


def session(path: str):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = len(os.sched_getaffinity(0))
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def decode(body: bytes, shape: str) -> np.ndarray:
    return np.frombuffer(body, np.float32).reshape([int(d) for d in shape.split(",")])


def run(sess, x: np.ndarray) -> np.ndarray:
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]

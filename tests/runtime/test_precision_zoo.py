"""bf16 against fp32 on zoo models: outputs close, and top-1 unchanged wherever fp32's margin is
larger than the drift could flip (a row whose top two logits differ by more than twice the largest
drift must keep its top-1)."""
from __future__ import annotations

import numpy as np
import pytest

from tuili.runtime.cli import drift, random_inputs
from tuili.runtime.precision import native_bf16
from tuili.runtime.session import InferenceSession

pytestmark = pytest.mark.skipif(native_bf16() is None, reason="this CPU has no native bf16")

# name -> (symbolic dims, bf16 nodes at least, max drift relative to the largest fp32 output)
CASES = {
    "resnet18": ({"batch": 2}, 20, 0.03),
    "mobilenet_v2": ({"batch": 2}, 50, 0.05),
    "bert_small": ({"batch": 2, "sequence": 16}, 20, 0.02),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bf16_close_to_fp32(zoo_onnx, name):
    dims, min_nodes, tolerance = CASES[name]
    path = zoo_onnx(name)
    ref, sess = InferenceSession(path), InferenceSession(path, precision="bf16")
    assert sum(sess.bf16_nodes.values()) >= min_nodes, sess.bf16_nodes
    feeds = random_inputs(ref, dims, seed=0)
    want, got = ref.run(None, feeds)[0], sess.run(None, feeds)[0]
    assert got.dtype == want.dtype == np.float32 and got.shape == want.shape
    d = drift(got, want)
    assert 0 < d["rel"] <= tolerance, d
    top2 = np.sort(want, axis=-1)[..., -2:]
    decided = (top2[..., 1] - top2[..., 0]) > 2 * d["max"]
    assert np.array_equal(got.argmax(-1)[decided], want.argmax(-1)[decided])

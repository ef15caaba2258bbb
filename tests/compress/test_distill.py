"""Knowledge distillation: losses, checks on bad input, inputs left alone, a short run to ONNX on digits."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

import tuili
from tuili.compress.distill import distill, distill_zoo, kd_loss, subset, train_plain
from tuili.errors import ConfigError
from tuili.zoo.core import create
from tuili.zoo.training import digits_data


@pytest.fixture(scope="module")
def data():
    return subset(digits_data(), train=256, test=96)


def _cnn(width=0.5, classes=10):
    return create("digits_cnn", width=width, num_classes=classes, calibrate=False)


def test_kd_loss_ends():
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    assert torch.allclose(kd_loss(s, t, y, 0.0, 4.0), F.cross_entropy(s, y))
    assert float(kd_loss(t, t, y, 1.0, 4.0)) == pytest.approx(0.0, abs=1e-6)  # student == teacher: no soft loss
    assert float(kd_loss(s, t, y, 1.0, 2.0)) > 0


@pytest.mark.parametrize("kw, match", [(dict(alpha=1.5), "alpha"), (dict(alpha=-0.1), "alpha"),
                                       (dict(temperature=0), "temperature"), (dict(temperature=-2), "temperature"),
                                       (dict(hints=[("nope", "features")]), "teacher has no layer 'nope'")])
def test_bad_arguments_are_refused(data, kw, match):
    with pytest.raises(ConfigError, match=match):
        distill(_cnn(1.0), _cnn(), data, epochs=1, progress=False, **kw)


def test_student_without_weights_or_other_outputs_is_refused(data):
    frozen = _cnn()
    for p in frozen.parameters():
        p.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable weights"):
        distill(_cnn(1.0), frozen, data, epochs=1, progress=False)
    with pytest.raises(ConfigError, match="does not match the teacher"):
        distill(_cnn(1.0), _cnn(classes=7), data, epochs=1, progress=False)


def test_distill_with_hints_leaves_inputs_alone(data):
    teacher, student = _cnn(1.0), _cnn()
    before = {k: v.clone() for k, v in list(teacher.state_dict().items()) + [("s." + k, v) for k, v in student.state_dict().items()]}
    teacher.train()
    r = distill(teacher, student, data, epochs=1, hints=[("features", "features")], progress=False)
    assert teacher.training  # mode restored
    after = {**teacher.state_dict(), **{"s." + k: v for k, v in student.state_dict().items()}}
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert r.student is not student and 0.0 <= r.accuracy <= 1.0 and len(r.history) == 1
    assert any(not torch.equal(a, b) for a, b in zip(r.student.state_dict().values(), student.state_dict().values()))


@pytest.mark.slow
def test_distilled_student_learns():
    full = digits_data()
    teacher, t_acc, _ = train_plain(_cnn(1.0), full, epochs=3, progress=False)
    r = distill(teacher, _cnn(), full, epochs=3, alpha=0.5, hints=[], progress=False)
    assert r.teacher_accuracy == pytest.approx(t_acc)
    assert r.accuracy > 0.3  # 10 classes: chance is 0.1


def test_distill_zoo_exports_onnx_that_both_engines_run(data, tmp_path):
    run = distill_zoo("digits_cnn", "digits_cnn", teacher_width=1.0, student_width=0.5, data=data, epochs=1,
                      out_dir=tmp_path, progress=False)
    assert run.student_params * 3 < run.teacher_params
    assert run.baseline_accuracy is not None and "student (distilled)" in run.summary()
    x = data.x_test[:16]
    want = ort.InferenceSession(str(run.onnx_path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    got = tuili.InferenceSession(str(run.onnx_path)).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        ref = run.result.student.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(want, ref, rtol=1e-4, atol=1e-4)

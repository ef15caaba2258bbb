"""The search space: sampling, encoding, mutation, building and ONNX export (onnxruntime and tuili agree)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tuili.errors import ConfigError
from tuili.nas.space import Arch, SearchSpace, Stage, export
from tuili.runtime.session import InferenceSession
from tuili.zoo.layers import calibrate_batchnorm


def test_samples_are_in_the_space_and_round_trip():
    space = SearchSpace()
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(50)]
    assert len({a.key() for a in archs}) == 50
    for a in archs:
        assert space.decode(space.encode(a)) == a
        assert Arch.from_dict(a.to_dict()) == a
    assert {s.kernel for a in archs for s in a.stages} == {3, 5, 7}
    assert {a.width for a in archs} == {0.5, 0.75, 1.0}


def test_mutation_changes_at_least_one_choice_and_stays_in_the_space():
    space = SearchSpace()
    rng = np.random.default_rng(1)
    a = space.sample(rng)
    for _ in range(50):
        b = space.mutate(a, rng, prob=0.0)
        diff = sum(x != y for x, y in zip(space.encode(a), space.encode(b)))
        assert diff == 1
        space.check(b)


def test_blocks_follow_the_shapes():
    space = SearchSpace()
    a = space.largest()
    blocks = space.blocks(a)
    assert blocks[0].kind == "stem" and blocks[-1].kind == "head"
    assert len(blocks) == 2 + sum(s.depth for s in a.stages)
    for prev, b in zip(blocks, blocks[1:]):
        assert b.cin == prev.cout or prev.kind == "head"
    assert {b.key() for b in space.blocks(space.sample(np.random.default_rng(2)))} <= {b.key() for b in space.all_blocks()}


def test_choices_outside_the_space_are_refused():
    space = SearchSpace()
    big = space.largest()
    with pytest.raises(ConfigError, match="kernel 9"):
        space.check(Arch(1.0, (Stage(9, 6, 4, True),) + big.stages[1:]))
    with pytest.raises(ConfigError, match="width 2.0"):
        space.check(Arch(2.0, big.stages))
    with pytest.raises(ConfigError, match="architecture description"):
        Arch.from_dict({"width": 1.0})


@pytest.mark.parametrize("seed,full", [(0, True), (1, False), (2, False), (3, False)])
def test_random_architectures_export_and_run_alike_on_both_engines(tiny_space, seed, full):
    space = SearchSpace() if full else tiny_space
    r = space.resolution
    arch = space.sample(np.random.default_rng(seed))
    net = space.build(arch, seed=seed)
    calibrate_batchnorm(net, torch.rand(8, 1, r, r))
    net.eval()
    x = np.random.default_rng(seed).random((2, 1, r, r), dtype=np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    assert want.shape == (2, space.num_classes) and np.abs(want).max() > 1e-3
    model = export(net, input_shape=(1, r, r), batch=2)
    for engine in ("onnxruntime", "tuili"):
        (got,) = InferenceSession(model, engine=engine).run(None, {"input": x})
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())


def test_export_to_a_file_keeps_a_description(tmp_path):
    import onnx

    space = SearchSpace()
    a = space.smallest()
    path = export(space.build(a), tmp_path / "net.onnx", input_shape=(1, 32, 32), doc=a.key())
    m = onnx.load(str(path))
    assert m.doc_string == a.key() and m.producer_name == "tuili.nas"
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1

"""tuili.nas — hardware-aware neural architecture search, measured on this machine.

    SearchSpace, Arch, Stage                      the MobileNetV2/V3-family space (space.py)
    LatencyTable.measure(space, engine, batch)    per-block latency, cached per CPU/engine/batch (latency.py)
    Predictor.fit(table, archs, seconds)          LUT sum + fitted overhead; .predict(arch), .mape(...)
    Supernet(space), train_supernet(...)          Once-for-All weight sharing, progressive shrinking (supernet.py)
    synflow(model), naswot(model, x)              zero-cost proxies (proxies.py)
    search(space, evaluate, latency, ...)         regularized evolution / random search, Pareto mode (search.py)

Importing this package does not import torch.
"""
from tuili.nas.space import Arch, Block, SearchSpace, Stage

__all__ = ["Arch", "Block", "SearchSpace", "Stage"]

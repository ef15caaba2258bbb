"""Graph optimizer: one small module per pass, a pass manager running levels O0..O3 to a fixed point
(levels built from each pass's metadata; managers nest), and a pattern layer the fusions are rules of.

    import tuili
    from tuili.passes import copy_graph, optimize
    g = copy_graph(tuili.load("m.onnx"))
    report = optimize(g, level=2)     # in place
    print(report.summary())

``tuili.InferenceSession(model, opt_level=N)`` optimizes a copy of the model this way before planning.
"""
from tuili.passes.base import TUILI_DOMAIN, Pass, copy_graph
from tuili.passes.manager import (
    MAX_LEVEL,
    PASSES,
    PassManager,
    Report,
    op_counts,
    optimize,
    optimize_for_run,
    passes_for_level,
    pipeline,
)
from tuili.passes.pattern import Pat, RewritePass, Rule

__all__ = ["MAX_LEVEL", "PASSES", "TUILI_DOMAIN", "Pass", "PassManager", "Pat", "Report", "RewritePass", "Rule",
           "copy_graph", "op_counts", "optimize", "optimize_for_run", "passes_for_level", "pipeline"]

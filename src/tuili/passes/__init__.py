"""Graph optimizer: one small module per pass, a pass manager running levels O0..O3 to a fixed point.

    import tuili
    from tuili.passes import copy_graph, optimize
    g = copy_graph(tuili.load("m.onnx"))
    report = optimize(g, level=2)     # in place
    print(report.summary())

``tuili.InferenceSession(model, opt_level=N)`` optimizes a copy of the model this way before planning.
"""
from tuili.passes.base import TUILI_DOMAIN, Pass, copy_graph
from tuili.passes.manager import MAX_LEVEL, PassManager, Report, op_counts, optimize, optimized_copy, passes_for_level

__all__ = ["MAX_LEVEL", "TUILI_DOMAIN", "Pass", "PassManager", "Report", "copy_graph", "op_counts", "optimize", "optimized_copy",
           "passes_for_level"]

"""Engines behind one interface (base.Backend): load a model version directory with its config,
report input/output metadata, ``infer(dict[str, ndarray]) -> dict[str, ndarray]``.

    onnxruntime.py  onnxruntime InferenceSession
    tuili.py        tuili's own engine (tuili.InferenceSession)
    torch.py        TorchScript (model.pt) or ExportedProgram (model.pt2)
    python.py       a user model.py with Triton's TritonPythonModel API (pb_utils.py)
"""

"""tuili.zoo — small CNNs and small Transformers in plain torch, faithful to their papers.

    list_models() -> list[ModelSpec]
    get_spec(name) -> ModelSpec                  (unknown name -> ConfigError listing the known ones)
    create(name, *, width=None, resolution=None, num_classes=None, seed=0) -> torch.nn.Module (eval)
    example_inputs(name, batch=1, **kw) -> dict[str, np.ndarray]   (keys = ONNX input names)
    export(name, path, *, opset=17, batch="dynamic", resolution=None, width=None, **kw) -> Path
    train(name, data=None, epochs=..., out_dir=..., seed=0, progress=True) -> TrainResult
                                                 (data: "digits" | "glyphs" | TrainData; None = the model's own)
    digits_data(name) / glyphs_data(name) -> TrainData   (a data set prepared for model ``name``)
    count(name, ...) -> (params, MACs)           (torch FlopCounterMode on the meta device)

Importing this package does not import torch; building or counting a model does.
"""
from tuili.zoo.registry import ModelSpec, get_spec, list_models, names

__all__ = ["ModelSpec", "TrainResult", "list_models", "get_spec", "names", "create", "example_inputs", "export",
           "train", "count", "layer_table", "digits_data", "glyphs_data", "TrainData",
           "load_checkpoint", "evaluate"]


_LAZY = {
    "create": "core", "example_inputs": "core", "export": "core",
    "train": "training", "TrainResult": "training", "digits_data": "training", "glyphs_data": "training",
    "TrainData": "training", "load_checkpoint": "training",
    "evaluate": "training", "count": "counting", "layer_table": "counting",
}


def __getattr__(attr):  # lazy: keep `import tuili.zoo` free of torch
    if attr in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"tuili.zoo.{_LAZY[attr]}"), attr)
    raise AttributeError(f"module 'tuili.zoo' has no attribute {attr!r}")

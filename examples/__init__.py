"""The example model repository (model_repository/) that `make run` serves, its builder and a client.

    python -m examples.build [examples/model_repository]   # generate the model files (idempotent)
    python -m examples.client --digit 7                     # ask the running server about a digit

Run from the repository root (not installed with tuili).
"""

"""Python-backend models of examples/model_repository (copied to <model>/1/model.py by the build)."""

"""tuili's inference server: KServe V2 / Triton protocol over HTTP and gRPC.

    request -> http_server.py / grpc_server.py (protocol adapters, types.py; errors.py: one
               status table for both)
            -> core.InferenceServer (the facade: validation.py, outputs.py, statistics, model control)
            -> a runner.Runner per model version: scheduler.Scheduler (queues.py: priority levels,
               earliest deadline first; batching.py: fixed or SLO-adaptive batch sizes; one thread
               per instance) or ensemble.EnsembleRunner; canary.py splits traffic between versions
            -> tuili.backends (onnxruntime, tuili, pytorch, python)

lifecycle.py keeps model states and loads / unloads / retires versions; repository.py reads
Triton-layout model repositories (tuili.model_config parses config.pbtxt); stats.py keeps Triton's
statistics and renders the Prometheus metrics; server.py runs it all in one process and one
asyncio loop (`tuili serve`, cli.py).
"""

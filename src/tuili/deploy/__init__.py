"""Scale-out on engines people already operate: Ray Serve (ray.py: one deployment per model running
tuili's serving core behind a KServe V2 ingress; settings.py: replicas and resources from the model
config; local.py: a namespaced local cluster for tests and benchmarks; cli.py: `tuili ray serve`)
and KServe (the runtime manifests and the container image live in deploy/ at the repository root).
Importing this package does not import Ray: only tuili.deploy.ray and tuili.deploy.local need it."""

"""Ray Serve with @serve.batch (max_batch_size 16, batch_wait_timeout_s 2 ms), one replica: POST
/predict with float32 bytes and an X-Shape header, answered with float32 bytes. Starts its own
local Ray instance; run it inside a network namespace with only loopback (Ray binds on all
interfaces). Serves until killed.

    python benchmarks/peers/ray_app.py MODEL.onnx PORT"""
import os
import sys
import time

import numpy as np
import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

HERE = os.path.dirname(os.path.abspath(__file__))


@serve.deployment(ray_actor_options={"num_cpus": 0})
class OnnxModel:
    def __init__(self, path: str):
        sys.path.insert(0, HERE)
        from common import session

        self.sess = session(path)
        self.name = self.sess.get_inputs()[0].name

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def infer(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        y = self.sess.run(None, {self.name: np.concatenate(xs)})[0]
        return list(np.split(y, np.cumsum([len(x) for x in xs])[:-1]))

    async def __call__(self, request: Request) -> Response:
        shape = [int(d) for d in request.headers["x-shape"].split(",")]
        x = np.frombuffer(await request.body(), np.float32).reshape(shape)
        return Response((await self.infer(x)).tobytes(), media_type="application/octet-stream")


if __name__ == "__main__":
    ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[2])})
    serve.run(OnnxModel.bind(os.path.abspath(sys.argv[1])), route_prefix="/predict")
    while True:
        time.sleep(3600)

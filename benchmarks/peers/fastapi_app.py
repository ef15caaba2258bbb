"""A plain FastAPI endpoint (uvicorn with uvloop and httptools, one process): POST /predict with
float32 bytes and an X-Shape header, answered with the output's float32 bytes. No batching; the
session runs in the threadpool so the event loop stays free.

    python benchmarks/peers/fastapi_app.py MODEL.onnx PORT"""
import sys

import uvicorn
from common import decode, run, session
from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

sess = session(sys.argv[1])
app = FastAPI()


@app.get("/health")
def health():
    return {"ok": True}


@app.post("/predict")
async def predict(request: Request):
    x = decode(await request.body(), request.headers["x-shape"])
    y = await run_in_threadpool(run, sess, x)
    return Response(y.tobytes(), media_type="application/octet-stream")


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), loop="uvloop", http="httptools", log_level="warning")

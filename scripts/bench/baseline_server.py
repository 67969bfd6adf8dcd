"""The baseline a platform team would build itself: the same artifact's ONNX model and tokenizer
served by Python onnxruntime behind FastAPI/uvicorn, one inference per request (no batching),
answering the same KServe V2 JSON as distillery-server. Used only by scripts/bench-server.sh.

Usage: python baseline_server.py ARTIFACT_DIR PORT [WORKERS]
Environment: BASELINE_HANDLER=sync (default; FastAPI runs it in its thread pool, so ONNX Runtime
calls, which release the GIL, overlap) or async (runs on the event loop, one at a time);
BASELINE_MODEL_FILE to serve another file than the manifest's served variant.
"""
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, HTTPException, Request
from tokenizers import Tokenizer

artifact = os.environ.setdefault("BASELINE_ARTIFACT", sys.argv[1] if len(sys.argv) > 1 else "")
manifest = json.load(open(os.path.join(artifact, "distillery.json")))
model_file = os.environ.get("BASELINE_MODEL_FILE") or manifest["variants"][manifest["servedVariant"]]["file"]
config = json.load(open(os.path.join(artifact, "config.json")))
labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
tokenizer = Tokenizer.from_file(os.path.join(artifact, "tokenizer.json"))
tokenizer.no_padding()
tokenizer.enable_truncation(config["distillery"]["maxSequenceLength"])
session = ort.InferenceSession(os.path.join(artifact, model_file), providers=["CPUExecutionProvider"])
name = os.path.basename(os.path.normpath(artifact))
app = FastAPI()


@app.get("/v2/health/ready")
def ready():
    return {"ready": True}


def predict(model, body):
    if model != name:
        raise HTTPException(404, f"model {model} not served")
    texts = body["inputs"][0]["data"]
    encodings = tokenizer.encode_batch(texts)
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.ones_like(ids)
    logits = session.run(["logits"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = exp / exp.sum(axis=1, keepdims=True)
    n = len(texts)
    return {
        "model_name": name,
        "id": body.get("id"),
        "outputs": [
            {"name": "label", "datatype": "BYTES", "shape": [n], "data": [labels[i] for i in logits.argmax(axis=1)]},
            {"name": "probabilities", "datatype": "FP32", "shape": list(probabilities.shape),
             "data": probabilities.flatten().tolist()},
        ],
    }


if os.environ.get("BASELINE_HANDLER", "sync") == "async":
    @app.post("/v2/models/{model}/infer")
    async def infer(model: str, request: Request):
        return predict(model, await request.json())
else:
    @app.post("/v2/models/{model}/infer")
    def infer(model: str, body: dict):
        return predict(model, body)


if __name__ == "__main__":
    import uvicorn

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    uvicorn.run("baseline_server:app", host="127.0.0.1", port=int(sys.argv[2]), workers=workers, log_level="warning")

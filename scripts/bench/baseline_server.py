"""The baseline a platform team would build itself: the same artifact's ONNX model and tokenizer
served by Python onnxruntime behind FastAPI/uvicorn, one inference per request (no batching),
answering the same KServe V2 JSON as distillery-server. Used only by scripts/bench-server.sh.

Usage: python baseline_server.py ARTIFACT_DIR PORT [MODEL_FILE]
"""
import json
import os
import sys

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from tokenizers import Tokenizer

artifact, port = sys.argv[1], int(sys.argv[2])
manifest = json.load(open(os.path.join(artifact, "distillery.json")))
model_file = sys.argv[3] if len(sys.argv) > 3 else manifest["variants"][manifest["servedVariant"]]["file"]
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


@app.post("/v2/models/{model}/infer")
async def infer(model: str, request: Request):
    if model != name:
        raise HTTPException(404, f"model {model} not served")
    body = await request.json()
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


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")

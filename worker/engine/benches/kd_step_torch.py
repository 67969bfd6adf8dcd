"""PyTorch eager side of the `kd_vs_torch` bench: the same distillation step as the worker's.

Called by `cargo bench -p distillery-worker --bench kd_vs_torch` with one JSON argument (student
config, batch, sequence length, steps, threads, loss and optimiser settings); prints one JSON line
with the median seconds per step. The model mirrors `worker/engine/src/model.rs`: factorized word
embeddings with a bias-free projection, position and segment embeddings, LayerNorm, post-LN BERT
layers with erf GELU, mean pooling over the mask, a linear head; no dropout. Teacher logits are
given (cached), as in the worker.
"""
import json
import math
import statistics
import sys
import time

import torch
from torch import nn
import torch.nn.functional as F


class Layer(nn.Module):
    def __init__(self, h, heads, inter, eps):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(h, h) for _ in range(4))
        self.ln1 = nn.LayerNorm(h, eps=eps)
        self.up, self.down = nn.Linear(h, inter), nn.Linear(inter, h)
        self.ln2 = nn.LayerNorm(h, eps=eps)

    def forward(self, x, bias):
        b, t, h = x.shape
        d = h // self.heads
        split = lambda y: y.view(b, t, self.heads, d).transpose(1, 2)
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d) + bias
        ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, h)
        x = self.ln1(x + self.o(ctx))
        return self.ln2(x + self.down(F.gelu(self.up(x))))


class Student(nn.Module):
    def __init__(self, c, classes=2):
        super().__init__()
        h, e = c["hidden_size"], c.get("embedding_size") or c["hidden_size"]
        self.words = nn.Embedding(c["vocab_size"], e)
        self.project = nn.Linear(e, h, bias=False) if e != h else nn.Identity()
        self.positions = nn.Embedding(c["max_position_embeddings"], h)
        self.segments = nn.Embedding(c["type_vocab_size"], h)
        self.ln = nn.LayerNorm(h, eps=c["layer_norm_eps"])
        self.layers = nn.ModuleList(
            Layer(h, c["num_attention_heads"], c["intermediate_size"], c["layer_norm_eps"])
            for _ in range(c["num_hidden_layers"])
        )
        self.head = nn.Linear(h, classes)

    def forward(self, ids, mask):
        t = ids.shape[1]
        pos = torch.arange(t)
        x = self.project(self.words(ids)) + self.positions(pos) + self.segments(torch.zeros_like(ids))
        x = self.ln(x)
        bias = ((1.0 - mask[:, None, None, :]) * -1e4).to(x.dtype)
        for layer in self.layers:
            x = layer(x, bias)
        m = mask[..., None]
        pooled = (x * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.head(pooled)


def main():
    a = json.loads(sys.argv[1])
    torch.set_num_threads(a["threads"])
    torch.manual_seed(0)
    c = a["config"]
    batch, seq, total = a["batch"], a["seq"], a["steps"] + a["warmup"]
    model = Student(c)
    opt = torch.optim.AdamW(model.parameters(), lr=a["lr"], weight_decay=a["weight_decay"])
    warm = round(0.1 * total)
    lr_at = lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    ids = torch.randint(1, c["vocab_size"], (total, batch, seq))
    mask = torch.ones(batch, seq)
    labels = torch.randint(0, 2, (total, batch))
    teacher = torch.rand(total, batch, 2) * 6 - 3
    alpha, times = a["alpha"], []
    for step in range(total):
        start = time.perf_counter()
        temp = 1.0 + (4.0 - 1.0) * 0.5 * (1 + math.cos(math.pi * step / max(1, total - 1)))
        logits = model(ids[step], mask)
        hard = F.cross_entropy(logits, labels[step])
        kl = F.kl_div(F.log_softmax(logits / temp, -1), F.log_softmax(teacher[step] / temp, -1),
                      log_target=True, reduction="batchmean") * temp * temp
        loss = alpha * hard + (1 - alpha) * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), a["clip"])
        opt.step()
        sched.step()
        times.append(time.perf_counter() - start)
    print(json.dumps({"median_step_s": statistics.median(times[a["warmup"]:]), "torch": torch.__version__,
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()

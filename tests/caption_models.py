"""Tiny video captioners built with onnx.helper for the caption tests, and the same networks in PyTorch (the autograd
reference): a per-frame CNN (Conv + ReLU + Gemm + ReLU: ``features`` (T, D)), an encoder that pools the frames —
``mean`` (ReduceMean), ``max`` (ReduceMax), ``attention`` (constant weights over the frames, a MatMul) or ``s2vt``
(an encoder LSTM over the frames whose last state starts the decoder) — and a two-layer ReLU-LSTM decoder with a
classifier over the vocabulary at every step.

Teacher-forced exports read the fed caption as the input ``words`` (L,) int64 and hold each decoder layer as one
``LSTM`` op; :func:`greedy_captioner` writes the decoder as an ONNX ``Loop`` over LSTM cells in primitive ops that
feeds back its argmax word and stops after ``<eos>`` (a data-dependent stop), with at most ``MAX_STEPS`` steps.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

VOCAB = ["<pad>", "<bos>", "<eos>", "a", "man", "phone", "dog", "ball"]
BOS, EOS = 1, 2
SIDE, CH, D, E, H = 6, 4, 8, 4, 5
MAX_STEPS = 9
CAPTION_META = {"words_input": "words", "bos": "<bos>", "eos": "<eos>", "pad": "<pad>", "nouns": ["man", "phone",
                                                                                                   "dog", "ball"]}


@dataclass
class CaptionerWeights:
    """All weights, ONNX layouts: conv (CH, 3, 3, 3), fc (D, CH·SIDE²), LSTM W (4H, in), R (4H, H), b (4H,) in gate
    order i, o, f, c; the classifier (V, H)."""

    conv_w: np.ndarray
    conv_b: np.ndarray
    fc_w: np.ndarray
    fc_b: np.ndarray
    embed: np.ndarray
    lstm: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
    cls_w: np.ndarray
    cls_b: np.ndarray
    attention: np.ndarray

    @classmethod
    def random(cls, seed: int = 0, frames: int = 5) -> "CaptionerWeights":
        rng = np.random.default_rng(seed)
        f = lambda *s, scale=0.5: rng.normal(0, scale, s).astype(np.float32)  # noqa: E731
        active = np.repeat(np.float32([0, 0, 0, 0.5]), H)   # cell inputs mostly open: most units are active
        lstm = {name: (f(4 * H, size), f(4 * H, H), f(4 * H, scale=0.2) + active)
                for name, size in (("enc", D), ("dec1", D + E), ("dec1_s2vt", E), ("dec2", H))}
        return cls(f(CH, 3, 3, 3), f(CH, scale=0.1), f(D, CH * SIDE * SIDE, scale=0.2), f(D, scale=0.1),
                   f(len(VOCAB), E), lstm, f(len(VOCAB), H, scale=1.0), f(len(VOCAB), scale=0.3),
                   np.abs(f(1, frames)) + 0.1)


# -- ONNX ------------------------------------------------------------------------------------------------------------
def _init(name: str, value: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.array(value, order="C"), name)


class _Graph:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []

    def n(self, op: str, inputs: list[str], out: str, nodes: list | None = None, **attrs) -> str:
        (self.nodes if nodes is None else nodes).append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def c(self, name: str, value) -> str:
        self.inits.append(_init(name, value))
        return name


def _cnn(g: _Graph, p: CaptionerWeights) -> str:
    x = g.n("Conv", ["frames", g.c("conv_W", p.conv_w), g.c("conv_B", p.conv_b)], "conv", kernel_shape=[3, 3],
            pads=[1, 1, 1, 1])
    x = g.n("Relu", [x], "relu")
    x = g.n("Flatten", [x], "flatten", axis=1)
    return g.n("Relu", [g.n("Gemm", [x, g.c("fc_W", p.fc_w), g.c("fc_B", p.fc_b)], "fc", transB=1)], "features")


def _lstm(g: _Graph, p: CaptionerWeights, name: str, x: str, out: str, init: tuple[str, str] | None = None,
          outputs: tuple[str, ...] = ()) -> str:
    w, r, b = p.lstm[name]
    inputs = [x, g.c(f"{out}_W", w[None]), g.c(f"{out}_R", r[None]),
              g.c(f"{out}_B", np.concatenate([b, np.zeros_like(b)])[None])]
    if init:
        inputs += ["", *init]
    g.nodes.append(helper.make_node("LSTM", inputs, [f"{out}_Y", *outputs], name=out, hidden_size=H,
                                    activations=["Sigmoid", "Relu", "Relu"]))
    return g.n("Squeeze", [f"{out}_Y", "axis1"], f"{out}_H")


def _model(g: _Graph, inputs: list, outputs: list, caption: dict) -> onnx.ModelProto:
    model = helper.make_model(helper.make_graph(g.nodes, "captioner", inputs, outputs, g.inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"ebr_onnx.labels": json.dumps(VOCAB), "ebr_onnx.caption": json.dumps(caption)})
    onnx.checker.check_model(model, full_check=True)
    return model


def _frames_input(frames: int | str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("frames", TensorProto.FLOAT, [frames, 3, SIDE, SIDE])


def teacher_forced_captioner(p: CaptionerWeights, pool: str = "mean", frames: int | str = "T",
                             metadata: bool = True) -> onnx.ModelProto:
    """frames (T, 3, 6, 6), words (L,) → probs (L, 1, V); ``pool``: mean, max, attention (T fixed), s2vt."""
    g = _Graph()
    g.c("axis0", np.array([0], np.int64))
    g.c("axis1", np.array([1], np.int64))
    features = _cnn(g, p)
    emb = g.n("Unsqueeze", [g.n("Relu", [g.n("Gather", [g.c("embed", p.embed), "words"], "embed_rows")],
                                "embed_relu"), "axis1"], "embed_seq")                       # (L, 1, E)
    if pool == "s2vt":
        seq = g.n("Unsqueeze", [features, "axis1"], "enc_X")                               # (T, 1, D)
        _lstm(g, p, "enc", seq, "enc", outputs=("enc_h", "enc_c"))
        x = _lstm(g, p, "dec1_s2vt", emb, "dec1", init=("enc_h", "enc_c"))
    else:
        if pool == "mean":
            pooled = g.n("ReduceMean", [features], "pooled", axes=[0], keepdims=1)
        elif pool == "max":
            pooled = g.n("ReduceMax", [features], "pooled", axes=[0], keepdims=1)
        else:
            pooled = g.n("MatMul", [g.c("attention", p.attention), features], "pooled")    # (1, T) @ (T, D)
        shape = g.n("Concat", [g.n("Shape", ["words"], "steps"), g.c("one_d", np.array([1, D]))], "shape", axis=0)
        tiled = g.n("Expand", [g.n("Unsqueeze", [pooled, "axis0"], "pooled_1"), shape], "pooled_seq")
        x = _lstm(g, p, "dec1", g.n("Concat", [tiled, emb], "dec1_in", axis=2), "dec1")
    x = _lstm(g, p, "dec2", x, "dec2")
    x = g.n("Add", [g.n("MatMul", [x, g.c("cls_WT", p.cls_w.T)], "classifier"), g.c("cls_B", p.cls_b)], "logits")
    g.n("Softmax", [x], "probs", axis=2)
    inputs = [_frames_input(frames), helper.make_tensor_value_info("words", TensorProto.INT64, ["L"])]
    model = _model(g, inputs, [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["L", 1, len(VOCAB)])],
                   CAPTION_META)
    if not metadata:
        del model.metadata_props[:]
    return model


def _cell(g: _Graph, body: list, name: str, x: str, h: str, c: str) -> tuple[str, str]:
    a = g.n("Add", [g.n("Gemm", [h, f"{name}_R", f"{name}_zero"], f"{name}_hr", body, transB=1),
                    g.n("Gemm", [x, f"{name}_W", f"{name}_b"], f"{name}_xw", body, transB=1)], f"{name}_a", body)
    body.append(helper.make_node("Split", [a], [f"{name}_a{k}" for k in "iofc"], name=f"{name}_split", axis=1))
    i, o, f = (g.n("Sigmoid", [f"{name}_a{k}"], f"{name}_{k}", body) for k in "iof")
    c = g.n("Add", [g.n("Mul", [f, c], f"{name}_fc", body),
                    g.n("Mul", [i, g.n("Relu", [f"{name}_ac"], f"{name}_g", body)], f"{name}_ig", body)],
            f"{name}_c", body)
    return g.n("Mul", [o, g.n("Relu", [c], f"{name}_rc", body)], f"{name}_h", body), c


def greedy_captioner(p: CaptionerWeights) -> onnx.ModelProto:
    """frames → probs (L, 1, V), tokens (L, 1): a mean-pooled encoder and the decoder as a Loop that stops after
    <eos> (at most ``MAX_STEPS`` steps)."""
    g = _Graph()
    pooled = g.n("ReduceMean", [_cnn(g, p)], "pooled", axes=[0], keepdims=1)
    g.c("embed", p.embed)
    for name in ("dec1", "dec2"):
        w, r, b = p.lstm[name]
        g.c(f"{name}_W", w), g.c(f"{name}_R", r), g.c(f"{name}_b", b), g.c(f"{name}_zero", np.zeros_like(b))
    g.c("cls_W", p.cls_w), g.c("cls_B", p.cls_b)
    body: list = []
    emb = g.n("Relu", [g.n("Gather", ["embed", "tok_in"], "embed_row", body)], "embed_relu", body)
    h1, c1 = _cell(g, body, "dec1", g.n("Concat", [pooled, emb], "x", body, axis=1), "h1_in", "c1_in")
    h2, c2 = _cell(g, body, "dec2", h1, "h2_in", "c2_in")
    logits = g.n("Gemm", [h2, "cls_W", "cls_B"], "classifier", body, transB=1)
    tok = g.n("ArgMax", [logits], "tok", body, axis=1, keepdims=0)
    body.append(helper.make_node("Constant", [], ["eos"], value=_init("eos", np.array([EOS], np.int64))))
    body.append(helper.make_node("Constant", [], ["ax0"], value=_init("ax0", np.array([0], np.int64))))
    g.n("Squeeze", [g.n("Not", [g.n("Equal", [tok, "eos"], "is_eos", body)], "go_on", body), "ax0"], "cond_out",
        body)
    f32 = lambda n, s: helper.make_tensor_value_info(n, TensorProto.FLOAT, s)  # noqa: E731
    i64 = lambda n, s: helper.make_tensor_value_info(n, TensorProto.INT64, s)  # noqa: E731
    step = helper.make_graph(
        body, "step", [i64("iter", []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                       *(f32(n, [1, H]) for n in ("h1_in", "c1_in", "h2_in", "c2_in")), i64("tok_in", [1])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         *(f32(n, [1, H]) for n in (h1, c1, h2, c2)), i64(tok, [1]), f32(logits, [1, len(VOCAB)])])
    zero = g.c("zero_state", np.zeros((1, H), np.float32))
    g.nodes.append(helper.make_node("Loop", [g.c("max_steps", np.array(MAX_STEPS, np.int64)),
                                             g.c("go", np.array(True)), zero, zero, zero, zero,
                                             g.c("bos", np.array([BOS], np.int64))],
                                    ["h1_T", "c1_T", "h2_T", "c2_T", "tok_T", "logits"], name="decode", body=step))
    g.n("Softmax", ["logits"], "probs", axis=2)
    meta = {**CAPTION_META, "words_input": None}
    return _model(g, [_frames_input("T")], [f32("probs", ["L", 1, len(VOCAB)])], meta)


# -- PyTorch ---------------------------------------------------------------------------------------------------------
def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, np.float32))


def _torch_step(p: CaptionerWeights, name: str, x, h, c):
    w, r, b = (_t(a) for a in p.lstm[name])
    i, o, f, g = (x @ w.T + b + h @ r.T).chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.relu(g)
    return torch.sigmoid(o) * torch.relu(c), c


def torch_features(p: CaptionerWeights, frames: torch.Tensor) -> torch.Tensor:
    x = torch.relu(torch.nn.functional.conv2d(frames, _t(p.conv_w), _t(p.conv_b), padding=1))
    return torch.relu(x.flatten(1) @ _t(p.fc_w).T + _t(p.fc_b))


def torch_logits(p: CaptionerWeights, frames: torch.Tensor, words: np.ndarray, pool: str = "mean") -> torch.Tensor:
    """The teacher-forced captioner in PyTorch: logits (L, V) for the fed ``words``."""
    features = torch_features(p, frames)
    zero = torch.zeros(1, H)
    emb = torch.relu(_t(p.embed)[torch.from_numpy(np.asarray(words))])
    if pool == "s2vt":
        h, c = zero, zero
        for x_t in features:
            h, c = _torch_step(p, "enc", x_t[None], h, c)
        xs, first = [e[None] for e in emb], "dec1_s2vt"
    else:
        pooled = {"mean": lambda f: f.mean(0, keepdim=True), "max": lambda f: f.max(0, keepdim=True).values,
                  "attention": lambda f: _t(p.attention) @ f}[pool](features)
        xs, first, h, c = [torch.cat([pooled, e[None]], dim=1) for e in emb], "dec1", zero, zero
    h2, c2, out = zero, zero, []
    for x in xs:
        h, c = _torch_step(p, first, x, h, c)
        h2, c2 = _torch_step(p, "dec2", h, h2, c2)
        out.append(h2 @ _t(p.cls_w).T + _t(p.cls_b))
    return torch.cat(out)


class ScriptedGreedy(torch.nn.Module):
    """A greedy captioner written as PyTorch users write one — ``LSTMCell``s in a Python loop that appends each
    step's logits to a list and breaks after <eos> — for ``torch.jit.script`` and the legacy exporter (an ONNX
    ``Loop`` with a sequence state, an ``If`` on the emitted word and one-step ``LSTM`` ops)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, CH, 3, padding=1)
        self.fc = torch.nn.Linear(CH * SIDE * SIDE, D)
        self.embed = torch.nn.Embedding(len(VOCAB), E)
        self.cell1 = torch.nn.LSTMCell(D + E, H)
        self.cell2 = torch.nn.LSTMCell(H, H)
        self.cls = torch.nn.Linear(H, len(VOCAB))

    def step(self, pooled: torch.Tensor, tok: torch.Tensor, h1: torch.Tensor, c1: torch.Tensor, h2: torch.Tensor,
             c2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        h1, c1 = self.cell1(torch.cat([pooled, torch.relu(self.embed(tok))], 1), (h1, c1))
        h2, c2 = self.cell2(h1, (h2, c2))
        return self.cls(h2), h1, c1, h2, c2

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        pooled = torch.relu(self.fc(torch.relu(self.conv(frames)).flatten(1))).mean(0, keepdim=True)
        h1 = torch.zeros(1, 5)
        c1, h2, c2 = torch.zeros_like(h1), torch.zeros_like(h1), torch.zeros_like(h1)
        tok = torch.ones(1, dtype=torch.long)
        out: list[torch.Tensor] = []
        for _ in range(9):
            logits, h1, c1, h2, c2 = self.step(pooled, tok, h1, c1, h2, c2)
            out.append(logits)
            tok = logits.argmax(1)
            if int(tok[0]) == 2:
                break
        return torch.stack(out)

    def teacher(self, frames: torch.Tensor, fed: list[int]) -> torch.Tensor:
        """The logits (L, V) of the decoder fed ``fed`` (<bos> and the words it fed back)."""
        pooled = torch.relu(self.fc(torch.relu(self.conv(frames)).flatten(1))).mean(0, keepdim=True)
        h1 = torch.zeros(1, H)
        c1, h2, c2 = torch.zeros_like(h1), torch.zeros_like(h1), torch.zeros_like(h1)
        out = []
        for word in fed:
            logits, h1, c1, h2, c2 = self.step(pooled, torch.tensor([word]), h1, c1, h2, c2)
            out.append(logits)
        return torch.cat(out)


def scripted_greedy(module: ScriptedGreedy, path) -> onnx.ModelProto:
    """``module`` scripted and exported with the legacy exporter (frames' T free), the vocabulary in its metadata."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.jit.script(module), (torch.zeros(5, 3, SIDE, SIDE),), str(path), dynamo=False,
                          input_names=["frames"], output_names=["logits"], dynamic_axes={"frames": {0: "T"}},
                          opset_version=17)
    model = onnx.load(str(path))
    helper.set_model_props(model, {"ebr_onnx.labels": json.dumps(VOCAB)})
    return model

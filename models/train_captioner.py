"""Train the bundled CNN-LSTM-LSTM video captioner on :mod:`ebr_onnx.app.synthetic_captions` videos and export it
to ONNX twice: teacher-forced (``captioner.onnx``) and with its greedy decoding loop (``captioner_greedy.onnx``).

    python models/train_captioner.py --seed 0

The mean-pool captioner of Venugopalan et al. (2015), the model the paper grounds captions with (§4.2, §6), made
small: per frame 3 × (Conv 3×3 + ReLU + MaxPool 2×2) → Flatten → Gemm + ReLU (``features``, D = 128, ≥ 0); the mean
of the features over the frames; a two-layer ReLU-LSTM decoder (H = 96 each; gates sigmoid, cell input and output
ReLU, as the paper's Caffe release) whose first layer reads, at every step, the pooled features beside the ReLU'd
embedding (E = 16) of the previous word; a linear classifier over the vocabulary at every step. Cross-entropy at
every step, teacher-forced, on freshly generated videos.

Exports (built by hand, as ``train_action_model.py`` does):

* ``captioner.onnx``: inputs ``frames`` (T, 3, 64, 64) and ``words`` (L,) int64 — the caption fed, ``<bos> w1 …
  wn`` — two ``LSTM`` ops; output ``probs`` (L, 1, V): step ``k`` predicts caption word ``k + 1`` (``<eos>`` last);
* ``captioner_greedy.onnx``: input ``frames`` only; an ONNX ``Loop`` (at most 20 steps, stopping after it emits
  ``<eos>``: a data-dependent stop) whose body runs the two LSTM cells in primitive ops, feeds back the argmax
  word and stacks the step's logits; outputs ``probs`` (L, 1, V) and ``tokens`` (L, 1).

Metadata of both: the vocabulary as ``ebr_onnx.labels``, ``ebr_onnx.caption`` (the words input, the special tokens,
the nouns), the preprocessing, T = 16, the map layer ``relu3``, the classifier, and the measured accuracy.
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from ebr_onnx.app.synthetic_captions import BOS, COLOURS, EOS, NOUNS, PAD, SIDES, VOCABULARY, encode, make_caption_clip

SIZE, FRAMES, BATCH = 64, 16, 16
CHANNELS = (16, 32, 32)
FEATURES, EMBED, HIDDEN = 128, 16, 96
MAX_STEPS = 20
PREPROCESS = {"name": "synthetic", "size": [SIZE, SIZE], "crop": None, "scale": 1.0, "mean": [0.5, 0.5, 0.5],
              "std": [0.25, 0.25, 0.25], "channel_order": "RGB"}
UNIT = (np.arange(256, dtype=np.float64) / 255.0).astype(np.float32)
MAP_LAYER = "relu3"
MEAN = torch.tensor(PREPROCESS["mean"]).view(3, 1, 1)
STD = torch.tensor(PREPROCESS["std"]).view(3, 1, 1)
V = len(VOCABULARY)
BOS_ID, EOS_ID = VOCABULARY.index(BOS), VOCABULARY.index(EOS)


class ReLULSTM(nn.Module):
    """One LSTM layer with ReLU for the cell input and output; gate rows in ONNX order i, o, f, c."""

    def __init__(self, inputs: int, hidden: int) -> None:
        super().__init__()
        bound = hidden**-0.5
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden, inputs).uniform_(-bound, bound))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden, hidden).uniform_(-bound, bound))
        bias = torch.zeros(4 * hidden)
        bias[2 * hidden: 3 * hidden] = 1.0  # forget gate starts open
        self.bias = nn.Parameter(bias)
        self.hidden = hidden

    def step(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        i, o, f, g = (x @ self.weight_ih.T + self.bias + h @ self.weight_hh.T).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.relu(g)
        return torch.sigmoid(o) * torch.relu(c), c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (L, B, D) → h (L, B, H), zero initial state."""
        h = x.new_zeros(x.shape[1], self.hidden)
        c = torch.zeros_like(h)
        out = []
        for x_t in x:
            h, c = self.step(x_t, h, c)
            out.append(h)
        return torch.stack(out)


class Captioner(nn.Module):
    """Per-frame CNN → mean over frames → ReLU-LSTM → ReLU-LSTM → per-step classifier over the vocabulary."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in CHANNELS:
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c_out
        side = SIZE // 2 ** len(CHANNELS)
        self.cnn = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c_in * side * side, FEATURES), nn.ReLU())
        self.embed = nn.Embedding(V, EMBED)
        self.lstm1 = ReLULSTM(FEATURES + EMBED, HIDDEN)
        self.lstm2 = ReLULSTM(HIDDEN, HIDDEN)
        self.classifier = nn.Linear(HIDDEN, V)
        for m in self.cnn:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (T, B, 3, S, S) preprocessed → per-frame features (T, B, D)."""
        t, b = frames.shape[:2]
        return self.cnn(frames.flatten(0, 1)).view(t, b, -1)

    def pooled(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (T, B, 3, S, S) preprocessed → mean features (B, D)."""
        return self.frame_features(frames).mean(0)

    def forward(self, frames: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        """frames (T, B, 3, S, S), fed words (L, B) → logits (L, B, V)."""
        return self.decode(self.pooled(frames), words)

    def decode(self, pooled: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        """Mean features (B, D), fed words (L, B) → logits (L, B, V)."""
        emb = torch.relu(self.embed(words))
        x = torch.cat([pooled.expand(words.shape[0], -1, -1), emb], dim=2)
        return self.classifier(self.lstm2(self.lstm1(x)))

    @torch.no_grad()
    def greedy(self, frames: torch.Tensor, max_steps: int = MAX_STEPS) -> np.ndarray:
        """Greedy decoding of (T, B, …) frames: token ids (B, max_steps), <eos> and after it left as emitted."""
        pooled = self.pooled(frames)
        b = pooled.shape[0]
        state = [pooled.new_zeros(b, HIDDEN) for _ in range(4)]
        tok = torch.full((b,), BOS_ID, dtype=torch.long)
        out = []
        for _ in range(max_steps):
            x = torch.cat([pooled, torch.relu(self.embed(tok))], dim=1)
            state[0], state[1] = self.lstm1.step(x, state[0], state[1])
            state[2], state[3] = self.lstm2.step(state[0], state[2], state[3])
            tok = self.classifier(state[2]).argmax(1)
            out.append(tok)
        return torch.stack(out, 1).numpy()


def to_input(frames: np.ndarray) -> torch.Tensor:
    """uint8 clips (B, T, H, W, 3) → preprocessed float (T, B, 3, H, W)."""
    x = torch.from_numpy(UNIT[frames]).permute(1, 0, 4, 2, 3)
    return (x * PREPROCESS["scale"] - MEAN) / STD


def batch(rng: np.random.Generator, size: int, frames: int, clutter: float):
    clips = [make_caption_clip(rng, frames, SIZE, clutter) for _ in range(size)]
    fed = np.stack([encode([BOS, *c.caption]) for c in clips], axis=1)       # (L, B)
    target = np.stack([encode([*c.caption, EOS]) for c in clips], axis=1)
    return np.stack([c.frames for c in clips]), torch.from_numpy(fed), torch.from_numpy(target), clips


def frame_concepts(clips, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The shape and colour ids (T, B) of the object each frame of each clip shows (exactly one per frame)."""
    shape = np.zeros((frames, len(clips)), dtype=np.int64)
    colour = np.zeros_like(shape)
    for b, clip in enumerate(clips):
        for obj in clip.objects:
            start, end = obj.segment
            shape[start:end + 1, b] = NOUNS.index(obj.noun)
            colour[start:end + 1, b] = list(COLOURS).index(obj.colour)
    return torch.from_numpy(shape), torch.from_numpy(colour)


def train(model: Captioner, steps: int, seed: int, lr: float, frames: int, l1: float, frame_aux: float = 0.0) -> float:
    """Adam (one-cycle), cross-entropy at every step on fresh batches, plus ``l1`` × the mean per-frame sum of the
    features (an L1 activity penalty: sparse features); clutter ramps from none to full over the first 30 % of the
    steps; ``frame_aux`` > 0 adds that weight × an auxiliary per-frame concept loss (a bias-free linear head on each
    frame's features, cross-entropy on the shape and on the colour of the object the frame shows; the head is
    training-only, not exported). Returns the teacher-forced token accuracy over the last 100 batches."""
    rng = np.random.default_rng([seed, 0])
    params = list(model.parameters())
    head = None
    if frame_aux > 0:
        head = nn.Linear(FEATURES, len(NOUNS) + len(COLOURS), bias=False)
        params += list(head.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    loss_fn = nn.CrossEntropyLoss()
    start, running = time.time(), []
    for step in range(1, steps + 1):
        clutter = min(1.0, step / (0.3 * steps))
        video, fed, target, clips = batch(rng, BATCH, frames, clutter)
        features = model.frame_features(to_input(video))
        logits = model.decode(features.mean(0), fed)
        loss = loss_fn(logits.flatten(0, 1), target.flatten()) + l1 * features.sum(2).mean()
        if head is not None:
            shape, colour = frame_concepts(clips, frames)
            concept = head(features)                                     # (T, B, nouns + colours)
            loss = loss + frame_aux * (loss_fn(concept[..., :len(NOUNS)].flatten(0, 1), shape.flatten())
                                       + loss_fn(concept[..., len(NOUNS):].flatten(0, 1), colour.flatten()))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        running.append(float((logits.argmax(2) == target).float().mean()))
        if step % 50 == 0:
            print(f"step {step}/{steps}  loss {loss.item():.3f}  token acc (last 50) {np.mean(running[-50:]):.3f}  "
                  f"features per frame {features.sum(2).mean().item():.1f}  clutter {clutter:.2f}  "
                  f"{time.time() - start:.0f} s", flush=True)
    return float(np.mean(running[-100:]))


# -- ONNX ------------------------------------------------------------------------------------------------------------
class _Builder:
    def __init__(self) -> None:
        self.init: list[TensorProto] = []
        self.nodes: list[onnx.NodeProto] = []

    def const(self, name: str, value) -> str:
        array = value.detach().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        self.init.append(numpy_helper.from_array(np.array(array, order="C"), name))  # (0-d arrays stay 0-d)
        return name

    def node(self, op: str, inputs: list[str], name: str, nodes: list | None = None, **attrs) -> str:
        (self.nodes if nodes is None else nodes).append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name


def _cnn(b: _Builder, model: Captioner) -> str:
    """frames → … → features (T, D) → pooled (1, D), the mean over the frames."""
    x = "frames"
    convs = [m for m in model.cnn if isinstance(m, nn.Conv2d)]
    for k, conv in enumerate(convs, 1):
        x = b.node("Conv", [x, b.const(f"conv{k}_W", conv.weight), b.const(f"conv{k}_B", conv.bias)], f"conv{k}",
                   kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        x = b.node("Relu", [x], f"relu{k}")
        x = b.node("MaxPool", [x], f"pool{k}", kernel_shape=[2, 2], strides=[2, 2])
    fc = model.cnn[-2]
    x = b.node("Flatten", [x], "flatten", axis=1)
    x = b.node("Gemm", [x, b.const("fc_W", fc.weight), b.const("fc_B", fc.bias)], "fc", transB=1)
    features = b.node("Relu", [x], "features")
    return b.node("ReduceMean", [features], "pooled", axes=[0], keepdims=1)


def _metadata(words_input: str | None, accuracy: dict) -> dict[str, str]:
    caption = {"words_input": words_input, "bos": BOS, "eos": EOS, "pad": PAD, "nouns": list(NOUNS),
               "max_steps": MAX_STEPS}
    return {
        "ebr_onnx.labels": json.dumps(list(VOCABULARY)),
        "ebr_onnx.caption": json.dumps(caption),
        "ebr_onnx.input_size": json.dumps([SIZE, SIZE]),
        "ebr_onnx.preprocess": json.dumps(PREPROCESS),
        "ebr_onnx.frames": json.dumps(FRAMES),
        "ebr_onnx.classifier": "classifier",
        "ebr_onnx.map_layer": MAP_LAYER,
        "ebr_onnx.caption_accuracy": json.dumps(accuracy),
    }


def _save(b: _Builder, name: str, inputs, outputs, metadata: dict[str, str], path: Path) -> None:
    graph = helper.make_graph(b.nodes, name, inputs, outputs, b.init)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="ebr_onnx")
    proto.ir_version = 8
    helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, path)


def export_teacher_forced(model: Captioner, accuracy: dict, path: Path) -> None:
    """frames, words → probs (L, 1, V), with one LSTM op per layer."""
    b = _Builder()
    pooled = _cnn(b, model)
    emb = b.node("Relu", [b.node("Gather", [b.const("embed_W", model.embed.weight), "words"], "embed")],
                 "embed_relu")
    axis0, axis1 = b.const("axis0", np.array([0], np.int64)), b.const("axis1", np.array([1], np.int64))
    emb = b.node("Unsqueeze", [emb, axis1], "embed_seq")                                # (L, 1, E)
    shape = b.node("Concat", [b.node("Shape", ["words"], "steps"), b.const("one_feat", np.array([1, FEATURES]))],
                   "pooled_shape", axis=0)
    pooled_seq = b.node("Expand", [b.node("Unsqueeze", [pooled, axis0], "pooled_1"), shape], "pooled_seq")
    x = b.node("Concat", [pooled_seq, emb], "lstm1_X", axis=2)                           # (L, 1, D + E)
    for k, lstm in ((1, model.lstm1), (2, model.lstm2)):
        bias = torch.cat([lstm.bias, torch.zeros_like(lstm.bias)])
        y = b.node("LSTM", [x, b.const(f"lstm{k}_W", lstm.weight_ih[None]), b.const(f"lstm{k}_R", lstm.weight_hh[None]),
                            b.const(f"lstm{k}_B", bias[None])], f"lstm{k}_Y", hidden_size=HIDDEN,
                   activations=["Sigmoid", "Relu", "Relu"], direction="forward", layout=0)
        x = b.node("Squeeze", [y, axis1], f"lstm{k}_H")                                  # (L, 1, H)
    x = b.node("MatMul", [x, b.const("classifier_W", model.classifier.weight.T)], "classifier")
    x = b.node("Add", [x, b.const("classifier_B", model.classifier.bias)], "logits")
    b.node("Softmax", [x], "probs", axis=2)
    inputs = [helper.make_tensor_value_info("frames", TensorProto.FLOAT, ["T", 3, SIZE, SIZE]),
              helper.make_tensor_value_info("words", TensorProto.INT64, ["L"])]
    outputs = [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["L", 1, V])]
    _save(b, "captioner", inputs, outputs, _metadata("words", accuracy), path)


def _cell(b: _Builder, body: list, layer: int, x: str, h: str, c: str) -> tuple[str, str]:
    """One ReLU-LSTM step in primitive ops, as PyTorch exports an ``LSTMCell``: Gemm(x) + Gemm(h) → Split."""
    p = f"l{layer}"
    a = b.node("Add", [b.node("Gemm", [h, f"lstm{layer}_Whh", f"lstm{layer}_bhh"], f"{p}_hr", body, transB=1),
                       b.node("Gemm", [x, f"lstm{layer}_Wih", f"lstm{layer}_bih"], f"{p}_xw", body, transB=1)],
               f"{p}_gates", body)
    body.append(helper.make_node("Split", [a], [f"{p}_a_{g}" for g in "iofc"], name=f"{p}_split", axis=1))
    i, f, o = (b.node("Sigmoid", [f"{p}_a_{g}"], f"{p}_{g}", body) for g in "ifo")
    g = b.node("Relu", [f"{p}_a_c"], f"{p}_g", body)
    c = b.node("Add", [b.node("Mul", [f, c], f"{p}_fc", body), b.node("Mul", [i, g], f"{p}_ig", body)], f"{p}_c",
               body)
    h = b.node("Mul", [o, b.node("Relu", [c], f"{p}_act_c", body)], f"{p}_h", body)
    return h, c


def export_greedy(model: Captioner, accuracy: dict, path: Path) -> None:
    """frames → probs (L, 1, V), tokens (L, 1): the greedy decoder as an ONNX Loop that stops after <eos>."""
    b = _Builder()
    pooled = _cnn(b, model)
    b.const("embed_W", model.embed.weight)
    for k, lstm in ((1, model.lstm1), (2, model.lstm2)):
        b.const(f"lstm{k}_Wih", lstm.weight_ih)
        b.const(f"lstm{k}_Whh", lstm.weight_hh)
        b.const(f"lstm{k}_bih", lstm.bias)
        b.const(f"lstm{k}_bhh", torch.zeros_like(lstm.bias))
    b.const("classifier_W", model.classifier.weight)
    b.const("classifier_B", model.classifier.bias)
    body: list = []
    emb = b.node("Relu", [b.node("Gather", ["embed_W", "tok_in"], "embed", body)], "embed_relu", body)
    x = b.node("Concat", [pooled, emb], "x", body, axis=1)                               # (1, D + E)
    h1, c1 = _cell(b, body, 1, x, "h1_in", "c1_in")
    h2, c2 = _cell(b, body, 2, h1, "h2_in", "c2_in")
    step_logits = b.node("Gemm", [h2, "classifier_W", "classifier_B"], "classifier", body, transB=1)  # (1, V)
    tok = b.node("ArgMax", [step_logits], "tok_out", body, axis=1, keepdims=0)           # (1,)
    body.append(helper.make_node("Constant", [], ["eos"], name="eos", value=numpy_helper.from_array(
        np.array([EOS_ID], np.int64), "eos")))
    go_on = b.node("Not", [b.node("Equal", [tok, "eos"], "is_eos", body)], "go_on", body)
    body.append(helper.make_node("Constant", [], ["axis_0"], name="axis_0", value=numpy_helper.from_array(
        np.array([0], np.int64), "axis_0")))
    body.append(helper.make_node("Squeeze", [go_on, "axis_0"], ["cond_out"], name="cond_out"))
    for name, value in (("h1_out", h1), ("c1_out", c1), ("h2_out", h2), ("c2_out", c2), ("logits_out", step_logits),
                        ("tok_scan", tok)):
        body.append(helper.make_node("Identity", [value], [name], name=name))
    f32 = lambda n, s: helper.make_tensor_value_info(n, TensorProto.FLOAT, s)  # noqa: E731
    i64 = lambda n, s: helper.make_tensor_value_info(n, TensorProto.INT64, s)  # noqa: E731
    graph = helper.make_graph(
        body, "decode_step",
        [i64("iter", []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         *(f32(n, [1, HIDDEN]) for n in ("h1_in", "c1_in", "h2_in", "c2_in")), i64("tok_in", [1])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         *(f32(n, [1, HIDDEN]) for n in ("h1_out", "c1_out", "h2_out", "c2_out")), i64("tok_out", [1]),
         f32("logits_out", [1, V]), i64("tok_scan", [1])])
    zeros = b.const("zero_state", np.zeros((1, HIDDEN), np.float32))
    b.nodes.append(helper.make_node(
        "Loop", [b.const("max_steps", np.array(MAX_STEPS, np.int64)), b.const("go", np.array(True)),
                 zeros, zeros, zeros, zeros, b.const("bos", np.array([BOS_ID], np.int64))],
        ["h1_last", "c1_last", "h2_last", "c2_last", "tok_last", "logits", "tokens"], name="decode", body=graph))
    b.node("Softmax", ["logits"], "probs", axis=2)
    inputs = [helper.make_tensor_value_info("frames", TensorProto.FLOAT, ["T", 3, SIZE, SIZE])]
    outputs = [f32("probs", ["L", 1, V]), i64("tokens", ["L", 1])]
    _save(b, "captioner_greedy", inputs, outputs, _metadata(None, accuracy), path)


def check_exports(model: Captioner, teacher: Path, greedy: Path, frames: np.ndarray) -> float:
    """Largest |onnxruntime − PyTorch| of the probabilities of both exports on one video; raises above 1e-5."""
    x = to_input(frames[None])
    tokens = model.greedy(x)[0]
    length = int(np.argmax(tokens == EOS_ID)) + 1 if (tokens == EOS_ID).any() else MAX_STEPS
    fed = torch.from_numpy(np.concatenate([[BOS_ID], tokens[:length - 1]]))[:, None]
    with torch.no_grad():
        expected = torch.softmax(model(x, fed), dim=2).numpy()
    feeds = {"frames": x[:, 0].numpy()}
    got_teacher = ort.InferenceSession(str(teacher), providers=["CPUExecutionProvider"]).run(
        ["probs"], {**feeds, "words": fed[:, 0].numpy()})[0]
    got_greedy, got_tokens = ort.InferenceSession(str(greedy), providers=["CPUExecutionProvider"]).run(None, feeds)
    if got_greedy.shape != expected.shape or not np.array_equal(got_tokens[:, 0], tokens[:length]):
        raise RuntimeError(f"the greedy export decodes {got_tokens[:, 0]} where PyTorch decodes {tokens[:length]}")
    worst = max(float(np.abs(got_teacher - expected).max()), float(np.abs(got_greedy - expected).max()))
    if worst > 1e-5:
        raise RuntimeError(f"onnxruntime differs from PyTorch by {worst:.2e} (> 1e-5)")
    return worst


# -- accuracy --------------------------------------------------------------------------------------------------------
def decode_words(tokens: np.ndarray) -> list[str]:
    """The words before the first <eos>."""
    words = []
    for t in tokens:
        if int(t) == EOS_ID:
            break
        words.append(VOCABULARY[int(t)])
    return words


def bleu4(hypotheses: list[list[str]], references: list[list[str]]) -> float:
    """Corpus BLEU-4 with one reference per hypothesis (Papineni et al.: clipped n-gram precisions 1–4, geometric
    mean, brevity penalty)."""
    matched, total = [0] * 4, [0] * 4
    hyp_len = ref_len = 0
    for hyp, ref in zip(hypotheses, references):
        hyp_len, ref_len = hyp_len + len(hyp), ref_len + len(ref)
        for n in range(1, 5):
            h = Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
            r = Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
            matched[n - 1] += sum(min(c, r[g]) for g, c in h.items())
            total[n - 1] += max(len(hyp) - n + 1, 0)
    if min(matched) == 0:
        return 0.0
    log_precision = sum(np.log(m / t) for m, t in zip(matched, total)) / 4
    brevity = 1.0 if hyp_len > ref_len else float(np.exp(1 - ref_len / max(hyp_len, 1)))
    return float(brevity * np.exp(log_precision))


def caption_accuracy(model: Captioner, videos: int, seed: int, frames: int) -> dict:
    """Greedy decoding on ``videos`` fresh videos of ``frames`` frames: exact captions, word accuracy (position by
    position, over the reference's words and its <eos>), both nouns right, BLEU-4."""
    rng = np.random.default_rng([seed, 1, frames])
    hyps, refs = [], []
    for start in range(0, videos, 50):
        clips = [make_caption_clip(rng, frames, SIZE) for _ in range(min(50, videos - start))]
        tokens = model.greedy(to_input(np.stack([c.frames for c in clips])))
        hyps += [decode_words(t) for t in tokens]
        refs += [c.caption for c in clips]
    words = [sum(a == b for a, b in zip(h + [EOS], r + [EOS])) for h, r in zip(hyps, refs)]
    nouns = [[w for w in h if w in NOUNS] == [w for w in r if w in NOUNS] for h, r in zip(hyps, refs)]

    def kind(words: tuple[str, ...]) -> float:   # the words of one kind, position by position
        pairs = [(a, b) for h, r in zip(hyps, refs) for a, b in zip(h + [EOS] * len(r), r) if b in words]
        return round(float(np.mean([a == b for a, b in pairs])), 4)

    return {"videos": videos, "frames": frames,
            "exact": round(float(np.mean([h == r for h, r in zip(hyps, refs)])), 4),
            "word_accuracy": round(sum(words) / sum(len(r) + 1 for r in refs), 4),
            "nouns": round(float(np.mean(nouns)), 4), "bleu4": round(bleu4(hyps, refs), 4),
            "noun_words": kind(NOUNS), "colour_words": kind(tuple(COLOURS)), "side_words": kind(SIDES)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).parent
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=here / "captioner.onnx", help="the teacher-forced export")
    parser.add_argument("--greedy-out", type=Path, default=here / "captioner_greedy.onnx",
                        help="the export with its greedy decoding Loop")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--train-frames", type=int, default=8, help="frames per training video (default: 8)")
    parser.add_argument("--l1", type=float, default=0.0,
                        help="weight of an L1 activity penalty on the per-frame features (default: 0, none)")
    parser.add_argument("--frame-aux", type=float, default=0.0,
                        help="weight of an auxiliary per-frame shape/colour classification loss (default: 0, none)")
    parser.add_argument("--test-videos", type=int, default=500)
    parser.add_argument("--save-state", type=Path, help="also save the PyTorch state dict here")
    parser.add_argument("--threads", type=int, default=1,
                        help="PyTorch threads (default 1: faster than 2 on a shared 2-core machine)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = Captioner()
    start = time.time()
    train_acc = train(model, args.steps, args.seed, args.lr, args.train_frames, args.l1, args.frame_aux)
    train_time = time.time() - start
    model.eval()
    if args.save_state:
        torch.save(model.state_dict(), args.save_state)
    accuracy = {"test": caption_accuracy(model, args.test_videos, args.seed, FRAMES),
                "test_train_length": caption_accuracy(model, args.test_videos, args.seed, args.train_frames)}
    export_teacher_forced(model, accuracy["test"], args.out)
    export_greedy(model, accuracy["test"], args.greedy_out)
    worst = check_exports(model, args.out, args.greedy_out,
                          make_caption_clip(np.random.default_rng([args.seed, 2]), FRAMES).frames)
    print(json.dumps({"train_token_accuracy": round(train_acc, 4), **accuracy, "train_seconds": round(train_time, 1),
                      "steps": args.steps, "onnx_max_abs_diff": worst, "model_bytes": args.out.stat().st_size,
                      "greedy_model_bytes": args.greedy_out.stat().st_size}, indent=1))


if __name__ == "__main__":
    main()

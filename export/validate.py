"""Export validation: the exported graphs, run in ONNX Runtime on the CPU, against the PyTorch reference.

The reference is the checkpoint the graphs were built from, loaded with `vlm_edge.model` (for a
4-bit export: the AWQ checkpoint dequantized, i.e. the fake-quantized model, so both sides use
the same weights). Figures, each a relative error max|ort - ref| / max|ref|:

    vision      image embeddings of the validation images plus two fresh random ones; a float32
                graph within 1e-4 relative, an int8 or fp16 one (weights rounded on purpose) by
                cosine similarity: every image's embeddings (all its tokens as one vector) at least
                0.999 to the reference's, and max error within 10% of the largest value
    logits      prompt 0: the prefill and 16 decode steps, fed the reference's greedy tokens
    greedy      per prompt: 32 greedy tokens from each side (stop tokens ignored), identical or not;
                the ONNX side starts from the exported vision graph's embeddings, so an int8 vision
                tower is checked end to end here (the logits check feeds both sides the reference's
                image embeddings: it measures the decoder alone)

The ONNX side embeds text with the exported table and splices image embeddings in numpy, so the
whole hand-over the runtime relies on is checked, not only the graphs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image
from transformers import DynamicCache

from vlm_edge.common.conversations import read_conversations
from vlm_edge.common.image import preprocess_tiled
from vlm_edge.common.tiling import output_grid, s2_image_embeds
from vlm_edge.common.log import get_logger
from vlm_edge.common.splice import splice_embeddings
from vlm_edge.common.templates import render
from vlm_edge.common.tokenizer import IMAGE_TOKEN
from vlm_edge.model.checkpoint import Checkpoint
from vlm_edge.model.generate import cache_keyword

from .decoder import DecoderSpec

log = get_logger(__name__)

FP_LOGITS_REL = 1e-4  # float32 export vs PyTorch
INT4_LOGITS_REL = 1e-2  # 4-bit export vs the fake-quantized PyTorch model
GREEDY_MIN_FRACTION = 0.9  # prompts whose 32 greedy tokens must match exactly
VISION_MIN_COSINE = 0.999  # int8 / fp16 vision: per image, against the float reference
VISION_MAX_REL = 0.1  # and its max |error| / max |reference|
# A decoder rounded on purpose beyond the checkpoint's own 4-bit weights (int8 activations at accuracy
# level 4, a quantized LM head against the reference's float head) is judged like the int8 vision
# tower: by how close its logits stay and how often it picks the reference's next token when both are
# fed the same tokens (a near tie that flips makes two greedy continuations part for good, so
# identical continuations would measure luck, not rounding)
ROUNDED_MIN_COSINE = 0.999
ROUNDED_MIN_AGREEMENT = 0.95
# A rescored LM head (export/decoder.py) holds the int8 rows' logits where the probability is and the
# 4-bit estimate elsewhere: the raw-logit cosine measures that 4-bit bulk, which sampling barely
# reads, so its logits are judged by the next-token distributions instead: the mean KL divergence
# KL(reference || graph) of softmax(logits) per step, in nats, over every step checked
RESCORED_MAX_KL = 0.01
QUESTIONS = ("Describe the image.", "What colour is the circle?", "How many objects are there?",
             "What is in the picture?", "Where is the red square?", "What shape is the blue object?",
             "Is the triangle big or small?", "What word is written?", "Tell me about this image.",
             "What is at the top left?")


@dataclass
class Prompt:
    input_ids: list[int]
    images: list[Image.Image]


def validation_prompts(checkpoint: Checkpoint, source: Path, count: int = 10, seed: int = 0) -> list[Prompt]:
    """The checkpoint's own calibration conversations when it has them (real pictures), else fixed
    questions about random-noise pictures."""
    template, tok = checkpoint.template, checkpoint.tokenizer
    prompts: list[Prompt] = []
    calib = source / "calibration" / "conversations.json"
    if calib.is_file():
        for conv in read_conversations(calib)[:count]:
            first = conv.messages[0]
            images = conv.images[: first["content"].count(IMAGE_TOKEN)]
            ids = tok.tokenize_prompt(render(template, [first]))
            prompts.append(Prompt(ids, images))
    rng = np.random.default_rng(seed)
    size = checkpoint.model.image_processor_config.height
    while len(prompts) < count:
        question = QUESTIONS[len(prompts) % len(QUESTIONS)]
        image = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        ids = tok.tokenize_prompt(render(template, [{"role": "user", "content": f"{IMAGE_TOKEN}\n{question}"}]))
        prompts.append(Prompt(ids, [image]))
    return prompts


def kl_divergence(ref: np.ndarray, got: np.ndarray) -> float:
    """KL(softmax(ref) || softmax(got)) in nats, for one step's logits."""
    ref, got = ref.astype(np.float64), got.astype(np.float64)
    log_p = ref - ref.max() - np.log(np.exp(ref - ref.max()).sum())
    log_q = got - got.max() - np.log(np.exp(got - got.max()).sum())
    return float(np.sum(np.exp(log_p) * (log_p - log_q)))


def _rel(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max() / max(np.abs(ref).max(), 1e-30))


def cosines(a: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Cosine similarity of each leading row's flattened values (per image for [images, T, D])."""
    a, ref = a.reshape(len(a), -1).astype(np.float64), ref.reshape(len(ref), -1).astype(np.float64)
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(ref, axis=1), 1e-30)
    return (a * ref).sum(axis=1) / norms


def vision_figures(ort_images: np.ndarray, ref_images: np.ndarray, precision: str = "fp32") -> dict:
    """The vision check's figures and verdict (module docstring)."""
    rel = _rel(ort_images, ref_images)
    cos = cosines(ort_images, ref_images)
    tokens = cosines(ort_images.reshape(-1, ort_images.shape[-1]), ref_images.reshape(-1, ref_images.shape[-1]))
    figures = {"rel_err": rel, "images": len(ort_images), "precision": precision,
               "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()), "token_cosine_min": float(tokens.min())}
    if precision == "fp32":
        figures["passed"] = rel <= FP_LOGITS_REL
    else:
        figures.update(cosine_threshold=VISION_MIN_COSINE, rel_threshold=VISION_MAX_REL)
        figures["passed"] = bool(cos.min() >= VISION_MIN_COSINE and rel <= VISION_MAX_REL)
    return figures


def run_vision(checkpoint: Checkpoint, engine_dir: Path, vision_file: str, images: list[Image.Image],
               projector_file: str = "projector.onnx") -> tuple[np.ndarray, np.ndarray, list]:
    """(exported graphs' embeddings, the PyTorch reference's, one tile plan per image) for `images`.
    The embeddings have one row per tile (per image unless the model tiles); for dynamic_s2 one row
    per projected block (the tower graph, the shared numpy merge, then the projector graph)."""
    model = checkpoint.model
    pixels, plans = preprocess_tiled(images, model.image_processor_config)
    rows = session(engine_dir / vision_file).run(None, {"pixel_values": pixels})[0]
    if not checkpoint.config.is_s2:
        with torch.no_grad():
            ref_images = model.encode_images(torch.from_numpy(pixels)).float().numpy()
        return rows, ref_images, plans
    projector = session(engine_dir / projector_file)
    out = s2_image_embeds(rows, plans, lambda b: projector.run(None, {"features": b})[0],
                          checkpoint.config.s2_output_scale, len(checkpoint.config.s2_scales))
    with torch.no_grad():
        ref = [e.float().numpy() for e in model.encode_images(torch.from_numpy(pixels), plans)]
    t = model.config.num_image_tokens  # as rows of T tokens, like the other models' images
    return (np.concatenate([e.reshape(-1, t, e.shape[-1]) for e in out]),
            np.concatenate([e.reshape(-1, t, e.shape[-1]) for e in ref]), plans)


def _rows_of(plan, config) -> int:
    """How many rows of run_vision's output one image has."""
    if config.is_s2:
        cols, rows = output_grid(plan, config.s2_output_scale)
        return cols * rows
    return plan.num_tiles


def per_image(rows: np.ndarray, counts: list[int]) -> list[np.ndarray]:
    """[rows, T, D] -> one [rows_i * T, D] array per image (rows_i: its tiles, or its blocks for dynamic_s2)."""
    bounds = np.cumsum([0, *counts])
    return [rows[a:b].reshape(-1, rows.shape[-1]) for a, b in zip(bounds[:-1], bounds[1:])]


def vision_images(checkpoint: Checkpoint, prompts: list[Prompt]) -> list[Image.Image]:
    """The prompts' pictures plus two fresh random ones."""
    pre = checkpoint.model.image_processor_config
    rng = np.random.default_rng(1)
    # a tiling model gets the second one twice as wide, cut into tiles and a thumbnail
    widths = (pre.width, 2 * pre.width if pre.tiling != "none" else pre.width)
    fresh = [Image.fromarray(rng.integers(0, 256, (pre.height, w, 3), dtype=np.uint8)) for w in widths]
    return [im for p in prompts for im in p.images] + fresh


def session(path: Path, flavour: str | None = None) -> ort.InferenceSession:
    """A CPU session that runs the graph as the runtime does: an ort graph's MatMulNBits at the
    accuracy level the export wrote into it (4: int8 activations), so what is validated is what runs."""
    options = ort.SessionOptions()
    # ONNX Runtime's CPU optimizer turns a trt graph's int4 DequantizeLinear -> MatMul into MatMulNBits
    # with int8 activations (accuracy level 4); TensorRT computes those in fp16, so validate in float.
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OrtDecoder:
    """Greedy decoding over the exported decoder graph, batch 1, in numpy."""

    def __init__(self, sess: ort.InferenceSession, spec: DecoderSpec):
        self.sess, self.spec = sess, spec
        self.outputs = [o.name for o in sess.get_outputs()]
        self.inputs = {i.name for i in sess.get_inputs()}

    def run(self, embeds: np.ndarray, past: list[np.ndarray] | None, start: int) -> tuple[np.ndarray, list[np.ndarray]]:
        s = self.spec
        seq = embeds.shape[0]
        if past is None:
            past = [np.zeros((1, s.kv_heads, 0, s.head_dim), np.float32)] * (2 * s.layers)
        total = start + seq
        feeds: dict[str, np.ndarray] = {"inputs_embeds": embeds[None]}
        if "seqlens_k" in self.inputs:  # GroupQueryAttention graph, run with a growing (unshared) cache
            feeds["seqlens_k"] = np.array([total - 1], np.int32)
            feeds["total_sequence_length"] = np.array(total, np.int32)
        else:
            feeds["attention_mask"] = np.ones((1, total), np.int64)
            feeds["position_ids"] = np.arange(start, total, dtype=np.int64)[None]
        for i in range(s.layers):
            feeds[f"past_key_values.{i}.key"], feeds[f"past_key_values.{i}.value"] = past[2 * i], past[2 * i + 1]
        out = dict(zip(self.outputs, self.sess.run(None, feeds)))
        present = [out[f"present.{i}.{kv}"] for i in range(s.layers) for kv in ("key", "value")]
        return out["logits"][0], present


def _reference(model, embeds: torch.Tensor, steps: int, forced: list[int] | None = None) -> tuple[list[int], list[np.ndarray]]:
    """Greedy tokens and the logits before each, from the PyTorch LLM (KV-cached, as generate())."""
    llm, embed = model.llm, model.llm.get_input_embeddings()
    cache, cache_kw = DynamicCache(), cache_keyword(llm)
    with torch.no_grad():
        out = llm(inputs_embeds=embeds[None], **{cache_kw: cache}, use_cache=True, logits_to_keep=1)
        tokens, logits = [], []
        for step in range(steps):
            row = out.logits[0, -1].float()
            logits.append(row.numpy())
            token = forced[step] if forced is not None else int(row.argmax())
            tokens.append(token)
            if step + 1 == steps:
                break
            position = torch.tensor([[embeds.shape[0] + step]])
            out = llm(inputs_embeds=embed(torch.tensor([[token]])), **{cache_kw: cache}, position_ids=position,
                      use_cache=True)
    return tokens, logits


def _onnx(decoder: OrtDecoder, table: np.ndarray, embeds: np.ndarray, steps: int,
          forced: list[int] | None = None) -> tuple[list[int], list[np.ndarray]]:
    logits_row, past = decoder.run(embeds, None, 0)
    tokens, logits = [], []
    for step in range(steps):
        logits.append(logits_row)
        token = forced[step] if forced is not None else int(logits_row.argmax())
        tokens.append(token)
        if step + 1 == steps:
            break
        logits_row, past = decoder.run(table[[token]], past, embeds.shape[0] + step)
    return tokens, logits


def validate(checkpoint: Checkpoint, engine_dir: Path, vision_file: str, decoders: dict[str, str], table: np.ndarray,
             prompts: list[Prompt], *, quantized: bool, decode_steps: int = 16, greedy_steps: int = 32,
             vision_precision: str = "fp32", memo: dict | None = None,
             rounded: dict[str, str] | None = None) -> dict:
    """Run the checks; returns the figures per component and whether each passed its threshold.
    `memo` keeps the PyTorch reference's tokens and logits between calls on the same checkpoint and
    prompts (the export validates several candidate graphs against one reference). `rounded` names,
    per flavour, what its graph rounds on purpose (judged by ROUNDED_*)."""
    memo = {} if memo is None else memo
    rounded = rounded or {}

    def reference(key, embeds: torch.Tensor, steps: int) -> tuple[list[int], list[np.ndarray]]:
        if key not in memo:
            memo[key] = _reference(model, embeds, steps)
        return memo[key]

    model = checkpoint.model
    spec = DecoderSpec.from_llm(model.llm)
    ort_rows, ref_rows, plans = run_vision(checkpoint, engine_dir, vision_file, vision_images(checkpoint, prompts))
    result: dict = {"vision": vision_figures(ort_rows, ref_rows, vision_precision)}
    counts = [_rows_of(p, checkpoint.config) for p in plans]
    ort_images, ref_images = per_image(ort_rows, counts), per_image(ref_rows, counts)

    threshold = INT4_LOGITS_REL if quantized else FP_LOGITS_REL
    ref_embeds, ort_embeds, k = [], [], 0
    for p in prompts:
        n = len(p.images)
        with torch.no_grad():
            ref_embeds.append(model.build_inputs([p.input_ids], [torch.from_numpy(x) for x in ref_images[k:k + n]]
                                                 if n else None).inputs_embeds[0])
        ort_embeds.append(splice_embeddings(p.input_ids, table, ort_images[k:k + n] if n else None))
        k += n
    n0 = len(prompts[0].images)
    logits_embeds = splice_embeddings(prompts[0].input_ids, table, ref_images[:n0] if n0 else None)
    for flavour, file in decoders.items():
        decoder = OrtDecoder(session(engine_dir / file, flavour), spec)
        ref_tokens, ref_logits = reference(("logits", decode_steps), ref_embeds[0], decode_steps + 1)
        _, ort_logits = _onnx(decoder, table, logits_embeds, decode_steps + 1, forced=ref_tokens)
        logits_err = max(_rel(a, b) for a, b in zip(ort_logits, ref_logits))
        logits_cos = float(min(cosines(np.stack(ort_logits), np.stack(ref_logits))))
        same = agree = steps = 0
        kls = [kl_divergence(b, a) for a, b in zip(ort_logits, ref_logits)]
        for i, p in enumerate(prompts):
            ref_greedy, ref_rows = reference(("greedy", i, greedy_steps), ref_embeds[i], greedy_steps)
            ort_greedy, rows = _onnx(decoder, table, ort_embeds[i], greedy_steps)
            same += ref_greedy == ort_greedy
            if ref_greedy == ort_greedy:
                agree += greedy_steps
            else:  # fed the reference's tokens: at how many steps the graph picks the same next token
                _, rows = _onnx(decoder, table, ort_embeds[i], greedy_steps, forced=ref_greedy)
                agree += sum(int(row.argmax()) == t for row, t in zip(rows, ref_greedy))
            kls += [kl_divergence(b, a) for a, b in zip(rows, ref_rows)]  # the same tokens before each step
            steps += greedy_steps
        need = int(np.ceil(GREEDY_MIN_FRACTION * len(prompts)))
        top1 = agree / max(steps, 1)
        figures = {"logits_rel_err": logits_err, "logits_threshold": threshold, "logits_cosine_min": logits_cos,
                   "decode_steps": decode_steps, "greedy_identical": same, "prompts": len(prompts),
                   "greedy_steps": greedy_steps, "next_token_agreement": top1, "kl_mean": float(np.mean(kls)),
                   "kl_max": float(np.max(kls))}
        if flavour in rounded:  # rounded on purpose: judged like the int8 vision tower
            figures.update(logits_cosine_threshold=ROUNDED_MIN_COSINE, agreement_threshold=ROUNDED_MIN_AGREEMENT,
                           rounded=rounded[flavour])
            if "rescored" in rounded[flavour]:
                figures["kl_threshold"] = RESCORED_MAX_KL
                figures["logits_passed"] = bool(figures["kl_mean"] <= RESCORED_MAX_KL)
            else:
                figures["logits_passed"] = bool(logits_cos >= ROUNDED_MIN_COSINE)
            figures["passed"] = bool(figures["logits_passed"] and top1 >= ROUNDED_MIN_AGREEMENT)
            judged = (f"KL mean {figures['kl_mean']:.2e} (<= {RESCORED_MAX_KL}), logits cosine >= {logits_cos:.5f}"
                      if "kl_threshold" in figures else
                      f"logits cosine >= {logits_cos:.5f} (>= {ROUNDED_MIN_COSINE}), KL mean {figures['kl_mean']:.2e}")
            log.info("validate decoder.%s (%s): %s, next token agreement %.1f%% (>= %.0f%%), greedy identical %d/%d",
                     flavour, rounded[flavour], judged, 100 * top1, 100 * ROUNDED_MIN_AGREEMENT, same, len(prompts))
        else:
            figures["logits_passed"] = bool(logits_err <= threshold)
            figures["passed"] = bool(figures["logits_passed"] and same >= need)
            log.info("validate decoder.%s: logits rel err %.2e (<= %.0e), greedy identical %d/%d, next token "
                     "agreement %.1f%%", flavour, logits_err, threshold, same, len(prompts), 100 * top1)
        result[f"decoder.{flavour}"] = figures
    log.info("validate vision (%s): rel err %.2e, cosine >= %.5f over %d images", vision_precision,
             result["vision"]["rel_err"], result["vision"]["cosine_min"], result["vision"]["images"])
    return result

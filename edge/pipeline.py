"""The runtime pipeline over an engine directory: images -> vision graph, prompt -> decoder loop.

    pipe = vlm_edge.edge.load("engine/")                       # backend "auto"
    pipe.generate("What colour is the circle?", ["shapes.png"])  -> "red"
    for piece in pipe.stream(messages, images): print(piece, end="")

Per request: render the chat template, tokenize (each <image> becomes one placeholder id), check
the context before any work, encode the images (cached by content hash), splice their
embeddings into the text embeddings (the exported table), prefill, then decode one token per
step with the KV cache the graph returns, until a stop token, a stop string or max_new_tokens.
Text is streamed as it becomes final: an incomplete UTF-8 sequence or a possible start of a
stop string is held back until the next token decides it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from vlm_edge.common.errors import CheckpointError, InputError, UnsupportedFeatureError
from vlm_edge.common.fsutil import open_npy
from vlm_edge.common.image import (ImageInput, ImageProcessorConfig, image_label, image_pixels, image_token_count,
                                   load_image, whole_pictures)
from vlm_edge.common.log import get_logger
from vlm_edge.common.manifest import TOKENIZER_DIR, Manifest, check_files, check_graph
from vlm_edge.common.splice import splice_embeddings
from vlm_edge.common.templates import Message, get_template, render
from vlm_edge.common.tiling import s2_image_embeds
from vlm_edge.common.video import DEFAULT_NUM_FRAMES, check_pooling, pool_video, read_frames, with_video
from vlm_edge.common.tokenizer import IMAGE_TOKEN, IMAGE_TOKEN_INDEX, TextTokenizer

from .backends import open_session, resolve_backend
from .decoder import open_decoder
from .sampling import SamplingConfig, select_token

log = get_logger(__name__)

DECODER_PREFERENCE = ("decoder.ort", "decoder.fp", "decoder.trt")  # for ONNX Runtime backends
IMAGE_CACHE_SIZE = 64  # image embeddings kept by content hash


@dataclass
class Generation:
    """One request's result and timings (seconds)."""

    token_ids: list[int]
    text: str
    finish_reason: str  # stop | length | cancelled
    prompt_tokens: int
    # vision (image_load + preprocess + vision_graph), splice, prefill, first_token (from the start),
    # decode (all steps) and decode_graph (its time inside the decoder graph), total
    timings: dict[str, float] = field(default_factory=dict)
    cached_tokens: int = 0  # prompt positions reused from the KV cache (not prefilled again)


@dataclass
class FrameAnswer:
    """The answer about one frame of a stream; `dropped` frames were skipped just before it (live)."""

    index: int  # position of the frame in the source
    generation: Generation
    dropped: int = 0


def check_session(session, component, name: str, engine_dir: Path) -> None:
    """The ONNX graph's I/O agrees with what the manifest records (names and int axes)."""
    args = {a.name: list(a.shape) for a in list(session.get_inputs()) + list(session.get_outputs())}
    check_graph(component, name, args, str(engine_dir / "manifest.json"))


def check_cache_memory(model: dict, context: int, engine_dir: Path) -> None:
    """Refuse a KV cache (float32, every layer, `context` positions) larger than this machine's RAM
    before allocating it: a manifest's max_positions is not trusted to fit."""
    need = 2 * model["layers"] * model["kv_heads"] * model["head_dim"] * context * 4
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > ram:
        raise InputError(f"{engine_dir}: a KV cache of {context} positions needs {need / 2**30:.1f} GiB, more than "
                         f"this machine's {ram / 2**30:.1f} GiB; load it with a smaller context "
                         f"(load(..., context=N))")


class Pipeline:
    def __init__(self, engine_dir: str | Path, backend: str = "auto", *, threads: int | None = None,
                 vision_threads: int | None = None, verify: bool = False, context: int | None = None,
                 reuse_prefix: bool = True):
        """`threads`: ONNX Runtime intra-op threads per graph (default: one per core);
        `vision_threads`: the vision graph's own (default: `threads`), e.g. to split the cores
        between the vision worker and the decoder in `stream_frames`."""
        self.dir = Path(engine_dir)
        if not self.dir.is_dir():
            raise InputError(f"engine directory {self.dir} does not exist; create one with vlm-export")
        self.manifest = Manifest.read(self.dir)
        components = self.manifest.components
        # The vision graph's files first: "auto" opens it to see whether CUDA really works, and no
        # graph is opened before its files (and the external data it names) have been checked.
        check_files(self.dir, self.manifest, [n for n in ("vision",) if n in components], hashes=verify)
        self.backend = resolve_backend(backend, self.dir / components["vision"].path if "vision" in components
                                       else self.dir, self.manifest.targets)
        order = ("decoder.trt",) if self.backend == "tensorrt" else DECODER_PREFERENCE
        decoder_name = next((n for n in order if n in components), None)
        if decoder_name is None or "vision" not in components or "embeddings" not in components:
            raise CheckpointError(f"{self.dir}/manifest.json lacks a {' or '.join(order)}, vision or embeddings "
                                  "component" + (" (export with --flavour trt)" if self.backend == "tensorrt" else ""))
        check_files(self.dir, self.manifest, [n for n in ("projector", "embeddings", decoder_name, "tokenizer")
                                              if n in components], hashes=verify)
        self.model = self.manifest.model
        self.context = min(context or self.model["max_positions"], self.model["max_positions"])
        if self.context < 2:
            raise InputError(f"context {context} is too small; give at least 2 positions (the model has "
                             f"{self.model['max_positions']})")
        self.projector = None  # dynamic_s2 (NVILA): the projector graph after the per-image scale merge
        if self.backend == "tensorrt":
            if "projector" in components:
                raise UnsupportedFeatureError(f"{self.dir}: this multi-scale (NVILA dynamic_s2 or VILA1.5 S2) engine runs "
                                              "on ONNX Runtime only so far; use --backend ort-cpu or ort-cuda")
            from .tensorrt import open_tensorrt

            self.vision, self.decoder = open_tensorrt(self.dir, self.manifest, self.context)
        else:
            check_cache_memory(self.model, self.context, self.dir)
            self.vision = open_session(self.dir / components["vision"].path, self.backend, vision_threads or threads)
            check_session(self.vision, components["vision"], "vision", self.dir)
            if "projector" in components:
                self.projector = open_session(self.dir / components["projector"].path, self.backend,
                                              vision_threads or threads)
                check_session(self.projector, components["projector"], "projector", self.dir)
            device = "cuda" if self.backend == "ort-cuda" else "cpu"
            session = open_session(self.dir / components[decoder_name].path, self.backend, threads)
            check_session(session, components[decoder_name], decoder_name, self.dir)
            self.decoder = open_decoder(session, self.model, self.context, device)
        self.reuse_prefix = reuse_prefix
        self._cached: list = []  # what each cached position holds: a token id or (image hash, index)
        self.decoder_name = decoder_name
        # [vocab_size, hidden_size] floats, mapped read-only after its header was checked (never unpickled)
        self.table = open_npy(self.dir / components["embeddings"].path,
                              (self.model["vocab_size"], self.model["hidden_size"]), what="embedding table",
                              error=CheckpointError)
        self.tokenizer = TextTokenizer.from_dir(self.dir / TOKENIZER_DIR)
        self.template = get_template(self.manifest.chat_template)
        pre = dict(self.manifest.preprocessing)
        pre["mean"], pre["std"] = tuple(pre["mean"]), tuple(pre["std"])
        pre["s2_scales"] = tuple(pre.get("s2_scales", ()))
        self.preprocess = ImageProcessorConfig(**pre)
        self.stop_ids = set(int(t) for t in self.model["stop_token_ids"])
        self._image_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        log.debug("loaded %s on %s (%s)", self.dir, self.backend, decoder_name)

    # ---- images --------------------------------------------------------------------------------
    def encode_images(self, images: Sequence[ImageInput]) -> list[np.ndarray]:
        """One [tokens, D] array of embeddings per image (tokens: the manifest's num_image_tokens, times
        the image's tiles for a tiling model); images seen before (same pixels) come from the cache."""
        return self._encode(self.load_images(images))[0]

    def load_images(self, images: Sequence[ImageInput], timings: dict[str, float] | None = None) -> list:
        t0 = time.perf_counter()
        pils = [load_image(img, name=image_label(img, i, len(images))) for i, img in enumerate(images)]
        if timings is not None:
            timings["image_load"] = time.perf_counter() - t0
        return pils

    @property
    def num_video_frames(self) -> int:
        return int(self.model.get("num_video_frames", DEFAULT_NUM_FRAMES))

    @property
    def video_pool_sizes(self) -> list[tuple[int, int, int]]:
        """NVILA's temporal-spatial pooling of video frames ([] keeps every frame; common/video.py)."""
        return [tuple(s) for s in self.model.get("video_pool_sizes", [])]  # type: ignore[misc]

    def video_tokens(self, frames: Sequence) -> list[int]:
        """The embeddings each picture a video's decoded `frames` become takes in the prompt: one per
        frame, or with pooling one per pooled frame (fewer, and fewer tokens each)."""
        pool = self.video_pool_sizes
        if not pool:
            return self.image_tokens(frames, whole=True)
        tokens = int(self.model["num_image_tokens"])
        check_pooling(len(frames), tokens, pool, "the video")
        return [tokens // (h * w) for t, h, w in pool for _ in range(len(frames) // t)]

    def image_tokens(self, pils: Sequence, whole: bool = False) -> list[int]:
        """How many embeddings each decoded image takes in the prompt (`whole`: video frames, never tiled)."""
        pre = whole_pictures(self.preprocess) if whole else self.preprocess
        return [image_token_count(p.size, pre, self.model["num_image_tokens"]) for p in pils]

    def _encode(self, pils: Sequence, timings: dict[str, float] | None = None, whole: bool = False
                ) -> tuple[list[np.ndarray], list[str]]:
        keys = [hashlib.sha1(f"{p.size}{p.mode}{whole}".encode() + p.tobytes()).hexdigest() for p in pils]
        missing = [i for i, k in enumerate(keys) if k not in self._image_cache]
        if missing:
            embeds = self.run_vision([pils[i] for i in missing], timings, whole)
            for i, e in zip(missing, embeds):
                self._image_cache[keys[i]] = e
                if len(self._image_cache) > IMAGE_CACHE_SIZE:
                    self._image_cache.popitem(last=False)
        for k in keys:
            self._image_cache.move_to_end(k)
        return [self._image_cache[k] for k in keys], keys

    def run_vision(self, pils: Sequence, timings: dict[str, float] | None = None, whole: bool = False
                   ) -> list[np.ndarray]:
        """One [tokens, D] array per decoded image (no cache); safe to call from one other thread. A
        tiling model's tiles all go through the vision graph as one batch; `whole` pictures (video
        frames) are not tiled. `timings`, when given, gets the seconds spent in "preprocess" and
        "vision_graph"."""
        t0 = time.perf_counter()
        pre = whole_pictures(self.preprocess) if whole else self.preprocess
        cut = [image_pixels(p, pre) for p in pils]
        plans = [plan for _, plan in cut]
        pixels = np.concatenate([tiles for tiles, _ in cut])
        t1 = time.perf_counter()
        rows = self.vision.run(None, {"pixel_values": pixels})[0]
        if self.projector is not None:  # dynamic_s2: merge each image's scales, then project its blocks
            projector = self.projector
            embeds = s2_image_embeds(rows, plans, lambda b: projector.run(None, {"features": b})[0],
                                     self.preprocess.s2_output_scale, len(self.preprocess.s2_scales))
        else:
            bounds = np.cumsum([0, *(p.num_tiles for p in plans)])
            embeds = [rows[a:b].reshape(-1, rows.shape[-1]) for a, b in zip(bounds[:-1], bounds[1:])]
        if timings is not None:
            timings["preprocess"] = timings.get("preprocess", 0.0) + t1 - t0
            timings["vision_graph"] = timings.get("vision_graph", 0.0) + time.perf_counter() - t1
        return embeds

    # ---- prompts -------------------------------------------------------------------------------
    def prompt_ids(self, messages: str | Sequence[Message], images: Sequence[ImageInput]) -> list[int]:
        """Token ids of the rendered conversation; a plain string is one user turn (images first)."""
        if isinstance(messages, str):
            text = messages
            if images and IMAGE_TOKEN not in text:
                text = "".join(f"{IMAGE_TOKEN}\n" for _ in images) + text
            messages = [{"role": "user", "content": text}]
        ids = self.tokenizer.tokenize_prompt(render(self.template, list(messages)))
        placeholders = sum(t == IMAGE_TOKEN_INDEX for t in ids)
        if placeholders != len(images):
            raise InputError(f"the conversation has {placeholders} <image> placeholder(s) but {len(images)} image(s) "
                             "were given; put one <image> in the text per image")
        return ids

    # ---- generation ----------------------------------------------------------------------------
    def stream(self, messages: str | Sequence[Message], images: Sequence[ImageInput] = (),
               config: SamplingConfig | None = None, *, result: Generation | None = None,
               should_stop: Callable[[], bool] | None = None,
               video: str | os.PathLike | Sequence[ImageInput] | None = None) -> Iterator[str]:
        """Yield the answer's text as it is produced. `result`, when given, is filled in.
        `should_stop` is asked before each decode step; True ends the answer (finish_reason
        "cancelled"): a server's client went away or its timeout passed. `video`: a clip file,
        taken as the model's num_video_frames frames (common/video.py), or its frames, in place of
        images."""
        cfg = config or SamplingConfig()
        cfg.validate()
        images = list(images)
        result = result if result is not None else Generation([], "", "length", 0)
        start = time.perf_counter()
        whole = video is not None
        if whole:
            if images:
                raise InputError("give images or a video, not both in one request")
            images = (read_frames(video, self.num_video_frames) if isinstance(video, (str, os.PathLike))
                      else list(video))  # frames already decoded (the server's video_url parts)
            pils = self.load_images(images, result.timings)
            tokens = self.video_tokens(pils)
            messages = with_video(messages, len(tokens))
            ids = self.prompt_ids(messages, tokens)
        else:
            ids = self.prompt_ids(messages, images)
            pils = self.load_images(images, result.timings)
            tokens = self.image_tokens(pils)
        self._check_context(ids, tokens, cfg, result)
        image_embeds, image_keys = self._encode(pils, result.timings, whole) if images else (None, [])
        if whole and self.video_pool_sizes:  # NVILA's pooling of the frames' tokens
            image_embeds = pool_video(image_embeds, self.video_pool_sizes)
            image_keys = [hashlib.sha1(e.tobytes()).hexdigest() for e in image_embeds]
        result.timings["vision"] = time.perf_counter() - start
        yield from self._answer_stream(ids, image_embeds, image_keys, cfg, result, start, should_stop)

    def _check_context(self, ids: list[int], image_tokens: Sequence[int], cfg: SamplingConfig,
                       result: Generation) -> None:
        """`image_tokens`: the embeddings each image takes (image_tokens())."""
        prompt_len = len(ids) - len(image_tokens) + sum(image_tokens)
        if prompt_len + cfg.max_new_tokens > self.context:
            raise InputError(f"prompt ({prompt_len} tokens with images) + max_new_tokens ({cfg.max_new_tokens}) "
                             f"exceeds the model's context of {self.context}; shorten the prompt or lower "
                             "max_new_tokens")
        result.prompt_tokens = prompt_len

    def _answer_stream(self, ids: list[int], image_embeds: np.ndarray | None, image_keys: list[str],
                       cfg: SamplingConfig, result: Generation, start: float,
                       should_stop: Callable[[], bool] | None = None) -> Iterator[str]:
        """Prefill (what the cache does not already hold) and decode; `start` is when the request began."""
        t_splice = time.perf_counter()
        embeds = splice_embeddings(ids, self.table, image_embeds)
        positions = _position_keys(ids, image_keys, [len(e) for e in image_embeds] if image_keys else [])

        # reuse the cached prefix this prompt shares with what the cache holds (a chat's history)
        keep = _common_prefix(self._cached, positions) if self.reuse_prefix else 0
        keep = min(keep, len(positions) - 1)  # at least one position runs, for the logits
        self.decoder.truncate(keep)
        self._cached = self._cached[:keep]
        result.cached_tokens = keep
        t0 = time.perf_counter()
        result.timings["splice"] = t0 - t_splice
        logits = self.decoder(embeds[keep:])
        self._cached = list(positions)
        result.timings["prefill"] = time.perf_counter() - t0
        graph_before = self.decoder.run_seconds
        rng = np.random.default_rng(cfg.seed)
        history = [t for t in ids if t != IMAGE_TOKEN_INDEX]
        stops = [] if cfg.ignore_eos else [s for s in (*self.template.stop_strings, *cfg.stop) if s]
        stop_ids = set() if cfg.ignore_eos else self.stop_ids
        text_out, cut = "", None  # what has been yielded; where a stop string begins
        t_decode = time.perf_counter()
        for step in range(cfg.max_new_tokens):
            if should_stop is not None and should_stop():
                result.finish_reason = "cancelled"
                break
            token = select_token(logits, history, cfg, rng)
            if step == 0:
                result.timings["first_token"] = time.perf_counter() - start
            if token in stop_ids:
                result.finish_reason = "stop"
                break
            result.token_ids.append(token)
            history.append(token)
            text = self._answer(result.token_ids)
            cut = _first_stop(text, stops)
            ready = cut if cut is not None else _final_prefix(text, stops)
            if ready > len(text_out):
                yield text[len(text_out):ready]
                text_out = text[:ready]
            if cut is not None:
                result.finish_reason = "stop"
                break
            if step + 1 < cfg.max_new_tokens:
                logits = self.decoder(self.table[[token]])
                self._cached.append(token)
        final = self._answer(result.token_ids)
        final = final[:cut] if cut is not None else final
        if len(final) > len(text_out):  # held back for a stop string that never came
            yield final[len(text_out):]
        result.text = final
        result.timings["decode"] = time.perf_counter() - t_decode
        result.timings["decode_graph"] = self.decoder.run_seconds - graph_before  # the rest is Python's share
        result.timings["total"] = time.perf_counter() - start

    def stream_frames(self, frames: Iterable[ImageInput], prompt: str | Sequence[Message],
                      config: SamplingConfig | None = None, *, queue_size: int = 2,
                      live: bool = False) -> Iterator[FrameAnswer]:
        """Ask `prompt` about each frame of a stream (one <image> placeholder, or none: the frame goes
        first). The next frames are decoded and encoded by the vision graph on a worker thread while
        the current answer decodes. At most `queue_size` encoded frames wait; a `live` source (a
        camera) drops the oldest waiting frame when the queue is full instead of stalling the
        camera. Yields a FrameAnswer per answered frame, in order."""
        from .frames import stream_frames

        return stream_frames(self, frames, prompt, config or SamplingConfig(), queue_size, live)

    def _answer(self, token_ids: list[int]) -> str:
        """The decoded answer without the template's answer prefix (the space after "ASSISTANT:")."""
        text = self.tokenizer.decode(token_ids)
        lead = self.template.answer_prefix
        return text[len(lead):] if lead and text.startswith(lead) else text

    def generate(self, messages: str | Sequence[Message], images: Sequence[ImageInput] = (),
                 config: SamplingConfig | None = None, *, video: str | os.PathLike | None = None) -> Generation:
        """The whole answer at once (stream's arguments)."""
        result = Generation([], "", "length", 0)
        for _ in self.stream(messages, images, config, result=result, video=video):
            pass
        return result


def _position_keys(ids: Sequence[int], image_keys: Sequence[str], image_tokens: Sequence[int]) -> list:
    """What each decoder position holds: the token id, or (image content hash, index in the image)."""
    keys: list = []
    images = iter(zip(image_keys, image_tokens))
    for t in ids:
        if t == IMAGE_TOKEN_INDEX:
            h, n = next(images)
            keys.extend((h, j) for j in range(n))
        else:
            keys.append(t)
    return keys


def _common_prefix(a: Sequence, b: Sequence) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    hits = [text.find(s) for s in stops if s in text]
    return min(hits) if hits else None


def _final_prefix(text: str, stops: Sequence[str]) -> int:
    """How much of `text` can be shown: hold back an unfinished UTF-8 character (U+FFFD at the end)
    and a tail that could still grow into a stop string."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, end), 0, -1):
            if text[:end].endswith(s[:k]):
                hold = max(hold, k)
                break
    return end - hold


def load(engine_dir: str | Path, backend: str = "auto", **kwargs) -> Pipeline:
    """Open an engine directory written by vlm-export."""
    return Pipeline(engine_dir, backend, **kwargs)

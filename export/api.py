"""`vlm-export`: a checkpoint (quantized here or already) -> a validated engine directory.

    engine/ (see common/manifest.py for the layout)

Stages: [quantize (AWQ, when --awq4 and the checkpoint is not quantized yet)] -> tokenizer and
embedding table -> vision graph -> one decoder graph per flavour -> validation against the
PyTorch reference -> TensorRT static check of trt graphs -> [TensorRT engines] -> manifest.
Everything is written into a temporary directory that replaces `output` only when all stages
passed, so a killed or failed export never leaves a directory that looks complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np

from vlm_edge.common import awq_format
from vlm_edge.common.errors import InputError, UnsupportedFeatureError, VlmEdgeError
from vlm_edge.common.fsutil import atomic_directory, sha256_file
from vlm_edge.common.log import get_logger
from vlm_edge.common.manifest import TOKENIZER_DIR, Component, Manifest, TensorSpec, check_files, file_records
from vlm_edge.common.vila_config import LLM_DIR, VilaConfig
from vlm_edge.model.checkpoint import Checkpoint, awq_group_size, check_checkpoint_files, load_checkpoint
from vlm_edge.quant.api import is_quantized, quantize_checkpoint
from vlm_edge.quant.config import QUANT_CONFIG_FILE, QUANT_DIR, QuantConfig, auto_group_size, linear_input_widths

from .config import ExportConfig, check_source
from .decoder import RESCORE_TOP, DecoderSpec, build_decoder, decoder_io, lm_head_weight, set_accuracy_level, uses_gqa
from .graph import GraphBuilder
from .linear import rtn_quantize
from .plugins import plugin_record, write_trt_vision
from .tensorrt import build_engines, check_trt_graph, require_tensorrt
from .validate import run_vision, validate, validation_prompts, vision_figures, vision_images
from .vision import build_projector, build_vision, projector_io, vision_io
from .weights import ModuleWeights

log = get_logger(__name__)

EMBEDDINGS_FILE = "embeddings.npy"
VISION_FILE = "vision.onnx"
PROJECTOR_FILE = "projector.onnx"  # dynamic_s2 only: the projector after the per-image scale merge
Progress = Callable[[int, int], None]


class ExportValidationError(VlmEdgeError):
    """The exported graphs do not match the PyTorch reference within the thresholds."""


def decoder_file(flavour: str) -> str:
    return f"decoder.{flavour}.onnx"


def checkpoint_hash(directory: Path) -> str:
    """SHA-256 over (relative path, file SHA-256) of every file that defines the model (not training/)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        if rel.split("/")[0] in ("training",):
            continue
        digest.update(f"{rel}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def _specs(io: list[tuple]) -> list[TensorSpec]:
    return [TensorSpec(name, dtype, list(shape)) for name, dtype, shape in io]


def export_checkpoint(source: str | Path, output: str | Path, config: ExportConfig, *, overwrite: bool = False,
                      layer_progress: Progress | None = None) -> Manifest:
    source, output = Path(source), Path(output)
    config.validate_options()
    vila_config = check_source(source, config)  # every config field, and whether the model fits in memory
    check_checkpoint_files(source, vila_config)  # weights that disagree with the config fail before any allocation
    if output.resolve() == source.resolve() or source.resolve() in output.resolve().parents:
        raise InputError(f"the output {output} is inside the input checkpoint {source}; choose another directory")
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not overwrite:
        raise InputError(f"output directory {output} is not empty; choose another path or pass --force to replace it")
    flavours = config.resolved_flavours()
    if config.build_engine:
        require_tensorrt()  # say so before minutes of quantization
    start = time.time()
    with atomic_directory(output, overwrite=overwrite) as tmp:
        work, quant_info = _quantized_source(source, tmp, vila_config, config, layer_progress)
        log.info("loading %s", work)
        checkpoint = load_checkpoint(work)
        manifest = _write_engine(checkpoint, work, tmp, config, flavours, layer_progress)
        manifest.source = {"path": str(source.resolve()), "sha256": checkpoint_hash(source)}
        manifest.quantization = quant_info
        manifest.export = {"config": config.to_dict(), "seconds": round(time.time() - start, 1)}
        if work != source:
            shutil.rmtree(work)
        manifest.write(tmp)
    log.info("wrote %s in %.1f s", output, time.time() - start)
    return manifest


def _quantized_source(source: Path, tmp: Path, vila_config: VilaConfig, config: ExportConfig,
                      progress: Progress | None) -> tuple[Path, dict | None]:
    """(checkpoint to export, quantization settings for the manifest)."""
    if not config.awq4:
        if is_quantized(source):
            raise InputError(f"{source} is AWQ-quantized; export it with --awq4 (a 16-bit export needs the "
                             "unquantized checkpoint)")
        return source, None
    trt = "trt" in config.resolved_flavours()
    if config.tinychat_awq:
        from vlm_edge.quant.tinychat import import_tinychat

        group = config.group_size or 128  # what NVIDIA's releases use (-w4-g128-)
        log.info("LLM weights: %s (TinyChat AWQ, group %d), used as they are", config.tinychat_awq, group)
        work = import_tinychat(source, config.tinychat_awq, tmp / ".quantized", group_size=group)
        return work, {**awq_format.quantization_config(4, group, False), "quantized_by": "TinyChat file",
                      "file": Path(config.tinychat_awq).name}
    if is_quantized(source):
        quant = dict(vila_config.llm["quantization_config"])
        group = awq_group_size(vila_config.llm, source / LLM_DIR)
        if config.group_size is not None and config.group_size != group:
            raise InputError(f"{source} is already quantized with group size {group}; --group-size {config.group_size} "
                             "would need the unquantized checkpoint")
        if trt and not quant.get("symmetric", False):
            raise InputError(f"{source} is quantized with zero points, but the trt flavour needs symmetric AWQ; "
                             "quantize the original checkpoint with --symmetric (or export only --flavour ort)")
        log.info("%s is already AWQ-quantized (group %d): exporting its integers as they are", source, group)
        return source, {**quant, "quantized_by": "input checkpoint"}
    group = config.group_size or auto_group_size(linear_input_widths(vila_config.llm), trt)
    qconfig = QuantConfig(method=config.method, group_size=group, symmetric=config.wants_symmetric(),
                          calib=config.calib, samples=config.calib_samples, seq_len=config.calib_len,
                          device=config.device)
    log.info("quantizing the LLM: %s, 4-bit, group %d, %s", config.method.upper(), group,
             "symmetric" if qconfig.symmetric else "zero point")
    work = tmp / ".quantized"
    quantize_checkpoint(source, work, qconfig, progress=progress)
    record = {"quant_method": config.method, "bits": 4, "group_size": group, "symmetric": qconfig.symmetric,
              "quantized_by": "vlm-export", "config": qconfig.to_dict()}
    calibration = json.loads((work / QUANT_DIR / QUANT_CONFIG_FILE).read_text()).get("calibration")
    if calibration:
        record["calibration"] = calibration
    return work, record


def _write_engine(checkpoint: Checkpoint, work: Path, tmp: Path, config: ExportConfig, flavours: tuple[str, ...],
                  layer_progress: Progress | None) -> Manifest:
    model, vila = checkpoint.model, checkpoint.config
    components: dict[str, Component] = {}
    if vila.is_s2 and "trt" in flavours:
        which = "S2 (s2: true)" if vila.s2_pixels else "image_aspect_ratio dynamic_s2 (NVILA)"
        raise UnsupportedFeatureError(f"{which} exports for ONNX Runtime only so far: the TensorRT engine of its "
                                      "separate projector graph is not built yet; drop --flavour trt")

    checkpoint.tokenizer.save(tmp / TOKENIZER_DIR)
    tok_files = sorted(f"{TOKENIZER_DIR}/{p.name}" for p in (tmp / TOKENIZER_DIR).iterdir())
    components["tokenizer"] = Component("tokenizer", file_records(tmp, tok_files))

    table = model.llm.get_input_embeddings().weight.detach().float().numpy()
    np.save(tmp / EMBEDDINGS_FILE, table)
    components["embeddings"] = Component("embeddings", file_records(tmp, [EMBEDDINGS_FILE]),
                                         outputs=[TensorSpec("embeddings", "float32", list(table.shape))])

    spec = DecoderSpec.from_llm(model.llm)
    if spec.max_positions < int(vila.llm.get("max_position_embeddings", spec.max_positions)):
        log.info("the engine is exported for %d positions (max_position_embeddings is %s)", spec.max_positions,
                 vila.llm["max_position_embeddings"])
    group = awq_group_size(vila.llm, work / LLM_DIR)
    weights = ModuleWeights(model.llm, work / LLM_DIR if group else None, group)
    heads = config.lm_head_candidates()
    head_rejected: dict[str, str] = {}  # auto: why a quantized head was dropped
    memo: dict = {}  # the PyTorch reference's outputs (its head stays float): the same for every candidate
    skip_vision: set[str] = set()  # vision precisions whose own check failed: no other head revives them
    for head in heads:
        head_quant = _quantize_head(spec, weights, config, head, flavours, group)
        rescore = RESCORE_TOP if head == "int4-rescore" else 0
        decoder_files = _decoder_graphs(tmp, spec, weights, flavours, head_quant, rescore, config, components,
                                        layer_progress)
        # a quantized head that auto may still replace is kept only at the first accuracy level: a faster
        # head at float compute loses to the next head with int8 activations
        levels = config.accuracy_candidates() if "ort" in flavours else (0,)
        chosen = _validated_choice(checkpoint, work, tmp, table, flavours, group, config, head_quant, rescore, memo,
                                   skip_vision, levels if head == heads[-1] else levels[:1])
        if not chosen.failed or head == heads[-1]:
            break
        skip_vision.update(p for p, names in chosen.rejected.items() if "vision" in names)
        head_rejected[head] = "; ".join(chosen.reasons)
        log.info("the %s LM head does not validate (%s): trying the %s head", head, head_rejected[head],
                 heads[heads.index(head) + 1])
    failed, validation, precision, level = chosen.failed, chosen.validation, chosen.precision, chosen.level
    if failed:
        raise ExportValidationError(
            f"validation failed for {', '.join(failed)}: {', '.join(f'{n}: {validation[n]}' for n in failed)}; "
            "nothing was written. Report this with the checkpoint's config (or pass --no-validate to keep it)"
        )
    for flavour, files in decoder_files.items():  # hashed now: the accuracy level may have been rewritten
        decoder = components[f"decoder.{flavour}"]
        decoder.files = file_records(tmp, files)
        if flavour == "ort":
            decoder.info.update(accuracy_level=level, accuracy_asked=config.accuracy_level)
            if chosen.level_rejected and level != 4:
                decoder.info["accuracy_rejected"] = {"4": chosen.level_rejected}
        if head_rejected:
            decoder.info["lm_head_rejected"] = head_rejected
    vision_files, projector_files, site = chosen.vision_files, chosen.projector_files, chosen.site
    rejected = {p: names for p, names in chosen.rejected.items() if p != precision}
    v_in, v_out = vision_io(vila)
    components["vision"] = Component("vision", file_records(tmp, vision_files), _specs(v_in), _specs(v_out),
                                     info={"precision": precision, "asked": config.vision,
                                           **({"rejected": rejected} if rejected else {})})
    if vila.is_s2:
        p_in, p_out = projector_io(vila)
        components["projector"] = Component("projector", file_records(tmp, projector_files), _specs(p_in),
                                             _specs(p_out), info={"precision": precision})
    if "trt" in flavours:
        components.update(_trt_vision(tmp, components["vision"], site, config.plugin))

    targets: list[dict] = []
    if config.build_engine:
        targets = build_engines(tmp, trt_graphs(components))

    stops = checkpoint.tokenizer.stop_token_ids(checkpoint.template)
    model_info = {
        "llm_architecture": vila.llm_architecture, "vision_architecture": vila.vision_architecture,
        "projector_type": vila.projector_type, "downsample_token_order": vila.downsample_token_order,
        "hidden_size": spec.hidden, "layers": spec.layers, "heads": spec.heads, "kv_heads": spec.kv_heads,
        "head_dim": spec.head_dim, "vocab_size": spec.vocab, "intermediate_size": vila.llm["intermediate_size"], "max_positions": spec.max_positions,
        "image_size": vila.image_size, "num_image_tokens": vila.num_image_tokens,
        "num_video_frames": vila.num_video_frames,
        **({"video_pool_sizes": [list(v) for v in vila.video_pool_sizes]} if vila.video_pool_sizes else {}),
        "bos_token_id": checkpoint.tokenizer.bos_id, "eos_token_id": checkpoint.tokenizer.eos_id,
        "stop_token_ids": stops,
        "vision": {"hidden_size": vila.vision_tower["hidden_size"],
                   "intermediate_size": vila.vision_tower["intermediate_size"],
                   "layers": vila.vision_tower["num_hidden_layers"], "heads": vila.vision_tower["num_attention_heads"],
                   "patch_size": vila.patch_size},
    }
    return Manifest(source={}, model=model_info, quantization=None,
                    preprocessing=dataclasses.asdict(model.image_processor_config), chat_template=vila.chat_template,
                    components=components, validation=validation, targets=targets)


@dataclasses.dataclass
class _Choice:
    """What the validation loop settled on (or last tried, when `failed`)."""
    precision: str
    level: int
    failed: list[str]
    validation: dict
    reasons: list[str]
    rejected: dict[str, list[str]]  # vision precision -> the checks that failed with it
    level_rejected: list[str]  # why accuracy level 4 was dropped (auto)
    vision_files: list[str]
    projector_files: list[str]
    site: object


def _quantize_head(spec: DecoderSpec, weights: ModuleWeights, config: ExportConfig, head: str,
                   flavours: tuple[str, ...], group: int | None) -> dict:
    """RTN LM head per flavour (its symmetry). The reference keeps the float head, so the head's
    rounding is part of what the validation measures."""
    bits = {"int8": 8, "int4": 4, "int4-rescore": 4}.get(head)
    if not bits:
        return {}
    head_t = lm_head_weight(spec, weights).T
    return {f: rtn_quantize(head_t, group or auto_group_size([spec.hidden], f == "trt"), config.wants_symmetric(), bits)
            for f in flavours if f != "fp"}


def _decoder_graphs(tmp: Path, spec: DecoderSpec, weights: ModuleWeights, flavours: tuple[str, ...], head_quant: dict,
                    rescore: int, config: ExportConfig, components: dict[str, Component],
                    progress) -> dict[str, list[str]]:
    """Write one decoder graph per flavour (the ort one at the first accuracy level to try); their
    components are filed without file records, which are taken once the graphs are final."""
    level = config.accuracy_candidates()[0] if "ort" in flavours else 0
    decoder_files: dict[str, list[str]] = {}
    for flavour in flavours:
        d_in, d_out = decoder_io(spec, flavour)
        log.info("decoder graph (%s): %d layers", flavour, spec.layers)
        g = GraphBuilder(f"decoder_{flavour}", tmp / decoder_file(flavour), ms_domain=uses_gqa(flavour) or flavour == "ort")
        try:
            build_decoder(g, spec, weights, flavour, accuracy_level=level, lm_head=head_quant.get(flavour),
                          rescore=rescore if flavour == "ort" else 0, progress=progress)
        except BaseException:
            g.abort()
            raise
        decoder_files[flavour] = files = g.save()
        info = {"quantized_linears": len(weights.quantized_linears),
                "kv_cache": "shared" if uses_gqa(flavour) else "concat",
                "lm_head": {8: "int8", 4: "int4"}[head_quant[flavour].bits] if flavour in head_quant else "float32"}
        if rescore and flavour == "ort":
            info.update(lm_head="int4-rescore", rescore_top=rescore)
        if flavour == "trt":
            problems = check_trt_graph(tmp / files[0])
            if problems:
                raise VlmEdgeError(f"the trt graph breaks TensorRT's constraints: {'; '.join(problems[:5])}")
            info["tensorrt_check"] = "passed"
        components[f"decoder.{flavour}"] = Component("decoder", {}, _specs(d_in), _specs(d_out), flavour=flavour,
                                                     info=info)
    return decoder_files


def _validated_choice(checkpoint: Checkpoint, work: Path, tmp: Path, table: np.ndarray, flavours: tuple[str, ...],
                      group: int | None, config: ExportConfig, head_quant: dict, rescore: int, memo: dict,
                      skip_vision: set[str], levels: tuple[int, ...]) -> _Choice:
    """The vision tower (auto: int8 first) and the ort graph's accuracy level (auto: 4 first) are kept
    only if the whole validation passes with them: try them in order of preference, skipping what a
    failed check has already ruled out (`skip_vision`: by an earlier head). A graph that rounds on
    purpose beyond the checkpoint's own 4-bit weights (a quantized head against the reference's float
    one, int8 activations at level 4 or in the 8-bit head) is judged by validate.ROUNDED_*.
    `memo` keeps the PyTorch reference's outputs across calls."""
    vila, model = checkpoint.config, checkpoint.model
    prompts = validation_prompts(checkpoint, work, config.prompts) if config.validate or config.vision == "auto" else []
    precisions = [p for p in config.vision_candidates() if p not in skip_vision] or list(config.vision_candidates())
    queue = [(p, level) for p in precisions for level in levels]
    rejected: dict[str, list[str]] = {}
    level_rejected: list[str] = []
    built, level, validation, reasons = None, levels[0], {}, []
    while True:
        precision, wanted = queue.pop(0)
        if precision != built:
            log.info("vision graph (%s)", precision)
            vision_files, projector_files, site = _vision_graphs(tmp, vila, model, precision)
            built = precision
        if wanted != level:
            set_accuracy_level(tmp / decoder_file("ort"), wanted)
            level = wanted
        if config.validate:
            log.info("validating against the PyTorch reference (%d prompts%s)", config.prompts,
                     f", accuracy level {level}" if "ort" in flavours else "")
            validation = validate(checkpoint, tmp, VISION_FILE, {f: decoder_file(f) for f in flavours}, table, prompts,
                                  quantized=group is not None, decode_steps=config.decode_steps,
                                  greedy_steps=config.greedy_steps, vision_precision=precision, memo=memo,
                                  rounded=_rounded(flavours, head_quant, level, rescore))
            failed = [name for name, figures in validation.items() if not figures["passed"]]
            check = validation.get("vision", {})
        elif any(p != precision for p, _ in queue):  # --no-validate with vision auto: the vision check decides
            check = vision_figures(*run_vision(checkpoint, tmp, VISION_FILE, vision_images(checkpoint, prompts))[:2],
                                   precision)
            failed = [] if check["passed"] else ["vision"]
        else:
            failed = []
        if not failed:
            break
        reasons = _failure_reasons(failed, check, validation)
        rejected.setdefault(precision, []).extend(n for n in failed if n not in rejected[precision])
        if level == 4 and len(config.accuracy_candidates()) > 1:
            level_rejected.append(f"with {precision} vision: {'; '.join(reasons)}")
        # what the next candidates need not try: a vision tower whose own check failed, and an accuracy
        # level whose decoder logits (fed the reference's image embeddings: the decoder alone) failed
        vision_bad = "vision" in failed
        level_bad = "decoder.ort" in failed and not validation["decoder.ort"].get("logits_passed", True)
        queue = [(p, lv) for p, lv in queue if not (vision_bad and p == precision) and not (level_bad and lv == level)]
        if not queue:
            break
        log.info("%s vision%s does not validate (%s): trying %s vision%s", precision,
                 f" with accuracy level {level}" if len(levels) > 1 else "", "; ".join(reasons), queue[0][0],
                 f" with accuracy level {queue[0][1]}" if len(levels) > 1 else "")
    return _Choice(precision, level, failed, validation, reasons, rejected, level_rejected, vision_files,
                   projector_files, site)


def _rounded(flavours: tuple[str, ...], head_quant: dict, level: int, rescore: int = 0) -> dict[str, str]:
    """{flavour: what its graph rounds on purpose}, for the graphs that do."""
    out = {}
    for flavour in flavours:
        parts = [f"int{head_quant[flavour].bits} head"] if flavour in head_quant else []
        if parts and rescore and flavour == "ort":
            parts = [f"int4 head rescored (top {rescore} in int8)"]
        if flavour == "ort" and (level == 4 or "int8 head" in parts):
            parts.append("int8 activations")
        if parts:
            out[flavour] = ", ".join(parts)
    return out


def _vision_graphs(tmp: Path, vila: VilaConfig, model, precision: str) -> tuple[list[str], list[str], object]:
    """Write the vision graph (and NVILA's projector graph) at `precision`: (vision files, projector
    files, the downsample site for the trt plugin)."""
    g = GraphBuilder("vision", tmp / VISION_FILE)
    try:
        site = build_vision(g, vila, _state(model.vision_tower), _state(model.mm_projector), precision)
    except BaseException:
        g.abort()
        raise
    vision_files, projector_files = g.save(), []
    if vila.is_s2:  # NVILA: the projector runs after the numpy merge of each image's scales
        gp = GraphBuilder("projector", tmp / PROJECTOR_FILE)
        try:
            build_projector(gp, vila, _state(model.mm_projector), precision)
        except BaseException:
            gp.abort()
            raise
        projector_files = gp.save()
    return vision_files, projector_files, site


def _failure_reasons(failed: list[str], check: dict, validation: dict) -> list[str]:
    """One short phrase per failed check: the image embeddings themselves, or a decoder's figures."""
    reasons = []
    for name in failed:
        figures = validation.get(name, {})
        if name == "vision" and "cosine_threshold" in check:
            reasons.append(f"image cosine {check['cosine_min']:.5f}, threshold {check['cosine_threshold']}")
        elif figures.get("rounded"):
            logits = (f"KL mean {figures['kl_mean']:.2e} (<= {figures['kl_threshold']})" if "kl_threshold" in figures
                      else f"logits cosine {figures['logits_cosine_min']:.5f} (>= {figures['logits_cosine_threshold']})")
            reasons.append(f"{name} {logits}, next token agreement "
                           f"{100 * figures['next_token_agreement']:.1f}% (>= {100 * figures['agreement_threshold']:.0f}%)")
        elif "greedy_identical" in figures:
            logits = "" if figures.get("logits_passed", True) else \
                f"logits rel err {figures['logits_rel_err']:.2e} > {figures['logits_threshold']:.0e}, "
            reasons.append(f"{name} {logits}greedy identical {figures['greedy_identical']}/{figures['prompts']}")
        else:
            reasons.append(name)
    return reasons


def _state(module) -> dict[str, np.ndarray]:
    return {k: v.detach().float().numpy() for k, v in module.state_dict().items()}


def _trt_vision(tmp: Path, vision: Component, site, plugin: bool) -> dict[str, Component]:
    """The vision graph TensorRT builds: with the plugin node where the projector downsamples, else vision.onnx."""
    if site is None or not plugin:
        problems = check_trt_graph(tmp / vision.path)
        if problems:
            raise VlmEdgeError(f"the vision graph breaks TensorRT's constraints: {'; '.join(problems[:5])}")
        vision.info["tensorrt_check"] = "passed"
        return {}
    log.info("trt vision graph: the downsample + LayerNorm as one %s node", plugin_record()["op"])
    name = write_trt_vision(tmp, vision.path, site)
    problems = check_trt_graph(tmp / name)
    if problems:
        raise VlmEdgeError(f"the trt vision graph breaks TensorRT's constraints: {'; '.join(problems[:5])}")
    files = {**file_records(tmp, [name]), **{rel: rec for rel, rec in vision.files.items() if rel != vision.path}}
    info = {"plugin": plugin_record(), "plain_twin": vision.path, "tensorrt_check": "passed"}
    return {"vision.trt": Component("vision", files, vision.inputs, vision.outputs, flavour="trt", info=info)}


def trt_graphs(components: dict[str, Component]) -> dict[str, dict]:
    """What TensorRT builds: the trt vision graph (or the plain one) as "vision", and the trt decoder."""
    vision = components.get("vision.trt") or components["vision"]
    graphs = {"vision": vision, **{name: c for name, c in components.items() if c.kind == "decoder" and c.flavour == "trt"}}
    return {name: {"file": c.path, "inputs": [dataclasses.asdict(t) for t in c.inputs], "plugin": c.info.get("plugin")}
            for name, c in graphs.items()}


def build_engine_dir(engine_dir: str | Path, plugin_library: str | Path | None = None) -> Manifest:
    """`vlm-build-engine`: build TensorRT engines for an existing engine directory (on the target device)."""
    engine_dir = Path(engine_dir)
    manifest = Manifest.read(engine_dir)
    check_files(engine_dir, manifest, hashes=True)  # TensorRT's parser reads external data too: only the engine's own
    if not any(c.flavour == "trt" for c in manifest.components.values()):
        raise InputError(f"{engine_dir} has no trt decoder graph; re-export with --awq4 --flavour trt "
                         "(or --build-engine)")
    if plugin_library is not None and not Path(plugin_library).is_file():
        raise InputError(f"--plugin-library {plugin_library} is not a file; build it with CMake (gpu_kernels/CMakeLists.txt) "
                         "or leave the option out to let vlm-build-engine build it")
    built = build_engines(engine_dir, trt_graphs(manifest.components), plugin_library=plugin_library)
    keys = {t["cache_key"] for t in built}
    manifest.targets = [t for t in manifest.targets if t.get("cache_key") not in keys] + built
    manifest.write(engine_dir)
    return manifest

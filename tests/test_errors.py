"""What a new user runs into, as a table: every case is an installed console script run for real,
and must end with exit code 2 and one line on stderr that names the input and what to do
(no traceback).

A missing extra is an environment without that package: the command runs in a fresh interpreter
in which importing the package fails exactly as it does when it is not installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# console script -> the module whose main() it runs (to run it where a package is hidden)
ENTRY = {"vlm-run": "vlm_edge.edge.cli", "vlm-serve": "vlm_edge.server.cli", "vlm-quant": "vlm_edge.quant.cli",
         "vlm-export": "vlm_edge.export.cli", "vlm-train": "vlm_edge.train.cli"}


def _run(argv: list[str], hide: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    if hide is None:
        exe = shutil.which(argv[0])
        assert exe, f"{argv[0]} is not on PATH: is the package installed?"
        cmd = [exe, *argv[1:]]
    else:  # the package is absent for this interpreter: `import hide` raises ModuleNotFoundError
        code = (f"import sys; sys.modules[{hide!r}] = None; from {ENTRY[argv[0]]} import main; "
                f"sys.argv[0] = {argv[0]!r}; sys.exit(main({argv[1:]!r}))")
        cmd = [sys.executable, "-c", code]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _one_line_error(result: subprocess.CompletedProcess, *phrases: str) -> str:
    err = result.stderr.strip()
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for phrase in phrases:
        assert phrase in err, (phrase, err)
    return err


@pytest.fixture(scope="module")
def engine(micro_engine, tmp_path_factory):
    """A private copy of the test engine (cases corrupt it) and the files of its decoder."""
    copy = tmp_path_factory.mktemp("errors") / "engine"
    shutil.copytree(micro_engine / "engine", copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    data = next(f for f in manifest["components"]["decoder.ort"]["files"] if f.endswith(".data"))
    return copy, copy / data


@pytest.fixture(scope="module")
def picture(micro_engine):
    return next((micro_engine / "awq" / "calibration" / "images").iterdir())


def test_a_truncated_weight_file_is_refused_on_every_load(engine, picture):
    directory, data = engine
    original = data.read_bytes()
    try:
        data.write_bytes(original[: len(original) // 2])
        result = _run(["vlm-run", str(directory), "--image", str(picture), "--prompt", "Describe the image."])
        _one_line_error(result, str(data), f"is {len(original) // 2} bytes", f"says {len(original)}", "re-export")
    finally:
        data.write_bytes(original)


def test_same_size_corruption_is_refused_with_verify(engine, picture):
    directory, data = engine
    original = data.read_bytes()
    try:
        damaged = bytearray(original)
        damaged[4096:8192] = bytes(4096)  # 4 KiB overwritten, size unchanged
        data.write_bytes(bytes(damaged))
        run = ["vlm-run", str(directory), "--image", str(picture), "--prompt", "Describe the image.", "--verify"]
        _one_line_error(_run(run), str(data), "does not match its SHA-256")
        serve = _run(["vlm-serve", str(directory), "--verify", "--port", "0"])
        _one_line_error(serve, str(data), "does not match its SHA-256")
    finally:
        data.write_bytes(original)


@pytest.mark.parametrize("argv,hide,extra", [
    (["vlm-serve", "{engine}"], "fastapi", "serve"),
    (["vlm-serve", "{engine}"], "uvicorn", "serve"),
    (["vlm-export", "--awq4", "{ckpt}", "-o", "{tmp}/out"], "torch", "torch"),
    (["vlm-quant", "--awq4", "{ckpt}", "-o", "{tmp}/out"], "torch", "torch"),
    (["vlm-train", "--preset", "micro", "-o", "{tmp}/out"], "torch", "torch"),
])
def test_a_missing_extra_names_the_install_that_brings_it(micro_engine, engine, tmp_path, argv, hide, extra):
    argv = [a.format(engine=engine[0], ckpt=micro_engine / "ckpt", tmp=tmp_path) for a in argv]
    _one_line_error(_run(argv, hide=hide), f"'{hide}'", f'pip install "vlm-edge[{extra}]"')
    assert not (tmp_path / "out").exists()


def test_help_needs_no_extra():
    for prog, hide in (("vlm-serve", "fastapi"), ("vlm-export", "torch"), ("vlm-train", "torch")):
        result = _run([prog, "--help"], hide=hide)
        assert result.returncode == 0 and "usage" in result.stdout, (prog, result.stderr)


@pytest.mark.parametrize("make,phrase", [
    (lambda tmp: ROOT / "README.md", "is not a PNG, JPEG, WebP or BMP image"),
    (lambda tmp: _truncated_png(tmp), "truncated"),
    (lambda tmp: tmp / "missing.png", "does not exist"),
])
def test_an_image_that_cannot_be_decoded_is_named(engine, tmp_path, make, phrase):
    path = make(tmp_path)
    result = _run(["vlm-run", str(engine[0]), "--image", str(path), "--prompt", "What colour is the circle?"])
    _one_line_error(result, f"image {path}", phrase)


def _truncated_png(tmp: Path) -> Path:
    data = (ROOT / "examples" / "shapes.png").read_bytes()
    path = tmp / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    return path


def test_vlm_quant_chooses_the_group_size_like_vlm_export(micro_engine, tmp_path):
    out = tmp_path / "awq"
    result = _run(["vlm-quant", "--awq4", str(micro_engine / "ckpt"), "-o", str(out), "--calib-samples", "2",
                   "--calib-len", "32"])
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "llm" / "config.json").read_text())
    assert config["quantization_config"]["group_size"] == 32  # the micro LLM is 32 wide: 128 and 64 do not fit
    wrong = _run(["vlm-quant", "--awq4", str(micro_engine / "ckpt"), "-o", str(tmp_path / "g64"), "--group-size", "64"])
    _one_line_error(wrong, "is not divisible by the group size 64", "--group-size 32 works")


# An engine is untrusted input: a manifest edited by hand or by an attacker is refused, in one line
# that names the field, before any graph runs or any cache is allocated.
def _edit(key_path: str, value):
    def edit(manifest: dict, directory: Path) -> None:
        *parents, last = key_path.split("/")
        node = manifest
        for key in parents:
            node = node[key]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value
    return edit


_DELETE = object()


def _rename_file(component: str, new: str):
    def edit(manifest: dict, directory: Path) -> None:
        files = manifest["components"][component]["files"]
        first = next(iter(files))
        manifest["components"][component]["files"] = {new: files[first], **{k: v for k, v in files.items()
                                                                            if k != first}}
    return edit


def _symlink_outside(manifest: dict, directory: Path) -> None:
    target = directory.parent / f"outside-{directory.name}.onnx"
    shutil.copy2(directory / "vision.onnx", target)  # same size and bytes: only the place is wrong
    (directory / "vision.onnx").unlink()
    (directory / "vision.onnx").symlink_to(target)


def _double_hidden_everywhere(manifest: dict, directory: Path) -> None:
    hidden = manifest["model"]["hidden_size"]
    manifest["model"]["hidden_size"] = 2 * hidden
    for component in manifest["components"].values():
        for spec in component["inputs"] + component["outputs"]:
            spec["shape"] = [2 * hidden if (d == hidden and spec["name"] in ("image_embeds", "embeddings",
                                                                             "inputs_embeds")) else d
                             for d in spec["shape"]]


def _drop_kv_layer(manifest: dict, directory: Path) -> None:
    inputs = manifest["components"]["decoder.ort"]["inputs"]
    manifest["components"]["decoder.ort"]["inputs"] = [t for t in inputs if not t["name"].startswith(
        "past_key_values.0.")]


HOSTILE_MANIFESTS = {
    "a path that leaves the directory": (_rename_file("vision", "../../../../etc/passwd"),
                                         ["'../../../../etc/passwd'", "not a plain path inside the engine directory"]),
    "an absolute path": (_rename_file("vision", "/etc/passwd"), ["'/etc/passwd'", "not a plain path"]),
    "a symlink out of the directory": (_symlink_outside, ["vision.onnx", "leads outside the engine directory"]),
    "max_positions 10**9": (_edit("model/max_positions", 10**9), ["max_positions=1000000000",
                                                                 "must be an integer from 2 to"]),
    "max_positions a string": (_edit("model/max_positions", "1024"), ["max_positions='1024'"]),
    "no num_image_tokens": (_edit("model/num_image_tokens", _DELETE), ["num_image_tokens=None"]),
    "preprocessing height 0": (_edit("preprocessing/height", 0), ["preprocessing: height=0"]),
    "preprocessing std 0": (_edit("preprocessing/std", [0.5, 0, 0.5]), ["preprocessing.std", "above 0"]),
    "a stop token outside the vocabulary": (_edit("model/stop_token_ids", [10**6]), ["stop_token_ids=[1000000]"]),
    "a component without files": (_edit("components/vision/files", {}), ["component vision lists no files"]),
    "a component of the wrong kind": (_edit("components/vision/kind", "decoder"), ["component vision has kind"]),
    "a component without a kind": (_edit("components/vision/kind", _DELETE), ["is malformed", "kind"]),
    "hidden_size doubled": (lambda m, d: m["model"].update(hidden_size=2 * m["model"]["hidden_size"]), ["has shape",
                                                             "does not fit the model dims"]),
    "hidden_size doubled with every shape": (_double_hidden_everywhere, ["component vision: tensor image_embeds",
                                                                         "in the graph but"]),
    "a KV cache layer missing": (_drop_kv_layer, ["layers of KV cache inputs, but model.layers is"]),
}


def _hostile_engine(case: str, micro_engine: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """A copy of the micro engine with the case's manifest edit; the phrases its error must hold."""
    edit, phrases = HOSTILE_MANIFESTS[case]
    directory = tmp_path / "engine"
    shutil.copytree(micro_engine / "engine", directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    edit(manifest, directory)
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory, phrases


@pytest.mark.parametrize("case", list(HOSTILE_MANIFESTS))
def test_a_hostile_manifest_is_refused_before_any_work(case, micro_engine, picture, tmp_path):
    directory, phrases = _hostile_engine(case, micro_engine, tmp_path)
    result = _run(["vlm-run", str(directory), "--image", str(picture), "--prompt", "Describe the image."])
    _one_line_error(result, *phrases)


@pytest.mark.parametrize("case", ["hidden_size doubled with every shape", "a path that leaves the directory"])
def test_vlm_serve_refuses_a_hostile_engine_before_it_binds(case, micro_engine, tmp_path):
    directory, phrases = _hostile_engine(case, micro_engine, tmp_path)
    _one_line_error(_run(["vlm-serve", str(directory), "--port", "0"]), *phrases)


def test_a_kv_cache_larger_than_the_machine_is_refused_before_allocation():
    from vlm_edge.common.errors import InputError
    from vlm_edge.edge.pipeline import check_cache_memory

    model = {"layers": 32, "kv_heads": 32, "head_dim": 128}
    with pytest.raises(InputError, match=r"a KV cache of 4194304 positions needs 4096.0 GiB.*smaller context"):
        check_cache_memory(model, 1 << 22, Path("engine"))
    check_cache_memory(model, 1024, Path("engine"))  # 1 GiB: fits

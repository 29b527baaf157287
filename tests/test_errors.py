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


# ---- Engine files are untrusted input too: every JSON, .npy, tokenizer and ONNX file the runtime
# reads is checked before a library parses it. A hostile file is one line and exit code 2, with
# and without --verify (the manifest is rewritten to match each file's size and hash, as anyone who
# can edit the engine can), never a traceback and never a process killed for memory.
def _record_files(directory: Path) -> None:
    """Rewrite manifest.json's sizes and hashes to the files as they are now."""
    from vlm_edge.common.fsutil import sha256_file

    manifest = json.loads((directory / "manifest.json").read_text())
    for component in manifest["components"].values():
        for rel, record in component["files"].items():
            if (directory / rel).is_file():
                record.update(sha256=sha256_file(directory / rel), bytes=(directory / rel).stat().st_size)
    (directory / "manifest.json").write_text(json.dumps(manifest))


def _nested_json(path: Path) -> None:
    path.write_text("[" * 100_000 + "]" * 100_000)


def _outside_copy(directory: Path) -> Path:
    """A copy of vision.onnx.data outside the engine: ONNX Runtime 1.23 reads it and answers."""
    target = directory.parent / "outside.data"
    shutil.copy2(directory / "vision.onnx.data", target)
    return target


def _edit_vision_graph(edit):
    def hostile(directory: Path) -> None:
        import onnx

        model = onnx.load(str(directory / "vision.onnx"), load_external_data=False)
        edit(model, directory)
        onnx.save(model, str(directory / "vision.onnx"))
    return hostile


def _relocate(location):
    """The first weight of the vision graph read from `location(directory)` (same offset and length)."""
    def edit(model, directory: Path) -> None:
        entry = next(e for e in model.graph.initializer[0].external_data if e.key == "location")
        entry.value = location(directory)
    return _edit_vision_graph(edit)


def _external_tensor(name: str, location: str):
    import onnx

    tensor = onnx.TensorProto(name=name, data_type=onnx.TensorProto.FLOAT, dims=[4])
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _outside_in_constant(model, directory: Path) -> None:
    import onnx

    model.graph.node.append(onnx.helper.make_node("Constant", [], ["hostile"],
                                                  value=_external_tensor("c", str(_outside_copy(directory)))))


def _outside_in_subgraph(model, directory: Path) -> None:
    import onnx

    branch = onnx.helper.make_graph([], "branch", [], [], initializer=[_external_tensor("w", "../outside.data")])
    _outside_copy(directory)
    model.graph.node.append(onnx.helper.make_node("If", ["cond"], ["hostile"], then_branch=branch, else_branch=branch))


def _outside_in_function(model, directory: Path) -> None:
    import onnx

    node = onnx.helper.make_node("Constant", [], ["y"], value=_external_tensor("c", str(_outside_copy(directory))))
    model.functions.append(onnx.helper.make_function("hostile", "f", [], ["y"], [node], [onnx.helper.make_opsetid("", 21)]))


def _outside_in_sparse_initializer(model, directory: Path) -> None:
    import onnx

    indices = onnx.helper.make_tensor("i", onnx.TensorProto.INT64, [1], [0])
    values = _external_tensor("s", str(_outside_copy(directory)))
    values.dims[:] = [1]
    model.graph.sparse_initializer.append(onnx.helper.make_sparse_tensor(values, indices, [4]))


def _symlinked_data(directory: Path) -> str:
    (directory / "weights.data").symlink_to(_outside_copy(directory))
    return "weights.data"


def _unknown_op(model, directory: Path) -> None:
    model.graph.node[0].op_type = "NoSuchOp"


def _garbage(directory: Path, name: str) -> None:
    import numpy as np

    (directory / name).write_bytes(np.random.default_rng(0).bytes((directory / name).stat().st_size))


def _pickled_table(directory: Path) -> None:
    import numpy as np

    np.save(directory / "embeddings.npy", np.array([{"a": 1}] * 4, dtype=object), allow_pickle=True)


def _table_header(rows_times: int = 1, keep: float = 1.0):
    """embeddings.npy with its header's rows multiplied by `rows_times` and `keep` of its data."""
    def hostile(directory: Path) -> None:
        import numpy as np

        path = directory / "embeddings.npy"
        table = np.load(path)
        header = np.lib.format.header_data_from_array_1_0(table)
        header["shape"] = (table.shape[0] * rows_times, table.shape[1])
        data = table.tobytes()
        with open(path, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            f.write(data[: int(len(data) * keep)])
    return hostile


def _added_tokens(count: int, width: int):
    def hostile(directory: Path) -> None:
        path = directory / "tokenizer" / "tokenizer.json"
        tokenizer = json.loads(path.read_text())
        tokenizer["added_tokens"] += [{"id": 1000 + i, "content": f"<t{i}{'x' * width}>", "single_word": False,
                                       "lstrip": False, "rstrip": False, "normalized": False, "special": True}
                                      for i in range(count)]
        path.write_text(json.dumps(tokenizer))
    return hostile


def _huge_tokenizer(directory: Path) -> None:
    with open(directory / "tokenizer" / "tokenizer.json", "wb") as f:  # sparse: 65 MiB on paper, no disk used
        f.write(b'{"added_tokens": [')
        f.truncate(65 << 20)


_OUTSIDE = "outside the engine directory; refused"
HOSTILE_FILES = {  # case -> (edit of the engine copy, phrases the one-line error must hold)
    "manifest nested 100k deep": (lambda d: _nested_json(d / "manifest.json"),
                                  ["manifest.json", "nests deeper than 64 levels"]),
    "tokenizer_config.json nested 100k deep": (lambda d: _nested_json(d / "tokenizer" / "tokenizer_config.json"),
                                               ["tokenizer_config.json", "nests deeper than 64 levels"]),
    "tokenizer.json nested 100k deep": (lambda d: _nested_json(d / "tokenizer" / "tokenizer.json"),
                                        ["tokenizer.json", "nests deeper than 64 levels"]),
    "tokenizer.json of 65 MiB": (_huge_tokenizer, ["tokenizer.json is 65 MiB, over the 64 MiB"]),
    "70k added tokens": (_added_tokens(70_000, 0), ["tokenizer.json has 70", "added tokens", "over the 65536"]),
    "1.2 MB of added tokens": (_added_tokens(4000, 300), ["tokenizer.json has", "KiB of text", "over the"]),
    "embeddings a pickled object array": (_pickled_table, ["embeddings.npy", "'|O'", "not a plain numeric table"]),
    "embeddings header 10**6 x the rows": (_table_header(rows_times=10**6),
                                           ["embeddings.npy is [486000000, 32], but manifest.json says [486, 32]"]),
    "embeddings data cut short": (_table_header(keep=0.5), ["embeddings.npy is", "but its header ([486, 32] "
                                                            "float32) needs 62336"]),
    "embeddings not an npy file": (lambda d: _garbage(d, "embeddings.npy"), ["embeddings.npy does not have a valid "
                                                                             ".npy header"]),
    "vision.onnx random bytes": (lambda d: _garbage(d, "vision.onnx"), ["vision.onnx", "re-export the engine"]),
    "vision.onnx an op ONNX Runtime lacks": (_edit_vision_graph(_unknown_op), ["vision.onnx: ONNX Runtime",
                                                                            "cannot load this graph", "re-export"]),
    "external data: an absolute path": (_relocate(lambda d: str(_outside_copy(d))), ["vision.onnx names external "
                                                                                     "data '/", _OUTSIDE]),
    "external data: ../": (_relocate(lambda d: f"../{_outside_copy(d).name}"), ["'../outside.data'", _OUTSIDE]),
    "external data: a symlink out": (_relocate(_symlinked_data), ["'weights.data'", _OUTSIDE]),
    "external data: another component's file": (_relocate(lambda d: "decoder.ort.onnx.data"), [
        "'decoder.ort.onnx.data', which manifest.json does not list among component vision's files; refused"]),
    "external data: ORT's memory-address tag": (_relocate(lambda d: "*/_ORT_MEM_ADDR_/*"), [
        "'*/_ORT_MEM_ADDR_/*', which manifest.json does not list"]),
    "external data: in a Constant node": (_edit_vision_graph(_outside_in_constant), [_OUTSIDE]),
    "external data: in an If branch": (_edit_vision_graph(_outside_in_subgraph), ["'../outside.data'", _OUTSIDE]),
    "external data: in a function": (_edit_vision_graph(_outside_in_function), [_OUTSIDE]),
    "external data: in a sparse initializer": (_edit_vision_graph(_outside_in_sparse_initializer), [_OUTSIDE]),
}


def _hostile_files(case: str, micro_engine: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    edit, phrases = HOSTILE_FILES[case]
    directory = tmp_path / "engine"
    shutil.copytree(micro_engine / "engine", directory)
    if case.startswith("manifest"):
        edit(directory)
    else:
        edit(directory)
        _record_files(directory)
    return directory, phrases


@pytest.mark.parametrize("verify", [False, True], ids=["sizes", "verify"])
@pytest.mark.parametrize("case", list(HOSTILE_FILES))
def test_a_hostile_engine_file_is_refused_in_one_line(case, verify, micro_engine, picture, tmp_path):
    directory, phrases = _hostile_files(case, micro_engine, tmp_path)
    result = _run(["vlm-run", str(directory), "--image", str(picture), "--prompt", "Describe the image.",
                   *(["--verify"] if verify else [])])
    _one_line_error(result, *phrases)


@pytest.mark.parametrize("case", ["external data: an absolute path", "embeddings a pickled object array",
                                  "vision.onnx an op ONNX Runtime lacks", "70k added tokens"])
def test_vlm_serve_refuses_a_hostile_engine_file_before_it_binds(case, micro_engine, tmp_path):
    directory, phrases = _hostile_files(case, micro_engine, tmp_path)
    _one_line_error(_run(["vlm-serve", str(directory), "--port", "0"]), *phrases)


def _every_location(message) -> list[str]:
    """Reference for common/onnx_wire.py: every external-data location in a parsed ONNX message,
    found by walking every message field protobuf knows of (no list of where tensors may be)."""
    import onnx
    from google.protobuf.message import Message

    found, stack = [], [message]
    while stack:
        node = stack.pop()
        if isinstance(node, onnx.TensorProto):
            found += [e.value for e in node.external_data if e.key == "location"]
        for field, value in node.ListFields():
            if field.type == field.TYPE_MESSAGE:  # one message, or a repeated field's container of them
                stack.extend([value] if isinstance(value, Message) else value)
    return found


def test_the_wire_reader_finds_every_external_data_location(micro_engine, tmp_path):
    import onnx

    from vlm_edge.common.onnx_wire import locations_in

    directory = tmp_path / "engine"
    shutil.copytree(micro_engine / "engine", directory)
    for edit in (_outside_in_constant, _outside_in_subgraph, _outside_in_function, _outside_in_sparse_initializer):
        _edit_vision_graph(edit)(directory)
    model = onnx.load(str(directory / "vision.onnx"), load_external_data=False)
    model.training_info.add().initialization.initializer.append(_external_tensor("t", "training.data"))
    vision = onnx.load(str(directory / "vision.onnx"), load_external_data=False)
    vision.training_info.add().initialization.initializer.append(_external_tensor("t", "training.data"))
    decoder = onnx.load(str(directory / "decoder.ort.onnx"), load_external_data=False)
    for model in (vision, decoder):
        found = [loc.decode() for loc in locations_in(model.SerializeToString())]
        assert sorted(found) == sorted(_every_location(model))
    assert {"../outside.data", "training.data", str(tmp_path / "outside.data")} <= set(_every_location(vision))


def _run_with_file_limit(argv: list[str], limit: int) -> subprocess.CompletedProcess:
    """`argv` with writes past `limit` bytes per file failing (EFBIG), as on a full disk."""
    import resource
    import signal

    def limit_writes() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    cmd = [shutil.which(argv[0]) or argv[0], *argv[1:]]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, preexec_fn=limit_writes)


@pytest.mark.parametrize("stage,limit,phrases", [
    ("export", 4096, ["{out}/tokenizer/tokenizer.json: the file size limit (ulimit -f) is reached"]),
    ("export", 20_000, ["{out}: a write stopped short (15552 requested", "the disk is full or a file size limit"]),
    ("quant", 4096, ["{out}/", "the file size limit (ulimit -f) is reached", "choose another output path (-o)"]),
])
def test_a_full_disk_is_one_line_and_leaves_nothing(stage, limit, phrases, micro_engine, tmp_path):
    out = tmp_path / "out"
    argv = (["vlm-export", "--awq4", str(micro_engine / "awq"), "-o", str(out)] if stage == "export" else
            ["vlm-quant", "--awq4", str(micro_engine / "ckpt"), "-o", str(out), "--calib-samples", "2",
             "--calib-len", "32"])
    result = _run_with_file_limit(argv, limit)
    # the stages' progress lines ("[vlm-edge] loading ...") come first; the error is one line after them
    *progress, last = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr, (result.returncode, result.stderr)
    assert all(line.startswith(("[vlm-edge]", "  layer")) or not line.strip() for line in progress), result.stderr
    assert last.startswith(f"vlm-{stage}: error: "), last
    for phrase in phrases:
        assert phrase.format(out=out) in last, (phrase, last)
    assert list(tmp_path.iterdir()) == []  # no output, no temporary left behind


def test_a_rust_writer_on_a_full_disk_is_one_line(tmp_path):
    out = tmp_path / "out"
    code = ("import sys, numpy as np\n"
            "from safetensors.numpy import save_file\n"
            "from vlm_edge.common.cli import run\n"
            "from vlm_edge.common.fsutil import atomic_directory\n"
            "def write():\n"
            "    with atomic_directory(sys.argv[1]) as tmp:\n"
            "        save_file({'w': np.ones(100_000, np.float32)}, str(tmp / 'model.safetensors'))\n"
            "sys.exit(run('writer', write))\n")
    result = _run_with_file_limit([sys.executable, "-c", code, str(out)], 4096)
    _one_line_error(result, f"writer: error: {out}: the file size limit (ulimit -f) is reached")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("code,message", [
    ("ENOSPC", "no space left on the device; free space there or choose another output path (-o)"),
    ("EDQUOT", "the disk quota is used up; free space there or choose another output path (-o)"),
    ("EROFS", "the file system is read-only; choose another output path (-o)"),
    ("EACCES", "permission denied; check its permissions or choose another output path (-o)"),
])
def test_write_errors_say_where_and_what_to_do(code, message):
    import errno

    from vlm_edge.common.cli import write_error_message

    assert write_error_message(OSError(getattr(errno, code), "x", "/data/out")) == f"/data/out: {message}"
    assert write_error_message(OSError(errno.ENOENT, "x", "/data/out")) is None  # not a write failure: a traceback


# A checkpoint is untrusted input too: every config field vlm-edge reads is checked for type and
# range, and against the fields it must divide or fit (common/config_checks.py), the memory the
# config implies against the machine (common/footprint.py), and the weights' shapes against the
# config, all before anything is allocated. vlm-quant and vlm-export run under an address-space
# limit, so a regression that allocates fails here instead of swapping the host.
CHECKPOINT_ADDRESS_SPACE = 4 << 30


def _limit_address_space() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (CHECKPOINT_ADDRESS_SPACE, CHECKPOINT_ADDRESS_SPACE))


def _update_json(path: Path, **changes) -> None:
    obj = json.loads(path.read_text())
    obj.update(changes)
    path.write_text(json.dumps(obj))


@pytest.fixture(scope="module")
def quiet_release(release_dir, tmp_path_factory):
    """The release-layout fixture (tests/fixtures.py) with its token order and chat template recorded,
    so that loading it logs nothing, and a calibration text: (checkpoint, calibration file)."""
    root = tmp_path_factory.mktemp("hostile-ckpt") / "ckpt"
    shutil.copytree(release_dir, root)
    _update_json(root / "mm_projector" / "config.json", downsample_token_order="column_major")
    _update_json(root / "config.json", chat_template="vicuna_v1")
    calib = root.parent / "calib.txt"
    calib.write_text("A chat between a curious user and an artificial intelligence assistant.\n\n" * 20)
    return root, calib


def _nest(text_of_depth):
    def write(path: Path) -> None:
        path.write_text(text_of_depth(100_000))
    return write


_DEEP = _nest(lambda n: '{"a":' * n + "1" + "}" * n)


def _long_integer(path: Path) -> None:
    """hidden_size with 5,000 digits: past what Python turns into an int from text."""
    path.write_text(path.read_text().replace('"hidden_size": 64', '"hidden_size": ' + "9" * 5000))
_LLM, _VISION, _PREP, _TOP = "llm/config.json", "vision_tower/config.json", "vision_tower/preprocessor_config.json", \
    "config.json"
# case -> (file, its change (a dict of fields, None to delete, or a writer), phrases the one-line error must hold)
HOSTILE_CHECKPOINTS = {
    "llm hidden_size 'abc'": (_LLM, {"hidden_size": "abc"}, ["hidden_size='abc' must be an integer from 1 to 65536"]),
    "llm num_attention_heads 0": (_LLM, {"num_attention_heads": 0}, ["num_attention_heads=0 must be an integer from 1"]),
    "llm vocab_size -1": (_LLM, {"vocab_size": -1}, ["vocab_size=-1 must be an integer from 2 to 2097152"]),
    "llm rope_theta -1": (_LLM, {"rope_theta": -1}, ["rope_theta=-1 must be a number from 1 to"]),
    "vision patch_size 0": (_VISION, {"patch_size": 0}, ["patch_size=0 must be an integer from 1 to 16384"]),
    "vision patch_size -14": (_VISION, {"patch_size": -14}, ["patch_size=-14 must be an integer from 1"]),
    "mm_vision_select_layer 'x'": (_TOP, {"mm_vision_select_layer": "x"},
                                   ["mm_vision_select_layer='x' must be an integer from -1025 to 1024"]),
    "num_video_frames '8; rm -rf /'": (_TOP, {"num_video_frames": "8; rm -rf /"},
                                       ["num_video_frames='8; rm -rf /' must be an integer from 1 to 256"]),
    "config.json nested 100k deep": (_TOP, _DEEP, ["config.json nests deeper than 64 levels"]),
    "llm/config.json nested 100k deep": (_LLM, _DEEP, ["llm/config.json nests deeper than 64 levels"]),
    "llm hidden_size of 5,000 digits": (_LLM, _long_integer, ["llm/config.json is not JSON vlm-edge reads",
                                                              "4300 digits"]),
    "video_encoder text nested 100k deep": (_TOP, {"video_encoder": "[" * 100_000 + "]" * 100_000},
                                            ["video_encoder is not JSON that vlm-edge reads", "deeper than 64"]),
    # sizes that once ended in the OOM killer or an allocator traceback
    "llm num_hidden_layers 10**6": (_LLM, {"num_hidden_layers": 10**6},
                                    ["num_hidden_layers=1000000 must be an integer from 1 to 1024"]),
    "preprocessor size 10**6": (_PREP, {"size": 10**6}, ["size=1000000 must be an image side"]),
    "llm vocab_size 10**10": (_LLM, {"vocab_size": 10**10}, ["vocab_size=10000000000 must be an integer"]),
    "llm intermediate_size 10**9": (_LLM, {"intermediate_size": 10**9},
                                    ["intermediate_size=1000000000 must be an integer from 1 to 262144"]),
    "vision image_size 10**6": (_VISION, {"image_size": 10**6}, ["image_size=1000000 must be an integer from 1"]),
    "llm max_position_embeddings 10**12": (_LLM, {"max_position_embeddings": 10**12},
                                           ["max_position_embeddings=1000000000000 must be an integer from 2 to"]),
    "a model larger than any machine": (_LLM, {"num_hidden_layers": 1024, "intermediate_size": 1 << 18},
                                        ["needs at least", "GiB of memory, more than the", "intermediate_size=262144"]),
    # fields that must divide, or lie inside, another
    "llm heads not a multiple of kv heads": (_LLM, {"num_key_value_heads": 3},
                                             ["num_attention_heads=4 is not a multiple of num_key_value_heads=3"]),
    "llm hidden_size not a multiple of heads": (_LLM, {"hidden_size": 66},
                                                ["hidden_size=66 is not a multiple of num_attention_heads=4"]),
    "vision hidden_size not a multiple of heads": (_VISION, {"hidden_size": 33},
                                                   ["hidden_size=33 is not a multiple of num_attention_heads=2"]),
    "vision patch larger than the picture": (_VISION, {"patch_size": 50},
                                             ["patch_size=50 is larger than image_size=42"]),
    "llm pad_token_id outside the vocabulary": (_LLM, {"pad_token_id": 10**6},
                                                ["pad_token_id=1000000 is outside the vocabulary"]),
    "preprocessor size off the tower": (_PREP, {"size": {"height": 64, "width": 64}},
                                        ["pictures are resized to {'height': 64, 'width': 64}", "takes 42 x 42"]),
    # other types and values
    "llm hidden_size missing": (_LLM, {"hidden_size": None}, ["hidden_size is missing"]),
    "llm rms_norm_eps NaN": (_LLM, {"rms_norm_eps": float("nan")}, ["rms_norm_eps=nan must be a number"]),
    "llm hidden_act gelu": (_LLM, {"hidden_act": "gelu"}, ["hidden_act='gelu' is not supported (supported: silu"]),
    "llm rope_scaling factor -1": (_LLM, {"rope_scaling": {"rope_type": "linear", "factor": -1}},
                                   ["rope_scaling: factor=-1 must be a number from 0.001 to 1024"]),
    "preprocessor image_std 0": (_PREP, {"image_std": [0.5, 0, 0.5]}, ["image_std=[0.5, 0, 0.5] must be 3 numbers"]),
    # a config in range that its weights contradict: named from the safetensors headers, before allocation
    "weights that disagree with the config": (_LLM, {"vocab_size": 1000},
                                              ["tensor model.embed_tokens.weight has shape", "implies [1000, 64]"]),
}


def _hostile_checkpoint(case: str, base: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    file, change, phrases = HOSTILE_CHECKPOINTS[case]
    root = tmp_path / "ckpt"
    shutil.copytree(base, root)
    if callable(change):
        change(root / file)
    else:
        obj = json.loads((root / file).read_text())
        for key, value in change.items():
            if value is None:
                del obj[key]
            else:
                obj[key] = value
        (root / file).write_text(json.dumps(obj))
    return root, phrases


@pytest.mark.parametrize("case", list(HOSTILE_CHECKPOINTS))
def test_a_hostile_checkpoint_is_refused_in_one_line_before_allocation(case, quiet_release, tmp_path):
    """vlm-quant --awq4 and vlm-export --awq4, side by side, under an address-space limit."""
    root, phrases = _hostile_checkpoint(case, quiet_release[0], tmp_path)
    calib = ["--calib", str(quiet_release[1]), "--calib-samples", "2", "--calib-len", "16"]
    commands = {"vlm-quant": ["--awq4", str(root), "-o", str(tmp_path / "awq"), *calib],
                "vlm-export": ["--awq4", str(root), "-o", str(tmp_path / "engine"), *calib, "--prompts", "1"]}
    running = {}
    for prog, args in commands.items():
        exe = shutil.which(prog)
        assert exe, f"{prog} is not on PATH: is the package installed?"
        running[prog] = subprocess.Popen([exe, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                         preexec_fn=_limit_address_space)
    for prog, process in running.items():
        try:
            out, err = process.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise
        result = subprocess.CompletedProcess(process.args, process.returncode, out, err)
        assert _one_line_error(result, str(root), *phrases).startswith(f"{prog}: error: ")
    assert not (tmp_path / "awq").exists() and not (tmp_path / "engine").exists()


def test_the_hostile_checkpoints_base_passes_every_check(quiet_release):
    """The cases above fail because of their one change: the fixture itself passes the same checks."""
    from vlm_edge.common.vila_config import VilaConfig
    from vlm_edge.export.config import ExportConfig
    from vlm_edge.export.config import check_source as export_check
    from vlm_edge.model.checkpoint import check_checkpoint_files
    from vlm_edge.quant.config import QuantConfig
    from vlm_edge.quant.config import check_source as quant_check

    root = quiet_release[0]
    quant_check(root, QuantConfig(samples=2, seq_len=16))
    export_check(root, ExportConfig(awq4=True, calib_samples=2, calib_len=16))
    check_checkpoint_files(root, VilaConfig.read(root))


def test_only_the_tables_fields_reach_transformers():
    """num_labels=10**9 would make transformers build a label map of a billion entries; keys the
    table does not know are kept in the config but never handed over."""
    from fixtures import tiny_config

    from vlm_edge.model.architectures import LLM_ARCHITECTURES, hf_config

    llm = {**tiny_config().llm, "num_labels": 10**9, "attn_implementation": "flash_attention_2", "return_dict": False}
    config = hf_config(LLM_ARCHITECTURES["LlamaForCausalLM"], llm, "sdpa")
    assert config.num_labels == 2 and config.return_dict and config._attn_implementation == "sdpa"
    assert config.rms_norm_eps == 1e-5 and config.vocab_size == llm["vocab_size"]


def test_max_position_embeddings_does_not_size_the_engines_rope_tables():
    from fixtures import tiny_config

    from vlm_edge.common.config_checks import POSITIONS
    from vlm_edge.export.config import ENGINE_MAX_POSITIONS
    from vlm_edge.export.decoder import DecoderSpec, rope_tables
    from vlm_edge.model import VilaModel

    config = tiny_config()
    config.llm["max_position_embeddings"] = POSITIONS  # the most the table allows
    spec = DecoderSpec.from_llm(VilaModel(config).llm)
    assert spec.max_positions == ENGINE_MAX_POSITIONS < POSITIONS
    assert rope_tables(spec)[0].shape == (ENGINE_MAX_POSITIONS, spec.head_dim)


def test_the_config_table_admits_nothing_an_engine_manifest_refuses():
    """Whatever passes the checkpoint table exports to an engine the runtime accepts."""
    from vlm_edge.common.config_checks import LLM, VISION
    from vlm_edge.common.manifest import MODEL_INTS
    from vlm_edge.export.config import ENGINE_MAX_POSITIONS

    pairs = {"hidden_size": LLM["hidden_size"], "layers": LLM["num_hidden_layers"],
             "heads": LLM["num_attention_heads"], "kv_heads": LLM["num_key_value_heads"], "head_dim": LLM["head_dim"],
             "vocab_size": LLM["vocab_size"], "intermediate_size": LLM["intermediate_size"],
             "image_size": VISION["image_size"]}
    for key, field in pairs.items():
        lo, hi = MODEL_INTS[key]
        assert lo <= field.lo and field.hi <= hi, (key, (field.lo, field.hi), (lo, hi))
    assert MODEL_INTS["max_positions"][0] <= LLM["max_position_embeddings"].lo
    assert ENGINE_MAX_POSITIONS <= MODEL_INTS["max_positions"][1]


@pytest.mark.parametrize("published", ["vila1.5-3b.config.json", "nvila-8b.config.json"])
def test_the_memory_estimate_is_a_close_lower_bound(published):
    """The weights the footprint counts from the config alone, against the real model's parameters
    (built on the meta device: no memory): at most all of them, at least 98%."""
    import torch

    from vlm_edge.common.footprint import weight_needs
    from vlm_edge.common.vila_config import VilaConfig
    from vlm_edge.model import VilaModel

    top = json.loads((ROOT / "tests" / "data" / published).read_text())
    side = top["vision_tower_cfg"]["image_size"]
    config = VilaConfig(top={k: v for k, v in top.items() if not k.endswith("_cfg")}, llm=top["llm_cfg"],
                        vision_tower=top["vision_tower_cfg"], mm_projector=top["mm_projector_cfg"],
                        preprocessor={"size": {"height": side, "width": side}})
    config.resolve_token_order(quiet=True)
    with torch.device("meta"):
        model = VilaModel(config, init_weights=False)
    real = sum(p.numel() for p in model.parameters())
    counted = sum(n.bytes for n in weight_needs(config, 1))
    assert 0.98 * real <= counted <= real, (counted, real)

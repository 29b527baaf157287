"""The dependency direction of docs/architecture.md holds, and the runtime starts without torch.

An AST scan of every module in each top-level folder (function-level imports included) checks
that a package imports only the vlm_edge packages it may, and that the runtime side imports no
torch or transformers. Every package's direct imports being allowed makes transitive chains
allowed too. A subprocess then proves it at run time: `import vlm_edge.edge` leaves torch out
of sys.modules.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> the vlm_edge packages it may import (docs/architecture.md)
ALLOWED = {
    "common": set(),
    "model": {"common"},
    "train": {"model", "common"},
    "quant": {"model", "train", "common"},  # train: the held-out VQA yardstick (quantization is judged by it)
    "kernels": {"common"},
    "export": {"model", "quant", "train", "kernels", "common"},
    "edge": {"kernels", "common"},
    "server": {"edge", "common"},
    "jetson": {"edge", "common"},
}
TORCH_FREE = {"common", "kernels", "edge", "server", "jetson"}
FOLDER = {"kernels": "gpu_kernels"}  # vlm_edge.<package> -> its folder, where the two differ (setup.py)
HEAVY = {"torch", "transformers", "torchvision", "accelerate"}


def imports_of(path: Path, package_dir: Path) -> set[str]:
    """Top-level names a module imports: 'vlm_edge.<pkg>' for ours, the distribution name otherwise."""
    depth = len(path.relative_to(package_dir).parts) - 1  # sub-folders below the package folder
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        elif isinstance(node, ast.ImportFrom):
            if node.level <= depth + 1:
                continue  # relative import inside its own package
            names = [f"vlm_edge.{node.module or ''}"]  # climbed out to vlm_edge.<other>
        else:
            continue
        for name in names:
            parts = name.split(".")
            found.add(".".join(parts[:2]) if parts[0] == "vlm_edge" and len(parts) > 1 else parts[0])
    return found


def violations(root: Path = ROOT) -> list[str]:
    problems = []
    for package, allowed in ALLOWED.items():
        folder = root / FOLDER.get(package, package)
        for path in sorted(folder.rglob("*.py")):
            for name in imports_of(path, folder):
                if name.startswith("vlm_edge."):
                    target = name.split(".")[1]
                    if target != package and target not in allowed:
                        problems.append(f"{path.relative_to(root)} imports vlm_edge.{target}")
                elif package in TORCH_FREE and name in HEAVY:
                    problems.append(f"{path.relative_to(root)} imports {name}")
    return problems


def test_dependency_direction_holds():
    assert violations() == []


def test_the_scan_catches_violations(tmp_path):
    for package in ALLOWED:
        (tmp_path / FOLDER.get(package, package)).mkdir()
    (tmp_path / "edge" / "session.py").write_text("def f():\n    import torch\n")
    (tmp_path / "common" / "x.py").write_text("from vlm_edge.model.vila import VilaModel\n")
    (tmp_path / "model" / "y.py").write_text("from ..export import graphs\n")
    assert sorted(violations(tmp_path)) == [
        "common/x.py imports vlm_edge.model", "edge/session.py imports torch", "model/y.py imports vlm_edge.export",
    ]


@pytest.mark.parametrize(
    "modules",
    ["vlm_edge.edge", "vlm_edge.server, vlm_edge.jetson, vlm_edge.kernels",
     "vlm_edge.common.image, vlm_edge.common.tokenizer, vlm_edge.common.templates, vlm_edge.common.vila_config"],
)
def test_runtime_imports_leave_torch_out(modules):
    code = f"import sys, {modules}; heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules); print(heavy)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_every_package_folder_is_scanned():
    setup = (ROOT / "setup.py").read_text()
    for package in ALLOWED:
        assert (ROOT / FOLDER.get(package, package) / "__init__.py").is_file(), package
        assert f'"{package}"' in setup
    assert '{"kernels": "gpu_kernels"}' in setup


def test_no_root_folder_shadows_an_installed_module():
    """A folder at the repository root is importable under its own name whenever the root is on
    sys.path (`python -m pytest`, a REPL started there). transformers >= 5.25 imports Hugging Face's
    `kernels`; a root folder called kernels/ made every `import transformers` there fail."""
    import importlib.metadata

    installed = importlib.metadata.packages_distributions()
    # a regular package (with __init__.py) found first on sys.path wins over any installed one
    folders = [p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()]
    clashes = {name: installed[name] for name in folders if name in installed}
    assert clashes == {}
    # and in a subprocess started at the root, transformers and our kernels both import
    code = "import transformers.activations, vlm_edge.kernels.reference; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


def test_architecture_tables_agree():
    from vlm_edge.common import vila_config
    from vlm_edge.model import architectures

    assert set(vila_config.LLM_ARCHITECTURES) == set(architectures.LLM_ARCHITECTURES)
    assert set(vila_config.VISION_ARCHITECTURES) == set(architectures.VISION_ARCHITECTURES)

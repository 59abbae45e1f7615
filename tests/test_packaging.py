"""One import name: installed, the project puts `ovq` and nothing else on sys.path, from a wheel and
from an editable install alike; the rooms of ovq.agent import each other in one direction only."""

import ast
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGE_DIR = PYPROJECT["tool"]["setuptools"]["package-dir"]

# A user's own project beside ovq: top-level modules named like the repository's folders.
FOREIGN = {
    "kernels.py": "FOREIGN = 'kernels'\n",
    "agent/__init__.py": "FOREIGN = 'agent'\n",
    "memory.py": "FOREIGN = 'memory'\n",
}
USE_BOTH = (
    "import kernels, agent, memory\n"
    "assert (kernels.FOREIGN, agent.FOREIGN, memory.FOREIGN) == ('kernels', 'agent', 'memory')\n"
    "import torch\n"
    "from ovq import OVQConfig, OVQState, Runtime, Session, ovq_attention\n"
    "import ovq.kernels, ovq.memory\n"
    "assert not hasattr(ovq.kernels, 'FOREIGN') and not hasattr(ovq.memory, 'FOREIGN')\n"
    "q = torch.randn(1, 2, 20, 8)\n"
    "out, state = ovq_attention(q, q, q, 2.0, OVQConfig(chunk_size=8, capacity=4))\n"
    "assert out.shape == q.shape and isinstance(state, OVQState)\n"
    "print(ovq.__file__)\n"
)


def _folders_to_packages() -> dict[str, str]:
    """Every folder with an __init__.py under a mapped root, as the package name it installs as."""
    found = {}
    for package, folder in PACKAGE_DIR.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found[".".join((package, *rel.parts))] = str(init.parent.relative_to(ROOT))
    return found


def test_every_package_folder_is_listed_for_installation():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = _folders_to_packages()
    assert set(found) == listed, f"unlisted: {set(found) - listed}, listed but absent: {listed - set(found)}"
    assert {name.split(".")[0] for name in listed} == {"ovq"}


def _foreign_tree(tmp_path: Path) -> Path:
    foreign = tmp_path / "users_project"
    for name, text in FOREIGN.items():
        (foreign / name).parent.mkdir(parents=True, exist_ok=True)
        (foreign / name).write_text(text)
    return foreign


def _run_beside(foreign: Path, *path: Path) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in (*path, foreign))}
    out = subprocess.run(
        [sys.executable, "-c", USE_BOTH], cwd=foreign, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.slow
def test_the_wheel_installs_one_top_level_name_that_lives_beside_a_users_kernels_and_agent(tmp_path):
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = tmp_path.glob("ovq-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"ovq"}
    for data in ("ovq/agent/shipped/tiny/model.safetensors", "ovq/agent/eval/probe_suites/basic.toml"):
        assert data in names  # package data travels in the wheel
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "ovq = ovq.agent.cli.main:main" in zipfile.ZipFile(wheel).read(entry).decode()

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    installed = {p.name for p in target.iterdir() if not p.name.endswith(".dist-info")}
    assert installed - {"bin"} == {"ovq"}  # bin/ holds the console script
    where = _run_beside(_foreign_tree(tmp_path), target)
    assert where.startswith(str(target))


def test_the_editable_install_lives_beside_a_users_kernels_and_agent(tmp_path):
    """The test venv holds ovq as an editable install: run away from the repository root."""
    where = _run_beside(_foreign_tree(tmp_path))
    assert where == str(ROOT / "ovq" / "__init__.py")


def test_python_dash_m_ovq_is_the_cli():
    out = subprocess.run(
        [sys.executable, "-m", "ovq", "--version"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stdout.startswith("ovq "), out.stderr


# -- rooms ------------------------------------------------------------------------------------------

# Which rooms of ovq.agent each room may import (the table in agent/README.md).
MAY_IMPORT = {
    "cli": {"cli", "server", "runtime", "eval", "train", "tasks", "model"},
    "server": {"server", "runtime", "eval", "model"},
    "runtime": {"runtime", "eval", "tasks", "model"},
    "eval": {"eval", "tasks", "model"},
    "train": {"train", "tasks", "model"},
    "tasks": {"tasks", "model"},
    "model": {"model"},
}
LAYERS = {  # top-level subpackages and what they may import
    "kernels": {"kernels"},
    "memory": {"memory", "kernels"},
    "snapshots": {"snapshots"},
    "agent": {"agent", "memory", "kernels", "snapshots", "tui"},  # tui: only cli/, which launches it
    "tui": {"tui", "agent"},
}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in names if n.startswith("ovq.")}


def _modules():
    for package, folder in PACKAGE_DIR.items():
        if package == "ovq":
            continue
        for path in (ROOT / folder).rglob("*.py"):
            yield package.split(".")[1], path


def test_no_module_imports_a_top_level_folder_by_its_bare_name():
    bare = {"agent", "memory", "kernels", "tui", "snapshots"}
    for _, path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            assert not any(m.split(".")[0] in bare for m in mods), f"{path}: {mods}"


def test_imports_point_one_way_between_packages_and_between_agent_rooms():
    for top, path in _modules():
        for name in _imports(path):
            parts = name.split(".")
            if len(parts) < 2 or parts[1] not in LAYERS:
                continue  # `from ovq import __version__`
            assert parts[1] in LAYERS[top], f"{path.relative_to(ROOT)} imports {name}"
            if top == "agent" and parts[1] == "agent" and len(parts) > 2:
                room = path.relative_to(ROOT / "agent").parts[0]
                if room in MAY_IMPORT and parts[2] in MAY_IMPORT:
                    assert parts[2] in MAY_IMPORT[room], f"{path.relative_to(ROOT)} imports {name}"
            if top == "agent" and parts[1] == "tui":
                assert path.parent.name == "cli", f"{path.relative_to(ROOT)} imports {name}"

"""Every command README.md and docs/ show, run or checked as written.

Each fenced ``bash`` block is cut into commands (continuation lines and multi-line quotes
joined, comments dropped, ``&&``/``;``/``&`` chains split); every command must be one this
module knows how to check, so a new documented command that nobody checks fails here.
Cheap ones run for real (``deai-flower --help`` and ``--cfg job``, the local store
commands); the others are checked as far as they can be without their cost: a
``deai-flower`` command's overrides compose and validate, a ``deai`` command parses with
the real argument parser, a ``flwr`` command's flags exist in the installed Flower and its
``--run-config`` parses as Flower parses it (its ``overrides`` composed too), scripts and
files exist. The slow tier runs a small main job, then the README's ``deai verify`` and its
``load_model`` lines on the run's output directory; tests/e2e/test_flwr_run.py runs the
README's ``flwr run`` commands as written.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from doc_commands import DOCUMENTED, ROOT, Command, code_blocks
from doc_commands import of as _of
from support import compose_with

from deai_flower.config import validate

BIN = Path(sys.executable).parent
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def _id(command: Command) -> str:
    return str(command)[:90]


def test_the_docs_show_the_commands_this_module_checks() -> None:
    assert len(_of("deai-flower")) >= 15 and len(_of("deai")) >= 10 and len(_of("flwr")) >= 3


# Commands of tools this project does not ship, each named for what the test checks instead.
EXTERNAL = {
    "python3": "creates the virtual environment (the install itself: CI, command 2)",
    "source": "activates it",
    "cd": "changes directory",
    "npm": "installs js-ipfs: version checked below",
    "npx": "starts anvil: package checked below",
    "node": "runs solc-js or js-ipfs",
    "ipfs": "Kubo, the user's own",
    "jsipfs": "the shell function defined beside it",
    "echo": "writes the preload script",
    "export": "sets a variable Flower reads: checked below",
    "flower-superlink": "flags checked below",
    "flower-supernode": "flags checked below",
}
CHECKED = {"deai-flower", "deai", "flwr", "python", "pip", "bash"}


@pytest.mark.parametrize("command", DOCUMENTED, ids=_id)
def test_every_documented_command_is_one_this_module_checks(command: Command) -> None:
    program = command.program
    if program.startswith("jsipfs()"):  # the shell function js-ipfs runs through
        return
    assert program in CHECKED or program in EXTERNAL, f"{command}: a documented command no test checks"


def _overrides(words: tuple[str, ...]) -> list[list[str]]:
    """The Hydra overrides of a ``deai-flower`` command, one list per sweep value."""
    overrides = [w for w in words[1:] if not w.startswith("-") and w != "job"]
    swept = [[f"{o.split('=', 1)[0]}={v}" for v in o.split("=", 1)[1].split(",")] if "," in o else [o]
             for o in overrides]  # fmt: skip
    return [list(combination) for combination in itertools.product(*swept)]


@pytest.mark.parametrize("command", _of("deai-flower"), ids=_id)
def test_every_deai_flower_command_composes_and_validates(command: Command) -> None:
    for overrides in _overrides(command.words):
        validate(compose_with(*overrides), targets=False)


def _run(words: list[str], *, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    program = BIN / Path(words[0]).name
    return subprocess.run([str(program), *words[1:]], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


@pytest.mark.parametrize("command", [c for c in _of("deai-flower") if "--help" in c.words or "--cfg" in c.words],
                         ids=_id)  # fmt: skip
def test_deai_flower_commands_that_run_nothing_run_as_written(command: Command, tmp_path: Path) -> None:
    result = _run(list(command.words), cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stdout + result.stderr and "Warning" not in result.stderr
    if "--cfg" in command.words:  # the composed config, with each override applied
        for override in _overrides(command.words)[0]:
            key, value = override.lstrip("+").split("=", 1)
            assert f"{key.rsplit('.', 1)[-1]}: {value}" in result.stdout, (override, result.stdout[-2000:])
    assert not (tmp_path / "outputs").exists()  # nothing ran


PLACEHOLDER = re.compile(r"\.\.\.|0x\.\.\.|0xC0…|0xS1LO…|<[^>]+>")


@pytest.mark.parametrize("command", _of("deai"), ids=_id)
def test_every_deai_command_parses_with_the_real_parser(command: Command) -> None:
    from deai_flower.cli.deai import build_parser

    args = build_parser().parse_args([PLACEHOLDER.sub("1", w) for w in command.words[1:]])
    assert callable(args.func), command


def test_the_store_commands_run_as_written(tmp_path: Path) -> None:
    """docs/storage.md's local-store commands, placeholders filled in, on a real file."""
    store = [c for c in _of("deai") if c.words[1] == "store" and "--root" in c.words]
    assert [c.words[c.words.index("--root") + 2] for c in store] == ["add", "get", "verify"]
    (tmp_path / "FILE").write_bytes(b"hello world")
    root, cid = str(tmp_path / "store"), None
    for command in store:
        words = ["1" if w == "..." or w.startswith("outputs/<") else w for w in command.words]
        words[words.index("--root") + 1] = root
        words = [cid if w == "CID" else w for w in words]
        result = _run(words, cwd=tmp_path, timeout=120)
        assert result.returncode == 0, (command, result.stderr)
        cid = cid or result.stdout.strip()
    assert cid == "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"  # ipfs add --cid-version=1
    assert (tmp_path / "OUT").read_bytes() == b"hello world"


@functools.cache
def _help(*program: str) -> str:
    result = subprocess.run([str(BIN / program[0]), *program[1:], "--help"], env={**ENV, "COLUMNS": "200"},
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _flags(words: tuple[str, ...]) -> list[str]:
    return [w.split("=", 1)[0] for w in words if w.startswith("--")]


@pytest.mark.parametrize("command", _of("flwr", "flower-superlink", "flower-supernode"), ids=_id)
def test_every_flower_command_uses_flags_the_installed_flower_has(command: Command) -> None:
    sub = (command.words[0], command.words[1]) if command.program == "flwr" else (command.words[0],)
    text = _help(*sub)
    missing = [flag for flag in _flags(command.words) if not re.search(rf"{re.escape(flag)}\b", text)]
    assert not missing, f"{command}: {missing} not in `{' '.join(sub)} --help`"


@pytest.mark.parametrize("command", [c for c in _of("flwr") if "--run-config" in c.words], ids=_id)
def test_every_flwr_run_config_parses_as_flower_parses_it(command: Command) -> None:
    from flwr.common.config import parse_config_args

    config = parse_config_args([command.words[command.words.index("--run-config") + 1]])
    app = _pyproject()["tool"]["flwr"]["app"]["config"]
    assert set(config) <= set(app), f"{command}: {set(config) - set(app)} not in [tool.flwr.app.config]"
    if "overrides" in config:  # what the ServerApp composes, checked as it checks it
        validate(compose_with(*shlex.split(str(config["overrides"]))), targets=False)
    if "--federation-config" in command.words:
        assert parse_config_args([command.words[command.words.index("--federation-config") + 1]])


def test_the_variables_the_docs_export_are_ones_flower_reads() -> None:
    import flwr

    names = [c.words[1].split("=", 1)[0] for c in _of("export")]
    assert names
    source = "".join(p.read_text(encoding="utf-8") for p in Path(flwr.__file__).parent.rglob("*.py"))
    assert [n for n in names if n not in source] == []


@pytest.mark.parametrize("command", _of("python", "pip", "bash"), ids=_id)
def test_every_script_module_and_extra_the_docs_name_exists(command: Command) -> None:
    words = command.words
    if command.program == "bash":
        script = ROOT / words[1]
        assert script.is_file(), command
        assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0, command
    elif command.program == "pip":
        extras = re.findall(r"\[(\w+)\]", " ".join(words))
        declared = _pyproject()["project"].get("optional-dependencies", {})
        assert all(extra in declared for extra in extras), command
    elif words[1:3] == ("-m", "pytest"):
        markers = {m.split(":")[0] for m in _pyproject()["tool"]["pytest"]["ini_options"]["markers"]}
        if "-m" in words[3:]:
            expression = words[words.index("-m", 3) + 1]
            assert set(re.findall(r"\w+", expression)) - {"not", "and", "or"} <= markers, command
        assert all((ROOT / w).exists() for w in words if w.startswith("tests/")), command
    elif words[1] == "-m":
        assert (ROOT / (words[2].replace(".", "/") + ".py")).is_file(), command
    else:
        script = ROOT / words[1]
        assert script.is_file() and 'if __name__ == "__main__":' in script.read_text(encoding="utf-8"), command


@functools.cache
def _pyproject() -> dict[str, Any]:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_the_npm_packages_the_docs_install_are_the_versions_the_project_runs() -> None:
    from deai_flower.chain.devnode import ANVIL_NPM_SPEC
    from deai_flower.storage.ipfs_daemon import JS_IPFS_VERSION

    packages = [w for c in _of("npx", "npm") for w in c.words[1:] if "@" in w and not w.startswith("-")]
    assert ANVIL_NPM_SPEC in packages and f"ipfs@{JS_IPFS_VERSION}" in packages, packages


def test_the_contract_is_regenerated_from_files_that_exist() -> None:
    (command,) = [c for c in _of("cd") if c.words[1] == "contracts"]
    assert (ROOT / "contracts" / "package-lock.json").is_file() and (ROOT / "contracts" / "compile.mjs").is_file()


# --- the slow tier: a small run, then what the README does with its output directory -------


@pytest.mark.slow
def test_the_readme_verifies_and_loads_a_runs_output_directory(tmp_path: Path) -> None:
    run = _run(["deai-flower", "num_clients=3", "num_rounds=1", "progress=false", "training.local_epochs=1"],
               cwd=tmp_path, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    (out,) = (tmp_path / "outputs").glob("*/*")
    relative = out.relative_to(tmp_path).as_posix()
    (verify,) = [c for c in _of("deai") if c.page == "README.md" and c.words[1] == "verify"]
    words = [relative if w.startswith("outputs/<") else w for w in verify.words]
    verified = _run(words, cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout[-2000:] + verified.stderr[-2000:]
    assert verified.stdout.splitlines()[-1].startswith("all 1 rounds verified"), verified.stdout[-2000:]
    (snippet,) = ["\n".join(b) for b in code_blocks(ROOT / "README.md", "python") if "load_model" in "\n".join(b)]
    code = re.sub(r"outputs/<[^\"]+>/", f"{relative}/", snippet) + "\nimport torch\nprint(isinstance(model, torch.nn.Module))"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.strip() == "True", loaded.stdout
    assert "Warning" not in loaded.stderr, loaded.stderr

"""The README's commands stay true: every ``python -m mmfast.<command>`` line in a code block of
README.md or docs/*.md parses with that command's own parser and names registered models, the
install commands the README gives are the ones mmfast's one-line error tells users to run, and
``.ci/run`` installs with the README's developer command, runs the README's first train and
recommend commands from the repository root, and tests with the README's test command."""
from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

from mmfast import _ext, models

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMANDS = {"train", "recommend", "evaluate", "pretrain", "tune"}


def code_lines(path: Path) -> list[str]:
    """Shell lines of the ```bash blocks (continuations joined, comments dropped)."""
    lines, block, pending = [], False, ""
    for raw in path.read_text().splitlines():
        if raw.startswith("```"):
            block = raw.strip() in ("```bash", "```sh", "```console") if not block else False
            continue
        if not block:
            continue
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        lines.append(re.sub(r"\s+#.*$", "", line))
    return lines


def mmfast_commands() -> list[tuple[str, str, list[str]]]:
    """(file, command, argv) for every concrete ``python -m mmfast.<command>`` line."""
    out = []
    for path in DOCS:
        for line in code_lines(path):
            m = re.match(r"^python -m mmfast\.(\w+)(.*)$", line)
            if not m or m.group(1) not in COMMANDS:
                continue
            if re.search(r"\[-", m.group(2)):  # a usage synopsis, not a command
                continue
            out.append((path.name, m.group(1), shlex.split(m.group(2))))
    return out


def test_the_readme_has_run_commands():
    names = {(f, c) for f, c, _ in mmfast_commands()}
    assert {("README.md", "train"), ("README.md", "recommend")} <= names


@pytest.mark.parametrize("where,command,argv", mmfast_commands(),
                         ids=lambda x: x if isinstance(x, str) else " ".join(x)[:60])
def test_documented_command_parses(where, command, argv):
    module = importlib.import_module(f"mmfast.{command}")
    try:
        args = module.build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse's error: the documented line no longer parses
        pytest.fail(f"{where}: `python -m mmfast.{command} {' '.join(argv)}` does not parse "
                    f"(exit {exc.code})")
    model = getattr(args, "model", None)
    if model is not None and command == "train":
        models.get(model)  # raises with suggestions when the documented model is gone


def readme() -> str:
    return (ROOT / "README.md").read_text()


def test_install_commands_are_the_readmes():
    lines = code_lines(ROOT / "README.md")
    install = lines.index(_ext.DEVELOPER_INSTALL)  # what the one-line error tells users to run
    assert lines[install - 1].startswith("pip install torch"), "torch first, then the build"
    assert install < 3, "the developer install opens the README's commands"
    assert any(line.startswith(_ext.USER_INSTALL) or f"`{_ext.USER_INSTALL}`" in readme()
               for line in lines)


def test_ci_follows_the_readme():
    ci = (ROOT / ".ci" / "run").read_text()
    lines = code_lines(ROOT / "README.md")
    install = next(line for line in lines if line.startswith("pip install --no-build-isolation -e"))
    assert install in ci, f".ci/run must install with the README's `{install}`"
    test = next(line for line in lines if line.startswith("pytest "))
    assert re.search(rf"^\s*{re.escape(test)}\s*$", ci, re.M), f".ci/run must run `{test}`"
    # The newcomer step reads its commands from the README (so they cannot drift apart).
    assert "^python -m mmfast.train" in ci and "^python -m mmfast.recommend" in ci


def test_unbuilt_source_checkout_message_is_one_line_naming_the_install(monkeypatch):
    monkeypatch.setattr(_ext, "_C", None)
    monkeypatch.setattr(_ext, "_LOAD_ERROR", "mmfast's kernels are not built in /x/mmfast")
    message = _ext.unavailable_message()
    assert "\n" not in message
    assert f"`{_ext.DEVELOPER_INSTALL}`" in message and "--backend torch" in message
    with pytest.raises(_ext.KernelsUnavailable, match=re.escape(_ext.DEVELOPER_INSTALL)):
        _ext.require()


def test_a_command_without_kernels_prints_one_line(monkeypatch, capsys, tmp_path):
    from mmfast import train

    monkeypatch.setattr(_ext, "_C", None)
    monkeypatch.setattr(_ext, "_LOAD_ERROR", "mmfast's kernels are not built in /x/mmfast")
    code = train.main(["-m", "LightGCN", "--no-grid", "--epochs", "1", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and _ext.DEVELOPER_INSTALL in err
    assert not any(tmp_path.iterdir())  # stopped before a run folder was made

"""Every code example of the README and of docs/*.md runs, so none can rot.

For each Markdown file, the ```` ```python ```` blocks run in order in one
namespace (later blocks use what earlier ones defined), in a fresh temporary
working directory. Then, in that same directory, every ``$ shardstore ...``
line of the file's ```` ```console ```` blocks runs through the real command
line and must exit 0; the output shown under it is illustrative and not
compared. Blocks that cannot run (shell set-up, sketches, outputs) are
written as ```` ```bash ````, ```` ```text ```` or ```` ```toml ````: nothing is skipped
silently. A failure points at the Markdown line of the failing statement.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from markdown_blocks import ROOT, blocks, doc_files, parse_blocks, shardstore_commands

from shardstore import cli, registry

RUNNABLE = [p for p in doc_files() if any(b.lang in ("python", "console") for b in blocks(p))]


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_the_examples_are_collected() -> None:
    expected = {
        "README.md",
        "docs/index.md",
        "docs/getting-started.md",
        "docs/coming-from-tf-data.md",
        "docs/sources.md",
        "docs/plugins.md",
        "docs/object-storage.md",
    }
    names = {_rel(p) for p in RUNNABLE}
    assert expected <= names, sorted(expected - names)


@pytest.mark.parametrize("path", doc_files(), ids=_rel)
def test_no_code_block_hides_from_the_runner(path: Path) -> None:
    # An indented fence (inside a list or a tab) would not be collected: refuse it.
    text = path.read_text(encoding="utf-8")
    hidden = re.findall(r"^[ \t]+```(?:python|py|console)\b", text, re.M)
    assert not hidden, f"{_rel(path)}: indented code fences are not run; unindent them"
    assert not re.search(r"^```py\s*$", text, re.M), "write ```python, not ```py"


def test_fences_are_parsed() -> None:
    text = (
        "intro\n```python\nx = 1\n```\n\n```console\n$ shardstore info d \\\n  --json\nout\n```\n"
    )
    found = parse_blocks(text)
    assert [(b.lang, b.line, b.code) for b in found] == [
        ("python", 3, "x = 1\n"),
        ("console", 7, "$ shardstore info d \\\n  --json\nout\n"),
    ]
    assert shardstore_commands(found[1]) == [(7, ["info", "d", "--json"])]


@pytest.mark.parametrize("path", RUNNABLE, ids=_rel)
def test_examples_run(
    path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    monkeypatch.chdir(tmp_path)
    if "s3://" in path.read_text(encoding="utf-8"):
        # examples in object storage run against the S3 server on 127.0.0.1 (its
        # buckets are created on first write); the shard cache goes in tmp_path
        request.getfixturevalue("s3_env")
        monkeypatch.setenv("SHARDSTORE_CACHE_DIR", str(tmp_path / "cache"))
    # A page may register a source in-process (the plugin guide does): undo it afterwards.
    monkeypatch.setattr(registry, "_registered", dict(registry._registered))
    namespace: dict[str, object] = {"__name__": f"docs_example_{path.stem}"}
    ran = 0
    for block in blocks(path):
        if block.lang == "python":
            # Pad with blank lines so that tracebacks give the Markdown file's line numbers.
            source = "\n" * (block.line - 1) + block.code
            exec(compile(source, str(path), "exec"), namespace)
            ran += 1
    for block in blocks(path):
        if block.lang == "console":
            for line, argv in shardstore_commands(block):
                status = cli.main(argv)
                err = capsys.readouterr().err
                assert status == 0, f"{_rel(path)}:{line}: shardstore {shlex.join(argv)}\n{err}"
                ran += 1
    assert ran, f"{_rel(path)} has runnable blocks but none ran"

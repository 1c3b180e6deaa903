"""The complete plugin of docs/plugins.md passes the conformance suite.

The guide's first ```` ```python ```` block defines ``RawSource``; its
conformance block defines ``TestRawSource``. Both are executed here, the
source is registered in-process for this module only, and pytest runs the
whole :class:`shardstore.testing.SourceConformance` suite against it, so the
example a plugin author copies is known to be correct.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from markdown_blocks import ROOT, blocks

from shardstore import registry

GUIDE = ROOT / "docs" / "plugins.md"


def _load() -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "docs_plugins_example"}
    for block in blocks(GUIDE):
        if block.lang == "python" and ("class RawSource" in block.code or
                                       "SourceConformance" in block.code):  # fmt: skip
            exec(compile("\n" * (block.line - 1) + block.code, str(GUIDE), "exec"), namespace)
    return namespace


_example = _load()
RawSource = _example["RawSource"]
TestRawSource = _example["TestRawSource"]


@pytest.fixture(autouse=True, scope="module")
def _registered() -> Iterator[None]:
    saved = dict(registry._registered)
    registry.register_source(RawSource)
    yield
    registry._registered.clear()
    registry._registered.update(saved)
    registry.refresh()


def test_the_guide_defines_the_example() -> None:
    assert RawSource.name == "raw" == TestRawSource.source
    assert RawSource.capabilities() == {
        "tf_native": True,
        "random_access": True,
        "supports_ragged": False,
    }

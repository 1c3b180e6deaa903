"""A third-party plugin, installed as its own distribution, is found and used.

``make install`` pip-installs ``plugins/shardstore-hdf5`` (non-editable) next
to shardstore; nothing in shardstore names it. These tests prove discovery
through the ``shardstore.sources`` entry point end to end: the registry, the
``shardstore plugins`` command and a bit-exact write/read round trip. The
plugin's own conformance suite lives in ``plugins/shardstore-hdf5/tests``.
"""

from __future__ import annotations

import json
from importlib.metadata import distribution
from pathlib import Path

import numpy as np
import pytest

import shardstore
from shardstore import cli
from shardstore.testing import assert_bitwise_equal, collect

DIST = "shardstore-hdf5"


@pytest.fixture(scope="module", autouse=True)
def _installed() -> None:
    """Fail with the fix, rather than with a KeyError, when the plugin is not installed."""
    if "hdf5" not in shardstore.available_sources():
        pytest.fail(
            f"{DIST} is not installed: run `make install` or `pip install ./plugins/{DIST}`"
        )


def test_the_installed_distribution_registers_hdf5() -> None:
    info = shardstore.available_sources()["hdf5"]
    assert info.distribution == DIST  # the Name in the dist's METADATA, as importlib reports it
    assert info.version == distribution(DIST).version
    assert info.target == "shardstore_hdf5:Hdf5Source"
    assert info.conflicts == ()
    source = shardstore.get_source("hdf5")
    assert type(source).__module__.startswith("shardstore_hdf5")
    assert source.capabilities() == {
        "tf_native": True,
        "random_access": True,
        "supports_ragged": False,
    }


def test_plugins_command_lists_hdf5(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plugins"]) == 0
    out = capsys.readouterr().out
    block = out[out.index("hdf5\n") :].split("\n\n")[0]
    lines = block.splitlines()[:4]
    assert lines[0] == "hdf5"
    assert lines[1].split() == ["distribution:", DIST, distribution(DIST).version]
    assert lines[2].split() == ["target:", "shardstore_hdf5:Hdf5Source"]
    assert lines[3].split(None, 1) == [
        "capabilities:",
        "tf_native=yes, random_access=yes, supports_ragged=no",
    ]


def test_plugins_command_json_lists_hdf5(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plugins", "--json"]) == 0
    entry = json.loads(capsys.readouterr().out)["hdf5"]
    assert entry["distribution"] == DIST
    assert entry["error"] is None
    assert entry["capabilities"] == {
        "tf_native": True,
        "random_access": True,
        "supports_ragged": False,
    }


def test_write_and_read_through_the_public_api(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "image": rng.random((50, 8, 8, 3), dtype=np.float32),
        "label": rng.integers(0, 10, 50),
        "raw": rng.integers(0, 256, (50, 7), dtype=np.uint8).view(np.int8),
        "id": np.arange(50, dtype=np.int64),
    }
    arrays["image"][3, 0, 0, 0] = -0.0
    arrays["image"][4, 0, 0, 0] = np.float32(np.nan)
    written = shardstore.write(tmp_path / "d", arrays, format="hdf5", records_per_shard=16)
    assert written.manifest.sources == ("hdf5",)
    assert all(f.path.endswith(".h5") for s in written.shards for f in s.files)

    ds = shardstore.open(tmp_path / "d")  # the source comes from the manifest
    out = collect(ds.to_tf(batch_size=7))
    for name, expected in arrays.items():
        assert_bitwise_equal(out[name], expected)
    image, ids = collect(ds.to_tf(batch_size=10, features=("image", "id"), shuffle=True, seed=1))
    assert sorted(ids.tolist()) == list(range(50))
    assert_bitwise_equal(image, arrays["image"][ids])
    ds.verify(progress=False)

"""Entry-point discovery: built-ins, broken plugins and name conflicts (real dist-infos)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import shardstore
from shardstore import registry
from shardstore.errors import PluginConflictError, PluginLoadError, SourceNotFoundError
from shardstore.sources.npy import NpySource


def make_dist(root: Path, dist: str, entry_points: str, modules: dict[str, str]) -> None:
    """A throwaway installed distribution: a dist-info directory plus modules."""
    info = root / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    for name, code in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(code))


def test_builtin_npy_is_registered_through_entry_points() -> None:
    info = shardstore.available_sources()["npy"]
    assert info.distribution == "shardstore"
    assert info.target == "shardstore.sources.npy:NpySource"
    assert info.conflicts == ()
    assert isinstance(shardstore.get_source("npy"), NpySource)


def test_available_sources_is_read_only() -> None:
    view = shardstore.available_sources()
    with pytest.raises(TypeError):
        view["evil"] = view["npy"]  # type: ignore[index]


def test_unknown_source_lists_installed() -> None:
    with pytest.raises(SourceNotFoundError, match=r"'nope'.*npy"):
        shardstore.get_source("nope")


def test_broken_plugin_names_itself_and_breaks_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_dist(
        tmp_path,
        "shardstore_brokenplug",
        """
        [shardstore.sources]
        broken = brokenplug_mod:BrokenSource
        """,
        {"brokenplug_mod": "raise ImportError('missing native library libbroken.so')\n"},
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.refresh()
    assert shardstore.available_sources()["broken"].distribution == "shardstore_brokenplug"
    with pytest.raises(PluginLoadError) as exc:
        shardstore.get_source("broken")
    message = str(exc.value)
    assert "broken" in message
    assert "shardstore_brokenplug" in message
    assert "libbroken.so" in message
    assert isinstance(shardstore.get_source("npy"), NpySource)


def test_plugin_that_is_not_a_source_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_dist(
        tmp_path,
        "notasource",
        "[shardstore.sources]\nodd = odd_mod:NotASource\n",
        {"odd_mod": "class NotASource:\n    name = 'odd'\n"},
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.refresh()
    with pytest.raises(PluginLoadError, match=r"not a shardstore\.sources\.Source"):
        shardstore.get_source("odd")


def test_two_plugins_with_one_name_is_an_error_naming_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_dist(
        tmp_path,
        "impostor",
        "[shardstore.sources]\nnpy = impostor_mod:FakeNpy\n",
        {"impostor_mod": "raise RuntimeError('must never be imported')\n"},
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.refresh()
    assert shardstore.available_sources()["npy"].conflicts  # listing still works
    with pytest.raises(PluginConflictError) as exc:
        shardstore.get_source("npy")
    assert "shardstore" in str(exc.value)
    assert "impostor" in str(exc.value)


def test_autoload_can_be_disabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_dist(tmp_path, "thirdparty", "[shardstore.sources]\nthird = third_mod:X\n", {})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("SHARDSTORE_DISABLE_PLUGIN_AUTOLOAD", "1")
    registry.refresh()
    assert "third" not in shardstore.available_sources()
    assert "npy" in shardstore.available_sources()


def test_register_source_in_process() -> None:
    @shardstore.register_source
    class Custom(NpySource):
        name = "custom-npy"

    assert isinstance(shardstore.get_source("custom-npy"), Custom)


def test_import_is_light() -> None:
    """`import shardstore` imports neither TensorFlow, a cloud client nor any plugin module."""
    code = (
        "import sys, shardstore\n"
        "shardstore.available_sources()\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'zarr',"
        " 'numcodecs', 'h5py', 'google_crc32c', 'shardstore_hdf5', 'dask', 'distributed',"
        " 'obstore')"
        " or (m.startswith('shardstore.sources.') and m != 'shardstore.sources.base')"
        " or m in ('shardstore.reading.pipeline', 'shardstore.writing.adopt')]\n"
        "assert callable(shardstore.index_tfrecords)\n"
        "print(heavy)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr

"""Manifest v1: serialisation round trip and strict validation of hostile input."""

from __future__ import annotations

import contextlib
import copy
import gc
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardstore.errors import ManifestError
from shardstore.format.manifest import (
    SUPPORTED_DTYPES,
    FeatureSpec,
    FileEntry,
    Manifest,
    ShardEntry,
    check_relative_path,
)

CHECKSUM = "xxh3_64:0123456789abcdef"


def sample() -> Manifest:
    files = (
        FileEntry("v-00ff00ff/000000.x.npy", 256, CHECKSUM, "x", {"header_bytes": 128}),
        FileEntry("v-00ff00ff/000000.y.npy", 168, CHECKSUM, "y", {"header_bytes": 128}),
    )
    files1 = tuple(
        FileEntry(f.path.replace("000000", "000001"), f.size, f.checksum, f.feature, f.info)
        for f in files
    )
    return Manifest(
        features={
            "x": FeatureSpec(np.dtype("<f4"), (2, 2)),
            "y": FeatureSpec(np.dtype("<i8"), ()),
        },
        shards=(ShardEntry(0, "npy", 5, files), ShardEntry(1, "npy", 3, files1)),
        version_id="00ff00ff00ff00ff",
        metadata={"origin": "test", "nested": {"a": [1, 2]}},
        created_by="shardstore test",
    )


def as_dict() -> dict[str, Any]:
    return json.loads(sample().to_json())


def test_round_trip() -> None:
    m = sample()
    again = Manifest.from_json(m.to_json())
    assert again.to_dict() == m.to_dict()
    assert again.num_records == 8
    assert again.features["x"].dtype == np.dtype("float32")
    assert again.features["x"].shape == (2, 2)
    assert again.features["x"].record_nbytes == 16
    assert again.shards[1].file_for("y").info["header_bytes"] == 128
    assert again.sources == ("npy",)


def test_top_level_fields_are_present() -> None:
    d = as_dict()
    assert d["format"] == "shardstore"
    assert d["format_version"] == 1
    assert d["num_records"] == 8
    assert d["features"]["y"] == {"dtype": "<i8", "shape": []}
    assert d["shards"][0]["files"][0]["checksum"] == CHECKSUM


def test_variable_dimension_is_representable() -> None:
    d = as_dict()
    d["features"]["x"]["shape"] = [None, 3]
    m = Manifest.from_dict(d)
    assert m.features["x"].shape == (None, 3)
    assert not m.features["x"].is_fixed
    with pytest.raises(ManifestError):
        _ = m.features["x"].record_nbytes


def test_unknown_keys_are_ignored() -> None:
    d = as_dict()
    d["future_field"] = {"anything": 1}
    assert Manifest.from_dict(d).num_records == 8


@pytest.mark.parametrize("version", [0, 2, 99, "1", 1.0, None])
def test_unknown_format_version_names_supported_versions(version: object) -> None:
    d = as_dict()
    d["format_version"] = version
    with pytest.raises(ManifestError, match=r"format version\(s\) 1"):
        Manifest.from_dict(d)


@pytest.mark.parametrize(
    "path",
    [
        "/etc/passwd",
        "../outside.npy",
        "v-1/../../outside.npy",
        "v-1/./x.npy",
        "v-1//x.npy",
        "C:/windows/x.npy",
        "c:x.npy",
        "v-1\\x.npy",
        "v-1/x\x00.npy",
        "",
        "a/" * 600,
        123,
        None,
    ],
)
def test_unsafe_paths_are_rejected(path: object) -> None:
    d = as_dict()
    d["shards"][0]["files"][0]["path"] = path
    with pytest.raises(ManifestError, match="path"):
        Manifest.from_dict(d)


def test_check_relative_path_accepts_normal_paths() -> None:
    assert check_relative_path("v-abc/000001.image.npy") == "v-abc/000001.image.npy"


def mutate(fn: Any) -> dict[str, Any]:
    d = as_dict()
    fn(d)
    return d


BAD_MANIFESTS = {
    "not an object": [],
    "wrong format": mutate(lambda d: d.update(format="zarr")),
    "bad dtype": mutate(lambda d: d["features"]["x"].update(dtype="|O")),
    "big endian": mutate(lambda d: d["features"]["x"].update(dtype=">f4")),
    "negative dim": mutate(lambda d: d["features"]["x"].update(shape=[-1])),
    "float dim": mutate(lambda d: d["features"]["x"].update(shape=[2.0])),
    "absurd record": mutate(lambda d: d["features"]["x"].update(shape=[2**30, 2**30])),
    "no features": mutate(lambda d: d.update(features={})),
    "bad feature name": mutate(
        lambda d: d["features"].update({"../x": {"dtype": "<f4", "shape": []}})
    ),
    "count mismatch": mutate(lambda d: d.update(num_records=9)),
    "bool count": mutate(lambda d: d["shards"][0].update(num_records=True)),
    "shard order": mutate(lambda d: d["shards"].reverse()),
    "bad checksum": mutate(lambda d: d["shards"][0]["files"][0].update(checksum="md5:abc")),
    "negative size": mutate(lambda d: d["shards"][0]["files"][0].update(size=-1)),
    "unknown feature": mutate(lambda d: d["shards"][0]["files"][0].update(feature="z")),
    "no files": mutate(lambda d: d["shards"][0].update(files=[])),
    "bad source name": mutate(lambda d: d["shards"][0].update(source="os.system")),
    "reused path": mutate(
        lambda d: d["shards"][1]["files"][0].update(path=d["shards"][0]["files"][0]["path"])
    ),
    "manifest as shard": mutate(lambda d: d["shards"][0]["files"][0].update(path="manifest.json")),
    "bad version id": mutate(lambda d: d.update(version_id="../x")),
    "metadata not object": mutate(lambda d: d.update(metadata=[1])),
    "info not object": mutate(lambda d: d["shards"][0]["files"][0].update(info=3)),
    "path twice in a shard": mutate(
        lambda d: d["shards"][0]["files"][1].update(path=d["shards"][0]["files"][0]["path"])
    ),
    "block index with a feature": mutate(
        lambda d: d["shards"][0].update(blocks={"path": "v-00ff00ff/000000.blocks", "size": 8,
                                                "checksum": CHECKSUM, "feature": "x"})
    ),
    "block index at a file's path": mutate(
        lambda d: d["shards"][0].update(blocks={"path": d["shards"][0]["files"][0]["path"],
                                                "size": 8, "checksum": CHECKSUM})
    ),
    "float size": mutate(lambda d: d["shards"][0]["files"][0].update(size=256.0)),
    "huge size": mutate(lambda d: d["shards"][0]["files"][0].update(size=2**70)),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_invalid_manifests_raise_manifest_error(case: str) -> None:
    with pytest.raises(ManifestError):
        Manifest.from_dict(copy.deepcopy(BAD_MANIFESTS[case]))


@pytest.mark.parametrize("text", [b"", b"{", b"\xff\xfe", b"[" * 100_000, b"null"])
def test_garbage_json_is_a_manifest_error(text: bytes) -> None:
    with pytest.raises(ManifestError):
        Manifest.from_json(text)


def test_supported_dtypes_are_all_numeric_little_endian() -> None:
    for s in SUPPORTED_DTYPES:
        dt = np.dtype(s)
        assert dt.kind in "biufc"
        assert dt.str == s


@pytest.mark.parametrize(
    ("field", "value"),
    [("feature name", "x\n"), ("checksum", CHECKSUM + "\n"), ("version", "00ff00ff00ff00ff\n")],
)
def test_trailing_newlines_are_not_accepted(field: str, value: str) -> None:
    d = as_dict()
    if field == "feature name":
        d["features"][value] = d["features"].pop("x")
    elif field == "checksum":
        d["shards"][0]["files"][0]["checksum"] = value
    else:
        d["version_id"] = value
    with pytest.raises(ManifestError):
        Manifest.from_dict(d)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused(constant: str) -> None:
    text = sample().to_json().replace('"n": 3', f'"n": {constant}')
    text = text.replace('"origin": "test"', f'"origin": {constant}')
    with pytest.raises(ManifestError, match="not valid"):
        Manifest.from_json(text)


@given(st.text(alphabet="ab.-_/\\:\x00 C", max_size=12))
def test_check_relative_path_accepts_only_normalised_relative_paths(path: str) -> None:
    """The one-regex fast path must never accept what the step-by-step checks refuse."""
    try:
        out = check_relative_path(path)
    except ManifestError:
        return
    assert out == path
    assert path and not path.startswith("/")
    assert not any(c in path for c in ("\x00", "\\", ":"))
    assert all(part not in ("", ".", "..") for part in path.split("/"))


@pytest.mark.parametrize("enabled", [True, False])
@pytest.mark.parametrize("text", [sample().to_json(), "{not json"])
def test_parsing_restores_the_garbage_collector_state(enabled: bool, text: str) -> None:
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        with contextlib.suppress(ManifestError):
            Manifest.from_json(text)
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()


@pytest.mark.parametrize("shape", [[0], [3, 0], [None, 0]])
def test_records_without_elements_are_refused(shape: list[int | None]) -> None:
    """Found by tests/test_hostile.py: a [0] shape used to pass and fail later in TensorFlow."""
    d = as_dict()
    d["features"]["x"]["shape"] = shape
    with pytest.raises(ManifestError, match="no element per record"):
        Manifest.from_dict(d)


def test_quick_and_full_parsing_build_equal_entries() -> None:
    """A plain shard entry parsed without messages equals the fully checked one, frozen alike."""
    import dataclasses

    from shardstore.format.manifest import _plain_shard

    d = as_dict()
    d["shards"][0]["blocks"] = {"path": "v-00ff00ff/000000.blocks", "size": 8, "checksum": CHECKSUM}
    for raw in d["shards"]:
        quick = _plain_shard(copy.deepcopy(raw))
        assert quick is not None
        assert quick == ShardEntry.from_json(copy.deepcopy(raw), where="shard")
        assert quick.file_for("x").info["header_bytes"] == 128
        with pytest.raises(dataclasses.FrozenInstanceError):
            quick.files[0].size = 1  # type: ignore[misc]
        with pytest.raises(dataclasses.FrozenInstanceError):
            quick.index = 7  # type: ignore[misc]
    assert _plain_shard({**d["shards"][0], "source": "os.system"}) is None  # full check


@pytest.mark.parametrize(
    "value", [2**64 + 1, -(2**70), 10**30, [1.5, 2**65], "\ud800 lone", {"k": 1e300}]
)
def test_metadata_reads_back_exactly_as_json_decodes_it(value: object) -> None:
    """Integers beyond 64 bits, lone surrogates, floats: the metadata reads back unchanged."""
    d = as_dict()
    d["metadata"] = {"value": value}
    text = json.dumps(d)
    m = Manifest.from_json(text.encode())
    assert m.metadata["value"] == json.loads(text)["metadata"]["value"]
    assert type(m.metadata["value"]) is type(value)

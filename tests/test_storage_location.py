"""Dataset locations: URLs are never taken for local paths; unknown schemes are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardstore.errors import InvalidInputError
from shardstore.storage.location import Location, is_url, parse_location


@pytest.mark.parametrize(
    ("text", "scheme", "bucket", "prefix"),
    [
        ("s3://bucket/datasets/train", "s3", "bucket", "datasets/train"),
        ("s3://bucket", "s3", "bucket", ""),
        ("s3://bucket/", "s3", "bucket", ""),
        ("gs://b/p/", "gs", "b", "p"),
        ("az://container/p", "az", "container", "p"),
        ("abfss://container/p", "az", "container", "p"),
        ("azure://container/p", "az", "container", "p"),
        ("https://example.com/data/x", "https", "example.com", "data/x"),
        ("memory://name/x", "memory", "name", "x"),
        ("S3://Bucket/X", "s3", "Bucket", "X"),
    ],
)
def test_remote_urls(text, scheme, bucket, prefix):
    loc = parse_location(text)
    assert (loc.scheme, loc.bucket, loc.prefix, loc.path) == (scheme, bucket, prefix, None)
    assert not loc.is_local
    assert is_url(text)


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("data/train", Path("data/train")),
        ("/abs/train", Path("/abs/train")),
        ("file:///abs/train", Path("/abs/train")),
        ("file://localhost/abs/x%20y", Path("/abs/x y")),
        ("s3:local", Path("s3:local")),  # no "//": a file name with a colon
    ],
)
def test_local_paths(text, path):
    loc = parse_location(text)
    assert loc.is_local and loc.path == path and loc.url == str(path)


def test_path_objects_are_local():
    assert parse_location(Path("s3:x")).path == Path("s3:x")


def test_the_url_round_trips():
    assert parse_location("s3://b/a/b").url == "s3://b/a/b"
    assert parse_location("s3://b/a/b").key_url("v-1/x.npy") == "s3://b/a/b/v-1/x.npy"
    assert parse_location("s3://b").key_url("manifest.json") == "s3://b/manifest.json"


def test_an_unknown_scheme_names_the_known_ones():
    with pytest.raises(
        InvalidInputError, match=r"unknown storage scheme 'ftp'.*s3://, gs://, az://"
    ):
        parse_location("ftp://host/data")


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("s3:///x", "no bucket"),
        ("s3://b/a/../c", "normalised"),
        ("s3://b/a//c", "normalised"),
        ("s3://b/x?versionId=3", "query strings"),
        ("file://otherhost/x", "this machine"),
        ("", "empty"),
    ],
)
def test_malformed_locations(text, what):
    with pytest.raises(InvalidInputError, match=what):
        parse_location(text)


def test_read_only_schemes():
    assert parse_location("https://h/x").read_only
    assert not parse_location("s3://h/x").read_only
    assert isinstance(parse_location(parse_location("s3://b/x")), Location)

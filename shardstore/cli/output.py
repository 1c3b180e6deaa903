"""What every command shares: exit statuses, sizes and counts in words, one-line summaries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shardstore.reading.reader import Dataset


PROG = "shardstore"

#: Exit status when ``verify`` finds a file that does not match its manifest.
EXIT_DAMAGED = 1
#: Exit status for any other error.
EXIT_ERROR = 2
#: Exit status when the reader of stdout went away (``| head``): 128 + SIGPIPE, what a
#: shell reports for a Unix tool stopped by the closed pipe.
EXIT_PIPE_CLOSED = 141


# -- formatting helpers -------------------------------------------------------------------
def _human_bytes(n: int) -> str:
    """Format a byte count with binary units.

    Parameters
    ----------
    n : int
        A number of bytes.

    Returns
    -------
    str
        ``"512 B"``, ``"12.3 MiB"``, ...
    """
    if n < 1024:
        return f"{n} B"
    value = float(n)
    units = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    for unit in units:
        value /= 1024
        if round(value, 1) < 1024 or unit == units[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def _plural(n: int, word: str) -> str:
    """``"1 shard"``, ``"2 shards"``.

    Parameters
    ----------
    n : int
        The count.
    word : str
        The singular noun.

    Returns
    -------
    str
        The count followed by the noun, pluralised with ``s`` unless ``n == 1``.
    """
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _format_shape(shape: Sequence[int | None]) -> str:
    """Format a per-record shape like a NumPy shape (``()``, ``(2,)``, ``(None, 3)``).

    Parameters
    ----------
    shape : sequence of int or None
        The per-record shape; ``None`` marks a variable dimension.

    Returns
    -------
    str
        The shape as a tuple literal.
    """
    return str(tuple(shape))


def _one_line(exc: BaseException) -> str:
    """The message of ``exc`` on a single line.

    Parameters
    ----------
    exc : BaseException
        The error to describe.

    Returns
    -------
    str
        ``str(exc)`` with line breaks folded into spaces, or the exception's
        type name when it has no message.
    """
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return text or type(exc).__name__


# -- subcommands --------------------------------------------------------------------------
#: Help of a dataset argument.
DATASET_HELP = "the dataset directory, or its URL in object storage (s3://bucket/prefix, gs://...)"


def _option_value(text: str) -> Any:
    """``"256"`` -> 256, ``"none"`` -> None, anything else stays a string."""
    if text.lower() in ("none", "null"):
        return None
    try:
        return int(text)
    except ValueError:
        return text


def _source_options(items: list[str]) -> dict[str, Any]:
    """``-o KEY=VALUE`` options, values typed by :func:`_option_value`."""
    from shardstore.errors import InvalidInputError

    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"option {item!r} is not KEY=VALUE")
        options[key] = _option_value(value)
    return options


def _summary(ds: Dataset) -> str:
    """``"N records, M shards, SIZE"``: how commands report the dataset they made."""
    return (
        f"{_plural(ds.num_records, 'record')}, {_plural(ds.num_shards, 'shard')}, "
        f"{_human_bytes(ds.nbytes)}"
    )

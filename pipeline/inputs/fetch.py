"""One file's bytes, by its path or URL: a local path, any Beam filesystem, or http(s).

What a unit of listed files reads, and what a table's image column read as a path reads
(`pipeline.inputs.record_shards`); it knows no layout, so every reader can use it.
"""
from __future__ import annotations

import http.client
import urllib.request

from pipeline import files
from pipeline.elements import ErrorRecord, ImageRecord, error_from_exception
from pipeline.inputs.retries import is_transient, retry_transient

HTTP_TIMEOUT_S = 60


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def read_bytes(uri: str) -> bytes:
    """A file's bytes (local or on a Beam filesystem), or an http(s) URL's body (Beam has no http filesystem)."""
    if is_http(uri):
        request = urllib.request.Request(uri, headers={"User-Agent": "featurize"})
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            return response.read()
    with files.open_read(uri) as handle:
        return handle.read()


def read_member(key: str, uri: str) -> ImageRecord | ErrorRecord:
    """One listed file. An http(s) URL that keeps failing transiently becomes an error row (its
    unit is marked for --resume to retry): one dead web server must not stop the run."""
    try:
        if is_http(uri):
            return ImageRecord(key, uri, retry_transient(lambda: read_bytes(uri), f"download of {uri}"))
        return ImageRecord(key, uri, read_bytes(uri))
    except (OSError, http.client.HTTPException) as exc:  # URLError and HTTPError are OSErrors too
        if is_transient(exc) and not is_http(uri):
            raise
        return error_from_exception(key, uri, "read", exc)

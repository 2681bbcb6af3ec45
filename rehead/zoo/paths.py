"""The files and folders a model spec names, made absolute: a run records its model by a spec that
must rebuild it from any working directory (``rehead predict RUN`` from elsewhere, an ensemble of it)."""
from __future__ import annotations

import os

# sources whose name is a path on this machine (hf: and glove: only when it exists: else a Hub name)
_PATH_SOURCES = ("file:", "timm:local-dir:", "hf:", "glove:")


def absolute_spec(spec: str) -> str:
    """``spec`` with the local path it names made absolute; anything else unchanged."""
    if os.path.exists(spec):  # a run directory (or a stray path: zoo.load says what is wrong with it)
        return os.path.abspath(spec)
    for prefix in _PATH_SOURCES:
        if spec.startswith(prefix):
            rest = spec[len(prefix):]
            path, sep, tail = _split(rest, prefix)
            if path and os.path.exists(path):
                return prefix + os.path.abspath(path) + sep + tail
    return spec


def spec_path(spec) -> str | None:
    """The local file or folder a model spec reads (a run directory, hf:DIR ...), or None."""
    if not isinstance(spec, str):
        return None
    if os.path.exists(spec):
        return spec
    for prefix in _PATH_SOURCES:
        if spec.startswith(prefix):
            path = _split(spec[len(prefix):], prefix)[0]
            return path if path and os.path.exists(path) else None
    return None


def _split(rest: str, prefix: str) -> tuple[str, str, str]:
    """(the path, its separator, what follows): file:PATH#ARCH, hf:DIR?options, else the whole name."""
    sep = "#" if prefix == "file:" else "?" if prefix == "hf:" else ""
    if sep and sep in rest:
        path, tail = rest.split(sep, 1)
        return path, sep, tail
    return rest, "", ""

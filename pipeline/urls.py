"""Volume URLs: Neuroglancer source strings → a format, a tensorstore kvstore, its metadata.

Users paste the same string into Neuroglancer and into `emsr`, so we accept its forms:
`zarr3://…`, `zarr://…` (Zarr v2), `precomputed://…` and the newer `…|zarr3:` pipe form,
each on top of `file://`, `gs://`, `s3://`, `http(s)://` or a local path. A bare path ending
in `.zarr` is Zarr v3. Credentials inside a URL never reach a message: every message goes
through `redact` (URLs) or `scrub` (tensorstore's own error text).

Every local path a volume URL names passes `confine`, which keeps it inside EMSR_DATA_ROOT when
that is set (a shared deployment that takes paths from its users).
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import unquote

import tensorstore as ts

from pipeline.errors import VolumeError

ACCEPTED_FORMS = (
    "zarr3://, zarr:// (Zarr v2), precomputed:// or n5:// followed by file://, gs://, s3://, "
    "http(s):// or a local path; a path ending in .zarr; or URL|zarr3:, URL|zarr2:, "
    "URL|neuroglancer-precomputed:, URL|n5:"
)
_PREFIX_FORMATS = MappingProxyType(
    {"zarr3": "zarr3", "zarr": "zarr", "zarr2": "zarr", "precomputed": "precomputed", "n5": "n5"}
)
_PIPE_FORMATS = MappingProxyType(
    {
        "zarr3:": "zarr3",
        "zarr2:": "zarr",
        "zarr:": "zarr3",
        "neuroglancer-precomputed:": "precomputed",
        "n5:": "n5",
    }
)
DATA_ROOT_ENV = "EMSR_DATA_ROOT"
REQUEST_RETRIES = MappingProxyType({"max_retries": 5, "initial_delay": "0.5s", "max_delay": "8s"})
"""Remote reads retry for ~15 s, not tensorstore's default of 32 attempts (~15 min): a host
that is down fails the run's checks promptly, and a block that meets a longer outage is
retried whole by the dispatcher."""
_ESCAPED_BYTES = re.compile(r"(?:\\x[0-9a-fA-F]{2})+")
_METADATA_KEYS = MappingProxyType(
    {
        "zarr3": ("zarr.json",),
        "zarr": (".zarray", ".zgroup"),
        "precomputed": ("info",),
        "n5": ("attributes.json",),
    }
)


@dataclass(frozen=True)
class VolumeSource:
    """Where a volume lives and in which format, and the metadata documents stored there.

    `format` is "zarr3", "zarr" (v2), "precomputed" or "n5" (read only); `kvstore` is the
    tensorstore spec of the volume's root (a path ending in "/"). `detect_zarr_version` is set
    where the URL does not pin the Zarr version (a bare `.zarr` path, `zarr://`, `|zarr:`):
    the other version's metadata, if that is all the store holds, wins. `secrets` are
    substrings never to show.
    """

    format: str
    kvstore: dict = field(hash=False, repr=False)
    detect_zarr_version: bool = False
    secrets: tuple[str, ...] = field(default=(), repr=False)

    def child(self, name: str) -> dict:
        """The kvstore spec of the directory `name` inside the root (e.g. array "0")."""
        return child_kvstore(self.kvstore, name)

    def stored_format(self) -> str | None:
        """The format whose metadata is present (the URL's own first), or None if nothing is."""
        candidates = [self.format]
        if self.detect_zarr_version:
            candidates.append("zarr" if self.format == "zarr3" else "zarr3")
        for fmt in candidates:
            if any(self.read_json(key)[0] is not None for key in _METADATA_KEYS[fmt]):
                return fmt
        return None

    def exists(self, key: str) -> bool:
        return self._store().read(key).result().state == "value"

    def read_json(self, key: str) -> tuple[dict | None, bytes]:
        """A JSON document (None when absent) and its generation, for conditional rewrites."""
        result = self._store().read(key).result()
        document = json.loads(result.value) if result.state == "value" else None
        return document, result.stamp.generation

    def write_json(self, key: str, document: dict, if_equal: bytes | None = None) -> bool:
        """Write a JSON document; False when `if_equal` no longer matches (someone else wrote)."""
        data = json.dumps(document, indent=2).encode()
        return bool(self._store().write(key, data, if_equal=if_equal).result().generation)

    def foreign_format(self) -> str | None:
        """A volume format other than this URL's whose metadata the location holds: data that
        creating (or replacing) this volume there would mix with or destroy."""
        own = {self.format, *(("zarr", "zarr3") if self.detect_zarr_version else ())}
        for fmt in _METADATA_KEYS.keys() - own:
            if any(self.read_json(key)[0] is not None for key in _METADATA_KEYS[fmt]):
                return fmt
        return None

    def delete_everything(self) -> None:
        self._store().delete_range(ts.KvStore.KeyRange()).result()

    def _store(self) -> ts.KvStore:
        return ts.KvStore.open(self.kvstore).result()


@contextmanager
def reported(action: str, url: str, source: VolumeSource, hint: str = "") -> Iterator[None]:
    """Turn tensorstore's errors (and malformed metadata) into one redacted VolumeError line."""
    try:
        yield
    except (ValueError, KeyError, TypeError, IndexError, NotImplementedError) as error:
        # `from None`: tensorstore's chained error embeds the spec, which may hold credentials;
        # NotImplementedError is its answer to writing a read-only store (http).
        reason = scrub(str(error), source.secrets)
        raise VolumeError(f"cannot {action} {redact(url)}: {reason}{hint}") from None


def _split(url: str) -> tuple[str, str, str]:
    """A volume URL's format prefix (`zarr3`…), its location and its pipe adapter (`zarr3:`…);
    the parts the URL lacks are empty."""
    text = url.strip()
    location, pipe, adapter = text.partition("|")
    if pipe:
        return "", location, adapter
    prefix, sep, rest = text.partition("://")
    if sep and prefix in _PREFIX_FORMATS:
        return prefix, rest, ""
    return "", text, ""


def parse_volume_url(url: str) -> VolumeSource:
    """Split a volume URL into format and kvstore; unknown forms fail with the accepted ones."""
    prefix, location, adapter = _split(url)
    if adapter:
        fmt, detect = _PIPE_FORMATS.get(adapter), adapter == "zarr:"
    elif prefix:
        fmt, detect = _PREFIX_FORMATS[prefix], prefix == "zarr"
    elif location.rstrip("/").endswith(".zarr"):
        fmt, detect = "zarr3", True
    else:
        fmt, detect = None, False
    if fmt is None or not location:
        raise _unknown(url)
    kvstore, secrets = _kvstore_spec(location, url)
    return VolumeSource(fmt, kvstore, detect, secrets)


def absolute_url(url: str) -> str:
    """`url` with a local path made absolute, in the form the user wrote; other URLs as they
    are. Workers (whatever their working directory) and the done ledger's configuration key
    then name the same volume as the command did."""
    prefix, location, adapter = _split(url)
    scheme, sep, path = location.partition("://")
    if sep and scheme != "file":
        return url.strip()
    absolute = os.path.abspath(os.path.expanduser(path if sep else location))
    return "".join(
        (f"{prefix}://" if prefix else "", "file://" if sep else "", absolute,
         f"|{adapter}" if adapter else "")
    )  # fmt: skip


def confine(path: str | os.PathLike[str]) -> str:
    """`path` made absolute; a VolumeError if EMSR_DATA_ROOT is set and it lies outside.

    The test is on the resolved path (after `..` and symlinks), so neither can lead out of the
    root; the path itself is returned unresolved, as the user wrote it, for messages and
    provenance. Unset or empty, the root restricts nothing.
    """
    absolute = os.path.abspath(os.path.expanduser(os.fspath(path)))
    root = os.environ.get(DATA_ROOT_ENV)
    if root:
        real_root, real = os.path.realpath(os.path.expanduser(root)), os.path.realpath(absolute)
        if os.path.commonpath((real_root, real)) != real_root:
            raise VolumeError(
                f"{path} escapes the data root {real_root} (it resolves to {real}): use a "
                f"path inside {DATA_ROOT_ENV}"
            )
    return absolute


@dataclass(frozen=True)
class Location:
    """Where data lives, comparable with other locations: the store (driver and bucket or
    host) and the path's parts, local paths resolved through `..` and symlinks."""

    store: tuple[str, ...]
    parts: tuple[str, ...]

    @classmethod
    def of_path(cls, path: str | os.PathLike[str]) -> Location:
        real = os.path.realpath(os.path.expanduser(os.fspath(path)))
        return cls(("file",), tuple(p for p in real.split(os.sep) if p))

    @classmethod
    def of_volume(cls, url: str) -> Location:
        kvstore = parse_volume_url(url).kvstore
        if kvstore["driver"] == "file":
            return cls.of_path(kvstore["path"])
        store = (kvstore["driver"], kvstore.get("bucket") or kvstore.get("base_url", ""))
        return cls(store, tuple(p for p in kvstore["path"].split("/") if p))

    def overlaps(self, other: Location) -> bool:
        """Whether one is the other, or lies inside it."""
        common = min(len(self.parts), len(other.parts))
        return self.store == other.store and self.parts[:common] == other.parts[:common]


def refuse_overlap(outputs: Mapping[str, Location], inputs: Mapping[str, Location]) -> None:
    """A VolumeError if a written location is, holds or lies inside one that is read.

    Keys name the locations as the user gave them. Writing over an input, even with
    --overwrite, would delete or change what the run is reading.
    """
    for output, written in outputs.items():
        for source, read in inputs.items():
            if written.overlaps(read):
                raise VolumeError(
                    f"{redact(output)} overlaps the input {redact(source)} (it is, holds or "
                    "lies inside it once links are resolved): choose an output outside every "
                    "input"
                )


def child_kvstore(kvstore: dict, name: str) -> dict:
    """The kvstore spec of the directory `name` inside `kvstore`."""
    return {**kvstore, "path": kvstore["path"] + name.strip("/") + "/"}


def redact(url: str) -> str:
    """`url` with any user:password (or key:secret) part replaced by `***`.

    Everything between the scheme and the *last* "@" goes, so a secret holding "/" or "@"
    cannot leak; a path with an "@" in it is over-redacted, which is the safe side.
    """
    at = url.rfind("@")
    scheme_end = url.rfind("://", 0, at)
    if at < 0 or scheme_end < 0:
        return url
    return f"{url[: scheme_end + 3]}***{url[at:]}"


def scrub(message: str, secrets: tuple[str, ...] = ()) -> str:
    """A tensorstore error as one short line: no spec dump (it may carry headers), no secrets."""
    line = message.splitlines()[0] if message else ""
    line = _unescaped(line.split(" [", 1)[0])
    for secret in secrets:
        line = line.replace(secret, "***")
    return redact(line)


def _unescaped(text: str) -> str:
    """tensorstore quotes paths byte by byte (`donn\\xc3\\xa9es`): show them as written, keeping
    only characters that cannot be printed escaped."""

    def decoded(match: re.Match[str]) -> str:
        raw = bytes.fromhex(match.group(0).replace("\\x", ""))
        return "".join(
            c if c.isprintable() else repr(c)[1:-1] for c in raw.decode("utf-8", "backslashreplace")
        )

    return _ESCAPED_BYTES.sub(decoded, text)


def _kvstore_spec(location: str, url: str) -> tuple[dict, tuple[str, ...]]:
    scheme, sep, rest = location.partition("://")
    if not sep or scheme == "file":  # absolute, so that workers elsewhere find the same files
        path = confine(rest if sep else location)
        return {"driver": "file", "path": _directory(path)}, ()
    if scheme == "gs":
        bucket, _, path = rest.partition("/")
        return _retrying("gcs", {"bucket": bucket, "path": _directory(path)}), ()
    userinfo, _, address = rest.rpartition("@")
    if scheme == "s3":
        if userinfo:
            raise VolumeError(
                f"credentials inside s3 URLs are not supported ({redact(url)}): set "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE and drop them from the URL"
            )
        bucket, _, path = rest.partition("/")
        return _retrying("s3", {"bucket": bucket, "path": _directory(path)}), ()
    if scheme in ("http", "https"):
        host, _, path = address.partition("/")
        spec = _retrying("http", {"base_url": f"{scheme}://{host}", "path": "/" + _directory(path)})
        if not userinfo:
            return spec, ()
        if "***" in userinfo:
            raise VolumeError(
                f"{redact(url)} carries redacted credentials (stored parameters never keep "
                "them): run `emsr` with the full URL, or serve the volume without credentials"
            )
        plain = unquote(userinfo)
        token = base64.b64encode(plain.encode()).decode()
        secrets = (userinfo, plain, userinfo.partition(":")[2], plain.partition(":")[2], token)
        spec["headers"] = [f"Authorization: Basic {token}"]
        return spec, tuple(secret for secret in secrets if secret)
    raise _unknown(url)


def _retrying(driver: str, spec: dict) -> dict:
    retries = {
        "gcs": "gcs_request_retries",
        "s3": "s3_request_retries",
        "http": "http_request_retries",
    }
    return {"driver": driver, **spec, "context": {retries[driver]: dict(REQUEST_RETRIES)}}


def _directory(path: str) -> str:
    return path.rstrip("/") + "/" if path.strip("/") else path


def _unknown(url: str) -> VolumeError:
    return VolumeError(f"unknown volume URL {redact(url)!r}: use {ACCEPTED_FORMS}")

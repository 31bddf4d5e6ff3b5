"""Where a run's files live: a local path or a storage URI, through one filesystem object.

A ``Location`` is a path inside a ``pyarrow.fs`` filesystem — the local disk for a plain
path, S3, GCS or any filesystem pyarrow resolves for a URI (``s3://bucket/runs/one``).
It is what Ray Train and Tune take as ``storage_path`` + ``storage_filesystem``, so a
run's checkpoints, its records and its reports all go through the same object.

A URI's query carries the filesystem's options, as pyarrow reads them: pyarrow's S3
filesystem ignores ``AWS_ENDPOINT_URL`` (apache/arrow#49643), so an S3-compatible server
is named in the URI, ``s3://bucket/run?endpoint_override=127.0.0.1:9000&scheme=http``.
Credentials come from each process's environment (``AWS_ACCESS_KEY_ID``, ...), never from
the URI: a ``Location`` is pickled as its URI and resolved again where it is unpickled.

Writes are atomic: a local file is written beside its target and renamed over it; an
object store's PUT replaces an object whole.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.fs as pafs


class StorageError(ValueError):
    """A location that cannot be used: the message names it and says what to do."""


def is_uri(text: str) -> bool:
    """Whether ``text`` is a storage URI (``scheme://...``) rather than a local path."""
    scheme = urlsplit(str(text)).scheme
    return "://" in str(text) and len(scheme) > 1


@dataclass(frozen=True, eq=False)
class Location:
    fs: pafs.FileSystem
    path: str
    """The path inside ``fs``: absolute for the local disk, ``bucket/key`` for S3."""
    scheme: str = ""
    """Empty for the local disk."""
    query: str = ""

    # ------------------------------------------------------------------ naming

    @property
    def is_local(self) -> bool:
        return not self.scheme

    @property
    def uri(self) -> str:
        """How to name this location again: a local path, or the URI with its options."""
        if self.is_local:
            return self.path
        return f"{self.scheme}://{self.path}" + (f"?{self.query}" if self.query else "")

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def local_path(self) -> Path | None:
        return Path(self.path) if self.is_local else None

    def join(self, *parts: str) -> Location:
        path = "/".join([self.path.rstrip("/"), *(p.strip("/") for p in parts if p)])
        return Location(self.fs, path, self.scheme, self.query)

    def __truediv__(self, part: str) -> Location:
        return self.join(part)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Location) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"Location({self.uri!r})"

    def __reduce__(self):
        return (resolve, (self.uri,))

    # ------------------------------------------------------------------ reading

    def _info(self) -> pafs.FileInfo:
        try:
            return self.fs.get_file_info(self.path)
        except OSError as err:
            raise StorageError(f"{self.uri}: cannot be reached ({err}); check the URI, its endpoint and the "
                               "credentials in the environment") from err

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def listdir(self) -> list[str]:
        """The names directly under this directory (none if it does not exist)."""
        if not self.is_dir():
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        return sorted(info.base_name for info in infos)

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    # ------------------------------------------------------------------ writing

    def mkdir(self) -> Location:
        self.fs.create_dir(self.path, recursive=True)
        return self

    def write_bytes(self, data: bytes) -> None:
        parent = self.path.rstrip("/").rsplit("/", 1)[0]
        if self.is_local:
            os.makedirs(parent, exist_ok=True)
            tmp = f"{self.path}.{uuid.uuid4().hex[:8]}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, self.path)
            return
        self.fs.create_dir(parent, recursive=True)
        with self.fs.open_output_stream(self.path) as f:
            f.write(data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def remove(self) -> None:
        """Remove this file or directory tree; nothing if it does not exist."""
        info = self._info()
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path)
        elif info.type != pafs.FileType.NotFound:
            self.fs.delete_file(self.path)

    def download_to(self, local_dir: Path) -> Path:
        """Copy the tree under this directory to ``local_dir``; return ``local_dir``."""
        local_dir.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(self.path, str(local_dir), source_filesystem=self.fs,
                        destination_filesystem=pafs.LocalFileSystem())
        return local_dir

    def upload_from(self, local_dir: Path) -> None:
        """Copy the files under ``local_dir`` into this directory (what W&B or another tool
        can only write to a local disk); symbolic links (W&B's ``latest-run``) are left out."""
        local_dir = Path(local_dir)
        for top, dirs, files in os.walk(local_dir):
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(top, d))]
            for name in files:
                source = Path(top) / name
                if not source.is_symlink():
                    self.join(*source.relative_to(local_dir).parts).write_bytes(source.read_bytes())


def resolve(where: str | os.PathLike | Location) -> Location:
    """The ``Location`` a path or URI names; a relative local path is made absolute here,
    on the process that names it (a Ray worker's working directory is not the driver's)."""
    if isinstance(where, Location):
        return where
    text = os.fspath(where)
    if not is_uri(text):
        return Location(pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(text)))
    parts = urlsplit(text)
    try:
        fs, path = pafs.FileSystem.from_uri(text)
    except (ValueError, OSError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise StorageError(f"{text}: not a storage location pyarrow can open ({err}); give a local path or a "
                           "URI such as s3://bucket/path (options in the query, e.g. "
                           "?endpoint_override=host:port&scheme=http)") from err
    if parts.scheme == "file":
        return Location(fs, path)
    return Location(fs, path.rstrip("/"), parts.scheme, parts.query)

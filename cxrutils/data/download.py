"""Fetch and unpack the NIH ChestX-ray14 box release into a data root (``cxrutils download nih``).

The box release is 12 archives, ``images_001.tar.gz`` ... ``images_012.tar.gz`` (about
42 GB), each unpacking into one flat ``images/`` folder, and four small files beside
them. ``download_nih`` brings the archives into the root and unpacks them into
``<root>/images/``, the layout ``cxrutils.data.layout`` reads:

- **Download.** Each archive goes to ``NAME.part``, resumed with an HTTP Range request
  after an interruption (a server that ignores Range and answers 200 restarts the file
  from its first byte; 416 means the part already holds the whole file) and retried
  with a growing wait after connection errors. Only a complete, checked file is renamed
  to ``NAME``.
- **Checks.** NIH publishes no checksums, so what can be checked is: the gzip stream
  read to its end (its CRC-32 and length trailer catch a truncated or damaged file; a
  damaged byte in the 10-byte gzip header's timestamp is the one thing they cannot
  catch), and every tar member (a PNG at ``images/NAME.png``: no absolute path, no
  ``..``, no link, no device, no name twice). Each checked archive's SHA-256, size and
  members go into ``download_manifest.json`` in the root, so ``verify_nih_download``
  can check them again later. A ``sha256sum``-format file of your own (``checksums``)
  is enforced when given.
- **Unpacking** writes each member under a hidden temporary name and renames it, so no
  half-written PNG ever carries a film's name. An archive counts as unpacked once all
  its members are written; one interrupted halfway is unpacked again. Archives are kept
  afterwards unless ``keep_archives=False``: fetching 42 GB again costs hours, a spare
  copy only disk space, and the kept archives are what ``verify_nih_download`` checks.
- **A second run** fetches nothing: an archive recorded in the manifest whose file has
  its recorded size and modification time is trusted (``verify_nih_download`` re-reads
  it in full), and one whose images are all present is not unpacked again.

The four metadata files have no direct links in NIH's script, so they are not fetched
unless ``urls`` names them: download them from the box folder (``BOX_FOLDER_URL``); the
report lists those still missing. One writer per root (``cxrutils.locks``).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import re
import shlex
import shutil
import ssl
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from cxrutils.data.layout import (
    BBOX_NAME,
    BOX_FOLDER_URL,
    DOWNLOAD_COMMAND,
    METADATA_NAMES,
    TEST_LIST_NAME,
    TRAIN_VAL_LIST_NAME,
)
from cxrutils.files import sha256_of, write_json
from cxrutils.locks import folder_lock
from cxrutils.paths import resolve
from cxrutils.progress import progress_bar

# The 12 image archives' links, copied exactly, in order, from NIH's own batch_download_zips.py
# (found in public repositories that ship it unchanged: Sim-ai/CheXclusion/batch_download_zips.py,
# taneishi/CheXNet_openvino/batch_download_zips.py, N-Nieto/GenderBias_CheXNet/batch_download_zips.py).
# The script saves link k as images_%02d.tar.gz; the box folder names the same archive images_%03d.tar.gz.
ARCHIVE_URLS: dict[str, str] = {
    f"images_{number:03d}.tar.gz": f"https://nihcc.box.com/shared/static/{key}.gz"
    for number, key in enumerate(
        (
            "vfk49d74nhbxq3nqjg0900w5nvkorp5c",
            "i28rlmbvmfjbl8p2n3ril0pptcmcu9d1",
            "f1t00wrtdk94satdfb9olcolqx20z2jp",
            "0aowwzs5lhjrceb3qp67ahp0rd1l1etg",
            "v5e3goj22zr6h8tzualxfsqlqaygfbsn",
            "asi7ikud9jwnkrnkj99jnpfkjdes7l6l",
            "jn1b4mw4n6lnh74ovmcjb8y48h8xj07n",
            "tvpxmn7qyrgl0w8wfh9kqfjskv6nmm1j",
            "upyy3ml7qdumlgk2rfcvlb9k6gvqq2pj",
            "l6nilvfa9cg3s28tqv1qc1olm3gnz54p",
            "hhq8fkdgvcari67vfhs7ppg2w6ni4jze",
            "ioqwiy20ihqwyr8pf4c24eazhh281pbu",
        ),
        start=1,
    )
}
# Beside the archives in the box folder; no direct link is published for them.
METADATA_FILE_NAMES: tuple[str, ...] = (METADATA_NAMES[0], BBOX_NAME, TRAIN_VAL_LIST_NAME, TEST_LIST_NAME)
MANIFEST_NAME = "download_manifest.json"
MANIFEST_FORMAT = 1
IMAGES_FOLDER = "images"
PART_SUFFIX = ".part"
USER_AGENT = "cxrutils (NIH ChestX-ray14 download)"

_ARCHIVE_NAME = re.compile(r"^images_(\d{2,3})\.tar\.gz$")
_MEMBER_FILM = re.compile(r"^[^/\\]+\.png$", re.IGNORECASE)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_BLOCK_BYTES = 2**20
_TEMPORARY_PREFIX, _TEMPORARY_SUFFIX = ".", ".unpacking"  # hidden: cxrutils.data.layout skips dot names
_MAX_RETRY_WAIT_SECONDS = 60.0
_RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}
_PROBLEMS_NAMED_PER_ARCHIVE = 10
# What a dropped or refused connection raises, on connecting or mid-body (not a local disk's OSError).
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, ssl.SSLError)
# What a damaged gzip stream or tar raises while it is read.
_DAMAGE_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error, tarfile.TarError)


class DownloadError(RuntimeError):
    """A download, check or unpacking failed; the message names the file and says what to do."""


@dataclass
class DownloadReport:
    """What one ``download_nih`` call did, archive by archive (names as in the box folder)."""

    root: Path
    images_dir: Path
    manifest: Path
    downloaded: list[str] = field(default_factory=list)  # fetched (whole or resumed) by this call
    already_downloaded: list[str] = field(default_factory=list)  # here already: checked now, or trusted (manifest)
    extracted: list[str] = field(default_factory=list)  # unpacked by this call
    already_extracted: list[str] = field(default_factory=list)  # unpacked before, every image still present
    archives_deleted: list[str] = field(default_factory=list)  # keep_archives=False: removed after unpacking
    not_present: list[str] = field(default_factory=list)  # download=False: neither the archive nor its images here
    metadata_downloaded: list[str] = field(default_factory=list)
    metadata_missing: list[str] = field(default_factory=list)  # fetch by hand from BOX_FOLDER_URL into the root
    checksums_unused: list[str] = field(default_factory=list)  # names in the checksum file that are no release file
    images: int = 0  # images of the unpacked archives, all present in images_dir

    def next_steps(self) -> list[str]:
        """What is left to do, one line each (empty when the release is complete)."""
        root = shlex.quote(str(self.root))
        steps = []
        if self.not_present:
            steps.append(f"{len(self.not_present)} archive(s) are not here: {', '.join(self.not_present)}; run "
                         f"`{DOWNLOAD_COMMAND.format(root=root)}` to fetch them, or put them in {self.root}")
        if self.metadata_missing:
            steps.append(f"download {', '.join(self.metadata_missing)} from {BOX_FOLDER_URL} into {self.root} "
                         "(NIH publishes no direct link to them)")
        return steps


@dataclass(frozen=True)
class _ArchiveFacts:
    sha256: str
    size: int
    members: dict[str, int]  # film name -> bytes


class _ArchiveRefused(Exception):
    """An archive failed its check: ``damaged`` (gzip or tar unreadable: fetch it again), else unsafe or mismatched."""

    def __init__(self, reason: str, damaged: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.damaged = damaged


class _TryAgain(Exception):
    """A network failure worth another attempt (resuming from what the part file holds)."""


def download_nih(
    root: str | os.PathLike[str],
    *,
    urls: Mapping[str, str] | None = None,
    archives: Sequence[str] | None = None,
    checksums: str | os.PathLike[str] | Mapping[str, str] | None = None,
    download: bool = True,
    extract: bool = True,
    keep_archives: bool = True,
    show_progress: bool = True,
    retries: int = 5,
    retry_wait_s: float = 2.0,
    timeout_s: float = 60.0,
) -> DownloadReport:
    """Fetch, check and unpack the box release's image archives into ``root`` (module docstring).

    ``urls`` maps file names to links (default ``ARCHIVE_URLS``; tests point it at a local
    server; a metadata file named there is fetched too). ``archives`` picks some of them
    (``images_001.tar.gz`` or ``images_01.tar.gz``). ``checksums`` is a ``sha256sum`` file
    or a name -> SHA-256 mapping, enforced for every file it names. ``download=False``
    only checks and unpacks archives already in the root (or its ``images/``), as NIH's
    own script or a browser left them. Raises ``DownloadError``; nothing is printed but
    the progress bars.
    """
    root = resolve(root)
    if not download and not root.is_dir():
        raise DownloadError(f"{root} does not exist: give the folder that holds the archives (--root)")
    urls = dict(ARCHIVE_URLS if urls is None else urls)
    names = _requested_archives(urls, archives)
    expected = _expected_checksums(checksums)
    images_dir = root / IMAGES_FOLDER
    report = DownloadReport(root=root, images_dir=images_dir, manifest=root / MANIFEST_NAME)
    known = set(ARCHIVE_URLS) | set(names) | set(METADATA_FILE_NAMES)
    report.checksums_unused = sorted(set(expected) - known)
    with folder_lock(root, purpose=f"NIH ChestX-ray14 download into {root}"):
        manifest = _read_manifest(root)
        manifest["requested"] = sorted(set(manifest["requested"]) | set(names))
        _remove_unfinished_members(images_dir)
        for name in names:
            _bring_archive(name, urls.get(name), root, manifest, report, expected_sha256=expected.get(name),
                           download=download, extract=extract, keep_archives=keep_archives,
                           show_progress=show_progress, retries=retries, retry_wait_s=retry_wait_s,
                           timeout_s=timeout_s)
        for name in METADATA_FILE_NAMES:
            _bring_metadata_file(name, urls.get(name) if download else None, root, manifest, report,
                                 expected_sha256=expected.get(name), retries=retries, retry_wait_s=retry_wait_s,
                                 timeout_s=timeout_s, show_progress=show_progress)
        _write_manifest(root, manifest)
    report.images = sum(len(entry["members"]) for entry in manifest["archives"].values() if entry.get("extracted"))
    return report


def verify_nih_download(
    root: str | os.PathLike[str],
    *,
    checksums: str | os.PathLike[str] | Mapping[str, str] | None = None,
    show_progress: bool = False,
) -> list[str]:
    """Check a root against its download manifest again, reading every kept archive in full; the problems found.

    Each kept archive's SHA-256 and size, each unpacked image's presence and size, the
    metadata files' presence, and (given) a ``sha256sum`` file's checksums. An empty
    list means everything the manifest records is still as it was.
    """
    root = resolve(root)
    command = DOWNLOAD_COMMAND.format(root=shlex.quote(str(root)))
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        return [f"{manifest_path} does not exist: nothing was downloaded or unpacked here by cxrutils; run "
                f"`{command}` (or add --extract-only for archives already here)"]
    try:
        manifest = _read_manifest(root)
    except DownloadError as error:
        return [str(error)]
    expected = _expected_checksums(checksums)
    images_dir = root / IMAGES_FOLDER
    problems: list[str] = []
    for name in manifest["requested"]:
        if name not in manifest["archives"]:
            problems.append(f"{name} was never downloaded and checked: run `{command}`")
    for name, entry in sorted(manifest["archives"].items()):
        problems += _archive_problems(name, entry, root, images_dir, expected.get(name), command, show_progress)
    for name in METADATA_FILE_NAMES:
        path = root / name
        if not path.is_file():
            problems.append(f"{name} is not in {root}: download it from {BOX_FOLDER_URL}")
            continue
        recorded = manifest["files"].get(name, {}).get("sha256")
        wanted = expected.get(name) or recorded
        if wanted and sha256_of(path) != wanted:
            source = "the checksum file" if expected.get(name) else "the manifest (recorded when it was downloaded)"
            problems.append(f"{path} does not match the SHA-256 in {source}: download it again from {BOX_FOLDER_URL}")
    return problems


def read_checksum_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """``sha256sum`` output (``HEX  NAME`` or ``HEX *NAME`` per line) as file name -> lowercase hex digest.

    Names keep only their last part (``./images_001.tar.gz`` names ``images_001.tar.gz``),
    and NIH's script's ``images_01.tar.gz`` means the box's ``images_001.tar.gz``.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DownloadError(f"cannot read the checksum file {path}: {error}") from None
    checksums: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = re.fullmatch(r"\s*([0-9a-fA-F]{64}) [ *](.+?)\s*", line)
        if match is None:
            raise DownloadError(f"{path} line {number} is not `SHA256  NAME` (sha256sum's format): {line[:80]!r}; "
                                "write it with `sha256sum FILE ... > checksums.txt`")
        checksums[_canonical_name(PurePosixPath(match.group(2).replace("\\", "/")).name)] = match.group(1).lower()
    return checksums


# ---------------------------------------------------------------------------------------------- one archive


def _bring_archive(
    name: str,
    url: str | None,
    root: Path,
    manifest: dict[str, Any],
    report: DownloadReport,
    *,
    expected_sha256: str | None,
    download: bool,
    extract: bool,
    keep_archives: bool,
    show_progress: bool,
    retries: int,
    retry_wait_s: float,
    timeout_s: float,
) -> None:
    """One archive: present and checked (fetched if need be), then unpacked; the manifest records each step."""
    entry = manifest["archives"].get(name)
    if entry is not None and expected_sha256 and entry["sha256"] != expected_sha256:
        raise DownloadError(f"{name} was recorded with SHA-256 {entry['sha256']} in {root / MANIFEST_NAME}, but the "
                            f"checksum file says {expected_sha256}: if the checksum file is right, delete {name} "
                            f"and its entry in the manifest (or the whole manifest) and run again")
    archive = _find_archive(root, name)
    images_dir = root / IMAGES_FOLDER
    if entry is not None and entry.get("extracted") and not _absent_members(images_dir, entry["members"]):
        report.already_extracted.append(name)
        if archive is not None and not keep_archives and _unchanged(archive, entry):
            archive.unlink()
            entry["archive_deleted"] = True
            _write_manifest(root, manifest)
            report.archives_deleted.append(name)
        return
    if archive is not None and entry is not None and _unchanged(archive, entry):
        report.already_downloaded.append(name)
    elif archive is not None:
        entry = _record_archive(manifest, name, root, archive,
                                _check_found_archive(archive, root, expected_sha256, show_progress), url)
        _write_manifest(root, manifest)
        report.already_downloaded.append(name)
    elif download and url:
        archive, facts = _fetch_archive(name, url, root, expected_sha256, show_progress=show_progress,
                                        retries=retries, retry_wait_s=retry_wait_s, timeout_s=timeout_s)
        entry = _record_archive(manifest, name, root, archive, facts, url)
        _write_manifest(root, manifest)
        report.downloaded.append(name)
    else:
        if download:
            raise DownloadError(f"no link for {name}: pass its URL, or download it from {BOX_FOLDER_URL} into {root} "
                                "and run again with --extract-only")
        report.not_present.append(name)
        return
    if not extract:
        return
    entry["extracted"] = False  # until every member is written: a run stopped halfway unpacks the archive again
    _write_manifest(root, manifest)
    _unpack_archive(archive, entry, images_dir, show_progress)
    entry["extracted"] = True
    entry["extracted_at"] = _now()
    report.extracted.append(name)
    if not keep_archives:
        archive.unlink()
        entry["archive_deleted"] = True
        report.archives_deleted.append(name)
    _write_manifest(root, manifest)


def _fetch_archive(
    name: str,
    url: str,
    root: Path,
    expected_sha256: str | None,
    *,
    show_progress: bool,
    retries: int,
    retry_wait_s: float,
    timeout_s: float,
) -> tuple[Path, _ArchiveFacts]:
    """Download ``name`` into ``NAME.part``, check it, and only then rename it to ``NAME``."""
    part = root / (name + PART_SUFFIX)
    _fetch_to_part(url, part, name, show_progress=show_progress, retries=retries, retry_wait_s=retry_wait_s,
                   timeout_s=timeout_s)
    try:
        facts = _check_archive(part, name, expected_sha256, show_progress)
    except _ArchiveRefused as refused:
        if refused.damaged:
            part.unlink()  # resuming would keep the damaged bytes: the next run starts this file afresh
            raise DownloadError(f"{name} downloaded from {url} is damaged ({refused.reason}); the download was "
                                "deleted and nothing of it was unpacked: run the command again to fetch it afresh "
                                "(if it fails the same way, the file on the server is damaged)") from None
        raise DownloadError(f"{name} downloaded from {url} was refused: {refused.reason}; nothing of it was unpacked. "
                            f"It stays in {part} for inspection: delete it before running again") from None
    archive = root / name
    os.replace(part, archive)
    return archive, facts


def _check_found_archive(archive: Path, root: Path, expected_sha256: str | None, show_progress: bool) -> _ArchiveFacts:
    """Check an archive found in the root (put there by the user): refused, it is left as it is."""
    try:
        return _check_archive(archive, archive.name, expected_sha256, show_progress)
    except _ArchiveRefused as refused:
        what = "is damaged" if refused.damaged else "was refused"
        raise DownloadError(f"{archive} {what} ({refused.reason}); nothing of it was unpacked: delete it and run "
                            f"`{DOWNLOAD_COMMAND.format(root=shlex.quote(str(root)))}` to fetch it "
                            "again") from None


def _record_archive(
    manifest: dict[str, Any], name: str, root: Path, archive: Path, facts: _ArchiveFacts, url: str | None
) -> dict[str, Any]:
    status = archive.stat()
    entry = {
        "file": archive.relative_to(root).as_posix(),  # relative: the root may move
        "url": url,
        "sha256": facts.sha256,
        "bytes": facts.size,
        # An unchanged size and modification time let a later run trust the file without reading 4 GB again.
        "mtime_ns": status.st_mtime_ns,
        "checked_at": _now(),
        "extracted": False,
        "extracted_at": None,
        "archive_deleted": False,
        "members": dict(sorted(facts.members.items())),
    }
    manifest["archives"][name] = entry
    return entry


# ------------------------------------------------------------------------------------------ HTTP transfer


def _fetch_to_part(
    url: str, part: Path, label: str, *, show_progress: bool, retries: int, retry_wait_s: float, timeout_s: float
) -> None:
    """Bring ``part`` to the server's whole file: resumed with Range, retried with a growing wait when cut off.

    The count of failures resets whenever an attempt brought new bytes, so a long
    download over a flaky line finishes; ``retries`` failures in a row without progress
    stop it, and the bytes so far stay in ``part`` for the next run.
    """
    failures_in_a_row = 0
    bar = progress_bar(total=None, unit="B", unit_scale=True, unit_divisor=1024, desc=f"downloading {label}",
                       disable=not show_progress, done=f"downloaded {label} ({{n:,}} bytes)")
    try:
        while True:
            before = _size_or_zero(part)
            try:
                if _fetch_once(url, part, label, timeout_s, bar):
                    return
                reason = "the connection closed before the end of the file"
            except _TryAgain as again:
                reason = str(again)
            if _size_or_zero(part) > before:
                failures_in_a_row = 0
            failures_in_a_row += 1
            if failures_in_a_row > retries:
                raise DownloadError(
                    f"downloading {label} from {url} failed {failures_in_a_row} time(s) in a row ({reason}); the "
                    f"{_size_or_zero(part):,} bytes received so far are kept in {part}: run the command again to "
                    "resume")
            time.sleep(min(retry_wait_s * 2 ** (failures_in_a_row - 1), _MAX_RETRY_WAIT_SECONDS))
    finally:
        bar.close()


def _fetch_once(url: str, part: Path, label: str, timeout_s: float, bar: Any) -> bool:
    """One request from where ``part`` ends; True once ``part`` holds the whole file."""
    offset = _size_or_zero(part)
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as error:
        try:
            return _answer_to_error(error, url, part, offset, label)
        finally:
            if error.fp is not None:  # the error's body is not read: free its connection
                error.close()
    except _NETWORK_ERRORS as error:
        raise _TryAgain(_network_reason(error)) from None
    with response:
        if response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != offset:  # not the bytes asked for: start the file again rather than splice them in
                part.unlink(missing_ok=True)
                raise _TryAgain(f"asked for bytes from {offset:,}, the server sent them from {start}")
        elif response.status == 200:
            offset = 0  # the whole file, whatever was asked: a server that ignores Range restarts it cleanly
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        else:
            raise DownloadError(f"{url} answered HTTP {response.status} for {label}, neither 200 nor 206: download "
                                f"it by hand from {BOX_FOLDER_URL} into {part.parent} and run again with "
                                "--extract-only")
        if total is not None:
            _require_free_space(part.parent, total - offset, f"the rest of {label}")
            bar.total = total
        bar.n = offset
        bar.refresh()
        _receive(response, part, offset, bar)
    # A server that gives no length ends the file where the body ends; the archive's check catches a cut there.
    return total is None or _size_or_zero(part) >= total


def _answer_to_error(error: urllib.error.HTTPError, url: str, part: Path, offset: int, label: str) -> bool:
    """What an HTTP error status means here: True where ``part`` is whole (416), else a retry or a DownloadError."""
    if error.code == 416:  # Range Not Satisfiable: nothing lies past what is here
        total = _range_total(error.headers.get("Content-Range"))
        if offset and (total is None or total == offset):
            return True  # the whole file is here; its check decides whether it is right
        part.unlink(missing_ok=True)
        raise _TryAgain(f"the server's file has {total} bytes, fewer than the {offset:,} here: starting again")
    if error.code in _RETRY_STATUSES:
        raise _TryAgain(f"HTTP {error.code} {error.reason}")
    raise DownloadError(f"{url} answered HTTP {error.code} {error.reason} for {label}: the link may have "
                        f"moved; download {label} by hand from {BOX_FOLDER_URL} into {part.parent} and run again "
                        "with --extract-only")


def _receive(response: BinaryIO, part: Path, offset: int, bar: Any) -> None:
    """Append the response's body to ``part`` from ``offset`` (everything after it is dropped first)."""
    try:
        with open(part, "r+b" if offset else "wb") as out:
            out.seek(offset)
            out.truncate()
            while True:
                try:
                    block = response.read(_BLOCK_BYTES)
                except _NETWORK_ERRORS as error:
                    raise _TryAgain(_network_reason(error)) from None
                if not block:
                    return
                out.write(block)
                bar.update(len(block))
    except OSError as error:  # the local disk: network errors became _TryAgain above
        raise DownloadError(f"cannot write {part}: {error}; what was received so far is kept: free space (or fix "
                            "the folder's permissions) and run the command again to resume") from None


def _network_reason(error: BaseException) -> str:
    reason = getattr(error, "reason", None)
    return f"{type(error).__name__}: {reason if reason is not None else error}"


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """``bytes 100-199/1000`` -> (100, 1000); the total is None where the server writes ``*``."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", header or "")
    if match is None:
        return None, None
    return int(match.group(1)), (None if match.group(2) == "*" else int(match.group(2)))


def _range_total(header: str | None) -> int | None:
    """A 416 answer's ``bytes */1000`` -> 1000 (None when absent)."""
    match = re.fullmatch(r"\s*bytes\s+\*/(\d+)\s*", header or "")
    return int(match.group(1)) if match else None


def _size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _require_free_space(folder: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DownloadError(f"{what} needs {needed / 1e9:,.1f} GB but {folder} has {free / 1e9:,.1f} GB free: free "
                            "space (or choose a root on a bigger disk) and run again; nothing finished is lost")


# ------------------------------------------------------------------------------------ checking an archive


class _ReadCounter:
    """A file read through: each block hashed (optional) and counted onto a progress bar."""

    def __init__(self, handle: BinaryIO, on_read: Callable[[int], Any], digest: Any = None) -> None:
        self.handle = handle
        self.on_read = on_read
        self.digest = digest
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        block = self.handle.read(size)
        if self.digest is not None:
            self.digest.update(block)
        self.size += len(block)
        self.on_read(len(block))
        return block


def _check_archive(path: Path, label: str, expected_sha256: str | None, show_progress: bool) -> _ArchiveFacts:
    """Read the archive once, to its end: SHA-256, gzip CRC and length, every member's safety (module docstring)."""
    with open(path, "rb") as handle, progress_bar(
        total=path.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024, desc=f"checking {label}",
        disable=not show_progress, done=f"checked {label}",
    ) as bar:
        counter = _ReadCounter(handle, bar.update, hashlib.sha256())
        try:
            with gzip.GzipFile(fileobj=counter, mode="rb") as unzipped:  # type: ignore[arg-type]
                try:
                    members = _safe_members(unzipped)
                except _ArchiveRefused as refused:
                    # A damaged stream can decode into nonsense members: read on, so that damage is called damage.
                    raise _damage_after(unzipped) or refused from None
                _drain(unzipped)  # to the gzip trailer: its CRC-32 and length are checked there
            _drain(counter)
        except _DAMAGE_ERRORS as error:
            raise _ArchiveRefused(_damage_reason(error), damaged=True) from None
        except OSError as error:
            raise DownloadError(f"cannot read {path}: {error}") from None
    sha256 = counter.digest.hexdigest()
    if not members:
        raise _ArchiveRefused("it holds no images", damaged=False)
    if expected_sha256 and sha256 != expected_sha256:
        raise _ArchiveRefused(f"its SHA-256 {sha256} differs from the checksum file's {expected_sha256}; if the "
                              "checksum file is right, the file is damaged", damaged=False)
    return _ArchiveFacts(sha256=sha256, size=counter.size, members=members)


def _safe_members(unzipped: BinaryIO) -> dict[str, int]:
    """Film name -> bytes of every member of an unzipped tar stream, each one checked by ``_film_of``."""
    members: dict[str, int] = {}
    with tarfile.open(fileobj=unzipped, mode="r|") as tar:
        for member in tar:
            film = _film_of(member)
            if film is None:
                continue
            if film in members:
                raise _ArchiveRefused(f"member {member.name!r} appears twice", damaged=False)
            source = tar.extractfile(member)
            if source is None or source.read(len(_PNG_SIGNATURE)) != _PNG_SIGNATURE:
                raise _ArchiveRefused(f"member {member.name!r} is not a PNG", damaged=False)
            members[film] = member.size
    return members


def _film_of(member: tarfile.TarInfo) -> str | None:
    """The film name a member unpacks to; None for the ``images/`` folder entry itself; refused otherwise."""
    name = member.name
    path = PurePosixPath(name)
    if name.startswith("/") or "\\" in name or ".." in path.parts:
        raise _ArchiveRefused(f"member {name!r} points outside the images folder", damaged=False)
    parts = [part for part in path.parts if part != "."]
    if member.isdir():
        if parts in ([], [IMAGES_FOLDER]):
            return None
        raise _ArchiveRefused(f"member {name!r} is a folder other than {IMAGES_FOLDER}/", damaged=False)
    if not member.isreg():
        kind = ("a symbolic link" if member.issym() else "a hard link" if member.islnk()
                else "a device" if member.ischr() or member.isblk() else "a FIFO" if member.isfifo()
                else "not a regular file")
        raise _ArchiveRefused(f"member {name!r} is {kind}", damaged=False)
    if len(parts) != 2 or parts[0] != IMAGES_FOLDER or not _MEMBER_FILM.match(parts[1]) or parts[1].startswith("."):
        raise _ArchiveRefused(f"member {name!r} is not a PNG directly in {IMAGES_FOLDER}/", damaged=False)
    return parts[1]


def _damage_after(unzipped: Any) -> _ArchiveRefused | None:
    """The damage the rest of a gzip stream shows when read to its end (its CRC-32 check), or None."""
    try:
        _drain(unzipped)
    except _DAMAGE_ERRORS as error:
        return _ArchiveRefused(_damage_reason(error), damaged=True)
    return None


def _drain(stream: Any) -> None:
    while stream.read(_BLOCK_BYTES):
        pass


def _damage_reason(error: BaseException) -> str:
    if isinstance(error, EOFError):
        return "it ends early: truncated"
    return f"{type(error).__name__}: {error}"


# ---------------------------------------------------------------------------------------------- unpacking


def _unpack_archive(archive: Path, entry: dict[str, Any], images_dir: Path, show_progress: bool) -> None:
    """Write every member of a checked archive into ``images_dir``, each under a hidden name until complete."""
    members: dict[str, int] = entry["members"]
    images_dir.mkdir(parents=True, exist_ok=True)
    _require_free_space(images_dir, sum(size for film, size in members.items()
                                        if not (images_dir / film).is_file()), f"unpacking {archive.name}")
    written: set[str] = set()
    with open(archive, "rb") as handle, progress_bar(
        total=archive.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024, desc=f"unpacking {archive.name}",
        disable=not show_progress, done=f"unpacked {archive.name}",
    ) as bar:
        counter = _ReadCounter(handle, bar.update)
        try:
            with gzip.GzipFile(fileobj=counter, mode="rb") as unzipped:  # type: ignore[arg-type]
                with tarfile.open(fileobj=unzipped, mode="r|") as tar:
                    for member in tar:
                        film = _film_of(member)  # checked again: the file may have changed since its check
                        if film is None:
                            continue
                        if members.get(film) != member.size or film in written:
                            raise _ArchiveRefused(f"member {member.name!r} is not the one its check recorded",
                                                  damaged=False)
                        _write_member(tar, member, images_dir / film)
                        written.add(film)
                _drain(unzipped)
        except (_ArchiveRefused, *_DAMAGE_ERRORS) as error:
            reason = error.reason if isinstance(error, _ArchiveRefused) else _damage_reason(error)
            raise DownloadError(f"{archive} changed since it was checked ({reason}); the images unpacked from it so "
                                "far stay, but it counts as not unpacked: delete it and run the command again to "
                                "fetch it afresh") from None
        except OSError as error:
            raise DownloadError(f"unpacking {archive} into {images_dir} failed: {error}; free space (or fix the "
                                "folder's permissions) and run the command again: the archive is unpacked "
                                "afresh") from None
    if written != set(members):
        missing = sorted(set(members) - written)
        raise DownloadError(f"{archive} lacks {len(missing)} of the members its check recorded (e.g. {missing[0]}): "
                            "delete it and run the command again to fetch it afresh")


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    source = tar.extractfile(member)
    assert source is not None  # a regular file (_film_of), which always has data
    temporary = target.with_name(f"{_TEMPORARY_PREFIX}{target.name}{_TEMPORARY_SUFFIX}")
    try:
        with open(temporary, "wb") as out:
            shutil.copyfileobj(source, out, _BLOCK_BYTES)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _remove_unfinished_members(images_dir: Path) -> None:
    """Temporary files a killed unpacking left behind (this process holds the root's lock: none is in use)."""
    if not images_dir.is_dir():
        return
    with os.scandir(images_dir) as entries:
        for entry in entries:
            if entry.name.startswith(_TEMPORARY_PREFIX) and entry.name.endswith(_TEMPORARY_SUFFIX):
                Path(entry.path).unlink(missing_ok=True)


def _absent_members(images_dir: Path, members: Iterable[str]) -> list[str]:
    """Members with no file of their name in ``images_dir`` (one folder listing, no stat per file)."""
    try:
        with os.scandir(images_dir) as entries:
            present = {entry.name for entry in entries}
    except FileNotFoundError:
        present = set()
    return [film for film in members if film not in present]


# ------------------------------------------------------------------------------------------ metadata files


def _bring_metadata_file(
    name: str,
    url: str | None,
    root: Path,
    manifest: dict[str, Any],
    report: DownloadReport,
    *,
    expected_sha256: str | None,
    retries: int,
    retry_wait_s: float,
    timeout_s: float,
    show_progress: bool,
) -> None:
    """A CSV or list: checked against the checksum file when here, fetched when a link is given, else reported."""
    path = root / name
    if not path.is_file() and url:
        part = root / (name + PART_SUFFIX)
        _fetch_to_part(url, part, name, show_progress=show_progress, retries=retries, retry_wait_s=retry_wait_s,
                       timeout_s=timeout_s)
        sha256 = sha256_of(part)
        if expected_sha256 and sha256 != expected_sha256:
            raise DownloadError(f"{name} downloaded from {url} has SHA-256 {sha256}, the checksum file says "
                                f"{expected_sha256}: it stays in {part}; delete it and run again, or fix the "
                                "checksum file")
        os.replace(part, path)
        manifest["files"][name] = {"url": url, "sha256": sha256, "bytes": path.stat().st_size, "downloaded_at": _now()}
        report.metadata_downloaded.append(name)
        return
    if not path.is_file():
        report.metadata_missing.append(name)
        return
    if expected_sha256 and sha256_of(path) != expected_sha256:
        raise DownloadError(f"{path} does not match the checksum file's SHA-256 {expected_sha256}: download it again "
                            f"from {BOX_FOLDER_URL}, or fix the checksum file")


# ------------------------------------------------------------------------------------------ verification


def _archive_problems(
    name: str,
    entry: dict[str, Any],
    root: Path,
    images_dir: Path,
    expected_sha256: str | None,
    command: str,
    show_progress: bool,
) -> list[str]:
    problems = []
    if expected_sha256 and entry["sha256"] != expected_sha256:
        problems.append(f"{name} was downloaded with SHA-256 {entry['sha256']}, the checksum file says "
                        f"{expected_sha256}: delete {name} and its images and run `{command}` again")
    archive = _find_archive(root, name)
    if archive is not None:
        size = archive.stat().st_size
        sha256 = _hash_with_progress(archive, show_progress)
        if size != entry["bytes"] or sha256 != entry["sha256"]:
            problems.append(f"{archive} changed since it was checked (SHA-256 {sha256}, {size:,} bytes; recorded "
                            f"{entry['sha256']}, {entry['bytes']:,} bytes): delete it and run `{command}` to fetch it "
                            "again")
    elif not entry.get("extracted"):
        problems.append(f"{name} is neither here nor unpacked: run `{command}`")
    if not entry.get("extracted"):
        if archive is not None:
            problems.append(f"{name} is downloaded but not unpacked: run `{command} --extract-only`")
        return problems
    absent, wrong_size = [], []
    for film, size in entry["members"].items():
        try:
            if (images_dir / film).stat().st_size != size:
                wrong_size.append(film)
        except FileNotFoundError:
            absent.append(film)
    fix = f"run `{command}` to unpack it again" + ("" if archive is not None else " (it fetches the archive again)")
    for films, what in ((absent, "missing"), (wrong_size, "of another size than in the archive")):
        if films:
            named = ", ".join(films[:_PROBLEMS_NAMED_PER_ARCHIVE])
            unnamed = len(films) - _PROBLEMS_NAMED_PER_ARCHIVE
            more = f" and {unnamed:,} more" if unnamed > 0 else ""
            problems.append(f"{len(films):,} image(s) from {name} are {what} in {images_dir}: {named}{more}; {fix}")
    return problems


def _hash_with_progress(path: Path, show_progress: bool) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle, progress_bar(
        total=path.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024, desc=f"verifying {path.name}",
        disable=not show_progress, done=f"verified {path.name}",
    ) as bar:
        for block in iter(lambda: handle.read(_BLOCK_BYTES), b""):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------ names, manifest


def _canonical_name(name: str) -> str:
    """NIH's script's ``images_01.tar.gz`` -> the box's ``images_001.tar.gz``; any other name unchanged."""
    match = _ARCHIVE_NAME.match(name)
    return f"images_{int(match.group(1)):03d}.tar.gz" if match else name


def _requested_archives(urls: Mapping[str, str], archives: Sequence[str] | None) -> list[str]:
    available = sorted(_canonical_name(name) for name in urls if _ARCHIVE_NAME.match(name))
    if archives is None:
        return available
    requested = [_canonical_name(name) for name in archives]
    unknown = sorted(set(requested) - set(available) - set(ARCHIVE_URLS))
    if unknown:
        raise DownloadError(f"unknown archive name(s) {unknown}: the box release has {min(ARCHIVE_URLS)} ... "
                            f"{max(ARCHIVE_URLS)}")
    return sorted(set(requested))


def _expected_checksums(checksums: str | os.PathLike[str] | Mapping[str, str] | None) -> dict[str, str]:
    if checksums is None:
        return {}
    if isinstance(checksums, Mapping):
        return {_canonical_name(name): digest.lower() for name, digest in checksums.items()}
    return read_checksum_file(checksums)


def _find_archive(root: Path, name: str) -> Path | None:
    """Where an archive lies: the root or its images/ folder, under the box's name or NIH's script's."""
    number = int(_ARCHIVE_NAME.match(name).group(1)) if _ARCHIVE_NAME.match(name) else None
    spellings = [name] + ([f"images_{number:02d}.tar.gz"] if number is not None and number < 100 else [])
    for folder in (root, root / IMAGES_FOLDER):
        for spelling in spellings:
            if (folder / spelling).is_file():
                return folder / spelling
    return None


def _unchanged(archive: Path, entry: dict[str, Any]) -> bool:
    status = archive.stat()
    return status.st_size == entry["bytes"] and status.st_mtime_ns == entry["mtime_ns"]


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST_NAME
    if not path.is_file():
        return {"format": MANIFEST_FORMAT, "release": "NIH ChestX-ray14, box", "requested": [], "archives": {},
                "files": {}}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DownloadError(f"{path} is not readable JSON ({error}): delete it and run again; the archives here are "
                            "then checked afresh, not trusted") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise DownloadError(f"{path} is not a download manifest of format {MANIFEST_FORMAT}: delete it and run again; "
                            "the archives here are then checked afresh")
    for key, empty in (("requested", []), ("archives", {}), ("files", {})):
        manifest.setdefault(key, empty)
    return manifest


def _write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    manifest["written_at"] = _now()
    write_json(root / MANIFEST_NAME, manifest, durable=True)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")

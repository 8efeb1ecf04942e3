"""cxrutils.data.download against a local HTTP server that serves small real tar.gz archives of tiny PNGs.

The server answers Range requests (206, or 416 past the end), and can be told to cut a
response short once or to ignore Range (answering 200); its log lists every GET and its
Range header, so a test can say what was fetched and from where.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import socket
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from box_release import box_archive, noise_png

import cxrutils.data.download as download_module
from cxrutils.data.download import (
    ARCHIVE_URLS,
    BOX_FOLDER_URL,
    MANIFEST_NAME,
    METADATA_FILE_NAMES,
    DownloadError,
    download_nih,
    read_checksum_file,
    verify_nih_download,
)
from cxrutils.data.layout import index_images, locate_files

FILMS = {
    "images_001.tar.gz": ["00000001_000.png", "00000001_001.png", "00000002_000.png"],
    "images_002.tar.gz": ["00000003_000.png", "00000013_005.png"],
}
ALL_FILMS = sorted(film for films in FILMS.values() for film in films)


# Noise does not compress, so an archive is some kilobytes and can be cut midway.
PNG_BYTES = {film: noise_png(seed, size=40) for seed, film in enumerate(ALL_FILMS)}


def _tar_gz(members: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    """A real tar.gz: (name, bytes) pairs become regular files; a TarInfo is added as it is (links, folders)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


ARCHIVES = {name: box_archive({film: PNG_BYTES[film] for film in FILMS[name]}) for name in FILMS}


@dataclass
class FileServer:
    """What the handler serves and records; tests change ``files``, ``cut_once`` and ``ignore_range``."""

    base_url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    log: list[dict[str, str | None]] = field(default_factory=list)
    cut_once: dict[str, int] = field(default_factory=dict)  # name -> bytes sent before the connection drops (once)
    fail_once: dict[str, int] = field(default_factory=dict)  # name -> an error status to answer (once)
    ignore_range: bool = False

    def urls(self, names=None) -> dict[str, str]:
        return {name: f"{self.base_url}/{name}" for name in (names if names is not None else self.files)}

    def gets(self, name: str | None = None) -> list[dict[str, str | None]]:
        return [entry for entry in self.log if name is None or entry["name"] == name]


def _handler(state: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            name = self.path.lstrip("/")
            requested_range = self.headers.get("Range")
            state.log.append({"name": name, "range": requested_range})
            body = state.files.get(name)
            if body is None or name in state.fail_once:
                self.send_error(state.fail_once.pop(name, 404))
                return
            start, status = 0, 200
            match = re.fullmatch(r"bytes=(\d+)-", requested_range or "")
            if match and not state.ignore_range:
                start, status = int(match.group(1)), 206
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
            payload = body[start:]
            self.send_response(status)
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Content-Type", "application/gzip")
            self.end_headers()
            cut = state.cut_once.pop(name, None)
            # HTTP/1.0: the connection closes after the response, so a cut body ends early at the client.
            self.wfile.write(payload if cut is None else payload[:cut])

        def log_message(self, *args) -> None:  # the test's own log is enough
            pass

    return Handler


@pytest.fixture
def server() -> Iterator[FileServer]:
    state = FileServer(files=dict(ARCHIVES))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def metadata_files(fixtures_dir) -> dict[str, bytes]:
    """The four files beside the archives in the box folder, in their real formats."""
    return {name: (fixtures_dir / name).read_bytes() for name in METADATA_FILE_NAMES}


def _download(root: Path, server: FileServer, **options):
    options = {"show_progress": False, "retry_wait_s": 0.0, "retries": 2, "timeout_s": 10.0, **options}
    return download_nih(root, urls=options.pop("urls", None) or server.urls(), **options)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest(root: Path) -> dict:
    return json.loads((root / MANIFEST_NAME).read_text())


def _nothing_unpacked(root: Path) -> bool:
    images = root / "images"
    return not images.exists() or not any(images.iterdir())


def test_the_box_links_are_nih_scripts_twelve_in_order():
    # A tested copy of batch_download_zips.py's list (Sim-ai/CheXclusion/batch_download_zips.py): link k is archive k.
    script_links = """
        vfk49d74nhbxq3nqjg0900w5nvkorp5c i28rlmbvmfjbl8p2n3ril0pptcmcu9d1 f1t00wrtdk94satdfb9olcolqx20z2jp
        0aowwzs5lhjrceb3qp67ahp0rd1l1etg v5e3goj22zr6h8tzualxfsqlqaygfbsn asi7ikud9jwnkrnkj99jnpfkjdes7l6l
        jn1b4mw4n6lnh74ovmcjb8y48h8xj07n tvpxmn7qyrgl0w8wfh9kqfjskv6nmm1j upyy3ml7qdumlgk2rfcvlb9k6gvqq2pj
        l6nilvfa9cg3s28tqv1qc1olm3gnz54p hhq8fkdgvcari67vfhs7ppg2w6ni4jze ioqwiy20ihqwyr8pf4c24eazhh281pbu
    """.split()
    assert ARCHIVE_URLS == {f"images_{number:03d}.tar.gz": f"https://nihcc.box.com/shared/static/{key}.gz"
                            for number, key in enumerate(script_links, start=1)}


def test_download_unpacks_into_the_flat_box_layout_and_records_each_archive(tmp_path, server, metadata_files):
    server.files.update(metadata_files)
    checksum_file = tmp_path / "SHA256SUMS"
    checksum_file.write_text("".join(f"{_sha256(data)}  ./{name}\n" for name, data in ARCHIVES.items()))
    root = tmp_path / "nih"
    report = _download(root, server, checksums=checksum_file)

    assert report.downloaded == sorted(FILMS) and report.extracted == sorted(FILMS)
    assert report.metadata_downloaded == list(METADATA_FILE_NAMES) and report.metadata_missing == []
    assert report.images == len(ALL_FILMS) and report.next_steps() == []
    # Flat: every film directly in images/, byte for byte, and nothing else there (no temporary files left).
    assert sorted(os.listdir(root / "images")) == ALL_FILMS
    assert all((root / "images" / film).read_bytes() == PNG_BYTES[film] for film in ALL_FILMS)
    # Archives kept by default, complete, and no part file left.
    assert all((root / name).read_bytes() == data for name, data in ARCHIVES.items())
    assert not list(root.glob("*.part"))
    manifest = _manifest(root)
    for name, data in ARCHIVES.items():
        entry = manifest["archives"][name]
        assert (entry["sha256"], entry["bytes"], entry["extracted"]) == (_sha256(data), len(data), True)
        assert entry["members"] == {film: len(PNG_BYTES[film]) for film in FILMS[name]}
    labels = "Data_Entry_2017_v2020.csv"
    assert manifest["files"][labels]["sha256"] == _sha256(metadata_files[labels])
    # cxrutils reads the result as the box layout.
    files = locate_files(root)
    assert files.metadata_csv == root / "Data_Entry_2017_v2020.csv" and files.test_list and files.bbox_csv
    assert index_images(root, ALL_FILMS).missing == []
    assert verify_nih_download(root) == []


def test_a_second_call_fetches_and_unpacks_nothing(tmp_path, server, metadata_files):
    server.files.update(metadata_files)
    root = tmp_path / "nih"
    _download(root, server)
    unpacked_at = {film: (root / "images" / film).stat().st_mtime_ns for film in ALL_FILMS}
    server.log.clear()
    report = _download(root, server)
    assert server.gets() == []
    assert report.downloaded == [] and report.extracted == [] and report.already_extracted == sorted(FILMS)
    assert {film: (root / "images" / film).stat().st_mtime_ns for film in ALL_FILMS} == unpacked_at


def test_an_interrupted_download_resumes_from_its_part_file(tmp_path, server):
    name = "images_001.tar.gz"
    data = ARCHIVES[name]
    cut = len(data) // 2
    server.cut_once[name] = cut
    root = tmp_path / "nih"
    with pytest.raises(DownloadError, match=rf"{name}.*kept in .*{name}\.part.*run the command again to resume"):
        _download(root, server, archives=[name], retries=0)
    assert (root / f"{name}.part").read_bytes() == data[:cut]
    assert not (root / name).exists() and _nothing_unpacked(root)

    server.log.clear()
    report = _download(root, server, archives=[name])
    assert server.gets(name) == [{"name": name, "range": f"bytes={cut}-"}]  # only the rest was asked for
    assert report.downloaded == [name]
    assert (root / name).read_bytes() == data
    assert sorted(os.listdir(root / "images")) == FILMS[name]


def test_a_connection_cut_midway_is_retried_within_the_call(tmp_path, server):
    name = "images_002.tar.gz"
    cut = len(ARCHIVES[name]) // 3
    server.cut_once[name] = cut
    root = tmp_path / "nih"
    _download(root, server, archives=[name], retries=1)
    assert server.gets(name) == [{"name": name, "range": None}, {"name": name, "range": f"bytes={cut}-"}]
    assert (root / name).read_bytes() == ARCHIVES[name]


def test_a_server_that_ignores_range_restarts_the_file_cleanly(tmp_path, server):
    name = "images_001.tar.gz"
    root = tmp_path / "nih"
    root.mkdir()
    (root / f"{name}.part").write_bytes(b"stale bytes of another try" * 10)
    server.ignore_range = True
    _download(root, server, archives=[name])
    assert server.gets(name) == [{"name": name, "range": f"bytes={len(b'stale bytes of another try') * 10}-"}]
    assert (root / name).read_bytes() == ARCHIVES[name]  # answered 200: written from the first byte, not appended


def test_a_part_file_that_is_already_whole_is_answered_416_and_used(tmp_path, server):
    name = "images_002.tar.gz"
    root = tmp_path / "nih"
    root.mkdir()
    (root / f"{name}.part").write_bytes(ARCHIVES[name])
    report = _download(root, server, archives=[name])
    assert server.gets(name) == [{"name": name, "range": f"bytes={len(ARCHIVES[name])}-"}]
    assert report.downloaded == [name] and (root / name).read_bytes() == ARCHIVES[name]
    assert sorted(os.listdir(root / "images")) == FILMS[name]


def _flip_middle_byte(data: bytes) -> bytes:
    damaged = bytearray(data)
    damaged[len(data) // 2] ^= 0xFF
    return bytes(damaged)


@pytest.mark.parametrize("damage", [_flip_middle_byte, lambda data: data[:-100]], ids=["flipped byte", "truncated"])
def test_a_damaged_archive_is_refused_by_name_and_nothing_of_it_is_unpacked(tmp_path, server, damage):
    name = "images_001.tar.gz"
    server.files[name] = damage(ARCHIVES[name])
    root = tmp_path / "nih"
    with pytest.raises(DownloadError, match=rf"{name} downloaded from .* is damaged .*nothing of it was unpacked"):
        _download(root, server, archives=[name])
    assert _nothing_unpacked(root)
    assert not (root / name).exists()
    assert not (root / f"{name}.part").exists()  # resuming onto damaged bytes would never mend them
    assert not (root / MANIFEST_NAME).exists()  # nothing was recorded


def _symlink_member() -> tarfile.TarInfo:
    link = tarfile.TarInfo("images/00000001_000.png")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return link


@pytest.mark.parametrize(
    ("members", "refused_member", "reason"),
    [
        ([("images/00000001_001.png", PNG_BYTES["00000001_001.png"]), ("../evil.png", PNG_BYTES["00000001_000.png"])],
         "../evil.png", "points outside"),
        ([("images/00000001_001.png", PNG_BYTES["00000001_001.png"]), ("images/../../evil.png", b"\x89PNG\r\n\x1a\n")],
         "images/../../evil.png", "points outside"),
        ([("/tmp/evil.png", PNG_BYTES["00000001_000.png"])], "/tmp/evil.png", "points outside"),
        ([("images/00000001_001.png", PNG_BYTES["00000001_001.png"]), _symlink_member()],
         "images/00000001_000.png", "symbolic link"),
        ([("images/notes.txt", b"not a film")], "images/notes.txt", "not a PNG directly in images/"),
        ([("images/00000001_000.png", b"GIF89a, not a PNG")], "images/00000001_000.png", "is not a PNG"),
    ],
    ids=["parent path", "parent inside images", "absolute path", "symlink", "not a film name", "not PNG bytes"],
)
def test_an_unsafe_archive_is_refused_and_nothing_of_it_is_unpacked(tmp_path, server, members, refused_member, reason):
    name = "images_001.tar.gz"
    server.files[name] = _tar_gz(members)
    root = tmp_path / "nih"
    with pytest.raises(DownloadError, match=rf"{name} downloaded from .* was refused: member "
                                             rf"'{re.escape(refused_member)}' .*{reason}.*nothing of it was unpacked"):
        _download(root, server, archives=[name])
    assert _nothing_unpacked(root)
    assert not (tmp_path / "evil.png").exists() and not (root / "evil.png").exists()
    assert not (root / name).exists() and (root / f"{name}.part").exists()  # kept for inspection, never renamed


def test_a_checksum_file_that_disagrees_is_refused(tmp_path, server):
    name = "images_002.tar.gz"
    checksum_file = tmp_path / "SHA256SUMS"
    checksum_file.write_text(f"{'0' * 64} *{name}\n")
    root = tmp_path / "nih"
    with pytest.raises(DownloadError, match=rf"{name} .*refused: its SHA-256 {_sha256(ARCHIVES[name])} differs from "
                                             rf"the checksum file's {'0' * 64}"):
        _download(root, server, archives=[name], checksums=checksum_file)
    assert _nothing_unpacked(root) and not (root / name).exists()


def test_a_checksum_file_is_read_in_sha256sum_format_and_a_malformed_line_is_named(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text(f"# NIH archives\n{'A' * 64}  images_01.tar.gz\n{'b' * 64} *sub/dir/test_list.txt\n")
    assert read_checksum_file(good) == {"images_001.tar.gz": "a" * 64, "test_list.txt": "b" * 64}
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{'a' * 64}  images_001.tar.gz\nmd5 123 images_002.tar.gz\n")
    with pytest.raises(DownloadError, match=r"bad.txt line 2 is not `SHA256  NAME`"):
        read_checksum_file(bad)


def test_verify_finds_a_deleted_image_and_a_changed_archive(tmp_path, server, metadata_files):
    server.files.update(metadata_files)
    root = tmp_path / "nih"
    _download(root, server)
    assert verify_nih_download(root) == []
    (root / "images" / "00000013_005.png").unlink()
    archive = root / "images_001.tar.gz"
    archive.write_bytes(_flip_middle_byte(archive.read_bytes()))  # same size: only the hash can tell
    problems = verify_nih_download(root)
    assert len(problems) == 2
    assert any("00000013_005.png" in problem and "images_002.tar.gz" in problem and "missing" in problem
               for problem in problems)
    assert any(str(archive) in problem and "changed since it was checked" in problem for problem in problems)


def test_verify_without_a_manifest_says_what_to_run(tmp_path):
    (problem,) = verify_nih_download(tmp_path)
    assert MANIFEST_NAME in problem and "cxrutils download nih --root" in problem


def test_an_unpacking_stopped_halfway_is_redone_on_the_next_call_without_fetching(tmp_path, server, monkeypatch):
    name = "images_001.tar.gz"
    root = tmp_path / "nih"
    written = []
    real_write_member = download_module._write_member

    def stop_after_first(tar, member, target):
        if written:
            raise KeyboardInterrupt  # the user's Ctrl-C, halfway through
        real_write_member(tar, member, target)
        written.append(target.name)

    monkeypatch.setattr(download_module, "_write_member", stop_after_first)
    with pytest.raises(KeyboardInterrupt):
        _download(root, server, archives=[name])
    assert os.listdir(root / "images") == written  # one film, no temporary file
    assert _manifest(root)["archives"][name]["extracted"] is False

    monkeypatch.setattr(download_module, "_write_member", real_write_member)
    server.log.clear()
    report = _download(root, server, archives=[name])
    assert server.gets() == []  # the kept archive is trusted (same size and time as when it was checked)
    assert report.already_downloaded == [name] and report.extracted == [name]
    assert sorted(os.listdir(root / "images")) == FILMS[name]


def test_a_deleted_image_is_unpacked_again_from_the_kept_archive(tmp_path, server):
    root = tmp_path / "nih"
    _download(root, server)
    (root / "images" / "00000002_000.png").unlink()
    server.log.clear()
    report = _download(root, server)
    assert server.gets() == [] and report.extracted == ["images_001.tar.gz"]
    assert (root / "images" / "00000002_000.png").read_bytes() == PNG_BYTES["00000002_000.png"]


def test_without_keep_archives_each_archive_is_deleted_once_unpacked_and_a_rerun_fetches_nothing(tmp_path, server):
    root = tmp_path / "nih"
    report = _download(root, server, keep_archives=False)
    assert report.archives_deleted == sorted(FILMS) and not list(root.glob("images_*.tar.gz"))
    assert sorted(os.listdir(root / "images")) == ALL_FILMS
    server.log.clear()
    assert _download(root, server, keep_archives=False).already_extracted == sorted(FILMS)
    assert server.gets() == []
    assert verify_nih_download(root) == [f"{name} is not in {root}: download it from {BOX_FOLDER_URL}"
                                         for name in METADATA_FILE_NAMES]


def test_extract_only_unpacks_archives_left_by_nih_script_and_says_what_is_missing(tmp_path):
    root = tmp_path / "nih"
    (root / "images").mkdir(parents=True)
    # NIH's batch_download_zips.py saves images_01.tar.gz ...; a browser may leave one inside images/.
    (root / "images_01.tar.gz").write_bytes(ARCHIVES["images_001.tar.gz"])
    (root / "images" / "images_002.tar.gz").write_bytes(ARCHIVES["images_002.tar.gz"])
    report = download_nih(root, download=False, show_progress=False)  # the real links: nothing may be fetched
    assert report.extracted == sorted(FILMS)
    assert sorted(name for name in os.listdir(root / "images") if name.endswith(".png")) == ALL_FILMS
    assert report.not_present == [f"images_{number:03d}.tar.gz" for number in range(3, 13)]
    assert report.metadata_missing == list(METADATA_FILE_NAMES)
    steps = " ".join(report.next_steps())
    assert BOX_FOLDER_URL in steps and "images_012.tar.gz" in steps


def test_an_archive_put_there_by_hand_that_is_damaged_is_named_and_left_alone(tmp_path):
    root = tmp_path / "nih"
    root.mkdir()
    archive = root / "images_001.tar.gz"
    archive.write_bytes(ARCHIVES["images_001.tar.gz"][:-50])
    with pytest.raises(DownloadError, match=rf"{re.escape(str(archive))} is damaged .*truncated.*delete it"):
        download_nih(root, download=False, archives=["images_001.tar.gz"], show_progress=False)
    assert archive.exists() and _nothing_unpacked(root)  # the user's file: named, not deleted


def test_a_link_that_is_gone_is_an_error_that_says_where_to_get_the_file(tmp_path, server):
    with pytest.raises(DownloadError, match=r"answered HTTP 404.*images_003.tar.gz by hand from https://nihcc"):
        _download(tmp_path / "nih", server, urls=server.urls(["images_003.tar.gz"]))


def test_a_moved_root_still_verifies(tmp_path, server):
    root = tmp_path / "nih"
    _download(root, server)
    moved = Path(shutil.move(root, tmp_path / "moved"))
    # The manifest names files relative to the root: only the four metadata files (never served here) are missing.
    assert verify_nih_download(moved) == [f"{name} is not in {moved}: download it from {BOX_FOLDER_URL}"
                                          for name in METADATA_FILE_NAMES]


def test_a_busy_server_is_asked_again_after_a_growing_wait(tmp_path, server, monkeypatch):
    waits = []
    monkeypatch.setattr(download_module.time, "sleep", waits.append)
    name = "images_002.tar.gz"
    server.fail_once[name] = 503
    _download(tmp_path / "nih", server, archives=[name], retry_wait_s=1.5)
    assert server.gets(name) == [{"name": name, "range": None}] * 2 and waits == [1.5]
    assert (tmp_path / "nih" / name).read_bytes() == ARCHIVES[name]


def test_an_unreachable_server_is_tried_again_with_growing_waits_then_named(tmp_path, monkeypatch):
    waits = []
    monkeypatch.setattr(download_module.time, "sleep", waits.append)
    with socket.socket() as probe:  # a port nothing listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    name = "images_001.tar.gz"
    with pytest.raises(DownloadError, match=rf"downloading {name} from http://127.0.0.1:{port}/{name} failed 4 "
                                             r"time\(s\) in a row \(URLError: .*refused.*run the command again"):
        download_nih(tmp_path / "nih", urls={name: f"http://127.0.0.1:{port}/{name}"}, show_progress=False,
                     retries=3, retry_wait_s=2.0)
    assert waits == [2.0, 4.0, 8.0]


def test_the_download_verb_unpacks_what_is_there_and_a_damaged_archive_is_one_line(tmp_path, capsys):
    """``cxrutils download nih --extract-only``: the command a user types, its summary, and a refusal in one line."""
    from cxrutils.cli import main as cli_main

    root = tmp_path / "nih"
    root.mkdir()
    (root / "images_001.tar.gz").write_bytes(ARCHIVES["images_001.tar.gz"])
    assert cli_main(["download", "nih", "--root", str(root), "--extract-only"]) == 0
    out = capsys.readouterr().out
    assert f"in {root / 'images'}: 0 downloaded, 1 unpacked now, 0 before" in out
    assert "images_002.tar.gz" in out  # the archives still to fetch are listed
    assert cli_main(["download", "nih", "--root", str(root), "--verify"]) == 1  # 11 archives are still to fetch
    problems = capsys.readouterr().out
    assert "images_012.tar.gz was never downloaded" in problems and "images_001" not in problems

    (root / "images_002.tar.gz").write_bytes(_flip_middle_byte(ARCHIVES["images_002.tar.gz"]))
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["download", "nih", "--root", str(root), "--extract-only"])
    assert exit_info.value.code == 1
    error = capsys.readouterr().err.rsplit("\r", 1)[-1].split("\n", 1)[-1]  # after the progress bar's line
    assert error.startswith("cxrutils download: error:") and "images_002.tar.gz" in error, error
    assert len(error.strip().splitlines()) == 1 and "Traceback" not in error

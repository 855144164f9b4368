"""unpack_bundle extracts a bundle archive and refuses members that would land outside the target folder."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import zipfile

import pytest

from common.deploy import UnsafeArchiveError, unpack_bundle
from tests.helpers import common_command_exit


def _zip(path, members: dict[str, bytes], symlink: str | None = None):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16)  # a symbolic link
            archive.writestr(info, "/etc")
    return path


def test_a_bundle_zip_is_unpacked(tmp_path):
    archive = _zip(tmp_path / "b.zip", {"brain_mri/configs/inference.json": b"{}", "brain_mri/models/a.pt": b"x"})
    target = unpack_bundle(archive, tmp_path / "out")
    assert (target / "brain_mri" / "configs" / "inference.json").read_bytes() == b"{}"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left


@pytest.mark.parametrize("name", ["../evil.txt", "brain_mri/../../evil.txt", "/tmp/evil.txt", "C:/evil.txt"])
def test_members_leaving_the_target_are_refused_before_anything_is_written(tmp_path, name):
    archive = _zip(tmp_path / "b.zip", {"brain_mri/configs/inference.json": b"{}", name: b"owned"})
    with pytest.raises(UnsafeArchiveError, match="would be written outside the target folder; nothing was unpacked"):
        unpack_bundle(archive, tmp_path / "deep" / "out")
    assert not (tmp_path / "deep" / "out").exists() and not (tmp_path / "evil.txt").exists()
    assert [p.name for p in (tmp_path / "deep").iterdir()] == []


def test_links_are_refused(tmp_path):
    with pytest.raises(UnsafeArchiveError, match="'b/link' is a link"):
        unpack_bundle(_zip(tmp_path / "b.zip", {"b/x": b"1"}, symlink="b/link"), tmp_path / "out")
    buffer = tmp_path / "b.tar.gz"
    with tarfile.open(buffer, "w:gz") as archive:
        link = tarfile.TarInfo("b/etc")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc"
        archive.addfile(link)
        data = tarfile.TarInfo("b/etc/passwd")
        data.size = 5
        archive.addfile(data, io.BytesIO(b"owned"))
    with pytest.raises(UnsafeArchiveError, match="'b/etc' is a link"):
        unpack_bundle(buffer, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_no_overwriting_and_clear_errors(tmp_path):
    archive = _zip(tmp_path / "b.zip", {"b/x": b"1"})
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not an empty folder"):
        unpack_bundle(archive, tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    (tmp_path / "notes.txt").write_text("not an archive")
    with pytest.raises(ValueError, match="is not a .zip or .tar"):
        unpack_bundle(tmp_path / "notes.txt", tmp_path / "out")
    raw = archive.read_bytes()
    (tmp_path / "cut.zip").write_bytes(raw[: len(raw) - 30])
    with pytest.raises(ValueError, match="cannot be unpacked|is not a .zip"):
        unpack_bundle(tmp_path / "cut.zip", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_command_line(tmp_path):
    archive = _zip(tmp_path / "b.zip", {"../evil.txt": b"owned"})
    result = subprocess.run([sys.executable, "-m", "common", "unpack", str(archive), str(tmp_path / "out")], capture_output=True, text=True)
    # the entry point goes through common.cli.main: exit status 1 and the message, no traceback
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "would be written outside the target folder" in result.stderr


def test_backslash_names_and_duplicate_members_are_refused(tmp_path):
    with pytest.raises(UnsafeArchiveError, match=r"member 'b\\evil.txt' uses backslash separators; refused"):
        unpack_bundle(_zip(tmp_path / "a.zip", {"b\\evil.txt": b"x"}), tmp_path / "out")
    duplicated = tmp_path / "d.tar"
    with tarfile.open(duplicated, "w") as archive:
        for content in (b"first", b"second"):
            member = tarfile.TarInfo("b/configs/inference.json")
            member.size = len(content)
            archive.addfile(member, io.BytesIO(content))
    with pytest.raises(UnsafeArchiveError, match="two members are named 'b/configs/inference.json'; refused"):
        unpack_bundle(duplicated, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_file_member_where_another_member_needs_a_folder_is_refused(tmp_path, monkeypatch):
    archive = _zip(tmp_path / "b.zip", {"brain_mri/models": b"a file", "brain_mri/models/autoencoder.pt": b"x"})
    message = common_command_exit(monkeypatch, "unpack", str(archive), str(tmp_path / "out"))
    assert ("member 'brain_mri/models/autoencoder.pt' lies in a folder 'brain_mri/models', which is also a file member; "
            "refused, nothing was unpacked.") in message
    conflicting = tmp_path / "c.tar"
    with tarfile.open(conflicting, "w") as tar:
        for name in ("b/configs/inference.json", "b/configs"):
            member = tarfile.TarInfo(name)
            tar.addfile(member, io.BytesIO(b""))
    with pytest.raises(UnsafeArchiveError, match="lies in a folder 'b/configs', which is also a file member"):
        unpack_bundle(conflicting, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_archive_larger_than_the_limit_is_refused_unless_the_limit_is_raised(tmp_path, monkeypatch):
    big = _zip(tmp_path / "big.zip", {"b/weights.pt": bytes(3 * 2**20)})  # 3 MiB of zeros, a few KiB zipped
    with pytest.raises(UnsafeArchiveError, match=r"unpacks to 0.00 GiB, more than the limit of 0.001 GiB.*--max_size_gib"):
        unpack_bundle(big, tmp_path / "out", max_size_gib=0.001)
    assert not (tmp_path / "out").exists()
    target = unpack_bundle(big, tmp_path / "out", max_size_gib=0.01)
    assert (target / "b" / "weights.pt").stat().st_size == 3 * 2**20
    assert "more than the limit of 0.001 GiB" in common_command_exit(monkeypatch, "unpack", str(big), str(tmp_path / "again"), "--max_size_gib", "0.001")
    assert not (tmp_path / "again").exists()

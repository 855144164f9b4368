"""Unpacking a bundle archive safely: nothing is written outside the target folder, and nothing half-unpacked.

An archive member named ``../../.bashrc`` or ``/etc/cron.d/x``, or a symbolic link that points out of the folder
followed by a member written through it, would otherwise overwrite files anywhere the user can write. Every
member is checked before anything is written; the archive is extracted into a temporary folder next to the
target and renamed into place, so a refused or broken archive leaves nothing behind.
"""

from __future__ import annotations

import os
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from common.io import atomic_path

__all__ = ["UnsafeArchiveError", "unpack_bundle"]


class UnsafeArchiveError(ValueError):
    """An archive member that would be written outside the target folder, or is a link or device."""


def _check_member_name(archive: Path, name: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (path.parts and path.parts[0].endswith(":")) or ".." in path.parts:
        raise UnsafeArchiveError(f"{archive}: member '{name}' would be written outside the target folder; nothing was unpacked.")


def _check_zip(archive: Path, bundle: zipfile.ZipFile) -> None:
    for info in bundle.infolist():
        _check_member_name(archive, info.filename)
        mode = info.external_attr >> 16
        if mode and (mode & 0o170000) not in (0o100000, 0o040000, 0):  # only regular files and folders
            raise UnsafeArchiveError(f"{archive}: member '{info.filename}' is a link or special file; nothing was unpacked.")


def _check_tar(archive: Path, bundle: tarfile.TarFile) -> None:
    for member in bundle.getmembers():
        _check_member_name(archive, member.name)
        if not (member.isfile() or member.isdir()):
            raise UnsafeArchiveError(f"{archive}: member '{member.name}' is a link or special file; nothing was unpacked.")


def unpack_bundle(archive: str | os.PathLike, target_dir: str | os.PathLike) -> Path:
    """Extract ``archive`` (.zip, .tar, .tar.gz, .tgz) into the new folder ``target_dir`` and return it.

    Raises ``UnsafeArchiveError`` for members with absolute paths, ``..`` components, links or special files;
    ``FileExistsError`` when ``target_dir`` exists and is not empty (nothing is overwritten); ``ValueError``
    for a file that is not such an archive.
    """
    archive, target = Path(archive), Path(target_dir)
    if not archive.is_file():
        raise FileNotFoundError(f"bundle archive {archive} does not exist.")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{target} exists and is not an empty folder; choose a new folder to unpack {archive.name} into.")
    try:
        with atomic_path(target, directory=True) as staging:  # an empty target folder is replaced as a whole
            if zipfile.is_zipfile(archive):
                with zipfile.ZipFile(archive) as bundle:
                    _check_zip(archive, bundle)
                    bundle.extractall(staging)
            elif tarfile.is_tarfile(archive):
                with tarfile.open(archive) as bundle:
                    _check_tar(archive, bundle)
                    try:
                        bundle.extractall(staging, filter="data")  # Python >= 3.10.12 / 3.11.4: a second guard
                    except TypeError:  # older patch releases: the member checks above are the guard
                        bundle.extractall(staging)
            else:
                raise ValueError(f"{archive} is not a .zip or .tar(.gz) archive.")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as error:
        raise ValueError(f"{archive} cannot be unpacked, truncated or corrupt? ({type(error).__name__}: {error})") from error
    return target

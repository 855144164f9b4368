"""Unpacking a bundle archive safely: nothing is written outside the target folder, nothing half-unpacked, nothing
larger than a limit.

An archive member named ``../../.bashrc`` or ``/etc/cron.d/x``, or a symbolic link that points out of the folder
followed by a member written through it, would otherwise overwrite files anywhere the user can write. Every
member is checked before anything is written; the archive is extracted into a temporary folder next to the
target and renamed into place, so a refused or broken archive leaves nothing behind. Also refused: names with
backslash separators (which Linux would write as one odd file name, and Windows tools as folders), two members
with one name (the second would silently replace the first), a file member where another member needs a folder of
that name, and archives that unpack to more than
``max_size_gib`` (a zip bomb fills the disk before anything else goes wrong).
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
    if "\\" in name:
        raise UnsafeArchiveError(f"{archive}: member '{name}' uses backslash separators; refused, nothing was unpacked.")
    path = PurePosixPath(name)
    if path.is_absolute() or (path.parts and path.parts[0].endswith(":")) or ".." in path.parts:
        raise UnsafeArchiveError(f"{archive}: member '{name}' would be written outside the target folder; nothing was unpacked.")


def _check_members(archive: Path, names: list[str], sizes: list[int], max_size_gib: float) -> None:
    """Every name safe, no name twice, and the total unpacked size within the limit."""
    seen: set[str] = set()
    for name in names:
        _check_member_name(archive, name)
        normal = str(PurePosixPath(name))
        if normal in seen:
            raise UnsafeArchiveError(f"{archive}: two members are named '{normal}'; refused, nothing was unpacked.")
        seen.add(normal)
    total = sum(sizes)
    if total > max_size_gib * 2**30:
        raise UnsafeArchiveError(
            f"{archive}: unpacks to {total / 2**30:.2f} GiB, more than the limit of {max_size_gib:g} GiB; nothing was "
            "unpacked. If you trust the archive, raise the limit (--max_size_gib)."
        )


def _check_folders(archive: Path, names: list[str], folders: list[bool]) -> None:
    """No file member where another member needs a folder of that name (extracting would fail half-way)."""
    files = {str(PurePosixPath(name)) for name, folder in zip(names, folders) if not folder}
    for name in names:
        inside = next((str(parent) for parent in PurePosixPath(name).parents if str(parent) in files), None)
        if inside is not None:
            raise UnsafeArchiveError(f"{archive}: member '{name}' lies in a folder '{inside}', which is also a file "
                                     "member; refused, nothing was unpacked.")


def _check_zip(archive: Path, bundle: zipfile.ZipFile, max_size_gib: float) -> None:
    infos = bundle.infolist()
    _check_members(archive, [i.filename for i in infos], [i.file_size for i in infos], max_size_gib)
    for info in infos:
        mode = info.external_attr >> 16
        if mode and (mode & 0o170000) not in (0o100000, 0o040000, 0):  # only regular files and folders
            raise UnsafeArchiveError(f"{archive}: member '{info.filename}' is a link or special file; nothing was unpacked.")
    _check_folders(archive, [i.filename for i in infos], [i.is_dir() for i in infos])


def _check_tar(archive: Path, bundle: tarfile.TarFile, max_size_gib: float) -> None:
    members = bundle.getmembers()
    _check_members(archive, [m.name for m in members], [m.size for m in members], max_size_gib)
    for member in members:
        if not (member.isfile() or member.isdir()):
            raise UnsafeArchiveError(f"{archive}: member '{member.name}' is a link or special file; nothing was unpacked.")
    _check_folders(archive, [m.name for m in members], [m.isdir() for m in members])


def unpack_bundle(archive: str | os.PathLike, target_dir: str | os.PathLike, max_size_gib: float = 10.0) -> Path:
    """Extract ``archive`` (.zip, .tar, .tar.gz, .tgz) into the new folder ``target_dir`` and return it.

    Raises ``UnsafeArchiveError`` for members with absolute paths, ``..`` components, backslash separators, links
    or special files, for two members of one name, for a file member where another needs a folder, and for an archive
    that unpacks to more than ``max_size_gib``;
    ``FileExistsError`` when ``target_dir`` exists and is not empty (nothing is overwritten); ``ValueError``
    for a file that is not such an archive.
    """
    archive, target = Path(archive), Path(target_dir)
    if not max_size_gib > 0:
        raise ValueError(f"max_size_gib must be positive, got {max_size_gib}.")
    if not archive.is_file():
        raise FileNotFoundError(f"bundle archive {archive} does not exist.")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{target} exists and is not an empty folder; choose a new folder to unpack {archive.name} into.")
    try:
        with atomic_path(target, directory=True) as staging:  # an empty target folder is replaced as a whole
            if zipfile.is_zipfile(archive):
                with zipfile.ZipFile(archive) as bundle:
                    _check_zip(archive, bundle, max_size_gib)
                    bundle.extractall(staging)
            elif tarfile.is_tarfile(archive):
                with tarfile.open(archive) as bundle:
                    _check_tar(archive, bundle, max_size_gib)
                    try:
                        bundle.extractall(staging, filter="data")  # Python >= 3.10.12 / 3.11.4: a second guard
                    except TypeError:  # older patch releases: the member checks above are the guard
                        bundle.extractall(staging)
            else:
                raise ValueError(f"{archive} is not a .zip or .tar(.gz) archive.")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as error:
        raise ValueError(f"{archive} cannot be unpacked, truncated or corrupt? ({type(error).__name__}: {error})") from error
    return target

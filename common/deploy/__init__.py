"""Getting trained bundles to users: TorchScript exports (``export``), Model Zoo packages (``package``), and
unpacking a downloaded archive safely (``archive``)."""

from .archive import UnsafeArchiveError, unpack_bundle
from .export import ExportError, export_torchscript
from .package import PackagingError, package_bundle

__all__ = ["ExportError", "PackagingError", "UnsafeArchiveError", "export_torchscript", "package_bundle", "unpack_bundle"]

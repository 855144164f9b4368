"""Getting trained bundles to users: TorchScript exports (``export``), Model Zoo packages (``package``), the Model
Zoo's checks of a bundle (``model_zoo``), and unpacking a downloaded archive safely (``archive``)."""

from .archive import UnsafeArchiveError, unpack_bundle
from .export import ExportError, export_torchscript
from .model_zoo import ZooCheckError, check_bundle, check_zoo
from .package import PackagingError, package_bundle

__all__ = [
    "ExportError", "PackagingError", "UnsafeArchiveError", "ZooCheckError", "check_bundle", "check_zoo", "export_torchscript",
    "package_bundle", "unpack_bundle",
]

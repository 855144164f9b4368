"""Getting trained bundles to users: TorchScript exports (``export``), Model Zoo packages (``package``), the Model
Zoo's checks of a bundle (``model_zoo``), one synthetic volume per request for serving apps (``synthesis``), and
unpacking a downloaded archive safely (``archive``)."""

from .archive import UnsafeArchiveError, unpack_bundle
from .export import ExportError, export_torchscript
from .model_zoo import ZooCheckError, check_bundle, check_zoo
from .package import PackagingError, package_bundle
from .synthesis import (
    BundleSynthesizer,
    SynthesisError,
    SynthesisRequest,
    SyntheticVolume,
    find_bundle_folder,
    plan_requests,
    write_volume,
)

__all__ = [
    "BundleSynthesizer", "ExportError", "PackagingError", "SynthesisError", "SynthesisRequest", "SyntheticVolume",
    "UnsafeArchiveError", "ZooCheckError", "check_bundle", "check_zoo", "export_torchscript", "find_bundle_folder",
    "package_bundle", "plan_requests", "unpack_bundle", "write_volume",
]

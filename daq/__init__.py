"""na64-daq: online missing-energy trigger and DAQ monitoring for an NA64-style experiment."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("na64-daq")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]

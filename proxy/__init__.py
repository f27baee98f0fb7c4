"""product-analytics-proxy: GitLab's product analytics API in front of Cube."""

from importlib.metadata import PackageNotFoundError, version

try:
    #: one source: the version pyproject.toml gives the installed package
    __version__ = version("product-analytics-proxy")
except PackageNotFoundError:  # pragma: no cover - running from a tree that was never installed
    __version__ = "0+unknown"

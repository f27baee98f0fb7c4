"""product-analytics-proxy: GitLab's product analytics API in front of Cube."""

from importlib.metadata import PackageNotFoundError, version
from importlib.resources import files

try:
    #: one source: the version pyproject.toml gives the installed package
    __version__ = version("product-analytics-proxy")
except PackageNotFoundError:  # pragma: no cover - running from a tree that was never installed
    __version__ = "0+unknown"

try:
    #: the source revision the image was built from (its Dockerfile writes ``proxy/REVISION``); else "unknown"
    __revision__ = (files("proxy") / "REVISION").read_text().strip() or "unknown"
except OSError:
    __revision__ = "unknown"

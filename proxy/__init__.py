"""product-analytics-proxy: GitLab's product analytics API in front of Cube."""

__version__ = "0.1.0"

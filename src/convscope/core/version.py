"""The package version (one place; ``convscope.__version__``)."""

__version__ = "0.1.0"

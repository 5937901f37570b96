"""The version of the pgdurable library."""

__version__ = "0.1.0"

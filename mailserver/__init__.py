"""A mail server for your own domain, built on Twisted."""

__version__ = "0.1.0"

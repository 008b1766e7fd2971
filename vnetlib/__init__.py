"""vnet: virtual networks across infrastructure providers."""

__version__ = "0.1.0"

"""novalite: OpenStack Nova's VM boot flow as one asyncio process."""

__version__ = "0.1.0"

"""Block storage: volumes and snapshots in the hosts' storage pools (a Cinder v3 subset)."""

from novalite.volume.api import VolumeAPI

__all__ = ["VolumeAPI"]

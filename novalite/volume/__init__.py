"""Block storage: volumes and snapshots in the hosts' storage pools (a Cinder v3 subset)."""

from novalite.volume.api import VolumeAPI
from novalite.volume.attachments import VolumeAttachments
from novalite.volume.build import VolumeBuild

__all__ = ["VolumeAPI", "VolumeAttachments", "VolumeBuild"]

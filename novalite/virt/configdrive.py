"""Config drive: the instance's metadata on an ISO 9660 image labelled ``config-2``.

The layout is Nova's (``nova/virt/configdrive.py`` + ``nova/api/metadata``):
``openstack/<version>/meta_data.json``, ``user_data``, ``network_data.json``,
``vendor_data.json``, ``vendor_data2.json`` under every version directory
(dated ones and ``latest``), and injected (personality) files under
``openstack/content/0000``, ``0001``, ... which ``meta_data.json``'s ``files``
point at. The image carries Joliet and Rock Ridge names, as genisoimage with
Nova's flags would write them, and is built with pycdlib (no external tool).

:func:`build_config_drive` blocks (it writes the whole image): callers on the
event loop run it in a thread, e.g. ``await asyncio.to_thread(build_config_drive, ...)``.
"""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pycdlib

__all__ = ["CONFIG_DRIVE_LABEL", "VERSIONS", "build_config_drive", "instance_metadata", "openstack_documents"]

CONFIG_DRIVE_LABEL = "config-2"
# The OpenStack metadata versions Nova serves, oldest first; "latest" is added last.
VERSIONS = ("2012-08-10", "2013-04-04", "2013-10-17", "2015-10-15", "2016-06-30", "2016-10-06",
            "2017-02-22", "2018-08-27", "2020-10-14")


def instance_metadata(
    *,
    uuid: str,
    name: str,
    hostname: str,
    availability_zone: str | None,
    launch_index: int = 0,
    project_id: str = "",
    key_name: str | None = None,
    key_data: str | None = None,
    meta: Mapping[str, str] | None = None,
    admin_pass: str | None = None,
) -> dict[str, Any]:
    """The ``meta_data.json`` document of an instance, without ``files`` (added by the builder)."""
    doc: dict[str, Any] = {
        "uuid": uuid,
        "meta": dict(meta or {}),
        "hostname": hostname,
        "name": name,
        "launch_index": launch_index,
        "availability_zone": availability_zone,
        "random_seed": base64.b64encode(secrets.token_bytes(512)).decode(),
        "project_id": project_id,
        "devices": [],
        "dedicated_cpus": [],
    }
    if key_name and key_data:
        doc["public_keys"] = {key_name: key_data}
        doc["keys"] = [{"name": key_name, "type": "ssh", "data": key_data}]
    if admin_pass:
        doc["admin_pass"] = admin_pass
    return doc


def openstack_documents(
    instance_meta: Mapping[str, Any],
    user_data: bytes | None,
    injected_files: list[tuple[str, bytes]],
    network_data: Mapping[str, Any] | None,
) -> dict[str, bytes]:
    """The documents of every ``openstack/<version>/`` directory, by file name: what the config
    drive carries and the metadata service serves. ``meta_data.json`` points its ``files`` at
    ``/content/0000``, ... in the order of ``injected_files``; ``user_data`` only when there is one."""
    meta = dict(instance_meta)
    meta["files"] = [{"path": p, "content_path": f"/content/{i:04d}"} for i, (p, _) in enumerate(injected_files)]
    documents = {
        "meta_data.json": json.dumps(meta).encode(),
        "network_data.json": json.dumps(dict(network_data or {"links": [], "networks": [], "services": []})).encode(),
        "vendor_data.json": b"{}",
        "vendor_data2.json": b"{}",
    }
    if user_data is not None:
        documents["user_data"] = bytes(user_data)
    return documents


class _Iso:
    """A pycdlib image with helpers that give each entry its ISO 9660, Rock Ridge and Joliet name."""

    def __init__(self) -> None:
        self.iso = pycdlib.PyCdlib()
        # Level 4 keeps lower case, dots and long names in the ISO 9660 tree itself.
        self.iso.new(interchange_level=4, joliet=3, rock_ridge="1.09", vol_ident=CONFIG_DRIVE_LABEL,
                     app_ident_str="novalite")
        self.dirs: set[str] = {""}
        self._keep: list[io.BytesIO] = []

    def mkdir(self, path: str) -> None:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub not in self.dirs:
                self.iso.add_directory("/" + sub, rr_name=parts[i - 1], joliet_path="/" + sub)
                self.dirs.add(sub)

    def add(self, path: str, data: bytes) -> None:
        path = path.strip("/")
        parent, _, base = path.rpartition("/")
        if parent:
            self.mkdir(parent)
        fp = io.BytesIO(data)
        self._keep.append(fp)  # pycdlib reads the data when writing
        self.iso.add_fp(fp, len(data), "/" + path, rr_name=base, joliet_path="/" + path)

    def write(self, path: str | os.PathLike[str]) -> None:
        self.iso.write(str(path))
        self.iso.close()


def build_config_drive(
    path: str | os.PathLike[str],
    instance_meta: Mapping[str, Any],
    user_data: bytes | None,
    injected_files: Iterable[tuple[str, bytes]],
    network_data: Mapping[str, Any] | None,
) -> None:
    """Write the config drive ISO for one instance to ``path`` (atomically: temp file + rename).

    ``instance_meta`` is :func:`instance_metadata`'s document; ``injected_files``
    are (guest path, content) pairs; ``network_data`` is network_data.json
    (:func:`novalite.network.network_data`). Blocking: run it in a thread.
    """
    files = list(injected_files)
    documents = openstack_documents(instance_meta, user_data, files, network_data)
    iso = _Iso()
    iso.mkdir("openstack")
    for version in (*VERSIONS, "latest"):
        for name, data in documents.items():
            iso.add(f"openstack/{version}/{name}", data)
    for i, (_, content) in enumerate(files):
        iso.add(f"openstack/content/{i:04d}", bytes(content))

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    try:
        iso.write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)

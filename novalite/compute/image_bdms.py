"""Block device mappings an image defines, merged into a create request (Nova's _check_and_transform_bdm).

An image made by createImage of a volume-backed server carries its volumes as
snapshots: ``block_device_mapping`` (a JSON list; Glance v2 holds strings) and
``bdm_v2``. Nova's ``_get_image_defined_bdms`` reads them (the legacy format
when ``bdm_v2`` is not set, converted as ``from_legacy_mapping`` does); when one
of them is a root (boot_index 0), the image-backed root the request got for
its imageRef goes (``not_image_and_root_bdm``); then ``_merge_bdms_lists``: the
request's BDMs, and the image's whose device name the request does not name.
"""

from __future__ import annotations

import json
import re
from typing import Any

# The BDM keys a create request's mappings carry on (the columns of block_device_mappings).
KEPT = ("source_type", "destination_type", "device_name", "boot_index", "image_id", "volume_id", "snapshot_id",
        "volume_size", "device_type", "disk_bus", "guest_format", "delete_on_termination", "tag", "volume_type")
TRUE_STRINGS = ("1", "t", "true", "on", "y", "yes")
EPHEMERAL = re.compile(r"^ephemeral\d+$")


def strip_dev(name: str | None) -> str | None:
    return name.removeprefix("/dev/") if name else name


def _int_or_none(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _clean(bdm: dict) -> dict:
    out = {k: bdm.get(k) for k in KEPT}
    out["boot_index"] = _int_or_none(out["boot_index"])
    if out["boot_index"] is not None and out["boot_index"] < 0:
        out["boot_index"] = None
    out["volume_size"] = _int_or_none(out["volume_size"])
    out["delete_on_termination"] = str(out["delete_on_termination"]).lower() in TRUE_STRINGS
    if not out["destination_type"]:
        out["destination_type"] = "local" if out["source_type"] in ("image", "blank") else "volume"
    return out


def _from_legacy(mappings: list[dict], root_device_name: str) -> list[dict]:
    """Nova's from_legacy_mapping(mappings, None, root_device_name): volume, snapshot, swap, ephemeral."""
    out = []
    for legacy in mappings:
        if legacy.get("no_device"):
            continue
        new = {k: legacy.get(k) for k in ("device_name", "delete_on_termination", "volume_size",
                                          "snapshot_id", "volume_id")}
        virtual = legacy.get("virtual_name") or ""
        if virtual == "swap" or EPHEMERAL.match(virtual):
            new.update(source_type="blank", destination_type="local", delete_on_termination=True,
                       guest_format="swap" if virtual == "swap" else None)
        elif legacy.get("snapshot_id"):
            new.update(source_type="snapshot", destination_type="volume")
        elif legacy.get("volume_id"):
            new.update(source_type="volume", destination_type="volume")
        else:
            continue  # Nova refuses such a mapping (InvalidBDMFormat); nothing to boot from here
        is_root = new["source_type"] in ("volume", "snapshot") and \
            strip_dev(new.get("device_name")) == strip_dev(root_device_name)
        new["boot_index"] = 0 if is_root else None
        out.append(new)
    return out


def image_defined_bdms(image: dict | None) -> list[dict]:
    """Nova's _get_image_defined_bdms, in the shape a request's BDMs have here ([] for none)."""
    props = (image or {}).get("properties") or {}
    raw = props.get("block_device_mapping")
    if not raw:
        return []
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return []
    if not isinstance(raw, list):
        return []
    mappings = [m for m in raw if isinstance(m, dict)]
    if str(props.get("bdm_v2", "")).lower() not in TRUE_STRINGS:
        mappings = _from_legacy(mappings, props.get("root_device_name") or "vda")
    return [_clean(m) for m in mappings if not m.get("no_device") and m.get("source_type")]


def merge_image_bdms(bdms: list[dict], image: dict | None) -> list[dict]:
    """The request's BDMs with the image's merged in (see the module's docstring)."""
    defined = image_defined_bdms(image)
    if not defined:
        return bdms
    if any(b.get("boot_index") == 0 for b in defined):
        bdms = [b for b in bdms if not (b.get("boot_index") == 0 and b.get("source_type") == "image")]
    named = {b.get("device_name") for b in bdms if b.get("device_name")}
    return bdms + [b for b in defined if b.get("device_name") not in named]

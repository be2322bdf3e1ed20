"""Server documents exactly as Nova's view builder shapes them, per microversion."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from datetime import datetime

import asyncpg
import orjson
from aiohttp import web

from novalite.api import keys
from novalite.api.compute.common import compute_url, links, version
from novalite.compute.states import status_from_state

PROGRESS_STATUSES = ("ACTIVE", "BUILD", "REBUILD", "RESIZE", "VERIFY_RESIZE", "MIGRATING")
FAULT_STATUSES = ("ERROR", "DELETED")


# A detail page formats three thousand timestamps: orjson's formatting of a UTC datetime takes
# under half the time of replace() + isoformat() (and a fifth of strftime's).
_ISO_SECONDS = orjson.OPT_UTC_Z | orjson.OPT_OMIT_MICROSECONDS


def isotime(ts: datetime | None) -> str | None:
    """``2026-12-01T06:38:46Z``: Nova's timestamps (UTC, to the second)."""
    if ts is None:
        return None
    if ts.tzinfo is None or ts.utcoffset():  # never from Postgres (timestamptz is UTC); as before
        return ts.replace(microsecond=0, tzinfo=None).isoformat() + "Z"
    return orjson.dumps(ts, option=_ISO_SECONDS)[1:-1].decode()


@functools.lru_cache(maxsize=4096)  # a page of a thousand servers has a few dozen (project, host) pairs
def host_id(host: str | None, project_id: str) -> str:
    if not host:
        return ""
    return hashlib.sha224((project_id + host).encode()).hexdigest()


def server_status(inst: asyncpg.Record) -> str:
    if inst["deleted"]:
        return "DELETED"
    return status_from_state(inst["vm_state"], inst["task_state"])


def basic(request: web.Request, inst: asyncpg.Record) -> dict:
    uuid = str(inst["uuid"])
    return {"id": uuid, "name": inst["display_name"], "links": links(request, "servers", uuid)}


def fault_view(fault: Mapping | None, is_admin: bool) -> dict | None:
    """A fault's document: ``fault`` is a row of instance_faults, or its JSON (server_extras)."""
    if fault is None:
        return None
    created = fault["created_at"]
    if isinstance(created, str):
        created = datetime.fromisoformat(created)
    out = {"code": fault["code"], "created": isotime(created), "message": fault["message"]}
    if fault["details"] and (is_admin or fault["code"] != 500):
        out["details"] = fault["details"]
    return out


def show(
    request: web.Request,
    inst: asyncpg.Record,
    *,
    fault: Mapping | None,
    bdms: list[Mapping],
    addresses: dict,
    show_extended_attr: bool,
    show_extra_specs: bool,
    is_admin: bool,
    host_status: str | None = None,
    all_attributes: bool = True,
    server_groups: list[str] | None = None,
) -> dict:
    """The detailed server document (GET /servers/{id}, /servers/detail).

    ``all_attributes=False`` is Nova's PUT/rebuild answer before 2.75 (no AZ, config drive,
    key, usage, security groups, extended status/volumes, MAC/type on addresses);
    ``server_groups`` is shown when given (show from 2.71, PUT/rebuild too; never in detail)."""
    uuid = str(inst["uuid"])
    flavor = inst["flavor"]
    status = server_status(inst)
    ver = version(request)  # read once: a detail page builds a thousand of these
    base = compute_url(request)
    if ver >= (2, 47):
        flavor_doc = {
            "vcpus": flavor["vcpus"],
            "ram": flavor["memory_mb"],
            "disk": flavor["root_gb"],
            "ephemeral": flavor["ephemeral_gb"],
            "swap": flavor["swap"],
            "original_name": flavor["name"],
        }
        if show_extra_specs:
            flavor_doc["extra_specs"] = flavor.get("extra_specs") or {}
    else:
        flavor_doc = {
            "id": str(flavor["flavorid"]),
            "links": [{"rel": "bookmark", "href": f"{base}/flavors/{flavor['flavorid']}"}],
        }
    image: dict | str = ""
    if inst["image_ref"]:
        image = {
            "id": inst["image_ref"],
            "links": [{"rel": "bookmark", "href": f"{base}/images/{inst['image_ref']}"}],
        }
    server: dict = {
        "accessIPv4": str(inst["access_ip_v4"]) if inst["access_ip_v4"] else "",
        "accessIPv6": str(inst["access_ip_v6"]) if inst["access_ip_v6"] else "",
        "addresses": {} if inst["vm_state"] == "building" else (
            addresses if all_attributes else unextended(addresses)
        ),
        "created": isotime(inst["created_at"]),
        "flavor": flavor_doc,
        "hostId": host_id(inst["host"], inst["project_id"]),
        "id": uuid,
        "image": image,
        "links": links(request, "servers", uuid, base=base),
        "metadata": inst["metadata"] or {},
        "name": inst["display_name"],
        "status": status,
        "tenant_id": inst["project_id"],
        "user_id": inst["user_id"],
        "updated": isotime(inst["updated_at"]),
        "OS-DCF:diskConfig": "AUTO" if inst["auto_disk_config"] else "MANUAL",
    }
    if status in FAULT_STATUSES:
        f = fault_view(fault, is_admin)
        if f:
            server["fault"] = f
    if status in PROGRESS_STATUSES:
        server["progress"] = inst["progress"] or 0
    if all_attributes:
        server["OS-EXT-AZ:availability_zone"] = inst["availability_zone"] or ""
        server["config_drive"] = inst["config_drive"]
        server["key_name"] = inst["key_name"]
        server["OS-SRV-USG:launched_at"] = _usage_time(inst["launched_at"])
        server["OS-SRV-USG:terminated_at"] = _usage_time(inst["terminated_at"])
        if inst["security_groups"] and not inst["deleted"]:
            server["security_groups"] = [{"name": n} for n in inst["security_groups"]]
    if show_extended_attr:
        server["OS-EXT-SRV-ATTR:host"] = inst["host"]
        server["OS-EXT-SRV-ATTR:instance_name"] = instance_name(request, inst)
        server["OS-EXT-SRV-ATTR:hypervisor_hostname"] = inst["node"]
        if ver >= (2, 3):
            server["OS-EXT-SRV-ATTR:hostname"] = inst["hostname"]
            server["OS-EXT-SRV-ATTR:kernel_id"] = inst["kernel_id"]
            server["OS-EXT-SRV-ATTR:launch_index"] = inst["launch_index"]
            server["OS-EXT-SRV-ATTR:ramdisk_id"] = inst["ramdisk_id"]
            server["OS-EXT-SRV-ATTR:reservation_id"] = inst["reservation_id"]
            server["OS-EXT-SRV-ATTR:root_device_name"] = inst["root_device_name"]
            server["OS-EXT-SRV-ATTR:user_data"] = inst["user_data"]
    if all_attributes:
        server["OS-EXT-STS:task_state"] = inst["task_state"]
        server["OS-EXT-STS:vm_state"] = inst["vm_state"]
        server["OS-EXT-STS:power_state"] = inst["power_state"]
        attached = []
        for b in bdms:
            if b["volume_id"]:
                item = {"id": b["volume_id"]}
                if ver >= (2, 3):
                    item["delete_on_termination"] = b["delete_on_termination"]
                attached.append(item)
        server["os-extended-volumes:volumes_attached"] = attached
    if ver >= (2, 9):
        server["locked"] = bool(inst["locked"])
    if ver >= (2, 16) and host_status is not None:
        server["host_status"] = host_status
    if ver >= (2, 19):
        server["description"] = inst["display_description"]
    if ver >= (2, 26):
        server["tags"] = list(inst["tags"] or [])
    if ver >= (2, 63):
        server["trusted_image_certificates"] = None
    if server_groups is not None:
        server["server_groups"] = server_groups
    if ver >= (2, 73):
        server["locked_reason"] = inst["locked_reason"]
    if ver >= (2, 90) and not show_extended_attr:
        server["OS-EXT-SRV-ATTR:hostname"] = inst["hostname"]
    if ver >= (2, 96) and all_attributes:
        server["pinned_availability_zone"] = (inst["request_spec"] or {}).get("availability_zone")
    return server


def unextended(addresses: dict) -> dict:
    """Addresses without the OS-EXT-IPS type and MAC (Nova's extend_address=False)."""
    return {net: [{"addr": a["addr"], "version": a["version"]} for a in ips] for net, ips in addresses.items()}


def _usage_time(ts: datetime | None) -> str | None:
    # Nova prints these naive, with microseconds, no Z.
    if ts is None:
        return None
    if ts.tzinfo is None or ts.utcoffset():
        return ts.replace(tzinfo=None).isoformat()
    return orjson.dumps(ts, option=orjson.OPT_UTC_Z)[1:-2].decode()  # without the quotes and the Z


def instance_name(request: web.Request, inst: asyncpg.Record) -> str:
    return request.app[keys.CONFIG].compute.instance_name_template % inst["id"]

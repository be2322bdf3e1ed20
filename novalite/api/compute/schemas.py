"""Request bodies of the servers API as pydantic models, per microversion.

Fields that only exist from (or until) some microversion are listed in
``SERVER_FIELDS_BY_VERSION``; a body naming a field its microversion does not
have is rejected the way Nova's JSON schema rejects it.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import uuid as uuidlib
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from novalite.api import errors
from novalite.api import validation as shared


def _name(value: str) -> str:
    """Nova's `name` format: printable (no control or format characters), no edge whitespace."""
    if not shared.valid_name(value):
        raise ValueError(f"An invalid 'name' value was provided. The name must be: {shared.NAME_RULE}")
    return value


def _bool_like(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on", "t", "y"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "off", "f", "n"):
        return False
    raise ValueError(f"{value!r} is not of type 'boolean'")


def _positive_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not of type 'integer'")
    if isinstance(value, int):
        out = value
    elif isinstance(value, str) and re.fullmatch(r"\s*[0-9]+\s*", value):
        out = int(value)
    else:
        raise ValueError(f"{value!r} is not of type 'integer'")
    if out < 1:
        raise ValueError(f"{value!r} is less than the minimum of 1")
    return out


NovaBool = Annotated[bool, BeforeValidator(_bool_like)]
PositiveInt = Annotated[int, BeforeValidator(_positive_int)]
Name = Annotated[str, Field(min_length=1, max_length=255), AfterValidator(_name)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class NetworkRequest(_Strict):
    uuid: str | None = None
    port: str | None = None
    fixed_ip: str | None = None
    tag: str | None = Field(None, max_length=60)

    @field_validator("fixed_ip")
    @classmethod
    def _ip(cls, v: str | None) -> str | None:
        if v is not None:
            ipaddress.ip_address(v)
        return v

    @field_validator("port")
    @classmethod
    def _port_uuid(cls, v: str | None) -> str | None:
        if v is not None:
            uuidlib.UUID(v)
        return v


class LegacyBDM(_Strict):
    virtual_name: str | None = Field(None, max_length=255)
    volume_id: str | None = None
    snapshot_id: str | None = None
    volume_size: PositiveInt | None = None
    device_name: str | None = Field(None, min_length=1, max_length=255, pattern=r"^[a-zA-Z0-9._/-]*$")
    delete_on_termination: NovaBool | None = None
    no_device: Any = None
    connection_info: str | None = None


class BDMv2(LegacyBDM):
    source_type: Literal["volume", "image", "snapshot", "blank"] | None = None
    uuid: str | None = Field(None, min_length=1, max_length=255, pattern=r"^[a-zA-Z0-9._-]*$")
    image_id: str | None = None
    destination_type: Literal["local", "volume"] | None = None
    guest_format: str | None = Field(None, max_length=255)
    device_type: str | None = Field(None, max_length=255)
    disk_bus: str | None = Field(None, max_length=255)
    boot_index: int | str | None = None
    tag: str | None = Field(None, max_length=60)
    volume_type: str | None = Field(None, max_length=255)

    @field_validator("boot_index")
    @classmethod
    def _boot_index(cls, v: int | str | None) -> int | None:
        if v is None:
            return None
        if isinstance(v, str):
            if not re.fullmatch(r"-?[0-9]+", v):
                raise ValueError(f"{v!r} does not match '^-?[0-9]+$'")
            return int(v)
        return v


class SecurityGroupRef(_Strict):
    name: Name


class Personality(_Strict):
    path: str
    contents: str


class ServerCreate(_Strict):
    name: Name
    imageRef: str = ""
    flavorRef: str | int
    adminPass: str | None = None
    metadata: dict[Annotated[str, Field(min_length=1, max_length=255)], Annotated[str, Field(max_length=255)]] = {}
    networks: list[NetworkRequest] | Literal["auto", "none"] | None = None
    disk_config: Literal["AUTO", "MANUAL"] | None = Field(None, alias="OS-DCF:diskConfig")
    accessIPv4: str | None = None
    accessIPv6: str | None = None
    personality: list[Personality] | None = None
    availability_zone: Name | None = None
    block_device_mapping: list[LegacyBDM] | None = None
    block_device_mapping_v2: list[BDMv2] | None = None
    config_drive: NovaBool | None = None
    key_name: Name | None = None
    min_count: PositiveInt | None = None
    max_count: PositiveInt | None = None
    return_reservation_id: NovaBool = False
    security_groups: list[SecurityGroupRef] | None = None
    user_data: str | None = Field(None, max_length=65535)
    description: str | None = Field(None, max_length=255)
    tags: list[Annotated[str, Field(min_length=1, max_length=60, pattern=r"^[^,/]*$")]] | None = Field(
        None, max_length=50
    )
    trusted_image_certificates: list[str] | None = None
    host: str | None = Field(None, min_length=1, max_length=255)
    hypervisor_hostname: str | None = Field(None, min_length=1, max_length=255)
    hostname: str | None = Field(None, min_length=1, max_length=255)

    @field_validator("flavorRef")
    @classmethod
    def _flavor_ref(cls, v: str | int) -> str:
        v = str(v)
        if not v:
            raise ValueError("'' is too short")
        return v

    @field_validator("accessIPv4")
    @classmethod
    def _v4(cls, v: str | None) -> str | None:
        if v:
            ipaddress.IPv4Address(v)
        return v

    @field_validator("accessIPv6")
    @classmethod
    def _v6(cls, v: str | None) -> str | None:
        if v:
            ipaddress.IPv6Address(v)
        return v

    @field_validator("user_data")
    @classmethod
    def _base64(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                base64.b64decode(v, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"{v[:40]!r} is not a 'base64'") from None
        return v


# field → (first microversion that has it, first microversion that no longer has it)
SERVER_FIELDS_BY_VERSION: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "description": ((2, 19), (9, 0)),
    "tags": ((2, 52), (9, 0)),
    "personality": ((2, 1), (2, 57)),
    "trusted_image_certificates": ((2, 63), (9, 0)),
    "host": ((2, 74), (9, 0)),
    "hypervisor_hostname": ((2, 74), (9, 0)),
    "hostname": ((2, 90), (9, 0)),
}


def _loc(err: dict) -> str:
    """Every part of the error's pydantic ``loc``, list indices included, joined by "/"."""
    return "/".join(str(p) for p in err["loc"])


def validation_message(exc: ValidationError) -> str:
    """One line in the spirit of Nova's schema errors."""
    err = exc.errors()[0]
    if err["type"] == "extra_forbidden":
        return f"Additional properties are not allowed ('{err['loc'][-1]}' was unexpected)"
    if err["type"] == "missing":
        return f"'{err['loc'][-1]}' is a required property"
    value = err.get("input")
    msg = err["msg"].removeprefix("Value error, ")
    if msg.startswith("An invalid 'name' value"):  # Nova's format errors are the bare InvalidName message
        return msg
    return f"Invalid input for field/attribute {_loc(err)}. Value: {value}. {msg}"


_HOSTNAME = re.compile(r"[a-zA-Z0-9]+[a-zA-Z0-9-]*[a-zA-Z0-9]+")  # Nova's hostname (2.90 to 2.93)
_FQDN = re.compile(r"[a-zA-Z0-9-._]*")  # Nova's fqdn (hostname from 2.94, hypervisor_hostname)


def _check_hostnames(server: dict, version: tuple[int, int]) -> None:
    """Nova's hostname and fqdn patterns: what reaches the guest's hostname, its config
    drive and the DHCP host entry is letters, digits, '-', '.', '_' only."""
    for key in ("hostname", "hypervisor_hostname"):
        value = server.get(key)
        if not isinstance(value, str):
            continue
        if key == "hostname" and version < (2, 94):
            pattern, low, high = _HOSTNAME, 2, 63
        else:
            pattern, low, high = _FQDN, 1, 255
        if not low <= len(value) <= high or not pattern.fullmatch(value):
            raise errors.BadRequest(f"Invalid input for field/attribute {key}. Value: {value[:255]}. "
                                    f"'{value[:255]}' does not match '^{pattern.pattern}$'")


def parse_create(body: dict, version: tuple[int, int]) -> tuple[ServerCreate, dict]:
    """Validate a create body for a microversion; return the server model and the hints."""
    extra = set(body) - {"server", "os:scheduler_hints", "OS-SCH-HNT:scheduler_hints"}
    if extra:
        raise errors.BadRequest(f"Additional properties are not allowed ('{sorted(extra)[0]}' was unexpected)")
    server = body.get("server")
    if not isinstance(server, dict):
        raise errors.BadRequest("'server' is a required property" if server is None else "Invalid input for field/attribute server.")
    for name, (first, gone) in SERVER_FIELDS_BY_VERSION.items():
        if name in server and not first <= version < gone:
            raise errors.BadRequest(f"Additional properties are not allowed ('{name}' was unexpected)")
    if version >= (2, 37) and "networks" not in server:
        raise errors.BadRequest("'networks' is a required property")
    if version < (2, 37) and isinstance(server.get("networks"), str):
        raise errors.BadRequest(f"Invalid input for field/attribute networks. Value: {server['networks']}. "
                                f"'{server['networks']}' is not of type 'array'")
    if version < (2, 32) and isinstance(server.get("networks"), list):
        for item in server["networks"]:
            if isinstance(item, dict) and "tag" in item:
                raise errors.BadRequest("Additional properties are not allowed ('tag' was unexpected)")
    _check_hostnames(server, version)
    hints = body.get("os:scheduler_hints", body.get("OS-SCH-HNT:scheduler_hints", {}))
    if not isinstance(hints, dict):
        raise errors.BadRequest("Invalid input for field/attribute os:scheduler_hints. Value must be an object.")
    try:
        model = ServerCreate.model_validate(server)
    except ValidationError as exc:
        raise errors.BadRequest(validation_message(exc)) from None
    if isinstance(model.networks, list):
        for net in model.networks:
            if version >= (2, 37) and net.uuid is not None:
                try:
                    uuidlib.UUID(net.uuid)
                except ValueError:
                    raise errors.BadRequest(
                        f"Invalid input for field/attribute uuid. Value: {net.uuid}. '{net.uuid}' is not a 'uuid'"
                    ) from None
    return model, hints


class ServerUpdate(_Strict):
    name: Name | None = None
    description: str | None = Field(None, max_length=255)
    hostname: str | None = Field(None, min_length=1, max_length=255)
    accessIPv4: str | None = None
    accessIPv6: str | None = None
    disk_config: Literal["AUTO", "MANUAL"] | None = Field(None, alias="OS-DCF:diskConfig")


def parse_update(body: dict, version: tuple[int, int]) -> dict:
    server = body.get("server")
    if not isinstance(server, dict):
        raise errors.BadRequest("'server' is a required property")
    for name in ("description", "hostname"):
        first, gone = SERVER_FIELDS_BY_VERSION[name]
        if name in server and not first <= version < gone:
            raise errors.BadRequest(f"Additional properties are not allowed ('{name}' was unexpected)")
    _check_hostnames(server, version)
    try:
        model = ServerUpdate.model_validate(server)
    except ValidationError as exc:
        raise errors.BadRequest(validation_message(exc)) from None
    return model.model_dump(exclude_unset=True, by_alias=True)


class ServerRebuild(_Strict):
    """Nova's rebuild body (schemas/servers.py rebuild .. rebuild_v294), fields gated by microversion."""

    imageRef: str = Field(min_length=1)
    name: Name | None = None
    adminPass: str | None = None
    metadata: dict[Annotated[str, Field(min_length=1, max_length=255)], Annotated[str, Field(max_length=255)]] | None \
        = None
    preserve_ephemeral: NovaBool = False
    disk_config: Literal["AUTO", "MANUAL"] | None = Field(None, alias="OS-DCF:diskConfig")
    accessIPv4: str | None = None
    accessIPv6: str | None = None
    personality: list[Personality] | None = None
    description: str | None = Field(None, max_length=255)
    key_name: Name | None = None
    user_data: str | None = Field(None, max_length=65535)
    trusted_image_certificates: list[str] | None = None
    hostname: str | None = Field(None, min_length=1, max_length=255)

    _v4 = field_validator("accessIPv4")(ServerCreate._v4.__func__)  # type: ignore[attr-defined]
    _v6 = field_validator("accessIPv6")(ServerCreate._v6.__func__)  # type: ignore[attr-defined]
    _base64 = field_validator("user_data")(ServerCreate._base64.__func__)  # type: ignore[attr-defined]


# rebuild field → (first microversion that has it, first microversion that no longer has it)
REBUILD_FIELDS_BY_VERSION: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "description": ((2, 19), (9, 0)),
    "key_name": ((2, 54), (9, 0)),
    "personality": ((2, 1), (2, 57)),
    "user_data": ((2, 57), (9, 0)),
    "trusted_image_certificates": ((2, 63), (9, 0)),
    "hostname": ((2, 90), (9, 0)),
}


def parse_rebuild(value: object, version: tuple[int, int]) -> ServerRebuild:
    """Validate the ``rebuild`` action's body for a microversion (unset fields stay unset)."""
    if not isinstance(value, dict):
        raise errors.BadRequest(f"Invalid input for field/attribute rebuild. Value: {value}. "
                                f"{value!r} is not of type 'object'")
    for name, (first, gone) in REBUILD_FIELDS_BY_VERSION.items():
        if name in value and not first <= version < gone:
            raise errors.BadRequest(f"Additional properties are not allowed ('{name}' was unexpected)")
    try:
        return ServerRebuild.model_validate(value)
    except ValidationError as exc:
        raise errors.BadRequest(validation_message(exc)) from None


ImageMetadata = dict[Annotated[str, Field(min_length=1, max_length=255)], Annotated[str, Field(max_length=255)]]


class CreateImage(_Strict):
    """Nova's createImage body (schemas/servers.py create_image)."""

    name: Name
    metadata: ImageMetadata = {}


class CreateBackup(_Strict):
    """Nova's createBackup body (schemas/create_backup.py): rotation a non-negative integer (or digits)."""

    name: Name
    backup_type: str
    rotation: int | str
    metadata: ImageMetadata = {}

    @field_validator("rotation")
    @classmethod
    def _rotation(cls, v: int | str) -> int:
        if isinstance(v, bool):
            raise ValueError(f"{v!r} is not of type 'integer', 'string'")
        if isinstance(v, str):
            if not re.fullmatch(r"[0-9]+", v):
                raise ValueError(f"{v!r} does not match '^[0-9]*$'")
            return int(v)
        if v < 0:
            raise ValueError(f"{v} is less than the minimum of 0")
        return v


def parse_image_action(name: str, value: object) -> CreateImage | CreateBackup:
    """Validate a createImage or createBackup action's body."""
    if not isinstance(value, dict):
        raise errors.BadRequest(f"Invalid input for field/attribute {name}. Value: {value}. "
                                f"{value!r} is not of type 'object'")
    model = CreateBackup if name == "createBackup" else CreateImage
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise errors.BadRequest(validation_message(exc)) from None

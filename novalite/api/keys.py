"""What handlers look up on the application: one typed key per service ``app.py`` wires.

``app.py`` sets each key once while the process starts (``init_app`` and the
cleanup contexts); handlers read ``request.app[keys.X]`` and never set anything.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import asyncpg
from aiohttp import web

from novalite.config import Config
from novalite.context import RequestContext
from novalite.foreground import Foreground
from novalite.policy import Enforcer

if TYPE_CHECKING:  # the services sit below the API; only their types are named here
    pass

CONFIG = web.AppKey("config", Config)
POLICY = web.AppKey("policy", Enforcer)  # Nova's rules
GLANCE_POLICY = web.AppKey("glance_policy", Enforcer)
NEUTRON_POLICY = web.AppKey("neutron_policy", Enforcer)
CINDER_POLICY = web.AppKey("cinder_policy", Enforcer)
KEYSTONE_POLICY = web.AppKey("keystone_policy", Enforcer)
FOREGROUND = web.AppKey("foreground", Foreground)
DB = web.AppKey("db", asyncpg.Pool)  # the API's pool
DB_WORKERS = web.AppKey("db_workers", asyncpg.Pool)  # background work: conductor, scheduler, hosts
DSN = web.AppKey("dsn", str)
IDENTITY = web.AppKey("identity", "IdentityService")
IMAGE_STORE = web.AppKey("image_store", "ImageStore")
HOSTS = web.AppKey("hosts", "dict[str, ComputeHost]")  # one per configured host: its driver, image cache
HOSTS_DOWN = web.AppKey("hosts_down", set)  # hosts whose libvirt did not answer at start (started late)
LOCKS = web.AppKey("locks", "InstanceLocks")
NETWORK_API = web.AppKey("network_api", "NetworkAPI")
METADATA = web.AppKey("metadata", "MetadataListeners")  # the metadata service's listeners
VOLUME_API = web.AppKey("volume_api", "VolumeAPI")
VOLUME_BUILD = web.AppKey("volume_build", "VolumeBuild")
VOLUME_ATTACHMENTS = web.AppKey("volume_attachments", "VolumeAttachments")
INTERFACES = web.AppKey("interfaces", "InterfaceAttachments")  # os-interface, multinic
COMPUTE_API = web.AppKey("compute_api", "ComputeAPI")
CONDUCTOR = web.AppKey("conductor", "Conductor")
SCHEDULER = web.AppKey("scheduler", "Scheduler")
COMPUTES = web.AppKey("computes", "dict[str, ComputeManager]")
HOSTS_READY = web.AppKey("hosts_ready", asyncio.Event)  # the hosts are up, recovery done, builds scheduled
SERVER_ACTIONS = web.AppKey("server_actions", "ServerActions")
WATCHDOG = web.AppKey("watchdog", "Watchdog")
RETENTION = web.AppKey("retention", "Retention")
METRICS = web.AppKey("metrics", "ScrapeSources")  # what a scrape of /metrics reads
SERIAL_CONSOLES = web.AppKey("serial_consoles", "SerialConsoles")  # console URLs and their websocket
TEST_IMAGE_TASK = web.AppKey("test_image_task", asyncio.Task)

# What the middlewares put on each request.
REQUEST_ID = web.RequestKey("request_id", str)
TOKEN = web.RequestKey("token", "TokenInfo")
CONTEXT = web.RequestKey("ctx", RequestContext)
VERSION = web.RequestKey("version", tuple)  # the compute microversion, (major, minor)

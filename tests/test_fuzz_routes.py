"""Every registered route, fed malformed input, answers like an API and not like a crash.

The routes come from ``app.router.routes()`` of the running cloud, so a new
route is fuzzed without touching this file. Per route (seeded, bounded): path
parameters replaced by garbage, generic bodies, each field of a known-good
body given the wrong type, dropped or joined by an extra one, bad microversion
headers, bad query parameters and wrong content types. The rule for every
answer: no 5xx, no traceback or SQL in the body, no hang; and the server still
answers afterwards. All failures are gathered and shown together.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

import yarl
from aiohttp import web

from tests.conftest import add_image, wait_for_status

SEED = 15
MAX_PER_ROUTE = 48
CONCURRENCY = 12
REQUEST_TIMEOUT = 15.0

# Text that must never reach a client: Python tracebacks, driver and SQL errors.
LEAKS = ("Traceback", "asyncpg", "psycopg", "syntax error at or near", "violates", "SELECT ", "INSERT INTO",
         "UPDATE ", "DELETE FROM", "File \"/", "sqlstate")

BAD_IDS = [
    "../../etc/passwd",
    "..%2f..%2fetc%2fpasswd",
    "%2e%2e%2f",
    "a" * 4000,
    "ünïcødé☃",
    "\u200b",
    "1 OR 1=1",
    "' OR '1'='1",
    "0",
    "-1",
    "99999999999999999999999",
    "%00",
    "1.5",
    "<script>",
]

WRONG_VALUES = [
    None,
    0,
    -1,
    -(2**31),
    2**63,
    1.5,
    1e308,
    True,
    [],
    {},
    [1, "a"],
    {"x": {"y": None}},
    "",
    " ",
    "x" * 70000,
    "\u200bname",
    "name\x00\x01\n\r",
    "\u202eevil",
    "ünï",
    "' OR 1=1 --",
    "../../etc/passwd",
    "<a>&\"']]>",
    "__HUGE_FLOAT__",
]

# JSON that json.dumps cannot write: a number beyond any float.
HUGE_FLOAT = (b'"__HUGE_FLOAT__"', b"1e999")

GENERIC_BODIES = [
    {},
    [],
    None,
    "str",
    1e308,
    -1,
    True,
    {"x" * 300: "y"},
    {"a": "b" * 500000},
]

BAD_QUERIES = [
    {"limit": "-1"},
    {"limit": "abc"},
    {"limit": "99999999999999999999"},
    {"limit": "1.5"},
    {"marker": "garbage"},
    {"marker": str(uuid.UUID(int=0))},
    {"sort_key": "1;DROP TABLE instances"},
    {"sort_dir": "sideways"},
    {"sort": "name:sideways"},
    {"changes-since": "notadate"},
    {"changes-since": "2020-13-45T99:99:99"},
    {"changes-before": "-1"},
    {"all_tenants": "perhaps"},
    {"deleted": "maybe"},
    {"name": "\x00"},
    {"name": "("},
    {"status": "\u200b"},
    {"ip": "["},
    {"flavor": "' OR 1=1"},
    {"image": "../../etc/passwd"},
    {"id": "not-a-uuid"},
    {"visibility": "everyone"},
    {"member_status": "x"},
    {"project_id": "%"},
    {"tenant_id": "1 OR 1=1"},
    {"start": "yesterday", "end": "tomorrow"},
    {"detailed": "yes please"},
    {"fields": "%"},
    {"domain_id": "\u202e"},
    {"enabled": "sometimes"},
    {"user.id": "x", "scope.project.id": "y"},
    {"tags": ",,,"},
    {"size_min": "-1"},
]

BAD_VERSIONS = [
    {"OpenStack-API-Version": "compute 2.999"},
    {"OpenStack-API-Version": "compute abc"},
    {"OpenStack-API-Version": "compute 3.0"},
    {"OpenStack-API-Version": "compute 2."},
    {"OpenStack-API-Version": "compute"},
    {"OpenStack-API-Version": "compute 2.99999999999999999999999"},
    {"OpenStack-API-Version": "volume 3.999"},
    {"OpenStack-API-Version": "volume abc"},
    {"OpenStack-API-Version": "latest"},
    {"X-OpenStack-Nova-API-Version": "abc"},
    {"X-OpenStack-Nova-API-Version": "2.999"},
    {"X-OpenStack-Nova-API-Version": "-2.1"},
]

BAD_CONTENT = [
    ("text/plain", b"{}"),
    ("application/xml", b"<server/>"),
    ("application/json", b"{"),
    ("application/json", b"\xff\xfe\x00garbage"),
    ("application/json", b"[" * 50000),
    ("application/json", b'{"a": ' * 20000),
    ("application/json", b"NaN"),
    ("application/x-www-form-urlencoded", b"a=b"),
    ("multipart/form-data; boundary=x", b"--x--"),
    ("application/openstack-images-v2.1-json-patch", b'[{"op": "explode"}]'),
]


def seed_bodies(ids: dict) -> dict[tuple[str, str], list]:
    """Known-good bodies per (method, route); a route without one is fuzzed with generic bodies."""
    c = "/compute/v2.1"
    v = "/volume/v3/{project_id}"
    i = "/identity/v3"
    login = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "demo", "domain": {"name": "Default"}, "password": ids["demo_password"]}}},
        "scope": {"project": {"name": "demo", "domain": {"name": "Default"}}}}}
    return {
        ("POST", f"{c}/servers"): [{"server": {"name": "fz", "imageRef": ids["image_id"], "flavorRef": "1",
                                               "networks": "none", "metadata": {"a": "b"}}}],
        ("PUT", f"{c}/servers/{{server_id}}"): [{"server": {"name": "renamed", "description": "d"}}],
        ("POST", f"{c}/servers/{{server_id}}/action"): [
            {"reboot": {"type": "SOFT"}}, {"os-stop": None}, {"createImage": {"name": "snap", "metadata": {}}},
            {"rebuild": {"imageRef": ids["image_id"], "name": "rb"}}, {"resize": {"flavorRef": "2"}},
            {"os-getConsoleOutput": {"length": 10}}, {"addSecurityGroup": {"name": "default"}},
        ],
        ("POST", f"{c}/servers/{{server_id}}/metadata"): [{"metadata": {"k": "v"}}],
        ("PUT", f"{c}/servers/{{server_id}}/metadata"): [{"metadata": {"k": "v"}}],
        ("PUT", f"{c}/servers/{{server_id}}/metadata/{{key}}"): [{"meta": {"{key}": "v"}}],
        ("POST", f"{c}/servers/{{server_id}}/os-volume_attachments"): [
            {"volumeAttachment": {"volumeId": ids["volume_id"], "device": "/dev/vdb"}}],
        ("PUT", f"{c}/servers/{{server_id}}/os-volume_attachments/{{volume_id}}"): [
            {"volumeAttachment": {"volumeId": ids["volume_id"], "delete_on_termination": True}}],
        ("POST", f"{c}/flavors"): [{"flavor": {"name": "fzf", "ram": 64, "vcpus": 1, "disk": 1, "id": "fz1",
                                               "swap": 0, "rxtx_factor": 1.0, "os-flavor-access:is_public": True}}],
        ("PUT", f"{c}/flavors/{{flavor_id}}"): [{"flavor": {"description": "d"}}],
        ("POST", f"{c}/flavors/{{flavor_id}}/action"): [
            {"addTenantAccess": {"tenant": ids["demo_project"]}},
            {"removeTenantAccess": {"tenant": ids["demo_project"]}}],
        ("POST", f"{c}/flavors/{{flavor_id}}/os-extra_specs"): [{"extra_specs": {"hw:cpu_policy": "shared"}}],
        ("PUT", f"{c}/flavors/{{flavor_id}}/os-extra_specs/{{key}}"): [{"{key}": "v"}],
        ("POST", f"{c}/os-keypairs"): [{"keypair": {"name": "fzkp", "type": "ssh"}}],
        ("PUT", f"{c}/os-services/{{service_id}}"): [{"status": "disabled", "disabled_reason": "x"}],
        ("PUT", f"{c}/os-quota-sets/{{project_id}}"): [{"quota_set": {"instances": 50, "cores": 100}}],
        ("PUT", f"{c}/os-quota-class-sets/{{class_name}}"): [{"quota_class_set": {"instances": 50}}],
        ("POST", f"{c}/os-server-groups"): [{"server_group": {"name": "fzg", "policy": "affinity"}},
                                            {"server_group": {"name": "fzg", "policies": ["anti-affinity"]}}],
        ("POST", "/image/v2/images"): [{"name": "fzi", "disk_format": "qcow2", "container_format": "bare",
                                        "visibility": "private", "min_ram": 0, "tags": ["t"], "prop": "v"}],
        ("PATCH", "/image/v2/images/{image_id}"): [[{"op": "replace", "path": "/name", "value": "x"},
                                                   {"op": "add", "path": "/prop", "value": "y"}]],
        ("POST", "/image/v2/images/{image_id}/members"): [{"member": ids["demo_project"]}],
        ("PUT", "/image/v2/images/{image_id}/members/{member_id}"): [{"status": "accepted"}],
        ("POST", f"{i}/auth/tokens"): [login],
        ("POST", f"{i}/projects"): [{"project": {"name": "fzp", "description": "d", "enabled": True}}],
        ("PATCH", f"{i}/projects/{{project_id}}"): [{"project": {"name": "fzp2", "enabled": True}}],
        ("POST", f"{i}/users"): [{"user": {"name": "fzu", "password": "pw", "email": "a@b",
                                           "default_project_id": ids["demo_project"]}}],
        ("PATCH", f"{i}/users/{{user_id}}"): [{"user": {"name": "fzu2", "password": "pw2", "enabled": True}}],
        ("POST", f"{v}/volumes"): [{"volume": {"size": 1, "name": "fzv", "description": "d",
                                               "metadata": {"a": "b"}}}],
        ("PUT", v + "/volumes/{volume_id}"): [{"volume": {"name": "n", "description": "d"}}],
        ("POST", v + "/volumes/{volume_id}/metadata"): [{"metadata": {"a": "b"}}],
        ("PUT", v + "/volumes/{volume_id}/metadata"): [{"metadata": {"a": "b"}}],
        ("POST", v + "/volumes/{volume_id}/action"): [{"os-extend": {"new_size": 2}},
                                                      {"os-set_bootable": {"bootable": True}}],
        ("POST", f"{v}/snapshots"): [{"snapshot": {"volume_id": ids["volume_id"], "name": "s", "force": True}}],
        ("PUT", v + "/snapshots/{snapshot_id}"): [{"snapshot": {"name": "n", "description": "d"}}],
        ("PUT", v + "/os-quota-sets/{target_id}"): [{"quota_set": {"volumes": 20, "gigabytes": 100}}],
    }


@dataclass
class Case:
    method: str
    route: str
    path: str
    what: str
    user: str = "admin"
    body: bytes | None = None
    content_type: str | None = "application/json"
    headers: dict = field(default_factory=dict)


def _dump(value) -> bytes:
    return json.dumps(value).encode().replace(*HUGE_FLOAT)


def _leaf_paths(value, prefix: tuple = ()) -> Iterator[tuple]:
    """Every position in a JSON document, containers included (the root excepted)."""
    if prefix:
        yield prefix
    if isinstance(value, dict):
        for k, sub in value.items():
            yield from _leaf_paths(sub, (*prefix, k))
    elif isinstance(value, list):
        for n, sub in enumerate(value):
            yield from _leaf_paths(sub, (*prefix, n))


def _replaced(doc, path: tuple, new, drop: bool = False):
    doc = json.loads(json.dumps(doc))
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    if drop:
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return doc


def _with_extra(doc, path: tuple):
    doc = json.loads(json.dumps(doc))
    target = doc
    for step in path:
        target = target[step]
    if isinstance(target, dict):
        target["fuzz_extra_field"] = "x"
    elif isinstance(target, list):
        target.append({"fuzz": True})
    return doc


def _fill(template: str, values: dict) -> str:
    path = template
    for name, value in values.items():
        path = path.replace("{" + name + "}", value)
    return path


def _param_names(template: str) -> list[str]:
    names, rest = [], template
    while "{" in rest:
        rest = rest[rest.index("{") + 1:]
        names.append(rest[: rest.index("}")])
    return names


def _real_values(template: str, ids: dict) -> dict[str, str]:
    """A real id for each path parameter (the caller's project for volume and quota paths)."""
    values = {}
    for name in _param_names(template):
        if name == "project_id" and template.startswith("/identity"):
            values[name] = ids["fuzz_project"]
        elif name == "project_id":
            values[name] = ids["admin_project"]
        else:
            values[name] = ids.get(name, "x")
    return values


def cases_for(method: str, template: str, ids: dict, seeds: dict, rng: random.Random) -> list[Case]:
    real = _real_values(template, ids)
    real_path = _fill(template, {k: quote(v, safe="") for k, v in real.items()})
    out: list[Case] = []

    def add(what: str, **kw) -> None:
        kw.setdefault("path", real_path)
        out.append(Case(method=method, route=template, what=what, **kw))

    # Path parameters: each one garbage, the others real; quoted and, for some, raw.
    for name in real:
        for bad in rng.sample(BAD_IDS, 6) + [str(uuid.UUID(int=rng.getrandbits(128)))]:
            values = {k: quote(v, safe="") for k, v in real.items()}
            values[name] = quote(bad, safe="")
            add(f"path {name}={bad[:40]!r}", path=_fill(template, values))
        values = {k: quote(v, safe="") for k, v in real.items()}
        values[name] = rng.choice(["../../etc/passwd", "..", "%2e%2e%2f", "a/b"])
        add(f"raw path {name}={values[name]!r}", path=_fill(template, values))
    add("member token", user="demo")
    add("garbage token", user="", headers={"X-Auth-Token": "garbage"})

    # Microversions (every route: the middleware decides which apply).
    for hdr in rng.sample(BAD_VERSIONS, 3):
        add(f"header {hdr}", headers=hdr)

    if method in ("GET", "HEAD"):
        for query in rng.sample(BAD_QUERIES, 8):
            add(f"query {query}", path=real_path + "?" + urlencode(query))
        return out[:MAX_PER_ROUTE]

    # Bodies: generic ones, then mutations of each seed.
    for body in rng.sample(GENERIC_BODIES, 5):
        add(f"body {json.dumps(body)[:60]}", body=_dump(body))
    for ctype, raw in rng.sample(BAD_CONTENT, 5):
        add(f"content {ctype} {raw[:20]!r}", body=raw, content_type=ctype)
    bodies: list[Case] = []
    for seed in seeds.get((method, template), []):
        seed = json.loads(json.dumps(seed).replace("{key}", real.get("key", "k")))
        ctype = "application/openstack-images-v2.1-json-patch" if method == "PATCH" and template.startswith(
            "/image") else "application/json"
        bodies.append(Case(method, template, real_path, "seed", body=_dump(seed), content_type=ctype))
        for top in seed if isinstance(seed, dict) else []:
            for generic in (None, [], "s", 1):
                bodies.append(Case(method, template, real_path, f"{top}={generic!r}",
                                   body=_dump({top: generic}), content_type=ctype))
        for pos in _leaf_paths(seed):
            for wrong in rng.sample(WRONG_VALUES, 3):
                bodies.append(Case(method, template, real_path, f"{pos}={json.dumps(wrong)[:40]}",
                                   body=_dump(_replaced(seed, pos, wrong)), content_type=ctype))
            bodies.append(Case(method, template, real_path, f"drop {pos}",
                               body=_dump(_replaced(seed, pos, None, drop=True)), content_type=ctype))
            bodies.append(Case(method, template, real_path, f"extra in {pos}",
                               body=_dump(_with_extra(seed, pos)), content_type=ctype))
    room = max(MAX_PER_ROUTE * 2 - len(out), 0)  # seeded routes get a bigger share
    if len(bodies) > room:
        bodies = bodies[:1] + rng.sample(bodies[1:], room - 1)
    return out + bodies


async def _real_ids(cloud) -> dict:
    """One real object of each kind the routes name, created where cheap."""
    ids: dict = {"demo_password": cloud.creds["demo"]}

    async def get(path: str, key: str, user: str = "admin") -> list:
        status, body, _ = await cloud.request("GET", path, user=user)
        assert status == 200, (path, body)
        return body[key]

    projects = {p["name"]: p["id"] for p in await get("/identity/v3/projects", "projects")}
    ids["admin_project"], ids["demo_project"] = projects["admin"], projects["demo"]
    _, body, _ = await cloud.request("POST", "/identity/v3/projects", user="admin",
                                     json_body={"project": {"name": "fuzzproj"}})
    ids["fuzz_project"] = body["project"]["id"]
    _, body, _ = await cloud.request("POST", "/identity/v3/users", user="admin",
                                     json_body={"user": {"name": "fuzzuser", "password": "pw"}})
    ids["user_id"] = body["user"]["id"]
    ids["role_id"] = (await get("/identity/v3/roles?name=member", "roles"))[0]["id"]
    ids["domain_id"] = "default"
    ids["image_id"] = await add_image(cloud, "fuzzimg")
    ids["member_id"] = ids["demo_project"]
    ids["tag"] = "t"
    status, body, _ = await cloud.compute("POST", "/flavors", user="admin", json_body={
        "flavor": {"name": "fuzzflavor", "ram": 64, "vcpus": 1, "disk": 1, "id": "fuzzflavor"}})
    assert status == 200, body
    ids["flavor_id"] = "fuzzflavor"
    ids["key"] = "hw:cpu_policy"
    await cloud.compute("POST", "/flavors/fuzzflavor/os-extra_specs", user="admin",
                        json_body={"extra_specs": {"hw:cpu_policy": "shared"}})
    status, body, _ = await cloud.compute("POST", "/os-keypairs", user="admin", json_body={"keypair": {"name": "fzk"}})
    ids["name"] = "fzk"
    status, body, _ = await cloud.compute("POST", "/os-server-groups", user="admin",
                                          json_body={"server_group": {"name": "g", "policies": ["affinity"]}})
    ids["group_id"] = body["server_group"]["id"]
    hyps = (await cloud.compute("GET", "/os-hypervisors", user="admin"))[1]["hypervisors"]
    ids["hypervisor_id"] = str(hyps[0]["id"])
    ids["pattern"] = hyps[0]["hypervisor_hostname"]
    services = (await cloud.compute("GET", "/os-services", user="admin", version="2.53"))[1]["services"]
    ids["service_id"] = str(services[0]["id"])
    ids["class_name"] = "default"
    ids["tenant_id"] = ids["admin_project"]
    ids["target_id"] = ids["admin_project"]
    status, body, _ = await cloud.compute("POST", "/servers", user="admin", json_body={"server": {
        "name": "fuzzvm", "imageRef": ids["image_id"], "flavorRef": "1", "networks": "none"}}, version="2.latest")
    assert status == 202, body
    ids["server_id"] = body["server"]["id"]
    await wait_for_status(cloud, ids["server_id"], "ACTIVE", user="admin")
    ids["request_id"] = (await cloud.compute("GET", f"/servers/{ids['server_id']}/os-instance-actions",
                                             user="admin"))[1]["instanceActions"][0]["request_id"]
    ids["network"] = "private"
    vol = f"/volume/v3/{ids['admin_project']}"
    status, body, _ = await cloud.request("POST", f"{vol}/volumes", user="admin",
                                          json_body={"volume": {"size": 1, "name": "fuzzvol"}})
    assert status == 202, body
    ids["volume_id"] = body["volume"]["id"]
    status, body, _ = await cloud.request("POST", f"{vol}/snapshots", user="admin",
                                          json_body={"snapshot": {"volume_id": ids["volume_id"], "force": True}})
    ids["snapshot_id"] = body["snapshot"]["id"] if status == 202 else str(uuid.uuid4())
    types = await get(f"{vol}/types", "volume_types")
    ids["type_id"] = types[0]["id"] if types else str(uuid.uuid4())
    net = "/networking/v2.0"
    for key, path, coll in (("network_id", "networks", "networks"), ("subnet_id", "subnets", "subnets"),
                            ("port_id", "ports", "ports"), ("group_id_sg", "security-groups", "security_groups")):
        items = await get(f"{net}/{path}", coll)
        ids[key] = items[0]["id"] if items else str(uuid.uuid4())
    ids["alias"] = (await get(f"{net}/extensions", "extensions"))[0]["alias"]
    return ids


def _route_table(app: web.Application) -> list[tuple[str, str]]:
    seen = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        template = info.get("formatter") or info.get("path")
        if template and (route.method, template) not in seen:
            seen.add((route.method, template))
    return sorted(seen, key=lambda mt: (mt[0] == "DELETE", mt[1], mt[0]))


async def test_every_route_survives_malformed_input(cloud):
    rng = random.Random(SEED)
    ids = await _real_ids(cloud)
    seeds = seed_bodies(ids)
    routes = _route_table(cloud.app)
    assert len(routes) > 150
    cases = []
    for method, template in routes:
        # The security-group path names its id group_id, like the server group's: give it its own.
        local = dict(ids, group_id=ids["group_id_sg"]) if template.startswith("/networking") else ids
        cases.extend(cases_for(method, template, local, seeds, rng))
    tokens = {"admin": await cloud.token("admin"), "demo": await cloud.token("demo")}
    sem = asyncio.Semaphore(CONCURRENCY)
    failures: list[str] = []

    async def run(case: Case) -> None:
        headers = {"X-Auth-Token": tokens[case.user]} if case.user else {}
        if case.body is not None and case.content_type:
            headers["Content-Type"] = case.content_type
        headers.update(case.headers)
        url = yarl.URL(cloud.url + case.path, encoded=True)
        async with sem:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    async with cloud.session.request(case.method, url, data=case.body, headers=headers) as r:
                        status, text = r.status, await r.text(errors="replace")
            except TimeoutError:
                failures.append(f"{case.method} {case.route} [{case.what}] {case.path[:120]}: no answer")
                return
        leak = next((m for m in LEAKS if m in text), None)
        if status >= 500 or leak:
            body = case.body[:150] if case.body else b""
            failures.append(f"{case.method} {case.route} [{case.what}] {case.path[:120]} body={body!r}"
                            f" -> {status} {('leaks ' + leak) if leak else ''} {text[:300]!r}")

    started = time.monotonic()
    # Everything but DELETE first, all at once; then the deletes, which remove the real objects.
    await asyncio.gather(*(run(c) for c in cases if c.method != "DELETE"))
    await asyncio.gather(*(run(c) for c in cases if c.method == "DELETE"))
    elapsed = time.monotonic() - started
    print(f"fuzzed {len(routes)} routes with {len(cases)} requests in {elapsed:.1f}s")

    # Still answering: a version document, a token check and a list.
    async with cloud.session.get(f"{cloud.url}/compute/") as r:
        assert r.status == 200
    admin = tokens["admin"]
    status, _, _ = await cloud.request("GET", "/identity/v3/auth/tokens", user="admin",
                                       headers={"X-Subject-Token": admin})
    assert status == 200
    status, _, _ = await cloud.compute("GET", "/servers", user="demo")
    assert status == 200
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(sorted(failures))
    assert elapsed < 60, f"fuzzing took {elapsed:.0f}s"

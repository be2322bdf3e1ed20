"""adminPass: the create answer shows the password the guest gets; Postgres never holds it."""

from __future__ import annotations

from conftest import add_image, start_cloud, stop_cloud, tables_containing, wait_for_status


async def create(cloud, image: str, name: str, **extra) -> dict:
    server = {"name": name, "imageRef": image, "flavorRef": "1", "networks": "none", "config_drive": True, **extra}
    status, body, _ = await cloud.compute("POST", "/servers", json_body={"server": server}, version="2.37")
    assert status == 202, body
    return body["server"]


async def test_the_password_is_in_no_table_once_active(cloud):
    image = await add_image(cloud)
    given = await create(cloud, image, "pw-given", adminPass="Given-Pass-0x5eed")
    assert given["adminPass"] == "Given-Pass-0x5eed"
    made = await create(cloud, image, "pw-made")
    assert len(made["adminPass"]) == 12 and made["adminPass"].isalnum()
    for server in (given, made):
        await wait_for_status(cloud, server["id"], "ACTIVE")
    assert await tables_containing(cloud, "pw-given")  # the search does find what is stored
    assert await tables_containing(cloud, "Given-Pass-0x5eed") == []
    assert await tables_containing(cloud, made["adminPass"]) == []


async def test_enable_instance_password_off_answers_no_password(pg_dsn, tmp_path, monkeypatch):
    monkeypatch.setenv("NOVALITE_API__ENABLE_INSTANCE_PASSWORD", "false")
    cloud = await start_cloud(pg_dsn, tmp_path)
    try:
        image = await add_image(cloud)
        server = await create(cloud, image, "no-pw")
        assert "adminPass" not in server
        given = await create(cloud, image, "given-pw", adminPass="Still-Secret-99")
        assert "adminPass" not in given  # as Nova: the answer leaves it out, the guest still gets it
        for s in (server, given):
            await wait_for_status(cloud, s["id"], "ACTIVE")
        assert await tables_containing(cloud, "Still-Secret-99") == []
    finally:
        await stop_cloud(cloud)

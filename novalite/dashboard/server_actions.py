"""The instance page's action buttons: which ones a server's state and the user's policy allow, and
the compute API request each one sends.

A button shows only when Nova would take its action now: the vm_state and task_state lists are the
compute layer's own (``novalite.compute.actions.SPECS``, Nova's ``check_instance_state``) and the
policy rule is the one the API enforces, checked with the API's own enforcer. The API still decides:
a button on a page gone stale gets the API's error (a 409, say) shown on the page."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from multidict import MultiDictProxy

from novalite.api import keys
from novalite.compute.actions import SPECS, ActionSpec
from novalite.dashboard.sessions import Session


@dataclass(frozen=True)
class Button:
    """One action button: its label, when it shows, the policy rule, the API body it sends."""

    label: str
    rule: str
    body: Callable[[MultiDictProxy], dict | None]  # the form → the POST /action body (None: DELETE the server)
    spec: ActionSpec | None = None  # None: any state (delete, lock, unlock: their own test below)
    confirm: str | None = None  # a destructive action asks first: "{label} {name}?" and this (None: no question)
    picker: str = ""  # the form's one field: "flavor" or "image" (a select), "name" (text)


def simple(action: str, value: object = None) -> Callable[[MultiDictProxy], dict]:
    return lambda form: {action: value}


def field(action: str, key: str, picker: str) -> Callable[[MultiDictProxy], dict]:
    return lambda form: {action: {key: str(form.get(picker, ""))}}


BUTTONS: dict[str, Button] = {
    "start": Button("Start", "os_compute_api:servers:start", simple("os-start"), SPECS["start"]),
    "stop": Button("Stop", "os_compute_api:servers:stop", simple("os-stop"), SPECS["stop"], confirm=""),
    "reboot": Button("Reboot", "os_compute_api:servers:reboot", simple("reboot", {"type": "SOFT"}),
                     SPECS["reboot_soft"], confirm=""),
    "pause": Button("Pause", "os_compute_api:os-pause-server:pause", simple("pause"), SPECS["pause"]),
    "unpause": Button("Unpause", "os_compute_api:os-pause-server:unpause", simple("unpause"), SPECS["unpause"]),
    "suspend": Button("Suspend", "os_compute_api:os-suspend-server:suspend", simple("suspend"), SPECS["suspend"]),
    "resume": Button("Resume", "os_compute_api:os-suspend-server:resume", simple("resume"), SPECS["resume"]),
    "resize": Button("Resize", "os_compute_api:servers:resize", field("resize", "flavorRef", "flavor"),
                     SPECS["resize"], confirm=" The server restarts on the new flavor.", picker="flavor"),
    "confirmResize": Button("Confirm resize", "os_compute_api:servers:confirm_resize", simple("confirmResize"),
                            SPECS["confirmResize"]),
    "revertResize": Button("Revert resize", "os_compute_api:servers:revert_resize", simple("revertResize"),
                           SPECS["revertResize"], confirm=" It goes back to its old flavor."),
    "rebuild": Button("Rebuild", "os_compute_api:servers:rebuild", field("rebuild", "imageRef", "image"),
                      SPECS["rebuild"], confirm=" Its disk is replaced by the image.", picker="image"),
    "rescue": Button("Rescue", "os_compute_api:os-rescue", simple("rescue"), SPECS["rescue"],
                     confirm=" It reboots into a rescue system."),
    "unrescue": Button("Unrescue", "os_compute_api:os-unrescue", simple("unrescue"), SPECS["unrescue"]),
    "shelve": Button("Shelve", "os_compute_api:os-shelve:shelve", simple("shelve"), SPECS["shelve"],
                     confirm=" It is shut down and its resources released."),
    "unshelve": Button("Unshelve", "os_compute_api:os-shelve:unshelve", simple("unshelve"), SPECS["unshelve"]),
    "createImage": Button("Create snapshot", "os_compute_api:servers:create_image",
                          field("createImage", "name", "name"), SPECS["createImage"], picker="name"),
    "migrate": Button("Migrate", "os_compute_api:os-migrate-server:migrate", simple("migrate"), SPECS["migrate"],
                      confirm=" It restarts on another host."),
    "os-migrateLive": Button("Live migrate", "os_compute_api:os-migrate-server:migrate_live",
                             simple("os-migrateLive", {"host": None, "block_migration": "auto"}),
                             SPECS["live-migration"],
                             confirm=" It moves to another host while running."),
    "lock": Button("Lock", "os_compute_api:os-lock-server:lock", simple("lock")),
    "unlock": Button("Unlock", "os_compute_api:os-lock-server:unlock", simple("unlock")),
    "delete": Button("Delete", "os_compute_api:servers:delete", lambda form: None,
                     confirm=" This cannot be undone."),
}


def state_allows(name: str, button: Button, server: dict) -> bool:
    """Whether Nova would take this action in the server's vm_state and task_state now."""
    if name in ("lock", "unlock"):
        return bool(server.get("locked")) == (name == "unlock")
    if button.spec is None:
        return True
    return (server.get("OS-EXT-STS:vm_state") in button.spec.vm_states
            and server.get("OS-EXT-STS:task_state") in button.spec.task_states)


def allowed(request: web.Request, session: Session, server: dict) -> list[str]:
    """The buttons this server's page shows now, in ``BUTTONS`` order."""
    enforcer = request.config_dict[keys.POLICY]
    creds = {"user_id": session.user_id, "project_id": session.project_id, "roles": list(session.roles),
             "is_admin": session.is_admin}
    target = {"project_id": server.get("tenant_id"), "user_id": server.get("user_id")}
    return [name for name, button in BUTTONS.items()
            if state_allows(name, button, server) and enforcer.check(button.rule, creds, target)]


def confirm_text(name: str, server_name: str) -> str:
    """The question a destructive button asks (empty: it just goes)."""
    button = BUTTONS[name]
    return "" if button.confirm is None else f"{button.label} {server_name}?{button.confirm}"

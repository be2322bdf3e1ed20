"""Install without the checkout: a built wheel runs from any directory; --version, shell
completion, the user's clouds.yaml, the systemd unit."""

from __future__ import annotations

import ast
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

from novalite import __version__
from novalite.db.migrate import SCHEMA_VERSION
from tests.conftest import REPO, fresh_database, write_config

SITE_PACKAGES = next(p for p in sys.path if p.endswith("site-packages"))


def build_wheel(tmp: Path) -> Path:
    """`pip wheel --no-deps` of a copy of the source (the build leaves nothing in the checkout)."""
    src = tmp / "src"
    shutil.copytree(REPO / "novalite", src / "novalite", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", src)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"), str(src)],
                   check=True, capture_output=True, timeout=300)
    return next((tmp / "dist").glob("novalite-*.whl"))


async def test_a_wheel_installed_elsewhere_runs_from_any_directory(pg_dsn, tmp_path):
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"novalite/db/migrations/{p.name}" for p in (REPO / "novalite/db/migrations").glob("*.sql")} <= set(names)

    target = tmp_path / "target"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {**os.environ, "PYTHONPATH": f"{target}:{SITE_PACKAGES}", "NOVALITE_STATE_DIR": str(tmp_path / "state")}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(target / "bin" / "novalite"), *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=120)

    where = subprocess.run(
        [sys.executable, "-c", "import sys, novalite; print(novalite.__file__); print(sys.path)"],
        cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout.splitlines()
    assert where[0] == str(target / "novalite" / "__init__.py")
    assert str(REPO) not in ast.literal_eval(where[1])  # "" is the cwd of -c: the temp directory

    assert (run("--version").stdout.strip(), run("--version").returncode) == (f"novalite {__version__}", 0)
    env["NOVALITE_DATABASE__DSN"] = f'"{await fresh_database(pg_dsn)}"'
    result = run("db", "upgrade")
    assert (result.returncode, result.stdout.strip()) == (0, f"schema version {SCHEMA_VERSION}"), result.stderr


def test_completion_scripts_name_the_commands(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for shell, marker in (("bash", "complete -o"), ("zsh", "#compdef novalite")):
        result = subprocess.run([sys.executable, "-m", "novalite.cli", "completion", shell], cwd=tmp_path,
                                env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert marker in result.stdout
        assert "install-service" in result.stdout and "serve" in result.stdout


async def test_clouds_yaml_is_merged_into_the_users_file_keeping_other_clouds(pg_dsn, tmp_path):
    home = tmp_path / "home"
    user_file = home / ".config" / "openstack" / "clouds.yaml"
    user_file.parent.mkdir(parents=True)
    user_file.write_text(yaml.safe_dump({"clouds": {
        "work": {"auth": {"auth_url": "https://keystone.example/v3"}},
        "novalite": {"auth": {"auth_url": "http://old", "password": "stale"}},
    }, "cache": {"expiration_time": 60}}))
    user_file.chmod(0o644)
    config = write_config(tmp_path, await fresh_database(pg_dsn))
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(home)}
    env.pop("NOVALITE_API__USER_CLOUDS_YAML")  # conftest's guard for the user's own file: this test is about it

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "novalite.cli", "--config", str(config), *args], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120)

    assert run("bootstrap").returncode == 0
    result = run("clouds-yaml", "-o", str(tmp_path / "clouds.yaml"))
    assert result.returncode == 0, result.stderr
    assert f"merged clouds novalite and novalite-admin into {user_file}" in result.stdout

    merged = yaml.safe_load(user_file.read_text())
    ours = yaml.safe_load((tmp_path / "clouds.yaml").read_text())["clouds"]
    assert merged["clouds"]["work"] == {"auth": {"auth_url": "https://keystone.example/v3"}}
    assert merged["clouds"]["novalite"] == ours["novalite"]
    assert merged["clouds"]["novalite-admin"] == ours["novalite-admin"]
    assert merged["cache"] == {"expiration_time": 60}
    assert stat.S_IMODE(user_file.stat().st_mode) == 0o600
    assert [p.name for p in user_file.parent.iterdir()] == ["clouds.yaml"]

    config.write_text(config.read_text().replace("[api]", "[api]\nuser_clouds_yaml = false"))
    user_file.write_text("clouds: {}\n")
    assert "merged clouds" not in run("clouds-yaml", "-o", str(tmp_path / "clouds.yaml")).stdout
    assert user_file.read_text() == "clouds: {}\n"


def test_install_service_writes_a_notify_unit_for_this_novalite(tmp_path):
    unit = tmp_path / "novalite.service"
    result = subprocess.run(
        [sys.executable, "-m", "novalite.cli", "--state-dir", "/var/lib/novalite", "install-service",
         "--user", "nova", "--output", str(unit)],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"wrote {unit}" in result.stdout
    lines = unit.read_text().splitlines()
    service = lines[lines.index("[Service]"):lines.index("[Install]")]
    assert {"Type=notify", "User=nova", "StateDirectory=novalite", "Restart=on-failure",
            "KillSignal=SIGTERM", "TimeoutStopSec=90"} <= set(service)
    exec_start = next(line for line in service if line.startswith("ExecStart="))
    command = exec_start.removeprefix("ExecStart=").split()
    assert Path(command[0]).is_absolute() and Path(command[0]).name == "novalite"
    assert command[1:] == ["--config", "/etc/novalite/config.toml", "--state-dir", "/var/lib/novalite",
                           "serve", "--clouds-yaml", "/var/lib/novalite/clouds.yaml"]
    assert "WantedBy=multi-user.target" in lines

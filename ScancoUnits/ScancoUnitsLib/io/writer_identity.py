"""Who wrote a temporary file, and is that process provably gone? So that names outliving their writer
(SIGKILL, power loss) can be attributed and swept without touching a running writer's files.

:func:`writer_id` is ``<host><boot>-<pid>-<start>``: a hash of the host name (and PID namespace), a
hash of the boot id, the process id and the process start time. :func:`writer_gone` judges only writers
of this host and this boot, where a pid and its start time are proof.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from typing import Optional

__all__ = ["Writer", "writer_id", "writer_gone", "hash8"]

_id_cache: dict = {}


def hash8(text: str) -> str:
    """The first 8 hex digits of the SHA-256 of *text* (host and boot keys, shortened names)."""
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", "r", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""  # not Linux: every process counts as "this boot"


def _host_key() -> str:
    """Host name plus PID namespace: two containers sharing a folder must not judge each other's PIDs."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}|{namespace}"


def _proc_stat(pid: int):
    """``(state, start time in clock ticks since boot)`` of *pid* from /proc, None if it does not exist,
    ``"unknown"`` where there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except FileNotFoundError:
        return None if os.path.isdir("/proc/self") else "unknown"
    except ProcessLookupError:
        return None
    except OSError:
        return "unknown"
    fields = text[text.rfind(")") + 2:].split()  # the command name may hold spaces and parentheses
    try:
        return fields[0], int(fields[19])  # field 3: state, field 22: starttime
    except (IndexError, ValueError):
        return "unknown"


@dataclass(frozen=True)
class Writer:
    host: str   # 8 hex digits: hash of host name and PID namespace
    boot: str   # 8 hex digits: hash of the boot id
    pid: int
    start: int  # start time of the process in clock ticks since boot (0 where unknown)

    @property
    def text(self) -> str:
        return f"{self.host}{self.boot}-{self.pid}-{self.start}"


def _this_writer() -> Writer:
    pid = os.getpid()  # a forked child is another writer
    writer = _id_cache.get(pid)
    if writer is None:
        state = _proc_stat(pid)
        start = state[1] if isinstance(state, tuple) else 0
        writer = Writer(hash8(_host_key()), hash8(_boot_id()), pid, start)
        _id_cache.clear()
        _id_cache[pid] = writer
    return writer


def writer_id() -> str:
    """This process's writer id, as written into its temporary names: ``<host><boot>-<pid>-<start>``."""
    return _this_writer().text


def writer_gone(writer: Writer) -> Optional[bool]:
    """True: provably not running any more; False: maybe running; None: written on another host or in
    another boot.

    Only a writer of this host *and* this boot can be judged: two machines may share a host name (cluster
    nodes, containers) and a folder, so a different boot id may be a running writer elsewhere, not a
    reboot. Files of another boot are left and reported, never removed."""
    me = _this_writer()
    if writer.host != me.host or writer.boot != me.boot:
        return None
    if writer.pid == me.pid:
        return writer.start != me.start
    state = _proc_stat(writer.pid)
    if state is None:
        return True
    if state == "unknown":  # no /proc: a running pid may be a reuse, so only "not running" is proof
        try:
            os.kill(writer.pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False
    proc_state, start = state
    if start != writer.start:
        return True  # the pid was reused by a later process
    return proc_state in ("Z", "X")  # a zombie writes nothing any more

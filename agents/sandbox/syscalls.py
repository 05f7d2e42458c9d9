"""The few Linux calls Python 3.11 has no wrapper for (``setns``, ``unshare``,
``prctl``), through ctypes on libc, and the one shared empty network namespace.

Every function raises :class:`OSError` with the kernel's errno on failure.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal

__all__ = [
    "CLONE_NEWNET",
    "CLONE_NEWPID",
    "empty_netns",
    "enter_netns",
    "set_child_subreaper",
    "set_name",
    "set_no_new_privs",
    "set_parent_death_signal",
    "trim_heap",
    "unshare",
]

CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000
_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NO_NEW_PRIVS = 38

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def enter_netns(fd: int) -> None:
    """Join the network namespace open at ``fd`` (a cheap call, unlike creating one)."""
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(CLONE_NEWNET)), "setns")


def _prctl(option: int, arg: int, what: str) -> None:
    _check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), 0, 0, 0), what)


def set_child_subreaper() -> None:
    """Orphans of our descendants become our children (not init's), so we can reap and count them."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1, "prctl(PR_SET_CHILD_SUBREAPER)")


def set_name(name: bytes) -> None:
    """The process's name (``comm``: what ``ps`` shows), up to 15 bytes."""
    _check(_libc.prctl(ctypes.c_int(_PR_SET_NAME), ctypes.c_char_p(name[:15]), 0, 0, 0), "prctl(PR_SET_NAME)")


def set_no_new_privs() -> None:
    _prctl(_PR_SET_NO_NEW_PRIVS, 1, "prctl(PR_SET_NO_NEW_PRIVS)")


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    _prctl(_PR_SET_PDEATHSIG, sig, "prctl(PR_SET_PDEATHSIG)")


def trim_heap() -> None:
    """Give free heap pages back (glibc's ``malloc_trim``): fewer pages for each fork to copy."""
    with contextlib.suppress(AttributeError):
        _libc.malloc_trim(ctypes.c_size_t(0))


def empty_netns() -> int:
    """An fd holding a new network namespace with no interfaces up (not even
    loopback), created once by a short-lived helper child: every invocation
    without network joins this one namespace with :func:`enter_netns`."""
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the helper: make the namespace, say so, wait to be told to go
        code = 0
        try:
            os.close(ready_r)
            os.close(done_w)
            try:
                unshare(CLONE_NEWNET)
                os.write(ready_w, b"1")
            except OSError:
                os.write(ready_w, b"0")
            os.read(done_r, 1)
        except BaseException:
            code = 1
        os._exit(code)
    os.close(ready_w)
    os.close(done_r)
    try:
        answer = os.read(ready_r, 1)
        if answer != b"1":
            raise OSError(1, "unshare(CLONE_NEWNET) refused in the probe child")
        return os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.close(done_w)
        os.waitpid(pid, 0)

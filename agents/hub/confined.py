"""``python -m agents.hub.confined LIMITS -- COMMAND…``: confine this process, then become COMMAND.

What :mod:`agents.hub.testrun` starts a pack's tests with. The confinement is applied
here, in a fresh interpreter, then the command is ``exec``'d: nothing runs between a
fork and an exec in the parent (``preexec_fn`` is unsafe in a process with threads).

LIMITS is JSON: ``{"rlimits": [[resource, soft, hard], …], "no_network": bool}``.
"""

from __future__ import annotations

import json
import os
import sys

from agents.sandbox.limits import set_rlimits
from agents.sandbox.syscalls import CLONE_NEWNET, set_no_new_privs, set_parent_death_signal, unshare


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        sys.exit("usage: python -m agents.hub.confined LIMITS -- COMMAND…")
    limits = json.loads(argv[0])
    if limits.get("no_network"):
        unshare(CLONE_NEWNET)  # a namespace of its own: no interface up, not even loopback
    set_rlimits(limits.get("rlimits", []))
    set_no_new_privs()
    set_parent_death_signal()
    os.execv(argv[2], argv[2:])


if __name__ == "__main__":
    main(sys.argv[1:])

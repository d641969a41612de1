"""`LabSpawner`: each user's Jupyter server runs in the hub container, as that Unix user.

JupyterHub's LocalProcessSpawner does the work (setuid, groups, environment); this subclass
makes sure the user's account exists first - with their current admin flag, so a user
promoted in the admin panel gets sudo and write access to /home/shared/readonly at their next
server start - starts the server in the user's home, and stops it so that it shuts its
kernels down.
"""

from __future__ import annotations

import asyncio
from typing import Any

from jupyterhub.spawner import LocalProcessSpawner
from traitlets import Bool, default

from . import users


class LabSpawner(LocalProcessSpawner):
    """LocalProcessSpawner that creates and updates the lab member's Unix account."""

    private_homes = Bool(
        False,
        config=True,
        help="""New homes are private (0700) instead of readable by the lab (0750).""",
    )

    async def start(self) -> Any:
        member = await asyncio.to_thread(
            users.ensure_account,
            self.user.name,
            admin=self.user.admin,
            private_home=self.private_homes,
        )
        # The hub's own working directory (the state volume) is root-only.
        self.popen_kwargs = {**self.popen_kwargs, "cwd": str(users.home_of(member.name))}
        return await super().start()

    @default("term_timeout")
    def _term_timeout_default(self) -> int:
        # Time for the server to shut its kernels down (their containers, via the broker).
        return 20

    async def stop(self, now: bool = False) -> None:
        # LocalProcessSpawner interrupts first (SIGINT). Without a terminal, jupyter_server
        # takes that as a KeyboardInterrupt and exits at once, leaving its kernels' containers
        # behind for the broker's reaper. On SIGTERM it shuts every kernel down first.
        await super().stop(now=True)

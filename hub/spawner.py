"""`LabSpawner`: each user's Jupyter server runs in the hub container, as that Unix user.

JupyterHub's LocalProcessSpawner does the work (setuid, groups, environment); this subclass
makes sure the user's account exists first - with their current admin flag, so a user
promoted in the admin panel gets sudo and write access to /home/shared/readonly at their next
server start - starts the server in the user's home, and stops it so that it shuts its
kernels down.
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Callable
from typing import Any

from jupyterhub.spawner import LocalProcessSpawner
from traitlets import Bool, Int, default

from . import users


class LabSpawner(LocalProcessSpawner):
    """LocalProcessSpawner that creates and updates the lab member's Unix account."""

    private_homes = Bool(
        False,
        config=True,
        help="""New homes are private (0700) instead of readable by the lab (0750).""",
    )

    max_processes = Int(
        2048,
        config=True,
        help="""The most processes and threads a member may run (RLIMIT_NPROC of their server,
        inherited by their terminals), so a fork bomb in a terminal cannot take the hub
        container's process limit. Their kernels have their own limit per container.""",
    )
    oom_score_adj = Int(
        500,
        config=True,
        help="""How early the kernel's OOM killer picks a member's server and what it starts
        (-1000 to 1000): above the hub's and the broker's 0, so when the hub container runs
        out of memory a member's process goes, never the hub.""",
    )

    def make_preexec_fn(self, name: str) -> Callable[[], None]:
        drop_to_user = super().make_preexec_fn(name)
        processes, oom_score_adj = self.max_processes, self.oom_score_adj

        def preexec() -> None:
            # As root still: raising one's own OOM score is allowed, lowering it is not.
            with open("/proc/self/oom_score_adj", "w") as score:
                score.write(str(oom_score_adj))
            resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))
            drop_to_user()

        return preexec

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

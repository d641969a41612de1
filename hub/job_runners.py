"""The container side of notebook jobs: runner containers, and the kernels they run.

A job runs in a runner container (`provisioner/job_runner.py` from the hub's image), a
sibling of the hub rather than a process in it, so it survives the member's server and the
hub container itself. The container is made on the one road: `LaunchPolicy.job_runner_for`
gives its description (the member's identity, the lab's mounts and network, the runner's
labels), `DockerEngine.launch_container` starts it with the kernels' host config
(`provisioner/host_config.py`). Its labels (role `job`, the job's ID, the owner) let the
broker find it again after a restart. The runner's kernel is labelled with the job's ID by
`op_launch`; both go when the job ends.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from typing import Any

from labnotebook.provisioner import labels as L
from labnotebook.provisioner.broker_protocol import JOB_TOKEN_ENV, SHARED_SOCKET
from labnotebook.provisioner.job_runner import JOB_ENV

from .broker_policy import LaunchPolicy
from .job_store import Job

# -I (isolated): not the working folder (the notebook's, the member's files) nor her
# PYTHON* variables or user site on the runner's path, so a `json.py` or `papermill.py` beside
# her notebook cannot shadow what the runner imports; her kernel is where her code runs.
RUNNER_COMMAND = ["python3", "-I", "-m", "labnotebook.provisioner.job_runner"]
LOG_LINES = 2000
"""The runner's output lines the broker reads (it prints a line per cell, and its result)."""


class JobRunners:
    """Start, find, read, stop and remove runner containers on `engine`."""

    def __init__(
        self,
        engine: Any,
        policy: LaunchPolicy,
        *,
        image: str,
        memory: int | None,
        nano_cpus: int | None,
        pids_limit: int | None,
        remove_kernel: Callable[[str], None],
    ) -> None:
        self.engine = engine
        self.policy = policy
        self.image = image
        self.memory = memory
        self.nano_cpus = nano_cpus
        self.pids_limit = pids_limit
        self.remove_kernel = remove_kernel
        """How the broker removes one of its kernels (its GPUs and address given back)."""

    def start(self, job: Job, folder: str, language: str) -> str:
        """Start the job's runner; its container ID."""
        description = {
            "id": job.id,
            "notebook": job.notebook,
            "output": job.output,
            "folder": folder,
            "kernel": job.kernel,
            "kernelspec": job.kernelspec,
            "language": language,
            "parameters": job.parameters,
            # What the hub's servers have in their configuration for members' kernelspecs.
            "provisioner": {
                "broker_socket": SHARED_SOCKET,
                "network": self.policy.network,
                "volumes": list(self.policy.lab_mounts),
            },
        }
        labels = {
            k: v
            for k, v in ((job.kernelspec.get("metadata") or {}).get("kernel_provisioner") or {})
            .get("config", {})
            .get("labels", {})
            .items()
            if isinstance(k, str) and isinstance(v, str)
        }  # the labels the lab lets the job's kernel have (allowed_labels), on its runner too
        spec = self.policy.job_runner_for(
            job.owner_uid,
            job_id=job.id,
            image=self.image,
            argv=RUNNER_COMMAND,
            env={JOB_ENV: json.dumps(description), JOB_TOKEN_ENV: job.token},
            working_dir=folder,
            memory=self.memory,
            nano_cpus=self.nano_cpus,
            pids_limit=self.pids_limit,
            labels=labels,
        )
        return self.engine.launch_container(spec).container_id

    def containers(self) -> list[dict[str, Any]]:
        """Every runner container on the engine (running or not), as `docker ps` lists them."""
        return self.engine.call(
            self.engine.api.containers, all=True, filters={"label": [f"{L.ROLE}={L.JOB_ROLE}"]}
        )

    def state(self, container: str) -> Any:
        return self.engine.state(container)

    def output(self, container: str) -> list[str]:
        text = self.engine.logs(container, LOG_LINES)
        return [line.rstrip("\r") for line in text.splitlines()] if text else []

    def stop(self, container: str) -> None:
        """Ask the runner to stop (it shuts its kernel down and writes what it has)."""
        self.engine.signal(container, signal.SIGTERM)

    def kernels(self, job_id: str) -> list[dict[str, Any]]:
        return self.engine.call(
            self.engine.api.containers,
            all=True,
            filters={"label": [f"{L.ROLE}={L.KERNEL_ROLE}", f"{L.JOB_ID}={job_id}"]},
        )

    def kernel_ended_for_memory(self, job_id: str) -> int | None:
        """The memory limit of the job's kernel if the OOM killer stopped it, else None."""
        for kernel in self.kernels(job_id):
            state = self.engine.state(kernel["Id"])
            if state is not None and state.oom_killed:
                return state.memory_limit
        return None

    def remove(self, job_id: str, container: str | None) -> None:
        """Remove the job's kernel(s), then its runner."""
        for kernel in self.kernels(job_id):
            self.remove_kernel(kernel["Id"])
        if container:
            self.engine.remove(container)

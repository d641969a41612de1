"""The runner of a notebook job: `python3 -m labnotebook.provisioner.job_runner`.

The lab's broker starts it in a container of its own (hub/job_runners.py), as the member, in
the notebook's folder, with her home mounted, from the hub's image; it does not depend on
her Jupyter server. It runs the notebook with papermill on the job's kernel, which it starts
through the broker like any Jupyter client does (the provisioner, the lab's rules and caps),
and writes the executed notebook - every output, and the record of the image it ran on
(`record.py`) - to the job's output path, which it creates itself so nothing is ever
overwritten.

It says what it does on stdout, which the broker reads (`labnotebook jobs logs`):

    kernel python-docker: image ourlab/kernel:1 (sha256:3c33...)
    cell 12/40
    labnotebook-job-result: {"state": "succeeded", ...}

The last line is its result, for the broker; the job's description comes in $LABNOTEBOOK_JOB
(JSON), its secret for the broker in $LABNOTEBOOK_JOB_TOKEN.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

JOB_ENV = "LABNOTEBOOK_JOB"
RESULT = "labnotebook-job-result: "
"""The prefix of the runner's last line: its result as JSON."""
ENGINE = "labnotebook"
"""The papermill engine the runner registers: nbclient's, telling which cell runs."""
_PROGRESS = re.compile(r"cell (\d+)/(\d+)\Z")
_KERNEL = re.compile(r"kernel .*\((sha256:[0-9a-f]{64})\)\Z")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def progress_of(lines: list[str]) -> dict[str, Any]:
    """What the runner's output says so far: cell, cells, image_id, and its result (if any)."""
    found: dict[str, Any] = {}
    for line in lines:
        if line.startswith(RESULT):
            try:
                result = json.loads(line[len(RESULT) :])
            except ValueError:
                continue
            if isinstance(result, dict):
                found["result"] = result
        elif match := _PROGRESS.match(line):
            found["cell"], found["cells"] = int(match.group(1)), int(match.group(2))
        elif match := _KERNEL.match(line):
            found["image_id"] = match.group(1)
    return found


def shown_lines(lines: list[str]) -> list[str]:
    """The runner's output as `labnotebook jobs logs` shows it: the result line in words."""
    shown = []
    for line in lines:
        if line.startswith(RESULT):
            try:
                result = json.loads(line[len(RESULT) :])
            except ValueError:
                continue
            state = result.get("state", "?") if isinstance(result, dict) else "?"
            error = result.get("error", "") if isinstance(result, dict) else ""
            shown.append(f"job {state}" + (f": {error}" if error else ""))
        else:
            shown.append(line)
    return shown


class Cancelled(BaseException):
    """The broker asked the runner to stop (SIGTERM): the member cancelled the job."""


def _say(text: str) -> None:
    print(text, flush=True)


def _plain(text: str) -> str:
    return _ANSI.sub("", text)


def _register_engine() -> None:
    """papermill's nbclient engine, printing `cell N/M` as each cell starts."""
    from papermill.engines import NBClientEngine, papermill_engines

    class ProgressEngine(NBClientEngine):  # type: ignore[misc]
        @classmethod
        def execute_managed_notebook(cls, nb_man: Any, kernel_name: str, **kwargs: Any) -> Any:
            start = nb_man.cell_start
            km = kwargs.get("km")

            def cell_start(cell: Any, cell_index: int | None = None, **kw: Any) -> Any:
                if cell_index == 0 and km is not None:
                    _say_kernel(km)
                if cell_index is not None:
                    _say(f"cell {cell_index + 1}/{len(nb_man.nb.cells)}")
                return start(cell, cell_index, **kw)

            nb_man.cell_start = cell_start
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    papermill_engines.register(ENGINE, ProgressEngine)


def _say_kernel(km: Any) -> None:
    describe = getattr(getattr(km, "provisioner", None), "launched_image", None)
    launched = describe() if callable(describe) else None
    if launched:
        _say(f"kernel {km.kernel_name}: image {launched['image']} ({launched['image_id']})")


def _kernel_manager(job: dict[str, Any], kernels: Path) -> Any:
    """A manager for the job's kernelspec (as submitted), its provisioner pointed at the
    lab's broker with the lab's settings (what the hub's servers get from their config)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from traitlets.config import Config

    name = job["kernel"]
    folder = kernels / name
    folder.mkdir(parents=True)
    (folder / "kernel.json").write_text(json.dumps(job["kernelspec"]))
    config = Config({"DockerKernelProvisioner": dict(job.get("provisioner") or {})})
    return AsyncKernelManager(
        kernel_name=name,
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]),
        config=config,
    )


def _create_output(path: str) -> None:
    """Create the output file; an existing one (anything, a symlink too) is never touched."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    os.close(fd)


def _record(output: str, km: Any) -> str:
    """Write the record of the kernel's image into the executed notebook; its image ID."""
    import nbformat

    from .record import RECORD_KEY, make_record

    describe = getattr(getattr(km, "provisioner", None), "launched_image", None)
    launched = describe() if callable(describe) else None
    if not launched or not launched.get("image_id"):
        return ""
    spec = km.kernel_spec
    record = make_record(launched, argv=list(spec.argv), language=spec.language)
    try:
        notebook = nbformat.read(output, as_version=4)
    except (OSError, ValueError):
        return str(launched["image_id"])
    notebook.metadata[RECORD_KEY] = record
    nbformat.write(notebook, output)
    return str(launched["image_id"])


def _kernel_died(km: Any) -> str:
    """Why the job's kernel ended, as the engine tells (the out-of-memory killer, above all)."""
    from .notices import out_of_memory

    provisioner = getattr(km, "provisioner", None)
    container = getattr(provisioner, "container_id", None)
    state = None
    if container:
        try:
            state = provisioner.engine.state(container)
        except Exception:
            state = None
    if state is not None and state.oom_killed:
        return "out of memory: " + out_of_memory(state.memory_limit).replace(
            "The previous kernel of this notebook was stopped", "The job's kernel was stopped"
        )
    if state is not None and state.error:
        return f"the job's kernel ended: {state.error}"
    code = f" with exit code {state.exit_code}" if state is not None else ""
    return f"the job's kernel died{code} before the notebook ended."


def run(job: dict[str, Any]) -> dict[str, Any]:
    """Run the job; its result (state, error, image_id)."""
    import papermill
    from jupyter_core.utils import run_sync
    from nbclient.exceptions import DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    from .errors import KernelLaunchError

    output = job["output"]
    try:
        _create_output(output)
    except FileExistsError:
        return {"state": "failed", "error": f"{output} exists already; nothing was overwritten."}
    except OSError as e:
        return {"state": "failed", "error": f"Cannot create {output}: {e.strerror}."}
    _register_engine()
    result: dict[str, Any] = {"state": "succeeded", "error": ""}
    with tempfile.TemporaryDirectory(prefix="labnotebook-job-") as scratch:
        km = _kernel_manager(job, Path(scratch) / "kernels")
        try:
            papermill.execute_notebook(
                job["notebook"],
                output,
                parameters=job.get("parameters") or {},
                kernel_name=job["kernel"],
                language=job.get("language") or None,
                engine_name=ENGINE,
                km=km,
                cwd=job["folder"],
                # nbclient starts the kernel there (the notebook's folder), as JupyterLab does.
                resources={"metadata": {"path": job["folder"]}},
                progress_bar=False,
                request_save_on_cell_execute=True,
            )
        except PapermillExecutionError as e:
            traceback = _plain("\n".join(e.traceback or []))
            result = {
                "state": "failed",
                "error": f"Cell {e.cell_index + 1} (In [{e.exec_count}]) failed: {e.ename}: "
                f"{_plain(str(e.evalue))}\n{traceback}".rstrip(),
                "failed_cell": e.cell_index + 1,
            }
        except DeadKernelError:
            result = {"state": "failed", "error": _kernel_died(km)}
        except Cancelled:
            result = {"state": "cancelled", "error": "cancelled by its owner"}
        except KernelLaunchError as e:
            result = {"state": "failed", "error": f"The job's kernel did not start: {e}"}
        except Exception as e:
            if km.has_kernel and not run_sync(km.is_alive)():
                result = {"state": "failed", "error": _kernel_died(km)}
            else:
                result = {"state": "failed", "error": f"{type(e).__name__}: {_plain(str(e))}"}
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the cleanup must finish
            result["image_id"] = _record_quietly(output, km)
            if km.has_kernel:
                try:
                    run_sync(km.shutdown_kernel)(now=True)
                except Exception as e:
                    _say(f"(could not shut the job's kernel down: {e}; the broker removes it)")
    return result


def _record_quietly(output: str, km: Any) -> str:
    try:
        return _record(output, km)
    except Exception as e:
        _say(f"(could not write the image record into {output}: {e})")
        return ""


def main() -> int:
    job = json.loads(os.environ.pop(JOB_ENV))

    def cancel(signum: int, frame: Any) -> None:
        raise Cancelled()

    signal.signal(signal.SIGTERM, cancel)
    _say(f"job {job['id']}: {job['notebook']} on kernel {job['kernel']}")
    try:
        result = run(job)
    except Cancelled:
        result = {"state": "cancelled", "error": "cancelled by its owner"}
    _say(RESULT + json.dumps(result))
    return 0 if result["state"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())

"""Re-run an exported notebook and compare its new outputs with the saved ones, cell by cell.

This file runs *inside* images made by `labnotebook export`, with the Python of a small venv
(/opt/labnotebook-export) that has nbformat, nbclient and JupyterLab; it imports nothing of
labnotebook, so it works on any kernel image. Commands (the image's ENTRYPOINT runs this):

    check   (default) execute the notebook, compare, write the report; exit 0 only if every
            required output matches (1: some differ, 2: the notebook could not be run)
    serve   start JupyterLab on port 8888, protected by a token (JUPYTER_TOKEN, or a random
            one printed in the log)
    install-kernelspec NAME LANGUAGE ARGV_JSON   (used once, while the image is built)
    anything else is executed as a command (`docker run IMAGE bash`)

What is compared (the documented normalisations):
* stream text (stdout and stderr, each concatenated over the cell, as chunking varies),
  text and data outputs (`text/*`, JSON), error names and values: equal after
  - object addresses in reprs: `<matplotlib.lines.Line2D at 0x7f3a...>` -> `... at 0x…>`,
  - temporary paths: `/tmp/ipykernel_1234/567.py` -> `/tmp/ipykernel_…/567.py`,
    `/tmp/tmpab12cd34/x` -> `/tmp/tmp…/x`,
  - line endings (`\\r\\n` -> `\\n`) and trailing spaces at line ends;
* images (`image/*`) by SHA-256 of their content: a difference is reported, never a failure
  (renderers and fonts change pixels without changing results);
* execution counts, output metadata, tracebacks' colouring and widget models are not compared;
* cells tagged `labnotebook:volatile` are run and reported, never required to match (times,
  random numbers without a seed, dates).
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

VOLATILE_TAG = "labnotebook:volatile"
NOTEBOOK_ENV = "LABNOTEBOOK_NOTEBOOK"
REPORT_ENV = "LABNOTEBOOK_REPORT_DIR"
DEFAULT_REPORT_DIR = "/reproduce"
SKIPPED_MIMETYPES = ("application/vnd.jupyter.widget-view+json",)

_ADDRESS = re.compile(r"\b(at|object at) 0x[0-9a-fA-F]+")
_IPYKERNEL_TMP = re.compile(r"(/(?:tmp|var/tmp|var/folders/[^\s/]+/[^\s/]+/T))/ipykernel_\d+/")
_MKTEMP = re.compile(r"(/(?:tmp|var/tmp|dev/shm))/tmp[A-Za-z0-9_]{6,}")
_TRAILING = re.compile(r"[ \t]+$", re.MULTILINE)


def normalise(text: str) -> str:
    """Text with what is unstable by nature made equal (see the module's docstring)."""
    text = text.replace("\r\n", "\n")
    text = _ADDRESS.sub(lambda m: f"{m.group(1)} 0x…", text)
    text = _IPYKERNEL_TMP.sub(r"\1/ipykernel_…/", text)
    text = _MKTEMP.sub(r"\1/tmp…", text)
    return _TRAILING.sub("", text)


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "".join(str(v) for v in value)
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, indent=1)


def _image_hash(value: Any) -> str:
    data = _text(value)
    try:
        raw = base64.b64decode(data, validate=False)
    except ValueError:
        raw = data.encode()
    return "sha256:" + hashlib.sha256(raw or data.encode()).hexdigest()


def comparable(outputs: list[dict[str, Any]]) -> tuple[dict[str, str], dict[str, str]]:
    """A cell's outputs as (texts that must match, image hashes that are reported).

    Keys name what each value is: `stdout`, `stderr`, `error`, `out[2] text/plain`, ...
    """
    texts: dict[str, str] = {}
    images: dict[str, str] = {}
    rich = 0
    for output in outputs:
        kind = output.get("output_type")
        if kind == "stream":
            name = output.get("name", "stdout")
            texts[name] = texts.get(name, "") + _text(output.get("text", ""))
        elif kind == "error":
            texts["error"] = f"{output.get('ename', '')}: {output.get('evalue', '')}"
        elif kind in ("execute_result", "display_data"):
            for mimetype, value in sorted((output.get("data") or {}).items()):
                key = f"out[{rich}] {mimetype}"
                if mimetype.startswith("image/") and mimetype != "image/svg+xml":
                    images[key] = _image_hash(value)
                elif mimetype not in SKIPPED_MIMETYPES:
                    texts[key] = _text(value)
            rich += 1
    return {k: normalise(v) for k, v in texts.items()}, images


def compare_cell(index: int, cell: dict[str, Any], saved: list, new: list) -> dict[str, Any]:
    """One code cell's verdict: status `match`, `differs`, `volatile` or `images-differ`."""
    saved_texts, saved_images = comparable(saved)
    new_texts, new_images = comparable(new)
    differing = sorted(
        k for k in saved_texts.keys() | new_texts.keys() if saved_texts.get(k) != new_texts.get(k)
    )
    images = sorted(
        k
        for k in saved_images.keys() | new_images.keys()
        if saved_images.get(k) != new_images.get(k)
    )
    tags = (cell.get("metadata") or {}).get("tags") or []
    volatile = VOLATILE_TAG in tags
    if differing:
        status = "volatile" if volatile else "differs"
    elif images:
        status = "images-differ"
    else:
        status = "match"
    diffs = {
        key: "".join(
            difflib.unified_diff(
                saved_texts.get(key, "").splitlines(keepends=True),
                new_texts.get(key, "").splitlines(keepends=True),
                "saved",
                "new",
                n=1,
            )
        )[:4000]
        for key in differing
    }
    source = _text(cell.get("source", "")).strip().splitlines()
    return {
        "cell": index,
        "status": status,
        "required": not volatile,
        "first_line": source[0][:80] if source else "",
        "differing": differing,
        "images_differing": images,
        "diffs": diffs,
        "images": {k: {"saved": saved_images.get(k), "new": new_images.get(k)} for k in images},
    }


def compare(saved_nb: dict[str, Any], new_nb: dict[str, Any]) -> list[dict[str, Any]]:
    """Verdicts for every code cell, in order (`cell` is the cell's index in the notebook)."""
    verdicts = []
    for index, (old, new) in enumerate(zip(saved_nb["cells"], new_nb["cells"], strict=True)):
        if old.get("cell_type") == "code":
            verdicts.append(
                compare_cell(index, old, old.get("outputs", []), new.get("outputs", []))
            )
    return verdicts


def report_markdown(notebook: str, verdicts: list[dict[str, Any]], ok: bool) -> str:
    lines = [
        f"# Reproduction report: {notebook}",
        "",
        f"**{'REPRODUCED' if ok else 'NOT REPRODUCED'}**: "
        f"{sum(v['status'] == 'match' for v in verdicts)} of {len(verdicts)} code cells match; "
        f"{sum(v['status'] == 'differs' for v in verdicts)} differ; "
        f"{sum(v['status'] == 'images-differ' for v in verdicts)} differ in images only "
        f"(reported, not failed); {sum(v['status'] == 'volatile' for v in verdicts)} volatile "
        f"cells differ (tagged `{VOLATILE_TAG}`, not required).",
        "",
        "| cell | status | first line | what differs |",
        "| --- | --- | --- | --- |",
    ]
    for v in verdicts:
        what = ", ".join(v["differing"] + v["images_differing"])
        first = v["first_line"].replace("|", "\\|")
        lines.append(f"| {v['cell']} | {v['status']} | `{first}` | {what} |")
    for v in verdicts:
        for key, diff in v["diffs"].items():
            lines += ["", f"## cell {v['cell']}: {key}", "", "```diff", diff.rstrip(), "```"]
        for key, hashes in v["images"].items():
            lines += [
                "",
                f"## cell {v['cell']}: {key} (image)",
                "",
                f"saved {hashes['saved']}, new {hashes['new']}",
            ]
    lines += [
        "",
        "Normalisations applied before comparing:",
        "",
        __doc__.split("What is compared")[1].strip(),
    ]
    return "\n".join(lines) + "\n"


def check(notebook_path: str, report_dir: str, timeout: int) -> int:
    import nbformat
    from nbclient import NotebookClient

    path = Path(notebook_path)
    saved = nbformat.read(path, as_version=4)
    executed = nbformat.read(path, as_version=4)
    record = saved.metadata.get("labnotebook") or {}
    kernel_name = record.get("kernelspec") or (saved.metadata.get("kernelspec") or {}).get("name")
    print(f"Re-running {path} on kernel {kernel_name} ...", flush=True)
    client = NotebookClient(
        executed,
        kernel_name=kernel_name or "",
        timeout=timeout,
        allow_errors=True,  # a saved error is an output like any other: compared, not fatal
        resources={"metadata": {"path": str(path.parent)}},
    )
    try:
        client.execute()
    except Exception as e:
        print(f"error: the notebook could not be run: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    verdicts = compare(saved, executed)
    ok = all(v["status"] != "differs" for v in verdicts)
    for v in verdicts:
        what = ", ".join(v["differing"] + v["images_differing"])
        print(
            f"  cell {v['cell']:>3}: {v['status']:<13} {v['first_line'][:50]}"
            + (f"  [{what}]" if what else "")
        )
    summary = (
        "REPRODUCED: every required output matches."
        if ok
        else (
            "NOT REPRODUCED: cells "
            + ", ".join(str(v["cell"]) for v in verdicts if v["status"] == "differs")
            + " differ."
        )
    )
    print(summary, flush=True)
    markdown = report_markdown(str(path), verdicts, ok)
    try:
        out = Path(report_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text(markdown)
        (out / "report.json").write_text(
            json.dumps({"notebook": str(path), "reproduced": ok, "cells": verdicts}, indent=1)
        )
        nbformat.write(executed, out / "executed.ipynb")
        print(f"Report: {out / 'report.md'} (and report.json, executed.ipynb)")
    except OSError as e:
        print(f"(the report stays on screen: cannot write to {report_dir}: {e})")
        print(markdown)
    return 0 if ok else 1


def serve(notebook_path: str, extra: list[str]) -> int:
    folder = str(Path(notebook_path).parent)
    argv = [
        sys.executable, "-m", "jupyterlab", "--ip=0.0.0.0", "--port=8888", "--no-browser",
        f"--ServerApp.root_dir={folder}", "--ServerApp.allow_remote_access=True",
        "--KernelSpecManager.ensure_native_kernel=False", *extra,
    ]  # fmt: skip
    os.execv(sys.executable, argv)
    return 1


def install_kernelspec(name: str, language: str, argv_json: str) -> int:
    """The recorded kernel's kernelspec, for nbclient and JupyterLab in this image.

    argv[0] is made absolute from the image's PATH: jupyter_client would otherwise replace a
    bare `python3` with its own interpreter (this venv's, which lacks the kernel's packages).
    """
    argv = json.loads(argv_json)
    program = shutil.which(argv[0])
    if program is None:
        print(
            f"error: the kernel's program {argv[0]!r} is not in this image's PATH", file=sys.stderr
        )
        return 1
    folder = Path(sys.prefix) / "share" / "jupyter" / "kernels" / name
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"argv": [program, *argv[1:]], "display_name": name, "language": language or "python"}
    (folder / "kernel.json").write_text(json.dumps(spec, indent=1) + "\n")
    return 0


def main(argv: list[str]) -> int:
    notebook = os.environ.get(NOTEBOOK_ENV, "")
    command, rest = (argv[0], argv[1:]) if argv else ("check", [])
    if command == "check":
        timeout = int(os.environ.get("LABNOTEBOOK_CELL_TIMEOUT", "1800"))
        return check(notebook, os.environ.get(REPORT_ENV, DEFAULT_REPORT_DIR), timeout)
    if command == "serve":
        return serve(notebook, rest)
    if command == "install-kernelspec":
        return install_kernelspec(*rest)
    os.execvp(command, [command, *rest])
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Jupyter's own kernel conformance suite (jupyter_kernel_test) against the bundled Docker
kernel, launched through the labnotebook provisioner with CurveZMQ encryption on.

The suite checks the messaging protocol - execute, streams, errors, completion, is_complete,
the pager, inspection, history, display data, clear_output, the iopub welcome - with tests
nobody here wrote. It skips every test whose sample is empty; every sample ipykernel supports
is filled in. One history access type is left out: "range" of the current session, which
IPython answers with session number 0 ("this session") instead of the number it reported in
"tail", so the suite's range check cannot hold for any ipykernel.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, ClassVar

import jupyter_kernel_test as jkt
import pytest

from .conftest import KERNEL_IMAGE, SESSION, SESSION_LABEL, TEST_IDENTITY, TEST_NETWORK

# docker_client removes the test network at the end of the session.
pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_client")]

KERNEL_NAME = f"labnotebook-conformance-{SESSION}"


class _DockerKernelSpec:
    """Installs the bundled kernelspec's twin (the test image, the test network, curve on)
    where jupyter_client finds it by name, for the suite's own `start_new_kernel`."""

    kernel_name = KERNEL_NAME
    _folder: ClassVar[str] = ""
    _saved_path: ClassVar[str | None] = None

    @classmethod
    def install(cls) -> None:
        from labnotebook.kernelspecs import bundled

        spec: dict[str, Any] = json.loads((bundled()["python-docker"] / "kernel.json").read_text())
        assert "curve" in spec["metadata"]["supported_encryption"]
        spec["metadata"]["kernel_provisioner"]["config"].update(
            image=KERNEL_IMAGE,
            network=TEST_NETWORK,
            labels={SESSION_LABEL: SESSION},
            encrypt_traffic="required",  # fail, never fall back to plain traffic
            **(TEST_IDENTITY if os.getuid() == 0 else {}),
        )
        # History lives in IPython's SQLite file, in a folder the kernel user can write (the
        # made-up test user has no home in the image; in the lab, homes are on the volume).
        spec.setdefault("env", {})["IPYTHONDIR"] = "/tmp/ipython"
        cls._folder = tempfile.mkdtemp(prefix="labnotebook-kernels-")
        target = os.path.join(cls._folder, "kernels", KERNEL_NAME)
        os.makedirs(target)
        with open(os.path.join(target, "kernel.json"), "w") as f:
            json.dump(spec, f)
        cls._saved_path = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [cls._folder, cls._saved_path]))

    @classmethod
    def setUpClass(cls) -> None:
        cls.install()
        super().setUpClass()  # type: ignore[misc]

    @classmethod
    def tearDownClass(cls) -> None:
        try:
            super().tearDownClass()  # type: ignore[misc]
        finally:
            cls.uninstall()

    @classmethod
    def uninstall(cls) -> None:
        if cls._saved_path is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = cls._saved_path
        shutil.rmtree(cls._folder, ignore_errors=True)


class TestDockerPythonKernel(_DockerKernelSpec, jkt.KernelTests):
    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        assert cls.km.curve_publickey, "the kernel was started without encryption"

    language_name = "python"
    file_extension = ".py"

    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('test', file=sys.stderr)"
    completion_samples: ClassVar[list[dict[str, Any]]] = [
        {"text": "zi", "matches": {"zip"}},
        {"text": "import os; os.path.jo", "matches": {"join"}},
    ]
    complete_code_samples: ClassVar[list[str]] = [
        "1",
        "print('hello, world')",
        "def f(x):\n  return x*2\n\n\n",
    ]
    incomplete_code_samples: ClassVar[list[str]] = ["print('''hello", "def f(x):\n  x*2"]
    invalid_code_samples: ClassVar[list[str]] = ["import = 7q"]
    code_page_something = "zip?"
    code_generate_error = "raise ValueError('conformance')"
    code_execute_result: ClassVar[list[dict[str, str]]] = [
        {"code": "1+2+3", "result": "6"},
        {"code": "[n*n for n in range(1, 4)]", "result": "[1, 4, 9]"},
        {"code": "'x' * 3", "result": "'xxx'"},
    ]
    code_display_data: ClassVar[list[dict[str, str]]] = [
        {"code": "from IPython.display import HTML, display; display(HTML('<b>test</b>'))",
         "mime": "text/html"},
        {"code": "from IPython.display import Math, display; display(Math('\\\\frac{1}{2}'))",
         "mime": "text/latex"},
    ]  # fmt: skip
    code_history_pattern = "1?2*"
    supported_history_operations = ("tail", "search")
    code_inspect_sample = "zip"
    code_clear_output = "from IPython.display import clear_output; clear_output()"


class TestDockerPythonKernelWelcome(_DockerKernelSpec, jkt.IopubWelcomeTests):
    """ipykernel >= 7 greets each new iopub subscriber (JEP 65): no output is lost at start."""

    support_iopub_welcome = True

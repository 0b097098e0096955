"""The production install: the wheel built from this checkout, installed with constraints.txt into a clean
virtual environment, serves from any folder everything a deployment serves."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ROOT, ServerProcess

METRICS_TOKEN = "wheel-test-metrics-token"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built as `make dist` builds it: from a clean build folder, which setuptools keeps in the checkout."""
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(dist), str(ROOT)],
        check=True,
    )
    (built,) = dist.glob("bellcast-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean virtual environment with the wheel (and its embedded stores) installed; its `bin` folder."""
    environment = tmp_path_factory.mktemp("venv")
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--constraint",
            str(ROOT / "constraints.txt"),
            f"{wheel}[embedded]",
        ],
        check=True,
    )
    return environment / "bin"


@pytest.fixture
def served_from_elsewhere(installed: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    """`bellcast serve` started in an unrelated folder, on its own embedded stores, as a user would start it.

    The folder holds a `services` and a `handlers` package of its own that fail when imported: the
    installed server must never take them for its own modules.
    """
    folder = tmp_path / "elsewhere"
    for name in ("services", "handlers"):
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(f"raise ImportError('the folder\\'s own {name} was imported')\n")
    server = ServerProcess(
        None,
        tmp_path / "bellcast.log",
        command=(str(installed / "bellcast"), "serve"),
        cwd=folder,
        METRICS_TOKEN=METRICS_TOKEN,
        PYTHONPATH=str(folder),
    )
    try:
        server.wait_until_ready(timeout=90)
        yield server
    finally:
        server.stop()


def served_files() -> list[Path]:
    """Every file under static/ (the bell, its pieces and its Vue runtime)."""
    files = sorted(path for path in (ROOT / "static").rglob("*") if path.is_file())
    assert ROOT / "static" / "vendor" / "vue.runtime.esm-browser.prod.js" in files, "run `make test`: it copies Vue"
    return files


def fetch(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read()


def test_the_wheel_installs_one_top_level_name_and_carries_every_served_file(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names if not name.startswith("bellcast-")} == {"bellcast"}
    expected = {"bellcast/server.py", "bellcast/handlers/openapi.json", "bellcast/templates/demo.html"}
    expected |= {"bellcast/templates/status.html"}
    expected |= {f"bellcast/{path.relative_to(ROOT)}" for path in served_files()}
    assert expected <= set(names)
    # Nothing shipped that the checkout no longer has (a module left over in a build folder, say).
    shipped = [name.removeprefix("bellcast/") for name in names if name.startswith("bellcast/")]
    assert [name for name in shipped if not (ROOT / name).is_file()] == []


def test_bellcast_serve_from_any_folder_serves_the_bell_the_pages_and_the_openapi_document(
    served_from_elsewhere: ServerProcess,
) -> None:
    port = served_from_elsewhere.port
    for path in served_files():
        status, _, body = fetch(port, f"/{path.relative_to(ROOT)}")
        assert (status, body) == (200, path.read_bytes()), path
    status, content_type, page = fetch(port, "/")
    assert (status, content_type) == (200, "text/html; charset=UTF-8")
    assert b"<notification-bell" in page
    status, content_type, page = fetch(port, "/status", {"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert (status, content_type) == (200, "text/html; charset=UTF-8")
    assert b"bellcast" in page
    status, _, document = fetch(port, "/api/openapi.json")
    assert status == 200
    assert json.loads(document) == json.loads((ROOT / "handlers" / "openapi.json").read_text())
    assert "Traceback" not in served_from_elsewhere.output()


def test_the_service_layer_imports_from_the_installed_wheel_as_the_api_docs_show(installed: Path, tmp_path: Path):
    imports = (
        "from bellcast.server import parse_settings, start_runtime\n"
        "from services.notifications import Notification, NotificationService\n"
        "import services\n"
        "print(services.__file__)\n"
    )
    done = subprocess.run([str(installed / "python"), "-c", imports], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (
        Path(done.stdout.strip()).parent.parent
        == installed.parent
        / "lib"
        / f"python{sys.version_info.major}.{sys.version_info.minor}"
        / "site-packages"
        / "bellcast"
    )

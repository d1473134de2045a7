"""Installing xnor_larq leaves a user's TensorFlow stack as it is; the sdist is whole."""

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: What `pip install xnor_larq` must never replace in a working environment.
KEPT = ("tensorflow", "tf-keras", "tf_keras", "protobuf", "numpy")


def _pip(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.network
def test_installing_the_project_changes_no_installed_tensorflow_stack(tmp_path):
    report_path = tmp_path / "report.json"
    result = _pip("install", "--dry-run", "--quiet", "--report", str(report_path), str(ROOT))
    if result.returncode != 0 and "Could not find" in result.stderr + result.stdout:
        pytest.skip(f"no package index reachable: {result.stderr[-300:]}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    changed = {
        item["metadata"]["name"].lower(): item["metadata"]["version"] for item in report["install"]
    }
    replaced = {name: version for name, version in changed.items() if name in KEPT}
    assert not replaced, f"pip would replace {replaced}"
    assert "xnor-larq" in changed or "xnor_larq" in changed


def test_the_sdist_ships_runnable_tests(tmp_path):
    build = pytest.importorskip("build")  # noqa: F841
    result = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(tmp_path),
         str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    if result.returncode != 0 and "Could not find" in result.stderr + result.stdout:
        pytest.skip("no package index reachable for the build backend")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Deprecat" not in result.stderr + result.stdout, result.stderr[-3000:]
    (sdist,) = tmp_path.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {Path(n).relative_to(Path(n).parts[0]).as_posix() for n in archive.getnames()}
    for needed in ("tests/conftest.py", "tests/references.py", "tests/formats.py",
                   "docs/MATH.md", "constraints.txt"):
        assert needed in names, needed
    assert list(tmp_path.glob("xnor_larq-*.whl"))
    # the sdist's own tests run from the unpacked sdist (its package, not this checkout's)
    with tarfile.open(sdist) as archive:
        archive.extractall(tmp_path / "unpacked", filter="data")
    (unpacked,) = (tmp_path / "unpacked").iterdir()
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
         "tests/test_power_of_two.py", "tests/test_quantizers.py"],
        cwd=unpacked, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:]
    assert "passed" in run.stdout

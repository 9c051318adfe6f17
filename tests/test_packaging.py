"""The sdist carries everything the kernels are built from, and setup.py refuses to build
a fastnn without kernels (issue 14: an sdist without the .pyx/.pxd/.pxi sources used to
become a pure-Python wheel that could not train, without an error).

The sdist is built from a copy of the files git tracks or would (what a clean clone holds), with
``python -m build --sdist --no-isolation`` (the build requirements are the test
environment's own: no network)."""
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNEL_SUFFIXES = (".pyx", ".pxd", ".pxi", ".h", ".c", ".inc")


def tracked(*paths):
    """Files git tracks, and new ones it does not ignore (a clone once they are committed)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard",
                          "--", *paths], cwd=ROOT, check=True, capture_output=True).stdout.decode()
    return [p for p in out.split("\0") if p]


def copy_clean_clone(dest):
    """The tracked files of the working tree (without data/: not part of the sdist)."""
    for rel in tracked():
        src = os.path.join(ROOT, rel)
        if rel.startswith("data/") or not os.path.isfile(src):
            continue                      # data is not shipped; a deleted file is not there
        os.makedirs(os.path.join(dest, os.path.dirname(rel)), exist_ok=True)
        shutil.copy2(src, os.path.join(dest, rel))


@pytest.fixture(scope="module")
def sdist_members(tmp_path_factory):
    src = tmp_path_factory.mktemp("clone")
    dist = tmp_path_factory.mktemp("dist")
    copy_clean_clone(src)
    proc = subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation",
                           "--outdir", str(dist)], cwd=src, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (name,) = os.listdir(dist)
    assert name.endswith(".tar.gz")
    with tarfile.open(dist / name) as tar:
        # drop the top folder fastnn-<version>/
        return {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}


@pytest.mark.slow
def test_sdist_holds_every_kernel_source(sdist_members):
    want = [p for p in tracked("kernels") if p.endswith(KERNEL_SUFFIXES)]
    assert any(p.endswith(".pyx") for p in want) and any(p.endswith(".pxd") for p in want)
    missing = sorted(set(want) - sdist_members)
    assert not missing, f"the sdist lacks {missing}"
    for must in ("setup.py", "pyproject.toml", "MANIFEST.in", "fastnn/__init__.py",
                 "fastnn/py.typed"):
        assert must in sdist_members
    stubs = [p for p in tracked("fastnn/_ext") if p.endswith(".pyi")]
    assert stubs and set(stubs) <= sdist_members
    # nothing built in a development checkout leaks in
    assert not [m for m in sdist_members if m.endswith((".so", ".o", ".pyc"))]


def test_setup_without_kernel_sources_fails_loudly(tmp_path):
    shutil.copy2(os.path.join(ROOT, "setup.py"), tmp_path)
    shutil.copy2(os.path.join(ROOT, "pyproject.toml"), tmp_path)
    proc = subprocess.run([sys.executable, "setup.py", "--name"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "no kernel sources" in proc.stderr and "kernels/*/*.pyx" in proc.stderr
    assert "MANIFEST.in" in proc.stderr


def test_setup_with_a_missing_c_source_fails_loudly(tmp_path):
    """A .pyx whose declared extra C source is gone names the file."""
    shutil.copy2(os.path.join(ROOT, "setup.py"), tmp_path)
    os.makedirs(tmp_path / "kernels" / "demo")
    (tmp_path / "kernels" / "demo" / "demo.pyx").write_text(
        "# fastnn-c-sources: ../other/gone.c\n")
    proc = subprocess.run([sys.executable, "setup.py", "--name"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "kernels/other/gone.c" in proc.stderr and "missing" in proc.stderr

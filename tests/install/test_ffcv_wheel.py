"""install/build_ffcv_wheel.py: the wheel's RECORD and tag (fast), and a real build (slow:
fetches the sdist, and the Debian packages unless installed): OpenCV linked in, libturbojpeg
and libtbb beside the extension through RUNPATH $ORIGIN, the patched sources, pip installing
it on every CPython 3.10+ present, and ffcv from it decoding a JPEG as Pillow does."""
from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("build_ffcv_wheel", REPO / "install" / "build_ffcv_wheel.py")
builder = importlib.util.module_from_spec(spec)
spec.loader.exec_module(builder)

# what the extension may need from the node: glibc, libstdc++/libgcc, and the two it carries
ALLOWED_NEEDED = {"libturbojpeg.so.0", "libtbb.so.12", "libstdc++.so.6", "libm.so.6", "libgcc_s.so.1",
                  "libc.so.6", "libpthread.so.0", "libdl.so.2"}


def test_record_and_tag(tmp_path: Path) -> None:
    files = {"ffcv/__init__.py": b"x = 1\n", "ffcv/_libffcv.abi3.so": b"\x7fELF"}
    tag = builder.wheel_tag((2, 34), "x86_64")
    assert tag == "cp310-abi3-manylinux_2_34_x86_64"
    (tmp_path / "ffcv-1.0.2-old.whl").write_bytes(b"stale")
    wheel = builder.write_wheel(files, tmp_path, tag)
    assert wheel.name == "ffcv-1.0.2-cp310-abi3-manylinux_2_34_x86_64.whl"
    assert [p.name for p in tmp_path.glob("*.whl")] == [wheel.name]  # the stale one is gone
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        record = archive.read("ffcv-1.0.2.dist-info/RECORD").decode().splitlines()
        assert f"Tag: {tag}" in archive.read("ffcv-1.0.2.dist-info/WHEEL").decode()
        rows = {row.split(",")[0]: row.split(",")[1:] for row in record}
        assert set(rows) == names
        for name in names - {"ffcv-1.0.2.dist-info/RECORD"}:
            data = archive.read(name)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert rows[name] == [f"sha256={digest}", str(len(data))]
        assert archive.getinfo("ffcv/_libffcv.abi3.so").external_attr >> 16 == 0o755


def test_package_files_follow_find_packages(tmp_path: Path) -> None:
    for rel in ("ffcv/__init__.py", "ffcv/a/__init__.py", "ffcv/a/m.py", "ffcv/b/m.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    assert sorted(builder.package_files(tmp_path)) == ["ffcv/__init__.py", "ffcv/a/__init__.py", "ffcv/a/m.py"]


class _Response(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def test_fetch_sdist_checks_the_published_digest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sdist is downloaded, not prepared by pip (whose metadata step runs ffcv's
    setup.py, which needs OpenCV's pkg-config files), and kept only with PyPI's sha256."""
    payload = b"not ffcv"
    monkeypatch.setattr(builder.urllib.request, "urlopen", lambda url, timeout: _Response(payload))
    with pytest.raises(SystemExit, match="sha256"):
        builder.fetch_sdist(tmp_path)
    assert not (tmp_path / "ffcv-1.0.2.tar.gz").exists()
    monkeypatch.setattr(builder, "SDIST_SHA256", hashlib.sha256(payload).hexdigest())
    assert builder.fetch_sdist(tmp_path).read_bytes() == payload


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (shutil.which("g++") and shutil.which("objdump") and shutil.which("readelf")):
        pytest.skip("needs g++ and binutils")
    work = tmp_path_factory.mktemp("wheel")
    return builder.build(work / "out", work / "work", "auto", None)


def elf(path: Path) -> str:
    return subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout


@pytest.mark.slow
def test_built_wheel_is_self_contained(built: Path, tmp_path: Path) -> None:
    assert built.name.startswith("ffcv-1.0.2-cp310-abi3-manylinux_2_") and built.name.endswith("_x86_64.whl")
    with zipfile.ZipFile(built) as archive:
        archive.extractall(tmp_path)
    ffcv = tmp_path / "ffcv"
    dynamic = elf(ffcv / "_libffcv.abi3.so")
    assert "Library runpath: [$ORIGIN]" in dynamic
    needed = {line.split("[")[1].rstrip("]") for line in dynamic.splitlines() if "(NEEDED)" in line}
    assert needed <= ALLOWED_NEEDED and {"libturbojpeg.so.0", "libtbb.so.12"} <= needed, needed
    for lib in ("libturbojpeg.so.0", "libtbb.so.12"):
        assert (ffcv / lib).is_file()
    assert "IMAGE_MODES = {'jpg': 0, 'raw': 1}" in (ffcv / "fields" / "rgb_image.py").read_text()
    assert (ffcv / "pipeline" / "graph.py").read_text().startswith("from warnings import warn")
    floor = built.name.split("manylinux_")[1].split("_x86_64")[0]
    assert f"glibc >= {floor.replace('_', '.')}" in (tmp_path / "ffcv-1.0.2.dist-info" / "BUILD").read_text()


def find_python(version: str) -> str | None:
    """A working pythonX.Y: on PATH, or a pyenv installation that is not the active one."""
    candidates = [shutil.which(f"python{version}"),
                  *map(str, sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}")))]
    for candidate in filter(None, candidates):
        if subprocess.run([candidate, "-c", "pass"], capture_output=True).returncode == 0:
            return candidate
    return None


@pytest.mark.slow
@pytest.mark.parametrize("version", ["3.10", "3.12", "3.13"])
def test_pip_installs_it_on_other_pythons(built: Path, tmp_path: Path, version: str) -> None:
    """pip accepts the tags, and that Python loads the extension (ffcv itself needs torch)."""
    python = find_python(version)
    if python is None:
        pytest.skip(f"no python{version} here")
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target",
                    str(tmp_path), str(built)], check=True, capture_output=True)
    so = tmp_path / "ffcv" / "_libffcv.abi3.so"
    code = ("import ctypes, importlib.util; s = importlib.util.spec_from_file_location('ffcv._libffcv', "
            f"{str(so)!r}); m = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
            "lib = ctypes.CDLL(m.__file__); print(lib.imdecode is not None and lib.resize is not None)")
    assert subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "True"


DECODE = """
import io, sys
import numpy as np
from PIL import Image
import ffcv
from ffcv.libffcv import imdecode
data = np.frombuffer(sys.stdin.buffer.read(), np.uint8)
out = np.zeros((48, 64, 3), np.uint8)
assert imdecode(data, out, 48, 64, 48, 64, 0, 0, 1, 1, False, False) == 0
ref = np.asarray(Image.open(io.BytesIO(data.tobytes())).convert("RGB")).astype(int)
print(ffcv.__file__, np.abs(out.astype(int) - ref).mean(), np.abs(out.astype(int) - ref).max())
"""


@pytest.mark.slow
def test_ffcv_from_the_wheel_decodes_as_pillow(built: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from PIL import Image

    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target",
                    str(tmp_path), str(built)], check=True, capture_output=True)
    y, x = np.mgrid[0:48, 0:64]
    image = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)  # smooth gradients
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=90)
    proc = subprocess.run([sys.executable, "-c", DECODE], input=buffer.getvalue(), capture_output=True,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    origin, mean, largest = proc.stdout.decode().split()
    assert origin == str(tmp_path / "ffcv" / "__init__.py")
    # ffcv decodes with libjpeg-turbo's fast DCT, Pillow with the accurate one: about 1 level apart
    assert float(mean) < 1.5 and int(largest) <= 8, (mean, largest)

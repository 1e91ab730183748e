"""Build a self-contained ffcv 1.0.2 wheel without root: ``make ffcv-wheel``.

ffcv is an sdist only and its build asks pkg-config for OpenCV and libturbojpeg development
files (the most reported install problem: ffcv GitHub issues 60, 133, 237, 239, 347, 386).
This builds the same extension directly with g++:

- OpenCV linked in statically: ``libopencv_core.a`` and ``libopencv_imgproc.a`` from Debian's
  ``libopencv-core-dev`` / ``libopencv-imgproc-dev`` (libffcv uses only ``cv::Mat`` and
  ``cv::resize``), through an ``opencv2/opencv.hpp`` that includes just core and imgproc, with
  its symbols hidden and a stub for the three ``glX*`` functions OpenCV core refers to;
- ``libturbojpeg.so.0`` (``libturbojpeg0``) and ``libtbb.so.12`` (``libtbb12``, which static
  OpenCV core calls) copied beside the extension, found through RUNPATH ``$ORIGIN``;
- the extension built against the stable ABI (``Py_LIMITED_API`` 3.10: its only Python call
  is ``PyModule_Create2`` for a dummy module, ffcv calls its functions through ctypes), named
  ``_libffcv.abi3.so``, so one wheel installs on CPython 3.10 and newer;
- ffcv's Python files patched as ``install/patch_ffcv.py`` says (a plain-dict IMAGE_MODES,
  no distutils import);
- the platform tag ``manylinux_2_X`` from the newest glibc symbol version the binaries need.

The Debian packages come from the system when all are installed (``--from system``), else
``apt-get download`` + ``dpkg -x`` into the work folder (``--from debs``; no root needed).
The sdist comes from PyPI (sha256 checked) unless ``--sdist`` names it. Needs g++ and Python headers.

Usage: python install/build_ffcv_wheel.py [--out wheelhouse] [--work build/ffcv-wheel]
                                          [--from auto|system|debs] [--sdist ffcv-1.0.2.tar.gz]
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.util
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import urllib.request
import zipfile
from pathlib import Path

VERSION = "1.0.2"
DEB_PACKAGES = ("libopencv-core-dev", "libopencv-imgproc-dev", "libturbojpeg0", "libturbojpeg0-dev", "libtbb12")
SHIPPED_LIBS = ("libturbojpeg.so.0", "libtbb.so.12")  # copied into ffcv/, beside the extension
STATIC_LIBS = ("libopencv_imgproc.a", "libopencv_core.a")
LICENSED = {"libopencv-core-dev": "OpenCV", "libturbojpeg0": "libjpeg-turbo", "libtbb12": "oneTBB"}
ABI = "cp310-abi3"  # Py_LIMITED_API 0x030A0000
OPENCV_HPP = '#include "opencv2/core.hpp"\n#include "opencv2/imgproc.hpp"\n'
GLX_STUB = """// OpenCV core's OpenGL interop refers to these; libffcv never reaches that code.
#define HIDDEN __attribute__((visibility("hidden")))
extern "C" {
HIDDEN void *glXGetCurrentContext(void) { return 0; }
HIDDEN void *glXGetCurrentDisplay(void) { return 0; }
HIDDEN void *glXGetProcAddressARB(const unsigned char *) { return 0; }
}
"""
# ffcv 1.0.2's sdist as PyPI lists it (https://pypi.org/simple/ffcv/)
SDIST_URL = ("https://files.pythonhosted.org/packages/db/95/"
             "de56ae69d42c65fe04e408cd27a3e62a925fb576f0f2330a2b3588e488d5/ffcv-1.0.2.tar.gz")
SDIST_SHA256 = "42766a487c8a659b543d070f24732c4b65aab8d96980f5792c63e91e55511f00"
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed, so that the same inputs give the same wheel


def run(cmd: list[str], cwd: Path | None = None) -> str:
    """Run ``cmd``, fail with its output; return its stdout."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def installed(package: str) -> bool:
    """Whether dpkg has ``package`` installed (False without dpkg)."""
    try:
        proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    except FileNotFoundError:
        return False
    return proc.stdout.strip() == "install ok installed"


def debian_root(work: Path, source: str) -> Path:
    """The root under which the Debian packages' files lie: / (installed) or an unpacked copy."""
    if source == "auto":
        source = "system" if all(installed(p) for p in DEB_PACKAGES) else "debs"
    if source == "system":
        print("Debian packages: installed ones (" + " ".join(DEB_PACKAGES) + ")")
        return Path("/")
    root, debs = work / "debian-root", work / "debs"
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        sys.exit("needs apt-get and dpkg (Debian/Ubuntu) to fetch " + " ".join(DEB_PACKAGES)
                 + ": build the wheel on such a machine and carry it (README)")
    shutil.rmtree(debs, ignore_errors=True)
    debs.mkdir(parents=True)
    run(["apt-get", "download", *DEB_PACKAGES], cwd=debs)
    shutil.rmtree(root, ignore_errors=True)
    for deb in sorted(debs.glob("*.deb")):
        run(["dpkg", "-x", str(deb), str(root)])
    print("Debian packages: " + " ".join(sorted(d.name for d in debs.glob("*.deb"))))
    return root


def fetch_sdist(work: Path) -> Path:
    """ffcv's sdist, downloaded from PyPI's file host and checked against its published sha256.

    Not ``pip download``: pip prepares an sdist's metadata by running its setup.py, and
    ffcv's asks pkg-config for OpenCV there, so it fails on exactly the machines this
    build is for (no OpenCV development package installed)."""
    target = work / f"ffcv-{VERSION}.tar.gz"
    if not target.is_file():
        print(f"downloading {SDIST_URL}")
        try:
            with urllib.request.urlopen(SDIST_URL, timeout=120) as response:
                data = response.read()
        except OSError as exc:
            sys.exit(f"could not download {SDIST_URL} ({exc}); fetch it elsewhere and pass --sdist")
        digest = hashlib.sha256(data).hexdigest()
        if digest != SDIST_SHA256:
            sys.exit(f"{SDIST_URL}: sha256 {digest}, expected {SDIST_SHA256}")
        work.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return target


def load_patcher():
    """install/patch_ffcv.py as a module (it sits beside this file)."""
    spec = importlib.util.spec_from_file_location("patch_ffcv", Path(__file__).with_name("patch_ffcv.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def unpack_sdist(sdist: Path, work: Path) -> Path:
    """The sdist unpacked into ``work`` with ffcv's Python files patched; returns its top folder."""
    top = work / f"ffcv-{VERSION}"
    shutil.rmtree(top, ignore_errors=True)
    with tarfile.open(sdist) as tar:
        # the "data" filter refuses links and paths leaving ``work`` (Python >= 3.10.12 / 3.11.4)
        tar.extractall(work, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    for line in load_patcher().patch_package(top / "ffcv"):
        print(line)
        if "left alone" in line:
            sys.exit("the sdist is not ffcv 1.0.2 as expected")
    return top


def compile_extension(src: Path, root: Path, work: Path) -> Path:
    """Compile libffcv.cpp into work/_libffcv.abi3.so (OpenCV static, RUNPATH $ORIGIN)."""
    libdir = root / "usr" / "lib" / f"{platform.machine()}-linux-gnu"
    include = root / "usr" / "include"
    python_include = Path(sysconfig.get_paths()["include"])
    if not (python_include / "Python.h").is_file():
        sys.exit(f"{python_include}/Python.h missing: install the Python headers (python3-dev)")
    cxx = shutil.which("g++") or sys.exit("g++ missing: install a C++ compiler (build-essential)")
    override = work / "include"
    (override / "opencv2").mkdir(parents=True, exist_ok=True)
    (override / "opencv2" / "opencv.hpp").write_text(OPENCV_HPP)
    stub = work / "glx_stub.cpp"
    stub.write_text(GLX_STUB)
    out = work / "_libffcv.abi3.so"
    run([cxx, "-O3", "-fPIC", "-shared", "-DPy_LIMITED_API=0x030A0000",
         f"-I{override}", f"-I{include / 'opencv4'}", f"-I{include}", f"-I{python_include}",
         str(src / "libffcv" / "libffcv.cpp"), str(stub), "-o", str(out),
         "-Wl,--start-group", *[str(libdir / name) for name in STATIC_LIBS], "-Wl,--end-group",
         *[str(libdir / name) for name in SHIPPED_LIBS], "-lpthread",
         "-Wl,--exclude-libs,ALL", "-Wl,--as-needed", "-Wl,-rpath,$ORIGIN", "-s"])
    return out


def glibc_floor(paths: list[Path]) -> tuple[int, int]:
    """The newest GLIBC_x.y symbol version any of ``paths`` needs (objdump -T)."""
    versions = set()
    for path in paths:
        versions.update(re.findall(r"\bGLIBC_(\d+)\.(\d+)", run(["objdump", "-T", str(path)])))
    return max((int(a), int(b)) for a, b in versions)


def wheel_tag(floor: tuple[int, int], machine: str) -> str:
    """The wheel's tag: stable ABI from 3.10, on glibc >= ``floor``."""
    return f"{ABI}-manylinux_{floor[0]}_{floor[1]}_{machine}"


def metadata(src: Path) -> str:
    """METADATA: the sdist's PKG-INFO headers plus its requirements."""
    head, _, body = (src / "PKG-INFO").read_text().partition("\n\n")
    requires = (src / "ffcv.egg-info" / "requires.txt").read_text().split()
    return head + "".join(f"\nRequires-Dist: {r}" for r in requires) + "\n\n" + body


def record_line(name: str, data: bytes) -> str:
    """One RECORD row: path, urlsafe base64 sha256 without padding, size."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def write_wheel(files: dict[str, bytes], out_dir: Path, tag: str) -> Path:
    """Write ffcv-VERSION-TAG.whl holding ``files`` (archive name -> bytes) and its RECORD."""
    info = f"ffcv-{VERSION}.dist-info"
    files = dict(files)
    files[f"{info}/WHEEL"] = (f"Wheel-Version: 1.0\nGenerator: ffcv-bt install/build_ffcv_wheel.py\n"
                              f"Root-Is-Purelib: false\nTag: {tag}\n").encode()
    rows = [record_line(name, data) for name, data in sorted(files.items())] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(rows) + "\n").encode()
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob(f"ffcv-{VERSION}-*.whl"):
        old.unlink()
    wheel = out_dir / f"ffcv-{VERSION}-{tag}.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in sorted(files.items()):
            entry = zipfile.ZipInfo(name, ZIP_TIME)
            entry.external_attr = (0o755 if name.endswith(".so") or ".so." in name else 0o644) << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, data)
    return wheel


def package_files(src: Path) -> dict[str, bytes]:
    """ffcv's Python files: every .py in a folder chain of packages (setup.py's find_packages)."""
    files = {}
    for path in sorted((src / "ffcv").rglob("*.py")):
        rel = path.relative_to(src)
        if all((src / parent / "__init__.py").is_file() for parent in rel.parents if parent != Path(".")):
            files[rel.as_posix()] = path.read_bytes()
    return files


def build(out_dir: Path, work: Path, source: str, sdist: Path | None) -> Path:
    """Build the wheel into ``out_dir``; return its path."""
    work.mkdir(parents=True, exist_ok=True)
    work = work.resolve()
    root = debian_root(work, source)
    src = unpack_sdist(sdist or fetch_sdist(work), work)
    extension = compile_extension(src, root, work)
    libdir = root / "usr" / "lib" / f"{platform.machine()}-linux-gnu"
    shipped = {name: (libdir / name).resolve() for name in SHIPPED_LIBS}
    floor = glibc_floor([extension, *shipped.values()])
    info = f"ffcv-{VERSION}.dist-info"
    files = package_files(src)
    files["ffcv/_libffcv.abi3.so"] = extension.read_bytes()
    files.update({f"ffcv/{name}": path.read_bytes() for name, path in shipped.items()})
    files[f"{info}/METADATA"] = metadata(src).encode()
    files[f"{info}/licenses/LICENSE"] = (src / "LICENSE").read_bytes()
    for package, project in LICENSED.items():
        files[f"{info}/licenses/{project}.copyright"] = (root / "usr/share/doc" / package / "copyright").read_bytes()
    files[f"{info}/BUILD"] = (
        "Built by ffcv-bt's install/build_ffcv_wheel.py from the ffcv 1.0.2 sdist:\n"
        "- ffcv/fields/rgb_image.py: IMAGE_MODES is a plain dict (no numba compile at import);\n"
        "- ffcv/pipeline/graph.py: line 1 `from warnings import warn` (no distutils, Python 3.12);\n"
        "- _libffcv.abi3.so: stable ABI 3.10, OpenCV core+imgproc linked statically from Debian's\n"
        "  libopencv-core-dev/libopencv-imgproc-dev; libturbojpeg.so.0 (libturbojpeg0) and\n"
        f"  libtbb.so.12 (libtbb12) beside it (RUNPATH $ORIGIN); needs glibc >= {floor[0]}.{floor[1]}.\n").encode()
    wheel = write_wheel(files, out_dir, wheel_tag(floor, platform.machine()))
    print(f"{wheel} ({wheel.stat().st_size / 2**20:.1f} MiB; glibc >= {floor[0]}.{floor[1]})")
    return wheel


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("wheelhouse"), help="where the wheel goes")
    parser.add_argument("--work", type=Path, default=Path("build/ffcv-wheel"), help="scratch folder")
    parser.add_argument("--from", dest="source", choices=["auto", "system", "debs"], default="auto",
                        help="Debian packages: installed ones, or apt-get download (auto: installed if all are)")
    parser.add_argument("--sdist", type=Path, help="ffcv-1.0.2.tar.gz (default: downloaded from PyPI)")
    args = parser.parse_args(argv)
    build(args.out, args.work, args.source, args.sdist)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""install/patch_ffcv.py: ffcv 1.0.2's import-time typed dict becomes a plain dict with the
same entries; idempotent; another text is left alone."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("patch_ffcv", REPO / "install" / "patch_ffcv.py")
patch_ffcv = importlib.util.module_from_spec(spec)
sys.modules["patch_ffcv"] = patch_ffcv
spec.loader.exec_module(patch_ffcv)

AROUND = "from numba.typed import Dict\n\n{}\n\ndef encode_jpeg(numpy_image, quality):\n    pass\n"


def test_patch_keeps_the_table_and_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "rgb_image.py"
    path.write_text(AROUND.format(patch_ffcv.ORIGINAL))
    assert "plain dict" in patch_ffcv.patch(path)
    patched = path.read_text()
    assert patched == AROUND.format(patch_ffcv.PATCHED)
    namespace: dict = {}
    exec(patched.replace("from numba.typed import Dict\n", ""), namespace)  # no numba needed
    assert namespace["IMAGE_MODES"] == {"jpg": 0, "raw": 1}
    assert "already patched" in patch_ffcv.patch(path) and path.read_text() == patched
    other = tmp_path / "other.py"
    other.write_text("IMAGE_MODES = Dict()\n")
    assert "left alone" in patch_ffcv.patch(other) and other.read_text() == "IMAGE_MODES = Dict()\n"


def test_installed_ffcv_has_the_same_modes() -> None:
    from ffcv.fields import rgb_image

    assert (rgb_image.IMAGE_MODES["jpg"], rgb_image.IMAGE_MODES["raw"]) == (0, 1)


def test_graph_patch_drops_distutils(tmp_path: Path) -> None:
    """graph.py's unused ``from distutils.log import warn`` (no distutils in Python 3.12)
    becomes ``from warnings import warn``; patch_package patches both files."""
    package = tmp_path / "ffcv"
    (package / "pipeline").mkdir(parents=True)
    (package / "fields").mkdir()
    graph = "from distutils.log import warn\nimport warnings\nimport ast\n"
    (package / "pipeline" / "graph.py").write_text(graph)
    (package / "fields" / "rgb_image.py").write_text(AROUND.format(patch_ffcv.ORIGINAL))
    lines = patch_ffcv.patch_package(package)
    assert "distutils" in lines[1] and "plain dict" in lines[0], lines
    patched = (package / "pipeline" / "graph.py").read_text()
    assert "distutils" not in patched.split("#")[0] and patched.endswith("import warnings\nimport ast\n")
    namespace: dict = {}
    exec(patched, namespace)
    assert namespace["warn"] is __import__("warnings").warn
    assert all("already patched" in line for line in patch_ffcv.patch_package(package))

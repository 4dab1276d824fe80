"""The deployment zip as Lambda should load it: without the distributions the
runtime already carries (requirements-runtime.txt: the runtime's copies are
the ones imported anyway, and botocore alone was two thirds of the zip), and
with bytecode next to every module, because /var/task is read-only and a
module without its .pyc is compiled again at every cold start (measured in
docs/cold-starts.md).

The .pyc files are unchecked-hash pycs (PEP 552): valid whatever the files'
timestamps after unzipping, and the same bytes from any build, so an unchanged
package stays byte-identical (scripts/deploy.py uploads by content hash)."""
import compileall
import csv
import io
import py_compile
import re
import sys
import tempfile
import zipfile
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
RUNTIME_REQUIREMENTS = PROJECT_DIR / "requirements-runtime.txt"
TASK_ROOT = "/var/task"  # where Lambda unzips the package: the path tracebacks name
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # as chalice writes them: the zip depends on the contents only


def _normalize(name):
    return re.sub(r"[-_.]+", "_", name).lower()


def runtime_distributions(path=RUNTIME_REQUIREMENTS):
    """Normalized names of the distributions the Lambda runtime carries."""
    names = set()
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(_normalize(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0]))
    return names


def _runtime_files(archive, distributions):
    """Every path in the zip that belongs to one of `distributions`: the files
    its RECORD lists and its .dist-info and .data directories."""
    names = archive.namelist()
    tops = {name.split("/", 1)[0] for name in names}
    own = {top for top in tops if top.endswith((".dist-info", ".data"))
           and _normalize(top.rsplit(".", 1)[0].rsplit("-", 1)[0]) in distributions}
    dropped = {name for name in names if name.split("/", 1)[0] in own}
    for top in own:
        if top.endswith(".dist-info") and f"{top}/RECORD" in names:
            rows = csv.reader(io.StringIO(archive.read(f"{top}/RECORD").decode()))
            dropped.update(row[0] for row in rows if row and row[0] in names)
    return dropped


def slim(zip_path, runtime_version, distributions=None):
    """Rewrite `zip_path` in place; returns (files dropped, files compiled).
    The bytecode is this interpreter's, so it must be the runtime's version."""
    if "%d.%d" % sys.version_info[:2] != runtime_version:
        raise SystemExit(f"packaging runs on Python {sys.version_info[0]}.{sys.version_info[1]}, the functions on "
                         f"{runtime_version}: its bytecode would be ignored (make's venv is made with the runtime's)")
    distributions = runtime_distributions() if distributions is None else distributions
    zip_path = Path(zip_path)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with zipfile.ZipFile(zip_path) as archive:
            dropped = _runtime_files(archive, distributions)
            modes = {}
            for info in archive.infolist():
                if info.filename not in dropped and not info.is_dir():
                    archive.extract(info, root)
                    modes[info.filename] = info.external_attr
        before = set(modes)
        # Data files that only look like Python (templates, samples) are never imported: left uncompiled.
        compileall.compile_dir(root, quiet=2, stripdir=str(root), prependdir=TASK_ROOT, workers=1,
                               invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
            for name in files:
                entry = zipfile.ZipInfo(name, date_time=ZIP_DATE)
                entry.external_attr = modes.get(name, 0o644 << 16)
                entry.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(entry, (root / name).read_bytes())
    return len(dropped), len(set(files) - before)

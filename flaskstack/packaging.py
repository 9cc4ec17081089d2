"""Packaging on the control node: a release archive and a wheelhouse per app.

Release: the id is a content hash. The same source (and the same app server
packages) always gives the same id, so a second ``ansible-playbook`` run finds
the release already on the host and changes nothing, and every host of one
deploy gets the same id. The archive holds the source plus a ``REVISION`` file
(the id, as Capistrano writes it), written last so that its presence on the host
means the whole archive was unpacked.

Wheelhouse: targets never reach PyPI. The control node downloads binary wheels
for the target (``pip download --only-binary=:all: --python-version --platform``)
and ships them. A wheelhouse is named by the target's Python, its architecture
and a hash of what gets installed, so it is built once and reused by every host
and every deploy until the requirements change.

Ansible (the flaskstack role's lookups) and ``fab deploy`` both call these.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from flaskstack.release import PROJECT_WHEEL_DIR, REVISION, WHEELHOUSE_COMPLETE

# The file the host checks for a whole release (written last): the tool's name for it.
REVISION_FILE = REVISION


@dataclass(frozen=True)
class Release:
    id: str
    archive: str


def source_files(src: Path, exclude: list[str]) -> list[Path]:
    """The files of a release, relative to ``src``, sorted; excluded names never entered."""
    found: list[Path] = []
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not excluded(d, exclude))
        for name in sorted(files):
            if name == REVISION_FILE or excluded(name, exclude):
                continue
            path = Path(root, name)
            if path.is_file():
                found.append(path.relative_to(src))
    return sorted(found, key=lambda p: p.as_posix())


def excluded(name: str, exclude: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude)


def release_id(src: Path, exclude: list[str], extra: list[str]) -> str:
    """A 12-hex-digit content hash of the source tree and the extra strings."""
    digest = hashlib.sha256()
    for rel in source_files(src, exclude):
        path = src / rel
        executable = os.access(path, os.X_OK)
        digest.update(f"{rel.as_posix()}\0{int(executable)}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    for item in extra:
        digest.update(f"extra\0{item}\0".encode())
    return digest.hexdigest()[:12]


def build_release(
    src: Path,
    name: str,
    exclude: list[str],
    extra: list[str],
    cache_dir: Path,
    project: Project | None = None,
) -> Release:
    """Return the release for ``src``, writing its archive unless it is already cached.
    A project installed as a wheel (project.shape "wheel") gets its wheel in the archive,
    in PROJECT_WHEEL_DIR: the host installs it into the release's venv."""
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a directory")
    rid = release_id(src, exclude, extra)
    archive = cache_dir / "releases" / f"{name}-{rid}.tar.gz"
    if not archive.exists():
        wheel = build_project_wheel(src, name, exclude, rid, cache_dir) if project and project.wheel else None
        archive.parent.mkdir(parents=True, exist_ok=True)
        partial = archive.with_suffix(f".partial-{os.getpid()}")
        with tarfile.open(partial, "w:gz") as tar:
            for rel in source_files(src, exclude):
                tar.add(src / rel, arcname=rel.as_posix(), filter=_normalise)
            if wheel:
                tar.add(wheel, arcname=f"{PROJECT_WHEEL_DIR}/{wheel.name}", filter=_normalise)
            data = f"{rid}\n".encode()
            info = tarfile.TarInfo(REVISION_FILE)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        partial.replace(archive)
    return Release(id=rid, archive=str(archive))


def package(app: dict, cache_dir: Path) -> tuple[Project, Release]:
    """A resolved app's project and release (flaskstack/model.py resolves it): what
    ansible-playbook and fab deploy ship alike."""
    src = Path(app["src"]).resolve()
    project = read_project(src, app["requirements"])
    exclude, extra = list(app["exclude"]), list(app["release_extra"])
    return project, build_release(src, app["name"], exclude, extra, cache_dir, project)


def git_note(src: Path) -> str:
    """What a deploy notes of the source it pushed: the control node's `git describe --dirty`
    (a release built from uncommitted changes says so)."""
    result = subprocess.run(
        ["git", "-C", str(src), "describe", "--always", "--dirty", "--abbrev=10"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return f"git {result.stdout.strip()}" if result.returncode == 0 else "not a git tree"


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Files belong to root in the archive; the host decides ownership."""
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode = 0o755 if info.mode & 0o111 else 0o644
    return info


# The wheelhouse's copies of what to install; the last one written marks it complete.
REQUIREMENTS = "requirements.txt"
# Written last: the tool takes a wheelhouse with this file for a complete one.
SERVER_REQUIREMENTS = WHEELHOUSE_COMPLETE


class WheelhouseError(Exception):
    """pip could not find wheels for the target, or the project cannot be read: the message
    carries the reason; setting is the app's setting it concerns (requirements or src)."""

    def __init__(self, message: str, setting: str = "requirements"):
        super().__init__(message)
        self.setting = setting


CONSTRAINTS = "constraints.txt"
_INCLUDE = re.compile(r"^(-r|--requirement|-c|--constraint)(?:\s+|=)(\S+)$")


def read_requirements(path: Path, _seen: frozenset = frozenset()) -> tuple[str, str]:
    """A requirements file as one: (requirement lines, constraint lines), its `-r` includes
    inlined and its `-c` files gathered (paths relative to the file that names them, as pip
    reads them), continuation lines joined, comments dropped. `--hash` pins stay on their line."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise WheelhouseError(f"cannot read {path}: {exc.strerror}") from None
    requirements, constraints = [], []
    for line in re.sub(r"\\\n", " ", text).splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if not line:
            continue
        include = _INCLUDE.match(line)
        if not include:
            requirements.append(" ".join(line.split()))
            continue
        target = (path.parent / include.group(2)).resolve()
        if not target.is_file():
            raise WheelhouseError(f"{path} includes {include.group(2)}, which does not exist ({target})")
        if target in _seen:
            continue
        reqs, cons = read_requirements(target, _seen | {path.resolve(), target})
        if include.group(1) in ("-r", "--requirement"):
            requirements += reqs.splitlines()
            constraints += cons.splitlines()
        else:
            constraints += (reqs + cons).splitlines()
    return "".join(f"{r}\n" for r in requirements), "".join(f"{c}\n" for c in constraints)


def hashed(requirements: str) -> bool:
    """pip's hash-checking mode: any --hash pin turns it on for every requirement installed with it."""
    return "--hash" in requirements


PYPROJECT = "pyproject.toml"
# Lock files of other tools: not read (pip cannot install from them); their users export them.
OTHER_LOCKS = {
    "uv.lock": "uv export --format requirements-txt --no-hashes -o {req}",
    "poetry.lock": "poetry export -o {req}",
    "pdm.lock": "pdm export -o {req}",
    "pylock.toml": "uv export --format requirements-txt -o {req}",
    "Pipfile.lock": "pipenv requirements > {req}",
}


@dataclass(frozen=True)
class Project:
    """What an app's source is, as the control node reads it, and what its venv gets.

    shape "requirements": a requirements file; the code runs from the release's folder.
    shape "wheel": a pyproject.toml project (PEP 621), built as a wheel on the control node
    and installed into the release's venv with its dependencies from the wheelhouse; a
    requirements file beside it is its lock (pip-compile's or `uv export`'s output), a
    constraints.txt its constraints."""

    shape: str
    requirements: str  # requirement lines for the wheelhouse
    constraints: str  # constraint lines
    files: tuple[str, ...]  # what was read, relative to src
    name: str = ""
    version: str = ""
    notes: tuple[str, ...] = field(default=())

    @property
    def wheel(self) -> bool:
        return self.shape == "wheel"

    def describe(self) -> str:
        lines = len(self.requirements.splitlines())
        count = f"{lines} requirement{'' if lines == 1 else 's'}"
        pinned = f", pinned by {' and '.join(self.files[1:])}" if self.files[1:] else ""
        if self.shape == "requirements":
            return f"requirements file {self.files[0]} ({count}); the code runs from the release"
        if self.shape == "project":
            return (
                f"pyproject.toml project {self.name} {self.version} without [build-system], not built: "
                f"{count}{pinned}; the code runs from the release"
            )
        return (
            f"pyproject.toml project {self.name} {self.version}, built as a wheel and installed with "
            f"{count}{pinned}"
        )


def read_project(src: Path, requirements: str = REQUIREMENTS) -> Project:
    """The project in src. A pyproject.toml with a [project] table (PEP 621) and a
    [build-system] is built as a wheel ("wheel"); one without [build-system] (an app as
    `uv init` makes it, or tool.uv.package = false) is not built, its dependencies are
    installed and its code runs from the release ("project"); else the requirements file
    is read ("requirements"). Raises WheelhouseError saying what is missing."""
    pyproject, req = src / PYPROJECT, src / requirements
    data: dict = {}
    if pyproject.is_file():
        try:
            data = tomllib.loads(pyproject.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise WheelhouseError(f"{pyproject} is not valid TOML: {exc}", "src") from None
    table = data.get("project")
    if table is None:
        if req.is_file():  # a pyproject.toml of tool settings only (ruff, pytest) changes nothing
            return Project("requirements", *read_requirements(req), (requirements,))
        others = [name for name in OTHER_LOCKS if (src / name).is_file()]
        hint = f"; export {others[0]}: {OTHER_LOCKS[others[0]].format(req=requirements)}" if others else ""
        if pyproject.is_file():
            raise WheelhouseError(
                f"{pyproject} has no [project] table (PEP 621) and there is no {requirements}: "
                f"flaskstack cannot tell what to install{hint}",
                "src",
            )
        raise WheelhouseError(
            f"{req} does not exist, and there is no {PYPROJECT} with a [project] table{hint}"
        )
    uv = data.get("tool", {}).get("uv", {}) if isinstance(data.get("tool"), dict) else {}
    built = isinstance(data.get("build-system"), dict) and not (
        isinstance(uv, dict) and uv.get("package") is False
    )
    if not isinstance(table, dict) or not isinstance(table.get("name"), str):
        raise WheelhouseError(f"{pyproject}: [project] has no name", "src")
    dynamic = table.get("dynamic") or []
    deps = table.get("dependencies") or []
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise WheelhouseError(
            f"{pyproject}: [project] dependencies is not a list of requirement strings", "src"
        )
    files, notes = [PYPROJECT], []
    if req.is_file():
        reqs, cons = read_requirements(req)
        files.append(requirements)
        # As `pip install -r lock .` would: the lock pins, the project's own list completes it.
        # In hash-checking mode every line needs a hash: the lock alone (the host's pip check
        # then says what it lacks).
        lines = reqs.splitlines() + ([] if hashed(reqs) or "dependencies" in dynamic else deps)
    elif "dependencies" in dynamic:
        raise WheelhouseError(
            f"{pyproject}: its dependencies are dynamic ([project] dynamic), so they cannot be read "
            f"without building it: list them in {requirements}",
            "src",
        )
    else:
        lines, cons = list(deps), ""
        notes += [
            f"{name} is not read (pip cannot install from it): "
            f"{OTHER_LOCKS[name].format(req=requirements)} to pin"
            for name in OTHER_LOCKS
            if (src / name).is_file()
        ]
    if (src / CONSTRAINTS).is_file() and requirements != CONSTRAINTS:
        more_reqs, more_cons = read_requirements(src / CONSTRAINTS)
        cons += more_reqs + more_cons
        files.append(CONSTRAINTS)
    version = table.get("version") if "version" not in dynamic else "(dynamic version)"
    requirement_lines = "".join(f"{line}\n" for line in lines)
    shape = "wheel" if built else "project"
    return Project(
        shape, requirement_lines, cons, tuple(files), table["name"], str(version or ""), tuple(notes)
    )


# pip's frame around a build backend's failure: not the reason.
_PIP_FRAME = (
    "note:", "error: subprocess-exited-with-error", "\u00d7", "\u2502", "\u2570", "[end of output]", "[", "^",
)  # fmt: skip


def build_failure(result: subprocess.CompletedProcess) -> str:
    """The backend's own reason in pip's output (its error line), not pip's frame or the traceback."""
    lines = [line.strip() for line in (result.stderr + result.stdout).splitlines()]
    useful = [line for line in lines if line and not line.startswith(_PIP_FRAME)]
    errors = [line for line in useful if re.match(r"([\w.]*(Error|Exception)|error|ERROR): ", line)]
    return "\n".join(errors[-3:] or useful[-6:])


def pip_wheel(
    target: str, out: Path, pip_args: list[str] | tuple[str, ...] = ()
) -> tuple[subprocess.CompletedProcess, Path | None]:
    """pip wheel of one target (a folder, or a requirement) without its dependencies, into
    out: pip's result, and the wheel if it built exactly one and that one is pure Python
    (py*-none-any: built here, it serves any target), else None."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--wheel-dir", str(out), *pip_args, target],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    wheels = sorted(out.glob("*.whl"))
    pure = len(wheels) == 1 and wheels[0].stem.split("-")[-2:] == ["none", "any"]
    return result, wheels[0] if pure else None


def build_project_wheel(src: Path, name: str, exclude: list[str], release: str, cache_dir: Path) -> Path:
    """The project's wheel, built by pip (PEP 517) from a copy of the release's files, so
    nothing is written into src; cached by release id. Only a pure-Python wheel can be
    built here for any target: anything else is refused."""
    folder = cache_dir / "project-wheels" / name / release
    built = sorted(folder.glob("*.whl"))
    if built:
        return built[0]
    with tempfile.TemporaryDirectory(prefix="flaskstack-wheel-") as tmp:
        copy, out = Path(tmp) / "src", Path(tmp) / "out"
        for rel in source_files(src, exclude):
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, copy / rel)
        result, wheel = pip_wheel(str(copy), out)
        if result.returncode != 0:
            raise WheelhouseError(f"{name}: pip cannot build a wheel of {src}:\n{build_failure(result)}")
        if not wheel:
            wheels = sorted(out.glob("*.whl"))
            raise WheelhouseError(
                f"{name}: building {src} gave {', '.join(w.name for w in wheels) or 'no wheel'}: flaskstack "
                "builds a project on the control node for any target, so it must be pure Python "
                "(a platform wheel belongs in the requirements, built where it runs)"
            )
        folder.mkdir(parents=True, exist_ok=True)
        # Each host's lookup runs in a process of its own: one partial file each.
        partial = folder / f".{wheel.name}.partial-{os.getpid()}"
        shutil.copy2(wheel, partial)
        partial.replace(folder / wheel.name)
    return folder / wheel.name


# pip's words for a requirement it found no wheel of (an sdist-only release among them):
# the rest of the line, whose marker (after ";") is cut off.
_NO_DISTRIBUTION = re.compile(r"No matching distribution found for (.+)$", re.M)


def package_name(requirement: str) -> str:
    """A requirement's project name as pip compares them (PEP 503: lower case, runs of -_. as
    one -), or '' for an option line (-r, --hash, -e)."""
    found = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return re.sub(r"[-_.]+", "-", found[1]).lower() if found else ""


# The requirements of a wheelhouse built from their source distributions (one per line).
BUILT_FROM_SOURCE = "built-from-source.txt"
MAX_BUILT_FROM_SOURCE = 20


def build_source_wheel(
    name: str, requirement: str, python: str, architecture: str, pip_args: list[str], dest: Path,
    failed: WheelhouseError,
) -> None:  # fmt: skip
    """A requirement with no wheel on the index (Flask-Mail 0.9.1, langdetect: a source
    distribution only), built into a wheel here: a pure-Python one serves any target, as the
    project's own wheel does. Anything else is refused with pip's first message (failed)."""
    with tempfile.TemporaryDirectory(prefix="flaskstack-sdist-") as tmp:
        result, wheel = pip_wheel(requirement, Path(tmp), pip_args)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or len(wheels) != 1:
            raise WheelhouseError(
                f"{failed}\nand no wheel of {requirement} could be built here:\n{build_failure(result)}"
            )
        if not wheel:
            raise WheelhouseError(
                f"{name}: {requirement} has no wheel for CPython {python} on {architecture}, only a source "
                f"distribution, and built here it is {wheels[0].name}, for this machine: pin a version "
                "that has a wheel for the target"
            )
        shutil.copy2(wheel, dest / wheel.name)


def wheelhouse_key(requirements: bytes, packages: list[str], python: str, architecture: str) -> str:
    """cp<major><minor>-<architecture>-<digest>: python may be the full version (3.11.2), which
    environment markers can tell apart (python_full_version), so it is in the digest too."""
    major_minor = ".".join(python.split(".")[:2])
    full = f"\0{python}" if python != major_minor else ""
    # "markers": wheelhouses made before markers were read for the target are never reused.
    salted = requirements + b"\0" + "\n".join(packages).encode() + full.encode() + b"\0markers"
    digest = hashlib.sha256(salted).hexdigest()[:12]
    return f"cp{major_minor.replace('.', '')}-{architecture}-{digest}"


# pip download --python-version --platform chooses wheels for the target but evaluates
# environment markers for the Python it runs on: redis 5.0.1 needs async-timeout where
# python_full_version <= "3.11.2" (Debian 12's Python), which a control node on 3.11.7
# left out, and a macOS control node would take sys_platform == "darwin" packages. pip
# runs here with the target's environment for its markers (packaging's default_environment,
# which pip's markers read at each evaluation).
PIP_FOR_TARGET = """
import json, sys
from pip._vendor.packaging import markers
target = json.loads(sys.argv.pop(1))
here = markers.default_environment
markers.default_environment = lambda: {**here(), **target}
from pip._internal.cli.main import main
sys.exit(main())
"""


def target_markers(python: str, architecture: str) -> dict[str, str]:
    """The environment markers of CPython `python` (3.11 or 3.11.2) on Linux `architecture`."""
    parts = python.split(".")
    full = python if len(parts) > 2 else f"{python}.0"
    return {
        "implementation_name": "cpython", "implementation_version": full,
        "platform_python_implementation": "CPython", "python_version": ".".join(parts[:2]),
        "python_full_version": full, "platform_machine": architecture, "platform_system": "Linux",
        "sys_platform": "linux", "os_name": "posix",
    }  # fmt: skip


def build_wheelhouse(
    name: str,
    project: Project,
    packages: list[str],
    python: str,
    architecture: str,
    platforms: list[str],
    pip_args: list[str],
    cache_dir: Path,
    build_from_source: list[str] | tuple[str, ...] = (),
) -> tuple[str, Path]:
    """Return (key, folder) of the app's wheelhouse, downloading it unless it is complete.
    build_from_source: the projects (the app's setting of that name) that may be built here
    from a source distribution when the index has no wheel of them: their build runs on
    this machine, so only those the app names."""
    reqs, cons = project.requirements, project.constraints
    if cons:
        reqs += f"-c {CONSTRAINTS}\n"
    key = wheelhouse_key(f"{reqs}\0{cons}".encode(), packages, python, architecture)
    folder = cache_dir / "wheelhouse" / name / key
    if (folder / SERVER_REQUIREMENTS).is_file():
        return key, folder
    partial = folder.with_name(f"{key}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        (partial / REQUIREMENTS).write_text(reqs)
        if cons:
            (partial / CONSTRAINTS).write_text(cons)
        (partial / "packages.txt").write_text("".join(f"{p}\n" for p in packages))
        download = [
            sys.executable, "-c", PIP_FOR_TARGET, json.dumps(target_markers(python, architecture)),
            "download", "--disable-pip-version-check", "--quiet",
            "--only-binary=:all:", "--implementation", "cp", "--python-version", python,
            *[arg for tag in platforms for arg in ("--platform", tag)],
            "--dest", str(partial), *pip_args,
        ]  # fmt: skip
        # With --hash pins, the app server's packages (unpinned by hash) get a run of their own.
        files = [REQUIREMENTS, "packages.txt"]
        runs = [files[:1], files[1:]] if hashed(reqs) else [files]
        built: list[str] = []
        allowed = {package_name(p) for p in build_from_source}
        for run in runs:
            while True:
                files_args = [arg for f in run for arg in ("-r", str(partial / f))]
                result = subprocess.run(
                    [*download, "--find-links", str(partial), *files_args],
                    capture_output=True, text=True, check=False,
                )  # fmt: skip
                if result.returncode == 0:
                    break
                reason = "\n".join((result.stderr or result.stdout).strip().splitlines()[-8:])
                failed = WheelhouseError(
                    f"{name}: pip cannot get wheels of {' and '.join(project.files)} for CPython {python} on "
                    f"{architecture}:\n{reason}"
                )
                # pip says no more than the first requirement it has no wheel of: one at a time.
                found = _NO_DISTRIBUTION.search(result.stderr)
                missing = found[1].split(";")[0].strip() if found else ""
                if not missing or missing in built or len(built) >= MAX_BUILT_FROM_SOURCE:
                    raise failed
                if package_name(missing) not in allowed:
                    raise WheelhouseError(
                        f"{failed}\nIf {missing} has a source distribution only and is pure Python, "
                        "flaskstack can build its wheel on this machine (its build code runs here): add "
                        f"{package_name(missing)} to the app's build_from_source."
                    )
                if hashed(reqs) and REQUIREMENTS in run:
                    raise WheelhouseError(
                        f"{failed}\n{missing} may have only a source distribution: with --hash pins "
                        "its wheel cannot be built here (the wheel's hash is not the pinned file's); pin a "
                        "version that has a wheel"
                    )
                build_source_wheel(name, missing, python, architecture, pip_args, partial, failed)
                built.append(missing)
        if built:
            (partial / BUILT_FROM_SOURCE).write_text("".join(f"{r}\n" for r in built))
        (partial / "packages.txt").rename(partial / SERVER_REQUIREMENTS)
        # Another process (a second host, or a parallel test run) may have finished it
        # while this one downloaded: keep theirs, which someone may be reading now.
        if (folder / SERVER_REQUIREMENTS).is_file():
            return key, folder
        shutil.rmtree(folder, ignore_errors=True)  # an incomplete one
        try:
            partial.rename(folder)
        except OSError:
            # Another process (a second host of the same run) finished it first.
            if not (folder / SERVER_REQUIREMENTS).is_file():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return key, folder


def wheelhouse_notes(folder: Path) -> list[str]:
    """What a deploy says of a wheelhouse: the requirements built here from their source."""
    try:
        built = (folder / BUILT_FROM_SOURCE).read_text().split()
    except FileNotFoundError:
        return []
    return [f"built here from source distributions (no wheel on the index, pure Python): {', '.join(built)}"]


def wheelhouse_archive(folder: Path) -> Path:
    """The wheelhouse as one uncompressed tar (wheels are compressed already), made once."""
    archive = folder.with_name(folder.name + ".tar")
    if not archive.exists():
        partial = archive.with_name(f"{archive.name}.partial-{os.getpid()}")
        with tarfile.open(partial, "w") as tar:
            for path in sorted(folder.iterdir()):
                tar.add(path, arcname=path.name)
        partial.replace(archive)
    return archive

"""What the control node makes of an app's source: a requirements file, or a
pyproject.toml project (PEP 621) with its lock and constraints; and how the model
lays out an installed project (flaskstack/packaging.py, flaskstack/model.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flaskstack import model, packaging
from flaskstack.packaging import WheelhouseError, read_project

APPS = Path(__file__).resolve().parent / "apps"
# An app as `uv init` makes it (no [build-system]), and the same one built with flit.
UNBUILT = '[project]\nname = "shop"\nversion = "2.0"\ndependencies = ["flask>=3", "redis"]\n'
BUILD = '[build-system]\nrequires = ["flit_core<4"]\nbuild-backend = "flit_core.buildapi"\n'
PROJECT = UNBUILT + BUILD


def tree(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def test_a_requirements_file_is_read_as_pip_reads_it(tmp_path):
    project = read_project(tree(tmp_path, {"requirements.txt": "flask==3.1.3\n"}))
    assert (project.shape, project.requirements, project.files) == (
        "requirements",
        "flask==3.1.3\n",
        ("requirements.txt",),
    )


def test_a_pyproject_of_tool_settings_beside_requirements_changes_nothing(tmp_path):
    project = read_project(
        tree(tmp_path, {"pyproject.toml": "[tool.ruff]\nline-length = 100\n", "requirements.txt": "flask\n"})
    )
    assert project.shape == "requirements"


def test_a_pep621_project_is_a_wheel_with_its_dependencies(tmp_path):
    project = read_project(tree(tmp_path, {"pyproject.toml": PROJECT}))
    assert project.wheel and (project.name, project.version) == ("shop", "2.0")
    assert project.requirements == "flask>=3\nredis\n"
    assert (
        project.describe()
        == "pyproject.toml project shop 2.0, built as a wheel and installed with 2 requirements"
    )


def test_a_requirements_file_beside_a_project_is_its_lock(tmp_path):
    """As `pip install -r requirements.txt .` would: the lock's pins first, the project's list after."""
    project = read_project(
        tree(tmp_path, {"pyproject.toml": PROJECT, "requirements.txt": "flask==3.1.3\nredis==5.0.0\n"})
    )
    assert project.requirements.splitlines() == ["flask==3.1.3", "redis==5.0.0", "flask>=3", "redis"]
    assert project.describe().endswith("pinned by requirements.txt")


def test_a_hashed_lock_is_the_whole_list(tmp_path):
    """Hash-checking mode needs a hash on every line: the project's own ranges stay out."""
    lock = "flask==3.1.3 --hash=sha256:00\nredis==5.0.0 --hash=sha256:11\n"
    project = read_project(tree(tmp_path, {"pyproject.toml": PROJECT, "requirements.txt": lock}))
    assert project.requirements == lock


def test_constraints_beside_a_project_constrain_it(tmp_path):
    project = read_project(tree(tmp_path, {"pyproject.toml": PROJECT, "constraints.txt": "redis<6\n"}))
    assert (project.constraints, project.files) == ("redis<6\n", ("pyproject.toml", "constraints.txt"))


def test_another_tools_lock_is_noted_with_its_export_command(tmp_path):
    project = read_project(tree(tmp_path, {"pyproject.toml": PROJECT, "uv.lock": "version = 1\n"}))
    assert project.notes == (
        "uv.lock is not read (pip cannot install from it): "
        "uv export --format requirements-txt --no-hashes -o requirements.txt to pin",
    )


@pytest.mark.parametrize(
    "files, message",
    [
        ({"pyproject.toml": "[project\nname="}, "pyproject.toml is not valid TOML"),
        ({"pyproject.toml": '[project]\nversion = "1"\n'}, "[project] has no name"),
        (
            {"pyproject.toml": '[project]\nname = "x"\ndynamic = ["dependencies"]\n'},
            "its dependencies are dynamic ([project] dynamic), so they cannot be read without building it: "
            "list them in requirements.txt",
        ),
        (
            {"pyproject.toml": '[project]\nname = "x"\ndependencies = "flask"\n'},
            "is not a list of requirement strings",
        ),
        (
            {"app.py": ""},
            "requirements.txt does not exist, and there is no pyproject.toml with a [project] table",
        ),
    ],
)
def test_what_cannot_be_read_is_said(tmp_path, files, message):
    with pytest.raises(WheelhouseError) as failed:
        read_project(tree(tmp_path, files))
    assert message in str(failed.value)


def test_a_platform_wheel_is_refused(tmp_path):
    """A C extension built here would be built for this machine, not the target."""
    tree(
        tmp_path,
        {
            "pyproject.toml": '[project]\nname = "fast"\nversion = "1.0"\n'
            '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n',
            "setup.py": "from setuptools import Extension, setup\n"
            "setup(ext_modules=[Extension('fast', ['fast.c'])])\n",
            "fast.c": '#include <Python.h>\nstatic struct PyModuleDef m = {PyModuleDef_HEAD_INIT, "fast"};\n'
            "PyMODINIT_FUNC PyInit_fast(void) { return PyModule_Create(&m); }\n",
        },
    )
    with pytest.raises(WheelhouseError) as failed:
        packaging.build_project_wheel(tmp_path, "fast", [], "id", tmp_path / "cache")
    assert "it must be pure Python" in str(failed.value)
    assert not (tmp_path / "build").exists()  # built from a copy


@pytest.mark.parametrize(
    "app, entry_point, from_venv",
    [
        ("flaskr", "flaskr:create_app()", False),
        ("kvstore", "kvstore:create_app()", True),
        ("single", "app:app", False),
    ],
)
def test_the_model_says_where_the_code_is_imported_from(app, entry_point, from_venv):
    found = model.project(
        {"src": str(APPS / app), "entry_point": entry_point, "static_dir": "static", "exclude": []}
    )
    assert bool(found["from_venv"]) is from_venv
    assert found["description"].endswith("imported from the venv") is from_venv


def test_an_installed_projects_instance_folder_links_to_the_shared_one():
    app = {
        "name": "kv",
        "server_names": ["kv.test"],
        "shared_dirs": ["instance"],
        "project": {"from_venv": ["kvstore"]},
    }
    paths = model.paths(app, model.Layout("/srv", "/etc/flaskstack", "/run/flaskstack"))
    assert {"path": "venv/var/kvstore-instance", "kind": "dir", "target": "/srv/kv/shared/instance"} in paths[
        "shared"
    ]
    assert paths["writable_paths"] == ["/srv/kv/shared/data", "/srv/kv/shared/instance"]


def test_a_missing_static_folder_is_noted_with_the_one_found():
    found = model.project(
        {"src": str(APPS / "flaskr"), "entry_point": "flaskr:create_app()", "static_dir": "static",
         "static_url": "/static/", "exclude": []}
    )  # fmt: skip
    assert found["notes"] == [
        "static_dir static is not in the source: nginx answers 404 under /static/ "
        "(set static_dir: flaskr/static)"
    ]


def test_a_project_without_build_system_is_not_built(tmp_path):
    """An app as `uv init` makes it: dependencies from pyproject.toml, code run from the release."""
    project = read_project(tree(tmp_path, {"pyproject.toml": UNBUILT, "requirements.txt": "flask==3.1.3\n"}))
    assert (project.shape, project.wheel) == ("project", False)
    assert project.requirements.splitlines() == ["flask==3.1.3", "flask>=3", "redis"]
    assert "not built" in project.describe() and project.describe().endswith("the code runs from the release")


def test_uv_package_false_is_not_built(tmp_path):
    text = PROJECT
    assert read_project(tree(tmp_path, {"pyproject.toml": text})).wheel
    text += "[tool.uv]\npackage = false\n"
    assert read_project(tree(tmp_path, {"pyproject.toml": text})).shape == "project"


def test_a_src_package_imported_through_a_root_module_gets_its_instance_folder_linked(tmp_path):
    """wsgi.py at the root importing a src/ package: the package is the venv's, and so its instance folder."""
    tree(
        tmp_path,
        {
            "pyproject.toml": PROJECT,
            "src/shop/__init__.py": "",
            "wsgi.py": "from shop import app\n",
        },
    )
    found = model.project(
        {"src": str(tmp_path), "entry_point": "wsgi:app", "static_dir": "static", "exclude": []}
    )
    assert found["from_venv"] == ["shop"]


def test_one_app_answering_for_a_name_in_two_cases_is_no_collision():
    apps = [{"name": "shop", "src": str(APPS / "single"), "entry_point": "app:app",
             "server_names": ["shop.test", "SHOP.test"], "tls": "self-signed"}]  # fmt: skip
    defaults = {"state": "present", "requirements": "requirements.txt", "http_port": 80, "https_port": 443,
                "static_url": "/static/", "static_dir": "static", "health_path": "/healthz"}  # fmt: skip
    assert model.app_errors(apps, defaults) == []

"""A host laid out differently, on a third test target: flaskstack_config_dir set to
another folder, an inventory's own template overriding flaskstack's, and nginx
snippets in an app's site. Provisioned by site.yml, then `fab deploy` and
`fab rollback` through the tool that knows the folder, and HTTPS served with the
certificate kept there. The target is removed at the end.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from bench.appvariants import variant
from tests.targets import EVERY_TASK, HOST_BASELINE_OFF, connection, on_target, run, start_target

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CONTAINER, SSH_PORT, HTTP_PORT = "flaskstack-demo3", 2224, 8082
CONFIG_DIR = "/etc/webapps"
SITE = "etc/nginx/sites-available/app.conf.j2"

# A target of its own (not the demo's): run beside the demo's tests (make test-hosts).
pytestmark = [pytest.mark.target, pytest.mark.hosts]
RUN = uuid.uuid4().hex[:8]
CONFIG_SECRET = uuid.uuid4().hex
# A value with line breaks, quotes and backslashes (a PEM key's shape): delivered exactly.
MULTI_LINE = '-----BEGIN KEY-----\nline "two" \\ $HOME\n-----END KEY-----'

# A page fetched inside the target over HTTPS (the target publishes no 443 here).
HTTPS_GET = (
    "python3 -c 'import ssl, sys, urllib.request; ctx = ssl._create_unverified_context(); "
    'r = urllib.request.urlopen("https://localhost" + sys.argv[1], context=ctx); '
    'print(r.status, r.headers.get("X-Inventory-Template")); print(r.read().decode())\' '
)


def https(path: str) -> tuple[str, str]:
    """(status and the override's header, body) of GET https://localhost<path> on the target."""
    out = on_target(HTTPS_GET + path, port=SSH_PORT).stdout
    first, _, body = out.partition("\n")
    return first, body


@pytest.fixture(scope="module")
def inventory(tmp_path_factory):
    start_target(CONTAINER, SSH_PORT, HTTP_PORT)
    folder = tmp_path_factory.mktemp("layout")
    host = connection(SSH_PORT)
    (folder / "hosts.yml").write_text(yaml.safe_dump({"flaskstack": {"hosts": {"demo3": host}}}))
    app = {
        "name": "hello",
        "src": str(ROOT / "app"),
        "entry_point": "hello:create_app()",
        "server_names": ["localhost"],
        "static_dir": "hello/static",
        "migrate_command": "flask --app hello db upgrade",
        "tls": "self-signed",
        "env": {"FLASK_INSTANCE_PATH": "/srv/hello/shared/data", "MULTI_LINE": MULTI_LINE},
        "secret_env": {"FLASK_SECRET_KEY": uuid.uuid4().hex},
        "config_files": [
            {"path": "instance/config.py", "python": {"SECRET_KEY": CONFIG_SECRET}},
            {"path": "settings.cfg", "template": "snippets/settings.cfg.j2"},
        ],
        "nginx_snippets": [
            {"content": 'location = /snippet-inline {\n    return 200 "inline snippet\\n";\n}'},
            {"src": "snippets/hello.conf.j2"},  # in the inventory's templates/ folder
        ],
    }
    (folder / "group_vars").mkdir()
    (folder / "group_vars" / "flaskstack.yml").write_text(
        yaml.safe_dump({"flaskstack_config_dir": CONFIG_DIR, "flaskstack_apps": [app], **HOST_BASELINE_OFF})
    )
    (folder / "templates" / "snippets").mkdir(parents=True)
    (folder / "templates" / "snippets" / "hello.conf.j2").write_text(
        'location = /snippet-file {\n    return 200 "{{ app.name }} from a file\\n";\n}\n'
    )
    (folder / "templates" / "snippets" / "settings.cfg.j2").write_text("APP = {{ app.name }}\n")
    # The inventory's own copy of the site template, with one more header.
    override = folder / "templates" / SITE
    override.parent.mkdir(parents=True, exist_ok=True)
    site = (ROOT / "templates" / SITE).read_text()
    marker = '    add_header X-Content-Type-Options "nosniff" always;\n'
    assert marker in site
    override.write_text(site.replace(marker, marker + '    add_header X-Inventory-Template "yes" always;\n'))
    provision = run(str(BIN / "ansible-playbook"), "site.yml", "-i", str(folder))
    assert provision.returncode == 0, provision.output[-3000:]
    yield folder
    subprocess.run(["docker", "rm", "-f", CONTAINER], capture_output=True, check=False)


def test_the_override_and_the_snippets_take_effect(inventory):
    status, body = https("/snippet-inline")
    assert (status, body.strip()) == ("200 yes", "inline snippet")
    status, body = https("/snippet-file")
    assert (status, body.strip()) == ("200 yes", "hello from a file")
    status, _ = https("/healthz")
    assert status == "200 yes"
    header = on_target("grep -m1 'Managed by' /etc/nginx/sites-available/hello.conf", port=SSH_PORT).stdout
    assert f"from the inventory's templates/{SITE} (overrides flaskstack's templates/{SITE})" in header
    site = on_target("cat /etc/nginx/sites-available/hello.conf", port=SSH_PORT).stdout
    assert "# nginx_snippets[1] from the inventory's templates/snippets/hello.conf.j2" in site


def test_everything_lives_in_the_configured_folder(inventory):
    listing = on_target(
        f"ls {CONFIG_DIR}/hello {CONFIG_DIR}/hello/tls; ls -d /etc/flaskstack", port=SSH_PORT, check=False
    )
    for name in ("app.env", "gunicorn.conf.py", "release.json", "fullchain.pem", "privkey.pem"):
        assert re.search(rf"^{re.escape(name)}$", listing.stdout, re.MULTILINE), listing.stdout
    assert "No such file or directory" in listing.stderr  # nothing in the default folder
    # nginx serves the certificate kept there.
    served = on_target(
        "python3 -c 'import ssl; print(ssl.get_server_certificate((\"localhost\", 443)))'", port=SSH_PORT
    ).stdout
    kept = on_target(f"cat {CONFIG_DIR}/hello/tls/fullchain.pem", port=SSH_PORT).stdout
    assert served.split() == kept.split()
    status = on_target("flaskstack-release status hello", port=SSH_PORT).stdout
    assert re.search(r"^health\s+GET /healthz -> 200", status, re.MULTILINE), status


def test_fab_deploys_and_rolls_back_there(inventory, tmp_path):
    def release() -> str:
        return json.loads(https("/healthz")[1])["release"]

    before = release()
    deployed = run(str(BIN / "fab"), "deploy", "--inventory", str(inventory), "--app", "hello",
                   "--src", str(variant(tmp_path, f"layout-{RUN}")))  # fmt: skip
    assert deployed.returncode == 0, deployed.output
    assert f"Hello from flaskstack layout-{RUN}" in https("/")[1]
    assert release() != before
    back = run(str(BIN / "fab"), "rollback", "--inventory", str(inventory))
    assert back.returncode == 0, back.output
    assert release() == before
    assert f"layout-{RUN}" not in https("/")[1]


def test_config_files_land_in_the_configured_layout_and_never_show(inventory):
    on = on_target(
        "stat -c '%U:%G %a' /srv/hello/shared/instance/config.py /srv/hello/shared/settings.cfg; "
        "readlink /srv/hello/current/settings.cfg; cat /srv/hello/shared/settings.cfg",
        port=SSH_PORT,
    ).stdout.splitlines()
    assert on == ["root:hello 640", "root:hello 640", "/srv/hello/shared/settings.cfg", "APP = hello"]
    check = run(str(BIN / "ansible-playbook"), "site.yml", "-i", str(inventory), "-vvv", "--check", "--diff")
    assert check.returncode == 0, check.output[-3000:]
    assert re.search(r"demo3\s*:\s*ok=\d+\s+changed=0", check.output), check.output[-3000:]
    assert CONFIG_SECRET not in check.output


def test_a_multi_line_env_value_reaches_the_app_exactly(inventory):
    """systemd reads the env file: line breaks, quotes and backslashes arrive as given."""
    read = (
        'python3 -c \'import subprocess; pid = subprocess.check_output(["systemctl", "show", "-p", '
        '"MainPID", "--value", "hello.service"], text=True).strip(); '
        'env = dict(v.split(b"=", 1) for v in open(f"/proc/{pid}/environ", "rb").read().split(b"\\0") if v); '
        'print(repr(env[b"MULTI_LINE"].decode()))\''
    )
    assert on_target(read, port=SSH_PORT).stdout.strip() == repr(MULTI_LINE)


def test_settings_the_app_does_not_answer_with_are_put_back(inventory, tmp_path):
    """An env value that breaks the app (a database it cannot open): the run fails and says so,
    the env file is back as the app last answered with it, and the app serves on."""
    env = f"{CONFIG_DIR}/hello/app.env"
    before = on_target(
        f"sha256sum {env}; systemctl show -p MainPID --value hello.service", port=SSH_PORT
    ).stdout
    folder = tmp_path / "inventory"
    shutil.copytree(inventory, folder)
    group_vars = yaml.safe_load((folder / "group_vars" / "flaskstack.yml").read_text())
    group_vars["flaskstack_apps"][0]["env"]["FLASK_SQLALCHEMY_DATABASE_URI"] = "sqlite:////nowhere/hello.db"
    (folder / "group_vars" / "flaskstack.yml").write_text(yaml.safe_dump(group_vars))
    broken = run(str(BIN / "ansible-playbook"), "site.yml", "-i", str(folder))
    assert broken.returncode != 0
    output = " ".join(broken.output.split())
    assert "does not answer /healthz" in output, broken.output[-3000:]
    assert "NOT restarted: the running hello.service keeps serving" in output
    assert "settings put back as" in output and env in output, broken.output[-3000:]
    # The same file and the same processes, serving.
    assert (
        on_target(f"sha256sum {env}; systemctl show -p MainPID --value hello.service", port=SSH_PORT).stdout
        == before
    )
    assert https("/healthz")[0] == "200 yes"
    again = run(str(BIN / "ansible-playbook"), "site.yml", "-i", str(inventory), *EVERY_TASK)
    assert re.search(r"demo3\s*:\s*ok=\d+\s+changed=0", again.output), again.output[-3000:]


@pytest.mark.parametrize(
    "name, what",
    [("legacyapp", "an account (legacy service)"), ("apt-daily", "a packaged service")],
)
def test_an_app_may_not_take_an_account_or_a_service_of_the_host(inventory, tmp_path, name, what):
    """Names the model cannot know: the host's own. Refused before any change."""
    on_target("id legacyapp || useradd --system --comment 'legacy service' legacyapp", port=SSH_PORT)
    folder = tmp_path / "inventory"
    shutil.copytree(inventory, folder)
    group_vars = yaml.safe_load((folder / "group_vars" / "flaskstack.yml").read_text())
    group_vars["flaskstack_apps"][0]["name"] = name
    (folder / "group_vars" / "flaskstack.yml").write_text(yaml.safe_dump(group_vars))
    result = run(str(BIN / "ansible-playbook"), "site.yml", "-i", str(folder))
    assert result.returncode != 0
    output = " ".join(result.output.split())
    assert f'flaskstack_apps[0].name is "{name}": this host has {what} of that name' in output, output[-3000:]
    assert re.search(r"demo3\s*:\s*ok=\d+\s+changed=0", result.output), result.output[-2000:]


def served_names() -> str:
    return on_target(
        "python3 -c 'import ssl; print(ssl.get_server_certificate((\"localhost\", 443)))' "
        "| openssl x509 -noout -ext subjectAltName -enddate",
        port=SSH_PORT,
    ).stdout


def test_a_self_signed_certificate_follows_the_server_names_and_is_renewed(inventory, tmp_path):
    """server_names changed: a certificate for the new names; one that expires soon: a new one.
    No HSTS for a self-signed certificate (browsers would refuse the next one)."""
    assert "DNS:localhost" in served_names()
    hsts = on_target(
        "python3 -c 'import ssl, urllib.request; ctx = ssl._create_unverified_context(); "
        'r = urllib.request.urlopen("https://localhost/healthz", context=ctx); '
        'print(r.headers.get("Strict-Transport-Security"))\'',
        port=SSH_PORT,
    ).stdout.strip()
    assert hsts == "None"
    folder = tmp_path / "inventory"
    shutil.copytree(inventory, folder)
    group_vars = yaml.safe_load((folder / "group_vars" / "flaskstack.yml").read_text())
    group_vars["flaskstack_apps"][0]["server_names"] = ["localhost", "www.localhost"]
    (folder / "group_vars" / "flaskstack.yml").write_text(yaml.safe_dump(group_vars))
    renamed = run(str(BIN / "ansible-playbook"), "site.yml", "-i", str(folder))
    assert renamed.returncode == 0, renamed.output[-3000:]
    assert "DNS:localhost, DNS:www.localhost" in served_names()
    # A certificate that expires in 5 days (as if made long ago) is made again.
    key, cert = f"{CONFIG_DIR}/hello/tls/privkey.pem", f"{CONFIG_DIR}/hello/tls/fullchain.pem"
    on_target(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 5 "
        "-subj /CN=localhost -addext subjectAltName=DNS:localhost,DNS:www.localhost "
        f"-keyout {key} -out {cert} 2>/dev/null",
        port=SSH_PORT,
    )
    renewed = run(str(BIN / "ansible-playbook"), "site.yml", "-i", str(folder))
    assert renewed.returncode == 0, renewed.output[-3000:]
    made = [
        chunk
        for chunk in renewed.output.split("TASK [")
        if chunk.startswith("nginx : tls | Make a self-signed")
    ]
    assert made and "changed: [demo3]" in made[0], renewed.output[-3000:]
    assert (
        on_target(
            f"openssl x509 -in {cert} -noout -checkend {60 * 86400}", port=SSH_PORT, check=False
        ).returncode
        == 0
    )
    again = run(str(BIN / "ansible-playbook"), "site.yml", "-i", str(folder), *EVERY_TASK)
    assert re.search(r"demo3\s*:\s*ok=\d+\s+changed=0", again.output), again.output[-3000:]

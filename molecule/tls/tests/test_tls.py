"""HTTPS with a self-signed and a provided certificate, as a client sees it."""

from __future__ import annotations

import re

import pytest

# Connect to 127.0.0.1:443 with SNI NAME and the given TLS version bounds;
# print the version, the served certificate (PEM), then status and HSTS.
PROBE = """
import socket, ssl, sys, http.client
name, low, high = sys.argv[1], sys.argv[2], sys.argv[3]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
ctx.minimum_version = getattr(ssl.TLSVersion, low); ctx.maximum_version = getattr(ssl.TLSVersion, high)
ctx.set_ciphers("ALL:@SECLEVEL=0")  # this client would speak old TLS: the server must refuse it
try:
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", 443), timeout=10), server_hostname=name)
except (ssl.SSLError, OSError) as exc:
    print("REFUSED", type(exc).__name__); sys.exit(0)
conn = http.client.HTTPSConnection(name); conn.sock = sock
conn.request("GET", "/healthz"); r = conn.getresponse()
print(sock.version()); print(ssl.DER_cert_to_PEM_cert(sock.getpeercert(binary_form=True)).strip())
print("STATUS", r.status, r.getheader("Strict-Transport-Security"))
"""


def probe(host, name, low="TLSv1_2", high="TLSv1_3"):
    return host.check_output(f"python3 -c '{PROBE}' {name} {low} {high}")


def served_pem(out):
    return out.split("\n", 1)[1].split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----"


@pytest.mark.parametrize(
    "name, cert, hsts",
    [
        ("selfsigned.test", "/etc/flaskstack/hello/tls/fullchain.pem", "None"),  # no HSTS: self-signed
        ("provided.test", "/etc/flaskstack/shop/tls/fullchain.pem", "max-age=300"),
    ],
)
def test_each_app_serves_its_certificate_and_hsts_unless_self_signed(host, name, cert, hsts):
    out = probe(host, name)
    assert out.startswith("TLSv1.3")
    assert served_pem(out).strip() == host.file(cert).content_string.strip()
    assert f"STATUS 200 {hsts}" in out


def test_provided_certificate_is_the_one_from_the_inventory(host):
    text = host.check_output("openssl x509 -in /etc/flaskstack/shop/tls/fullchain.pem -noout -subject")
    assert "provided.test" in text


@pytest.mark.parametrize("app", ["hello", "shop"])
def test_private_keys_are_root_only(host, app):
    key = host.file(f"/etc/flaskstack/{app}/tls/privkey.pem")
    assert key.user == "root" and key.mode == 0o600
    assert host.file(f"/etc/flaskstack/{app}/tls").mode == 0o700


def test_tls12_is_accepted_and_tls11_refused(host):
    assert probe(host, "provided.test", "TLSv1_2", "TLSv1_2").startswith("TLSv1.2")
    assert probe(host, "provided.test", "TLSv1", "TLSv1_1").startswith("REFUSED")


def test_unknown_names_get_no_certificate(host):
    assert probe(host, "unknown.test").startswith("REFUSED")


@pytest.mark.parametrize("name", ["selfsigned.test", "provided.test"])
def test_http_redirects_to_https(host, name):
    script = (
        "import http.client; c = http.client.HTTPConnection('127.0.0.1', 80); "
        f"c.request('GET', '/a?b=1', headers={{'Host': '{name}'}}); r = c.getresponse(); "
        "print(r.status, r.getheader('Location'))"
    )
    assert host.check_output(f'python3 -c "{script}"') == f"301 https://{name}/a?b=1"


def test_lynis_rates_the_host_80_or_more(host):
    """Lynis' own audit (Debian's lynis), as an auditor runs it, on this host that serves
    HTTPS as production does. One test is left out, in lynis' own profile: KRNL-6000 compares
    the kernel's settings, and a container's are its container host's (the CI machine's),
    which the host role cannot set: `make test-vm` runs the whole audit on a VM."""
    host.check_output("DEBIAN_FRONTEND=noninteractive apt-get install -y -qq lynis >/dev/null")
    host.check_output("printf 'skip-test=KRNL-6000\\n' > /etc/lynis/custom.prf")
    host.run("lynis audit system --quick --no-colors > /var/tmp/lynis.out 2>&1")
    report = host.file("/var/log/lynis-report.dat").content_string
    index = int(re.search(r"^hardening_index=(\d+)", report, re.M).group(1))
    print(f"lynis hardening index: {index}")
    assert "Performing test ID KRNL-6000" not in host.file("/var/log/lynis.log").content_string
    assert index >= 80, "\n".join(line for line in report.splitlines() if line.startswith("suggestion"))

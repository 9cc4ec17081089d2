"""HTTPS from an ACME CA (pebble): issued over HTTP-01, served by nginx, renewable."""

from __future__ import annotations

import pytest

NAMES = ["acme.test", "www.acme.test"]
LIVE = "/etc/letsencrypt/live/blog"  # the app "blog" asks for tls: acme

# Fetch over HTTPS with SNI, trusting nothing (the test compares certificates
# itself); prints the TLS version, the served certificate (PEM), status and body.
HTTPS_GET = """
import socket, ssl, sys, http.client
name, path = sys.argv[1], sys.argv[2]
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", 443), timeout=10), server_hostname=name)
conn = http.client.HTTPSConnection(name); conn.sock = sock
conn.request("GET", path); r = conn.getresponse()
print(sock.version()); print(ssl.DER_cert_to_PEM_cert(sock.getpeercert(binary_form=True)).strip())
print("STATUS", r.status, r.getheader("Strict-Transport-Security")); print(r.read().decode())
"""


def https_get(host, name, path):
    return host.check_output(f"python3 -c '{HTTPS_GET}' {name} {path}")


def test_certificate_was_issued_by_the_acme_ca_for_every_name(host):
    text = host.check_output(f"openssl x509 -in {LIVE}/cert.pem -noout -issuer -ext subjectAltName")
    assert "Pebble" in text
    for name in NAMES:
        assert f"DNS:{name}" in text


@pytest.mark.parametrize("name", NAMES)
def test_nginx_serves_the_issued_certificate_over_tls13(host, name):
    out = https_get(host, name, "/healthz")
    version, rest = out.split("\n", 1)
    assert version == "TLSv1.3"
    served = rest.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----"
    on_disk = host.file(f"{LIVE}/cert.pem").content_string.strip()
    assert served.strip() == on_disk
    assert "STATUS 200 max-age=63072000" in out
    assert '"status":"ok"' in out


def test_http_redirects_to_https_but_still_answers_challenges(host):
    script = (
        "import http.client; c = http.client.HTTPConnection('127.0.0.1', 80); "
        "c.request('GET', '/page?x=1', headers={'Host': 'acme.test'}); r = c.getresponse(); "
        "print(r.status, r.getheader('Location'))"
    )
    assert host.check_output(f'python3 -c "{script}"') == "301 https://acme.test/page?x=1"
    host.run("install -d /var/www/acme-challenge/.well-known/acme-challenge")
    host.run("echo token > /var/www/acme-challenge/.well-known/acme-challenge/probe")
    script = script.replace("/page?x=1", "/.well-known/acme-challenge/probe").replace(
        "r.getheader('Location')", "r.read().decode().strip()"
    )
    assert host.check_output(f'python3 -c "{script}"') == "200 token"


def test_renewal_dry_run_succeeds_and_reloads_through_the_hook(host):
    # A dry run goes to Let's Encrypt's staging CA unless --server names another
    # (certbot's rule); real renewals use the server saved with the certificate.
    result = host.run(
        "REQUESTS_CA_BUNDLE=/etc/pebble/tls/cert.pem certbot renew --dry-run --no-random-sleep-on-renew"
        " --server https://localhost:14000/dir"
    )
    assert result.rc == 0, result.stdout + result.stderr
    assert "Congratulations, all simulated renewals succeeded" in result.stdout + result.stderr
    hook = host.file("/etc/letsencrypt/renewal-hooks/deploy/flaskstack-reload-nginx")
    assert hook.mode == 0o755
    assert "systemctl reload nginx" in hook.content_string


def test_renewal_timer_is_enabled_and_trusts_the_ca(host):
    timer = host.service("certbot.timer")
    assert timer.is_enabled and timer.is_running
    env = host.check_output("systemctl show -p Environment --value certbot.service")
    assert "REQUESTS_CA_BUNDLE=/etc/pebble/tls/cert.pem" in env

"""Helpers shared by every Molecule scenario's testinfra tests (pytest finds this
file above each scenario's tests/ folder)."""

from __future__ import annotations

import json
import shlex

import pytest

# An HTTP GET from inside the host, through nginx on port 80 (the host has no curl:
# it is a bare VM). Prints the status, the headers as JSON, then the body.
GET = """
import json, sys, urllib.request, urllib.error
req = urllib.request.Request("http://127.0.0.1" + sys.argv[1], headers={"Host": sys.argv[2]})
try:
    r = urllib.request.urlopen(req, timeout=10)
except urllib.error.HTTPError as e:
    r = e
print(r.status)
print(json.dumps(dict(r.headers)))
sys.stdout.write(r.read().decode())
"""


class Http:
    """GET through the host's nginx, as a client on the host would."""

    def __init__(self, host):
        self.host = host

    def command(self, path, host_header):
        return f"python3 -c {shlex.quote(GET)} {shlex.quote(path)} {shlex.quote(host_header)}"

    def run(self, path, host_header="localhost"):
        """The raw result: for requests that are expected to fail."""
        return self.host.run(self.command(path, host_header))

    def get(self, path, host_header="localhost"):
        """(status, headers, body) of a request that gets an HTTP answer."""
        status, headers, body = self.host.check_output(self.command(path, host_header)).split("\n", 2)
        return int(status), json.loads(headers), body


@pytest.fixture
def http(host):
    return Http(host)


@pytest.fixture
def exposure(host):
    """systemd-analyze's exposure score of a unit: 0 (locked down) to 10; OK is <= 2.0."""

    def score(unit):
        out = host.check_output(f"systemd-analyze security {unit} --no-pager")
        return float(out.strip().splitlines()[-1].split("level for")[1].split(":")[1].split()[0]), out

    return score

"""The host baseline's checks (flaskstack/host.py), without a host."""

from __future__ import annotations

from flaskstack import host

SETTINGS = {
    "host_firewall": True,
    "host_ssh_port": 22,
    "host_firewall_ssh_from": [],
    "host_firewall_allow": [],
    "host_firewall_rules": [],
    "host_ssh": True,
    "host_ssh_permit_root_login": "auto",
    "host_ssh_allow_users": [],
    "host_sysctl": True,
    "host_sysctl_settings": {},
    "user": "deploy",
    "login_user": "deploy",
    "host_firewall_confirm_timeout": 45,
    "password": False,
}
PROBE = {"ssh_connection": "10.0.0.5 50412 10.0.0.9 22", "keys": "1", "missing": []}


def errors(probe=None, **settings):
    return host.baseline_errors({**SETTINGS, **settings}, {**PROBE, **(probe or {})})


def test_a_deploy_user_with_a_key_on_the_ssh_port_passes():
    assert errors() == []
    assert errors(host_firewall_ssh_from=["10.0.0.0/8"]) == []


def test_root_login_is_off_for_a_deploy_user_and_keys_only_for_root():
    assert host.root_login("auto", "deploy") == "no"
    assert host.root_login("auto", "root") == "prohibit-password"
    assert host.root_login("yes", "deploy") == "yes"


def test_root_that_turns_its_own_login_off_is_refused():
    (message,) = errors(user="root", login_user="root", host_ssh_permit_root_login="no")
    assert message.startswith("host_ssh_permit_root_login is no, and Ansible connects as root")
    assert errors(user="root", login_user="root") == []


def test_an_ipv6_login_is_matched_against_ipv6_networks():
    probe = {"ssh_connection": "2001:db8::7 50412 2001:db8::1 22"}
    assert errors(probe, host_firewall_ssh_from=["2001:db8::/32"]) == []
    (message,) = errors(probe, host_firewall_ssh_from=["10.0.0.0/8"])
    assert "comes from 2001:db8::7" in message


def test_without_ssh_the_connection_checks_do_not_apply():
    """A container (docker exec) or the control node itself: no SSH_CONNECTION, no key needed."""
    assert errors({"ssh_connection": "", "keys": "0"}, host_ssh_port=2200) == []


def test_each_part_switched_off_is_not_checked():
    probe = {"ssh_connection": "10.0.0.5 50412 10.0.0.9 2200", "keys": "0", "missing": ["kernel.nope"]}
    assert errors(probe, host_firewall=False, host_ssh=False, host_sysctl=False) == []


def test_bad_addresses_are_named():
    found = errors(
        host_firewall_ssh_from=["10.0.0.300"],
        host_firewall_allow=[{"port": 9100, "proto": "sctp", "from": ["nowhere"], "to": 1}],
    )
    assert "host_firewall_ssh_from[0] is '10.0.0.300', not an address or a network" in found[0]
    assert any(m.startswith("host_firewall_allow[0] has to:") for m in found)
    assert any(m.startswith("host_firewall_allow[0].proto is 'sctp'") for m in found)
    assert any(m.startswith("host_firewall_allow[0].from[0] is 'nowhere'") for m in found)


def test_sysctl_settings_add_replace_and_leave_out():
    merged = host.sysctl({"b": 1, "a": 2, "c": 3, "e": 5}, {"b": 0, "c": None, "d": 4}, missing=["e"])
    assert merged == {"a": 2, "b": 0, "d": 4}
    assert list(merged) == ["a", "b", "d"]


def test_a_missing_setting_is_refused_when_the_inventory_names_it_only():
    probe = {"missing": ["kernel.yama.ptrace_scope", "net.ipv4.nope"]}
    (message,) = errors(probe, host_sysctl_settings={"net.ipv4.nope": 1})
    assert message.startswith(
        'host_sysctl_settings["net.ipv4.nope"]: this host\'s kernel has no such setting'
    )


def test_a_probe_run_through_sudo_is_refused():
    """-e ansible_become=true beats the probe's own setting: it saw root and no SSH login."""
    (message,) = errors({"ssh_connection": ""}, user="root", login_user="deploy")
    assert message.startswith("The host's checks ran as root while Ansible logs in as deploy")


def test_a_probation_too_short_to_confirm_is_refused():
    (message,) = errors(host_firewall_confirm_timeout=10)
    assert message.startswith("host_firewall_confirm_timeout is 10: give a new rule set at least 30")

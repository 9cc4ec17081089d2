"""The host baseline's checks (roles/host): what the inventory asks of a host's firewall,
SSH and kernel settings, against what the host itself says about the connection Ansible
came in on. Run before anything on the host changes; each message names its variable."""

from __future__ import annotations

import ipaddress
from typing import Any

ROOT_LOGIN = ("auto", "no", "prohibit-password", "yes")


def root_login(setting: str, user: str) -> str:
    """sshd's PermitRootLogin for host_ssh_permit_root_login: "auto" is no when the deploy
    user is not root (root needs no login of its own then), keys only when it is."""
    if setting != "auto":
        return setting
    return "prohibit-password" if user == "root" else "no"


def _networks(value: Any, name: str, errors: list[str]) -> list:
    """The networks of a list of addresses or networks; a message for each bad one."""
    if not isinstance(value, list):
        errors.append(f"{name} is {value!r}, not a list of addresses or networks.")
        return []
    found = []
    for i, entry in enumerate(value):
        try:
            found.append(ipaddress.ip_network(str(entry), strict=False))
        except ValueError:
            errors.append(f"{name}[{i}] is {entry!r}, not an address or a network (10.0.0.5, 10.0.0.0/24).")
    return found


def _allow(rules: Any, errors: list[str]) -> None:
    if not isinstance(rules, list):
        errors.append(f"host_firewall_allow is {rules!r}, not a list of {{port, proto, from}}.")
        return
    for i, rule in enumerate(rules):
        name = f"host_firewall_allow[{i}]"
        if not isinstance(rule, dict):
            errors.append(
                f"{name} is {rule!r}, not a mapping like {{port: 9100, proto: tcp, from: [10.0.0.5]}}."
            )
            continue
        unknown = sorted(set(rule) - {"port", "proto", "from"})
        if unknown:
            errors.append(f"{name} has {', '.join(unknown)}: the keys are port, proto and from.")
        port = rule.get("port")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            errors.append(f"{name}.port is {port!r}, not a port number (1-65535).")
        if rule.get("proto", "tcp") not in ("tcp", "udp"):
            errors.append(f"{name}.proto is {rule.get('proto')!r}: tcp or udp.")
        _networks(rule.get("from") or [], f"{name}.from", errors)


def _rules(rules: Any, errors: list[str]) -> None:
    if not isinstance(rules, list) or not all(isinstance(rule, str) for rule in rules):
        errors.append(f"host_firewall_rules is {rules!r}, not a list of nftables rules (strings).")
        return
    for i, rule in enumerate(rules):
        # One rule per entry: a line break or a ';' would let an entry close the chain.
        if not rule.strip() or any(c in rule for c in "\n\r;{}"):
            errors.append(
                f"host_firewall_rules[{i}] is {rule!r}: one nftables rule per entry, on one line, "
                "without ';', '{' or '}'."
            )


def baseline_errors(settings: dict, probe: dict) -> list[str]:
    """Every reason not to apply the host baseline to this host, one message each.

    settings: the host role's variables, plus user (whom the probe ran as), login_user
    (ansible_user, when the inventory names one) and password (whether Ansible logs in with
    a password).
    probe: what the host said as that user: ssh_connection ($SSH_CONNECTION, empty when the
    connection is not SSH: a container, the control node itself), keys (how many keys its
    ~/.ssh/authorized_keys holds), missing (the sysctl keys, of the baseline and
    host_sysctl_settings, that /proc/sys does not have).
    """
    errors: list[str] = []
    user = str(settings.get("user") or "root")
    login = str(settings.get("login_user") or user)
    if user == "root" and login != "root":
        # The probe ran through sudo (-e ansible_become=true beats the task's own setting):
        # it cannot see the SSH login, so nothing could be checked.
        errors.append(
            f"The host's checks ran as root while Ansible logs in as {login}: run without "
            "-e ansible_become=true (the roles become root where they need to)."
        )
        return errors
    connection = str(probe.get("ssh_connection") or "").split()
    over_ssh = len(connection) == 4

    if settings.get("host_firewall"):
        sources = _networks(settings.get("host_firewall_ssh_from"), "host_firewall_ssh_from", errors)
        _allow(settings.get("host_firewall_allow"), errors)
        _rules(settings.get("host_firewall_rules"), errors)
        timeout = settings.get("host_firewall_confirm_timeout", 45)
        if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 30:
            errors.append(
                f"host_firewall_confirm_timeout is {timeout!r}: give a new rule set at least 30 seconds "
                "of probation (a new SSH connection and the confirmation must fit in it)."
            )
        if over_ssh:
            client, _, _, server_port = connection
            port = settings.get("host_ssh_port")
            if str(port) != server_port:
                errors.append(
                    f"host_ssh_port is {port}, but Ansible's own SSH connection reached this host on port "
                    f"{server_port}: the firewall would close the port Ansible uses. Set host_ssh_port to "
                    "the port sshd listens on."
                )
            address = ipaddress.ip_address(client.split("%")[0])
            if sources and not any(address in network for network in sources):
                errors.append(
                    f"host_firewall_ssh_from is {', '.join(map(str, sources))}, and Ansible's own SSH "
                    f"connection comes from {client}: the firewall would shut Ansible out. Add that "
                    "address (or its network)."
                )

    if settings.get("host_ssh"):
        login = settings.get("host_ssh_permit_root_login")
        if login not in ROOT_LOGIN:
            errors.append(f"host_ssh_permit_root_login is {login!r}: one of {', '.join(ROOT_LOGIN)}.")
        elif user == "root" and root_login(login, user) == "no":
            errors.append(
                "host_ssh_permit_root_login is no, and Ansible connects as root: it would lock itself out. "
                "Connect as a deploy user with sudo (ansible_user), or leave it auto."
            )
        allowed = settings.get("host_ssh_allow_users") or []
        if allowed and user not in allowed:
            errors.append(
                f"host_ssh_allow_users is {', '.join(map(str, allowed))}, without {user}, the user "
                "Ansible connects as: it would lock itself out."
            )
        if settings.get("password"):
            errors.append(
                f"Ansible logs in as {user} with a password (ansible_password), and host_ssh turns password "
                f"logins off: it would lock itself out. Give {user} a key (ssh-copy-id) and connect with it, "
                "or set host_ssh: false."
            )
        elif over_ssh and not int(probe.get("keys") or 0):
            errors.append(
                f"{user}, the user Ansible connects as, has no key in ~/.ssh/authorized_keys, and host_ssh "
                f"turns password logins off: it would lock itself out. Add {user}'s key there, or set "
                "host_ssh: false."
            )

    if settings.get("host_sysctl"):
        # A key of the baseline that this kernel lacks is left out (sysctl()); one the
        # inventory names must exist.
        asked = {
            key for key, value in (settings.get("host_sysctl_settings") or {}).items() if value is not None
        }
        for key in probe.get("missing") or []:
            if key in asked:
                errors.append(
                    f'host_sysctl_settings["{key}"]: this host\'s kernel has no such setting (no '
                    f"/proc/sys/{key.replace('.', '/')}); check its name, or leave it out."
                )
    return errors


def sysctl(baseline: dict, settings: dict, missing: list | None = None) -> dict:
    """The settings to write: the baseline, with host_sysctl_settings added or replacing
    (null: left out), without the baseline's keys this host's kernel lacks, sorted by key."""
    merged = {
        **{key: value for key, value in baseline.items() if key not in (missing or [])},
        **(settings or {}),
    }
    return {key: merged[key] for key in sorted(merged) if merged[key] is not None}

"""Lookup flaskstack_template: the template of a host file (flaskstack/templates.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from ansible.errors import AnsibleError
from ansible.plugins.lookup import LookupBase

try:
    from flaskstack import templates
except ImportError:  # ansible-playbook from elsewhere: the package lies beside roles/
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from flaskstack import templates

DOCUMENTATION = r"""
name: flaskstack_template
short_description: The template of a file on the host, an inventory's override first
description:
  - For each term (a host path plus C(.j2), with C(app) for an app's name, for example
    C(etc/nginx/sites-available/app.conf.j2)), the absolute path of C(<inventory>/templates/<term>)
    if the inventory has it, else of flaskstack's C(templates/<term>).
"""


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        inventory_dir = (variables or {}).get("inventory_dir")
        try:
            return [str(templates.find(term, inventory_dir)) for term in terms]
        except templates.TemplateError as exc:
            raise AnsibleError(str(exc)) from None

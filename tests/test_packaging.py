"""Tests for the packaging metadata: a regular install must carry every module."""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_installed() -> None:
    """setup.cfg lists every package under mailserver/ (a missing one installs a server
    that cannot start) and the twistd plugin folder."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "mailserver").rglob("__init__.py")
    }
    assert on_disk <= listed
    assert "twisted.plugins" in listed
    assert (ROOT / "twisted" / "plugins" / "mailserver_plugin.py").is_file()

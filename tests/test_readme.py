"""The README states what the code does: every setting, every error code, valid markup."""

from __future__ import annotations

import re
from pathlib import Path

import docutils.core

from trimail.config import Settings
from trimail.errors import error_codes

README = (Path(__file__).resolve().parent.parent / "README.rst").read_text()


def test_every_setting_is_in_the_configuration_table() -> None:
    """Each Settings field has its TRIMAIL_ row, and no row names a setting that does not exist."""
    documented = set(re.findall(r"^``(TRIMAIL_[A-Z_]+)``  ", README, flags=re.MULTILINE))
    assert documented == {f"TRIMAIL_{name.upper()}" for name in Settings.model_fields}


def test_every_error_code_is_in_the_error_table() -> None:
    """The closed set of error codes is the README's error table, with the right statuses."""
    rows = set(re.findall(r"^(\d{3})\s+``([a-z_]+)``", README, flags=re.MULTILINE))
    assert rows == {(str(status), code) for code, status in error_codes().items()}


def test_readme_is_valid_restructuredtext() -> None:
    """docutils renders the README without warnings."""
    docutils.core.publish_string(
        README, writer="null", settings_overrides={"report_level": 2, "halt_level": 2}
    )

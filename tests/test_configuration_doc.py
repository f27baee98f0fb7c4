"""docs/configuration.md is the settings' own description: generated from them, every setting documented."""

import dataclasses
from pathlib import Path

import pytest

from proxy.settings import SECTIONS, ProjectOverride, SettingsError, settings_from_mapping
from proxy.settings.reference import render, undocumented

DOC = Path(__file__).parent.parent / "docs" / "configuration.md"


def test_the_committed_page_is_what_the_settings_say():
    assert DOC.read_text() == render(), "run: python -m proxy.settings.reference > docs/configuration.md"


def test_every_setting_says_what_it_does():
    assert undocumented() == []


def test_every_setting_is_on_the_page_with_an_environment_name_the_proxy_reads():
    page = DOC.read_text()
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            name = f"PROXY_{section.upper()}__{f.name.upper()}"
            assert f"`{name}`" in page
            assert _read_from_environment(name), name
    for f in dataclasses.fields(ProjectOverride):
        assert f"`PROXY_PROJECTS__<ID>__{f.name.upper()}`" in page


def _read_from_environment(name: str) -> bool:
    """Whether the settings take ``name`` (a value of the wrong type may be refused: that is still read)."""
    try:
        settings_from_mapping({}, {name: "1"})
    except SettingsError as exc:
        return "not a setting" not in str(exc) and "unknown setting" not in str(exc)
    return True


def test_a_name_the_page_does_not_have_is_refused():
    with pytest.raises(SettingsError, match="no_such_thing: unknown setting"):
        settings_from_mapping({}, {"PROXY_SERVER__NO_SUCH_THING": "1"})
    with pytest.raises(SettingsError, match="not a setting"):
        settings_from_mapping({}, {"PROXY_NOWHERE__AT__ALL__X": "1"})

"""Each setting is declared once: README's configuration table and the command line come from the declarations."""

from __future__ import annotations

from pathlib import Path

from services.settings import SETTINGS, UPDATE_README_COMMAND, Settings, markdown_table, readme_table, with_table

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_configuration_table_is_the_generated_one():
    shown = readme_table(README.read_text())
    assert shown == markdown_table(), f"README's configuration table is out of date: run `{UPDATE_README_COMMAND}`"


def test_the_table_has_one_row_per_setting_in_declaration_order():
    rows = markdown_table().splitlines()[2:]
    assert [row.split(" | ")[0] for row in rows] == [f"| `{setting.env}`" for setting in SETTINGS]
    assert len(SETTINGS) == len(Settings.__dataclass_fields__)


def test_updating_the_table_touches_nothing_outside_the_markers():
    readme = "before\n<!-- settings-table:start -->\n| old |\n<!-- settings-table:end -->\nafter\n"
    updated = with_table(readme)
    assert updated.startswith("before\n<!-- settings-table:start -->\n| Variable |")
    assert updated.endswith("|\n<!-- settings-table:end -->\nafter\n")
    assert with_table(updated) == updated


def test_every_default_is_what_its_parser_makes_of_the_default_written_out():
    for setting in SETTINGS:
        assert setting.value(None, {}) == setting.default
        if setting.default is None:
            continue
        if isinstance(setting.default, tuple):
            written = ",".join(map(str, setting.default))
        elif isinstance(setting.default, bool):
            written = str(setting.default).lower()
        else:
            written = str(setting.default)
        assert setting.value(written, {}) == setting.default, setting.env


def test_no_module_but_the_settings_reads_the_environment():
    # The supervisor sets PROMETHEUS_MULTIPROC_DIR for prometheus-client's multiprocess mode, which reads it there.
    allowed = {"services/settings.py", "services/supervisor.py"}
    root = README.parent
    modules = [root / "server.py", *sorted((root / "handlers").glob("*.py")), *sorted((root / "services").glob("*.py"))]
    readers = [
        str(path.relative_to(root))
        for path in modules
        if ("os.environ" in path.read_text() or "getenv" in path.read_text())
        and str(path.relative_to(root)) not in allowed
    ]
    assert readers == []

"""package.xml declares exactly the rosdep keys verified in docs/ROSDEP.md; requirements.txt is covered."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "ROSDEP.md"
DEPEND_TAGS = ("depend", "build_depend", "build_export_depend", "exec_depend", "test_depend", "doc_depend")


def package_keys() -> set[tuple[str, str]]:
    root = ET.parse(REPO / "package.xml").getroot()
    return {(element.tag, element.text.strip()) for tag in DEPEND_TAGS for element in root.iter(tag)}


def doc_table(section: str) -> list[list[str]]:
    """Rows (cells) of the markdown table between <!-- SECTION:start --> and <!-- SECTION:end -->."""
    text = DOC.read_text()
    match = re.search(rf"<!-- {section}:start -->(.*?)<!-- {section}:end -->", text, re.S)
    assert match, f"docs/ROSDEP.md has no {section} table"
    rows = []
    for line in match.group(1).strip().splitlines()[2:]:  # skip header and separator
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def requirement_names() -> set[str]:
    names = set()
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(re.split(r"[\[=<>!~;\s]", line, maxsplit=1)[0].lower())
    return names


def test_package_xml_keys_are_exactly_the_verified_list():
    documented = {(row[1], row[0].strip("`")) for row in doc_table("declared-keys")}
    assert all(tag in DEPEND_TAGS and re.fullmatch(r"[a-z0-9_.+-]+", key) for tag, key in documented)
    declared = package_keys()
    assert declared - documented == set(), (
        f"package.xml keys not verified in docs/ROSDEP.md: {sorted(declared - documented)}"
    )
    assert documented - declared == set(), (
        f"docs/ROSDEP.md lists undeclared keys: {sorted(documented - declared)}"
    )
    for row in doc_table("declared-keys"):
        assert row[3] in ("distribution.yaml", "rosdep/python.yaml", "rosdep/base.yaml"), row


def test_pip_only_packages_are_not_declared_and_requirements_are_covered():
    pip_rows = doc_table("pip-only")
    pip_only = {row[0].strip("`").split("[")[0].lower() for row in pip_rows}
    removed = {key for row in pip_rows for key in re.findall(r"`([^`]+)` removed", row[2])}
    declared = {key for _, key in package_keys()}
    assert not removed & declared, f"keys documented as missing are back in package.xml: {removed & declared}"
    apt_mapped = {"numpy", "scipy", "pyyaml", "pillow", "matplotlib", "tqdm", "opencv-python-headless"}
    requirements = requirement_names()
    uncovered = requirements - pip_only - apt_mapped
    assert not uncovered, f"requirements.txt packages missing from docs/ROSDEP.md: {sorted(uncovered)}"
    text = DOC.read_text()
    for name in apt_mapped & requirements:
        assert f"`{name}`" in text, name

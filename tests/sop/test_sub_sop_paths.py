"""A ``uses: sop:<file>`` path stays inside the directory of the SOP that uses it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sop import check_file
from sop.paths import SubSopPathError, resolve_sub_sop

SUB = "sop: sub\nsteps:\n  - {id: x, run: echo}\n"


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    """``tmp/outside.yaml`` (a valid SOP outside) and ``tmp/project/`` where the SOP lives."""
    (tmp_path / "outside.yaml").write_text(SUB)
    project = tmp_path / "project"
    (project / "parts").mkdir(parents=True)
    (project / "parts" / "inside.yaml").write_text(SUB)
    return project


def main_using(project: Path, ref: str) -> Path:
    main = project / "main.yaml"
    main.write_text(f"sop: main\nsteps:\n  - id: a\n    run: echo\n  - id: b\n    uses: 'sop:{ref}'\n")
    return main


@pytest.mark.parametrize("ref", ["../outside.yaml", "parts/../../outside.yaml", "../../../../../../etc/passwd",
                                 "/etc/passwd", "link.yaml", "linkdir/outside.yaml"])
def test_a_sub_sop_path_outside_the_sops_directory_is_refused_with_its_location(layout: Path, ref: str) -> None:
    (layout / "link.yaml").symlink_to(layout.parent / "outside.yaml")
    (layout / "linkdir").symlink_to(layout.parent)
    [p] = check_file(main_using(layout, ref)).problems
    assert (p.code, p.path, p.line, p.column) == ("sub-sop-outside", "steps[1].uses", 6, 11)
    assert repr(ref) in p.message and str(layout.resolve()) in p.message
    assert "inside" in p.message and "move the file into" in (p.suggestion or "")


@pytest.mark.parametrize("ref", ["parts/inside.yaml", "parts/../parts/inside.yaml", "inlink.yaml"])
def test_a_sub_sop_inside_the_sops_directory_is_accepted(layout: Path, ref: str) -> None:
    (layout / "inlink.yaml").symlink_to(layout / "parts" / "inside.yaml")
    report = check_file(main_using(layout, ref))
    assert report.ok, [str(p) for p in report.problems]


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.sampled_from(["..", ".", "a", "b", "outside.yaml", "x.yaml", "", "link"]),
                      min_size=1, max_size=6))
def test_any_resolved_sub_sop_path_is_inside_the_directory(tmp_path_factory, parts: list[str]) -> None:
    root = tmp_path_factory.getbasetemp() / "confine"
    base = root / "a" / "b"
    if not base.exists():
        base.mkdir(parents=True)
        (base / "link").symlink_to(root)
    ref = "/".join(parts)
    try:
        target = resolve_sub_sop(base, ref)
    except SubSopPathError:
        escaped = os.path.realpath(os.path.join(base, ref))
        assert not escaped.startswith(str(base.resolve()) + os.sep) and escaped != str(base.resolve()) \
            or os.path.isabs(ref)
    else:
        assert target.is_relative_to(base.resolve())

"""The YAML/JSON loader: positions per path, duplicate keys, and refusal of hostile input."""

from __future__ import annotations

from pathlib import Path

import pytest

from sop import check_text
from sop._yaml import MAX_DEPTH, format_path, load_text

SOP = """\
sop: orders
steps:
  - id: fetch
    run: echo fetch
  - id: ship
    depends_on: [fetch, pack]
    run: echo ship
"""


def codes(loaded) -> list[str]:
    return [p.code for p in loaded.problems]


# -- positions -------------------------------------------------------------------------------


def test_every_value_has_its_line_and_column() -> None:
    loaded = load_text(SOP, "orders.yaml")
    assert loaded.problems == []
    assert loaded.positions[("sop",)] == (1, 6)
    assert loaded.positions[("steps",)] == (3, 3)
    assert loaded.positions[("steps", 0)] == (3, 5)
    assert loaded.positions[("steps", 0, "id")] == (3, 9)
    assert loaded.positions[("steps", 1, "depends_on")] == (6, 17)
    assert loaded.positions[("steps", 1, "depends_on", 0)] == (6, 18)
    assert loaded.positions[("steps", 1, "depends_on", 1)] == (6, 25)


def test_keys_have_their_own_positions() -> None:
    loaded = load_text(SOP)
    assert loaded.key_positions[("steps",)] == (2, 1)
    assert loaded.key_positions[("steps", 1, "depends_on")] == (6, 5)
    assert loaded.position(("steps", 1, "depends_on"), key=True) == (6, 5)


def test_an_unknown_path_falls_back_to_its_nearest_ancestor() -> None:
    loaded = load_text(SOP)
    assert loaded.position(("steps", 1, "retry", "max_attempts")) == (5, 5)
    assert loaded.position(("nothing", "here")) == (1, 1)


def test_paths_are_written_the_way_users_read_them() -> None:
    assert format_path(("steps", 2, "depends_on", 0)) == "steps[2].depends_on[0]"
    assert format_path(()) == ""


def test_json_files_load_with_positions() -> None:
    text = '{\n  "sop": "orders",\n  "steps": [\n    {"id": "fetch", "run": "echo"}\n  ]\n}\n'
    loaded = load_text(text, "orders.json")
    assert loaded.problems == []
    assert loaded.data == {"sop": "orders", "steps": [{"id": "fetch", "run": "echo"}]}
    assert loaded.positions[("sop",)] == (2, 10)
    assert loaded.positions[("steps", 0)] == (4, 5)
    assert loaded.positions[("steps", 0, "id")] == (4, 12)


def test_a_json_syntax_error_names_line_and_column() -> None:
    loaded = load_text('{"sop": "orders",\n "steps": [1,\n}', "orders.json")
    assert loaded.data is None
    [problem] = loaded.problems
    assert problem.code == "json-syntax"
    assert "JSON syntax error" in problem.message
    assert (problem.line, problem.column) == (3, 1)


def test_a_json_sop_validates_like_yaml() -> None:
    report = check_text('{"sop": "orders", "steps": [{"id": "fetch", "run": "echo"},\n'
                        ' {"id": "ship", "run": "echo", "depends_on": ["fetc"]}]}', file="orders.json")
    [problem] = report.problems
    assert problem.code == "unknown-dependency"
    assert (problem.line, problem.path) == (2, "steps[1].depends_on[0]")
    assert problem.suggestion == "did you mean 'fetch'?"


# -- duplicate keys and syntax ---------------------------------------------------------------


def test_duplicate_keys_are_reported_where_the_second_one_is() -> None:
    loaded = load_text("sop: orders\nsteps:\n  - id: a\n    run: one\n    run: two\n")
    [problem] = loaded.problems
    assert problem.code == "duplicate-key"
    assert problem.message == "key 'run' appears twice in the same mapping"
    assert problem.path == "steps[0].run"
    assert (problem.line, problem.column) == (5, 5)
    assert "silently keep the last" in (problem.suggestion or "")


def test_duplicate_keys_make_the_sop_invalid() -> None:
    report = check_text("sop: orders\nsop: other\nsteps:\n  - {id: a, run: echo}\n")
    assert not report.ok
    assert [p.code for p in report.problems] == ["duplicate-key"]


def test_a_yaml_syntax_error_has_line_and_column() -> None:
    loaded = load_text("sop: orders\nsteps:\n  - id: a\n    run: [echo\n", "orders.yaml")
    assert loaded.data is None
    [problem] = loaded.problems
    assert problem.code == "yaml-syntax"
    assert problem.message.startswith("YAML syntax error: ")
    assert problem.line is not None and problem.column is not None
    assert str(problem).startswith(f"orders.yaml:{problem.line}:{problem.column}: ")


def test_an_alias_without_anchor_is_a_syntax_error() -> None:
    loaded = load_text("a: *nowhere\n")
    assert codes(loaded) == ["yaml-syntax"]
    assert "*nowhere" in loaded.problems[0].message


def test_a_mapping_used_as_a_key_is_refused() -> None:
    loaded = load_text("? [a, b]\n: 1\n")
    assert codes(loaded) == ["yaml-syntax"]
    assert "mapping key must be a plain value" in loaded.problems[0].message


def test_text_that_is_not_utf8_is_refused() -> None:
    loaded = load_text(b"sop: \xff\xfe\n", "orders.yaml")
    assert codes(loaded) == ["encoding"]
    assert "not UTF-8" in loaded.problems[0].message


def test_multiple_documents_are_refused() -> None:
    loaded = load_text("sop: one\nsteps: []\n---\nsop: two\n")
    assert loaded.data is None
    [problem] = loaded.problems
    assert problem.code == "multiple-documents"
    assert "second YAML document" in problem.message
    assert problem.line == 3


# -- merge keys and scalars ------------------------------------------------------------------


def test_merge_keys_fill_in_what_the_mapping_does_not_set() -> None:
    loaded = load_text(
        "base: &base {retry: {max_attempts: 3}, timeout_s: 10}\n"
        "step:\n  <<: *base\n  timeout_s: 99\n"
    )
    assert loaded.problems == []
    assert loaded.data["step"] == {"retry": {"max_attempts": 3}, "timeout_s": 99}


def test_merge_keys_accept_a_list_and_the_first_source_wins() -> None:
    loaded = load_text("a: &a {p: 1, q: 1}\nb: &b {q: 2, r: 2}\nc:\n  <<: [*a, *b]\n  r: 9\n")
    assert loaded.data["c"] == {"p": 1, "q": 1, "r": 9}


def test_merged_defaults_work_in_a_real_sop() -> None:
    report = check_text(
        "sop: orders\n"
        "x-step: &step {run: echo, timeout_s: 5}\n"
        "steps:\n  - {<<: *step, id: a}\n  - {<<: *step, id: b, depends_on: [a]}\n"
    )
    # x-step is not a field of an SOP: the merge worked and only that is reported.
    assert [p.code for p in report.problems] == ["unknown-field"]
    assert report.problems[0].path == "x-step"


def test_scalars_keep_their_yaml_types_and_quoted_text_stays_text() -> None:
    loaded = load_text('a: 1\nb: "1"\nc: 1.5\nd: true\ne: ~\nf: hello\n')
    assert loaded.data == {"a": 1, "b": "1", "c": 1.5, "d": True, "e": None, "f": "hello"}


# -- hostile input ---------------------------------------------------------------------------


BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def test_an_alias_bomb_is_refused_as_too_large() -> None:
    loaded = load_text(BILLION_LAUGHS, "bomb.yaml")
    assert loaded.data is None
    [problem] = loaded.problems
    assert problem.code == "too-large"
    assert "alias" in problem.message
    assert problem.line is not None


def test_an_alias_bomb_is_an_invalid_sop_not_a_hang() -> None:
    report = check_text("sop: bomb\n" + BILLION_LAUGHS + "steps: [{id: a, run: echo}]\n")
    assert [p.code for p in report.problems] == ["too-large"]


def test_ten_megabytes_of_brackets_fail_with_a_clear_error() -> None:
    loaded = load_text("[" * (10 * 1024 * 1024), "brackets.yaml")
    assert loaded.data is None
    [problem] = loaded.problems
    assert problem.code in ("too-large", "too-deep")
    assert "MiB" in problem.message or "nesting" in problem.message
    assert problem.file == "brackets.yaml"


def test_a_megabyte_of_brackets_fails_on_depth() -> None:
    loaded = load_text("[" * (1024 * 1024))
    assert codes(loaded) == ["too-deep"]


def test_nesting_deeper_than_the_limit_is_refused() -> None:
    depth = MAX_DEPTH + 1
    loaded = load_text("sop: " + "[" * depth + "]" * depth)
    assert loaded.data is None
    [problem] = loaded.problems
    assert problem.code == "too-deep"
    assert problem.message == f"nesting is deeper than {MAX_DEPTH} levels"
    assert problem.line == 1


def test_nesting_up_to_the_limit_is_fine() -> None:
    loaded = load_text("[" * MAX_DEPTH + "]" * MAX_DEPTH)
    assert loaded.problems == []


def test_block_style_nesting_is_limited_too() -> None:
    text = "".join("  " * k + f"k{k}:\n" for k in range(MAX_DEPTH + 1)) + "  " * (MAX_DEPTH + 1) + "v\n"
    assert codes(load_text(text)) == ["too-deep"]


def test_python_tags_are_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = f'sop: x\nsteps: !!python/object/apply:os.system ["touch {marker}"]\n'
    loaded = load_text(text)
    assert loaded.data is None
    [problem] = loaded.problems
    assert problem.code == "yaml-tag"
    assert "python/object/apply:os.system" in problem.message
    assert (problem.line, problem.column) == (2, 8)
    report = check_text(text)
    assert [p.code for p in report.problems] == ["yaml-tag"]
    assert not marker.exists()


@pytest.mark.parametrize("tagged", [
    "!!python/name:os.system",
    "!!python/object/new:subprocess.Popen [[ls]]",
    "!custom value",
    "!!set {a, b}",
])
def test_non_standard_tags_are_refused(tagged: str) -> None:
    assert codes(load_text(f"a: {tagged}\n")) == ["yaml-tag"]

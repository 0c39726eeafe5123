"""Plugin parameters are checked against their annotations before a plugin is called."""

from typing import Annotated, Literal, Optional, Sequence

import pytest

from atlas_plugins.params import PluginRef, describe, literal_values, matches, plugin_ref, resolve_refs
from conftest import one_error_line, run_atlas, run_cli, write_pipeline


@pytest.mark.parametrize("annotation, good, bad", [
    (bool, [True, False], ["false", "no", 0, 1, None]),
    (int, [0, 7, -3], [True, 1.5, "7"]),
    (float, [1, 2.5, -1e300], [True, "1.0", None]),
    (str, ["x", ""], [1, None, ["x"]]),
    (list[int], [[], [1, 2]], [[1, "2"], [True], 3, "1,2"]),
    (Sequence[int], [[1, 2]], [[1.5], "12"]),
    (tuple[int, ...], [[1, 2, 3]], [[1, None]]),
    (int | Sequence[int], [3, [3, 4]], ["3", [3, "4"]]),
    (Optional[str], [None, "a"], [1]),
    (float | None, [None, 1, 0.5], [False, "0.5"]),
    (Literal["gaussian", "student-t"], ["gaussian"], ["Gaussian", 1, None]),
    (Literal[1, 2], [1], [True, 1.0]),
    (dict, [{}], [[]]),
    (Annotated[str, PluginRef("loss")], ["relational"], [3]),
])
def test_values_match_their_annotation(annotation, good, bad):
    assert all(matches(v, annotation) for v in good), describe(annotation)
    assert not any(matches(v, annotation) for v in bad), describe(annotation)


def test_descriptions_say_what_is_expected():
    assert describe(bool) == "true or false"
    assert describe(list[int]) == "a list of integers"
    assert describe(Optional[float]) == "a number"
    assert describe(Literal["a", "b"]) == "one of 'a', 'b'"
    assert describe(Annotated[str, PluginRef("loss")] | None) == "a loss name (a string)"


def test_the_values_a_literal_allows_are_found_inside_optional_and_annotated():
    assert literal_values(Literal["a", "b"]) == ("a", "b")
    assert literal_values(Optional[Literal["a", "b"]]) == ("a", "b")
    assert literal_values(Annotated[Literal["x"] | int, "meta"]) == ("x",)
    assert literal_values(str) == () and literal_values(list[int]) == ()


def test_unannotated_parameters_keep_todays_behaviour():
    def plugin(path, anything=1, *, maybe: "NotAType" = None):  # noqa: F821
        return anything

    from atlas_plugins.params import signature_annotations

    annotations = signature_annotations(plugin)
    assert "anything" not in annotations and matches("whatever", annotations["maybe"])


def test_plugin_references_resolve_through_the_given_registry(registry):
    def mine(student, teacher, *, tau=1.0, reduction="mean"):
        return student.sum()

    registry.register("loss", "only-in-this-registry", mine)
    combined = registry.get("loss", "combined")
    assert plugin_ref(Annotated[str, PluginRef("loss")] | None).kind == "loss"
    assert resolve_refs(combined, {"base": "only-in-this-registry", "alpha": 0.5}, registry) == \
        {"base": mine, "alpha": 0.5}


@pytest.mark.smoke
@pytest.mark.parametrize("args, fragment", [
    (("--set", 'teacher.trust="false"'), "teacher.trust must be true or false for teacher 'pt', got 'false'"),
    (("--set", "teacher.trust=no"), "teacher.trust must be true or false for teacher 'pt', got 'no'"),
    (("--set", "teacher.trust=False"), "teacher.trust must be true or false for teacher 'pt', got 'False'"),
])
def test_a_string_never_turns_on_trust(evil_teacher, tmp_path, args, fragment):
    path, marker = evil_teacher
    pipe = write_pipeline(tmp_path, teacher=f'path = "{path}"')
    for extra in (("--dry-run",), ("--quiet",)):
        run = run_atlas if args[1].endswith("False") else run_cli  # one case through the real entry point
        line = one_error_line(run(pipe, *extra, *args), fragment)
        assert line.startswith(f"atlas-run: error: --set '{args[1]}'")
    assert not marker.exists()


def test_a_string_in_the_pipeline_file_is_blamed_on_the_file(evil_teacher, tmp_path):
    path, marker = evil_teacher
    pipe = write_pipeline(tmp_path, teacher=f'path = "{path}"\ntrust = "false"')
    one_error_line(run_atlas(pipe, "--dry-run"), f"{pipe}: teacher.trust must be true or false")
    assert not marker.exists()


@pytest.mark.parametrize("setting, fragment", [
    ('student.reconstruct="false"', "student.reconstruct must be true or false for student 'mlp'"),
    ('student.hidden=["32"]', "student.hidden must be an integer or a list of integers for student 'mlp'"),
    ('loss.kernel="Gaussian"', "loss.kernel must be one of 'gaussian', 'student-t' for loss 'neighbors', got "
                               "'Gaussian' (did you mean 'gaussian'?)"),
    ("loss.dof=true", "loss.dof must be a number for loss 'neighbors', got True"),
    ("loss.dof=-1", "dof must be a positive number, got -1"),
    ('loss.name="combined"', None),
])
def test_plugin_parameters_of_the_wrong_type_are_one_line(tmp_path, setting, fragment):
    pipe = write_pipeline(tmp_path, loss='name = "neighbors"')
    extra = ("--set", 'loss.base="nope"') if fragment is None else ()
    proc = run_cli(pipe, "--dry-run", "--set", setting, *extra)
    one_error_line(proc, fragment or "loss.base: unknown loss 'nope'")
    assert not (tmp_path / "run").exists()

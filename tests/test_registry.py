"""The registry: built-ins, entry-point discovery from (fake) installed distributions, errors."""

import pytest
import torch

import atlas_plugins
from conftest import make_distribution
from atlas_plugins import (DuplicatePluginError, PluginError, PluginLoadWarning, Registry, UnknownPluginError,
                           hookimpl)


GOOD = """
    import atlas_plugins

    @atlas_plugins.hookimpl
    def register_losses(register):
        def l1_relational(student, teacher, *, tau=1.0, reduction="mean"):
            return (student.sum() - teacher.sum()).abs()
        register("l1-test", l1_relational, "absolute difference of sums")
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("ATLAS_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    return tmp_path


def test_builtins_are_registered_with_their_distribution(registry):
    names = {(p.kind, p.name) for p in registry.available()}
    for kind, name in [("loss", "mse"), ("loss", "cosine"), ("loss", "relational"), ("loss", "kl"),
                       ("loss", "combined"), ("loss", "hierarchical"), ("schedule", "linear"),
                       ("schedule", "exponential"), ("schedule", "cosine"), ("teacher", "pt"), ("teacher", "npy"),
                       ("student", "mlp"), ("student", "hierarchical")]:
        assert (kind, name) in names
    assert {p.distribution for p in registry.available()} == {"atlas-distill"}
    assert all(p.description for p in registry.available())


def test_third_party_loss_is_found_by_name(site):
    make_distribution(site, "atlas-l1", "atlas_l1_plugin", GOOD)
    reg = Registry()
    fn = reg.get("loss", "l1-test")
    assert fn(torch.ones(2, 3), torch.zeros(2, 3)).item() == 6.0
    info = reg.info("loss", "l1-test")
    assert (info.distribution, info.version, info.description) == ("atlas-l1", "1.0", "absolute difference of sums")


def test_autoload_can_be_disabled(site, monkeypatch):
    make_distribution(site, "atlas-l1", "atlas_l1_plugin", GOOD)
    monkeypatch.setenv("ATLAS_DISABLE_PLUGIN_AUTOLOAD", "1")
    reg = Registry()
    assert "l1-test" not in reg.names("loss") and "relational" in reg.names("loss")


def test_duplicate_name_is_reported_naming_both_providers(site):
    make_distribution(site, "atlas-one", "atlas_one_plugin", GOOD)
    make_distribution(site, "atlas-two", "atlas_two_plugin", GOOD)
    with pytest.warns(PluginLoadWarning, match="loss 'l1-test' is registered twice"):
        reg = Registry()
    with pytest.raises(DuplicatePluginError, match=r"atlas-one.*atlas-two|atlas-two.*atlas-one"):
        reg.get("loss", "l1-test")
    assert reg.get("loss", "relational")  # everything else still works


def test_plugin_that_fails_to_import_does_not_break_the_others(site):
    make_distribution(site, "atlas-broken", "atlas_broken_plugin", "raise ImportError('needs libfoo')\n",
                      ep_name="broken")
    with pytest.warns(PluginLoadWarning, match="plugin 'broken' from distribution 'atlas-broken 1.0' failed to load: "
                                               "ImportError: needs libfoo"):
        reg = Registry()
    assert reg.get("loss", "relational")
    with pytest.raises(UnknownPluginError, match="unknown loss 'broken-loss'.*atlas-broken 1.0.*needs libfoo"):
        reg.get("loss", "broken-loss")


def test_an_invalid_installed_plugin_is_a_warning_and_its_names_are_unavailable(site):
    make_distribution(site, "atlas-typo", "atlas_typo_plugin", """
        import atlas_plugins

        @atlas_plugins.hookimpl
        def register_loss(register):
            pass
    """)
    with pytest.warns(PluginLoadWarning, match="plugin 'atlas_typo_plugin' from distribution 'atlas-typo' is invalid.*"
                                               "register_loss"):
        reg = Registry()
    assert reg.get("loss", "relational")


@pytest.mark.parametrize("body, reason", [
    ('register("half-ok", lambda s, t, **kw: s.sum())\n    register("bad", 42)', "which is not callable"),
    ('register("half-ok", lambda s, t, **kw: s.sum())\n    register(7, lambda s, t, **kw: s.sum())',
     "invalid name 7"),
    ('register("half-ok", lambda s, t, **kw: s.sum())\n    raise SystemExit(0)', "raised SystemExit"),
])
def test_a_plugin_that_registers_badly_loses_all_its_names_with_the_reason(site, body, reason):
    module = "atlas_sloppy_" + "".join(c for c in reason if c.isalnum())  # a fresh module per case
    make_distribution(site, "atlas-sloppy", module, f"""
import atlas_plugins

@atlas_plugins.hookimpl
def register_losses(register):
    {body}
""")
    with pytest.warns(PluginLoadWarning, match=reason):
        reg = Registry()
    with pytest.raises(UnknownPluginError, match=f"unknown loss 'half-ok'.*atlas-sloppy.*{reason}"):
        reg.get("loss", "half-ok")
    assert reg.get("loss", "relational")


def test_a_description_that_is_not_a_string_is_shown_as_text(registry):
    class Odd:
        @hookimpl
        def register_losses(self, register):
            register("odd-description", lambda s, t, **kw: s.sum(), 42)

    registry.add_plugin(Odd(), name="odd")
    assert registry.info("loss", "odd-description").description == "42"


def test_hook_that_raises_is_reported(registry):
    class Exploding:
        @hookimpl
        def register_students(self, register):
            raise RuntimeError("boom")

    with pytest.warns(PluginLoadWarning, match="register_students\\(\\) raised RuntimeError: boom"):
        registry.add_plugin(Exploding(), name="exploding", distribution="atlas-exploding")
    assert registry.get("student", "mlp")


def test_unknown_name_suggests_the_closest(registry):
    with pytest.raises(UnknownPluginError, match=r"unknown loss 'relatinal' \(did you mean 'relational'\?\); "
                                                 r"available losses: combined, cosine"):
        registry.get("loss", "relatinal")
    with pytest.raises(PluginError, match="unknown plugin kind 'losses'"):
        registry.get("losses", "mse")


def test_in_process_registration_function_and_decorator(registry):
    registry.register("loss", "twice-mse", lambda s, t, **kw: 2 * registry.get("loss", "mse")(s, t, **kw))

    @registry.register("schedule", "constant")
    def constant(start, end, num_stages):
        return lambda stage: start

    assert registry.get("schedule", "constant")(3.0, 1.0, 4)(2) == 3.0
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    assert torch.allclose(registry.get("loss", "twice-mse")(s, t), 2 * torch.mean((s - t) ** 2))
    assert registry.info("loss", "twice-mse").distribution == "__main__"
    with pytest.raises(DuplicatePluginError, match="loss 'mse' is already provided by plugin 'builtin'"):
        registry.register("loss", "mse", lambda s, t, **kw: s.sum())


def test_plugins_must_register_callables(registry):
    class Bad:
        @hookimpl
        def register_losses(self, register):
            register("not-callable", 42)

    with pytest.raises(PluginError, match="registered loss 'not-callable' as 42, which is not callable"):
        registry.add_plugin(Bad(), name="bad", distribution="atlas-bad")


def test_module_level_api_uses_the_process_registry():
    atlas_plugins.register("loss", "test-module-level", lambda s, t, **kw: s.sum())
    try:
        assert atlas_plugins.get_loss("test-module-level")(torch.ones(2, 2), None).item() == 4.0
        assert any(p.name == "test-module-level" for p in atlas_plugins.available("loss"))
    finally:
        atlas_plugins.reset_registry()
    with pytest.raises(UnknownPluginError):
        atlas_plugins.get_loss("test-module-level")


def test_builtins_use_only_the_public_plugin_api_and_the_core_names_them_once():
    """docs/index.md and docs/plugins.md: the built-ins use what a third-party plugin can; the core imports them
    in one place (registry.py) and never reaches back."""
    import ast

    from conftest import ROOT

    public = {"atlas_plugins", "atlas_plugins.checks", "atlas_plugins.errors", "atlas_plugins.params",
              "atlas_plugins.teacher", "atlas_plugins.formats",
              "atlas_plugins.checkpoint"}
    for path in (ROOT / "builtin_plugins").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("atlas_plugins"):
                assert node.module in public, f"{path.name} imports {node.module}"
                assert not {a.name for a in node.names} & {"get_registry", "get_loss", "Registry"}, path.name
    importers = [p.name for p in (ROOT / "atlas_plugins").glob("*.py") if "import builtin_plugins" in p.read_text()
                 or "from builtin_plugins" in p.read_text()]
    assert importers == ["registry.py"]


def test_installed_plugins_do_not_reach_the_tests_process_registry(tmp_path, monkeypatch):
    """A plugin installed on the machine (here one that registers the docs' example name) cannot change the
    outcome of in-process tests: conftest's autouse fixture keeps the process registry to the built-ins."""
    monkeypatch.syspath_prepend(str(tmp_path))
    make_distribution(tmp_path, "atlas-clash", "atlas_clash_plugin", """
        import atlas_plugins

        @atlas_plugins.hookimpl
        def register_losses(register):
            register("rank-margin", lambda s, t, **kw: s.sum())
    """)
    assert "rank-margin" not in atlas_plugins.get_registry().names("loss")
    monkeypatch.delenv("ATLAS_DISABLE_PLUGIN_AUTOLOAD")
    assert "rank-margin" in Registry().names("loss")  # it is installed, and found when discovery is on

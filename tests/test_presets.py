import attrs
import pytest

from atlas_plugins import CURRICULUM_CONFIG, DEFAULT_OPENAI_CONFIG, FAST_CONFIG, ConfigError, DistillationConfig
from atlas_plugins.config import build_config
from atlas_plugins.pipeline import assemble
from conftest import EXAMPLE_NPY


@pytest.mark.parametrize("field, value, message", [
    ("teacher_dim", 0, "teacher_dim must be a positive integer"),
    ("tau", -1.0, "tau must be a positive number"),
    ("alpha", 1.5, r"alpha must be a number in \[0, 1\]"),
    ("device", "gpu", "device must be 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'"),
    ("curriculum", "false", "curriculum must be true or false"),
    ("curriculum_stages", 10**9, "curriculum_stages must be a positive integer \\(at most 10,000\\)"),
    ("curriculum_tau_schedule", (4.0,), r"curriculum_tau_schedule must be \(start_tau, end_tau\)"),
    ("curriculum_tau_schedule", (4.0, 0.0), "curriculum_tau_schedule must be a positive number"),
])
def test_config_validates_each_field(field, value, message):
    with pytest.raises(ConfigError, match=f"DistillationConfig.{message}"):
        DistillationConfig(**{field: value})


def test_presets_are_frozen_and_taus_follow_the_schedule():
    with pytest.raises(AttributeError):
        CURRICULUM_CONFIG.tau = 2.0
    assert [round(CURRICULUM_CONFIG.get_tau_for_stage(s), 3) for s in range(5)] == [4.0, 3.125, 2.25, 1.375, 0.5]
    assert DEFAULT_OPENAI_CONFIG.get_tau_for_stage(3) == DEFAULT_OPENAI_CONFIG.tau
    exp = DistillationConfig(curriculum=True, schedule_type="exponential", curriculum_tau_schedule=(4.0, 1.0),
                             curriculum_stages=3)
    assert exp.get_tau_for_stage(1) == pytest.approx(2.0)


@pytest.mark.parametrize("preset", [DEFAULT_OPENAI_CONFIG, CURRICULUM_CONFIG, FAST_CONFIG])
def test_presets_become_runnable_pipelines(preset, tmp_path):
    doc = attrs.evolve(preset, teacher_dim=384, batch_size=256).pipeline(EXAMPLE_NPY, tmp_path / "run")
    pipe = assemble(build_config(doc, tmp_path / "preset.toml"))
    assert pipe.config.loss.name == "neighbors" and pipe.config.train.batches == "neighbors"
    assert len(pipe.taus) == (preset.curriculum_stages if preset.curriculum else 1)


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1", "mps", "auto", "gpu", "cuda:x", "CPU"])
def test_quickstart_and_pipeline_configs_accept_the_same_devices(device, tmp_path):
    """One validator serves both: a device is accepted by both configurations or by neither."""
    def accepted(make):
        try:
            make()
            return True
        except ConfigError:
            return False

    by_quickstart = accepted(lambda: DistillationConfig(device=device))
    by_pipeline = accepted(lambda: build_config({"teacher": {"path": str(EXAMPLE_NPY)}, "train": {"device": device}},
                                                tmp_path / "p.toml"))
    assert by_quickstart == by_pipeline == (device in ("cpu", "cuda", "cuda:1", "mps", "auto"))

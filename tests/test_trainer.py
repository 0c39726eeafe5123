"""The training loop in-process: determinism, input noise, learning-rate schedule, neighbour batches."""

import math

import numpy as np
import pytest
import torch

from atlas_plugins.config import build_config
from atlas_plugins import batches as batches_module
from atlas_plugins.batches import chunks, neighbor_batches
from atlas_plugins.neighbors import normalized_rows, topk_cosine
from atlas_plugins.pipeline import assemble
from atlas_plugins.trainer import Trainer
from conftest import EXAMPLE_NPY


def new_trainer(tmp_path, **train):
    """A Trainer on the bundled example, not yet trained (one stage at a fixed τ, one epoch, a 16-unit student)."""
    doc = {"teacher": {"path": str(EXAMPLE_NPY)}, "student": {"hidden": [16]}, "loss": {"tau": 1.0},
           "train": {k: v for k, v in {"epochs_per_stage": 1, "batch_size": 256, "eval_rows": 100, **train}.items()
                     if v is not None},
           "output": {"dir": str(tmp_path / "unused"), "report": False}}
    return Trainer(assemble(build_config(doc, tmp_path / "p.toml")), None, echo=lambda m: None)


def trained(tmp_path, **train):
    t = new_trainer(tmp_path, **train)
    t.fit()
    return t


def test_input_noise_changes_training_but_stays_deterministic(tmp_path):
    clean = trained(tmp_path, input_noise=0.0).student.state_dict()
    noisy = trained(tmp_path, input_noise=0.5).student.state_dict()
    again = trained(tmp_path, input_noise=0.5).student.state_dict()
    assert all(torch.equal(noisy[k], again[k]) for k in noisy)
    assert not all(torch.equal(noisy[k], clean[k]) for k in noisy)


def test_learning_rate_warms_up_then_follows_a_cosine(tmp_path):
    t = trained(tmp_path, learning_rate=1e-2, warmup_steps=4, lr_schedule="cosine")
    assert [t.lr_at(s) for s in range(4)] == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2])
    mid = 4 + (t.total_steps - 4) // 2
    assert t.lr_at(mid) == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * (mid - 4) / (t.total_steps - 4))))
    assert t.lr_at(t.total_steps) == pytest.approx(0.0, abs=1e-12)
    assert t.metrics[-1]["step"] == t.total_steps


def test_auto_batches_use_teacher_neighbours_for_small_sets(tmp_path):
    t = trained(tmp_path)
    assert t.pipe.batch_mode == "neighbors" and t.graph.shape == (len(t.pipe.train_rows), 60)


def test_topk_cosine_is_exact_and_excludes_self(real_embeddings):
    x = torch.nn.functional.normalize(torch.from_numpy(real_embeddings[:300]), dim=1)
    got = topk_cosine(x, 5, block=64)
    sims = (x @ x.T).fill_diagonal_(-2)
    assert torch.equal(got, sims.topk(5, dim=1).indices)


def test_neighbor_batches_hold_anchors_and_their_neighbours():
    graph = torch.arange(100).view(100, 1).add(torch.arange(1, 11)).remainder(100)  # i's pool: i+1 .. i+10
    order = np.random.default_rng(0).permutation(100)
    batches = neighbor_batches(order, graph, batch_size=64, neighbors=3, generator=torch.Generator().manual_seed(0))
    anchors_per_batch = 64 // 4
    # 100 anchors in pieces of 16: the tail of 4 (under half a piece) joins the piece before it
    assert len(batches) == 100 // anchors_per_batch
    for b, batch in enumerate(batches):
        last = b == len(batches) - 1
        anchors = order[b * anchors_per_batch:None if last else (b + 1) * anchors_per_batch]
        assert list(batch[:len(anchors)]) == list(anchors) and len(set(batch)) == len(batch)
        others = set(batch) - set(anchors)
        assert all(any((o - a) % 100 in range(1, 11) for a in anchors) for o in others)


def batch_by_batch(order, graph, batch_size, neighbors, generator):
    """The one-hop neighbour batches drawn one batch at a time: the plain reading of neighbor_batches' rule."""
    batches = []
    for anchors in chunks(order, max(1, batch_size // (1 + neighbors))):
        anchors = torch.as_tensor(anchors, dtype=torch.long)
        pick = torch.rand(len(anchors), graph.shape[1], generator=generator).argsort(dim=1)[:, :neighbors]
        rows = torch.cat([anchors, graph[anchors].gather(1, pick).long().flatten()]).tolist()
        batch = np.array(list(dict.fromkeys(rows)), dtype=np.int64)  # each row once, where it first appears
        if len(batch) < 3 and batches:
            batch = np.array(list(dict.fromkeys(batches.pop().tolist() + batch.tolist())), dtype=np.int64)
        batches.append(batch)
    return [b for b in batches if len(b) >= 3]


@pytest.mark.parametrize("block", [10, 48, 65_536], ids=["blocks-of-one-batch", "blocks-of-three", "one-block"])
@pytest.mark.parametrize("batch_size, neighbors", [(64, 3), (2, 1), (32, 15)])
def test_neighbor_batches_drawn_at_once_are_those_drawn_batch_by_batch(real_embeddings, monkeypatch, block,
                                                                      batch_size, neighbors):
    """Drawn in blocks of many batches, the batches are the ones drawn one at a time, to the row, and
    blocks of any size give the same batches (with batches of one anchor and one partner, pairs that are
    each other's neighbour leave a batch of two rows, which joins the one before it)."""
    monkeypatch.setattr(batches_module, "BLOCK_ANCHORS", block)
    x = torch.nn.functional.normalize(torch.from_numpy(real_embeddings[:500]), dim=1)
    graph = topk_cosine(x, 20).int()
    order = np.random.default_rng(3).permutation(500)
    got = neighbor_batches(order, graph, batch_size, neighbors, torch.Generator().manual_seed(4))
    want = batch_by_batch(order, graph, batch_size, neighbors, torch.Generator().manual_seed(4))
    assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))

def test_two_hop_batches_reach_the_neighbours_neighbours():
    graph = torch.arange(100).view(100, 1).add(torch.arange(1, 11)).remainder(100)  # i's pool: i+1 .. i+10
    order = np.random.default_rng(0).permutation(100)
    one, two = (neighbor_batches(order, graph, batch_size=64, neighbors=3, hops=hops,
                                 generator=torch.Generator().manual_seed(0)) for hops in (1, 2))
    beyond_the_pool = 0
    for b, batch in enumerate(two):
        anchors = order[b * 16:None if b == len(two) - 1 else (b + 1) * 16]
        assert list(one[b][:len(anchors)]) == list(anchors)
        assert list(batch[:len(anchors)]) == list(anchors)  # the same anchors; partners two steps away
        for o in set(batch) - set(anchors):
            steps = {(o - a) % 100 for a in anchors}
            assert steps & set(range(2, 21))
            beyond_the_pool += not steps & set(range(1, 11))
    assert beyond_the_pool > 0


def test_neighbor_hops_from_the_pipeline_file_reach_the_batches(tmp_path):
    one, two = (new_trainer(tmp_path, neighbor_hops=hops) for hops in (1, 2))
    a, b = one.batches(0), two.batches(0)
    assert len(a) == len(b)
    # the same 256 // 16 anchors lead each batch (the last holds the rest of the shuffled rows), other partners
    assert all(list(x[:16]) == list(y[:16]) for x, y in zip(a[:-1], b[:-1]))
    assert all(set(x) != set(y) for x, y in zip(a, b))


def test_normalized_rows_reads_in_chunks(real_embeddings):
    from atlas_plugins import TeacherData

    rows = np.arange(0, 500, 3)
    got = normalized_rows(TeacherData(real_embeddings), rows, chunk=50)
    want = torch.nn.functional.normalize(torch.from_numpy(real_embeddings[rows]), dim=1)
    assert torch.allclose(got, want)


def test_accumulation_steps_the_optimizer_once_per_group_of_batches(tmp_path):
    one = trained(tmp_path, accumulate=1, batches="random")
    three = trained(tmp_path, accumulate=3, batches="random")
    assert three.batches_per_epoch == one.batches_per_epoch
    assert three.global_step == math.ceil(one.batches_per_epoch / 3) and one.global_step == one.batches_per_epoch
    a, b = one.student.state_dict(), three.student.state_dict()
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_weight_decay_uses_adamw_and_shrinks_the_weights(tmp_path):
    plain = trained(tmp_path, learning_rate=1e-2)
    decayed = trained(tmp_path, learning_rate=1e-2, weight_decay=0.5)
    assert type(plain.opt) is torch.optim.Adam and type(decayed.opt) is torch.optim.AdamW
    norm = lambda t: sum(float(p.detach().norm()) for p in t.student.parameters())  # noqa: E731
    assert norm(decayed) < norm(plain)


def test_the_student_t_kernel_trains_end_to_end(tmp_path):
    from atlas_plugins.config import build_config as build

    doc = {"teacher": {"path": str(EXAMPLE_NPY)}, "student": {"hidden": [16]},
           "loss": {"name": "neighbors", "kernel": "student-t", "dof": 2.0, "tau": 1.0},
           "train": {"epochs_per_stage": 2, "batch_size": 256, "eval_rows": 300, "learning_rate": 1e-2},
           "output": {"dir": str(tmp_path / "unused"), "report": False}}
    pipe = assemble(build(doc, tmp_path / "p.toml"))
    trainer = Trainer(pipe, None, echo=lambda m: None)
    first = trainer.val_loss(1.0)
    trainer.fit()
    assert trainer.metrics[-1]["val_loss"] < first


def test_a_tiny_data_set_trains_end_to_end(tmp_path):
    np.save(tmp_path / "tiny.npy", np.load(EXAMPLE_NPY)[:7])
    doc = {"teacher": {"path": str(tmp_path / "tiny.npy")}, "student": {"hidden": [4]}, "loss": {"tau": 1.0},
           "train": {"epochs_per_stage": 3, "batch_size": 1024, "neighbors": 2, "val_fraction": 0.0},
           "output": {"dir": str(tmp_path / "unused"), "report": False}}
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe = assemble(build_config(doc, tmp_path / "p.toml"))
    assert any("larger than the 7 training rows" in str(w.message) for w in caught)
    trainer = Trainer(pipe, None, echo=lambda m: None)
    trainer.fit()
    assert len(trainer.metrics) == 3 and all(math.isfinite(m["train_loss"]) for m in trainer.metrics)


@pytest.mark.parametrize("train", [{"batches": "random", "batch_size": 300}, {"batch_size": 256},
                                   {"neighbors": 1, "batch_size": 5}, {"neighbors": 1, "batch_size": 358}])
def test_batches_are_counted_without_building_an_epoch(tmp_path, train):
    t = new_trainer(tmp_path, **train)
    assert t.batches_per_epoch == len(t.batches(0))
    if train.get("neighbors") != 1:  # with one neighbour per anchor, pairs that are each other's neighbour merge
        assert t.batches_per_epoch == len(t.batches(3))
    assert all(len(b) >= 3 for b in t.batches(1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_resume_on_cuda_restores_the_cuda_generator(tmp_path):
    """Input noise is drawn on the device: a resumed CUDA run must continue the CUDA random stream."""
    from atlas_plugins.rundir import RunDir

    def run(folder, stop_after=None):
        doc = {"teacher": {"path": str(EXAMPLE_NPY)}, "student": {"hidden": [16]},
               "schedule": {"name": "linear", "start": 1.0, "end": 0.5, "stages": 2},
               "train": {"epochs_per_stage": 1, "batch_size": 256, "input_noise": 0.5, "device": "cuda"},
               "output": {"dir": str(folder), "report": False}}
        pipe = assemble(build_config(doc, tmp_path / "p.toml"))
        trainer = Trainer(pipe, RunDir(folder), echo=lambda m: None)
        return pipe, trainer

    _, full = run(tmp_path / "a")
    full.fit()
    pipe, first = run(tmp_path / "b")
    first.fit()
    blob = torch.load(tmp_path / "b" / "checkpoints" / "stage-0.pt", weights_only=True)
    assert "cuda_rng" in blob
    _, resumed = run(tmp_path / "c")
    resumed.fit(blob)
    a, b = full.student.state_dict(), resumed.student.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stages_inside_one_epoch_draw_its_batches_once(tmp_path, monkeypatch):
    """With steps_per_stage, stages that share an epoch share its batches: drawn once, not once a stage (nor
    again after counting them, which with one neighbour per anchor draws epoch 0)."""
    drawn = []
    draw = Trainer.batches
    monkeypatch.setattr(Trainer, "batches", lambda self, epoch: drawn.append(epoch) or draw(self, epoch))

    def fit(**train):
        doc = {"teacher": {"path": str(EXAMPLE_NPY)}, "student": {"hidden": [16]},
               "schedule": {"name": "linear", "start": 1.0, "end": 0.5, "stages": 3},
               "train": {"epochs_per_stage": None, "steps_per_stage": 3, **train},
               "output": {"dir": str(tmp_path / "unused"), "report": False}}
        t = Trainer(assemble(build_config(doc, tmp_path / "p.toml")), None, echo=lambda m: None)
        t.fit()
        return t

    t = fit(batches="neighbors", batch_size=256)
    assert t.batches_per_epoch > 9 and drawn == [0]
    drawn.clear()
    t = fit(batches="neighbors", batch_size=256, neighbors=1)  # counted by drawing epoch 0: drawn once all the same
    assert t.batches_per_epoch > 9 and drawn == [0]
    drawn.clear()
    t = fit(batches="random", batch_size=512)  # 5 batches an epoch: stage 2 ends in epoch 1, stage 3 in epoch 1
    assert t.batches_per_epoch == 5 and drawn == [0, 1]


def test_steps_per_stage_cuts_stages_inside_epochs(tmp_path):
    t = trained(tmp_path, batches="random", batch_size=512, epochs_per_stage=None, steps_per_stage=3)
    assert t.batches_per_epoch == 5  # 2,378 training rows in batches of 512
    assert t.stage_plan(0) == [(0, 0, 3)]
    assert t.total_steps == 3 and t.metrics[-1]["step"] == 3
    t = trained(tmp_path, batches="random", batch_size=512, epochs_per_stage=None, steps_per_stage=4,
                accumulate=2)  # 3 optimizer steps per epoch (the last of one batch): the 4th is the next epoch's
    assert t.stage_plan(0) == [(0, 0, 5), (1, 0, 2)] and t.metrics[-1]["step"] == 4


def test_steps_per_stage_over_several_stages_continues_the_epoch_stream(tmp_path):
    doc = {"teacher": {"path": str(EXAMPLE_NPY)}, "student": {"hidden": [16]},
           "schedule": {"name": "linear", "start": 1.0, "end": 0.2, "stages": 3},
           "train": {"steps_per_stage": 7, "batch_size": 512, "batches": "random", "eval_rows": 100},
           "output": {"dir": str(tmp_path / "unused"), "report": False}}
    t = Trainer(assemble(build_config(doc, tmp_path / "p.toml")), None, echo=lambda m: None)
    assert [t.stage_plan(s) for s in range(3)] == [[(0, 0, 5), (1, 0, 2)], [(1, 2, 5), (2, 0, 4)],
                                                   [(2, 4, 5), (3, 0, 5), (4, 0, 1)]]  # 5 batches an epoch
    t.fit()
    assert [m["step"] for m in t.metrics] == [5, 7, 10, 14, 15, 20, 21]  # stages end after steps 7, 14, 21
    assert [(m["stage"], m["epoch"], m["data_epoch"]) for m in t.metrics] == [
        (0, 0, 0), (0, 1, 1), (1, 0, 1), (1, 1, 2), (2, 0, 2), (2, 1, 3), (2, 2, 4)]
    assert [m["tau"] for m in t.metrics] == pytest.approx([1.0, 1.0, 0.6, 0.6, 0.2, 0.2, 0.2])


def test_a_step_budget_of_whole_epochs_trains_exactly_like_epochs(tmp_path):
    by_epochs = trained(tmp_path, batches="random", batch_size=512, epochs_per_stage=2)
    by_steps = trained(tmp_path, batches="random", batch_size=512, epochs_per_stage=None, steps_per_stage=10)
    a, b = by_epochs.student.state_dict(), by_steps.student.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_stopped_inside_a_step_stage_resumes_bit_identical(tmp_path):
    """Ctrl-C in the middle of a piece of an epoch; resume from interrupt.pt reaches the uninterrupted weights."""
    import signal

    from atlas_plugins.checkpoint import find_resume_checkpoint
    from atlas_plugins.rundir import RunDir
    from atlas_plugins.trainer import Interrupted

    def setup(out):
        doc = {"teacher": {"path": str(EXAMPLE_NPY)}, "student": {"hidden": [16]},
               "schedule": {"name": "linear", "start": 1.0, "end": 0.2, "stages": 2},
               "train": {"steps_per_stage": 25, "batch_size": 128, "batches": "random", "eval_rows": 100},
               "output": {"dir": str(out), "report": False}}
        pipe = assemble(build_config(doc, tmp_path / "p.toml"))
        run = RunDir(out)
        run.acquire()
        return pipe, run

    pipe, run = setup(tmp_path / "whole")
    whole = Trainer(pipe, run, echo=lambda m: None)
    whole.fit()
    run.release()
    assert whole.stage_plan(1) == [(1, 6, 19), (2, 0, 12)]  # 19 batches an epoch: stage 2 starts inside epoch 2

    pipe, run = setup(tmp_path / "stopped")
    first = Trainer(pipe, run, echo=lambda m: None)
    step = first._optimizer_step

    def stop_after_step_26():
        step()
        if first.global_step == 26:
            first.stop_signal = signal.SIGINT

    first._optimizer_step = stop_after_step_26
    with pytest.raises(Interrupted, match="at stage 2, epoch 1"):
        first.fit()
    blob = find_resume_checkpoint(run, warn=lambda m: None)
    assert blob["position"] == {"stage": 1, "epoch": 0, "batch": 10}  # batch 10 of epoch 2: inside the piece
    assert (tmp_path / "stopped" / "checkpoints" / "interrupt.pt").is_file()
    pipe = assemble(pipe.config)
    lines = []
    second = Trainer(pipe, run, echo=lines.append)
    second.fit(blob)
    run.release()
    a, b = whole.student.state_dict(), second.student.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [m["step"] for m in second.metrics] == [m["step"] for m in whole.metrics]
    assert not (tmp_path / "stopped" / "checkpoints" / "interrupt.pt").exists()  # done: nothing to resume from it
    assert lines[0] == f"training 50 optimizer steps: 2 stage(s) x 25 steps, from step {first.global_step}"
    assert second.plan() == ("training 50 optimizer steps: 2 stage(s) x 25 steps; all done before: nothing is left "
                             "to train")  # what --resume of a finished run says
    # The stage line reports the stage's own average speed (its epochs weighted by their seconds).
    mine = [m for m in second.metrics if m["stage"] == 1]
    rate = sum(m["samples_per_s"] * m["seconds"] for m in mine) / sum(m["seconds"] for m in mine)
    assert lines[-1].startswith("stage 2/2") and lines[-1].endswith(f"{rate:,.0f} samples/s")


def test_each_stage_line_says_how_much_training_is_left_at_that_stage_s_pace(tmp_path):
    import re

    from atlas_plugins.trainer import about

    doc = {"teacher": {"path": str(EXAMPLE_NPY)}, "student": {"hidden": [16]},
           "schedule": {"name": "linear", "start": 1.0, "end": 0.2, "stages": 3},
           "train": {"steps_per_stage": 8, "batch_size": 128, "batches": "random", "eval_rows": 100},
           "output": {"dir": str(tmp_path / "unused"), "report": False}}
    lines = []
    Trainer(assemble(build_config(doc, tmp_path / "p.toml")), None, echo=lines.append).fit()
    stage_lines = [line for line in lines if line.startswith("stage ")]
    unit = {"s": 1, "min": 60, "h": 3600}
    for stage, line in enumerate(stage_lines):
        seconds = float(re.search(r"  ([0-9.]+)s  ", line).group(1))
        left = re.search(r"; about ([0-9.]+) (s|min|h) of training left$", line)
        if stage == 2:
            assert left is None and line.endswith("samples/s")  # the last stage: nothing is left
            continue
        # stages of equal steps: what is left is this stage's seconds once per later stage
        shown, per = float(left.group(1)), unit[left.group(2)]
        assert abs(shown * per - max(seconds * (2 - stage), 0.5)) <= per / 2 + 0.1 * (2 - stage)  # at least "1 s"
    assert [about(s) for s in (0.4, 40, 89, 600, 5399, 9000)] == ["1 s", "40 s", "89 s", "10 min", "90 min", "2.5 h"]


def test_the_run_says_how_many_steps_it_will_train_and_names_a_step_budget_when_that_is_long(tmp_path, monkeypatch):
    import atlas_plugins.trainer

    def plan(**train):
        t = new_trainer(tmp_path, batches="random", batch_size=512, **train)
        said = []
        t.echo = said.append
        t.fit()
        return said[0], t

    line, t = plan(epochs_per_stage=2)
    assert line == "training 10 optimizer steps: 1 stage(s) x 2 epoch(s) of 5 steps" and t.global_step == 10
    line, t = plan(epochs_per_stage=None, steps_per_stage=7)
    assert line == "training 7 optimizer steps: 1 stage(s) x 7 steps" and t.global_step == 7
    monkeypatch.setattr(atlas_plugins.trainer, "LONG_RUN_STEPS", 9)
    line, _ = plan(epochs_per_stage=2)
    assert line.endswith("of 5 steps; train.steps_per_stage sets a budget that does not grow with the rows")
    line, _ = plan(epochs_per_stage=None, steps_per_stage=10)  # already a step budget: nothing to suggest
    assert line == "training 10 optimizer steps: 1 stage(s) x 10 steps"


@pytest.mark.parametrize("train", [
    {"batches": "random"},
    {"batches": "neighbors", "accumulate": 3},                        # 2,378 rows, 16 anchors a batch
    {"batches": "neighbors", "neighbors": 4, "neighbor_pool": 4, "batch_size": 100},
    {"batches": "neighbors", "epochs_per_stage": None, "steps_per_stage": 11},
])
def test_dry_run_counts_the_steps_the_run_then_trains_without_building_the_graph(tmp_path, train):
    from atlas_plugins.trainer import dry_run_plan
    t = new_trainer(tmp_path, **train)
    assert dry_run_plan(t.pipe) == "steps      " + t.plan().removeprefix("training ")
    assert t.steps_per_epoch == math.ceil(len(t.batches(0)) / t.cfg.accumulate)  # the count is the batches built


def test_dry_run_leaves_merging_neighbour_batches_to_the_run(tmp_path):
    from atlas_plugins.trainer import dry_run_plan
    t = new_trainer(tmp_path, batches="neighbors", neighbors=1, batch_size=4)  # an anchor and one neighbour
    assert dry_run_plan(t.pipe) == "steps      counted when training starts (neighbour batches this small merge " \
                                   "as they come)"
    assert t.batches_per_epoch == len(t.batches(0))

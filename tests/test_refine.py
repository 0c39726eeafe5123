"""``refine``: new points placed against the frozen training map (``map.pt``), and the map itself."""

import copy
import importlib.util
import json
import math
import re

import attrs
import numpy as np
import pytest
import torch

from atlas_plugins import CheckpointError, TrainedStudent, load_student
from atlas_plugins.config import build_config
from atlas_plugins.distributed import parameter_digest
from atlas_plugins.errors import ConfigError
from atlas_plugins.evaluation import recall_at_k
from atlas_plugins.pipeline import assemble
from atlas_plugins.neighbors import graph_recall
from atlas_plugins.refine import (MAP_FORMAT, SEARCH_RECALL, TrainingMap, build_map, memberships, nearest,
                                 principal_basis, refine, search_dims)
from atlas_plugins.trainer import Trainer
from conftest import EXAMPLE_NPY, one_error_line, run_cli, write_pipeline


@pytest.fixture(scope="module")
def trained():
    """A small student trained on the bundled example, its map of the training rows, and the held-out rows."""
    doc = {"teacher": {"path": str(EXAMPLE_NPY)}, "student": {"name": "mlp", "dim": 5, "hidden": [64, 64]},
           "loss": {"name": "neighbors"}, "schedule": {"name": "cosine", "start": 2.0, "end": 0.4, "stages": 2},
           "train": {"epochs_per_stage": 3, "batch_size": 256, "batches": "neighbors", "learning_rate": 5e-3,
                     "input_noise": 1.0, "seed": 0, "val_fraction": 0.2}, "output": {"dir": "unused"}}
    pipe = assemble(build_config(doc, EXAMPLE_NPY.parent))
    Trainer(pipe, None, echo=lambda m: None).fit()
    student = TrainedStudent(pipe.student.eval(), "mlp", {"hidden": [64, 64]}, pipe.teacher.dim, 5)
    student.training_map = build_map(pipe.teacher, pipe.train_rows, student.encode, max_rows=50_000)
    return student, pipe.teacher.rows(pipe.val_rows)


def unit(n, d, seed):
    return torch.nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


@pytest.mark.parametrize("faiss", [False, pytest.param(True, marks=pytest.mark.skipif(
    importlib.util.find_spec("faiss") is None, reason="needs faiss (the scale extra)"))])
def test_nearest_matches_a_full_sort_across_blocks(monkeypatch, faiss):
    monkeypatch.setattr("atlas_plugins.refine.faiss_available", lambda: faiss)
    q, v = unit(40, 16, 0), unit(203, 16, 1)
    sims, idx = nearest(q, v, k=7, block=25)
    full = q @ v.T
    expected = full.argsort(dim=1, descending=True)[:, :7]
    assert torch.equal(idx, expected)
    assert torch.allclose(sims, full.gather(1, expected))


def test_memberships_are_exponential_in_distance_and_sum_to_log2_k():
    dist = torch.rand(50, 30, generator=torch.Generator().manual_seed(0), dtype=torch.float64).sort(dim=1).values
    w = memberships(dist)
    assert torch.allclose(w.sum(1), torch.full((50,), math.log2(30), dtype=torch.float64), rtol=1e-4)
    sigma = -dist / w.log()  # w = exp(-d / σ): one σ per row
    assert torch.allclose(sigma, sigma[:, :1].expand_as(sigma), rtol=1e-6)


def reference_refine(coords, idx, w, y, epochs, negatives, alpha, draw):
    """UMAP's per-edge updates written out point by point (a = b = 1), each edge weighted by w / max w,
    in the map's units: the median distance from a map row to its 10th-nearest other row, over 0.82."""
    c = coords.double().numpy()
    dist = np.sqrt(((c[:, None, :] - c[None, :, :]) ** 2).sum(-1))
    unit = float(np.median(np.sort(dist, axis=1)[:, 10])) / 0.82  # column 0: the row itself
    y = y.clone().double() / unit
    coords = coords.double() / unit
    q, k = idx.shape
    for n in range(1, epochs + 1):
        move = torch.zeros_like(y)
        drawn = draw(q * k * negatives)
        for i in range(q):
            for j in range(k):
                r = float(w[i, j] / w[i].max())
                diff = y[i] - coords[idx[i, j]]
                move[i] += r * (-2.0 / (1.0 + diff.pow(2).sum()) * diff).clamp(-4, 4)
                for t in range(negatives):
                    diff = y[i] - coords[drawn[(i * k + j) * negatives + t]]
                    d2 = diff.pow(2).sum()
                    move[i] += r * (2.0 / ((0.001 + d2) * (1.0 + d2)) * diff).clamp(-4, 4)
        y += alpha * (1.0 - (n - 1) / epochs) * move
    return y * unit


@pytest.mark.parametrize("spread", [1.0, 0.05, 20.0])
def test_refine_follows_umaps_per_edge_updates(spread):
    vectors, queries = unit(60, 8, 2), unit(9, 8, 3)
    coords = spread * torch.randn(60, 3, generator=torch.Generator().manual_seed(4))
    start = spread * torch.randn(9, 3, generator=torch.Generator().manual_seed(5))
    training_map = TrainingMap(vectors, (coords,), torch.arange(60))
    got = refine(training_map, queries, (start,), epochs=4, k=6, negatives=2, seed=7)[0]

    sims, idx = nearest(queries, vectors, 6)
    w = memberships(1.0 - sims)
    g = torch.Generator().manual_seed(7)
    expected = reference_refine(coords, idx, w, start, 4, 2, 0.25, lambda m: torch.randint(0, 60, (m,), generator=g))
    assert torch.allclose(got.double(), expected, atol=1e-4 * spread)
    assert not torch.allclose(got, start)


class Scaled(torch.nn.Module):
    def __init__(self, module, factor):
        super().__init__()
        self.module, self.factor = module, factor

    def forward(self, x):
        return self.module(x) * self.factor


def test_refine_works_in_the_maps_own_units(trained):
    """A loss on cosine similarities (relational) leaves a map's scale arbitrary: its maps spread ~0.04.
    The same map at that scale is refined to the same places, at that scale (before, its new points were
    pushed far out: a relational student's held-out recall@10 fell from 0.248 alone to 0.224 refined)."""
    student, held_out = trained
    factor = 0.04
    small = attrs.evolve(student, module=Scaled(student.module, factor), training_map=attrs.evolve(
        student.training_map, coords=tuple(c * factor for c in student.training_map.coords), units=None))
    assert small.training_map.units[0] == pytest.approx(factor * student.training_map.units[0], rel=1e-4)
    expected = student.encode(held_out, refine=10)
    assert torch.allclose(small.encode(held_out, refine=10) / factor, expected, atol=1e-3)
    assert recall_at_k(held_out, expected) > recall_at_k(held_out, student.encode(held_out)) + 0.03


def test_refine_is_deterministic_and_leaves_the_training_map_alone(trained):
    student, held_out = trained
    before = [t.clone() for t in (student.training_map.vectors, *student.training_map.coords)]
    a = student.encode(held_out[:300], refine=5, seed=1)
    b = student.encode(held_out[:300], refine=5, seed=1)
    c = student.encode(held_out[:300], refine=5, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert all(torch.equal(x, y) for x, y in zip(before, (student.training_map.vectors,
                                                          *student.training_map.coords)))
    assert torch.equal(student.encode(held_out[:300], refine=0), student.encode(held_out[:300]))


def test_refine_improves_held_out_recall_on_the_bundled_example(trained):
    student, held_out = trained
    alone = recall_at_k(held_out, student.encode(held_out))
    refined = recall_at_k(held_out, student.encode(held_out, refine=10))
    assert refined > alone + 0.03, (alone, refined)


def test_map_pt_is_weights_only_and_found_beside_student_pt(trained, tmp_path):
    student, held_out = trained
    student.save(tmp_path / "student.pt")
    student.training_map.save(tmp_path / "map.pt")
    blob = torch.load(tmp_path / "map.pt", weights_only=True)
    assert blob["format"] == MAP_FORMAT and blob["vectors"].dtype == torch.float16
    loaded = load_student(tmp_path)  # the run folder works as well as student.pt
    assert loaded.training_map is None  # read on first use
    z = loaded.encode(held_out[:100], refine=5)
    assert torch.allclose(z, student.encode(held_out[:100], refine=5), atol=1e-3)
    assert loaded.training_map.coords[0].shape == student.training_map.coords[0].shape


def test_map_pt_stores_its_layout_units_and_older_maps_measure_them(trained, tmp_path):
    from atlas_plugins.refine import layout_unit

    student, _ = trained
    student.training_map.save(tmp_path / "map.pt")
    blob = torch.load(tmp_path / "map.pt", weights_only=True)
    assert blob["units"] == [layout_unit(student.training_map.coords[0])]
    assert TrainingMap.load(tmp_path / "map.pt").units == tuple(blob["units"])
    del blob["units"]  # as written before units were stored
    torch.save(blob, tmp_path / "old.pt")
    assert TrainingMap.load(tmp_path / "old.pt").units == tuple(student.training_map.units)
    for bad in ([-1.0], [1.0, 2.0], ["1"], [float("nan")]):
        torch.save({**blob, "units": bad}, tmp_path / "bad.pt")
        with pytest.raises(CheckpointError, match=r"bad.pt: damaged training map \(layout units .*expected one "
                                                  r"positive number per level \(1\)\)"):
            TrainingMap.load(tmp_path / "bad.pt")


def test_evolve_keeps_the_units_unless_told_to_measure_them_again(trained):
    map_ = trained[0].training_map
    wider = (10 * map_.coords[0],)
    assert attrs.evolve(map_, coords=wider).units == map_.units
    assert attrs.evolve(map_, coords=wider, units=None).units == pytest.approx((10 * map_.units[0],), rel=1e-5)


def test_a_map_that_would_unpickle_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"format": MAP_FORMAT, "vectors": Evil()}, tmp_path / "map.pt")
    with pytest.raises(CheckpointError, match="map.pt"):
        TrainingMap.load(tmp_path / "map.pt")


def test_refine_without_a_map_says_where_it_looked(trained, tmp_path):
    student, held_out = trained
    bare = TrainedStudent(student.module, "mlp", {"hidden": [64, 64]}, student.input_dim, 5)
    with pytest.raises(CheckpointError, match="refine needs the training map, and this student has none"):
        bare.encode(held_out, refine=3)
    student.save(tmp_path / "student.pt")
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'map.pt'} does not exist.*refine=0"):
        load_student(tmp_path / "student.pt").encode(held_out, refine=3)
    for bad in (-1, True, 2.5, "10"):
        with pytest.raises(ConfigError, match="refine must be a number of epochs"):
            student.encode(held_out, refine=bad)


def test_a_map_from_another_teacher_is_named(trained, tmp_path):
    student, held_out = trained
    student.save(tmp_path / "student.pt")
    TrainingMap(unit(10, 7, 0), (torch.zeros(10, 5),), torch.arange(10)).save(tmp_path / "map.pt")
    with pytest.raises(CheckpointError, match="7-D teacher vectors, the student expects 384-D"):
        load_student(tmp_path).encode(held_out, refine=2)


def test_the_map_keeps_a_sample_of_at_most_max_rows(trained):
    student, _ = trained

    class Teacher:
        def rows(self, index):
            return torch.from_numpy(np.load(EXAMPLE_NPY, mmap_mode="r")[index].copy())

    rows = np.arange(0, 2000, 2)
    small = build_map(Teacher(), rows, student.encode, max_rows=100, seed=3)
    assert small.rows.shape == (100,) and set(small.rows.tolist()) <= set(rows.tolist())
    assert torch.equal(small.rows, small.rows.sort().values)
    assert torch.allclose(small.coords[0], student.encode(Teacher().rows(small.rows.numpy())), atol=1e-5)
    assert small.vectors.dtype == torch.float16
    unit_rows = torch.nn.functional.normalize(Teacher().rows(small.rows.numpy()), dim=1)
    assert torch.allclose(small.vectors.float(), unit_rows @ small.basis, atol=3e-3)  # projected, in float16


def test_the_map_keeps_the_leading_principal_components_its_search_needs(trained):
    student, held_out = trained
    m = student.training_map
    assert 0 < m.dims < 384 and m.teacher_dim == 384 and m.basis.shape == (384, m.dims)
    assert torch.allclose(m.basis.T @ m.basis, torch.eye(m.dims), atol=1e-5)  # orthonormal columns
    variance = m.vectors.float().var(0)
    assert bool((variance[:-1] + 1e-4 >= variance[1:]).all())  # by decreasing variance
    # the rule, on the full rotation: the kept columns find SEARCH_RECALL of the exact top-30 on map rows
    x = torch.nn.functional.normalize(torch.from_numpy(np.load(EXAMPLE_NPY)[m.rows.numpy()]), dim=1)
    full = (x @ principal_basis(x.half())).half()
    assert search_dims(full, 30) == m.dims
    assert torch.allclose(full[:, :m.dims].float().abs(), m.vectors.float().abs(), atol=2e-3)  # (signs may flip)
    exact = nearest(torch.nn.functional.normalize(held_out, dim=1), x, 30)[1]
    reduced = nearest(m.project(held_out), m.vectors, 30)[1]
    assert m.project(held_out).shape == (len(held_out), m.dims)
    assert graph_recall(reduced, exact) > SEARCH_RECALL - 0.05  # new rows fare about as well as map rows


def test_search_dims_keeps_every_column_when_no_prefix_is_enough():
    iso = unit(400, 32, 9)  # isotropic rows: every direction matters as much
    assert search_dims(iso @ principal_basis(iso), 10) == 0
    low = torch.cat([unit(400, 4, 10), 1e-3 * torch.randn(400, 28, generator=torch.Generator().manual_seed(11))], 1)
    low = torch.nn.functional.normalize(low, dim=1)  # four directions hold nearly all the variance
    assert search_dims(low @ principal_basis(low), 10) == 4


def test_a_map_made_by_other_weights_is_refused_and_one_without_a_digest_is_read(trained, tmp_path):
    student, held_out = trained
    student.save(tmp_path / "student.pt")
    other = copy.deepcopy(student.module)
    with torch.no_grad():
        next(other.parameters())[0, 0] += 1e-3  # one weight differs: another run's student
    attrs.evolve(student.training_map, student=parameter_digest(other)).save(tmp_path / "map.pt")
    with pytest.raises(CheckpointError, match="the map's coordinates come from other weights than this student's: "
                                              "it belongs to another run"):
        load_student(tmp_path).encode(held_out[:10], refine=2)
    for digest in (parameter_digest(student.module), None):  # its own map; a map from before the digest
        attrs.evolve(student.training_map, student=digest).save(tmp_path / "map.pt")
        assert load_student(tmp_path).encode(held_out[:10], refine=2).shape == (10, 5)


def test_a_map_of_the_first_format_is_still_read_and_searched_exactly(trained, tmp_path):
    student, held_out = trained
    teacher_axes = torch.nn.functional.normalize(held_out[:300], dim=1).half()  # format 1: the teacher's own axes
    torch.save({"format": "atlas-map/1", "vectors": teacher_axes, "coords": [student.encode(held_out[:300])],
                "rows": torch.arange(300)}, tmp_path / "map.pt")
    old = TrainingMap.load(tmp_path / "map.pt")
    assert old.basis is None and old.dims == old.teacher_dim == 384
    sims, idx = nearest(old.project(held_out[300:]), old.vectors, 10)
    full = torch.nn.functional.normalize(held_out[300:], dim=1) @ teacher_axes.float().T
    assert torch.equal(idx, full.topk(10, dim=1).indices)
    assert refine(old, held_out[300:], (student.encode(held_out[300:]),), epochs=2)[0].shape == (len(held_out) - 300, 5)


@pytest.mark.parametrize("blob, fragment", [
    ({"basis": torch.eye(3)}, "basis (3, 3)"),
    ({"basis": torch.zeros(384)}, "basis (384,)"),
    ({"basis": [[1.0]]}, "basis must be a tensor"),
    ({"student": 5}, "student must be a digest string"),
])
def test_a_damaged_basis_is_named(trained, tmp_path, blob, fragment):
    m = trained[0].training_map
    torch.save({"format": MAP_FORMAT, "vectors": m.vectors, "coords": list(m.coords), "rows": m.rows,
                "basis": m.basis, **blob}, tmp_path / "map.pt")
    with pytest.raises(CheckpointError, match=re.escape(fragment)) as caught:
        TrainingMap.load(tmp_path / "map.pt")
    assert str(caught.value).startswith(f"{tmp_path / 'map.pt'}: damaged training map (")


def test_a_run_writes_map_pt_and_reports_refined_rows(tmp_path):
    proc = run_cli(write_pipeline(tmp_path, epochs=1), "--quiet")
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "run"
    assert (run / "map.pt").is_file()
    report = json.loads((run / "report.json").read_text())
    assert {"PCA", "student", "student + refine 6", "student + refine 10"} <= set(report["methods"])
    markdown = (run / "report.md").read_text()
    assert "student + refine 10" in markdown
    assert "`refine N` places each new point N epochs against the frozen training map" in markdown
    assert "student + refine 10" in proc.stdout
    pca = report["methods"]["PCA"]["vectors_per_s"]
    for name, method in report["methods"].items():  # the speed column: a few thousand vectors/s is not "0.00" of PCA's
        row = next(line for line in markdown.splitlines() if line.startswith(f"| {name} |"))
        cell = row.rstrip(" |").rsplit("|", 1)[1].strip()
        assert len(cell.lstrip("0.")) >= 2, row  # two significant digits at least
        assert float(cell) == pytest.approx(method["vectors_per_s"] / pca, rel=0.05), row
    dims = load_student(run).load_map().dims
    assert f"in {dims} of 384 principal components" in " ".join(report["notes"])
    assert TrainingMap.load(run / "map.pt").student == parameter_digest(load_student(run).module)

    proc = run_cli(write_pipeline(tmp_path, "map_rows = 0", epochs=1, output="run0"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "run0" / "map.pt").exists()
    assert set(json.loads((tmp_path / "run0" / "report.json").read_text())["methods"]) == {"PCA", "student"}


@pytest.mark.parametrize("line, fragments", [
    ("map_rows = -1", ("output.map_rows must be an integer >= 0", "-1")),
    ('map_rows = "all"', ("output.map_rows must be an integer >= 0", "'all'")),
    ('umap = "yes"', ("output.umap must be", "'yes'")),
])
def test_bad_map_and_umap_keys_are_one_line_and_write_nothing(tmp_path, line, fragments):
    one_error_line(run_cli(write_pipeline(tmp_path, line)), "pipeline.toml", *fragments)
    assert not (tmp_path / "run").exists()


def test_umap_in_the_report_needs_the_extra(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "umap" else real(name, *a))
    proc = run_cli(write_pipeline(tmp_path, "umap = true"), "--quiet")
    assert proc.returncode == 2
    assert "umap = true needs umap-learn" in proc.stderr and "atlas-distill[umap]" in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_the_report_compares_with_umap_when_asked(tmp_path):
    pytest.importorskip("umap")
    np.save(tmp_path / "t.npy", np.load(EXAMPLE_NPY, mmap_mode="r")[:1500])  # UMAP's fit time grows with rows
    proc = run_cli(write_pipeline(tmp_path, "umap = true", epochs=1, teacher=f'path = "{tmp_path / "t.npy"}"'),
                   "--quiet")
    assert proc.returncode == 0, proc.stderr
    methods = json.loads((tmp_path / "run" / "report.json").read_text())["methods"]
    umap_row = methods["UMAP + transform"]
    assert 0 < umap_row["recall@10"] <= 1 and umap_row["vectors_per_s"] > 0 and umap_row["fit_seconds"] > 0
    assert "÷ UMAP + transform" in (tmp_path / "run" / "report.md").read_text()


@pytest.mark.parametrize("dim, moved", [(3, (True, True)), (4, (True, False))])
def test_refine_moves_each_level_up_to_refine_max_dims_and_a_wider_one_keeps_the_students_output(dim, moved):
    from builtin_plugins.students import hierarchical

    torch.manual_seed(0)
    student = TrainedStudent(hierarchical(384, dim, [32]).eval(), "hierarchical", {"hidden": [32]}, 384, dim)
    x = torch.from_numpy(np.load(EXAMPLE_NPY, mmap_mode="r")[:400].copy())

    class Teacher:
        def rows(self, index):
            return x[index]

    student.training_map = build_map(Teacher(), np.arange(300), student.encode, max_rows=300)
    assert [c.shape for c in student.training_map.coords] == [(300, dim), (300, dim * dim)]  # 3 + 9, 4 + 16
    refined = student.encode(x[300:], refine=3)
    plain = student.encode(x[300:])
    assert [z.shape for z in refined] == [(100, dim), (100, dim * dim)]
    assert [not torch.equal(r, p) for r, p in zip(refined, plain)] == list(moved)  # 16 > REFINE_MAX_DIMS = 10


def test_a_student_wider_than_refine_max_dims_refuses_refine_and_its_run_writes_no_map(tmp_path):
    proc = run_cli(write_pipeline(tmp_path, epochs=1, student='name = "mlp"\ndim = 11\nhidden = [32]'), "--quiet")
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "run"
    assert not (run / "map.pt").exists()  # only refine reads it
    report = json.loads((run / "report.json").read_text())
    assert set(report["methods"]) == {"PCA", "student"}
    assert "refine left out: it places points on maps of at most 10 dimensions, and this student's is 11-D" in \
        report["notes"]
    assert "`refine N`" not in (run / "report.md").read_text()  # no refine rows to explain
    student = load_student(run)
    with pytest.raises(ConfigError, match=r"^refine=2: refine places points on maps of at most 10 dimensions, and "
                                          r"this student's is 11-D .*leave refine out"):
        student.encode(np.load(EXAMPLE_NPY, mmap_mode="r")[:10], refine=2)
    one_error_line(run_cli(run, EXAMPLE_NPY, "-o", tmp_path / "out.npy", "--refine", "2", program="atlas-encode"),
                   "--refine 2: refine places points on maps of at most 10 dimensions", "11-D")
    assert not (tmp_path / "out.npy").exists()


def test_the_layout_unit_is_the_maps_own_neighbour_distance():
    from atlas_plugins.refine import TUNED_NN10, layout_unit

    grid = torch.stack(torch.meshgrid(torch.arange(30.0), torch.arange(30.0), indexing="ij"), -1).reshape(-1, 2)
    # on a square grid of spacing h, the 10th-nearest other point of an inner point lies 2h away (4 at h,
    # 4 at h·√2, then 4 at 2h); rows near the edge have theirs a little further, the median stays 2h
    for h in (0.01, 1.0, 50.0):
        assert layout_unit(h * grid) == pytest.approx(2 * h / TUNED_NN10, rel=1e-4)
    assert layout_unit(torch.zeros(5, 3)) == 1.0 and layout_unit(torch.ones(1, 5)) == 1.0
    assert layout_unit(grid, sample=100) == layout_unit(grid, sample=100)  # seeded

"""Vectors from tables: the ``parquet`` and ``arrow`` teachers (pyarrow) and the ``jsonl`` and ``csv`` vector
teachers."""

import csv
import errno
import json
import os
import re
import socket
import sys

import numpy as np
import pytest

from atlas_plugins import DataError
from atlas_plugins.teacher import validate_teacher
from builtin_plugins import tables
from builtin_plugins.tables import jsonl, parquet
from conftest import EXAMPLE_META, EXAMPLE_NPY, one_error_line, run_cli, write_pipeline

pa = pytest.importorskip("pyarrow", reason="needs the 'parquet' extra")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("pyarrow.feather")


def assert_encoded_alike(run, given, reference):
    """``atlas-encode`` maps the vectors of the file ``given`` exactly as those of ``reference`` (a ``.npy``)."""
    for path in (given, reference):
        done = run_cli(run, path, "-o", f"{path}.out.npy", "--quiet", program="atlas-encode")
        assert done.returncode == 0, done.stderr
    assert np.array_equal(np.load(f"{given}.out.npy"), np.load(f"{reference}.out.npy"))


def example_table(rows=600, fixed=False):
    emb = np.load(EXAMPLE_NPY)[:rows]
    meta = [json.loads(line) for line in EXAMPLE_META.read_text().splitlines()[:rows]]
    values = pa.array(emb.reshape(-1))
    column = (pa.FixedSizeListArray.from_arrays(values, emb.shape[1]) if fixed
              else pa.ListArray.from_arrays(pa.array(np.arange(0, emb.size + 1, emb.shape[1], dtype=np.int32)), values))
    table = pa.table({"id": [f"row-{i}" for i in range(rows)], "embedding": column,
                      "text": [m["text"] for m in meta], "label": [m["label"] for m in meta]})
    return emb, meta, table


@pytest.mark.parametrize("fixed", [False, True], ids=["list", "fixed-size-list"])
def test_parquet_reads_vectors_texts_labels_and_ids_across_row_groups(tmp_path, fixed, monkeypatch):
    emb, meta, table = example_table(fixed=fixed)
    pq.write_table(table, tmp_path / "e.parquet", row_group_size=128)
    monkeypatch.setattr("builtin_plugins.tables.BATCH_ROWS", 100)  # batches cut across row groups
    data = validate_teacher(parquet(tmp_path / "e.parquet"))
    assert np.array_equal(np.asarray(data.embeddings), emb)
    assert data.texts == [m["text"] for m in meta] and data.labels == [m["label"] for m in meta]
    assert data.ids[:2] == ["row-0", "row-1"]


def cached_teachers(folder):
    """The three teachers that convert into ``cache/``, each on 600 example rows: pipeline [teacher] lines."""
    emb, _, table = example_table()
    pq.write_table(table, folder / "e.parquet")
    (folder / "e.jsonl").write_text("".join(json.dumps({"embedding": row.tolist()}) + "\n" for row in emb))
    (folder / "parts").mkdir()
    np.save(folder / "parts" / "p-0.npy", emb[:300])
    np.save(folder / "parts" / "p-1.npy", emb[300:])
    return {"parquet": 'path = "e.parquet"', "jsonl": 'path = "e.jsonl"', "npy": 'path = "parts"'}


@pytest.mark.parametrize("teacher", ["parquet", "jsonl", "npy"])
@pytest.mark.parametrize("failure", ["cache_dir inside a file", "full disk"])
def test_a_cache_that_cannot_be_written_is_named_not_taken_for_unreadable_data(tmp_path, monkeypatch, teacher,
                                                                                 failure):
    """A Parquet file's cache on a full disk said 'cannot read column 'embedding' (OSError: ...)', a folder of
    .npy parts 'teacher 'npy' failed: NotADirectoryError: ...'."""
    lines = cached_teachers(tmp_path)
    cache = "afile/cache" if failure == "cache_dir inside a file" else "cache"
    (tmp_path / "afile").write_text("not a folder")
    if failure == "full disk":
        def full(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(os, "fsync", full)
    pipe = write_pipeline(tmp_path, teacher=f'{lines[teacher]}\ncache_dir = "{cache}"', stages=1, epochs=1)
    done = run_cli(pipe, "--dry-run")
    assert done.returncode == 1, done.stderr
    [line] = done.stderr.splitlines()
    why, then = {"cache_dir inside a file": ("Not a directory", "a folder this process can write"),
                 "full disk": ("No space left on device", "free some space")}[failure]
    # the jsonl teacher's texts and labels go in a .json beside its .npy, written first, by atomic_write_bytes
    assert re.fullmatch(rf"atlas-run: error: \[teacher\] teacher '{teacher}' \(atlas-distill\): {tmp_path}/{cache}/"
                        rf"{teacher}-[0-9a-f]{{20}}\.(npy: cache file|json:) could not be written \({why}\); .*", line)
    assert then in line or ".json:" in line
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_conversion_killed_part_way_leaves_a_temp_file_the_next_one_removes(tmp_path):
    """``kill -9`` (or the out-of-memory killer) during a conversion leaves its temp file, as large as the
    teacher's vectors: it stayed in ``cache/`` for good, through later runs and ``--overwrite``.  The next
    conversion of the same file removes the temp files of its processes that no longer run on this host, and
    leaves a running one's (a torchrun rank converting beside it), another host's and one whose number is no pid."""
    _, _, table = example_table(rows=50)
    pq.write_table(table, tmp_path / "e.parquet")
    cache = tmp_path / "cache"
    parquet(tmp_path / "e.parquet", cache_dir=str(cache))
    [done] = cache.glob("parquet-*.npy")
    whole = done.read_bytes()
    done.unlink()
    dead = os.fork() or os._exit(0)  # a process that has ended
    os.waitpid(dead, 0)
    host = socket.gethostname().replace(".", "_")
    temps = {name: cache / f".{done.name}.{name}.tmp" for name in
             (f"{host}-{dead}", f"{host}-{os.getppid()}", f"other_host-{dead}", f"{host}-{10**20}")}  # no pid
    for temp in temps.values():
        temp.write_bytes(whole[:1000])
    data = parquet(tmp_path / "e.parquet", cache_dir=str(cache))
    assert done.read_bytes() == whole and np.asarray(data.embeddings).shape == (50, 384)
    assert sorted(p.name for p in cache.iterdir() if p.name.endswith(".tmp")) == sorted(
        temps[name].name for name in list(temps)[1:])


def test_parquet_converts_once_into_a_memory_mapped_cache(tmp_path, monkeypatch):
    """A later run reads the cache, and of the file only the small columns (texts, labels, ids): it read the
    vector column again too, the whole file's worth, only to drop it."""
    emb, _, table = example_table()
    pq.write_table(table, tmp_path / "e.parquet")
    first = parquet(tmp_path / "e.parquet", cache_dir=str(tmp_path / "cache"))
    cached = list((tmp_path / "cache").glob("parquet-*.npy"))
    assert len(cached) == 1 and isinstance(first.embeddings, np.memmap)
    assert not list((tmp_path / "cache").glob(".*tmp*"))  # written to a temporary name, then renamed
    asked, read = [], pq.ParquetFile.iter_batches
    monkeypatch.setattr(pq.ParquetFile, "iter_batches",
                        lambda self, **kw: asked.append(kw["columns"]) or read(self, **kw))
    second = parquet(tmp_path / "e.parquet", cache_dir=str(tmp_path / "cache"))
    assert np.array_equal(np.asarray(second.embeddings), emb) and second.texts == first.texts
    assert asked == [["text", "label", "id"]]
    monkeypatch.undo()
    pq.write_table(table.slice(0, 300), tmp_path / "e.parquet")  # the file changed: converted again
    assert parquet(tmp_path / "e.parquet", cache_dir=str(tmp_path / "cache")).num_rows == 300


def test_a_folder_of_parquet_parts_is_one_table_in_name_order(tmp_path):
    """What Spark, Dask and pyarrow's write_to_dataset write for a large table: a folder of part files (and a
    _SUCCESS marker). It was refused ('is a folder; expected a teacher file'); now its parts are the rows, in
    natural name order (part.5 before part.10), as a file of them all would be, for atlas-run and atlas-encode."""
    emb, meta, table = example_table()
    parts = tmp_path / "emb.parquet"  # Spark names the folder as it would the file
    parts.mkdir()
    for name, (start, stop) in zip(("part.0", "part.5", "part.10"), ((0, 250), (250, 400), (400, 600))):
        pq.write_table(table.slice(start, stop - start), parts / f"{name}.parquet")
    (parts / "_SUCCESS").touch()
    (parts / ".part.0.parquet.crc").write_bytes(b"crc")
    data = validate_teacher(parquet(parts, cache_dir=str(tmp_path / "cache")))
    assert np.array_equal(np.asarray(data.embeddings), emb) and data.ids == [f"row-{i}" for i in range(600)]
    assert data.texts == [m["text"] for m in meta]
    assert np.array_equal(np.asarray(parquet(parts, cache_dir=str(tmp_path / "cache")).embeddings), emb)  # cached
    pq.write_table(table.slice(250, 150).set_column(0, "id", pa.array([f"new-{i}" for i in range(150)])),
                   parts / "part.5.parquet")  # a part changed: converted again
    assert parquet(parts, cache_dir=str(tmp_path / "cache")).ids[250] == "new-0"
    assert len(list((tmp_path / "cache").glob("parquet-*.npy"))) == 2
    pq.write_table(table.slice(0, 250), parts / "part.0.parquet")

    plain = tmp_path / "shards"  # a folder of another name, found by its files
    parts.rename(plain)
    dry = run_cli(write_pipeline(tmp_path, teacher='path = "shards"', stages=1, epochs=1), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"teacher    parquet: {plain}  (600 x 384 float32, with labels and texts)" in dry.stdout
    assert run_cli(tmp_path / "pipeline.toml", "--quiet").returncode == 0
    np.save(tmp_path / "e.npy", emb)
    assert_encoded_alike(tmp_path / "run", plain, tmp_path / "e.npy")

    pq.write_table(pa.table({"embedding": [emb[0].astype(np.float64).tolist()]}), plain / "part.20.parquet")
    with pytest.raises(DataError, match=r"part\.20\.parquet: its columns differ from those of part\.0\.parquet; "
                                        "write the parts with one schema$"):
        parquet(plain)
    bad = write_pipeline(tmp_path, teacher='path = "shards"', stages=1, epochs=1, output="bad-run", name="bad.toml")
    one_error_line(run_cli(bad), "part.20.parquet: its columns differ from those of part.0.parquet")
    assert not (tmp_path / "bad-run").exists()  # refused before anything was written
    (plain / "part.20.parquet").unlink()
    hive = tmp_path / "by-label"  # partition folders hold a column in their names, which no teacher reads
    (hive / "label=io").mkdir(parents=True)
    pq.write_table(table.slice(0, 10), hive / "label=io" / "part.0.parquet")
    one_error_line(run_cli(write_pipeline(tmp_path, teacher='path = "by-label"', name="hive.toml")),
                   f"{hive}: is a folder; expected a teacher file")


def test_a_parquet_file_is_read_in_batches_of_a_few_megabytes_whatever_its_row_groups(tmp_path):
    """pandas writes up to a million rows in one row group, and pyarrow read a row group's column whole, 65,536
    rows a batch: 100,000 × 1536 rows in one group peaked at 2.8 GB converting into the cache (README). The
    pages are read as needed now, about 16 MiB of vectors a batch, by the bytes a row takes."""
    from builtin_plugins.tables import BATCH_BYTES, _batch_rows

    for dim, text in ((1536, False), (384, False), (1536, True)):
        x = np.random.default_rng(0).standard_normal((3000, dim)).astype(np.float32)
        column = ([json.dumps(v.tolist()) for v in x] if text
                  else pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), dim))
        pq.write_table(pa.table({"embedding": column}), tmp_path / "v.parquet", compression="none")
        rows = _batch_rows(pq.read_metadata(tmp_path / "v.parquet"), "embedding")
        per_row = (len(column[0]) if text else dim * 4)
        assert BATCH_BYTES / 1.5 < rows * per_row < BATCH_BYTES * 1.5, (dim, text, rows)
        read = parquet(tmp_path / "v.parquet", cache_dir=str(tmp_path / f"cache-{dim}-{text}"))
        assert np.array_equal(np.asarray(read.embeddings), x)


def test_an_arrow_file_of_one_huge_record_batch_is_read_in_slices(tmp_path, monkeypatch):
    """A record batch as written may hold every row (``pa.ipc`` with one ``write_batch``); it was converted
    whole. It is read in slices of about ``BATCH_BYTES`` of vectors now, each row with its own text."""
    emb, meta, table = example_table(rows=600)
    with pa.ipc.new_file(tmp_path / "one.arrow", table.schema) as writer:
        writer.write_batch(table.combine_chunks().to_batches()[0])
    monkeypatch.setattr(tables, "BATCH_BYTES", 64 * 384 * 4 // 3)  # slices of 64 rows, the least
    read = []
    convert = tables._convert
    monkeypatch.setattr(tables, "_convert", lambda pa_, batches, *a: convert(
        pa_, lambda columns: (read.append(b.num_rows) or b for b in batches(columns)), *a))
    data = validate_teacher(tables.arrow(tmp_path / "one.arrow", cache_dir=str(tmp_path / "cache")))
    assert np.array_equal(np.asarray(data.embeddings), emb) and data.texts == [m["text"] for m in meta]
    assert read == [64] * 9 + [24]


@pytest.mark.parametrize("fmt", ["feather", "stream"], ids=["feather-file", "huggingface-stream-shard"])
@pytest.mark.parametrize("fixed", [False, True], ids=["list", "fixed-size-list"])
def test_arrow_ipc_reads_vectors_texts_labels_and_ids_across_batches(tmp_path, fmt, fixed):
    """pandas' to_feather writes the IPC file format, a Hugging Face dataset's .arrow shards the stream
    format: both are read like Parquet, a batch at a time, into the run's cache."""
    emb, meta, table = example_table(fixed=fixed)
    path = tmp_path / ("e.feather" if fmt == "feather" else "data-00000-of-00001.arrow")
    if fmt == "feather":
        pa.feather.write_feather(table, path, chunksize=128)
    else:
        with pa.ipc.new_stream(str(path), table.schema) as out:
            for batch in table.to_batches(max_chunksize=128):
                out.write_batch(batch)
    for data in (tables.arrow(path), tables.arrow(path, cache_dir=str(tmp_path / "cache"))):
        data = validate_teacher(data)
        assert np.array_equal(np.asarray(data.embeddings), emb)
        assert data.texts == [m["text"] for m in meta] and data.labels == [m["label"] for m in meta]
        assert data.ids[:2] == ["row-0", "row-1"]
    assert [f.suffix for f in (tmp_path / "cache").iterdir()] == [".npy"]
    with pytest.raises(DataError, match=f"{path.name}: no column 'vec'; columns are: id, embedding, text, label"):
        tables.arrow(path, column="vec")
    (tmp_path / "bad.arrow").write_bytes(b"not arrow at all")
    with pytest.raises(DataError, match=r"bad.arrow: not a readable Arrow IPC \(Feather\) file"):
        tables.arrow(tmp_path / "bad.arrow")


def test_atlas_run_and_atlas_encode_read_a_feather_file_by_its_suffix(tmp_path):
    emb, _, table = example_table()
    pa.feather.write_feather(table, tmp_path / "e.feather")
    done = run_cli(write_pipeline(tmp_path, teacher=f'path = "{tmp_path / "e.feather"}"', stages=1, epochs=1),
                   "--quiet")
    assert done.returncode == 0, done.stderr
    assert list((tmp_path / "run" / "cache").glob("arrow-*.npy"))
    np.save(tmp_path / "e.npy", emb)
    for name in ("e.feather", "e.npy"):
        assert run_cli(tmp_path / "run", tmp_path / name, "-o", tmp_path / f"{name}.out.npy", "--quiet",
                       program="atlas-encode").returncode == 0
    assert np.array_equal(np.load(tmp_path / "e.feather.out.npy"), np.load(tmp_path / "e.npy.out.npy"))


def test_a_hugging_face_dataset_folder_is_read_shard_by_shard_in_its_order(tmp_path):
    """``ds.save_to_disk(folder)`` writes .arrow shards (the stream format), dataset_info.json and state.json,
    which lists the shards in row order; atlas-run and atlas-encode take the folder as the teacher."""
    emb, meta, table = example_table()
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "dataset_info.json").write_text("{}")
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-b.arrow"},
                                                                   {"filename": "data-a.arrow"}]}))
    for name, part in (("data-b.arrow", table.slice(0, 400)), ("data-a.arrow", table.slice(400))):
        with pa.ipc.new_stream(str(folder / name), table.schema) as out:  # not in the names' order
            for batch in part.to_batches(max_chunksize=150):
                out.write_batch(batch)
    data = validate_teacher(tables.arrow(folder, cache_dir=str(tmp_path / "cache")))
    assert np.array_equal(np.asarray(data.embeddings), emb) and data.texts == [m["text"] for m in meta]
    done = run_cli(write_pipeline(tmp_path, teacher=f'path = "{folder}"', stages=1, epochs=1), "--quiet")
    assert done.returncode == 0, done.stderr
    np.save(tmp_path / "e.npy", emb)
    for name in ("ds", "e.npy"):
        assert run_cli(tmp_path / "run", tmp_path / name, "-o", tmp_path / f"{name}.out.npy", "--quiet",
                       program="atlas-encode").returncode == 0
    assert np.array_equal(np.load(tmp_path / "ds.out.npy"), np.load(tmp_path / "e.npy.out.npy"))
    with pa.ipc.new_stream(str(folder / "data-a.arrow"), table.schema) as out:  # a shard rewritten: read again
        out.write_batch(table.slice(0, 10).to_batches()[0])
    assert tables.arrow(folder, cache_dir=str(tmp_path / "cache")).num_rows == 410
    other = table.drop_columns(["label"])
    with pa.ipc.new_stream(str(folder / "data-a.arrow"), other.schema) as out:
        out.write_batch(other.slice(0, 10).to_batches()[0])
    with pytest.raises(DataError, match="data-a.arrow: its columns differ from those of data-b.arrow"):
        tables.arrow(folder)
    (tmp_path / "dd").mkdir()  # a DatasetDict saved to disk: a folder per split
    (tmp_path / "dd" / "dataset_dict.json").write_text('{"splits": ["train"]}')
    folder.rename(tmp_path / "dd" / "train")
    one_error_line(run_cli(tmp_path / "run", tmp_path / "dd", program="atlas-encode"),
                   f"dd: is a Hugging Face DatasetDict folder; give one split's folder: {tmp_path / 'dd' / 'train'}")

def test_parquet_errors_name_the_file_and_the_column(tmp_path):
    _, _, table = example_table(rows=50)
    pq.write_table(table, tmp_path / "e.parquet")
    with pytest.raises(DataError, match=r"e.parquet: no column 'vec'; columns are: id, embedding, text, label"):
        parquet(tmp_path / "e.parquet", column="vec")
    with pytest.raises(DataError, match=r"e.parquet: row 0 of column 'text' is a text, not a vector: expected a "
                                        r"list of numbers"):
        parquet(tmp_path / "e.parquet", column="text")
    ragged = pa.table({"embedding": [[1.0, 2.0], [1.0, 2.0], [3.0]]})
    pq.write_table(ragged, tmp_path / "r.parquet")
    with pytest.raises(DataError, match=r"r.parquet: row 2 of column 'embedding' holds 1 values, the rows before it 2"):
        parquet(tmp_path / "r.parquet")
    pq.write_table(pa.table({"embedding": [[1.0, 2.0], None]}), tmp_path / "n.parquet")
    with pytest.raises(DataError, match=r"row 1 of column 'embedding' is empty \(null\)"):
        parquet(tmp_path / "n.parquet")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="bad.parquet: not a readable Parquet file"):
        parquet(tmp_path / "bad.parquet")


def test_atlas_run_trains_from_parquet_chosen_by_suffix(tmp_path):
    _, _, table = example_table()
    pq.write_table(table, tmp_path / "e.parquet")
    path = write_pipeline(tmp_path, teacher=f'path = "{tmp_path / "e.parquet"}"', stages=1, epochs=1)
    done = run_cli(path, "--quiet")
    assert done.returncode == 0, done.stderr
    assert list((tmp_path / "run" / "cache").glob("parquet-*.npy"))
    one_error_line(run_cli(path, "--quiet", "--set", 'teacher.column="label"', "--overwrite"),
                   "row 0 of column 'label' is a text, not a vector")


def test_rows_without_a_text_train_and_are_left_out_of_the_axis_cards(tmp_path):
    """pandas writes a missing text as null (NaN in JSON): such a file was refused ("texts[1] is of type
    NoneType"), though texts are only shown; now such a row has none, and a column of them is no texts."""
    _, meta, table = example_table(rows=300)
    texts = [None if i % 3 == 1 else m["text"] for i, m in enumerate(meta)]
    pq.write_table(table.set_column(2, "text", pa.array(texts, pa.string())), tmp_path / "e.parquet")
    path = write_pipeline(tmp_path, teacher=f'path = "{tmp_path / "e.parquet"}"', stages=1, epochs=1,
                          extra="report = true\n")
    done = run_cli(path, "--quiet")
    assert done.returncode == 0, done.stderr
    assert pq.read_table(tmp_path / "run" / "map.parquet").column("text").to_pylist() == [t or "" for t in texts]
    cards = json.loads((tmp_path / "run" / "report.json").read_text())["axis_cards"]
    shown = {t for card in cards for t in card["low"] + card["high"]}
    assert shown and "" not in shown and shown <= set(texts)
    pq.write_table(table.set_column(2, "text", pa.array([None] * 300, pa.string())), tmp_path / "e.parquet")
    assert validate_teacher(parquet(tmp_path / "e.parquet")).texts is None
    np.save(tmp_path / "t.npy", np.load(EXAMPLE_NPY)[:3])  # the same in a meta file: null and NaN
    (tmp_path / "m.jsonl").write_text('{"text": "a"}\n{"text": null}\n{"text": NaN}\n')
    from builtin_plugins.teachers import npy
    assert validate_teacher(npy(tmp_path / "t.npy", meta=str(tmp_path / "m.jsonl"))).texts == ["a", "", ""]


def test_json_lines_that_bring_their_own_vectors_are_never_embedded_again(tmp_path):
    """A .jsonl of vectors with their texts (what embedding APIs return) chose the text teacher by its suffix,
    which embedded the texts with MiniLM and trained on that instead of the file's vectors, in silence."""
    x = np.load(EXAMPLE_NPY)[:300]
    for field in ("embedding", "vector"):
        (tmp_path / f"{field}.jsonl").write_text("".join(json.dumps({field: r.tolist(), "text": f"text {i}"}) + "\n"
                                                         for i, r in enumerate(x)))
    found = run_cli(write_pipeline(tmp_path, teacher='path = "embedding.jsonl"', stages=1, epochs=1), "--dry-run")
    assert found.returncode == 0 and "teacher    jsonl: " in found.stdout, found.stderr
    assert "embedding 300 texts" not in found.stderr  # nothing was embedded
    other = write_pipeline(tmp_path, teacher='path = "vector.jsonl"', stages=1, epochs=1, name="other.toml")
    one_error_line(run_cli(other, "--dry-run"), f"{tmp_path / 'vector.jsonl'} holds vectors in 'vector': set "
                   'loader = "jsonl" and column = "vector" in [teacher] to train on them, or loader = '
                   '"sentence-transformers" to embed its texts instead')
    chosen = run_cli(other, "--dry-run", "--set", 'teacher.loader="jsonl"', "--set", 'teacher.column="vector"')
    assert chosen.returncode == 0 and "(300 x 384 float32, with texts)" in chosen.stdout, chosen.stderr


def test_a_vector_alone_per_line_is_read_as_vectors(tmp_path):
    """``jq -c '.data[].embedding'`` of an embedding API's answer: one JSON list per line. Without a loader it
    went to the text teacher ("expected a JSON object with a 'text' field")."""
    x = np.load(EXAMPLE_NPY)[:300]
    (tmp_path / "v.jsonl").write_text("".join(json.dumps(r) + "\n" for r in x.tolist()))
    np.save(tmp_path / "v.npy", x)
    data = validate_teacher(jsonl(tmp_path / "v.jsonl"))
    assert np.array_equal(data.embeddings, x) and data.texts is None
    trained = run_cli(write_pipeline(tmp_path, teacher='path = "v.jsonl"', stages=1, epochs=1), "--quiet")
    assert trained.returncode == 0, trained.stderr
    for name in ("v.jsonl", "v.npy"):
        assert run_cli(tmp_path / "run", tmp_path / name, "-o", tmp_path / f"{name}.out.npy", "--quiet",
                       program="atlas-encode").returncode == 0
    assert np.array_equal(np.load(tmp_path / "v.jsonl.out.npy"), np.load(tmp_path / "v.npy.out.npy"))
    converted = sorted(f.name for f in (tmp_path / "run" / "cache").glob("jsonl-*"))  # parsed once, kept
    assert [f.rsplit(".", 1)[1] for f in converted] == ["json", "npy"]
    assert set(json.loads((tmp_path / "run" / ".atlas-manifest.json").read_text())) >= {f"cache/{f}" for f in converted}
    (tmp_path / "v.jsonl").write_text("[0.5, 1.0]\n[1, true]\n")
    with pytest.raises(DataError, match=r"v.jsonl:2: the line must be a list of numbers"):
        jsonl(tmp_path / "v.jsonl")


def write_csv(path, header, rows, delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, delimiter=delimiter).writerows([header, *rows])


def test_csv_vectors_as_pandas_writes_them(tmp_path):
    """``df.to_csv`` writes a column of vectors as str() of each: a list of floats (JSON, as in the OpenAI
    cookbook's embedding files), a list of NumPy scalars (``[np.float32(0.1), ...]`` with NumPy 2), or an
    array (NumPy's print, over several lines). Each is read as the vectors, with the other columns."""
    x = np.load(EXAMPLE_NPY)[:40]
    meta = [json.loads(line) for line in EXAMPLE_META.read_text().splitlines()[:40]]
    cells = {"json": lambda v: json.dumps(v.tolist()), "print": str,  # str(list(v)) with NumPy 2:
             "scalars": lambda v: "[" + ", ".join(f"np.float32({a!r})" for a in v.tolist()) + "]"}
    for kind, cell in cells.items():
        write_csv(tmp_path / f"{kind}.csv", ["id", "text", "embedding", "label"],
                  [[f"r{i}", m["text"], cell(v), m["label"]] for i, (v, m) in enumerate(zip(x, meta))])
    assert "\n" in cells["print"](x[0])  # NumPy's print of a 384-D array spans lines
    for kind in cells:
        data = validate_teacher(tables.csv(tmp_path / f"{kind}.csv"))
        assert data.embeddings.dtype == np.float32
        if kind == "print":  # NumPy prints 8 digits
            np.testing.assert_allclose(data.embeddings, x, rtol=1e-6, atol=1e-9)
        else:
            assert np.array_equal(data.embeddings, x), kind
        assert data.texts == [m["text"] for m in meta] and data.labels == [m["label"] for m in meta]
        assert data.ids[:2] == ["r0", "r1"]
    write_csv(tmp_path / "v.tsv", ["vec", "title", "text"], [["[1, 2.5]", "a", ""], ["[3, 4]", "b", "x"]], "\t")
    data = tables.csv(tmp_path / "v.tsv", column="vec", text_column="title")
    assert data.embeddings.tolist() == [[1, 2.5], [3, 4]] and data.texts == ["a", "b"] and data.ids is None


def test_a_csv_of_vectors_is_trained_on_and_encoded_as_vectors(tmp_path):
    """A .csv whose rows bring their vectors went to the text teacher by its suffix: \"no column 'text'\", and
    with text_column set it embedded the texts with MiniLM instead of using the file's vectors."""
    x = np.load(EXAMPLE_NPY)[:300]
    np.save(tmp_path / "v.npy", x)
    write_csv(tmp_path / "v.csv", ["Text", "embedding"], [[f"text {i}", json.dumps(r.tolist())]
                                                          for i, r in enumerate(x)])
    pipeline = write_pipeline(tmp_path, teacher='path = "v.csv"\ntext_column = "Text"', stages=1, epochs=1)
    found = run_cli(pipeline, "--dry-run")
    assert found.returncode == 0 and "teacher    csv: " in found.stdout and "(300 x 384 float32, with texts)" \
        in found.stdout, found.stderr
    trained = run_cli(pipeline, "--quiet")
    assert trained.returncode == 0 and "embedding 300 texts" not in trained.stderr, trained.stderr
    assert_encoded_alike(tmp_path / "run", tmp_path / "v.csv", tmp_path / "v.npy")
    assert sorted(f.suffix for f in (tmp_path / "run" / "cache").glob("csv-*")) == [".json", ".npy"]

    write_csv(tmp_path / "o.csv", ["text", "vector"], [["a", "[0.5, 1.0]"], ["b", "[1.0, 0.5]"]])
    other = write_pipeline(tmp_path, teacher='path = "o.csv"', stages=1, epochs=1, name="other.toml")
    one_error_line(run_cli(other, "--dry-run"), f"{tmp_path / 'o.csv'} holds vectors in 'vector': set "
                   'loader = "csv" and column = "vector" in [teacher] to train on them')
    with pytest.raises(DataError, match=r"o.csv: no column 'title' \(text_column\); its columns are: text, vector"):
        tables.csv(tmp_path / "o.csv", column="vector", text_column="title")


@pytest.mark.parametrize("cell, message", [
    (str(np.arange(1200, dtype=np.float32)), "is cut short with '...' (NumPy's print of a long array: the values are "
     "not in the file); write them as lists (df[col] = df[col].map(lambda v: v.tolist())) or save the table as "
     "Parquet"),
    ("", "is empty; drop the row or fill it"),
    ("0.1 0.2", "must be a list of numbers, like [0.1, -0.2]"),
    ("[1, true]", "must be a list of numbers"),
    ("[1, 2, 3]", "has 3 values, the rows before it 2"),
    ("[1, 1e39]", "has values too large for float32"),
], ids=["cut-print", "empty", "no-brackets", "boolean", "length", "overflow"])
def test_a_bad_vector_cell_names_its_line(tmp_path, cell, message):
    write_csv(tmp_path / "v.csv", ["text", "embedding"], [["a", "[0.5, 1.0]"], ["b", cell]])
    with pytest.raises(DataError) as err:
        tables.csv(tmp_path / "v.csv", cache_dir=str(tmp_path / "cache"))
    assert str(err.value).startswith(f"{tmp_path / 'v.csv'}:3: 'embedding' {message}"), str(err.value)
    assert not list((tmp_path / "cache").iterdir())


def test_a_csv_row_is_named_by_its_first_line_when_a_text_spans_several(tmp_path):
    """A spreadsheet's cell may hold line breaks (a quoted text over several lines) and blank lines may sit
    between rows: a message names the line the row starts on, where an editor shows it (it named the last)."""
    from atlas_plugins.formats import read_table

    text = 'text,embedding\n"one\ntwo\nthree","[0.5, 1.0]"\n\n\n"four\nfive",{}\nsix\n'
    (tmp_path / "v.csv").write_text(text.format('"[1.0, 0.5]"'))
    assert [(n, row["text"], row["embedding"]) for n, row in read_table(tmp_path / "v.csv", ["text"], "table")] == [
        (2, "one\ntwo\nthree", "[0.5, 1.0]"), (7, "four\nfive", "[1.0, 0.5]"), (9, "six", None)]
    (tmp_path / "v.csv").write_text(text.format('"[1.0, 0.5, 2.0]"'))
    pipeline = write_pipeline(tmp_path, teacher='path = "v.csv"\nloader = "csv"', stages=1, epochs=1)
    one_error_line(run_cli(pipeline, "--dry-run"),
                   f"{tmp_path / 'v.csv'}:7: 'embedding' has 3 values, the rows before it 2")


def test_openai_batch_output_is_read_in_input_order_with_its_requests_texts(tmp_path):
    """OpenAI Batch API output holds a line per request, in any order, each with its inputs' vectors in
    ``response.body.data`` (by ``index``; base64 when the request asked for it); the texts are in the batch's
    input file. It went to the text teacher: \"expected a JSON object with a 'text' field\"."""
    import base64

    x = np.load(EXAMPLE_NPY)[:30]
    texts = [json.loads(line)["text"] for line in EXAMPLE_META.read_text().splitlines()[:30]]
    groups = [[i] for i in range(5)] + [list(range(5 + 5 * g, 10 + 5 * g)) for g in range(5)]  # single and lists
    requests = [{"custom_id": f"r{g}", "method": "POST", "url": "/v1/embeddings", "body": {
        "model": "text-embedding-3-small", "input": texts[rows[0]] if len(rows) == 1 else [texts[i] for i in rows]}}
        for g, rows in enumerate(groups)]
    (tmp_path / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in requests))
    order = [3, 7, 0, 9, 1, 5, 2, 8, 4, 6]  # answers come back in any order
    lines = []
    for g in order:
        rows = groups[g]
        data = [{"object": "embedding", "index": k, "embedding": base64.b64encode(x[i].astype("<f4").tobytes()).decode()
                 if g == 7 else x[i].tolist()} for k, i in enumerate(rows)][::-1]  # items in any order too
        lines.append({"id": f"batch_req_{g}", "custom_id": f"r{g}", "error": None, "response": {
            "status_code": 200, "request_id": "req", "body": {"object": "list", "data": data}}})
    (tmp_path / "out.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    expected = [i for g in order for i in groups[g]]
    ids = [f"r{g}" if len(groups[g]) == 1 else f"r{g}#{k}" for g in order for k in range(len(groups[g]))]

    data = validate_teacher(jsonl(tmp_path / "out.jsonl", requests=str(tmp_path / "requests.jsonl")))
    assert np.array_equal(data.embeddings, x[expected]) and data.ids == ids
    assert data.texts == [texts[i] for i in expected]
    assert jsonl(tmp_path / "out.jsonl").texts is None  # without the requests: the vectors and ids alone
    pipeline = write_pipeline(tmp_path, teacher='path = "out.jsonl"\nrequests = "requests.jsonl"', stages=1, epochs=1)
    found = run_cli(pipeline, "--dry-run")
    assert found.returncode == 0 and "teacher    jsonl: " in found.stdout and "(30 x 384 float32, with texts)" \
        in found.stdout, found.stderr

    failed = {**lines[0], "response": {"status_code": 400, "body": {"error": {"message": "input too long"}}}}
    (tmp_path / "failed.jsonl").write_text(json.dumps(lines[1]) + "\n" + json.dumps(failed) + "\n")
    with pytest.raises(DataError, match=r"failed.jsonl:2: request 'r3' failed \(input too long\); send it again in a "
                                        r"new batch and add its answer, or drop the line"):
        jsonl(tmp_path / "failed.jsonl")
    # two batches' output joined, one request in both (sent again after a failure): a row twice, before
    (tmp_path / "twice.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines[:3] + lines[1:2]))
    with pytest.raises(DataError, match=rf"twice.jsonl:4: request '{lines[1]['custom_id']}' is answered twice "
                                        r"\(lines 2 and 4\); keep one answer per request"):
        jsonl(tmp_path / "twice.jsonl")
    given = write_pipeline(tmp_path, teacher='path = "requests.jsonl"', stages=1, epochs=1, name="given.toml")
    one_error_line(run_cli(given, "--dry-run"), f"{tmp_path / 'requests.jsonl'}: is an OpenAI Batch input file "
                   "(requests); its embeddings are in the batch's output file: give that, with requests = "
                   '"requests.jsonl" in [teacher] for the texts')  # was: "expected a JSON object with a 'text' field"
    before = sorted((tmp_path / "run").rglob("*"))  # the dry run's conversion cache
    for bad, message in [('requests = "missing.jsonl"', "missing.jsonl: Batch input file (requests) not found"),
                         ("requests = 7", "teacher.requests must be"),
                         ('requests = "out.jsonl"', "out.jsonl:1: expected a Batch request")]:  # the output, twice
        pipeline.write_text(pipeline.read_text().replace('requests = "requests.jsonl"', bad))
        one_error_line(run_cli(pipeline, "--dry-run"), message)
        pipeline.write_text(pipeline.read_text().replace(bad, 'requests = "requests.jsonl"'))
    assert sorted((tmp_path / "run").rglob("*")) == before  # a refused run writes nothing
    (tmp_path / "few.jsonl").write_text(json.dumps(requests[7]) + "\n")
    with pytest.raises(DataError, match=r"out.jsonl:1: request 'r3' is not in the Batch input file"):
        jsonl(tmp_path / "out.jsonl", requests=str(tmp_path / "few.jsonl"))


def test_an_api_s_answer_per_line_is_read_as_vectors(tmp_path):
    """A loop over requests that saves each answer (``f.write(resp.model_dump_json() + "\\n")``) makes a line
    per answer, each with several vectors: it went to the text teacher, "expected a JSON object with a 'text'
    field (its fields are: object, data, model, usage)", and no key reached the vectors. Now each line's
    vectors are rows, in order (by ``index`` within a line), in atlas-run and atlas-encode."""
    x = np.load(EXAMPLE_NPY)[:12]
    np.save(tmp_path / "x.npy", x)
    openai = [{"object": "list", "model": "m", "usage": {"prompt_tokens": 3}, "data": [
        {"object": "embedding", "index": k, "embedding": x[i + k].tolist()} for k in (2, 1, 0)]}
        for i in range(0, 12, 3)]
    ollama = [{"model": "m", "embeddings": x[i:i + 4].tolist()} for i in range(0, 12, 4)]
    for name, lines in (("openai.jsonl", openai), ("ollama.jsonl", ollama)):
        (tmp_path / name).write_text("".join(json.dumps(line) + "\n" for line in lines))
        assert np.array_equal(validate_teacher(jsonl(tmp_path / name)).embeddings, x), name
    pipeline = write_pipeline(tmp_path, teacher='path = "openai.jsonl"', stages=1, epochs=1, batch_size=4)
    found = run_cli(pipeline, "--quiet")
    assert found.returncode == 0, found.stderr
    outputs = [run_cli(tmp_path / "run", tmp_path / name, program="atlas-encode") for name in ("ollama.jsonl", "x.npy")]
    assert outputs[0].returncode == 0 and outputs[0].stdout == outputs[1].stdout, outputs[0].stderr
    ollama[1]["embeddings"][2] = [0.5, 1.0]
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(line) + "\n" for line in ollama))
    with pytest.raises(DataError, match=r"bad.jsonl:2: item 2 has 2 values, the rows before it 384"):
        jsonl(tmp_path / "bad.jsonl")


def test_an_answer_of_quantized_or_binary_vectors_only_is_refused_with_what_to_ask_for(tmp_path):
    """Cohere answers by ``embedding_types``; without ``float`` the dict of types was read as one vector
    ("'texts' holds 20 items for 1 embeddings").  Binary ones read as floats would be bytes' values, so the
    answer is refused, naming the types, the request that gives floats and, for int8, the command that maps
    them as they are (what ``jq -c '.embeddings.int8[]'`` writes is read as the same vectors, as floats)."""
    x = np.load(EXAMPLE_NPY)[:20]
    int8 = np.round(x * 400).clip(-128, 127).astype(int)
    answer = {"id": "c", "embeddings": {"ubinary": np.packbits(x > 0, axis=1).tolist(), "int8": int8.tolist()},
              "texts": [f"t{i}" for i in range(20)], "response_type": "embeddings_by_type"}
    (tmp_path / "c.json").write_text(json.dumps(answer))
    (tmp_path / "c.jsonl").write_text(json.dumps(answer) + "\n")
    for name, where in (("c.json", "c.json"), ("c.jsonl", "c.jsonl:1")):
        refused = run_cli(write_pipeline(tmp_path, teacher=f'path = "{name}"'), "--dry-run")
        one_error_line(refused, f"{tmp_path / where}: 'embeddings' holds ubinary, int8 embeddings, no float ones; ask "
                       f'the API for them (embedding_types=["float"]), or map the int8 ones as they are: jq -c '
                       f"'.embeddings.int8[]' {name} > vectors.jsonl")
    answer["embeddings"].pop("int8")
    (tmp_path / "c.json").write_text(json.dumps(answer))
    with pytest.raises(DataError, match=r"c.json: 'embeddings' holds ubinary embeddings, no float ones; ask the API "
                                        r"for them \(embedding_types=\[\"float\"\]\)$"):
        tables.json_file(tmp_path / "c.json")
    (tmp_path / "vectors.jsonl").write_text("".join(json.dumps(v, separators=(",", ":")) + "\n" for v in int8.tolist()))
    np.testing.assert_array_equal(tables.jsonl(tmp_path / "vectors.jsonl").embeddings, int8.astype(np.float32))
    ubinary = answer["embeddings"]["ubinary"]  # what jq -c '.embeddings.ubinary[]' writes: bytes as numbers
    (tmp_path / "bytes.jsonl").write_text("".join(json.dumps(v) + "\n" for v in ubinary))
    with pytest.raises(DataError, match=r"bytes.jsonl:1: the line holds whole numbers from 0 to 255, bytes; uint8 "
                                        r"rows are binary embeddings packed 8 dimensions to a byte"):
        tables.jsonl(tmp_path / "bytes.jsonl")
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    column = pa.array(list(int8.astype(np.int8)), pa.list_(pa.int8()))
    pq.write_table(pa.table({"embedding": column}), tmp_path / "q.pq")
    with pytest.raises(DataError, match=r"q.pq: column 'embedding' is list<element: int8>; expected a list of floats "
                                        r"\(one embedding per row\); int8 rows are quantized embeddings"):
        parquet(tmp_path / "q.pq")


def test_a_json_file_of_vectors_in_the_shapes_apis_and_json_dump_write(tmp_path, monkeypatch):
    """An embedding API's answer saved as .json (OpenAI's ``data``, by index; Cohere's and Ollama's
    ``embeddings``, with ``texts``; Gemini's and Vertex AI's ``values``), ``json.dump`` of a list of vectors or
    of rows: each read whole, as
    vectors. A ``.json`` was \"no teacher plugin reads '.json' files\"."""
    x = np.load(EXAMPLE_NPY)[:20]
    docs = {
        "openai": {"object": "list", "model": "m", "data": [
            {"object": "embedding", "index": i, "embedding": x[i].tolist()} for i in reversed(range(20))]},
        "cohere": {"id": "c", "embeddings": {"float": x.tolist()}, "texts": [f"t{i}" for i in range(20)]},
        "ollama": {"model": "m", "embeddings": x.tolist()},
        "gemini": {"embeddings": [{"values": v.tolist()} for v in x]},
        "vertex": {"predictions": [{"embeddings": {"values": v.tolist(), "statistics": {"token_count": 3}}}
                                   for v in x]},
        "vectors": x.tolist(),
        "rows": [{"embedding": v.tolist(), "text": f"t{i}", "label": i % 2} for i, v in enumerate(x)],
    }
    for name, doc in docs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
        data = validate_teacher(tables.json_file(tmp_path / f"{name}.json"))
        assert np.array_equal(data.embeddings, x), name
        assert data.texts == ([f"t{i}" for i in range(20)] if name in ("cohere", "rows") else None)
    assert tables.json_file(tmp_path / "rows.json").labels == [i % 2 for i in range(20)]
    found = run_cli(write_pipeline(tmp_path, teacher='path = "openai.json"', stages=1, epochs=1), "--dry-run")
    assert found.returncode == 0 and "teacher    json: " in found.stdout, found.stderr

    for doc, message in [(["a text", "another"], "item 0 is a text; texts to embed go in a .txt file"),
                         ({"vectors": []}, "expected an embedding API's answer"),
                         ([[1, 2], [1, 2, 3]], r"item 1 has 3 values, the rows before it 2")]:
        (tmp_path / "bad.json").write_text(json.dumps(doc))
        with pytest.raises(DataError, match=message):
            tables.json_file(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text('{"data": [')
    with pytest.raises(DataError, match=r"bad.json: not valid JSON"):
        tables.json_file(tmp_path / "bad.json")
    monkeypatch.setattr(tables, "JSON_WARN_BYTES", 1000)
    with pytest.warns(UserWarning, match=r"vectors.json: 0.0 GB of JSON is read whole, at about twice that in memory; "
                                         r"JSON lines are read a line at a time \(jq -c '.data\[\]' vectors.json > "):
        tables.json_file(tmp_path / "vectors.json")


def test_vectors_written_as_text_or_base64_are_read_as_vectors(tmp_path):
    """A column of lists that went through a CSV file is text (``pd.read_csv(...).to_parquet(...)``, DuckDB's
    ``COPY``); an embedding API asked for ``encoding_format = "base64"`` sends little-endian float32 bytes.
    Both were refused ("column 'embedding' is large_string", "'embedding' must be a list of numbers") outside
    the Batch output; now the same vectors are read from each file, and trained on and encoded by the commands."""
    import base64

    x = np.load(EXAMPLE_NPY)[:200]
    np.save(tmp_path / "v.npy", x)
    as_text = [json.dumps(v.tolist()) for v in x]
    as_print = [np.array2string(v, threshold=10**6, precision=9, floatmode="unique") for v in x]
    as_base64 = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in x]
    texts = [f"text {i}" for i in range(200)]
    pq.write_table(pa.table({"text": texts, "embedding": as_text}), tmp_path / "text.parquet")
    pq.write_table(pa.table({"text": texts, "embedding": pa.array(as_print, pa.large_string())}),
                   tmp_path / "print.parquet", row_group_size=64)
    pa.feather.write_feather(pa.table({"text": texts, "embedding": as_base64}), tmp_path / "b64.feather")
    (tmp_path / "text.jsonl").write_text("".join(json.dumps({"text": t, "embedding": v}) + "\n"
                                                 for t, v in zip(texts, as_text)))
    (tmp_path / "b64.jsonl").write_text("".join(json.dumps({"text": t, "embedding": v}) + "\n"
                                                for t, v in zip(texts, as_base64)))
    (tmp_path / "b64.json").write_text(json.dumps({"object": "list", "data": [
        {"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(as_base64)]}))
    for name, read in [("text.parquet", parquet), ("print.parquet", parquet), ("b64.feather", tables.arrow),
                       ("text.jsonl", jsonl), ("b64.jsonl", jsonl), ("b64.json", tables.json_file)]:
        data = validate_teacher(read(tmp_path / name))
        assert data.embeddings.dtype == np.float32 and np.array_equal(data.embeddings, x), name
        assert data.texts == (None if name == "b64.json" else texts), name

    pipeline = write_pipeline(tmp_path, teacher='path = "print.parquet"', stages=1, epochs=1)
    trained = run_cli(pipeline, "--quiet")
    assert trained.returncode == 0 and "embedding 200 texts" not in trained.stderr, trained.stderr
    assert_encoded_alike(tmp_path / "run", tmp_path / "b64.jsonl", tmp_path / "v.npy")

    pq.write_table(pa.table({"embedding": [as_text[0], "[0.5, 1.0]"]}), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad.parquet: row 1 of column 'embedding' has 2 values, the rows before it "
                                        r"384"):
        parquet(tmp_path / "bad.parquet")
    pq.write_table(pa.table({"embedding": [as_text[0], "a sentence"]}), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad.parquet: row 1 of column 'embedding' is a text, not a vector"):
        parquet(tmp_path / "bad.parquet")


@pytest.mark.parametrize("name, message", [
    ("late.parquet", "late.parquet: row 70000 of column 'embedding' is a text, not a vector: expected a list of "
     "numbers, the same as text ('[0.1, -0.2]') or base64 float32 (what embedding APIs send)"),
    ("short.parquet", "short.parquet: row 70000 of column 'embedding' holds 1 values, the rows before it 3"),
    ("b64.jsonl", "b64.jsonl:2: 'embedding' has 3 values, the rows before it 2"),
    ("chroma.json", "chroma.json: 'documents' holds 1 items for 2 embeddings; save the answer again, whole"),
], ids=["text-after-a-batch", "length-after-a-batch", "base64-length", "chroma-documents"])
def test_a_bad_vector_file_is_one_line_and_leaves_nothing(tmp_path, name, message):
    """Through atlas-run: exit 2, one line naming the file and the row, and no run folder. A bad row after the
    first 65,536 left the half-converted ``.npy`` (as large as the whole file's vectors) in ``cache/``, and a
    bad ``.jsonl`` an empty ``cache/``."""
    import base64

    good, later = [0.5, 1.0, 2.0], [1.0]
    if name == "late.parquet":
        pq.write_table(pa.table({"embedding": [json.dumps(good)] * 70000 + ["a sentence"]}), tmp_path / name)
    elif name == "short.parquet":
        pq.write_table(pa.table({"embedding": [good] * 70000 + [later]}), tmp_path / name)
    elif name == "b64.jsonl":
        rows = [np.ones(2, "<f4"), np.ones(3, "<f4")]
        (tmp_path / name).write_text("".join(json.dumps({"embedding": base64.b64encode(v.tobytes()).decode()}) + "\n"
                                             for v in rows))
    else:
        (tmp_path / name).write_text(json.dumps({"ids": ["a", "b"], "embeddings": [good, good], "documents": ["a"]}))
    pipeline = write_pipeline(tmp_path, teacher=f'path = "{name}"', stages=1, epochs=1)
    for extra in ((), ("--dry-run",)):
        one_error_line(run_cli(pipeline, "--quiet", *extra), f"{tmp_path / name}", message)
        assert not (tmp_path / "run").exists()


def test_a_chroma_export_keeps_its_documents_and_ids(tmp_path):
    """Chroma's ``collection.get(include=["embeddings", "documents"])`` saved as JSON holds ``documents`` and
    ``ids`` beside ``embeddings``; they were dropped, and the map had no texts.  A list of another length than
    the vectors is refused, not matched up."""
    x = np.load(EXAMPLE_NPY)[:20]
    doc = {"ids": [f"doc-{i}" for i in range(20)], "embeddings": x.tolist(),
           "documents": [f"text {i}" for i in range(20)], "metadatas": [{"source": "a"}] * 20}
    (tmp_path / "chroma.json").write_text(json.dumps(doc))
    data = validate_teacher(tables.json_file(tmp_path / "chroma.json"))
    assert np.array_equal(data.embeddings, x) and data.texts == doc["documents"] and data.ids == doc["ids"]
    (tmp_path / "cut.json").write_text(json.dumps(doc | {"documents": doc["documents"][:19]}))
    with pytest.raises(DataError, match=r"cut.json: 'documents' holds 19 items for 20 embeddings; save the answer "
                                        r"again, whole"):
        tables.json_file(tmp_path / "cut.json")


def test_fields_nested_as_vector_databases_export_them(tmp_path):
    """A vector database's export keeps a row's text in an object beside its vector (Pinecone: ``values`` and
    ``metadata``; Qdrant: ``vector`` and ``payload``): a dotted name reaches it. Before, a text there could
    not be named, and the map had no texts."""
    x = np.load(EXAMPLE_NPY)[:20]
    rows = [{"id": f"doc-{i}", "values": v.tolist(), "metadata": {"text": f"text {i}", "source": {"kind": i % 3}}}
            for i, v in enumerate(x)]
    (tmp_path / "pinecone.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "pinecone.json").write_text(json.dumps(rows))
    for name, read in (("pinecone.jsonl", jsonl), ("pinecone.json", tables.json_file)):
        data = validate_teacher(read(tmp_path / name, column="values", text_column="metadata.text",
                                     label_column="metadata.source.kind"))
        assert np.array_equal(data.embeddings, x) and data.texts == [f"text {i}" for i in range(20)]
        assert data.labels == [i % 3 for i in range(20)] and data.ids[:2] == ["doc-0", "doc-1"]
    pipeline = write_pipeline(tmp_path, teacher='path = "pinecone.jsonl"', stages=1, epochs=1)
    one_error_line(run_cli(pipeline, "--dry-run"), "holds vectors in 'values': set loader = \"jsonl\" and column = "
                   "\"values\" in [teacher]")
    chosen = run_cli(pipeline, "--dry-run", "--set", 'teacher.loader="jsonl"', "--set", 'teacher.column="values"',
                     "--set", 'teacher.text_column="metadata.text"')
    assert chosen.returncode == 0 and "(20 x 384 float32, with texts)" in chosen.stdout, chosen.stderr


def test_a_vector_database_s_answer_saved_as_json(tmp_path):
    """Qdrant's scroll answer keeps its rows in ``result.points``, Weaviate's in ``objects``, Pinecone's fetch
    answer in ``vectors`` by id: "expected an embedding API's answer ... its fields are: result, status, time",
    and no key reached them. The one list of rows inside the answer is read now; a row without the vector
    field names its fields."""
    x = np.load(EXAMPLE_NPY)[:20]
    qdrant = {"result": {"points": [{"id": i, "vector": v.tolist(), "payload": {"text": f"t{i}"}}
                                    for i, v in enumerate(x)], "next_page_offset": None}, "status": "ok"}
    weaviate = {"objects": [{"class": "Doc", "id": f"u{i}", "properties": {"text": f"t{i}"}, "vector": v.tolist()}
                            for i, v in enumerate(x)], "totalResults": 20}
    pinecone = {"vectors": {f"p{i}": {"id": f"p{i}", "values": v.tolist(), "metadata": {"text": f"t{i}"}}
                            for i, v in enumerate(x)}, "namespace": "", "usage": {"readUnits": 1}}  # fetch: by id
    for name, doc in (("qdrant", qdrant), ("weaviate", weaviate), ("pinecone", pinecone)):
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
    for name, column, text, ids in (("qdrant", "vector", "payload.text", list(range(20))),
                                    ("weaviate", "vector", "properties.text", [f"u{i}" for i in range(20)]),
                                    ("pinecone", "values", "metadata.text", [f"p{i}" for i in range(20)])):
        data = validate_teacher(tables.json_file(tmp_path / f"{name}.json", column=column, text_column=text))
        assert np.array_equal(data.embeddings, x) and data.texts == [f"t{i}" for i in range(20)] and data.ids == ids
    pipeline = write_pipeline(tmp_path, teacher='path = "qdrant.json"', stages=1, epochs=1)
    one_error_line(run_cli(pipeline, "--dry-run"), f"{tmp_path / 'qdrant.json'}: item 0 has no 'embedding' field (its "
                   "fields are: id, vector, payload); name the one with the vectors: teacher.column in a pipeline file")
    found = run_cli(pipeline, "--dry-run", "--set", 'teacher.column="vector"', "--set",
                    'teacher.text_column="payload.text"')
    assert found.returncode == 0 and "(20 x 384 float32, with texts)" in found.stdout, found.stderr
    (tmp_path / "two.json").write_text(json.dumps({"a": [{"x": 1}], "b": {"c": [[1, 2]]}}))
    with pytest.raises(DataError, match=r"two.json: expected an embedding API's answer .*; its fields are: a, b; it "
                                        r"holds lists of rows in 'a', 'b.c': save the one with the vectors alone "
                                        r"\(jq '.a' two.json > rows.json\)"):
        tables.json_file(tmp_path / "two.json")


def test_jsonl_converts_once_into_a_memory_mapped_cache(tmp_path, monkeypatch):
    """With cache_dir (a run's cache/), a .jsonl of vectors is parsed once: its vectors go to a memory-mapped
    .npy as they are read and its texts, labels and ids to a JSON file beside it; the next read parses
    nothing, and a changed file is parsed again."""
    emb = np.load(EXAMPLE_NPY)[:300]
    meta = [json.loads(line) for line in EXAMPLE_META.read_text().splitlines()[:300]]
    rows = [{"id": i, "embedding": r.tolist(), "text": m["text"], "label": m["label"]} for i, (r, m) in
            enumerate(zip(emb, meta))]
    (tmp_path / "e.jsonl").write_text("\n\n".join(map(json.dumps, rows)) + "\n")  # blank lines: no rows
    cache = tmp_path / "cache"
    plain, first = jsonl(tmp_path / "e.jsonl"), jsonl(tmp_path / "e.jsonl", cache_dir=str(cache))
    assert isinstance(first.embeddings, np.memmap) and np.array_equal(first.embeddings, emb)
    assert (first.texts, first.labels, first.ids) == (plain.texts, plain.labels, plain.ids)
    assert first.ids[:2] == [0, 1] and first.texts == [m["text"] for m in meta]
    assert sorted(f.suffix for f in cache.iterdir()) == [".json", ".npy"]  # nothing temporary left

    def parse(*args):
        raise AssertionError("parsed again")

    with monkeypatch.context() as m:
        m.setattr("builtin_plugins.tables._jsonl_rows", parse)
        second = jsonl(tmp_path / "e.jsonl", cache_dir=str(cache))
    assert np.array_equal(second.embeddings, emb) and (second.texts, second.labels, second.ids) == (
        first.texts, first.labels, first.ids)
    (tmp_path / "e.jsonl").write_text("".join(json.dumps(r["embedding"]) + "\n" for r in rows[:100]))
    third = jsonl(tmp_path / "e.jsonl", cache_dir=str(cache))  # bare vectors now: no texts, labels or ids
    assert third.num_rows == 100 and third.texts is third.labels is third.ids is None
    assert jsonl(tmp_path / "e.jsonl", cache_dir=str(cache)).texts is None  # the same from its cache


def test_a_bad_or_growing_jsonl_leaves_no_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    (tmp_path / "bad.jsonl").write_text('{"embedding": [1, 2]}\n{"embedding": [1, 2]}\n{"embedding": [1]}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:3: 'embedding' has 1 values, the rows before it 2"):
        jsonl(tmp_path / "bad.jsonl", cache_dir=str(cache))
    assert not list(cache.iterdir())
    (tmp_path / "v.jsonl").write_text("[1, 2]\n[3, 4]\n")
    rows = tables._jsonl_rows

    def growing(*args):
        yield from rows(*args)
        with open(tmp_path / "v.jsonl", "a") as fh:  # a row appended while the file is read
            fh.write("[5, 6]\n")

    monkeypatch.setattr(tables, "_jsonl_rows", growing)
    with pytest.raises(DataError, match=r"v.jsonl: changed while it was read; run again once it is written"):
        jsonl(tmp_path / "v.jsonl", cache_dir=str(cache))
    assert not list(cache.iterdir())


def test_jsonl_vectors(tmp_path):
    rows = [{"embedding": [0.5, 1.0, 2.0], "text": "a", "id": 7}, {"embedding": [1, 0, 0], "text": "b", "id": 8}]
    (tmp_path / "v.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n\n")
    data = validate_teacher(jsonl(tmp_path / "v.jsonl"))
    assert data.embeddings.tolist() == [[0.5, 1.0, 2.0], [1, 0, 0]] and data.texts == ["a", "b"]
    assert data.ids == [7, 8] and data.labels is None
    (tmp_path / "bad.jsonl").write_text('{"embedding": [1, 2]}\n{"embedding": [1]}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: 'embedding' has 1 values, the rows before it 2"):
        jsonl(tmp_path / "bad.jsonl")
    for bad in ('[1, "2"]', '["1.5", "2"]', '[1, true]', '[true, false]', '[1, null]', '[[1, 2]]',
                '[1, {"x": 2}]', "null"):
        (tmp_path / "t.jsonl").write_text('{"embedding": [0.5, 1.5]}\n{"embedding": ' + bad + '}\n')
        with pytest.raises(DataError, match=r"t.jsonl:2: 'embedding' must be a list of numbers"):
            jsonl(tmp_path / "t.jsonl")
    for bad in ('"1, 2"', '"[1 ... 2]"', '"AAAA"', '"not base64!"', '""'):
        (tmp_path / "t.jsonl").write_text('{"embedding": [0.5, 1.5]}\n{"embedding": ' + bad + '}\n')
        with pytest.raises(DataError, match=r"t.jsonl:2: 'embedding' is a text, not a vector: expected a list of "
                                            r"numbers, the same as text \('\[0.1, -0.2\]'\) or base64 float32"):
            jsonl(tmp_path / "t.jsonl")
    (tmp_path / "t.jsonl").write_text('{"embedding": [1, 2], "text": "true or false"}\n')  # not a boolean value
    assert jsonl(tmp_path / "t.jsonl").embeddings.tolist() == [[1.0, 2.0]]
    (tmp_path / "t.jsonl").write_text(f'{{"embedding": [1, {10**40}]}}\n')  # a number, too large for float32
    with pytest.raises(DataError, match=r"t.jsonl:1: 'embedding' has values too large for float32 \(\|x\| > 3.4e38; "
                                         r"largest 1e\+40\); rescale the embeddings"):
        jsonl(tmp_path / "t.jsonl")
    (tmp_path / "t.jsonl").write_text('{"embedding": [1, 2]}\n', encoding="utf-16")  # Windows PowerShell's >
    with pytest.raises(DataError, match=r"t.jsonl: is UTF-16 text \(what Windows PowerShell's > writes\); save the "
                                        r"file as UTF-8"):
        jsonl(tmp_path / "t.jsonl")


def test_jsonl_vectors_are_held_as_float32_while_they_are_read(tmp_path):
    """A row became a list of Python floats (32 bytes a value) until the end: 100,000 OpenAI vectors of 1536
    needed about 5 GB for a 0.6 GB array.  The same float32 values now, within 2x the array's size."""
    import tracemalloc

    x = np.random.default_rng(0).normal(size=(400, 1536)).astype(np.float32)
    (tmp_path / "v.jsonl").write_text("".join(json.dumps({"embedding": r.tolist()}) + "\n" for r in x))
    tracemalloc.start()
    data = jsonl(tmp_path / "v.jsonl")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.array_equal(data.embeddings, x) and data.embeddings.dtype == np.float32
    assert peak < 2.5 * x.nbytes, peak / x.nbytes  # the old reader: 9.1x


def test_a_parquet_table_of_texts_goes_to_the_text_teacher(tmp_path):
    """A dataset's texts exported as Parquet (no vector column) went to the parquet teacher: "no column
    'embedding'"; now, as with .jsonl, what the table holds chooses the teacher."""
    from atlas_plugins import ConfigError, Registry
    from atlas_plugins.config import load_config
    from builtin_plugins.teachers import read_texts

    registry = Registry(load_entrypoints=False)  # the built-ins alone, whatever else is installed

    pq.write_table(pa.table({"text": ["parse a file", None, "open a socket"], "label": ["io", "x", "net"]}),
                   tmp_path / "t.parquet")
    assert read_texts(tmp_path / "t.parquet") == (["parse a file", "open a socket"], ["io", "net"])
    (tmp_path / "p.toml").write_text('[teacher]\npath = "t.parquet"\n')
    assert load_config(tmp_path / "p.toml", registry=registry).teacher.loader == "sentence-transformers"
    _, _, table = example_table(rows=20)
    pq.write_table(table.rename_columns(["id", "vec", "text", "label"]), tmp_path / "v.parquet")
    (tmp_path / "p.toml").write_text('[teacher]\npath = "v.parquet"\n')
    with pytest.raises(ConfigError, match=r"v.parquet holds vectors in 'vec': set loader = \"parquet\" and column = "
                                          r"\"vec\" in \[teacher\] to train on them"):
        load_config(tmp_path / "p.toml", registry=registry)
    cookbook = {"text": [f"text {i}" for i in range(20)], "ada_embedding": [json.dumps(v.tolist())
                                                                           for v in np.load(EXAMPLE_NPY)[:20]]}
    pq.write_table(pa.table(cookbook), tmp_path / "c.parquet")  # the cookbook's CSV, read by pandas, to Parquet
    (tmp_path / "p.toml").write_text('[teacher]\npath = "c.parquet"\n')
    with pytest.raises(ConfigError, match=r"c.parquet holds vectors in 'ada_embedding': set loader = \"parquet\" and "
                                          r"column = \"ada_embedding\""):
        load_config(tmp_path / "p.toml", registry=registry)
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "n.parquet")
    with pytest.raises(DataError, match=r"n.parquet: column 'text' holds int values; expected texts"):
        read_texts(tmp_path / "n.parquet")
    with pytest.raises(DataError, match=r"t.parquet: no column 'body'; its columns are: text, label; text_column"):
        read_texts(tmp_path / "t.parquet", text_field="body")


@pytest.mark.parametrize("teacher", ["parquet", "arrow"])
def test_without_pyarrow_the_table_teachers_name_the_extra(tmp_path, monkeypatch, teacher):
    (tmp_path / "e.data").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DataError, match=rf"^the {teacher} teacher needs pyarrow, the optional extra: "
                                        r"pip install 'atlas-distill\[parquet\]'$"):
        getattr(tables, teacher)(tmp_path / "e.data")


def test_a_dataset_of_texts_whose_shards_differ_is_one_line(tmp_path):
    from builtin_plugins.teachers import read_texts

    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "dataset_info.json").write_text("{}")
    for name, texts in (("data-0.arrow", ["parse a file", "open a socket"]), ("data-1.arrow", [1, 2])):
        table = pa.table({"text": texts})
        with pa.ipc.new_stream(str(tmp_path / "ds" / name), table.schema) as out:
            out.write_table(table)
    with pytest.raises(DataError, match=r"ds: cannot read column 'text' \(ArrowInvalid: "):
        read_texts(tmp_path / "ds")
    (tmp_path / "ds" / "data-1.arrow").unlink()
    assert read_texts(tmp_path / "ds") == (["parse a file", "open a socket"], None)


def test_brackets_nested_thousands_deep_are_a_bad_row_not_a_crash(tmp_path):
    """Python's JSON parser raises RecursionError on lists nested ~1,000 deep: each reader names the file and
    row instead (the json teacher failed with "RecursionError: maximum recursion depth exceeded", and
    atlas-run with "the input is nested too deeply to process", naming no file)."""
    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "deep.json").write_text(deep)
    (tmp_path / "deep.jsonl").write_text('{"embedding": [1, 2]}\n' + deep + "\n")
    write_csv(tmp_path / "deep.csv", ["text", "embedding"], [["a", deep]])
    for read, name, message in [(tables.json_file, "deep.json", "lists nested too deeply to be vectors or rows"),
                                (jsonl, "deep.jsonl", "2: expected a JSON object with a 'embedding' field"),
                                (tables.csv, "deep.csv", "2: 'embedding' must be a list of numbers")]:
        with pytest.raises(DataError) as err:
            read(tmp_path / name)
        assert str(err.value).startswith(f"{tmp_path / name}:") and message in str(err.value), str(err.value)
    (tmp_path / "texts.jsonl").write_text(deep + "\n")  # where a first line tells vectors from texts
    proc = run_cli(write_pipeline(tmp_path, teacher='path = "texts.jsonl"', stages=1, epochs=1), "--dry-run")
    one_error_line(proc, f"{tmp_path / 'texts.jsonl'}:1: expected a JSON object with a 'text' field")

"""Bad teacher data is caught before training, with one line naming the file and the problem."""

import gzip
import json
import lzma
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from atlas_plugins import DataError, TeacherData
from atlas_plugins.teacher import validate_teacher
from builtin_plugins import teachers
from conftest import EXAMPLE_META, EXAMPLE_NPY, run_cli
from conftest import one_error_line, same_weights, weights, write_pipeline


def test_nan_scan_is_chunked_and_names_the_first_bad_row(tmp_path, monkeypatch):
    emb = np.load(EXAMPLE_NPY)[:1000].copy()
    emb[777, 3] = np.nan
    emb[900, 0] = np.inf
    np.save(tmp_path / "t.npy", emb)
    mm = np.load(tmp_path / "t.npy", mmap_mode="r")
    data = TeacherData(mm, source="t.npy")
    seen = []
    original = TeacherData.chunks
    monkeypatch.setattr(TeacherData, "chunks", lambda self, rows: seen.append(rows) or original(self, rows))
    with pytest.raises(DataError, match="t.npy: row 777 contains NaN or Inf"):
        validate_teacher(data, chunk_rows=100)
    assert seen == [100]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_zero_rows_are_counted_across_blocks_and_a_tiny_value_is_not_zero(dtype):
    from atlas_plugins.teacher import RowScan

    rows = torch.randn(100, 8).to(dtype)
    rows[[3, 50, 99]] = 0
    rows[7] = -0.0  # still zero
    rows[9] = 0
    rows[9, 2] = 1e-4  # not zero: the only non-zero value of its row
    rows[11] = 0
    rows[11, 5] = -1e-4  # nor this: its max is 0, its min is not
    scan = RowScan(TeacherData(rows, source="t.npy"))
    for start in range(0, 100, 30):
        scan.see(start, rows[start:start + 30])
    assert (scan.zeros, scan.first_zero) == (4, 3)
    assert scan.describe_zeros() == "t.npy: row 3 is all zeros (4 rows in all)"
    rows[64, 1] = float("nan")  # the second block: named by its row in the data
    with pytest.raises(DataError, match="t.npy: row 64 contains NaN or Inf"):
        for start in range(0, 100, 30):
            scan.see(start, rows[start:start + 30])


def test_repeated_rows_are_counted_across_blocks_and_one_bit_apart_is_another_vector():
    """Copies of a vector (an empty text's embedding, a failed call's default) are each other's nearest
    neighbours; from 1 % of the rows they are named.  Rows are compared by their bits, in any block."""
    from atlas_plugins.teacher import RowScan

    x = np.load(EXAMPLE_NPY)[:1000].copy()
    x[[100, 400, 999]] = x[7]  # row 7's vector 4 times, across blocks
    x[[500, 600]] = x[8]
    x[700] = np.nextafter(x[9], np.inf)  # one ulp from row 9 in every value: another vector
    x[701] = x[9]
    x[701, 383] = np.nextafter(x[9, 383], np.inf)  # one ulp in the last value
    texts = [f"text {i}" for i in range(1000)]

    def scan(rows, **embedded):
        found = RowScan(TeacherData(rows, texts=texts, source="t.npy", **embedded), copies=True)
        for start in range(0, len(rows), 300):
            found.see(start, torch.from_numpy(rows[start:start + 300]))
        return found.describe_copies()

    assert scan(x) is None  # 5 of 1,000 rows: below 1 %
    x[[800, 801, 802, 803, 804]] = x[7]
    assert scan(x) == (
        "t.npy: 10 of 1,000 rows (1.0%) repeat an earlier row's vector (the most: row 7, \"text 7\", in 9 rows); "
        "copies are each other's nearest neighbours, so they crowd the neighbour graph and count as found "
        "neighbours in the report: keep each vector's first row (and its text, label): "
        "keep = numpy.sort(numpy.unique(x, axis=0, return_index=True)[1])")
    assert scan(x, embed_params={"model": "m"}).endswith("in the report: keep each text once")  # texts embedded
    keep = np.sort(np.unique(x, axis=0, return_index=True)[1])  # the command the message gives
    assert len(keep) == 990 and scan(x[keep]) is None
    assert scan(np.load(EXAMPLE_NPY)) is None  # the bundled example: 1 repeat in 2,642 rows
    odd = np.ascontiguousarray(x[:, :383])  # an odd row length is keyed a value at a time, not two to a word
    assert scan(odd).startswith("t.npy: 11 of 1,000 rows (1.1%) repeat")  # row 701 differed in the value dropped
    odd[801, 382] = np.nextafter(odd[801, 382], np.inf)  # one ulp in the last value: another vector
    assert scan(odd).startswith("t.npy: 10 of 1,000 rows (1.0%) repeat")


def test_atlas_run_names_repeated_rows_and_trains_on(tmp_path):
    x = np.load(EXAMPLE_NPY)[:600].copy()
    x[300:330] = x[3]
    np.save(tmp_path / "t.npy", x)
    found = run_cli(write_pipeline(tmp_path, teacher='path = "t.npy"'), "--dry-run")
    assert found.returncode == 0, found.stderr
    assert found.stderr.splitlines() == [
        f"atlas-run: warning: {tmp_path / 't.npy'}: 30 of 600 rows (5.0%) repeat an earlier row's vector (the most: "
        "row 3, in 31 rows); copies are each other's nearest neighbours, so they crowd the neighbour graph and count "
        "as found neighbours in the report: keep each vector's first row (and its text, label): "
        "keep = numpy.sort(numpy.unique(x, axis=0, return_index=True)[1])"]


def test_teacher_data_prints_as_one_line_not_its_rows_and_texts():
    """print(teacher) wrote every vector and every text: 262,237 characters for the bundled example."""
    data = teachers.npy(EXAMPLE_NPY, meta=EXAMPLE_META)
    assert repr(data) == f"TeacherData(2,642 x 384 float32 (memory-mapped), texts, labels, source '{EXAMPLE_NPY}')"
    assert repr(TeacherData(torch.zeros(3, 4, dtype=torch.float16))) == "TeacherData(3 x 4 float16)"
    assert repr(TeacherData([[1.0, 2.0]])) == "TeacherData(list)"  # a plugin's return, before it is checked


def test_rows_reads_only_requested_rows_in_order():
    emb = np.arange(20, dtype=np.float32).reshape(10, 2)
    data = TeacherData(emb)
    assert data.rows(np.array([7, 2, 5])).tolist() == [[14, 15], [4, 5], [10, 11]]
    assert TeacherData(torch.from_numpy(emb)).rows([1, 0]).tolist() == [[2, 3], [0, 1]]


def _text(name, content, teacher):
    return lambda p: (p / name).write_text(content) and teacher


def _parquet(path):
    pa = pytest.importorskip("pyarrow", reason="needs the 'parquet' extra")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"embedding": [[0.5, 1.0]] * 8}), path)


def test_without_a_key_the_vectors_are_embeddings_or_the_only_array_or_the_only_2d_one(tmp_path):
    """One rule for the three formats that name their arrays: .npz, a .pt dict and .safetensors."""
    from builtin_plugins.teachers import npy, pt

    x = np.load(EXAMPLE_NPY)[:50]
    ids = np.arange(50)
    np.savez(tmp_path / "a.npz", vectors=x, labels=ids)  # the labels come along, as under 'embeddings'
    torch.save({"vectors": torch.from_numpy(x), "ids": torch.from_numpy(ids), "note": "v1"}, tmp_path / "a.pt")
    torch.save({"vectors": torch.from_numpy(x)}, tmp_path / "one.pt")
    torch.save({"embeddings": torch.from_numpy(x[:, :8]), "vectors": torch.from_numpy(x)}, tmp_path / "both.pt")
    a = npy(str(tmp_path / "a.npz"))
    assert np.array_equal(np.asarray(a.embeddings), x) and a.labels == ids.tolist()
    for name in ("a.pt", "one.pt"):
        assert torch.equal(torch.as_tensor(pt(str(tmp_path / name)).embeddings), torch.from_numpy(x)), name
    assert torch.as_tensor(pt(str(tmp_path / "both.pt")).embeddings).shape == (50, 8)  # 'embeddings' comes first
    assert torch.as_tensor(pt(str(tmp_path / "both.pt"), key="vectors").embeddings).shape == (50, 384)
    assert torch.equal(torch.as_tensor(pt(str(tmp_path / "a.pt"), key="embeddings").embeddings),
                       torch.from_numpy(x))  # the default name, given: not there, so the only (N, D) tensor
    torch.save({"a": torch.from_numpy(x), "b": torch.from_numpy(x)}, tmp_path / "two.pt")
    with pytest.raises(DataError, match=r"two.pt: holds 2 \(N, D\) arrays \(a, b\) and none is named 'embeddings'; "
                                        r"name the one with the vectors: teacher.key in a pipeline file"):
        pt(str(tmp_path / "two.pt"))
    torch.save({"ids": torch.arange(3), "note": "v1"}, tmp_path / "none.pt")
    with pytest.raises(DataError, match=r"none.pt: holds no \(N, D\) array of vectors \(its keys are: ids, note\)"):
        pt(str(tmp_path / "none.pt"))
    with pytest.raises(DataError, match=r"a.pt: no key 'x'; its keys are: vectors, ids, note; name the one"):
        pt(str(tmp_path / "a.pt"), key="x")
    torch.save({"vectors": [0.5, 0.25]}, tmp_path / "list.pt")  # the only key, named in the type error
    with pytest.raises(DataError, match=r"list.pt: 'vectors' is of type list; expected a tensor of shape \(N, D\)"):
        pt(str(tmp_path / "list.pt"))
    torch.save([0.5, 0.25], tmp_path / "bare.pt")
    with pytest.raises(DataError, match=r"bare.pt: holds a list; expected a tensor of shape \(N, D\)"):
        pt(str(tmp_path / "bare.pt"))


def test_safetensors_without_a_key_reads_its_only_2d_tensor(tmp_path):
    pytest.importorskip("safetensors", reason="needs the 'safetensors' extra")
    from safetensors.torch import save_file

    from builtin_plugins.teachers import safetensors

    x = torch.from_numpy(np.load(EXAMPLE_NPY)[:50])
    save_file({"vectors": x, "ids": torch.arange(50)}, tmp_path / "a.safetensors")
    assert torch.equal(torch.as_tensor(safetensors(str(tmp_path / "a.safetensors")).embeddings), x)
    save_file({"a": x, "b": x.clone()}, tmp_path / "two.safetensors")
    with pytest.raises(DataError, match=r"two.safetensors: holds 2 \(N, D\) arrays \(a, b\) and none is named"):
        safetensors(str(tmp_path / "two.safetensors"))
    with pytest.raises(DataError, match=r"a.safetensors: no tensor 'x'; its tensors are: (ids, vectors|vectors, ids); "
                                        "name the one"):
        safetensors(str(tmp_path / "a.safetensors"), key="x")


def _safetensors_bytes() -> bytes:
    numpy_safetensors = pytest.importorskip("safetensors.numpy", reason="needs the 'safetensors' extra")
    return numpy_safetensors.save({"embeddings": np.ones((4, 3), np.float32)})


def _npy(arr):
    return lambda p: np.save(p / "t.npy", arr) or 'path = "t.npy"'


def _lists(n):
    """What ``df["embedding"].values`` is: a dtype=object array of Python lists."""
    out = np.empty(n, dtype=object)
    out[:] = [[1.0, float(i)] for i in range(n)]
    return out


CASES = {
    "nan-row": (_npy(np.where(np.arange(600)[:, None] == 412, np.nan, np.ones((600, 384), np.float32))),
                ["t.npy: row 412 contains NaN or Inf"]),
    "zero-rows": (_npy(np.where(np.isin(np.arange(600), [41, 77, 300])[:, None], 0, np.ones((600, 384), np.float32))),
                  ["t.npy: row 41 is all zeros (3 rows in all): a zero vector has no direction",
                   "drop such rows before training"]),
    "identical-rows": (_npy(np.tile(np.load(EXAMPLE_NPY)[:1], (600, 1))),
                       ["t.npy: all 600 rows are the same vector, so there are no neighbourhoods to map"]),
    "one-dimensional": (_npy(np.ones(600, np.float32)), ["t.npy: embeddings must be 2-D (N, D), got shape (600,)"]),
    "three-dimensional": (_npy(np.ones((600, 4, 4), np.float32)), [
        "must be 2-D (N, D), got shape (600, 4, 4); 4 vectors per row, as a model's token embeddings are: pool them "
        "into one per row (x.mean(axis=1), or the model's sentence embedding)"]),
    "middle-axis-of-one": (_npy(np.ones((600, 1, 384), np.float32)), [
        "must be 2-D (N, D), got shape (600, 1, 384); drop the axis of length 1: x[:, 0]"]),
    "first-axis-of-one": (_npy(np.ones((1, 600, 384), np.float32)), [
        "must be 2-D (N, D), got shape (1, 600, 384); drop the axis of length 1: x[0]"]),
    "integers": (_npy(np.ones((600, 384), np.int32)), [
        "unsupported dtype int32; expected one of float16, float32, float64, bfloat16; whole numbers are token ids "
        "or labels, not embeddings: give the model's float vectors"]),
    "int8-quantized": (_npy(np.ones((600, 384), np.int8)), [
        "unsupported dtype int8; expected one of float16, float32, float64, bfloat16; int8 rows are quantized "
        "embeddings, or binary ones packed 8 dimensions to a byte (Cohere's 'binary'): ask the model for float "
        "embeddings, or save quantized ones as floats, numpy.save('vectors.npy', x.astype('float32')), and unpack "
        "binary ones into +-1 floats: numpy.save('vectors.npy', numpy.unpackbits(x.view('uint8'), axis=1) * 2.0 - 1)"]),
    "uint8-packed-binary": (_npy(np.ones((600, 48), np.uint8)), [
        "unsupported dtype uint8; expected one of float16, float32, float64, bfloat16; uint8 rows are binary "
        "embeddings packed 8 dimensions to a byte, or unsigned quantized ones, which read as floats would not keep "
        "their neighbours: ask the model for float embeddings, or unpack binary ones into +-1 floats"]),
    "boolean-binary": (_npy(np.ones((600, 384), bool)), [
        "unsupported dtype bool; expected one of float16, float32, float64, bfloat16; boolean rows are binary "
        "embeddings: save them as +-1 floats: numpy.save('vectors.npy', x * 2.0 - 1)"]),
    "no-rows": (_npy(np.ones((0, 384), np.float32)), ["embeddings are empty (shape (0, 384))"]),
    "empty-file": (lambda p: (p / "t.npy").write_bytes(b"") or 'path = "t.npy"', ["t.npy: not a readable NumPy file"]),
    "text-named-npy": (_text("t.npy", "1,2,3\n", 'path = "t.npy"'),
                       ["t.npy: not a readable NumPy file"]),
    "object-npy": (lambda p: np.save(p / "t.npy", _lists(600), allow_pickle=True) or 'path = "t.npy"',
                   ["t.npy: holds Python objects (an array of lists, as df['embedding'].values is), which only "
                    "unpickling could read", "np.save(path, np.stack(vectors).astype(np.float32))"]),
    "object-npz": (lambda p: np.savez(p / "t.npz", embeddings=_lists(600)) or 'path = "t.npz"',
                   ["t.npz: holds Python objects (an array of lists"]),
    "gzip-npy": (lambda p: (p / "t.npy.gz").write_bytes(gzip.compress(b"x")) and 'path = "t.npy.gz"',
                 ["t.npy.gz: is compressed (gzip); decompress it first (gunzip -k t.npy.gz) and give t.npy"]),
    "xz-jsonl-named": (lambda p: (p / "v.jsonl.xz").write_bytes(lzma.compress(b"[1, 2]\n"))
                       and 'path = "v.jsonl.xz"\nloader = "jsonl"',  # a loader named: the file still is compressed
                       ["v.jsonl.xz: is compressed (xz); decompress it first (unxz -k v.jsonl.xz) and give v.jsonl"]),
    "gzip-meta": (lambda p: np.save(p / "t.npy", np.ones((600, 384), np.float32))
                  or (p / "m.jsonl.gz").write_bytes(gzip.compress(b'{"text": "a"}\n'))
                  and 'path = "t.npy"\nmeta = "m.jsonl.gz"', ["m.jsonl.gz: is compressed (gzip)"]),
    "huggingface-folder-without-shards": (
        lambda p: (p / "ds").mkdir() or (p / "ds" / "dataset_info.json").write_text("{}") and 'path = "ds"',
        ["ds: is a Hugging Face dataset folder without .arrow shards; save the dataset again"]),
    "pickle": (lambda p: (p / "e.pkl").write_bytes(b"\x80\x04N.") and 'path = "e.pkl"',  # pickle.dumps(None)
               ["e.pkl: is a pickle, which is never loaded here (unpickling can run code); save the vectors with "
                "numpy.save('vectors.npy', vectors) or df.to_parquet('vectors.parquet')"]),
    "hdf5": (lambda p: (p / "e.hdf5").write_bytes(b"\x89HDF\r\n\x1a\n") and 'path = "e.hdf5"',
             ["e.hdf5: is HDF5, which no teacher reads; save the array as .npy: numpy.save('vectors.npy', "
              "h5py.File(path)[name][:])"]),
    "faiss": (lambda p: (p / "v.faiss").write_bytes(b"IxF2") and 'path = "v.faiss"',
              ["v.faiss: is a FAISS index, which no teacher reads; save its vectors as .npy: index = "
               "faiss.read_index(path); numpy.save('vectors.npy', index.reconstruct_n(0, index.ntotal))"]),
    "lance-folder": (lambda p: (p / "db.lance" / "data").mkdir(parents=True) or 'path = "db.lance/"',
                     ["db.lance: is a Lance dataset (LanceDB), which no teacher reads; save it as Parquet: "
                      "pyarrow.parquet.write_table(lance.dataset(path).to_table(), 'vectors.parquet')"]),
    "spreadsheet": (lambda p: (p / "texts.xlsx").write_bytes(b"PK\x03\x04") and 'path = "texts.xlsx"',
                    ["texts.xlsx: is a spreadsheet, which no teacher reads; save the sheet as a CSV file "
                     "(\"CSV UTF-8\" in a spreadsheet), or with pandas: pandas.read_excel(path).to_csv('texts.csv', "
                     "index=False)"]),
    "folder-no-loader": (lambda p: (p / "vectors").mkdir() or 'path = "vectors"',
                         ["vectors: is a folder; expected a teacher file"]),
    "npy-parts-of-two-widths": (lambda p: (p / "out").mkdir() or [np.save(p / "out" / f"batch-{i}.npy",
                                                                   np.ones((9, 4 + (i == 10)), np.float32))
                                                           for i in (2, 10)] and 'path = "out"',
                                ["out/batch-10.npy: holds an array of shape (9, 5) and dtype float32; each .npy file "
                                 "of the folder ", "out should hold (N, 4) float32 rows, as batch-2.npy holds"]),
    "npy-part-of-one-vector": (lambda p: (p / "out").mkdir() or np.save(p / "out" / "v.npy", np.ones(4, np.float32))
                               or 'path = "out"', ["out/v.npy: holds an array of shape (4,) and dtype float32; each "
                                                   ".npy file of the folder ", "out should hold rows (N, D), one "
                                                   "vector a row"]),
    "npy-part-of-objects": (lambda p: (p / "out").mkdir() or np.save(p / "out" / "a.npy", np.array([[0.1], [0.2, 0.3]],
                                                                                                    dtype=object))
                            or 'path = "out"', ["out/a.npy: holds Python objects (an array of lists, as "
                                                "df['embedding'].values is), which only unpickling could read"]),
    "npy-parts-with-key": (lambda p: (p / "out").mkdir() or np.save(p / "out" / "a.npy", np.ones((9, 4), np.float32))
                           or 'path = "out"\nkey = "x"', ["out: key = 'x' is set, but a folder of .npy files holds "
                                                          "one array a file; remove the key (teacher.key"]),
    "npy-named-pt": (lambda p: np.save(p / "t.pt.npy", np.ones((600, 384), np.float32))
                     or (p / "t.pt.npy").rename(p / "t.pt") and 'path = "t.pt"',
                     ["t.pt: not a readable teacher file: its bytes are a NumPy .npy file; give it a .npy name, and "
                      "the teacher for .npy files reads it"]),
    # numpy opened a zip named .npy as an .npz (was: "embeddings must be a numpy array or torch tensor, got NpzFile")
    "npz-named-npy": (lambda p: np.savez(p / "t.npz", embeddings=np.ones((600, 384), np.float32))
                      or (p / "t.npz").rename(p / "t.npy") and 'path = "t.npy"',
                      ["t.npy: not a readable NumPy file: its bytes are a NumPy .npz archive; give it a .npz name"]),
    "pt-named-npy": (lambda p: torch.save({"embeddings": torch.ones(600, 384)}, p / "t.npy") or 'path = "t.npy"',
                     ["t.npy: not a readable NumPy file: its bytes are a torch file; give it a .pt name, and the "
                      "teacher for .pt files reads it"]),
    "parquet-named-npy": (lambda p: _parquet(p / "t.npy") or 'path = "t.npy"',
                          ["t.npy: not a readable NumPy file: its bytes are a Parquet file; give it a .parquet name"]),
    "safetensors-named-pt": (lambda p: (p / "t.pt").write_bytes(_safetensors_bytes()) and 'path = "t.pt"',
                             ["t.pt: not a readable teacher file: its bytes are a safetensors file; give it a "
                              ".safetensors name"]),
    "npy-given-to-pt": (lambda p: np.save(p / "t.npy", np.ones((600, 384), np.float32))
                        or 'path = "t.npy"\nloader = "pt"',
                        ["t.npy: not a readable teacher file: it is a NumPy .npy file, which the teacher for .npy "
                         "files reads (leave out teacher.loader in a pipeline file, --loader for atlas-encode)"]),
    "npz-missing-key": (lambda p: np.savez(p / "t.npz", a=np.ones((600, 384)), b=np.ones((3, 3)))
                        or 'path = "t.npz"', ["t.npz: holds 2 (N, D) arrays (a, b) and none is named 'embeddings'",
                                                   "teacher.key in a pipeline file"]),
    "pt-missing-key": (lambda p: torch.save({"vectors": torch.ones(600, 384)}, p / "t.pt")
                       or 'path = "t.pt"\nkey = "vecs"', ["t.pt: no key 'vecs'; its keys are: vectors",
                                                       "teacher.key in a pipeline file"]),
    "too-few-rows": (_npy(np.load(EXAMPLE_NPY)[:3]), ["2 training rows after the validation split",
                                                           "a batch needs at least 3"]),
    "meta-length": (lambda p: np.save(p / "t.npy", np.ones((600, 384), np.float32))
                    or _text("m.jsonl", '{"text": "a"}\n', 'path = "t.npy"\nmeta = "m.jsonl"')(p),
                    ["m.jsonl: 1 text for the 600 rows of", "t.npy; a meta file holds one line per row"]),
    "meta-longer": (lambda p: np.save(p / "t.npy", np.ones((600, 384), np.float32))
                    or _text("m.jsonl", '{"text": "a", "label": "x"}\n' * 601, 'path = "t.npy"\nmeta = "m.jsonl"')(p),
                    ["m.jsonl: 601 texts for the 600 rows of"]),  # was "t.npy: 601 labels for 600 embedding rows"
    "meta-not-json": (lambda p: np.save(p / "t.npy", np.ones((600, 384), np.float32))
                      or _text("m.jsonl", "hello\n", 'path = "t.npy"\nmeta = "m.jsonl"')(p),
                      ["m.jsonl:1: expected a JSON object with a 'text' field"]),
    "non-utf8-meta": (lambda p: np.save(p / "t.npy", np.ones((600, 384), np.float32))
                      or (p / "m.jsonl").write_bytes(b'{"text": "caf\xe9"}\n') and 'path = "t.npy"\nmeta = "m.jsonl"',
                      ["m.jsonl:1: not UTF-8 text"]),
    "float32-overflow": (_npy(np.where(np.arange(600)[:, None] == 5, 1e300, np.ones((600, 384)))),
                         ["t.npy: row 5 has values too large for float32", "largest 1e+300"]),
    "fifo": (lambda p: os.mkfifo(p / "t.npy") or 'path = "t.npy"', ["t.npy: is not a regular file"]),
    "device": (lambda p: 'path = "/dev/zero"\nloader = "npy"', ["/dev/zero: is not a regular file"]),
    "folder": (lambda p: (p / "t.npy").mkdir() or 'path = "t.npy"', ["t.npy: is a folder"]),
    "npy-with-key": (lambda p: np.save(p / "t.npy", np.ones((600, 384), np.float32)) or 'path = "t.npy"\nkey = "x"',
                     ["key = 'x' is set, but a .npy file holds one array; remove the key (teacher.key"]),
    "sparse-pt": (lambda p: torch.save(torch.eye(600, 384).to_sparse(), p / "t.pt") or 'path = "t.pt"',
                  ["t.pt: embeddings are a sparse (torch.sparse_coo) tensor"]),
    "meta-pt": (lambda p: torch.save(torch.empty(600, 384, device="meta"), p / "t.pt") or 'path = "t.pt"',
                ["t.pt: embeddings are a tensor on the meta device, which holds no values"]),
    "texts-not-a-list": (lambda p: torch.save({"embeddings": torch.ones(600, 384), "texts": "abc"}, p / "t.pt")
                         or 'path = "t.pt"', ["t.pt: texts must be a list of strings, got str"]),
    "integer-texts": (lambda p: torch.save({"embeddings": torch.ones(600, 384), "texts": list(range(600))},
                                           p / "t.pt") or 'path = "t.pt"',
                      ["t.pt: texts[0] is of type int; texts must be strings"]),
    "list-labels": (lambda p: np.save(p / "t.npy", np.ones((600, 384), np.float32))
                    or _text("m.jsonl", '{"text": "a", "label": [1, 2]}\n' * 600,
                             'path = "t.npy"\nmeta = "m.jsonl"')(p),
                    ["t.npy: labels[0] is of type list; labels must be strings, numbers or booleans"]),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_teacher_file_is_one_clear_line(tmp_path, case):
    make, fragments = CASES[case]
    teacher = make(tmp_path)
    one_error_line(run_cli(write_pipeline(tmp_path, teacher=teacher), "--dry-run"), *fragments)


def test_a_folder_of_npy_files_is_one_teacher_in_natural_name_order(tmp_path):
    """What a script that embeds in batches leaves: batch-0.npy ... batch-11.npy.  It was refused with a command
    to join them whose sorted(glob(...)) put batch-10 before batch-2, rows out of order.  Now the parts are read
    in natural name order, joined once into the run's cache/ (a part at a time) and memory-mapped."""
    from atlas_plugins import get_teacher, load_student

    emb = np.load(EXAMPLE_NPY)[:600]
    folder = tmp_path / "out"
    folder.mkdir()
    bounds = [0, 40, 90, 100, 180, 260, 300, 370, 420, 480, 500, 570, 600]
    for i, (start, stop) in enumerate(zip(bounds, bounds[1:])):
        np.save(folder / f"batch-{i}.npy", emb[start:stop])
    (folder / ".batch-0.npy.swp").write_bytes(b"an editor's")
    npy = get_teacher("npy")
    assert np.array_equal(npy(folder).embeddings, emb)  # in memory
    cache = tmp_path / "cache"
    joined = npy(folder, cache_dir=str(cache)).embeddings
    [written] = cache.glob("npy-*.npy")
    assert isinstance(joined, np.memmap) and np.array_equal(joined, emb)
    assert np.load(written, mmap_mode="r").filename == npy(folder, cache_dir=str(cache)).embeddings.filename  # reused
    np.save(folder / "batch-11.npy", emb[570:600] * 2)  # a part changed: joined again
    assert np.array_equal(npy(folder, cache_dir=str(cache)).embeddings[570:], emb[570:600] * 2)
    assert len(list(cache.glob("npy-*.npy"))) == 2 and not list(cache.glob(".*"))
    np.save(folder / "batch-11.npy", emb[570:600])

    meta = EXAMPLE_NPY.with_suffix(".jsonl").read_text().splitlines(keepends=True)[:600]
    (tmp_path / "meta.jsonl").write_text("".join(meta))
    pipe = write_pipeline(tmp_path, teacher='path = "out"\nmeta = "meta.jsonl"', stages=1, epochs=1)
    dry = run_cli(pipe, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"teacher    npy: {folder}  (600 x 384 float32, with labels and texts)" in dry.stdout
    done = run_cli(pipe, "--quiet")
    assert done.returncode == 0, done.stderr
    np.save(tmp_path / "e.npy", emb)
    for given in (folder, tmp_path / "e.npy"):
        done = run_cli(tmp_path / "run", given, "-o", f"{given}.xy.npy", "--quiet", program="atlas-encode")
        assert done.returncode == 0, done.stderr
    assert np.array_equal(np.load(f"{folder}.xy.npy"), np.load(tmp_path / "e.npy.xy.npy"))
    assert np.allclose(np.load(f"{folder}.xy.npy"), load_student(tmp_path / "run").encode(emb), atol=1e-6)


def test_a_part_that_changes_while_the_folder_is_joined_is_named_never_joined_out_of_place(tmp_path, monkeypatch):
    """The joined file's header holds the rows counted before the copy: a part that grew meanwhile would shift
    every later row (a map of rows against other rows' texts) had it been copied as it now is."""
    from atlas_plugins import get_teacher

    folder = tmp_path / "out"
    folder.mkdir()
    for i in range(3):
        np.save(folder / f"batch-{i}.npy", np.full((5, 4), i, np.float32))
    seen, load = [], np.load

    def load_while_a_writer_appends(f, *args, **kwargs):
        seen.append(Path(f).name)
        if seen.count("batch-1.npy") == 2:  # the copy pass: another process has rewritten it meanwhile
            np.save(f, np.full((7, 4), 1, np.float32))
        return load(f, *args, **kwargs)

    monkeypatch.setattr(np, "load", load_while_a_writer_appends)
    with pytest.raises(DataError, match=r"batch-1.npy: changed while the folder's parts were joined \(shape \(5, 4\), "
                                        r"now \(7, 4\)\); run again once the files are written$"):
        get_teacher("npy")(folder, cache_dir=str(tmp_path / "cache"))
    assert not list((tmp_path / "cache").iterdir())  # no joined file, and no half-written one
    monkeypatch.setattr(np, "load", load)
    assert get_teacher("npy")(folder, cache_dir=str(tmp_path / "cache")).embeddings.shape == (17, 4)


def test_a_damaged_file_of_its_own_format_gets_the_reader_s_reason_not_a_format(tmp_path):
    from atlas_plugins import get_teacher
    from atlas_plugins.formats import content_kind, unreadable

    (tmp_path / "t.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    assert content_kind(tmp_path / "t.npy") == ("a NumPy .npy file", ".npy")
    assert unreadable(tmp_path / "t.npy", "NumPy file", (".npy",), ValueError("\nbad header\nmore")) == \
        f"{tmp_path / 't.npy'}: not a readable NumPy file (ValueError: bad header)"
    (tmp_path / "t.txt").write_text("1,2,3\n")
    assert content_kind(tmp_path / "t.txt") is None and content_kind(tmp_path / "missing") is None
    with pytest.raises(DataError, match=r"t.npy: not a readable NumPy file \(") as caught:
        get_teacher("npy")(tmp_path / "t.npy")
    assert "its bytes" not in str(caught.value)


def test_the_commands_for_quantized_and_binary_vectors_keep_their_geometry(tmp_path, monkeypatch):
    """Binary embeddings packed into bytes (uint8, or Cohere's int8 'binary') read as floats would be the bytes'
    values, a map of nothing; the command the refusal names unpacks them into +-1 floats, whose cosine is
    1 - 2 * hamming / D, and saves int8-quantized ones as floats.  ``encode`` answers the same."""
    from atlas_plugins import load_student

    monkeypatch.chdir(tmp_path)
    bits = np.load(EXAMPLE_NPY)[:300] > 0
    hamming = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    cohere_binary = (np.packbits(bits, axis=1).astype(np.int16) - 128).astype(np.int8)  # ubinary - 128
    for name, packed in (("uint8", np.packbits(bits, axis=1)), ("int8", cohere_binary)):
        np.save("x.npy", packed)
        refused = run_cli(write_pipeline(tmp_path, teacher='path = "x.npy"'), "--dry-run")
        one_error_line(refused, f"unsupported dtype {name}")
        command = refused.stderr.split("unpack binary ones into +-1 floats: ")[1].strip()
        exec(command, {"numpy": np, "x": np.load("x.npy")})
        v = validate_teacher(TeacherData(np.load("vectors.npy"), source="vectors.npy")).embeddings
        assert v.shape == (300, 384) and v.dtype == np.float64
        cos = (v @ v.T) / 384
        np.testing.assert_allclose(cos, 1 - 2 * hamming / 384, atol=1e-12)
    quantized = np.round(np.load(EXAMPLE_NPY)[:300] * 400).clip(-128, 127).astype(np.int8)
    np.save("x.npy", quantized)
    refused = run_cli(write_pipeline(tmp_path, teacher='path = "x.npy"'), "--dry-run")
    command = refused.stderr.split("save quantized ones as floats, ")[1].split(", and unpack")[0]
    exec(command, {"x": quantized, "numpy": np})
    np.testing.assert_array_equal(np.load("vectors.npy"), quantized.astype(np.float32))
    run_cli(write_pipeline(tmp_path, teacher=f'path = "{EXAMPLE_NPY}"', epochs=1, stages=1))
    with pytest.raises(DataError, match=r"encode: the vectors are uint8, expected floats .*; uint8 rows are binary"):
        load_student(tmp_path / "run").encode(np.packbits(bits, axis=1))


def test_the_command_for_a_faiss_index_gives_its_vectors_back(tmp_path, monkeypatch):
    """A FAISS index holds the vectors a user added to it; the command the refusal names saves them as the .npy
    a teacher reads, in their order, for flat, HNSW and IVF indexes."""
    faiss = pytest.importorskip("faiss")
    x = np.load(EXAMPLE_NPY)[:300]
    flat = faiss.IndexFlatIP(x.shape[1])
    hnsw = faiss.IndexHNSWFlat(x.shape[1], 16)
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(x.shape[1]), x.shape[1], 4)
    ivf.train(x)
    monkeypatch.chdir(tmp_path)
    for name, index in (("flat", flat), ("hnsw", hnsw), ("ivf", ivf)):
        index.add(x)
        faiss.write_index(index, f"{name}.faiss")
        refused = run_cli(write_pipeline(tmp_path, teacher=f'path = "{name}.faiss"'), "--dry-run")
        one_error_line(refused, f"{name}.faiss: is a FAISS index")
        command = refused.stderr.split("save its vectors as .npy: ")[1].split(" (a compressed")[0]
        exec(f"import faiss, numpy\npath = '{name}.faiss'\n" + command.replace("; ", "\n"))
        assert np.array_equal(np.load("vectors.npy"), x), name


def test_two_local_models_with_the_same_folder_name_do_not_share_a_cache(tmp_path):
    from builtin_plugins.text import _model_fingerprint

    for owner, blob in (("a", b"1" * 10), ("b", b"2" * 11)):
        folder = tmp_path / owner / "model"
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(blob)
    assert _model_fingerprint(str(tmp_path / "a" / "model")) != _model_fingerprint(str(tmp_path / "b" / "model"))
    assert _model_fingerprint("all-MiniLM-L6-v2") == ["all-MiniLM-L6-v2"]


def test_large_finite_values_whose_sum_overflows_are_not_an_error():
    from atlas_plugins.teacher import RowScan, check_finite

    emb = np.ones((4, 3), dtype=np.float32)
    emb[2] = [3e38, 3e38, -1.0]  # finite, but the row sum overflows float32
    check_finite(TeacherData(emb, source="t.npy"), 0, torch.from_numpy(emb))
    RowScan(TeacherData(emb, source="t.npy")).see(0, torch.from_numpy(emb))
    emb[3, 1] = -np.inf
    with pytest.raises(DataError, match="t.npy: row 3 contains NaN or Inf"):
        check_finite(TeacherData(emb, source="t.npy"), 0, torch.from_numpy(emb))
    with pytest.raises(DataError, match="t.npy: row 3 contains NaN or Inf"):
        RowScan(TeacherData(emb, source="t.npy")).see(0, torch.from_numpy(emb))


def test_a_small_memory_mapped_file_is_copied_into_memory_a_large_one_is_not(tmp_path, monkeypatch):
    from atlas_plugins import teacher as teacher_module
    from atlas_plugins.teacher import in_memory_if_small

    np.save(tmp_path / "t.npy", np.load(EXAMPLE_NPY)[:100])
    small = in_memory_if_small(TeacherData(np.load(tmp_path / "t.npy", mmap_mode="r"), labels=list(range(100))))
    os.truncate(tmp_path / "t.npy", 128)  # the copy does not read the file again (a map would: SIGBUS)
    assert not isinstance(small.embeddings, np.memmap) and small.labels == list(range(100))
    assert np.array_equal(small.rows([99, 0]).numpy(), np.load(EXAMPLE_NPY)[[99, 0]])
    np.save(tmp_path / "t.npy", np.load(EXAMPLE_NPY)[:100])
    monkeypatch.setattr(teacher_module, "MAP_BUDGET_BYTES", 0)  # now "large": read with pread, left mapped
    assert isinstance(in_memory_if_small(TeacherData(np.load(tmp_path / "t.npy", mmap_mode="r"))).embeddings,
                      np.memmap)
    tensor = torch.zeros(4, 3)
    assert in_memory_if_small(TeacherData(tensor)).embeddings is tensor


def test_a_large_file_the_map_reads_stays_mapped(tmp_path, monkeypatch):
    """A file read through its map because pread cannot (Fortran order) is never copied whole, whatever its size."""
    from atlas_plugins import teacher as teacher_module
    from atlas_plugins.teacher import in_memory_if_small

    np.save(tmp_path / "f.npy", np.asfortranarray(np.load(EXAMPLE_NPY)[:100]))
    monkeypatch.setattr(teacher_module, "MAP_BUDGET_BYTES", 1000)
    data = in_memory_if_small(TeacherData(np.load(tmp_path / "f.npy", mmap_mode="r")))
    assert isinstance(data.embeddings, np.memmap) and not data.embeddings.flags.c_contiguous


LAYOUTS = {
    "column-major .npy": lambda x, path: np.save(path.with_suffix(".npy"), np.asfortranarray(x)),
    "big-endian .npy": lambda x, path: np.save(path.with_suffix(".npy"), x.astype(">f4")),
    "transposed tensor .pt": lambda x, path: torch.save({"embeddings": torch.from_numpy(x).T.contiguous().T},
                                                        path.with_suffix(".pt")),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("budget", [None, 0], ids=["copied-into-memory", "read-from-the-file"])
def test_every_layout_of_float32_rows_reads_as_the_same_teacher(tmp_path, monkeypatch, layout, budget):
    """Each was a traceback ("ndarray is not C-contiguous") or refused as "dtype >f4" before: now the rows,
    the chunks and the digest (what checkpoints and the graph cache are keyed by) equal a plain array's."""
    import warnings

    from atlas_plugins import teacher as teacher_module
    from atlas_plugins.teacher import in_memory_if_small, teacher_digest
    from builtin_plugins.teachers import npy, pt

    if budget is not None:
        monkeypatch.setattr(teacher_module, "MAP_BUDGET_BYTES", budget)
    x = np.load(EXAMPLE_NPY)[:300]
    LAYOUTS[layout](x, tmp_path / "t")
    loader = pt if layout.endswith(".pt") else npy
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        data = in_memory_if_small(validate_teacher(loader(next(tmp_path.glob("t.*")))))
    plain = TeacherData(x)
    idx = np.array([299, 3, 4, 5, 3, 120, 0])
    assert torch.equal(data.rows(idx), plain.rows(idx))
    assert torch.equal(torch.cat([b for _, b in data.chunks(64)]), torch.from_numpy(x))
    assert teacher_digest(data) == teacher_digest(plain)
    slow = [str(w.message) for w in seen if "column-major" in str(w.message)]
    assert len(slow) == (layout == "column-major .npy" and budget == 0)  # only a file read in place is slow
    assert all("numpy.save(NEW, numpy.ascontiguousarray(" in m for m in slow)


def test_a_column_major_teacher_trains_like_a_row_major_one(tmp_path):
    np.save(tmp_path / "c.npy", np.load(EXAMPLE_NPY)[:400])
    np.save(tmp_path / "f.npy", np.asfortranarray(np.load(EXAMPLE_NPY)[:400]))
    for name in ("c", "f"):
        path = write_pipeline(tmp_path, teacher=f'path = "{name}.npy"', stages=1, epochs=1, output=f"run-{name}",
                              name=f"{name}.toml")
        assert run_cli(path, "--quiet").returncode == 0
    assert same_weights(weights(tmp_path / "run-c"), weights(tmp_path / "run-f"))


@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
def test_a_byte_order_mark_is_not_part_of_the_first_text(tmp_path, suffix):
    """Windows editors and spreadsheet exports start UTF-8 files with one: a .jsonl file was refused at line 1
    ("expected a JSON object") and a .txt file's first text began with U+FEFF."""
    from builtin_plugins.teachers import read_texts

    lines = [json.dumps({"text": t, "label": "a"}) if suffix == ".jsonl" else t for t in ("café", "b")]
    (tmp_path / f"m{suffix}").write_text("\n".join(lines) + "\n", encoding="utf-8-sig")
    assert read_texts(tmp_path / f"m{suffix}")[0] == ["café", "b"]


def test_a_nan_label_is_no_label(tmp_path):
    """``json.dumps`` writes pandas' missing label as NaN: such rows were a class of labels each its own
    (NaN equals nothing), scored and drawn; now they are unlabelled, like null."""
    np.save(tmp_path / "t.npy", np.load(EXAMPLE_NPY)[:4])
    rows = [{"text": "a", "label": "x"}, {"text": "b", "label": float("nan")}, {"text": "c", "label": None},
            {"text": "d", "label": np.float64("nan")}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    from builtin_plugins.teachers import npy

    assert validate_teacher(npy(tmp_path / "t.npy", meta=str(tmp_path / "m.jsonl"))).labels == ["x", None, None, None]


def test_labels_of_mixed_types_are_one_label_per_text(tmp_path):
    """A meta file written by hand or by two tools holds 3 and "3": map.parquet and map.html showed them as one
    label, while scatter.png drew two legend entries and the k-NN accuracy counted a vote for 3 against "3"."""
    from atlas_plugins.evaluation import knn_accuracy
    from builtin_plugins.teachers import npy

    np.save(tmp_path / "t.npy", np.load(EXAMPLE_NPY)[:4])
    labels = [3, "3", None, "x"]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"text": t, "label": lab}) + "\n"
                                              for t, lab in zip("abcd", labels)))
    data = validate_teacher(npy(tmp_path / "t.npy", meta=str(tmp_path / "m.jsonl")))
    assert data.labels == ["3", "3", None, "x"]
    z = torch.tensor([[0.0], [0.1], [5.0], [9.0]])
    assert knn_accuracy(z, data.labels, k=1) == 2 / 3 and knn_accuracy(z, labels, k=1) == 0  # each other's nearest
    np.save(tmp_path / "u.npy", np.load(EXAMPLE_NPY)[:2])
    (tmp_path / "n.jsonl").write_text('{"text": "a", "label": 3}\n{"text": "b", "label": 4}\n')
    assert validate_teacher(npy(tmp_path / "u.npy", meta=str(tmp_path / "n.jsonl"))).labels == [3, 4]  # one type


def test_a_blank_line_of_a_text_meta_file_is_its_row_s_empty_text(tmp_path):
    """Line i of a .txt meta file is row i: a row without a text is a blank line there. Blank lines were
    skipped, so such a file was refused ("4 texts for the 6 rows") though it held a line per row."""
    from builtin_plugins.teachers import npy

    np.save(tmp_path / "t.npy", np.load(EXAMPLE_NPY)[:6])
    (tmp_path / "m.txt").write_text("\nopen a file\n\nclose it\r\nread it\nwrite it\n\n\n")  # the last 2: no rows
    assert validate_teacher(npy(tmp_path / "t.npy", meta=str(tmp_path / "m.txt"))).texts == [
        "", "open a file", "", "close it", "read it", "write it"]
    (tmp_path / "m.txt").write_text("\nopen a file\n\nclose it\nread it\n")
    with pytest.raises(DataError, match=r"m\.txt: 5 texts for the 6 rows of .*t\.npy; a meta file holds one line per"):
        npy(tmp_path / "t.npy", meta=str(tmp_path / "m.txt"))


def test_json_lines_of_texts_leave_out_rows_without_a_text(tmp_path):
    """An empty, blank, null or NaN text in a .jsonl of texts to embed is no text, as in a table: an empty one
    was embedded (the vector of nothing, a row on the map) and null was refused ('text' must be a string)."""
    from builtin_plugins.teachers import read_texts

    (tmp_path / "t.jsonl").write_text('{"text": "parse a file", "label": "io"}\n{"text": ""}\n'
                                      '{"text": null, "label": "x"}\n{"text": NaN}\n{"text": "  "}\n'
                                      '{"text": "open a socket", "label": "net"}\n')
    assert read_texts(tmp_path / "t.jsonl") == (["parse a file", "open a socket"], ["io", "net"])
    (tmp_path / "t.jsonl").write_text('{"text": ""}\n{"text": null}\n')
    with pytest.raises(DataError, match=r"t\.jsonl: no texts found$"):
        read_texts(tmp_path / "t.jsonl")
    (tmp_path / "t.jsonl").write_text('{"text": 7}\n')
    with pytest.raises(DataError, match=r"t\.jsonl:1: 'text' must be a string, got int$"):
        read_texts(tmp_path / "t.jsonl")


def test_half_an_emoji_in_json_texts_labels_and_ids_is_mended_and_named(tmp_path):
    """JSON's "\\ud83d" alone (an emoji cut in two by a tool that counts UTF-16 units) decodes to a lone
    surrogate, which no file, tokenizer or browser takes: a run trained, then failed writing map.parquet with a
    traceback. Each such half is now U+FFFD, with a warning naming the first."""
    from builtin_plugins.teachers import npy, read_texts

    (tmp_path / "t.jsonl").write_text('{"text": "cut \\ud83d here", "label": "a"}\n{"text": "whole \\ud83d\\ude00"}\n')
    with pytest.warns(UserWarning, match=r"^atlas: .*t\.jsonl: 1 text holds half of a UTF-16 pair \(an emoji cut "
                                         r"in two\?\), which is not Unicode text \(the first: texts\[0\] = "
                                         r"'cut \\ud83d here'\); each such half is shown as U\+FFFD$"):
        assert read_texts(tmp_path / "t.jsonl")[0] == ["cut \ufffd here", "whole \U0001f600"]  # a pair is an emoji
    np.save(tmp_path / "t.npy", np.load(EXAMPLE_NPY)[:3])
    (tmp_path / "m.jsonl").write_text('{"text": "a", "label": "x\\udfff"}\n{"text": "b", "label": "y\\udfff"}\n'
                                      '{"text": "c", "label": 3}\n')
    with pytest.warns(UserWarning, match=r"2 labels hold half of a UTF-16 pair .* labels\[0\] = 'x\\udfff'"):
        data = validate_teacher(npy(tmp_path / "t.npy", meta=str(tmp_path / "m.jsonl")))
    assert data.labels == ["x\ufffd", "y\ufffd", "3"] and data.texts == ["a", "b", "c"]
    with pytest.warns(UserWarning, match=r"1 id holds half"):
        mended = validate_teacher(TeacherData(np.eye(3, dtype=np.float32), ids=["\udc00", "b", 7]))
    assert mended.ids == ["\ufffd", "b", 7]


def test_atlas_run_maps_texts_with_half_an_emoji(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="needs the 'parquet' extra")
    np.save(tmp_path / "t.npy", np.load(EXAMPLE_NPY)[:300])
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"text": f"t{i}"}) + "\n" if i != 5 else
                                              '{"text": "cut \\ud800 here"}\n' for i in range(300)))
    done = run_cli(write_pipeline(tmp_path, teacher='path = "t.npy"\nmeta = "m.jsonl"', stages=1, epochs=1), "--quiet")
    assert done.returncode == 0, done.stderr
    assert "1 text holds half of a UTF-16 pair" in done.stderr
    assert pq.read_table(tmp_path / "run" / "map.parquet").column("text").to_pylist()[5] == "cut \ufffd here"


def test_texts_and_labels_from_a_spreadsheet_table(tmp_path):
    """A .csv (or .tsv) of texts as a spreadsheet saves it: a header line, quoted cells that hold commas and
    newlines, a byte-order mark; rows without a text are skipped, but keep their place in a meta file."""
    from builtin_plugins.teachers import npy, read_texts

    (tmp_path / "t.csv").write_text('id,text,label\n1,"parse a file, fast",io\n2,,x\n3,"open a\nsocket",net\n',
                                    encoding="utf-8-sig")
    assert read_texts(tmp_path / "t.csv") == (["parse a file, fast", "open a\nsocket"], ["io", "net"])
    np.save(tmp_path / "e.npy", np.load(EXAMPLE_NPY)[:3])
    assert validate_teacher(npy(tmp_path / "e.npy", meta=str(tmp_path / "t.csv"))).texts == [
        "parse a file, fast", "", "open a\nsocket"]
    (tmp_path / "t.tsv").write_text("content\ttopic\nparse a file\tio\n")
    assert read_texts(tmp_path / "t.tsv", text_field="content", label_field="topic") == (["parse a file"], ["io"])
    for body, message in [
        ("content\tlabel\nx\ty\n", r"t.tsv: no column 'text'; its columns are: content, label; text_column in "
                                   r"\[teacher\] names another column"),
        (b"text\ncaf\xe9\n", r't.tsv: not UTF-8 text; save the text file as UTF-8 \("CSV UTF-8" in a spreadsheet\)'),
        ('text\n"open a socket\n', r"t.tsv: not a valid text file after line \d+ \(.*; a stray or unclosed quote\?\)"),
        ("", "t.tsv: empty; a text file starts with a line naming its columns"),
        ("text\tlabel\nhello\tworld\tgreeting\n",  # an unquoted tab in a text: its end became the label
         r't.tsv:2: 3 cells, the header names 2; quote a text that holds a tab \("like, this"\)'),
    ]:
        (tmp_path / "t.tsv").write_bytes(body if isinstance(body, bytes) else body.encode())
        with pytest.raises(DataError, match=message):
            read_texts(tmp_path / "t.tsv")


def test_a_text_file_of_vectors_is_refused_not_embedded(tmp_path, monkeypatch):
    """``numpy.savetxt`` writes vectors as lines of numbers, and GloVe and word2vec write a word, then its
    numbers: given as texts, each line was embedded as a string of digits, in silence. Now one line says what
    the file looks like and how to save it as a teacher reads it; the NumPy command it names does that."""
    from builtin_plugins.teachers import npy, read_texts

    x = np.load(EXAMPLE_NPY)[:20]
    np.save(tmp_path / "x.npy", x)
    np.savetxt(tmp_path / "v.txt", x)
    np.savetxt(tmp_path / "c.txt", x, delimiter=",")
    words = "".join(f"w{i} " + " ".join(f"{v:.6f}" for v in row) + "\n" for i, row in enumerate(x))
    (tmp_path / "glove.txt").write_text(words)
    (tmp_path / "w2v.txt").write_text(f"{len(x)} {x.shape[1]}\n" + words)
    cases = {
        "v.txt": "v.txt:1: holds 384 numbers, not a text: it looks like vectors (numpy.savetxt writes them so), "
                 "which a teacher reads from .npy: numpy.save('vectors.npy', numpy.loadtxt('v.txt', ndmin=2))",
        "c.txt": "c.txt:1: holds 384 numbers, not a text: it looks like vectors (numpy.savetxt writes them so), "
                 "which a teacher reads from .npy: numpy.save('vectors.npy', numpy.loadtxt('c.txt', ndmin=2, "
                 "delimiter=','))",
        "glove.txt": "glove.txt:1: is a word and 384 numbers, not a text: it looks like word vectors (GloVe's or "
                     "word2vec's text format), which a teacher reads from .npy, with the words as its meta file: "
                     "kv = gensim.models.KeyedVectors.load_word2vec_format('glove.txt', no_header=True); ",
        "w2v.txt": "w2v.txt:2: is a word and 384 numbers, not a text: it looks like word vectors (GloVe's or "
                   "word2vec's text format), which a teacher reads from .npy, with the words as its meta file: "
                   "kv = gensim.models.KeyedVectors.load_word2vec_format('w2v.txt', no_header=False); ",
    }
    monkeypatch.chdir(tmp_path)
    for name, message in cases.items():
        pipeline = write_pipeline(tmp_path, teacher=f'path = "{name}"', stages=1, epochs=1)
        for extra in ((), ("--dry-run",)):
            refused = run_cli(pipeline, "--quiet", *extra)
            one_error_line(refused, f"{tmp_path / message}")
            assert not (tmp_path / "run").exists()
        with pytest.raises(DataError, match="not a text"):  # as a meta file, too
            npy(tmp_path / "x.npy", meta=str(tmp_path / name))
        if name in ("v.txt", "c.txt"):  # the command the message gives
            exec("import numpy\n" + refused.stderr.split(": ")[-1].strip())
            assert np.allclose(np.load(tmp_path / "vectors.npy"), x, atol=1e-6)
    (tmp_path / "texts.txt").write_text("2024 2025\nPython 3.12.1 was released on 2023 12 07 at 10 00\n")
    assert read_texts(tmp_path / "texts.txt")[0][0] == "2024 2025"  # numbers among words stay texts


def test_vectors_stored_as_columns_are_named(tmp_path):
    """A ``(384, N)`` array holds its vectors as columns (Julia, R and MATLAB keep them so): it trained as 384
    rows of N values, in silence, or its meta file was "N texts for the 384 rows". A warning (an embedding
    model's width as the row count) and the meta file's message now say how to turn it."""
    x = np.load(EXAMPLE_NPY)[:600]
    np.save(tmp_path / "t.npy", x.T)
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"text": f"t{i}"}) + "\n" for i in range(600)))
    turn = ("if each of the 600 columns is one vector, save the rows instead: numpy.save('vectors.npy', "
            "numpy.ascontiguousarray(numpy.load(FILE).T))")
    found = run_cli(write_pipeline(tmp_path, teacher='path = "t.npy"'), "--dry-run")
    assert found.returncode == 0 and found.stderr.startswith(
        f"atlas-run: warning: {tmp_path / 't.npy'}: 384 rows of 600 values; 384 is an embedding model's width and 600 "
        f"is not: {turn}\n"), found.stderr
    one_error_line(run_cli(write_pipeline(tmp_path, teacher='path = "t.npy"\nmeta = "m.jsonl"'), "--dry-run"),
                   f"m.jsonl: 600 texts for the 384 rows of {tmp_path / 't.npy'}; a meta file holds one line per row, "
                   f"in the same order; {turn}")
    np.save(tmp_path / "t.npy", x[:300])  # 300 rows of 384: rows, as they should be
    found = run_cli(write_pipeline(tmp_path, teacher='path = "t.npy"'), "--dry-run")
    assert found.returncode == 0 and "columns" not in found.stderr, found.stderr


def test_suffixes_are_read_whatever_their_case(tmp_path):
    """Windows and camera-style names (``META.JSONL``, ``X.NPZ``): a .JSONL meta file was read as lines of text
    (each row's text its whole JSON object) and an .NPZ as a .npy."""
    from builtin_plugins.teachers import npy

    x = np.load(EXAMPLE_NPY)[:3]
    np.savez(tmp_path / "x.npz", embeddings=x)
    (tmp_path / "x.npz").rename(tmp_path / "X.NPZ")
    (tmp_path / "META.JSONL").write_text("".join(json.dumps({"text": t, "label": "a"}) + "\n" for t in "pqr"))
    data = validate_teacher(npy(tmp_path / "X.NPZ", meta=str(tmp_path / "META.JSONL")))
    assert np.array_equal(data.embeddings, x) and data.texts == ["p", "q", "r"] and data.labels == ["a"] * 3


@pytest.mark.parametrize("header", [True, False])
def test_a_csv_of_vectors_is_told_how_to_make_the_npy_a_teacher_reads(tmp_path, header, monkeypatch):
    """A .csv is a table of texts; one of numbers got only "no column 'text'". The command the message gives
    is run here, and makes the rows."""
    from builtin_plugins.teachers import read_texts

    x = np.load(EXAMPLE_NPY)[:4]
    np.savetxt(tmp_path / "vectors.csv", x, delimiter=",", header=",".join(map(str, range(384))) if header else "",
               comments="")
    with pytest.raises(DataError, match="it looks like a table of vectors, which a teacher reads from .npy") as err:
        read_texts(tmp_path / "vectors.csv")
    command = str(err.value).split("reads from .npy: ")[1]
    monkeypatch.chdir(tmp_path)
    exec(command, {"numpy": np})  # the message's own command, on the file it names
    assert np.allclose(np.load(tmp_path / "vectors.npy"), x, atol=1e-6)


def test_a_bad_table_of_texts_stops_atlas_run_in_one_line_before_anything_is_written(tmp_path):
    """The text teacher's new inputs through the real command: exit 2, one line, no run folder."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    (tmp_path / "comma.csv").write_text("text,label\nhello, world,greeting\n")
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    (tmp_path / "d.jsonl").write_text('{"content": "parse a file"}\n')
    for teacher, message in [
        ('path = "comma.csv"', "comma.csv:2: 3 cells, the header names 2; quote a text that holds a comma"),
        ('path = "ints.parquet"', "ints.parquet: column 'text' holds int values; expected texts"),
        ('path = "comma.csv"\ntext_column = "body"',
         "comma.csv: no column 'body'; its columns are: text, label; text_column in [teacher] names another column"),
        ('path = "d.jsonl"\ntext_column = 3', "teacher.text_column must be"),
    ]:
        (tmp_path / "p.toml").write_text(f"[teacher]\n{teacher}\n[output]\ndir = \"run\"\n")
        one_error_line(run_cli(tmp_path / "p.toml", "--quiet"), message)
        assert not (tmp_path / "run").exists()

"""The built-in plugins, registered through the same hooks a third-party package uses."""

from atlas_plugins import hookimpl

from . import loggers, losses, schedules, students, tables, teachers, text


@hookimpl
def register_losses(register):
    register("mse", losses.mse, "MSE; relational on similarity matrices when dimensions differ")
    register("cosine", losses.cosine, "cosine distance; Pearson of similarity rows when dimensions differ")
    register("relational", losses.relational, "soft-neighbour KL of in-batch similarities (any dims)")
    register("kl", losses.kl, "Hinton KL between softened logits")
    register("combined", losses.combined, "alpha * distillation + (1 - alpha) * reconstruction")
    register("hierarchical", losses.hierarchical, "weighted sum of a base loss over student levels")
    register("neighbors", losses.neighbors, "calibrated neighbour KL for very low dimensions (distance kernel)")


@hookimpl
def register_schedules(register):
    register("linear", schedules.linear, "tau falls linearly from start to end")
    register("exponential", schedules.exponential, "tau falls geometrically from start to end")
    register("cosine", schedules.cosine, "tau follows half a cosine from start to end")


@hookimpl
def register_teachers(register):
    register("pt", teachers.pt, "torch checkpoint (tensor or dict), loaded with weights_only=True")
    register("npy", teachers.npy, "NumPy .npy (memory-mapped), .npz, or a folder of .npy parts (joined in order)")
    register("safetensors", teachers.safetensors, "safetensors file (optional extra)")
    register("parquet", tables.parquet, "Parquet file or folder of parts: embedding column, with text/label/id columns "
             "(optional extra)")
    register("arrow", tables.arrow, "Arrow IPC (Feather) file or Hugging Face dataset folder: embedding column, "
             "with text/label/id columns (the parquet extra)")
    register("jsonl", tables.jsonl, "JSON lines with an embedding (and text/label/id) per row, a vector per line, "
             "or OpenAI Batch output")
    register("json", tables.json_file, "a .json of vectors: an embedding API's answer ({\"data\": [...]}), or a "
             "list of vectors or rows")
    register("csv", tables.csv, "CSV/TSV table with an embedding column of lists (and text/label/id columns)")
    register("sentence-transformers", text.sentence_transformers,
             "embed texts (.txt, .jsonl, .csv, .tsv, .parquet, .feather, a Hugging Face dataset) with a local "
             "SentenceTransformer model (extra 'text')")


@hookimpl
def register_students(register):
    register("linear", students.linear, "one linear layer")
    register("mlp", students.mlp, "MLP with GELU hidden layers")
    register("hierarchical", students.hierarchical, "coarse dim + fine dim*dim levels")


@hookimpl
def register_loggers(register):
    register("jsonl", loggers.jsonl, "each epoch's metrics as a JSON line in metrics.jsonl")
    register("tensorboard", loggers.tensorboard, "scalars per step for TensorBoard (optional extra)")

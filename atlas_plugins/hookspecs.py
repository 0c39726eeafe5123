"""Hook specifications: the five things a plugin can add.

A plugin is a module (or any object) with functions decorated by
``atlas_plugins.hookimpl`` and named after one of the hooks below.  Each hook
receives a ``register`` callable; the plugin calls it once per object::

    register(name: str, obj, description: str = "")

Names are unique per kind; the plugin's distribution is recorded for
``atlas-run --list-plugins``.
"""

import pluggy

hookspec = pluggy.HookspecMarker("atlas")
hookimpl = pluggy.HookimplMarker("atlas")


@hookspec
def register_losses(register):
    """Register loss functions.

    :param register: call ``register(name, fn, description)``; ``fn(student,
        teacher, *, tau=1.0, reduction="mean", **params)`` takes a student
        tensor ``(B, Ds)`` (or a sequence of level tensors) and a teacher
        tensor ``(B, Dt)`` and returns a scalar, or a ``(B,)`` tensor when
        ``reduction="none"``.  τ is on the loss's own scale, so give ``fn`` a
        ``tau_range`` attribute, ``(start, end)``: the curriculum a pipeline
        file gets when its ``[schedule]`` gives no ``start`` or ``end``
        (without one, τ = 1.0).  A loss that applies another one sets
        ``tau_range`` to the name of its parameter that names that loss (e.g.
        ``"base"``) and follows its range.
    """


@hookspec
def register_schedules(register):
    """Register temperature schedules.

    :param register: call ``register(name, fn, description)``; ``fn(start,
        end, num_stages)`` returns a callable ``stage -> tau`` (a float > 0)
        for stages ``0 .. num_stages - 1``.
    """


@hookspec
def register_teachers(register):
    """Register teacher loaders.

    :param register: call ``register(name, fn, description)``; ``fn(path,
        **params)`` returns an ``atlas_plugins.TeacherData``.  Give ``fn`` a
        ``suffixes`` attribute (e.g. ``(".npy",)``) to be picked by file suffix
        when a pipeline names no loader.  A teacher that embeds texts itself
        also gives ``fn`` an ``embed(texts, **params)`` attribute returning a
        float32 array ``(N, D)``, and sets ``TeacherData.embed_params``: a
        trained student then embeds new texts the same way.
    """


@hookspec
def register_students(register):
    """Register student models.

    :param register: call ``register(name, fn, description)``; ``fn(input_dim,
        dim, **params)`` returns a ``torch.nn.Module`` mapping ``(B, input_dim)``
        to ``(B, dim)`` (or a tuple of level tensors, coarse first).  A student
        that reconstructs its input sets ``reconstructs = True`` and has
        ``decode(z) -> (B, input_dim)``; one whose (first-level) forward pass
        is a chain of layers may say so with ``linear_chain() -> [Linear,
        GELU, ...]`` (exports to SentenceTransformer use it).  A student that
        needs its own loss (several levels) gives ``fn`` a ``default_loss``
        attribute, a ``[loss]`` table such as ``{"name": "hierarchical"}``:
        a pipeline file whose ``[loss]`` names no loss uses it.
    """


@hookspec
def register_loggers(register):
    """Register loggers (``[output] loggers = ["jsonl", ...]``).

    :param register: call ``register(name, fn, description)``; ``fn(path,
        **params)`` returns a logger, where ``path(rel)`` gives a file path
        inside the run folder that the run owns (refused through a symbolic
        link) and ``params`` are the keys of the logger's table in the list
        (``{ name = "wandb", project = "maps" }``).  The
        logger has ``log(metrics)``, called with each epoch's metrics (a dict:
        ``stage``, ``epoch``, ``step``, ``tau``, ``train_loss``, ...), and may
        have ``start(info)`` (``config``, ``run_dir`` and, on resume, the
        earlier epochs' ``metrics``) and ``end(summary)`` (``status``:
        completed, interrupted or failed; ``report`` when there is one).
        ``fn`` must not write anything: it runs on ``--dry-run`` too.
    """

"""pretune: pretrain a transformer on unlabeled text, then fine-tune it on a few labels.

`pretune.run_pipeline`, `pretune.load` and `pretune.Model` are the Python API (`pretune.api`), imported on first use
so that `import pretune` stays fast. (`pretune.run` is the package of the `pretune run` command.)"""

__version__ = "0.1.0"

_API = ("run_pipeline", "load", "Model")


def __getattr__(name: str):
    if name in _API:
        from pretune import api

        return getattr(api, name)
    raise AttributeError(f"module 'pretune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return [*globals(), *_API]

"""mliy-spawner: each JupyterHub server on its own EC2 instance, as a CloudFormation stack."""

__version__ = "0.1.0"


def __getattr__(name):
    # Import lazily, so `import mliy_spawner` (for example by the pricing CLI or the
    # hub service) does not pull in JupyterHub's spawner machinery.
    if name == "MLiySpawner":
        from .spawner import MLiySpawner

        return MLiySpawner
    if name == "MLiyAuthenticator":
        from .auth import MLiyAuthenticator

        return MLiyAuthenticator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["MLiySpawner", "MLiyAuthenticator", "__version__"]

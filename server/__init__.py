"""`vlm-serve`: an OpenAI-compatible REST endpoint over `vlm_edge.edge` (FastAPI + uvicorn).

    from vlm_edge.server import ServerConfig, create_app
    app = create_app(ServerConfig("engine/"))
"""

__all__ = ["ServerConfig", "create_app"]


def __getattr__(name: str):
    """`ServerConfig` and `create_app` load FastAPI on first use (so `vlm-serve --help` needs none);
    without the serve extra the error names it."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from vlm_edge.common.extras import require

    require("fastapi", "vlm_edge.server")
    from . import app

    return getattr(app, name)

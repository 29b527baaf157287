"""`vlm-serve`: an OpenAI-compatible REST endpoint over `vlm_edge.edge` (FastAPI + uvicorn).

    from vlm_edge.server import ServerConfig, create_app
    app = create_app(ServerConfig("engine/"))
"""

from .app import ServerConfig, create_app

__all__ = ["ServerConfig", "create_app"]

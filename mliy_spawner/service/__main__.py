"""``python -m mliy_spawner.service``: run the ``mliy`` service (JupyterHub starts it)."""

import asyncio
import logging
import signal
import sys

from ..logs import configure_logging
from .app import Settings, make_app
from .audit import purge_forever

log = logging.getLogger("mliy.service")

#: The largest request body accepted (bytes). Tornado reads a body before any handler
#: runs, so without this anyone who can reach the service could make it buffer 100 MB
#: (tornado's default) per request; a progress report is well under 1 KB.
MAX_BODY_SIZE = 64 * 1024


async def serve(settings):
    app = make_app(settings)
    host, port = settings.listen
    server = app.listen(port, address=host, xheaders=True, max_body_size=MAX_BODY_SIZE)
    log.info("mliy service listening on %s:%s under %s", host, port, settings.prefix)
    store = app.mliy_context.store
    purging = asyncio.create_task(purge_forever(store, settings.audit_retention_days))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("mliy service stopping")
    server.stop()
    purging.cancel()
    store.close()


def main(argv=None):
    logging.basicConfig(
        level=logging.INFO,
        format="[%(levelname)1.1s %(asctime)s %(name)s] %(message)s",
        stream=sys.stderr,
    )
    # tornado's own access and application logs would show request URIs; ours show paths
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    try:
        settings = Settings.from_env()
        configure_logging(settings.log_levels, settings.log_dir or None)
    except ValueError as e:
        log.error("cannot start the mliy service: %s", e)
        return 2
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())

def _connect():
    raise RuntimeError("boom: the directory is down")


_connect()

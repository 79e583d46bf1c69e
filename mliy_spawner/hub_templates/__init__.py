"""JupyterHub page templates that show money: the home page and the spawn-pending page.

:func:`mliy_spawner.service.configure_service` adds this folder to
``c.JupyterHub.template_paths`` (after the admin's own folders). Each template extends
JupyterHub's own (``templates/<name>``) and adds to it, so a hub upgrade keeps working;
with another spawner class they render JupyterHub's page unchanged.
"""

from pathlib import Path

#: the folder to list in ``c.JupyterHub.template_paths``
PATH = str(Path(__file__).parent)

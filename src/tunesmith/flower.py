"""Flower's apps for a deployed federation: ``server_app`` runs ``tunesmith federate`` inside
the SuperLink, ``client_app`` trains on each SuperNode's own file. The README's "Federated
fine-tuning" section shows the commands (a SuperLink, one SuperNode per site, ``flwr run``).

The app's run config (``[tool.flwr.app.config]`` of the Flower App's pyproject.toml, or
``flwr run --run-config``) names the tunesmith config on the server's machine (``config``) and,
optionally, ``--set`` overrides separated by semicolons (``set``). Each SuperNode's node config
gives its ``partition-id`` (0 to federated.clients - 1) and its ``data`` file (the run's
columns). The server's data.train only fixes the label space and columns; it is not trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith import api
from tunesmith.config import load_config
from tunesmith.runs import atomic_write, claim_output
from tunesmith.study.federated import check_deployed
from tunesmith.study.federated_client import client_app as _make_client_app

APP = """# A Flower App for a deployed tunesmith federation (tunesmith federate --flower-app).
# Start a SuperLink, one SuperNode per site, then: flwr run THIS_FOLDER SUPERLINK --stream
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "tunesmith-federation"
version = "1.0.0"
description = "A tunesmith federated fine-tuning run"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "tunesmith"

[tool.flwr.app.components]
serverapp = "tunesmith.flower:server_app"
clientapp = "tunesmith.flower:client_app"

[tool.flwr.app.config]
config = {config}
set = {overrides}
"""

client_app = _make_client_app()
"""The ClientApp every SuperNode runs (``tunesmith.flower:client_app``)."""


def _server_app():
    from flwr.serverapp import ServerApp

    app = ServerApp()

    @app.main()
    def main(grid, context) -> None:
        settings = context.run_config
        overrides = [o.strip() for o in str(settings.get("set", "")).split(";") if o.strip()]
        api.federate(str(settings["config"]), overrides=overrides, grid=grid)

    return app


server_app = _server_app()
"""The ServerApp the SuperLink runs (``tunesmith.flower:server_app``)."""


def write_app(folder: str | Path, config: str | Path, overrides: list[str]) -> Path:
    """Writes ``folder/pyproject.toml``: the Flower App that runs ``config`` (checked first, with
    ``overrides``) as a deployed federation. ``folder`` must be new or empty.

    Raises:
        TunesmithError: a bad config or value, or a folder that holds something.
    """
    check_deployed(load_config(config, overrides))  # a mistake shows here, not in the SuperLink's log
    folder = Path(folder)
    claim_output(folder, kind="dir", what="--flower-app")
    folder.mkdir(parents=True, exist_ok=True)
    quoted = [json.dumps(str(Path(config).resolve())), json.dumps(";".join(overrides))]
    atomic_write(folder / "pyproject.toml", APP.format(config=quoted[0], overrides=quoted[1]))
    return folder / "pyproject.toml"

"""Pushy Appliance: a Chef Push Jobs server, node agent and operator CLI.

The layer rule. A module may import only from its own layer or the layers below it; never
upward. ``tests/test_layers.py`` checks this on the source.

1. Pure (no I/O, no trio tasks): ``errors``, ``config``, ``chef_auth``, ``protocol``,
   ``sse``, ``model`` (identity), ``jobs.status``, ``jobs.events``, ``jobs.state``,
   ``jobs.machine``, ``jobs.step``, ``jobs.ending``, ``jobs.record``, ``jobs.validation``,
   ``jobs.model``, ``nodes.model``, ``agent.whitelist``.
2. Resources: ``store`` (files), ``hub`` (event fan-out), ``feeds`` (topic names, job-feed
   publishing, the org feed's log), ``tls`` (key and certificate files),
   ``lockfile`` (one process per directory), ``agent.state`` (the agent's state file).
3. Engines: ``db`` (store + models), ``nodes.registry``, ``nodes.sendroom``, ``nodes.link``
   (the node↔job link), ``jobs.runner``, ``jobs.retention``, ``agent.executor`` and
   ``agent.runtime`` (the node side's engine).
4. Adapters: ``http`` (the REST API and feeds), ``nodesock`` (the node WebSocket listener),
   ``client`` (the signed HTTP client of the CLI and agent), ``agent.connection``.
5. ``appliance`` (``serve()``: the root nursery), ``bootstrap``, ``agent.run_agent``.
6. ``cli`` (argument parsing and printing; the only place that prints).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]

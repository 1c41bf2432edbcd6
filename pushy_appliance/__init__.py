"""Pushy Appliance: a Chef Push Jobs server, node agent and operator CLI.

The layer rule. A module may import only from its own layer or the layers below it; never
upward. Tests pin nothing of this mechanically, reviews do.

1. Pure (no I/O, no trio tasks): ``errors``, ``config``, ``names``, ``chef_auth``,
   ``protocol``, ``sse``, ``model``, ``jobs.machine``, ``nodes.machine``, ``validation``.
2. Resources: ``store`` (files), ``hub`` (event fan-out), ``tls`` (key and certificate files).
3. Engines: ``db`` (store + model), ``nodes.registry``, ``jobs.runner``.
4. Adapters: ``http`` (the REST API and feeds), ``nodesock`` (the node WebSocket listener),
   ``agent`` (the node side), ``client`` (the signed HTTP client used by the CLI and agent).
5. ``appliance`` (``serve()``: the root nursery) and ``bootstrap``.
6. ``cli`` (argument parsing and printing; the only place that prints).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]

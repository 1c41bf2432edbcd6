"""Pushy Appliance: a Chef Push Jobs server, node agent and operator CLI.

The layer rule. A module may import only from its own layer or the layers below it; never
upward. A package's ``__init__`` imports nothing above the lowest layer of its submodules
(importing a submodule runs it first); no module imports another package's private
``_module``; no import cycles, function-local imports included. ``tests/test_layers.py`` checks
all of this on the source, and that the pure layer does no I/O (no file, environment, clock,
network, subprocess, task or thread); ``tests/test_exports.py`` pins each package's ``__all__``.

1. Pure (no I/O, no trio tasks): ``errors``, ``config`` (with ``config_base``, the loader,
   and ``config_agent``), ``chef_auth``, ``protocol``, ``sse``, ``model`` (identity),
   ``auth`` (request authentication and authorization over the identity model),
   ``websession`` (the dashboard's login links and sessions), ``jsonbody`` (the JSON body
   policy), ``jobfile`` (a job's file payload), ``urls`` (public URLs from the request's
   Host), ``replay`` (refusing replayed signatures), ``paths`` (the normal form of request
   paths), ``jobs.status``, ``jobs.events``, ``jobs.state``, ``jobs.machine``, ``jobs.step``,
   ``jobs.ending``, ``jobs.record``, ``jobs.validation``, ``jobs.build`` (a new job),
   ``jobs.model`` (with ``jobs.output``, ``jobs.compact``, ``jobs.details``,
   ``jobs.history``), ``nodes.model``, ``agent.whitelist``, ``search`` (the query language and
   matcher), ``facts`` (the node facts' names, config and size limit), ``agent.facts_parse``
   (facts from the system's files), ``agent.failover`` (which server the agent tries next,
   and when), ``cluster_secrets`` (the files a cluster's data directories share).
2. Resources: ``store`` (files), ``cluster`` (leases, node routes and mail between the
   appliances sharing a PostgreSQL store), ``hub`` (event fan-out), ``feeds`` (topic names, job-feed
   publishing, the org feed's log), ``tls`` (key and certificate files), ``lockfile`` (one
   process per directory), ``fsutil`` (durable file writes), ``agent.state`` (the agent's
   state file), ``config_files`` (the configuration file and the default data directory),
   ``frame_reader`` (the read loop of both ends of a node connection), ``handshakes`` (the
   cap on a listener's connections still in their handshake), ``agent.facts`` (runs ohai,
   reads the system's files).
3. Engines: ``db`` (store + models, with ``db_archive``: the models' archive),
   ``nodes.registry``, ``nodes.sendroom``, ``nodes.link`` (the node↔job link),
   ``jobs.runner`` (with ``jobs.live``, ``jobs.effects`` and ``jobs.cluster_port``, its side
   of a cluster), ``jobs.retention``,
   ``agent.executor``, ``agent.jobspec``, ``agent.procgroup``, ``agent.outstream`` (what of a
   running job's output each connection has had) and ``agent.runtime`` (the node side's
   engine);
   ``services`` (the engines of one running server, handed to the adapters).
4. Adapters: ``http`` (the REST API and feeds), ``nodesock`` (the node WebSocket listener),
   ``client`` (the signed HTTP client of the CLI and agent), ``agent.connection``.
5. ``appliance`` (``serve()``: the root nursery), ``bootstrap``, ``agent.main`` (``run_agent``),
   ``sandbox`` (``run_sandbox()``: the server and local agents in one process).
6. ``cli`` (argument parsing and printing; the only place that prints).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]

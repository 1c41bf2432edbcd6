"""The node agent: keeps one WebSocket to the appliance and runs the commands jobs push to it.

Modules, from the bottom layer up:

* ``whitelist`` — which commands a job may run and what actually runs (pure).
* ``state`` — the state file: the held job and the results not yet acknowledged.
* ``jobspec`` — what a job runs, and its user, directory, environment and file.
* ``procgroup`` — a job's process group: signalling it, whether it still runs, ending one
  left by an earlier run of the agent.
* ``executor`` — runs one job's process: output capture, timeout and abort of the whole
  process group.
* ``runtime`` — the job lifecycle (idle → committed → running → idle) and the glue to the
  executor; :class:`~pushy_appliance.agent.runtime.AgentRuntime`.
* ``connection`` — config fetch, signed upgrade, hello/welcome, heartbeats, server-loss
  detection and reconnecting with backoff.
* ``main`` — :func:`~pushy_appliance.agent.main.run_agent` (what ``pushy agent`` runs) and
  :func:`~pushy_appliance.agent.main.connect_settings`.
* ``multi`` — a test helper running many agents in one process.

This package module imports nothing: importing the pure ``whitelist`` must not drag in the
connection and the HTTP client above it.
"""

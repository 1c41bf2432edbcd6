"""Push jobs: the pure job state machine and its vocabulary, request validation, the stored
model and (above them) the runner and the retention task.

Pure (layer 1 of ``pushy_appliance``: no I/O, no trio tasks):

* ``jobs.status``: job and node statuses, finished and live sets, the job document's
  buckets and nack reasons;
* ``jobs.events``: the machine's events (what happened) and effects (what to do);
* ``jobs.state``: one job's state and :func:`~.state.new_job`;
* ``jobs.machine``: ``transition(state, event) -> (state, effects)``, with ``jobs.ending``
  (how a job ends, late results) and ``jobs.step`` (one transition in progress);
* ``jobs.record``: the stored form of a state, and its checks;
* ``jobs.model``: the stored view of every job (what the API reads), over ``jobs.output``
  (one node's output and result), ``jobs.compact`` (compact node tables and event logs),
  ``jobs.details`` (a job's details and the blob they are archived as) and ``jobs.history``
  (the bounded cache of archived details);
* ``jobs.validation``: ``POST jobs`` bodies.

Engines (layer 3): ``jobs.runner`` drives the machine (feeds it events, stores each new state,
then performs the effects with ``jobs.effects``), with ``jobs.cluster_port`` (its side of a
cluster: the ``ClusterEngine``); ``jobs.retention`` purges jobs past
``jobs.retention_days``.
This package module imports nothing, so importing a pure submodule never drags in the
runner.
"""

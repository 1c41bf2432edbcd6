"""Push jobs: the pure job state machine, request validation and (above them) the runner.

``jobs.machine`` and ``jobs.validation`` are pure (layer 1 of ``pushy_appliance``): no I/O, no
trio tasks. ``jobs.runner`` (layer 3) drives the machine: it feeds it events, persists each new
state, then performs the effects. This package module imports nothing, so importing a pure
submodule never drags in the runner.
"""

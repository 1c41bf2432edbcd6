"""The node agent: keeps one WebSocket to the appliance and runs the commands jobs push to it.

Modules:

* ``whitelist`` — which commands a job may run and what actually runs (pure but ``load``).
* ``executor`` — runs one job's process: user, directory, environment, file, output capture,
  timeout and abort of the whole process group.
"""

"""Nodes on the server side.

* ``nodes.model`` (pure): stored node facts (last status change, facts, incarnation).
* ``nodes.registry``: live sessions, sending frames and the heartbeat ticker.
* ``nodes.sendroom``: a node socket's send buffer, and whether a frame fits in it now.
* ``nodes.link``: the node↔job link: node messages to jobs, which job holds which node,
  rehab, and whether a node is reachable or available.
"""

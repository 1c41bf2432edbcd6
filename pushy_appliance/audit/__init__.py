"""The audit log: who changed what through the API, refusals, and node events.

Pure (layer 1 of ``pushy_appliance``): ``audit.model`` (the stored entries, their records and
queries), ``audit.summary`` (what an entry says of a request's body, never a secret) and
``audit.refusals`` (how many refusals of one peer are recorded). Engines (layer 3):
``audit.recorder`` (refusals and node rehab, committed in batches) and ``audit.retention``
(purging entries past ``audit.retention_days``). This package module imports nothing.
"""

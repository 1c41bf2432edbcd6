"""Nodes on the server side: the registry of live sessions and stored node states."""

"""The world model shared by the world components: geometry, entities, behaviours, payloads.

Pure logic (numpy, no I/O): the orchestrator, the district servers, the swarm coordinator and
the agent scheduler wire it to the bus.
"""

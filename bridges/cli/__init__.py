"""The command line's client verbs (`scillm prove`, `scillm codeworld`, `scillm runs`).

A translator like the other doors: a file or a seed envelope in, a gRPC call to the mesh,
JSON lines and a progress bar out. Without a mesh at ``--target`` a verb runs against one
started in its own process, which the caller (`scillm.server.cli`, the composition root)
hands in as a `LocalMesh`; nothing here starts a server by itself.
"""

from ._mesh import LocalMesh, mesh_client

__all__ = ["LocalMesh", "mesh_client"]

"""A real pipeline-parallel chain of block servers (client-centric relaying) that validates the simulator."""

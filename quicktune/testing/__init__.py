"""Public testing helpers: real servers for tests and demos (see ``quicktune.testing.servers``)."""

from quicktune.testing.servers import MlflowServer, SeaweedS3, ServerError, free_port_pair

__all__ = ["MlflowServer", "SeaweedS3", "ServerError", "free_port_pair"]

"""The small error tree (after h11's LocalProtocolError / RemoteProtocolError).

Errors from outside (config, packets, API objects) are turned into these at the edge; the proxy maps
each to a response in one place using ``status``. In the pure core "no healthy endpoint" is a value,
not an exception.
"""

from __future__ import annotations


class FedproxyError(Exception):
    """Base of every error fedproxy raises on purpose."""

    status: int = 500


class ConfigError(FedproxyError, ValueError):
    """A config that fails validation; ``problems`` lists every error with its key path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems) if self.problems else "invalid config")


class UpstreamConnectError(FedproxyError, OSError):
    """No upstream could be reached (refused, reset before the response, unreachable)."""

    status = 502


class NoHealthyUpstream(FedproxyError):
    """The service has no endpoint to send to."""

    status = 503


class UpstreamTimeout(FedproxyError, TimeoutError):
    """The upstream did not answer in time."""

    status = 504

"""Discovery: watch every member cluster's API and turn what it holds into ``ClusterSnapshot`` values.

Glossary:
- *member*: one Kubernetes cluster, reached with its own ``ApiClient`` (:mod:`.auth`).
- *kind*: one watched resource type (services, endpointslices, nodes, serviceexports, serviceimports).
- *list+watch loop*: one per (member, kind) (:mod:`.watch`): list, then watch from the list's
  resourceVersion; resume on a dropped stream, relist on 410 Gone, back off on errors.
- *resync*: a relist of one kind that replaces all its objects, so nothing stale survives it.
- *grace period*: how long every watch of a member may fail before the member is *disconnected*
  (``ClusterSnapshot.connected = False``; objects kept for the state view, skipped for serving) (:mod:`.state`).
- *Karmada source*: members taken from a Karmada control plane's Cluster objects (:mod:`.karmada`).
- *TLS Secret watch*: one narrowed list+watch per kubernetes.io/tls Secret an HTTPS certificate names
  (:mod:`.secrets`); reported through ``on_secret``, never part of a snapshot or of member connectivity.

:class:`Discovery` (:mod:`.member`) owns all of it and reports every snapshot through ``on_change``.
This package emits snapshots (and Secret events) and nothing else; it never imports the catalog or the serving side.
"""

from .auth import Credentials, MemberClient, MemberSpec, credentials_for, make_client
from .member import Discovery, configured_members

__all__ = [
    "Credentials",
    "Discovery",
    "MemberClient",
    "MemberSpec",
    "configured_members",
    "credentials_for",
    "make_client",
]

"""DNS: an authoritative responder for the clusterset domain (default ``clusterset.local``).

Glossary:
- *answer table*: every (name, type) of the domain prebuilt as wire bytes from one serving state (``names.py``
  decides what exists, ``table.py`` encodes it with dnspython); rebuilt on every state swap.
- *rotation*: a name answered by one of several clusters, one prebuilt answer each, picked per query by smooth
  weighted round-robin; its counters live outside the table and survive rebuilds.
- *hot path*: ``wire.py`` parses the query by hand, ``answer.py`` joins the header, the query's own question and
  the prebuilt sections; ``server.py`` is the UDP/TCP I/O around it.
- *spec mode* / *Lighthouse mode*: KEP-1645 strictness (``cluster_prefix: false``, ``policy: spread``) versus
  Submariner Lighthouse's behaviour (the defaults); see docs/dns.md.
"""

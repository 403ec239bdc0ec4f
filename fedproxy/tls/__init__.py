"""TLS: termination on HTTP listeners, SNI passthrough on TCP listeners, TLS to upstreams (docs/tls.md).

Glossary:
- *SNI* (RFC 6066 3): the server name a client puts in its ClientHello; picks the certificate we serve
  (termination) or the service we splice to (passthrough).
- *ALPN* (RFC 7301): the application protocol the client and server agree on in the handshake ("h2",
  "http/1.1"); the HTTP listener hands an "h2" connection to the HTTP/2 protocol.
- *ClientHello*: the client's first handshake message; :mod:`.clienthello` parses it without a socket.
- *Certificate store*: the loaded cert/key pairs of one listener keyed by the names they serve (:mod:`.certs`);
  :mod:`.context` turns it into ``ssl.SSLContext`` objects, rebuilt for new connections on reload, when the
  files change on disk or when a watched Secret changes.
- *Secret certificate*: a pair from a kubernetes.io/tls Secret (``{secret: ns/name, cluster: NAME}``), watched by
  discovery; *pending* until its first valid content arrives. The *secret book* keeps the last good pair of each
  and what is wrong now; listeners (and ``--workers`` processes) are given only pairs that passed.

Modules: ``names`` (exact/wildcard name tables, pure), ``clienthello`` (wire parser, pure), ``certs`` (reads and
checks PEM files and Secret PEM), ``secrets`` (Secret references, shape, watch events, pure), ``secretbook``
(last good pair per Secret, state for the admin), ``context`` (builds ``ssl`` contexts).
"""

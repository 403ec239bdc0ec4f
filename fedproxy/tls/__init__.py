"""TLS: termination on HTTP listeners, SNI passthrough on TCP listeners, TLS to upstreams (docs/tls.md).

Glossary:
- *SNI* (RFC 6066 3): the server name a client puts in its ClientHello; picks the certificate we serve
  (termination) or the service we splice to (passthrough).
- *ALPN* (RFC 7301): the application protocol the client and server agree on in the handshake ("h2",
  "http/1.1"); the HTTP listener hands an "h2" connection to the HTTP/2 protocol.
- *ClientHello*: the client's first handshake message; :mod:`.clienthello` parses it without a socket.
- *Certificate store*: the loaded cert/key pairs of one listener keyed by the names they serve (:mod:`.certs`);
  :mod:`.context` turns it into ``ssl.SSLContext`` objects, rebuilt for new connections on reload or when the
  files change on disk.

Modules: ``names`` (exact/wildcard name tables, pure), ``clienthello`` (wire parser, pure), ``certs`` (reads and
checks PEM files), ``context`` (builds ``ssl`` contexts).
"""

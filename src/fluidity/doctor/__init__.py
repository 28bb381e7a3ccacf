"""``fluidity doctor``: what is wrong with this setup, and how to fix it.

One check per line, in the order a connection is made: the config, the key
files, the certificates, DNS, the corporate proxy, the TLS handshake (naming a
TLS-inspecting proxy), the server's name and clock, and one request through the
tunnel. Each is ``ok``, ``warning`` or ``problem`` with the fix; ``--json`` for
scripts; exit status 1 when any is a problem.

- ``report``: the finding type, text and JSON output, the exit status;
- ``files``: the config and private key files;
- ``certs``: certificate validity, expiry, chain to the CA, key and names;
- ``network``: DNS and the corporate proxy;
- ``handshake``: the TLS handshake, the server's certificate name, its clock;
- ``tunnel``: a request through an in-process agent;
- ``run``: the order, and the command's entry point.

The doctor is a top-layer package: it reuses the agent's own code (paths,
routes, proxy auth) so it finds exactly what the agent would; only the CLI
imports it.
"""

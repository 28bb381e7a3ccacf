"""The AWS lifecycle control plane: wake, query, sleep and kill the Fargate server.

Layers, pointing one way::

    handlers  (Lambda entry points, env config, JSON responses)
      └─ operations  (wake/query/sleep/kill over injected gateways)
           ├─ decisions  (pure: status and sleep verdicts; no I/O, no boto3)
           ├─ scaling    (pure: the auto scaler's bounds and the desired count to set)
           └─ aws        (the only module that imports boto3/botocore; imported lazily)

    client    (the agent's signed calls to the function URLs)  ─ decisions
    cloudwatch (the server's activity publisher)               ─ aws (lazily)
    cli       (``fluidity cloud wake|status|kill``)            ─ client

Importing this package, ``decisions``, ``scaling``, ``operations``, ``client`` or ``cloudwatch``
never imports boto3, so the agent and the Lambda code stay importable without it.
"""

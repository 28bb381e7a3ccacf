"""Configuration: the schema (frozen dataclasses) and the loader (YAML, env, flags).

Schema: ``agent`` (``AgentConfig``, ``load_agent_config``), ``server``
(``ServerConfig``, ``load_server_config``), ``upstream`` (the agent's
``upstream_proxy:`` section) and ``values`` (``Address``, ``FileOrPem``,
``WebSocketEndpoint``). Loader: ``load`` (``load_config``) runs ``sources``
(the raw tree) then ``build`` (the typed walk); ``fields`` holds the field
types, rules and the ``Section`` base they share.
"""

"""The cloud side: the listener that takes tunnels, the dialer that reaches
targets under the policy, and hot reload of the TLS material."""

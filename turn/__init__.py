"""TURN with coturn: REST credentials minted per session (:mod:`turn.credentials`),
coturn configs for production and development (:mod:`turn.config`), and a coturn
child process for development and tests (:mod:`turn.server`, ``relaycast turn``).
See docs/turn.md."""

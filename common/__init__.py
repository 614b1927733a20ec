"""Small value types every relaycast package may import, and that import no other package:
RFC 9457 problem errors (:mod:`common.problems`), configuration parsing helpers
(:mod:`common.config`), the room-name rule (:mod:`common.names`), the token bucket
(:mod:`common.ratelimit`) and the client address behind trusted proxies
(:mod:`common.client_address`)."""

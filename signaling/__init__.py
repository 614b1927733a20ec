"""relaycast control plane: WHIP/WHEP HTTP resources, the SFU node link, pages and API."""

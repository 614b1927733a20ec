"""The composition root: the ``relaycast`` command (:mod:`relaycast.cli`), the assembled
service (:mod:`relaycast.service`: signaling + embedded SFU worker + LL-HLS bridge) and the
local dev cluster (:mod:`relaycast.cluster`).  Only this package wires the others together."""

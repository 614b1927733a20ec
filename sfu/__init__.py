"""relaycast media plane: a packet-forwarding SFU on top of aiortc transports.

Vocabulary (mediasoup/LiveKit): :class:`~sfu.worker.Worker` (one per process),
:class:`~sfu.router.Router` (one per room), Participant (one peer connection),
:class:`~sfu.producer.Producer` (a published track),
:class:`~sfu.consumer.Consumer` (one subscriber's copy),
:class:`~sfu.forwarder.Forwarder` (seq/ts munging),
:class:`~sfu.keyframe.KeyFrameRequester` (PLI throttling).
"""

"""Rules an SDP offer must meet before aiortc sees it (RFC 8866 and the WebRTC SDP specs).

aiortc parses leniently: it accepts offers that can never connect (an MD5 or truncated
fingerprint, ``c=IN IP4 junk``, ``a=sctp-port:-1``) and fails late, with a bare
``ValueError``, on others (no ``a=mid``, two sections with one mid).  :func:`validate_offer`
refuses all of them up front with :class:`~sfu.errors.InvalidSdp` (400) and a short
``detail`` that names the rule, never the offending text (the text can be logged at DEBUG by
the caller).  What it checks, per line:

=====================  ==================================================================
line                   rule
=====================  ==================================================================
every line             ``<type>=<value>``, type one lower-case letter (RFC 8866 §5);
                       the first line is ``v=0`` (§5.1)
``c=``                 ``IN IP4|IP6 <address>`` with an address of that family or a
                       domain name (RFC 8866 §5.7, §9)
``m=``                 ``<media> <port> <proto> <fmt> ...``, port 0–65535; RTP formats are
                       payload types 0–127 (RFC 3550 §5.1) outside 72–76 (RFC 5761 §4)
``a=mid``              present in every m= section, unique in the offer (RFC 8843 §7.2.1,
                       RFC 5888 §4, RFC 8829 §5.2.1)
``a=group:BUNDLE``     names only mids of this offer (RFC 8843 §7.2)
``a=fingerprint``      ``sha-256``, ``sha-384`` or ``sha-512`` with as many hex octets as
                       the hash has (RFC 8122 §5); MD2, MD5 and SHA-1 are refused (RFC 8827
                       §6.5: WebRTC needs SHA-256 or stronger); each m= section needs one
``a=setup``            ``actpass``, ``active`` or ``passive`` (RFC 8842 §5.1)
``a=ice-ufrag/-pwd``   4–256 / 22–256 ice-chars (RFC 8839 §5.4)
``a=candidate``        the candidate-attribute grammar (RFC 8839 §5.1)
``a=sctp-port``        1–65535 (RFC 8841 §5.1); ``a=max-message-size`` a non-negative
                       integer (RFC 8841 §6)
``a=rtpmap/fmtp``      numeric payload type and clock rate (RFC 8866 §6.6, §6.15)
=====================  ==================================================================
"""

from __future__ import annotations

import ipaddress
import re

from .errors import InvalidSdp

_LINE = re.compile(r"^[a-z]=")
_TOKEN = r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+"  # RFC 8866 §9 token
_MID = re.compile(rf"^{_TOKEN}$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                     r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")
_MEDIA = re.compile(r"^m=([a-z]+) ([0-9]{1,5}) ([A-Za-z0-9/]+)((?: \S+)+)$")
_RTP_PROTOS = ("UDP/TLS/RTP/SAVPF", "TCP/DTLS/RTP/SAVPF", "UDP/TLS/RTP/SAVP", "RTP/SAVPF")
_SCTP_PROTOS = ("UDP/DTLS/SCTP", "TCP/DTLS/SCTP", "DTLS/SCTP")
_RTCP_PAYLOAD_TYPES = range(72, 77)  # RFC 5761 §4: would collide with RTCP packet types
_RTPMAP = re.compile(r"^([0-9]{1,3}) [A-Za-z0-9_.+-]+/[0-9]{1,10}(/[0-9]{1,3})?$")
_FMTP = re.compile(r"^([0-9]{1,3}) \S.*$")
_FMTP_INTEGERS = ("apt", "max-fr", "max-fs", "maxplaybackrate", "minptime", "stereo",
                  "useinbandfec")  # the parameters aiortc reads as integers
FINGERPRINT_OCTETS = {"sha-256": 32, "sha-384": 48, "sha-512": 64}
"""Hash functions a DTLS certificate fingerprint may use here, with their digest size."""
_WEAK_HASHES = ("md2", "md5", "sha-1")
_FINGERPRINT = re.compile(r"^([A-Za-z0-9-]+) ([0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2})*)$")
_SETUP = ("actpass", "active", "passive")
_ICE_CHARS = re.compile(r"^[A-Za-z0-9+/]+$")
# RFC 8839 §5.1: foundation component-id transport priority address port typ type
# *(SP extension-att-name SP extension-att-value).
_CANDIDATE = re.compile(
    r"^candidate:[A-Za-z0-9+/]{1,32} [0-9]{1,3} [A-Za-z0-9-]+ [0-9]{1,10} (\S+) ([0-9]{1,5})"
    r" typ (host|srflx|prflx|relay)((?: \S+ \S+)*)$"
)
_CANDIDATE_NUMERIC = ("rport", "generation", "network-id", "network-cost")


def valid_candidate(value: str) -> bool:
    """Whether ``value`` (``candidate:...``, without ``a=``) follows RFC 8839 §5.1: ports
    0–65535, ``raddr``/``rport`` and other extensions as name/value pairs, the numeric ones
    numbers.  Used for the candidates of offers and of trickle fragments (RFC 8840 §4.4)."""
    match = _CANDIDATE.match(value)
    if match is None or int(match.group(2)) > 65535:
        return False
    tail = match.group(4).split()
    for name, attr_value in zip(tail[::2], tail[1::2], strict=False):
        if name in _CANDIDATE_NUMERIC and not (attr_value.isdigit() and len(attr_value) <= 10):
            return False
        if name == "rport" and int(attr_value) > 65535:
            return False
    return True


def _connection(value: str) -> bool:
    """RFC 8866 §5.7 ``c=`` value: ``IN IP4|IP6 address[/ttl[/n]]``."""
    parts = value.split(" ")
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        return False
    address = parts[2].split("/", 1)[0]
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return bool(_DOMAIN.match(address)) and not address.replace(".", "").isdigit()
    return ip.version == (4 if parts[1] == "IP4" else 6)


def _fingerprint(value: str) -> str | None:
    """``None`` when ``value`` is a usable fingerprint, else what is wrong with it."""
    match = _FINGERPRINT.match(value)
    if match is None:
        return "a=fingerprint is not '<hash-function> <hex octets>' (RFC 8122 §5)"
    function = match.group(1).lower()
    if function in _WEAK_HASHES:
        return f"a=fingerprint uses {function}; WebRTC needs sha-256 or stronger (RFC 8827 §6.5)"
    octets = FINGERPRINT_OCTETS.get(function)
    if octets is None:
        return "a=fingerprint uses an unsupported hash function (sha-256, sha-384 or sha-512)"
    if len(match.group(2).split(":")) != octets:
        return f"a=fingerprint has the wrong length for {function} ({octets} octets, RFC 8122 §5)"
    return None


def _attribute(line: str) -> tuple[str, str | None]:
    name, sep, value = line[2:].partition(":")
    return name, value if sep else None


class _Section:
    """What the checks need to remember about one m= section."""

    def __init__(self, index: int, media: str, port: int, rtp: bool, formats: list[str]) -> None:
        self.index = index
        self.media = media
        self.port = port
        self.rtp = rtp
        self.formats = formats
        self.mids: list[str] = []
        self.fingerprints = 0
        self.rtpmap: set[int] = set()
        self.fmtp: set[int] = set()

    def where(self) -> str:
        return f"m= section {self.index} ({self.media})"


def validate_offer(sdp: str) -> None:
    """Check ``sdp`` against the rules in the module docstring.

    :raises InvalidSdp: the first rule it breaks (``detail`` names it).
    """
    lines = sdp.splitlines()
    while lines and not lines[-1]:
        lines.pop()
    if not lines or lines[0] != "v=0":
        raise InvalidSdp("the offer must start with the line v=0 (RFC 8866 §5.1)")
    session_fingerprints = 0
    sections: list[_Section] = []
    bundles: list[list[str]] = []
    for number, line in enumerate(lines, 1):
        if not _LINE.match(line):
            raise InvalidSdp(f"line {number} is not '<type>=<value>' (RFC 8866 §5)")
        section = sections[-1] if sections else None
        where = section.where() if section else "session level"
        kind = line[0]
        if kind == "m":
            sections.append(_media(line, len(sections)))
        elif kind == "c" and not _connection(line[2:]):
            raise InvalidSdp(f"{where}: c= is not 'IN IP4|IP6 <address>' (RFC 8866 §5.7)")
        elif kind == "a":
            name, value = _attribute(line)
            if name == "fingerprint":
                problem = _fingerprint(value or "")
                if problem:
                    raise InvalidSdp(f"{where}: {problem}")
                if section is None:
                    session_fingerprints += 1
                else:
                    section.fingerprints += 1
            elif name == "group" and value is not None and value.split(" ")[0] == "BUNDLE":
                bundles.append(value.split()[1:])
            else:
                _check_attribute(name, value, section, where)
    if not sections:
        raise InvalidSdp("the offer has no m= section (RFC 8866 §5.14)")
    mids: set[str] = set()
    for section in sections:
        if len(section.mids) != 1:
            raise InvalidSdp(f"{section.where()}: needs exactly one a=mid (RFC 8843 §7.2.1)")
        if section.mids[0] in mids:
            raise InvalidSdp(f"{section.where()}: a=mid repeats another section's (RFC 5888 §4)")
        mids.add(section.mids[0])
        if section.port and not (session_fingerprints or section.fingerprints):
            raise InvalidSdp(f"{section.where()}: no a=fingerprint (RFC 8122 §5)")
        if section.rtp and not section.fmtp <= section.rtpmap:
            raise InvalidSdp(f"{section.where()}: a=fmtp for a payload type without a=rtpmap "
                             "(RFC 8866 §6.15)")
    for group in bundles:
        if not group or any(mid not in mids for mid in group):
            raise InvalidSdp("a=group:BUNDLE names a mid no m= section has (RFC 8843 §7.2)")


def _media(line: str, index: int) -> _Section:
    match = _MEDIA.match(line)
    if match is None:
        raise InvalidSdp(f"m= section {index}: not '<media> <port> <proto> <fmt>...' "
                         "(RFC 8866 §5.14)")
    media, port, proto = match.group(1), int(match.group(2)), match.group(3)
    formats = match.group(4).split()
    if port > 65535:
        raise InvalidSdp(f"m= section {index}: port out of range")
    rtp = proto in _RTP_PROTOS
    if not rtp and proto not in _SCTP_PROTOS:
        raise InvalidSdp(f"m= section {index}: transport protocol is not "
                         "UDP/TLS/RTP/SAVPF or UDP/DTLS/SCTP (RFC 8829 §5.1.2)")
    if rtp:
        for fmt in formats:
            if not (fmt.isdigit() and len(fmt) <= 3 and int(fmt) <= 127):
                raise InvalidSdp(f"m= section {index}: RTP payload types are 0-127 (RFC 3550 §5.1)")
            if int(fmt) in _RTCP_PAYLOAD_TYPES:
                raise InvalidSdp(f"m= section {index}: payload types 72-76 collide with RTCP "
                                 "(RFC 5761 §4)")
    return _Section(index, media, port, rtp, formats)


def _check_attribute(name: str, value: str | None, section: _Section | None, where: str) -> None:
    if name == "mid":
        if section is None:
            raise InvalidSdp("a=mid belongs in an m= section (RFC 5888 §4)")
        if value is None or not _MID.match(value):
            raise InvalidSdp(f"{where}: a=mid is not a token (RFC 5888 §4)")
        section.mids.append(value)
    elif name == "setup":
        if value not in _SETUP:
            raise InvalidSdp(f"{where}: a=setup must be actpass, active or passive (RFC 8842 §5.1)")
    elif name == "ice-ufrag":
        if value is None or not (4 <= len(value) <= 256 and _ICE_CHARS.match(value)):
            raise InvalidSdp(f"{where}: a=ice-ufrag must be 4-256 ice-chars (RFC 8839 §5.4)")
    elif name == "ice-pwd":
        if value is None or not (22 <= len(value) <= 256 and _ICE_CHARS.match(value)):
            raise InvalidSdp(f"{where}: a=ice-pwd must be 22-256 ice-chars (RFC 8839 §5.4)")
    elif name == "candidate":
        if not valid_candidate(f"candidate:{value}"):
            raise InvalidSdp(f"{where}: malformed a=candidate (RFC 8839 §5.1)")
    elif name == "sctp-port":
        if value is None or not (value.isdigit() and len(value) <= 5 and 1 <= int(value) <= 65535):
            raise InvalidSdp(f"{where}: a=sctp-port must be 1-65535 (RFC 8841 §5.1)")
    elif name == "max-message-size":
        if value is None or not (value.isdigit() and len(value) <= 20):
            raise InvalidSdp(f"{where}: a=max-message-size must be a non-negative integer "
                             "(RFC 8841 §6)")
    elif name == "rtpmap":
        match = _RTPMAP.match(value or "")
        if match is None or section is None or not section.rtp:
            raise InvalidSdp(f"{where}: a=rtpmap is not '<payload type> <name>/<clock rate>' "
                             "(RFC 8866 §6.6)")
        section.rtpmap.add(int(match.group(1)))
    elif name == "fmtp":
        _check_fmtp(value, section, where)


def _check_fmtp(value: str | None, section: _Section | None, where: str) -> None:
    match = _FMTP.match(value or "")
    if match is None or section is None or match.group(1) not in section.formats:
        raise InvalidSdp(f"{where}: a=fmtp is not '<format> <parameters>' for a format of "
                         "the m= line (RFC 8866 §6.15)")
    if section.rtp:
        section.fmtp.add(int(match.group(1)))
    for param in (value or "").split(" ", 1)[1].split(";"):
        key, sep, number = param.partition("=")
        if sep and key in _FMTP_INTEGERS and not (number.isdigit() and len(number) <= 10):
            raise InvalidSdp(f"{where}: a=fmtp parameter {key} must be an integer")

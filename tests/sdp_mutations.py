"""A hypothesis strategy for fuzzing SDP: real offers with lines dropped, duplicated,
garbled or cut (shared by the SFU's validator fuzz test and the WHIP/WHEP HTTP fuzz test)."""

from __future__ import annotations

from hypothesis import strategies as st

_GARBAGE = st.text(alphabet=st.sampled_from("aAz09=:-/ .\t\x00é*"), max_size=12)


def sdp_mutations(lines: list[str]) -> st.SearchStrategy[list[str]]:
    """``lines`` (an SDP split on CRLF) after 1–4 random edits: drop a line, duplicate one,
    overwrite part of one with garbage, or cut one in half."""
    edit = st.one_of(
        st.tuples(st.just("drop"), st.integers(0, len(lines) - 1), st.just("")),
        st.tuples(st.just("duplicate"), st.integers(0, len(lines) - 1), st.just("")),
        st.tuples(st.just("garble"), st.integers(0, len(lines) - 1), _GARBAGE),
        st.tuples(st.just("truncate"), st.integers(0, len(lines) - 1), st.just("")),
    )

    def apply(edits: list[tuple[str, int, str]]) -> list[str]:
        out = list(lines)
        for op, index, text in edits:
            if not out:
                break
            index %= len(out)
            if op == "drop":
                del out[index]
            elif op == "duplicate":
                out.insert(index, out[index])
            elif op == "garble":
                line = out[index]
                cut = len(text) % max(1, len(line))
                out[index] = line[:cut] + text + line[cut + len(text):]
            else:
                out[index] = out[index][: len(out[index]) // 2]
        return out

    return st.lists(edit, min_size=1, max_size=4).map(apply)

"""What the chat moderation filter costs per message: ``TermMatcher.match`` with a 1,000-term
blocked list on realistic chat text, plus ``fold``, ``contains_link``, ``mentions`` and the
compile time of the list.

Messages are generated deterministically (``--seed``): short and long chat lines, emotes,
mentions, links, accented, Cyrillic and Japanese text, and ``--hit-share`` of them carrying
a blocked term in an evasive spelling (leetspeak, homoglyphs, zero-width characters,
spelled out, repeated letters).  Each message is timed alone after a warm-up pass, on the
thread's CPU clock (``--clock cpu``, steady on a shared machine) or the wall clock, less the
clock's own cost (measured first); figures are µs per message (p50, p99, mean), split into
clean and hit messages.  As a baseline in the same run, the naive design (one compiled regex per term,
tried in a loop) is timed on a sample of the messages.

Run: ``python -m loadtest.chat_filter_bench`` (``--help`` for the knobs); prints JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import time
from collections.abc import Callable
from typing import Any

from community.chat_filter import (
    DEFAULT_TERMS,
    TermMatcher,
    _compile_cached,
    contains_link,
    fold,
)
from signaling.chat import mentions_of as mentions

SYLLABLES = (
    "ka ro mi to la ve shi nu pa gor zen dra bli qua fex tor mun sal pik dov rel "
    "yan bru cos wim hap jel tas nor gri"
).split()

CLEAN = (
    "hi everyone!",
    "gg wp",
    "LUL",
    "that play was insane 😂😂😂",
    "hello from Brazil, love the stream",
    "can you show the settings again?",
    "@{user} what do you think about the new patch?",
    "first time here, the music is great",
    "what keyboard are you using",
    "the boss fight at 3.5 minutes was the best part, e.g. the dodge",
    "check the schedule on example.com later",
    "Привет всем, как дела?",
    "こんにちは！今日の配信楽しい",
    "¡Qué jugada! Increíble, de verdad",
    "POGGERS POGGERS POGGERS",
    "brb getting coffee ☕",
    "is the vod going to be up tomorrow? I missed the first hour because of work",
    "nooooo not again",
    "lmao 1000 viewers let's goooo",
    "{user} you were so close, try the left path next time and use the shield before the jump",
)

HIT = (
    "{term}",
    "lol {term} haha",
    "hey @{user} {term} right now",
    "you are such a {term}!!!",
    "{term} {term} {term}",
    "i think the {term} thing was planned by the mods, not cool at all honestly",
)


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))


def make_terms(count: int, rng: random.Random) -> list[tuple[str, str]]:
    """``count`` distinct terms: 80 % block / 20 % hold, 10 % with a wildcard, 10 % two-word
    phrases, the server's defaults included."""
    terms: dict[str, str] = dict(DEFAULT_TERMS)
    while len(terms) < count:
        shape = rng.random()
        if shape < 0.1:
            term = f"{_word(rng)} {_word(rng)}"
        elif shape < 0.15:
            term = _word(rng) + "*"
        elif shape < 0.2:
            term = "*" + _word(rng)
        else:
            term = _word(rng)
        terms.setdefault(term, "block" if rng.random() < 0.8 else "hold")
    return list(terms.items())[:count]


HOMOGLYPHS = str.maketrans({"a": "а", "o": "ο", "e": "е", "p": "р", "c": "с", "i": "і"})
LEET = str.maketrans({"a": "4", "e": "3", "o": "0", "s": "$", "i": "1", "t": "7"})


def evade(term: str, rng: random.Random) -> str:
    """``term`` written the way a user dodging a filter would."""
    word = term.strip("*")
    style = rng.randrange(6)
    if style == 0:
        return word.translate(LEET)
    if style == 1:
        return word.translate(HOMOGLYPHS)
    if style == 2:
        return "\u200b".join(word)
    if style == 3 and " " not in word:
        return " ".join(word.upper())
    if style == 4:
        return "".join(c * rng.choice((1, 1, 4)) for c in word)
    return word.upper()


def make_messages(
    count: int, terms: list[tuple[str, str]], hit_share: float, rng: random.Random
) -> list[tuple[str, bool]]:
    """``count`` (message, carries-a-term) pairs."""
    messages = []
    for _ in range(count):
        user = rng.choice(("alice", "bob_42", "nightowl", "pixel_panda", "zoe")) + str(
            rng.randint(1, 99)
        )
        if rng.random() < hit_share:
            term = evade(rng.choice(terms)[0], rng)
            messages.append((rng.choice(HIT).format(term=term, user=user), True))
        else:
            messages.append((rng.choice(CLEAN).format(user=user), False))
    return messages


CLOCKS = {"cpu": time.thread_time_ns, "wall": time.perf_counter_ns}
clock = CLOCKS["cpu"]
clock_overhead_us = 0.0


def _calibrate() -> float:
    """The chosen clock's own cost (µs) in a timing: the median of timing nothing."""
    samples = []
    for _ in range(2000):
        start = clock()
        samples.append((clock() - start) / 1000)
    return statistics.median(samples)


def _time_each(func: Callable[[str], Any], texts: list[str]) -> list[float]:
    """µs per call, one call per text, on the chosen clock, less its own cost."""
    out = []
    for text in texts:
        start = clock()
        func(text)
        out.append(max(0.0, (clock() - start) / 1000 - clock_overhead_us))
    return out


def _time_once(func: Callable[[], Any]) -> float:
    """ms for one call, on the chosen clock."""
    start = clock()
    func()
    return (clock() - start) / 1e6


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "p50_us": round(ordered[len(ordered) // 2], 1),
        "p99_us": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
        "mean_us": round(statistics.fmean(ordered), 1),
        "max_us": round(ordered[-1], 1),
    }


class NaiveMatcher:
    """The baseline: one regex per folded term, tried in turn (no shared automaton)."""

    def __init__(self, terms: list[tuple[str, str]]) -> None:
        self.patterns = []
        for term, action in terms:
            core = fold(term.strip("*"))
            start = "" if term.startswith("*") else r"(?<!\w)"
            end = "" if term.endswith("*") else r"(?!\w)"
            body = r"\W*".join(re.escape(word) for word in core.split())
            self.patterns.append((re.compile(start + body + end), term, action))

    def match(self, text: str) -> tuple[str, str] | None:
        folded, found = fold(text), None
        for pattern, term, action in self.patterns:
            if pattern.search(folded):
                if action == "block":
                    return term, action
                found = found or (term, action)
        return found


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    terms = make_terms(args.terms, rng)
    messages = make_messages(args.messages, terms, args.hit_share, rng)
    texts = [text for text, _ in messages]

    global clock, clock_overhead_us
    clock = CLOCKS[args.clock]
    clock_overhead_us = _calibrate()
    compile_ms = []
    for _ in range(args.compile_runs):
        _compile_cached.cache_clear()  # time the build, not a cache
        re.purge()
        compile_ms.append(_time_once(lambda: TermMatcher.compile(terms)))
    matcher = TermMatcher.compile(terms)
    cached_compile_us = _time_once(lambda: TermMatcher.compile(terms)) * 1000

    for text in texts[: min(len(texts), 2000)]:  # warm-up: caches, branch predictors
        matcher.match(text)

    match_us = _time_each(matcher.match, texts)
    found = [matcher.match(text) is not None for text in texts]
    expected = [hit for _, hit in messages]
    clean_us = [us for us, (_, hit) in zip(match_us, messages, strict=True) if not hit]
    hit_us = [us for us, (_, hit) in zip(match_us, messages, strict=True) if hit]

    naive = NaiveMatcher(terms)
    sample = texts[: args.naive_sample]
    naive_us = _time_each(naive.match, sample)
    trie_sample_us = match_us[: args.naive_sample]

    long_text = " ".join(texts)[:10_000]
    long_us = _time_each(matcher.match, [long_text] * 20)

    scaling = {}
    for size in (100, 1_000, 10_000):
        sized = make_terms(size, random.Random(args.seed + size))
        re.purge()
        sized_compile_ms = _time_once(lambda sized=sized: TermMatcher.compile(sized))
        sized_us = _time_each(TermMatcher.compile(sized).match, texts[:2000])
        scaling[str(size)] = {
            "compile_ms": round(sized_compile_ms, 1),
            "match_mean_us": round(statistics.fmean(sized_us), 1),
            "match_p99_us": _stats(sized_us)["p99_us"],
        }

    return {
        "terms": matcher.size,
        "messages": len(texts),
        "hit_share": args.hit_share,
        "hits_found": sum(found),
        "hits_expected": sum(expected),
        "missed": sum(1 for f, e in zip(found, expected, strict=True) if e and not f),
        "false_positives": sum(1 for f, e in zip(found, expected, strict=True) if f and not e),
        "mean_message_chars": round(statistics.fmean(len(t) for t in texts), 1),
        "clock": args.clock,
        "clock_overhead_us": round(clock_overhead_us, 2),
        "compile_ms": {
            "median": round(statistics.median(compile_ms), 1),
            "max": round(max(compile_ms), 1),
            "same_list_again_us": round(cached_compile_us, 1),
        },
        "match": _stats(match_us),
        "match_clean": _stats(clean_us),
        "match_hit": _stats(hit_us),
        "fold": _stats(_time_each(fold, texts)),
        "contains_link": _stats(_time_each(contains_link, texts)),
        "mentions": _stats(_time_each(mentions, texts)),
        "match_10000_chars": _stats(long_us),
        "naive_loop_baseline": {
            "sample": len(sample),
            "naive_mean_us": round(statistics.fmean(naive_us), 1),
            "trie_mean_us": round(statistics.fmean(trie_sample_us), 1),
            "speedup": round(statistics.fmean(naive_us) / statistics.fmean(trie_sample_us), 1),
        },
        "scaling_by_terms": scaling,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--terms", type=int, default=1000, help="blocked terms (default 1000)")
    parser.add_argument("--messages", type=int, default=20000, help="messages (default 20000)")
    parser.add_argument("--hit-share", type=float, default=0.2, help="share with a term (0.2)")
    parser.add_argument("--compile-runs", type=int, default=5, help="compiles timed (5)")
    parser.add_argument("--naive-sample", type=int, default=500, help="baseline messages (500)")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="cpu",
        help="cpu: this thread's CPU time (steady on a shared machine); wall: elapsed time",
    )
    print(json.dumps(run(parser.parse_args(argv)), indent=2))


if __name__ == "__main__":
    main()

"""Synthetic source: planted topic structure, real-looking text, streamed in user-grouped chunks.

Generative model (every latent variable is returned by :func:`latent_truth`):

- **Topics.** ``topics`` topics with a prior ``pi`` (half uniform, half Dirichlet(2)), so topic
  sizes differ moderately. Each topic has a vocabulary: one of 16 built-in themes (space,
  cooking, gardening, ...; 20 nouns + 10 adjectives each, pairwise disjoint). With more than 16
  topics, every topic is a theme x flavour pair (``classic-space``, ``urban-space``, ...) whose
  nouns carry a flavour word (``vintage galaxy``), so topics stay separable by text.
- **Items.** Dominant topic ~ ``pi`` with weight 1 (35% of items) or 0.5 + 0.5 Beta(2, 1.2);
  the rest of the mass on one other topic. Popularity ``rank ** -popularity_exponent`` over a
  random ranking. Text (title, description, attributes JSON) is drawn from the item's topics
  only, never from interactions, so it carries topic signal and leaks no held-out pairs.
- **Users.** 1-3 topics (drawn ~ ``pi`` without replacement) with Dirichlet(1) weights; a
  heavy-tailed (lognormal) activity, at least ``min_activity`` (5) and at most ``items // 2``,
  water-filled so that the total equals ``interactions`` exactly when that is feasible
  (``users * min_activity <= interactions <= users * (items // 2)``); otherwise the total is
  clamped into that range (and, below it, ``min_activity`` is lowered to
  ``max(1, interactions // users)``), which ``RawData.report`` records.
  User attributes (age band, region, member-since year) are independent of taste.
- **Interactions.** User ``u`` takes ``activity[u]`` distinct items by sequential sampling
  without replacement from ``p_u(i) = (1 - noise) * sum_t taste_u[t] q_t(i) + noise / items``,
  ``q_t(i) ∝ mix[i, t] * popularity[i]`` (choose a topic by taste, then an item within it).
  Vectorised: draw with replacement by inverse CDF on per-topic item CDFs, keep the first
  occurrence of each item in draw order (exactly the without-replacement order), redraw for the
  few users still short, and finish any stragglers exactly by Gumbel-top-k over all items.
  Timestamps increase per user in sampling order; ratings 1-5 rise with the taste match of the
  item; a per-user propensity (mean ``review_rate``) decides which interactions carry a review
  built from the item's topic words and a sentiment matching the rating.
- **Order** (``order: transitions``; ``order: none``, the default, is the model above, bit for
  bit). Every topic's items (by dominant topic) form a fixed ring in random order; an item's
  *successor* is the next item of its ring (``latent_truth``'s ``item_successor``). A user's
  sequence is a series of runs: a run starts at an item drawn from ``p_u`` as above and goes on
  to the successor of its last item with probability ``order_strength`` per step (a geometric
  length, at most once round the ring and at most the user's activity). Items the user already
  has are skipped (the run goes on past them), so after the previous item ``x`` the next is
  ``successor(x)`` with probability ``order_strength`` (plus a fresh draw's chance of hitting
  it) when the user does not have it yet, a little less over all pairs (~.77 at 0.8);
  the per-user item set stays topic-coherent (a run stays in its topic), while popularity is
  flatter (a run's later items follow the ring, not popularity: at the default sizes the top 10%
  of items take 23% of interactions at strength 0.8 against 31% without order). Same vectorised
  sampling: runs are expanded, then first occurrences are kept. ``order_strength`` 0 gives the
  ``order: none`` output exactly (runs of one item, the same draws).

Determinism: every random stream is keyed by (seed, stream, block), with user blocks of a size
that does not depend on ``chunk_users``; the same config gives identical tables, and the
concatenation of chunks is identical for any ``chunk_users``. The fingerprint therefore hashes
the config without ``chunk_users`` (and without the order fields under ``order: none``, so
that fingerprints of earlier configs stay valid). Memory: O(items + users) for the side tables
plus one chunk of interactions (``chunk_users`` users) and one sampling block (about 2**17
rows; with ``order: transitions`` a few times that for ``order_strength`` near 1).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recalign.config import DataConfig, SyntheticConfig
from recalign.data.schema import RAW_INTERACTIONS, RAW_ITEMS, RAW_USERS
from recalign.data.sources.base import RawData, register

GENERATOR_VERSION = 1  # bump when output changes, so cached ingests of old output are redone
MIN_ACTIVITY = 5  # so that per-user train/valid/test splits leave every user something
USER_BLOCK = 4096  # users per latent-taste block (fixed: tastes must not depend on chunking)
_BLOCK_ROWS = 1 << 17  # target interactions per sampling block (bounds scratch memory)
_T0, _T1 = 1_420_070_400, 1_735_689_600  # 2015-01-01 .. 2025-01-01 UTC
_POOL = 20  # words per topic pool (nouns and adjectives)

# random streams: (seed, stream, block) -> independent generators
_S_ITEMS, _S_ITEM_TEXT, _S_ACTIVITY, _S_USER_ATTRS, _S_TASTE, _S_SAMPLE = range(6)
_S_RING, _S_RUN = 6, 7  # order: transitions only (order: none never draws from them)

# --------------------------------------------------------------------------------------------
# vocabulary

_THEMES = [
    ("space",
     "galaxy starship nebula orbit comet asteroid rocket astronaut planet cosmos satellite "
     "telescope meteor eclipse spacecraft quasar moon voyager colony wormhole",
     "cosmic interstellar orbital lunar stellar galactic celestial alien astral martian"),
    ("cooking",
     "recipe kitchen skillet pastry sauce spice dough oven broth dumpling noodle casserole "
     "bread chef garlic saffron risotto marinade stew herbs",
     "savory crispy roasted homemade spicy tangy buttery simmered smoky zesty"),
    ("gardening",
     "garden seedling compost tulip greenhouse trellis orchard soil blossom shovel hedge "
     "perennial mulch rosebush sprout vine bulb petal pruning fern",
     "blooming leafy fertile organic flowering green potted evergreen shady lush"),
    ("history",
     "empire dynasty castle chronicle revolution monarch treaty archive battle pharaoh "
     "crusade manuscript senate citadel relic conquest legion artifact heritage emperor",
     "ancient medieval imperial victorian colonial roman feudal historic byzantine dynastic"),
    ("jazz",
     "saxophone trumpet bebop swing improvisation quartet melody rhythm nightclub groove piano "
     "trombone ballad bassline drummer chord solo vinyl harmony bandleader",
     "smooth soulful bluesy syncopated mellow cool brassy improvised sultry jazzy"),
    ("hiking",
     "trail summit backpack canyon ridge campsite boots wilderness ascent switchback glacier "
     "waterfall compass valley peak cairn tent basecamp footpath lookout",
     "rugged alpine scenic steep remote rocky wild misty windswept untamed"),
    ("fantasy",
     "dragon wizard sorcerer realm spellbook elf quest sword amulet prophecy goblin "
     "enchantress griffin rune potion knight dwarf portal throne unicorn",
     "enchanted mythic arcane magical cursed legendary mystic fabled shadowy elven"),
    ("finance",
     "portfolio investment dividend stock bond budget savings retirement mortgage ledger "
     "market equity fund asset capital tax wealth banker trader pension",
     "fiscal financial profitable bullish bearish monetary frugal lucrative economic prudent"),
    ("mystery",
     "detective clue alibi suspect murder inspector witness motive evidence heist culprit "
     "riddle crime fingerprint confession sleuth secret verdict interrogation informant",
     "mysterious sinister baffling noir cunning hidden suspicious deadly puzzling gritty"),
    ("fitness",
     "workout muscle treadmill cardio yoga stretch dumbbell marathon sprint protein routine "
     "gym endurance squat pushup athlete stamina kettlebell pilates trainer",
     "athletic strong lean energetic intense healthy fit agile sweaty toned"),
    ("travel",
     "passport journey luggage airport itinerary destination hostel cruise tourist suitcase "
     "voyage souvenir ferry guidebook resort border railway postcard excursion visa",
     "exotic tropical coastal cosmopolitan adventurous faraway sunny vibrant seaside foreign"),
    ("technology",
     "software algorithm computer code robot network processor database startup gadget "
     "smartphone server circuit compiler browser laptop silicon keyboard cloud interface",
     "digital wireless automated smart virtual programmable cybernetic electronic futuristic "
     "modular"),
    ("romance",
     "love heart kiss wedding romance sweetheart passion courtship bride valentine affection "
     "embrace promise lover date proposal honeymoon soulmate rose letters",
     "romantic tender passionate heartfelt charming sweet dreamy lovestruck wistful blushing"),
    ("wildlife",
     "wolf eagle elephant safari predator habitat jungle tiger whale savanna owl herd reef "
     "rainforest leopard migration falcon bison dolphin burrow",
     "feral majestic endangered nocturnal primal migratory furry predatory venomous territorial"),
    ("horror",
     "ghost vampire zombie haunting nightmare crypt graveyard werewolf specter demon coffin "
     "scream poltergeist asylum ritual skeleton phantom mansion fog curse",
     "haunted eerie creepy ghastly macabre gruesome chilling spooky undead bloody"),
    ("football",
     "stadium goal striker league championship referee tournament captain penalty season fans "
     "trophy midfielder playoff dribble scoreboard kickoff rival derby goalkeeper",
     "competitive victorious unbeaten defensive offensive triumphant sporting tactical "
     "attacking underdog"),
]
# with more than 16 topics every topic is flavour x theme (4 x 16 = 64 = SyntheticConfig max)
_FLAVORS = [
    ("classic", "classic timeless traditional vintage retro nostalgic oldschool golden bygone "
     "heirloom"),
    ("urban", "urban metropolitan downtown streetwise graffiti rooftop neon subway skyline "
     "midtown"),
    ("family", "family kids playful junior cheerful friendly wholesome colorful bedtime cuddly"),
    ("nordic", "nordic arctic scandinavian frosty snowbound viking fjord polar wintry icebound"),
]
_GENERIC_NOUNS = ("guide collection handbook edition companion volume series story journal "
                  "almanac compendium digest anthology book primer").split()
_GENERIC_ADJS = ("complete ultimate essential little great new illustrated definitive "
                 "practical curious").split()
_OPENERS = {  # by rating
    1: ["Terrible.", "Complete waste of money.", "Would not recommend.", "Deeply disappointing."],
    2: ["Not really for me.", "Somewhat disappointing.", "Expected a lot more.",
        "Had too many issues."],
    3: ["It was okay.", "Decent but nothing special.", "Mixed feelings about this one.",
        "Average at best."],
    4: ["Really enjoyed this.", "Very good overall.", "Pleasantly surprised.",
        "Solid and well made."],
    5: ["Absolutely loved it!", "A must-have.", "Five stars, no question.",
        "Exceeded every expectation."],
}
_SENTIMENT_ADJS = {
    1: ["awful", "dreadful", "boring", "pointless"],
    2: ["weak", "dull", "flat", "forgettable"],
    3: ["fine", "ordinary", "passable", "acceptable"],
    4: ["good", "enjoyable", "satisfying", "lovely"],
    5: ["superb", "wonderful", "brilliant", "outstanding"],
}
_AGE_BANDS = ["18-24", "25-34", "35-44", "45-54", "55-64", "65+"]
_AGE_P = [0.14, 0.27, 0.23, 0.17, 0.11, 0.08]
_REGIONS = ["north-america", "europe", "asia", "south-america", "africa", "oceania"]
_REGION_P = [0.3, 0.28, 0.25, 0.08, 0.05, 0.04]


@dataclass(frozen=True)
class _Vocab:
    names: pa.Array  # topic names
    nouns: pa.Array  # topic t's pool is [t*_POOL, (t+1)*_POOL)
    adjs: pa.Array
    nouns_cap: pa.Array  # capitalised, for titles
    adjs_cap: pa.Array
    gnouns: pa.Array
    gadjs: pa.Array
    gnouns_cap: pa.Array
    gadjs_cap: pa.Array
    openers: pa.Array  # rating r's openers are [(r-1)*4, r*4)
    sadjs: pa.Array
    sadjs_cap: pa.Array


def _vocab(topics: int) -> _Vocab:
    names, nouns, adjs = [], [], []
    for t in range(topics):
        theme, tn, ta = _THEMES[t % len(_THEMES)]
        tn, ta = tn.split(), ta.split()
        if topics <= len(_THEMES):
            names.append(theme)
        else:  # composed topic: every noun carries a flavour word ("vintage galaxy"), so the
            # topic stays separable by text from its siblings that share the theme
            flavor, fa = _FLAVORS[(t // len(_THEMES)) % len(_FLAVORS)]
            fa = fa.split()
            names.append(f"{flavor}-{theme}")
            tn = [f"{fa[j % len(fa)]} {w}" for j, w in enumerate(tn)]
        nouns += tn
        adjs += ta + ta
    cap = [w.capitalize() for w in nouns], [w.capitalize() for w in adjs]
    return _Vocab(
        names=pa.array(names), nouns=pa.array(nouns), adjs=pa.array(adjs),
        nouns_cap=pa.array(cap[0]), adjs_cap=pa.array(cap[1]),
        gnouns=pa.array(_GENERIC_NOUNS), gadjs=pa.array(_GENERIC_ADJS),
        gnouns_cap=pa.array([w.capitalize() for w in _GENERIC_NOUNS]),
        gadjs_cap=pa.array([w.capitalize() for w in _GENERIC_ADJS]),
        openers=pa.array([s for r in range(1, 6) for s in _OPENERS[r]]),
        sadjs=pa.array([s for r in range(1, 6) for s in _SENTIMENT_ADJS[r]]),
        sadjs_cap=pa.array([s.capitalize() for r in range(1, 6) for s in _SENTIMENT_ADJS[r]]),
    )


# --------------------------------------------------------------------------------------------
# small helpers


def _rng(seed: int, stream: int, block: int = 0) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, stream, block])))


def _join(*parts: Any) -> pa.Array:
    """Element-wise concatenation; a null part is skipped (used for optional sentences)."""
    return pc.binary_join_element_wise(*parts, "", null_handling="skip")


def _take(pool: pa.Array, idx: np.ndarray) -> pa.Array:
    return pool.take(pa.array(idx, pa.int64()))


def _keys(prefix: str, ids: np.ndarray, width: int) -> pa.Array:
    """``prefix`` + zero-padded ``ids``, built as one fixed-width byte buffer (no string ops)."""
    n, w = len(ids), width + 1
    buf = np.empty((n, w), np.uint8)
    buf[:, 0] = ord(prefix)
    v = np.asarray(ids, np.int64).copy()
    for j in range(w - 1, 0, -1):
        buf[:, j] = ord("0") + v % 10
        v //= 10
    offsets = np.arange(0, (n + 1) * w, w, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(buf))


def _spread(values: pa.Array, idx: np.ndarray, n: int) -> pa.Array:
    """Length-``n`` string array with ``values`` at rows ``idx`` (ascending), null elsewhere.

    Reuses ``values``' data buffer: only offsets and a validity bitmap are built.
    """
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if values.offset:
        values = pa.concat_arrays([values])  # normalise so buffers start at element 0
    _, voff, vdata = values.buffers()
    lengths = np.zeros(n, np.int64)
    src = np.frombuffer(voff, np.int32, len(values) + 1)
    lengths[idx] = np.diff(src)
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    offsets += src[0]
    valid = np.zeros(n, bool)
    valid[idx] = True
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), vdata, bitmap,
                                       null_count=n - len(idx))


def _distinct3(rng: np.random.Generator, n: int, pool: int) -> tuple[np.ndarray, ...]:
    """Three pairwise distinct word indexes per row, so a sentence never repeats a word."""
    a = rng.integers(0, pool, n)
    o1 = rng.integers(1, pool, n)
    o2 = 1 + (o1 - 1 + rng.integers(1, pool - 1, n)) % (pool - 1)
    return a, (a + o1) % pool, (a + o2) % pool


def _masked(arr: pa.Array, keep: np.ndarray) -> pa.Array:
    """``arr`` with nulls where ``keep`` is False (a skipped optional part)."""
    return pc.if_else(pa.array(keep), arr, pa.scalar(None, pa.string()))


_Part = str | tuple[pa.Array, np.ndarray]  # constant text, or (word pool, per-row word index)


def _render(choice: np.ndarray, templates: list[list[_Part]]) -> pa.Array:
    """Row i = ``templates[choice[i]]`` filled with row i's words; null where choice < 0.

    Each template is built only on the rows that use it (one join per template over its own
    rows, instead of every template over every row and a choose).
    """
    n = len(choice)
    valid = np.flatnonzero(choice >= 0)
    order = valid[np.argsort(choice[valid], kind="stable")]  # rows grouped by template
    bounds = np.searchsorted(choice[order], np.arange(len(templates) + 1))
    pieces = []
    for k, parts in enumerate(templates):
        rows = order[bounds[k]:bounds[k + 1]]
        if len(rows):
            pieces.append(_join(*[p if isinstance(p, str) else _take(p[0], p[1][rows])
                                  for p in parts]))
    if not pieces:
        return pa.nulls(n, pa.string())
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(len(order))
    out = pa.concat_arrays(pieces).take(pa.array(rank[valid]))  # back to row order
    return out if len(valid) == n else _spread(out, valid, n)


def _first_unique(uid: np.ndarray, item: np.ndarray, pos: np.ndarray,
                  n_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (uid, item) the draw with the smallest pos; result ordered by (uid, pos).

    Keeping first occurrences of a with-replacement draw sequence is exactly sequential
    sampling without replacement. Packing the three fields into one int64 lets numpy's fast
    integer sort do the work instead of argsort/lexsort.
    """
    bu = max(1, int(uid.max(initial=0)).bit_length())
    bi = max(1, int(n_items - 1).bit_length())
    bp = max(1, int(pos.max(initial=0)).bit_length())
    if bu + bi + bp <= 63:
        u64, i64, p64 = uid.astype(np.int64), item.astype(np.int64), pos.astype(np.int64)
        key = np.sort((u64 << (bi + bp)) | (i64 << bp) | p64)
        ui = key >> bp
        first = np.ones(len(key), bool)
        first[1:] = ui[1:] != ui[:-1]
        key = key[first]
        u = key >> (bi + bp)
        it = (key >> bp) & ((1 << bi) - 1)
        p = key & ((1 << bp) - 1)
        key = np.sort((u << (bp + bi)) | (p << bi) | it)
        return key >> (bp + bi), key & ((1 << bi) - 1), (key >> bi) & ((1 << bp) - 1)
    order = np.lexsort((pos, item, uid))
    u, it, p = uid[order], item[order], pos[order]
    first = np.ones(len(u), bool)
    first[1:] = (u[1:] != u[:-1]) | (it[1:] != it[:-1])
    u, it, p = u[first], it[first], p[first]
    order = np.lexsort((p, u))
    return u[order].astype(np.int64), it[order].astype(np.int64), p[order].astype(np.int64)


def _segment_rank(sorted_ids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts per id and each row's rank within its run (``sorted_ids`` ascending)."""
    counts = np.bincount(sorted_ids, minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return counts, np.arange(len(sorted_ids)) - starts[sorted_ids]


# --------------------------------------------------------------------------------------------
# the generator


class _Generator:
    """All derived state of one config; O(items + users) memory."""

    def __init__(self, s: SyntheticConfig) -> None:
        self.s = s
        self.vocab = _vocab(s.topics)
        self._make_items()
        self._make_activity()
        mean = max(1.0, self.total / s.users)
        # users per sampling block: a power of two dividing USER_BLOCK, ~_BLOCK_ROWS rows
        bs = USER_BLOCK
        while bs > 64 and bs * mean > _BLOCK_ROWS:
            bs //= 2
        self.sample_block = bs
        self.ukey_width = max(7, len(str(s.users - 1)))
        self.ikey_width = max(7, len(str(s.items - 1)))
        self._taste_cache: tuple[int, dict[str, np.ndarray]] | None = None

    # ---- items ---------------------------------------------------------------------------

    def _make_items(self) -> None:
        s, T, n = self.s, self.s.topics, self.s.items
        rng = _rng(s.seed, _S_ITEMS)
        self.pi = 0.5 / T + 0.5 * rng.dirichlet(np.full(T, 2.0))
        self.dom = rng.choice(T, size=n, p=self.pi).astype(np.int64)
        pure = rng.random(n) < 0.35
        self.wdom = np.where(pure, 1.0, 0.5 + 0.5 * rng.beta(2.0, 1.2, n))
        self.sec = (self.dom + rng.integers(1, T, n)) % T  # any topic but the dominant one
        rank = rng.permutation(n) + 1
        self.pop = rank.astype(np.float64) ** -s.popularity_exponent
        self.quality = rng.normal(0.0, 0.4, n)  # latent, only shifts ratings
        self.year = rng.integers(1970, 2025, n)

        # per-topic inverse-CDF tables: entry (item, topic, mix weight * popularity), grouped by
        # topic; topic t's cumulative share lives in (t, t+1] so one lookup serves all topics
        e_item = np.concatenate([np.arange(n), np.arange(n)])
        e_topic = np.concatenate([self.dom, self.sec])
        e_w = np.concatenate([self.wdom, 1.0 - self.wdom]) * np.concatenate([self.pop, self.pop])
        keep = e_w > 0
        e_item, e_topic, e_w = e_item[keep], e_topic[keep], e_w[keep]
        order = np.argsort(e_topic, kind="stable")
        e_item, e_topic, e_w = e_item[order], e_topic[order], e_w[order]
        counts = np.bincount(e_topic, minlength=T)
        ends = np.cumsum(counts)
        starts = ends - counts
        totals = np.bincount(e_topic, weights=e_w, minlength=T)
        cs = np.cumsum(e_w)
        before = np.where(starts > 0, cs[np.maximum(starts - 1, 0)], 0.0)
        local = (cs - before[e_topic]) / totals[e_topic]
        local[ends[counts > 0] - 1] = 1.0  # exact topic end, no rounding gap
        self.e_item, self.e_topic = e_item, e_topic
        # +inf sentinel: a scan that passes the last entry stops there (clamped by t_end)
        self.e_cdf = np.append(e_topic + local, np.inf)
        # guide table (Chen 1974): the search for q starts at the first entry whose CDF
        # exceeds its bucket's lower edge; ~1 entry per bucket, so scans are short and
        # 10x cheaper than a binary search with its cache misses
        g = len(e_item)
        self.g_scale = g / T
        self.guide = np.searchsorted(self.e_cdf, np.arange(g + 1) / self.g_scale, side="right")
        self.e_share = e_w / totals[e_topic]  # q_t(i) per entry, for the exact fallback
        self.t_end = ends
        self.topic_ok = counts > 0  # users only pick topics that have items

    @cached_property
    def ring(self) -> dict[str, np.ndarray]:
        """Per-topic rings (items by dominant topic, random order), from their own stream.

        ``items`` grouped by topic; per item its ring's ``first`` index into ``items``, ring
        ``size``, position ``pos`` in the ring and ``successor`` (the next item round the ring).
        """
        s, n = self.s, self.s.items
        perm = _rng(s.seed, _S_RING).permutation(n)
        items = perm[np.argsort(self.dom[perm], kind="stable")]
        counts = np.bincount(self.dom, minlength=s.topics)
        starts = np.cumsum(counts) - counts
        first, size = starts[self.dom], counts[self.dom]
        pos = np.empty(n, np.int64)
        pos[items] = np.arange(n) - starts[self.dom[items]]
        return {"items": items, "first": first, "size": size, "pos": pos,
                "successor": items[first + (pos + 1) % size]}

    # ---- activity ------------------------------------------------------------------------

    def _make_activity(self) -> None:
        s = self.s
        self.min_act = MIN_ACTIVITY if s.interactions >= MIN_ACTIVITY * s.users \
            else max(1, s.interactions // s.users)
        self.cap = max(self.min_act, s.items // 2)
        total = int(np.clip(s.interactions, s.users * self.min_act, s.users * self.cap))
        room = self.cap - self.min_act
        extra = total - s.users * self.min_act
        w = _rng(s.seed, _S_ACTIVITY).lognormal(0.0, 1.1, s.users)
        # water-filling: scale the heavy-tailed weights to the target, capping the largest
        x = np.zeros(s.users)
        free = np.ones(s.users, bool)
        capped_sum = 0.0
        for _ in range(100):
            if not free.any():
                break
            x[free] = w[free] * ((extra - capped_sum) / w[free].sum())
            over = free & (x >= room)
            if not over.any():
                break
            x[over] = room
            free &= ~over
            capped_sum = float(room) * int((~free).sum())
        base = np.floor(x).astype(np.int64)
        short = int(extra - base.sum())  # largest-remainder rounding: the total is exact
        if short > 0:
            frac = x - base
            base[np.argpartition(-frac, short - 1)[:short]] += 1
        self.activity = (self.min_act + base).astype(np.int32)
        self.total = int(self.activity.sum())
        self.offsets = np.concatenate([[0], np.cumsum(self.activity, dtype=np.int64)])

    # ---- user latents --------------------------------------------------------------------

    def taste_block(self, b: int) -> dict[str, np.ndarray]:
        """Latents of users [b*USER_BLOCK, ...): topics/weights (n, 3), review propensity, ..."""
        if self._taste_cache is not None and self._taste_cache[0] == b:
            return self._taste_cache[1]
        s, T = self.s, self.s.topics
        nb = min(USER_BLOCK, s.users - b * USER_BLOCK)
        rng = _rng(s.seed, _S_TASTE, b)
        n_ok = int(self.topic_ok.sum())
        k = np.minimum(rng.choice([1, 2, 3], size=nb, p=[0.35, 0.4, 0.25]), n_ok)
        # Gumbel-top-3 = three topics ~ pi without replacement
        logits = np.where(self.topic_ok, np.log(self.pi), -np.inf)
        g = logits + rng.gumbel(size=(nb, T))
        top = np.argsort(-g, axis=1)[:, :3] if T >= 3 else \
            np.concatenate([np.argsort(-g, axis=1), np.zeros((nb, 3 - T), np.int64)], axis=1)
        gam = rng.gamma(1.0, size=(nb, 3)) + 1e-9
        gam[np.arange(3)[None, :] >= k[:, None]] = 0.0
        order = np.argsort(-gam, axis=1)  # slot 0 = strongest topic
        w = np.take_along_axis(gam, order, 1)
        top = np.take_along_axis(top, order, 1)
        w /= w.sum(1, keepdims=True)
        # slot thresholds; +inf past the last real slot so rounding never picks an empty slot
        cw = np.cumsum(w, axis=1)[:, :2]
        cw[np.arange(2)[None, :] >= (k - 1)[:, None]] = np.inf
        rr = s.review_rate
        if 0.0 < rr < 1.0:
            prop = rng.beta(2.0 * rr, 2.0 * (1.0 - rr), nb)
        else:
            prop = np.full(nb, rr)
        bias = rng.normal(0.0, 0.35, nb)
        span = np.exp(rng.uniform(np.log(7 * 86400), np.log(5 * 365 * 86400), nb))
        start = _T0 + rng.random(nb) * (_T1 - _T0 - span - 86400)
        out = {"topics": top.astype(np.int64), "weights": w, "cw": cw, "k": k,
               "review_prop": prop, "bias": bias, "span": span,
               "start": start.astype(np.int64)}
        self._taste_cache = (b, out)
        return out

    def user_latents(self, a: int, nb: int) -> dict[str, np.ndarray]:
        """Latents of users [a, a+nb) inside one taste block."""
        b = a // USER_BLOCK
        off = a - b * USER_BLOCK
        assert off + nb <= USER_BLOCK
        return {k: v[off:off + nb] for k, v in self.taste_block(b).items()}

    # ---- sampling ------------------------------------------------------------------------

    def _draw(self, uid: np.ndarray, lat: dict[str, np.ndarray],
              rng: np.random.Generator) -> np.ndarray:
        """One with-replacement draw per row from p_u (topic by taste, item by topic CDF)."""
        n = len(uid)
        r_slot = rng.random(n)
        r_item = rng.random(n)
        cw = lat["cw"][uid]
        slot = (r_slot >= cw[:, 0]).astype(np.int64) + (r_slot >= cw[:, 1])
        t = lat["topics"][uid, slot]
        e = self._lookup(t + r_item)
        e = np.minimum(e, self.t_end[t] - 1)  # t + r can round up to t + 1
        item = self.e_item[e]
        if self.s.noise > 0:
            uni = rng.random(n) < self.s.noise
            item[uni] = rng.integers(0, self.s.items, int(uni.sum()))
        return item

    def _runs(self, users: np.ndarray, need: np.ndarray, f: float, k: np.ndarray,
              lat: dict[str, np.ndarray], rng: np.random.Generator,
              run_rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(local user, item, rows per user) of runs along the rings, grouped by user.

        Run starts are drawn exactly as the ``order: none`` rows (same count at strength 0, from
        the same stream); lengths come from their own stream, so strength 0 reproduces that
        output. A run has ``1 + Geometric`` items (continue with prob. ``order_strength``), at
        most its ring's size (once round) and the user's activity.
        """
        s = self.s.order_strength
        c = np.ceil(need * f * (1.0 - s)).astype(np.int64) + 3  # runs per user
        cu = np.repeat(users, c)
        start = self._draw(cu, lat, rng)
        ring = self.ring
        cap = np.minimum(ring["size"][start], k[cu])
        if s <= 0.0:
            length = np.ones(len(cu), np.int64)
        elif s >= 1.0:
            length = cap
        else:  # P(length > l) = s ** l
            g = np.floor(np.log1p(-run_rng.random(len(cu))) / np.log(s))
            length = np.minimum(1 + np.minimum(g, 1 << 40).astype(np.int64), cap)
        uid = np.repeat(cu, length)
        st = np.repeat(start, length)
        off = np.arange(len(uid)) - np.repeat(np.cumsum(length) - length, length)
        item = ring["items"][ring["first"][st] + (ring["pos"][st] + off) % ring["size"][st]]
        rows = np.bincount(cu, weights=length, minlength=len(k)).astype(np.int64)[users]
        return uid, item, rows

    def _lookup(self, q: np.ndarray) -> np.ndarray:
        """searchsorted(e_cdf, q, 'right') via the guide table."""
        e = self.guide[np.minimum((q * self.g_scale).astype(np.int64), len(self.guide) - 1)]
        active = np.arange(len(q))
        while active.size:
            active = active[self.e_cdf[e[active]] <= q[active]]
            e[active] += 1
        return e

    def _exact(self, u: int, chosen: np.ndarray, need: int, lat: dict[str, np.ndarray],
               rng: np.random.Generator) -> np.ndarray:
        """Continue u's without-replacement sequence exactly: Gumbel-top-k over all items."""
        s = self.s
        tw = np.zeros(s.topics)
        np.add.at(tw, lat["topics"][u], lat["weights"][u])  # padded slots may repeat a topic
        p = np.bincount(self.e_item, weights=tw[self.e_topic] * self.e_share,
                        minlength=s.items) * (1.0 - s.noise) + s.noise / s.items
        g = rng.gumbel(size=s.items)
        with np.errstate(divide="ignore"):
            key = np.where(p > 0, np.log(p), -1e6) + g  # zero-p items last, in random order
        key[chosen] = -np.inf
        top = np.argpartition(-key, need - 1)[:need]
        return top[np.argsort(-key[top], kind="stable")]

    def sample(self, a: int, nb: int, lat: dict[str, np.ndarray],
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(local user, item) rows of users [a, a+nb), grouped by user in sampling order."""
        k = self.activity[a:a + nb].astype(np.int64)
        done_u, done_i, done_p = [], [], []
        users = np.arange(nb)
        need = k.copy()
        drawn = np.zeros(nb, np.int64)
        have = (np.empty(0, np.int64),) * 3
        runs = self.s.order == "transitions"
        run_rng = _rng(self.s.seed, _S_RUN, a // self.sample_block) if runs else None
        for f in (1.25, 2.0, 4.0):
            if runs:
                uid, item, m = self._runs(users, need, f, k, lat, rng, run_rng)
            else:
                m = np.ceil(need * f).astype(np.int64) + 3
                uid = np.repeat(users, m)
                item = self._draw(uid, lat, rng)
            pos = np.arange(len(uid)) - np.repeat(np.cumsum(m) - m, m) + np.repeat(drawn[users], m)
            drawn[users] += m
            u, it, p = _first_unique(np.concatenate([have[0], uid]),
                                     np.concatenate([have[1], item]),
                                     np.concatenate([have[2], pos]), self.s.items)
            cnt, rank = _segment_rank(u, nb)
            full = cnt >= k
            keep = full[u] & (rank < k[u])
            done_u.append(u[keep]), done_i.append(it[keep]), done_p.append(p[keep])
            short = ~full[u]
            have = (u[short], it[short], p[short])
            users = np.flatnonzero(np.isin(np.arange(nb), users) & ~full)
            need = k[users] - cnt[users]
            if users.size == 0:
                break
        done_u.append(have[0]), done_i.append(have[1]), done_p.append(have[2])
        for u, nd in zip(users, need):  # rare: users whose topics cannot fill them quickly
            sel = have[0] == u
            extra = self._exact(int(u), have[1][sel], int(nd), lat, rng)
            done_u.append(np.full(len(extra), u)), done_i.append(extra)
            done_p.append(drawn[u] + np.arange(len(extra)))
        u = np.concatenate(done_u)
        it = np.concatenate(done_i)
        p = np.concatenate(done_p)
        order = np.lexsort((p, u)) if len(done_u) > 1 else np.arange(len(u))
        return u[order], it[order]

    # ---- interaction rows ----------------------------------------------------------------

    def block_table(self, a: int, nb: int) -> pa.Table:
        s, v = self.s, self.vocab
        rng = _rng(s.seed, _S_SAMPLE, a // self.sample_block)
        lat = self.user_latents(a, nb)
        uid, item = self.sample(a, nb, lat, rng)
        n = len(uid)

        # rating: taste match of the item (1 = the user's strongest topic), item, user, noise
        tu, wu = lat["topics"][uid], lat["weights"][uid]
        d, sc, wd = self.dom[item][:, None], self.sec[item][:, None], self.wdom[item][:, None]
        match = (wu * (wd * (tu == d) + (1.0 - wd) * (tu == sc))).sum(1) / wu[:, 0]
        score = 1.4 + 3.2 * match + self.quality[item] + lat["bias"][uid] + rng.normal(0, 0.6, n)
        rating = np.clip(np.rint(score), 1, 5).astype(np.int64)

        # timestamps: sorted uniforms over the user's active span (exponential spacings),
        # +rank seconds so they strictly increase
        cnt, rank = _segment_rank(uid, nb)  # every user has >= 1 row
        gaps = rng.exponential(size=n)
        tail = rng.exponential(size=nb)
        cs = np.cumsum(gaps)
        first = np.cumsum(cnt) - cnt
        local = cs - (cs[first] - gaps[first])[uid]
        frac = local / (local[first + cnt - 1] + tail)[uid]
        ts = lat["start"][uid] + (lat["span"][uid] * frac).astype(np.int64) + rank

        # reviews: the item's topic words plus a sentiment that matches the rating
        has = rng.random(n) < lat["review_prop"][uid]
        idx = np.flatnonzero(has)
        r = len(idx)
        it_r = item[idx]
        topic = np.where(rng.random(r) < self.wdom[it_r], self.dom[it_r], self.sec[it_r])
        n1, n2, _ = _distinct3(rng, r, _POOL)
        a1 = topic * _POOL + rng.integers(0, _POOL, r)
        n1, n2 = topic * _POOL + n1, topic * _POOL + n2
        tmpl = rng.integers(0, 3, r)
        rt = rating[idx]
        op = (v.openers, (rt - 1) * 4 + rng.integers(0, 4, r))
        sa_i = (rt - 1) * 4 + rng.integers(0, 4, r)
        sa, sa_c = (v.sadjs, sa_i), (v.sadjs_cap, sa_i)
        N1, N2, A1, A1c = (v.nouns, n1), (v.nouns, n2), (v.adjs, a1), (v.adjs_cap, a1)
        reviews = _render(tmpl, [
            [op, " The ", N1, " was ", sa, "."],
            [op, " ", sa_c, " ", A1, " ", N1, " and plenty of ", N2, "."],
            [A1c, " ", N1, ", ", sa, " ", N2, ". ", op],
        ])
        review = _spread(reviews, idx, n)

        cols = [
            _keys("u", a + uid, self.ukey_width),
            _keys("i", item, self.ikey_width),
            pa.array(rating.astype(np.float32)),
            pa.array(ts, pa.int64()),
            review,
            pa.nulls(n, pa.string()),
        ]
        return pa.Table.from_arrays(cols, schema=RAW_INTERACTIONS)

    def blocks(self) -> Iterator[tuple[int, int, pa.Table]]:
        bs = self.sample_block
        for a in range(0, self.s.users, bs):
            nb = min(bs, self.s.users - a)
            yield a, a + nb, self.block_table(a, nb)

    def chunks(self, chunk_users: int) -> Iterator[pa.Table]:
        """Tables of ``chunk_users`` complete users each (the last may hold fewer)."""
        blocks = self.blocks()
        cur: tuple[int, int, pa.Table] | None = None
        for c0 in range(0, self.s.users, chunk_users):
            c1 = min(c0 + chunk_users, self.s.users)
            parts, u = [], c0
            while u < c1:
                if cur is None or cur[1] <= u:
                    cur = next(blocks)
                hi = min(c1, cur[1])
                r0 = int(self.offsets[u] - self.offsets[cur[0]])
                r1 = int(self.offsets[hi] - self.offsets[cur[0]])
                parts.append(cur[2].slice(r0, r1 - r0))
                u = hi
            yield pa.concat_tables(parts) if len(parts) > 1 else parts[0]

    # ---- side tables ---------------------------------------------------------------------

    @cached_property
    def item_keys(self) -> pa.Array:
        return _keys("i", np.arange(self.s.items), self.ikey_width)

    def items_table(self) -> pa.Table:
        """Title, description and attributes from the item's own topics only (no leakage)."""
        s, v, n = self.s, self.vocab, self.s.items
        rng = _rng(s.seed, _S_ITEM_TEXT)
        dom, sec = self.dom, self.sec

        def words(topic: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
            x, y, z = _distinct3(rng, n, _POOL)
            return topic * _POOL + x, topic * _POOL + y, topic * _POOL + z, \
                topic * _POOL + rng.integers(0, _POOL, n)

        n1, n2, _, a1 = words(dom)
        N1, N2, A1 = (v.nouns_cap, n1), (v.nouns_cap, n2), (v.adjs_cap, a1)
        GA = (v.gadjs_cap, rng.integers(0, len(_GENERIC_ADJS), n))
        GN = (v.gnouns_cap, rng.integers(0, len(_GENERIC_NOUNS), n))
        title = _render(rng.integers(0, 8, n), [
            ["The ", A1, " ", N1],
            [N1, " of the ", A1, " ", N2],
            [A1, " ", N1, " ", GN],
            [GA, " ", A1, " ", N1],
            [N1, ": ", A1, " ", N2],
            [A1, " ", N2],
            [N1, " and ", N2],
            ["The ", GA, " ", N1, " ", GN],
        ])

        def sentence(choice: np.ndarray) -> pa.Array:
            x, y, z, a = words(dom)
            x, y, z, a = (v.nouns, x), (v.nouns, y), (v.nouns, z), (v.adjs, a)
            g1 = (v.gadjs, rng.integers(0, len(_GENERIC_ADJS), n))
            g2 = (v.gnouns, rng.integers(0, len(_GENERIC_NOUNS), n))
            return _render(choice, [
                ["The story of ", x, " and ", y, ", told through ", a, " ", z, "."],
                ["Perfect for anyone who loves ", a, " ", x, "."],
                ["Features ", x, ", ", y, " and ", a, " ", z, "."],
                ["This ", g1, " ", g2, " explores ", a, " ", x, " and ", y, "."],
                ["Expect ", a, " ", x, " and plenty of ", y, "."],
                ["Fans call it ", a, " and full of ", x, "."],
            ])

        s1 = sentence(rng.integers(0, 6, n))
        s2 = sentence(np.where(rng.random(n) < 0.6, rng.integers(0, 6, n), -1))
        m1, m2, _, ma = words(sec)
        secondary = 1.0 - self.wdom >= 0.15  # a real second topic shows in the text
        s3 = _render(np.where(secondary, rng.integers(0, 2, n), -1), [
            ["With hints of ", (v.adjs, ma), " ", (v.nouns, m1), "."],
            ["Also touches on ", (v.nouns, m1), " and ", (v.nouns, m2), "."],
        ])
        description = pc.binary_join_element_wise(s1, s2, s3, " ", null_handling="skip")

        t1, t2, _, ta = words(dom)
        u1, _, _, _ = words(sec)
        tags = pc.binary_join_element_wise(
            _take(v.nouns, t1), _take(v.nouns, t2),
            _masked(_take(v.nouns, u1), secondary),
            _masked(_take(v.adjs, ta), rng.random(n) < 0.5),
            '", "', null_handling="skip")
        attributes = _join('{"category": "', _take(v.names, dom), '", "tags": ["', tags,
                           '"], "year": ', pa.array(self.year).cast(pa.string()), "}")
        return pa.Table.from_arrays([self.item_keys, title, description, attributes],
                                    schema=RAW_ITEMS)

    def users_table(self) -> pa.Table:
        """Demographics drawn independently of taste: they must not reveal it directly."""
        s = self.s
        rng = _rng(s.seed, _S_USER_ATTRS)
        age = _take(pa.array(_AGE_BANDS), rng.choice(len(_AGE_BANDS), s.users, p=_AGE_P))
        region = _take(pa.array(_REGIONS), rng.choice(len(_REGIONS), s.users, p=_REGION_P))
        since = pa.array(rng.integers(2008, 2025, s.users)).cast(pa.string())
        attrs = _join('{"age_band": "', age, '", "region": "', region, '", "member_since": ',
                      since, "}")
        return pa.Table.from_arrays([_keys("u", np.arange(s.users), self.ukey_width), attrs],
                                    schema=RAW_USERS)

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.total != self.s.interactions:
            out["synthetic_interactions_clamped_to"] = self.total
        if self.min_act < MIN_ACTIVITY:
            out["synthetic_min_activity_lowered_to"] = self.min_act
        return out


# --------------------------------------------------------------------------------------------
# public API


def _synthetic(cfg: DataConfig | SyntheticConfig) -> SyntheticConfig:
    return cfg.synthetic if isinstance(cfg, DataConfig) else cfg


def fingerprint(cfg: DataConfig | SyntheticConfig) -> str:
    """Hash of everything that shapes the output (chunk_users does not)."""
    data = _synthetic(cfg).model_dump(mode="json")
    data.pop("chunk_users")
    if data["order"] == "none":  # the output of the versions before these fields existed
        data.pop("order"), data.pop("order_strength")
    data["generator_version"] = GENERATOR_VERSION
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@register("synthetic")
def load_synthetic(cfg: DataConfig) -> RawData:
    """Generate the configured data set; interactions stream in ``chunk_users``-user chunks."""
    s = _synthetic(cfg)
    gen = _Generator(s)
    return RawData(
        interactions=gen.chunks(s.chunk_users),
        items=gen.items_table(),
        users=gen.users_table(),
        user_grouped=True,
        fingerprint=fingerprint(s),
        report=gen.report(),
        # ids follow table order (u0000123 -> 123), so latent_truth rows index canonical ids
        # of a fresh ingest, and never-sampled catalog items still get ids
        keep_all_entities=True,
    )


def latent_truth(cfg: DataConfig | SyntheticConfig, *, dense: bool = True) -> dict[str, Any]:
    """The planted structure, for tests and benchmarks (row i = item/user index i).

    Keys: ``topic_names`` (list), ``topic_prior`` (T,); ``item_topic`` / ``item_secondary``
    (dominant and second topic), ``item_weight`` (dominant share), ``item_popularity``;
    ``user_topics`` / ``user_weights`` (users, 3) (weight 0 = unused slot, slot 0 strongest),
    ``user_activity``, ``min_activity``; ``item_successor`` (the next item round its topic's
    ring: the transitions planted with ``order: transitions``, unused with ``order: none``; a
    topic with one item makes it its own successor); with ``dense`` also ``item_topics``
    (items, T) and ``user_taste`` (users, T) float32 mixtures (skip them for very large
    configs).
    """
    s = _synthetic(cfg)
    gen = _Generator(s)
    n_blocks = -(-s.users // USER_BLOCK)
    blocks = [gen.taste_block(b) for b in range(n_blocks)]
    ut = np.concatenate([b["topics"] for b in blocks])
    uw = np.concatenate([b["weights"] for b in blocks])
    out: dict[str, Any] = {
        "topic_names": gen.vocab.names.to_pylist(),
        "topic_prior": gen.pi,
        "item_topic": gen.dom,
        "item_secondary": gen.sec,
        "item_weight": gen.wdom,
        "item_popularity": gen.pop,
        "user_topics": ut,
        "user_weights": uw,
        "user_activity": gen.activity,
        "min_activity": gen.min_act,
        "item_successor": gen.ring["successor"],
    }
    if dense:
        it = np.zeros((s.items, s.topics), np.float32)
        it[np.arange(s.items), gen.dom] += gen.wdom
        it[np.arange(s.items), gen.sec] += 1.0 - gen.wdom
        taste = np.zeros((s.users, s.topics), np.float32)
        for j in range(3):
            np.add.at(taste, (np.arange(s.users), ut[:, j]), uw[:, j])
        out["item_topics"], out["user_taste"] = it, taste
    return out

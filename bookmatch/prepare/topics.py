"""A deliberately simple topic label per chunk: the lexicon with the most keyword hits.

It only has to be good enough to pick `same_topic` negatives that share subject matter (two sea stories by
different authors), so the matcher cannot lean on topic to tell books apart.
"""

from __future__ import annotations

import re
from collections import Counter

GENERAL = "general"

TOPIC_LEXICON: dict[str, frozenset[str]] = {
    name: frozenset(words.split())
    for name, words in {
        "sea": "sea ship ships sail sails sailor sailors captain deck ocean voyage harbour harbor waves crew mast boat shore island whale",
        "war": "war battle soldiers soldier army regiment enemy general troops fight fought guns rifle siege cannon officers camp victory",
        "crime": "murder police detective crime criminal thief stolen inspector prison clue body robbery revolver killed guilty jury",
        "romance": "love loved lover kiss kissed marry married marriage heart darling sweetheart wedding beloved passion embrace",
        "fairy_tale": "king queen princess prince fairy fairies witch dwarf giant castle enchanted magic wizard dragon palace",
        "religion": "god lord church prayer pray heaven soul faith priest holy sin christ bible angel saint worship",
        "philosophy": "virtue reason truth knowledge nature mind soul justice socrates philosophy wisdom idea ideas argument principle",
        "science": "experiment species cells animal animals theory science scientific chemical earth energy matter space machine",
        "travel": "journey road travelled traveller miles town village mountains railway hotel country valley inn across",
        "poetry": "thee thou thy o'er doth hath ye muse song sing verse nymph lyre",
    }.items()
}

_WORD = re.compile(r"[a-z']+")
MIN_HITS = 2
_TOPIC_OF_WORD = {word: name for name, words in TOPIC_LEXICON.items() for word in words}
_TOPIC_ORDER = {name: rank for rank, name in enumerate(TOPIC_LEXICON)}


def chunk_topic(text: str) -> str:
    """The topic whose lexicon words occur most often in `text`; `general` when no topic has MIN_HITS hits.

    Ties go to the topic listed first, so the label is deterministic. A word in two lexicons (soul) counts for
    the one listed last; the lexicons are a heuristic, not a taxonomy.
    """
    hits = Counter(map(_TOPIC_OF_WORD.get, _WORD.findall(text.lower())))
    hits.pop(None, None)
    if not hits:
        return GENERAL
    best = max(hits.items(), key=lambda item: (item[1], -_TOPIC_ORDER[item[0]]))
    return best[0] if best[1] >= MIN_HITS else GENERAL

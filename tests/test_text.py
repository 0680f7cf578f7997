"""Text decoding, Gutenberg boilerplate removal, standardization, sentence splitting and chunking."""

from __future__ import annotations

import codecs
import gzip
import re
from pathlib import Path

import pytest

from bookmatch.text.chunking import (
    Chunk,
    chunk_book,
    looks_like_english_prose,
    make_chunk_records,
    make_chunks,
)
from bookmatch.text.decode import UnreadableText, decode_bytes
from bookmatch.text.gutenberg import BookMeta, parse_header, strip_boilerplate
from bookmatch.text.sentences import (
    boundary_agreement,
    get_splitter,
    spacy_split_sentences,
    split_sentences,
)
from bookmatch.text.standardize import SkipBook, load_book, reflow, slugify, standardize

PROSE = (
    "It was late in the evening when the doctor came back to the house. He had walked all the way from the "
    'station, and he was tired. "Is she awake?" he asked. The nurse said that she was, and that she had been '
    "asking for him since the afternoon. He went up the stairs slowly, for his knees were not what they had been."
)


def gutenberg_file(body: str, style: str = "new") -> str:
    """A synthetic Gutenberg file around `body` in one of the marker styles found in the corpus."""
    if style == "new":
        return (
            "The Project Gutenberg EBook of A Quiet House, by Jane Example\n\n"
            "This eBook is for the use of anyone anywhere at no cost.\n\n"
            "Title: A Quiet House\n       and Other Stories\n\nAuthor: Jane Example\n\n"
            "Release Date: May 1, 2004 [EBook #12345]\n\nLanguage: English\n\n"
            "*** START OF THIS PROJECT GUTENBERG EBOOK A QUIET HOUSE ***\n\n\n\n"
            "Produced by Some Volunteers and the Online Distributed\nProofreading Team at http://www.pgdp.net\n\n\n"
            f"{body}\n\n\n\nEnd of the Project Gutenberg EBook of A Quiet House, by Jane Example\n\n"
            "*** END OF THIS PROJECT GUTENBERG EBOOK A QUIET HOUSE ***\n\n"
            "***** This file should be named 12345.txt or 12345.zip *****\n\n"
            "*** START: FULL LICENSE ***\n\nTHE FULL PROJECT GUTENBERG LICENSE\n"
        )
    if style == "old":
        return (
            "***The Project Gutenberg Etext of A Quiet House***\n#1 in our series by Jane Example\n\n"
            "Copyright laws are changing all over the world.\n\n"
            '***START**THE SMALL PRINT!**FOR PUBLIC DOMAIN ETEXTS**START***\nWhy is this "Small Print!" '
            "statement here? You know: lawyers.\n"
            "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n\n\n"
            "E-text prepared by A. Volunteer\n\n"
            f"{body}\n\n\nEnd of The Project Gutenberg Etext of A Quiet House\n"
        )
    if style == "the":
        return (
            "Title: A Quiet House\n\nAuthor: Jane Example\n\n[eBook #777]\n\n"
            "***START OF THE PROJECT GUTENBERG EBOOK A QUIET HOUSE***\n\n"
            f"{body}\n\n***END OF THE PROJECT GUTENBERG EBOOK A QUIET HOUSE***\n\n"
            "***START**THE SMALL PRINT!**FOR PUBLIC DOMAIN EBOOKS**START***\nlicence text\n"
            "*END THE SMALL PRINT! FOR PUBLIC DOMAIN EBOOKS*Ver.02/11/02*END*\n"
        )
    raise ValueError(style)


# --- decoding -------------------------------------------------------------------------------------------------


def test_decode_handles_boms_legacy_encodings_and_line_endings():
    assert decode_bytes(codecs.BOM_UTF8 + "caf\u00e9\r\nbar\rbaz".encode("utf-8")) == "caf\u00e9\nbar\nbaz"
    assert decode_bytes(codecs.BOM_UTF16_LE + "na\u00efve text".encode("utf-16-le")) == "na\u00efve text"
    assert decode_bytes(codecs.BOM_UTF16_BE + "na\u00efve text".encode("utf-16-be")) == "na\u00efve text"
    latin = ("Le caf\u00e9 \u00e9tait ferm\u00e9, et la for\u00eat tr\u00e8s sombre. " * 20).encode("latin-1")
    assert "caf\u00e9" in decode_bytes(latin)
    cp1252 = b"\x93Well,\x94 he said, \x91it is late.\x92 " * 20
    assert "\u201cWell,\u201d" in decode_bytes(cp1252)


def test_decode_keeps_text_cut_inside_a_character():
    data = "Stevenson wrote it th\u00e9".encode("utf-8")[:-1]
    assert decode_bytes(data) == "Stevenson wrote it th"


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"  \n\t\r\n  ", "empty"),
        (gzip.compress(b"some text " * 100), "gzip"),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj", "PDF"),
        (b"abc\x00def\x00" * 50, "binary"),
        (bytes(range(1, 32)) * 100, "non-text"),
    ],
)
def test_decode_refuses_non_text_with_a_reason(data, reason):
    with pytest.raises(UnreadableText, match=reason):
        decode_bytes(data, source="x.txt")


# --- Gutenberg header and boilerplate --------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["new", "old", "the"])
def test_strip_boilerplate_keeps_only_the_body(style):
    body = f"CHAPTER I\n\n{PROSE}\n\n[Illustration: The doctor at the door\nof the house]\n\n{PROSE}"
    stripped = strip_boilerplate(gutenberg_file(body, style))
    assert stripped.startswith("CHAPTER I")
    assert stripped.endswith("been.")
    assert "Illustration" not in stripped
    assert not re.search(r"gutenberg|small print|produced by|prepared by|licen[cs]e", stripped, re.I)


def test_parse_header_reads_fields_first_line_and_old_style():
    meta = parse_header(gutenberg_file(PROSE, "new"))
    assert meta == BookMeta(
        title="A Quiet House and Other Stories", author="Jane Example", language="English", ebook_id=12345
    )
    old = parse_header(gutenberg_file(PROSE, "old"))
    assert (old.title, old.author) == ("A Quiet House", "Jane Example")
    one_line = " ".join(gutenberg_file(PROSE, "new").split())
    flat = parse_header(one_line)
    assert (flat.title, flat.author, flat.ebook_id) == ("A Quiet House and Other Stories", "Jane Example", 12345)
    assert parse_header("The Project Gutenberg EBook of Kim, by Rudyard Kipling\n\nbody") == BookMeta(
        title="Kim", author="Rudyard Kipling"
    )
    # a field name inside a title, on the first line and in the Title field, is part of the title
    titled = parse_header(
        "The Project Gutenberg EBook of Stories By English Authors: London, by Various\n\n"
        "Title: Stories By English Authors: London\n\nAuthor: Various\n\n*** START OF THIS ***\nbody"
    )
    assert (titled.title, titled.author) == ("Stories By English Authors: London", "Various")


def test_a_closing_transcribers_note_is_cut_even_when_indented():
    body = "\n\n".join(f"Paragraph {i} of the story, which goes on for a while." for i in range(200))
    stripped = strip_boilerplate(body + "\n\n    Transcriber's Notes:\n\n    Obvious typos were silently corrected.\n")
    assert stripped.endswith("Paragraph 199 of the story, which goes on for a while.")


def _story(name: str, paragraphs: int = 12) -> str:
    return "\n\n".join(f"{name} paragraph {i}. {PROSE}" for i in range(paragraphs))


def test_two_books_in_one_file_keep_both_texts_and_count_the_boundary():
    """An anthology assembled by hand: the first book's end line is a boundary, not the end of the text."""
    from bookmatch.text.gutenberg import strip_boilerplate_counted

    first, second = _story("First"), _story("Second")
    joined = gutenberg_file(first, "new") + "\n\n" + gutenberg_file(second, "new")
    body, removed = strip_boilerplate_counted(joined)
    assert body == strip_boilerplate(gutenberg_file(first, "new")) + "\n\n" + strip_boilerplate(gutenberg_file(second))
    assert removed.boundaries == 1 and removed.between_books > 0 and removed.credits > 0
    assert removed.header + removed.between_books + removed.footer + removed.credits < len(joined) - len(body)
    # The old-style end line of the issue, followed by the second book with no header of its own.
    old_end = gutenberg_file(first, "old") + "\n\n" + second + "\n"
    assert strip_boilerplate(old_end).endswith(second) and "First paragraph 11" in strip_boilerplate(old_end)


def test_an_end_line_followed_by_licence_or_a_short_note_still_ends_the_book():
    from bookmatch.text.gutenberg import strip_boilerplate_counted

    story = _story("Only")
    for tail in (
        "\n\nThis etext was scanned by a volunteer; see www.example.org for more.\n",
        "\n\n" + "Please donate to the Foundation. Copyright and license terms apply. " * 200,
    ):
        body, removed = strip_boilerplate_counted(gutenberg_file(story, "old") + tail)
        assert body == strip_boilerplate(gutenberg_file(story, "old"))
        assert removed.boundaries == 0 and removed.footer >= len(tail)


def test_licence_without_body_comes_back_empty():
    assert strip_boilerplate(gutenberg_file("", "new")) == ""


# --- standardization --------------------------------------------------------------------------------------------


def test_standardize_normalizes_typography_and_reflows():
    text = gutenberg_file(
        "\u201cThe \ufb01rst\u201d\u00a0was _very_ good\u2014or so\n  she   thought.\n\n\n\nIt\u2019s over.\r\n", "new"
    )
    assert standardize(text) == '"The first" was very good--or so she thought.\n\nIt\'s over.'


def test_reflow_puts_each_paragraph_on_one_line():
    assert reflow("  one\ntwo  \n \t\nthree\n\n\n\nfour\nfive\n") == "one two\n\nthree\n\nfour five"


def test_slugify():
    assert slugify("Dor\u00e9, Gustave") == "dore_gustave"
    assert slugify("Aunt Jo's Scrap Bag, Volume 5\rJimmy's Cruise") == "aunt_jos_scrap_bag_volume_5_jimmys_cruise"
    assert slugify("Faust \u2014 Part 1") == "faust_part_1"
    assert slugify("???") == ""


def test_load_book_falls_back_to_folder_and_file_name(tmp_path):
    folder = tmp_path / "Example, Jane"
    folder.mkdir()
    path = folder / "Odd; name & 'quotes': one\rtwo.txt"
    path.write_text(("\n\n".join([PROSE] * 10)), encoding="utf-8")
    book = load_book(path)
    assert (book.author, book.title) == ("Example, Jane", "Odd; name & 'quotes': one two")
    assert book.source_id == "Example, Jane/Odd; name & 'quotes': one\rtwo"
    assert book.text.count("\n\n") == 9


def test_load_book_skips_short_files_with_one_line(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text(gutenberg_file("Just a line.", "new"), encoding="utf-8")
    with pytest.raises(SkipBook) as err:
        load_book(path)
    assert "\n" not in str(err.value) and "short.txt" in str(err.value)


def test_bad_inputs_are_skipped_or_handled(corpus_dir):
    bad = corpus_dir / "bad_inputs"
    skipped = {}
    for path in sorted(bad.iterdir()):
        try:
            book = load_book(path)
        except SkipBook as err:
            assert "\n" not in str(err)
            skipped[path.name] = str(err)
            continue
        assert path.name in {"single_line.txt", "truncated_utf8.txt"}
        assert len(book.text) > 100_000 and book.author and book.title
        assert not re.search(r"project gutenberg|START OF TH", book.text[:2000] + book.text[-2000:], re.I)
    assert set(skipped) == {
        "empty.txt",
        "whitespace_only.txt",
        "license_only.txt",
        "compressed_not_text.txt",
        "not_a_book.pdf",
    }
    assert "gzip" in skipped["compressed_not_text.txt"] and "PDF" in skipped["not_a_book.pdf"]
    single = load_book(bad / "single_line.txt")
    assert (single.author, single.title) == ("Franz Kafka", "The Trial")
    assert single.text.startswith("The Trial")
    assert single.text.endswith("should outlive him.")


# Files for every header/footer style in the corpus (found by grepping the marker lines across all books).
MARKER_STYLES = [
    r"\*\*\* START OF THIS PROJECT GUTENBERG",
    r"\*\*\*START OF THE PROJECT GUTENBERG",
    r"\*\*\* START OF THE PROJECT GUTENBERG",
    r"\*END\*THE SMALL PRINT",
    r"\*END THE SMALL PRINT",
    r"SMALL PRINT! FOR __ COMPLETE SHAKESPEARE",
    r"Executive Director's Notes",
    r"End Project Gutenberg's",
]
RESIDUE = re.compile(
    r"START OF TH(?:E|IS) PROJECT|END OF TH(?:E|IS) PROJECT|SMALL PRINT!|Project Gutenberg-tm|FULL LICENSE"
    r"|This file should be named|THIS ELECTRONIC VERSION|(?-i:^Produced by)|Executive Director's Notes",
    re.I | re.M,
)


def _corpus_books(corpus_dir: Path) -> list[Path]:
    return sorted((corpus_dir / "books").rglob("*.txt"))


def _check_clean(path: Path) -> None:
    book = load_book(path)
    assert book.text and book.author and book.title, path
    assert not RESIDUE.search(book.text), (path, RESIDUE.search(book.text))
    assert "\n\n\n" not in book.text and "  " not in book.text


def test_every_marker_style_in_the_corpus_is_removed(corpus_dir):
    files = _corpus_books(corpus_dir)
    for style in MARKER_STYLES:
        pattern = re.compile(style.encode())
        sample = [p for p in files if pattern.search(p.read_bytes())][:2]
        assert sample, f"no corpus file has {style!r}"
        for path in sample:
            _check_clean(path)


@pytest.mark.slow
def test_whole_corpus_is_clean(corpus_dir):
    for path in _corpus_books(corpus_dir):
        _check_clean(path)


def test_corpus_odd_file_names_load(corpus_dir):
    odd = [p for p in _corpus_books(corpus_dir) if re.search(r"[\r;'&:]", p.name)]
    assert any("\r" in p.name for p in odd)
    for path in odd[:6]:
        assert load_book(path).text


# --- sentences ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Mr. Smith met Dr. Jones at St. Paul. They talked.", ["Mr. Smith met Dr. Jones at St. Paul.", "They talked."]),
        ("J. R. R. Tolkien wrote it. It was long.", ["J. R. R. Tolkien wrote it.", "It was long."]),
        ('"Come here," he said. "Now." She came.', ['"Come here," he said.', '"Now."', "She came."]),
        ("\"Why?\" he asked. 'Yes!' she cried.", ['"Why?"', "he asked.", "'Yes!'", "she cried."]),
        ("She waited... and waited. Then. . . she left.", ["She waited... and waited.", "Then. . .", "she left."]),
        (
            "It was the U.S. Army in 1850. Then (finally.) Peace.",
            ["It was the U.S. Army in 1850.", "Then (finally.)", "Peace."],
        ),
        ("No full stop here\n\nNew paragraph. Two", ["No full stop here", "New paragraph.", "Two"]),
        ("Hard\nwrapped line. Still\none paragraph.", ["Hard wrapped line.", "Still one paragraph."]),
    ],
)
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def test_spacy_splitter_and_get_splitter():
    assert get_splitter("regex")("Mr. Smith came. He sat.") == split_sentences("Mr. Smith came. He sat.")
    assert get_splitter("spacy")("Mr. Smith came. He sat.\n\nNew one") == ["Mr. Smith came.", "He sat.", "New one"]
    with pytest.raises(Exception, match="unknown sentence splitter"):
        get_splitter("nltk")


def test_regex_splitter_agrees_with_spacy_on_the_corpus(corpus_dir):
    files = _corpus_books(corpus_dir)[5::60]
    texts = []
    for path in files:
        text = load_book(path).text
        middle = text.index("\n\n", len(text) // 3) + 2
        texts.append(text[middle : middle + 15_000])
    scores = boundary_agreement("\n\n".join(texts), spacy_split_sentences, split_sentences)
    assert scores["reference_boundaries"] > 500
    assert scores["f1"] >= 0.97, scores


def test_splitter_keeps_every_character():
    text = standardize(gutenberg_file("\n\n".join([PROSE] * 3), "new"))
    assert "".join("".join(split_sentences(text)).split()) == "".join(text.split())


# --- chunks -----------------------------------------------------------------------------------------------------


def _numbered(n: int) -> list[str]:
    return [f"This is sentence number {i} of the book, and it is about the house." for i in range(n)]


def test_chunks_overlap_by_the_requested_number_of_sentences():
    sentences = _numbered(60)
    records = make_chunk_records(sentences, chunk_size=14, overlap=4, min_chars=0)
    assert [c.start_sentence for c in records] == [0, 10, 20, 30, 40]
    for chunk in records:
        assert chunk.text == " ".join(sentences[chunk.start_sentence : chunk.start_sentence + 14])
    first, second = split_sentences(records[0].text), split_sentences(records[1].text)
    assert first[-4:] == second[:4] and len(set(first) & set(second)) == 4
    assert make_chunks(sentences, chunk_size=14, overlap=4, min_chars=0) == [c.text for c in records]


def test_chunk_length_limits_and_short_books():
    sentences = _numbered(20)
    assert make_chunks(sentences, chunk_size=5, overlap=0, min_chars=10_000) == []
    assert make_chunks(sentences, chunk_size=5, overlap=0, min_chars=0, max_chars=100) == []
    assert make_chunks(_numbered(3), chunk_size=14, overlap=4, min_chars=0) == [" ".join(_numbered(3))]
    assert make_chunks([], chunk_size=14, overlap=4) == []
    with pytest.raises(ValueError):
        make_chunks(sentences, chunk_size=4, overlap=4)


def test_english_filter_drops_indexes_foreign_text_and_remnants():
    assert looks_like_english_prose(PROSE)
    index = "Grey, Sir Charles, ii. 396 Grey, Sir W. de. See Walsingham, Lord Grimaldi, Marquis, i. 30, 41, 87, 92."
    contents = "CHAPTER I. THE ARRIVAL 1 CHAPTER II. THE STORM 17 CHAPTER III. THE SHIP 33 CHAPTER IV. HOME 51"
    french = "Le soir tombait sur la ville et les rues \u00e9taient d\u00e9sertes. Elle marchait vite vers la gare."
    remnant = PROSE + " This etext was produced by volunteers for Project Gutenberg."
    for text in (index, contents, french, remnant):
        assert not looks_like_english_prose(text), text


def test_fast_chunk_filter_matches_the_per_chunk_reference(corpus_dir):
    files = _corpus_books(corpus_dir)
    # An index-heavy book and a glossary-heavy one, beside ordinary novels.
    picks = [p for p in files if "Proposed Roads" in p.name or "Fourteenth Century" in p.name] + files[::80]
    checked = dropped = 0
    for path in picks:
        sentences = split_sentences(load_book(path).text)
        kept = {c.start_sentence for c in make_chunk_records(sentences)}
        for chunk in make_chunk_records(sentences, english_filter=False):
            assert (chunk.start_sentence in kept) == looks_like_english_prose(chunk.text), (path, chunk.text[:200])
            checked += 1
            dropped += chunk.start_sentence not in kept
    assert checked > 1000 and dropped > 10


def test_chunk_book_uses_the_regex_splitter_by_default():
    text = "\n\n".join([PROSE] * 8)
    chunks = chunk_book(text)
    assert chunks and all(isinstance(c, Chunk) for c in chunks)
    assert chunks == make_chunk_records(split_sentences(text))
    assert chunk_book(text, splitter=lambda _t: ["too short."]) == []


def test_fast_chunk_filter_matches_reference_on_mixed_synthetic_text():
    import random

    rng = random.Random(3)
    kinds = [
        lambda i: PROSE.split(". ")[i % 4].rstrip(".") + ".",
        lambda i: f"Grey, Sir Charles, ii. {i}, {i + 7}; Walsingham, {i * 3}.",
        lambda i: "Le soir tombait sur la ville et les rues \u00e9taient d\u00e9sertes.",
        lambda i: "See the Project Gutenberg licence.",
        lambda i: "Caf\u00e9 au lait and the na\u00efve \u00c6sop, as it was in the day.",
    ]
    latin1 = [rng.choices(kinds, weights=[8, 2, 1, 1, 1])[0](i) for i in range(600)]
    # upper-case stop words count; characters beyond Latin-1 read as "?"; a no-break space, a Unicode space,
    # a control character, the Kelvin sign (lowercase "k") or a dotted capital I sends the whole book to the
    # per-chunk reference
    shouting = [s.upper() if i % 5 == 0 else s for i, s in enumerate(latin1)]
    greek = [
        s + (" \u03bb\u03cc\u03b3\u03bf\u03c2 \u0153uvre \u2014 soft\u00adhyphen." if i % 7 == 0 else "")
        for i, s in enumerate(shouting)
    ]
    traps = ["\u00a0", "\u2028", "\x01", "\u3000", "\u212a", "\u0130"]
    with_traps = [
        [s + (f" THE{trap}AND here." if i == 300 else "") for i, s in enumerate(base)]
        for trap in traps
        for base in (latin1, greek)
    ]
    for sentences in (latin1, shouting, greek, *with_traps):
        for chunk_size, overlap in [(14, 4), (5, 0), (3, 2)]:
            kept = {c.start_sentence for c in make_chunk_records(sentences, chunk_size, overlap, min_chars=0)}
            every = make_chunk_records(sentences, chunk_size, overlap, min_chars=0, english_filter=False)
            assert 0 < len(kept) < len(every)
            for chunk in every:
                assert (chunk.start_sentence in kept) == looks_like_english_prose(chunk.text), chunk.text


def test_split_mismatch_set_is_every_character_the_byte_test_reads_differently():
    from bookmatch.text.chunking import _SPLIT_MISMATCH

    for code in range(0x110000):
        if 0xD800 <= code < 0xE000:
            continue
        char = chr(code)
        lowered = char.lower()
        differs = char.isspace() != (code <= 32) or (
            code >= 128 and (len(lowered) != 1 or lowered.isspace() or any(ord(c) < 128 for c in lowered))
        )
        assert bool(_SPLIT_MISMATCH.match(char)) == differs, hex(code)


def test_fast_chunk_filter_defers_to_the_reference_where_bytes_would_read_differently():
    # Each trap flips the decision if read byte-wide: stop words joined by a Unicode space are separate tokens
    # to str.split (prose) but one token to the byte test; joined by a control character, the reverse; the
    # Kelvin sign lowercases to "k" and completes a licence marker.
    filler = ["Walsingham Thornton Oxford Charlesworth Greyfriars."] * 20
    stop_run = ["the", "and", "of", "to", "in", "was", "he", "it", "that", "with"] * 6
    cases = {
        "\u3000": ("\u3000".join(stop_run) + ".", True),
        "\u00a0": ("\u00a0".join(stop_run) + ".", True),
        "\x01": ("\x01".join(stop_run) + ".", False),
        "\u212a": (PROSE + " Read the electronic wor\u212a.", False),
    }
    for trap, (sentence, reference_says_prose) in cases.items():
        sentences = filler[:3] + [sentence] + filler
        assert looks_like_english_prose(" ".join(sentences[:5])) is reference_says_prose, repr(trap)
        kept = {c.start_sentence for c in make_chunk_records(sentences, chunk_size=5, overlap=0, min_chars=0)}
        assert (0 in kept) is reference_says_prose, repr(trap)


def test_split_sentences_trusts_standardized_text_to_the_same_result():
    from bookmatch.text.sentences import get_splitter

    raw = '  It was late.  Mr. Hyde  left.\nHe ran!\n\n\n"Stop," she said. It rained.  \n'
    clean = standardize(raw)
    assert split_sentences(clean, standardized=True) == split_sentences(clean) == split_sentences(raw)
    assert get_splitter("regex", standardized=True)(clean) == split_sentences(clean)


def test_reflow_fast_path_matches_reference_on_random_whitespace():
    import random

    from bookmatch.text.standardize import reflow_reference

    rng = random.Random(0)
    alphabet = [
        "a",
        "word",
        " ",
        "  ",
        "\n",
        "\n\n",
        "\n \n",
        "\t",
        "\x0c",
        "\x1c",
        "\r",
        "\n\n\n",
        "\xa0",
        "\u3000",
        "\u2028",
        "\x85",
        "\x00",
        "caf\u00e9",
    ]
    for _ in range(20000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))
        assert reflow(text) == reflow_reference(text), repr(text)


def test_a_few_stray_legacy_bytes_in_a_utf8_file_garble_only_themselves():
    from bookmatch.text.decode import decode_bytes

    good = "Le café était plein. Zoë a dit « bonjour » à René — naïve. " * 200
    data = good.encode("utf-8") + b"Un caf\xe9 de plus.\n"  # one Latin-1 byte among ~1,400 UTF-8 characters
    text = decode_bytes(data)
    assert text == good + "Un café de plus.\n"
    english = "A plain English book. " * 50 + "A na\xefve caf\xe9 in it."  # a Latin-1 file with two accents
    assert decode_bytes(english.encode("latin-1")) == english
    mostly_latin1 = ("Été à la forêt, où l'on a vu des élèves. " * 80).encode("latin-1")
    assert decode_bytes(mostly_latin1) == "Été à la forêt, où l'on a vu des élèves. " * 80


def test_short_legacy_texts_decode_in_their_own_encoding():
    # charset-normalizer alone read each of the first three as a Baltic or Central European code page
    from bookmatch.text.decode import decode_bytes

    western = [
        ("Un été à la forêt. Sa soeur était là, où l'on a vu des élèves. ", "latin-1"),
        ("The naïve café owner’s résumé was déjà vu. “Yes,” he said — “well-known.” " * 10, "cp1252"),
        ("Hän söi pöydällä äänekkäästi. " * 10, "latin-1"),
        ("Señor Núñez bebió café en la mañana, ¿verdad? ", "latin-1"),
    ]
    others = [
        ("Привет, как дела? Это простой русский текст о книгах. " * 3, "cp1251"),
        ("Καλημέρα, αυτό είναι ένα ελληνικό κείμενο για βιβλία. " * 3, "iso-8859-7"),
        ("Zażółć gęślą jaźń, łóżko stało w pokoju. Ów człowiek szedł do domu. " * 3, "cp1250"),
    ]
    for text, encoding in western + others:
        assert decode_bytes(text.encode(encoding)) == text, encoding


def test_the_encoding_a_gutenberg_header_declares_wins():
    from bookmatch.text.decode import decode_bytes

    # without the header charset-normalizer reads these ISO-8859-2 bytes as Nordic ISO-8859-10
    body = "Zażółć gęślą jaźń, łóżko stało w pokoju. Ów człowiek szedł do domu. " * 5
    header = "Title: Opowiadania\r\nLanguage: Polish\r\nCharacter set encoding: ISO-8859-2\r\n\r\n"
    assert decode_bytes((header + body).encode("iso-8859-2")) == (header + body).replace("\r\n", "\n")
    # "ISO-8859-1" files carry cp1252 quotes in 0x80-0x9F: read as cp1252, not as control characters
    latin = "Character set encoding: ISO-8859-1\n\n\x93Tr\xe8s bien,\x94 dit-il.\n".encode("latin-1")
    assert decode_bytes(latin) == "Character set encoding: ISO-8859-1\n\n\u201cTrès bien,\u201d dit-il.\n"
    # a header that names UTF-8 on a file that is not UTF-8 is no hint
    lying = "Character set encoding: UTF-8\n\nUn caf\xe9 tr\xe8s bon.\n".encode("latin-1")
    assert decode_bytes(lying) == "Character set encoding: UTF-8\n\nUn café très bon.\n"

import numpy as np

from bookmatch.text.lexical import LexicalFingerprint, content_words


def test_content_words_drop_stop_words_and_short_words():
    assert content_words("The Captain's ship sailed with Nemo; it was here.") == ["captain", "ship", "sailed", "nemo"]


def test_fingerprint_matches_plain_tfidf_reference():
    texts = ["Nemo sailed the Nautilus under the ocean", "Nemo met Aronnax aboard", "Alice followed the rabbit"]
    fp = LexicalFingerprint(num_buckets=1 << 16).fit(texts)
    vecs = fp.transform(texts)
    # Reference without hashing: words -> idf with the same smoothing, sublinear tf, L2 norm, cosine.
    docs = [content_words(t) for t in texts]
    vocab = sorted({w for d in docs for w in d})
    df = {w: sum(w in d for d in docs) for w in vocab}
    idf = {w: np.log((1 + len(docs)) / (1 + df[w])) + 1 for w in vocab}

    def ref(doc):
        v = np.array([(1 + np.log(doc.count(w))) * idf[w] if w in doc else 0.0 for w in vocab])
        return v / np.linalg.norm(v)

    refs = [ref(d) for d in docs]
    for i in range(3):
        for j in range(3):
            assert np.isclose(vecs[i] @ vecs[j], refs[i] @ refs[j], atol=1e-5)
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2]


def test_empty_text_gives_zero_vector():
    assert not LexicalFingerprint(64).transform([""]).any()


def test_signature_cosine_equals_full_cosine_when_top_k_covers_all_terms():
    import torch

    from bookmatch.text.lexical import signature_cosine

    texts = [
        "Nemo sailed the Nautilus under the ocean with Aronnax",
        "Aronnax and Nemo watched the ocean",
        "Alice followed the rabbit",
    ]
    fp = LexicalFingerprint(num_buckets=1 << 16).fit(texts)
    full = fp.transform(texts)
    sig = torch.from_numpy(fp.signatures(texts, top_k=32))
    got = signature_cosine(sig[:, None, :].expand(3, 3, -1), sig[None, :, :].expand(3, 3, -1)).numpy()
    assert np.allclose(got, full @ full.T, atol=1e-5)
    # A small top_k keeps only the heaviest terms: never above the full cosine, and an empty text has no weight.
    short = torch.from_numpy(fp.signatures(texts + [""], top_k=2))
    assert float(signature_cosine(short[0], short[1])) <= float(full[0] @ full[1]) + 1e-6
    assert float(short[3, 2:].abs().sum()) == 0.0


def test_proper_names_skip_sentence_starts_but_keep_names_after_titles():
    from bookmatch.text.lexical import proper_names

    text = 'Then Alice said to the Queen: "Why, Mrs. Hatter!" \u201cNever,\u201d said Bob. Quickly Tom ran to London on Sunday.'
    # "Then", "Why", "Never", "Quickly" open sentences or quotes; "Mrs" and "Sunday" are titles/calendar words
    assert proper_names(text) == ["alice", "queen", "hatter", "bob", "tom", "london"]


def test_names_fingerprint_matches_shared_characters_not_shared_vocabulary():
    texts = [
        "The old captain walked along the shore with Nemo and Aronnax.",
        "Later that night Aronnax wrote while Nemo slept near the shore.",
        "The old captain walked along the shore with his silent mate.",
    ]
    names = LexicalFingerprint(1 << 12, vocabulary="names").fit(texts).transform(texts)
    words = LexicalFingerprint(1 << 12).fit(texts).transform(texts)
    assert names[0] @ names[1] > 0.99 and names[0] @ names[2] == 0.0
    assert words[0] @ words[2] > words[0] @ words[1]  # the content-word view ranks the other way

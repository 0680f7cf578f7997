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

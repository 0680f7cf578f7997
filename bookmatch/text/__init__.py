"""Book text: decoding, Gutenberg boilerplate removal, standardization, sentence splitting and chunking.

Import the submodules directly (`bookmatch.text.standardize`, `bookmatch.text.sentences`, ...); this package
file stays empty so importing one piece never pulls in spaCy or numpy.
"""

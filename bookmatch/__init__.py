"""bookmatch: are two passages from the same book, and how alike is their style?"""

__version__ = "0.1.0"


def __getattr__(name):
    # Keep `import bookmatch` light (the CLI imports torch only in the commands that need it).
    if name == "Matcher":
        from bookmatch.inference import Matcher

        return Matcher
    raise AttributeError(name)

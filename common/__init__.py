"""The bottom package: what every layer may use and that is not a reward.

Command-line errors (:mod:`common.cli`), output-path safety (:mod:`common.paths`), "model not
available" errors (:mod:`common.hub`), image loading (:mod:`common.images`), the bundled
photos (:mod:`common.photos`), InternVL3's real vocabulary (:mod:`common.qwen_vocab`) and the
original project's flags (:mod:`common.original_flags`). It imports nothing from ``rewards/``
or ``alignprop/`` (tests/test_architecture.py checks it).
"""

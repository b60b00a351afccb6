"""The experiment harness: tasks, models, runs, comparisons, the suite, statistics, reports, cards, the Hub.

Everything the ``hf-adaopt`` command does lives here; the library (`hf_adaopt.core`) never imports it.
"""

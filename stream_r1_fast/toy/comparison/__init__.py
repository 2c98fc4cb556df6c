"""The toy comparison's report (``scripts/toy/compare.py`` runs it): :mod:`.stats` (what is
compared, and the summary over seeds: mean +- std, paired per-seed differences), :mod:`.markdown`
(results.md) and :mod:`.plots` (methods.png, long_rollouts.png). Each is a function of the
per-seed results alone, so ``compare.py --report-only`` rebuilds them from results.json."""

"""The annotation web app: people compare or rank sampled completions in a browser.

``store`` (SQLite in WAL mode, the only module that writes the database), ``stats`` (agreement,
position bias, bootstrap intervals: pure functions), ``select`` (active-selection ordering over
per-member reward scores), ``export`` (pairs and rankings for ``tether rm train`` / ``tether dpo``),
``app`` (Starlette routes; imported only by ``tether annotate serve``) and ``commands`` (the CLI).
Nothing here is imported by ``import tether``; trainers read the export, never this package.
"""

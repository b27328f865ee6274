"""The pipelines that chain the verbs end to end, and their reports (the top layer below the CLI).

- :mod:`.steps` — the step runner: named, recorded, resumable steps under one output directory;
- :mod:`.quickstart` — ``llavakit quickstart``: scenes → data → align → stage 1 → stage 2 → eval → report;
- :mod:`.reproduce` — ``llavakit reproduce``: the paper's ablations on the quickstart's shared steps;
- :mod:`.report` — report.md / reproduction.md and their figures, from paths and result dicts.
"""

"""Studies: measurements of the method on a policy, beside training (no Prefect, no MLflow in this package).

- ``estimator``: how well each entropy-change estimator predicts the change one real optimizer step makes (the
  paper's Table 1 protocol); ``config`` holds its typed settings, ``plots`` its scatter figure, ``stats`` the
  agreement statistics.
"""

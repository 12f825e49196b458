"""What the ε that fedclinic prints means (one wording for summaries, reports and the console)."""

GUARANTEE = ("sample-level (add/remove one patient record) (epsilon, delta)-DP per site and dataset, "
             "from DP-SGD with Poisson sampling and from noised validation score histograms; a run's "
             "epsilon covers everything the site released in that run (training and validation metrics), "
             "lifetime epsilon every run on the site's dataset; epsilons of different sites do not add up; "
             "a site whose policy releases exact validation metrics (the summary names it) adds non-DP "
             "aggregates; each site computes epsilon with its own accountant")

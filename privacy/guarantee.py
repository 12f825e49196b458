"""What the ε that fedclinic prints means (one wording for summaries, reports and the console)."""

GUARANTEE = ("sample-level (add/remove one patient record) (epsilon, delta)-DP per site and dataset, "
             "from DP-SGD with Poisson sampling; a run's epsilon covers that run, lifetime epsilon every "
             "run on the site's dataset; epsilons of different sites do not add up; validation metrics "
             "(AUROC, loss) are not DP")

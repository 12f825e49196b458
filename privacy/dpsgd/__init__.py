"""DP-SGD at the site: the one place Opacus is wrapped (engine), book-keeping clipping, the
clipped-sum optimizer, and the masking that keeps every per-sample contribution bounded by C."""

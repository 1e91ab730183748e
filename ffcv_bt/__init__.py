"""ffcv-bt: Barlow Twins on FFCV at a fraction of the reference cost."""

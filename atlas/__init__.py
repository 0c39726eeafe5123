"""Atlas Distill: ``atlas.training`` is the quickstart's API (a facade over ``atlas_plugins``)."""

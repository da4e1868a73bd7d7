"""Demo material for Sluice: the real file corpus and its manifest."""

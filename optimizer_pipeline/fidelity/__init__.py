"""How faithful a candidate is to the original: per-output measures, output kinds, held-out references, confidence bounds."""

"""Loading pretrained weights: safe checkpoint reading, key normalisation, shape adaptation, heads, the report."""

"""VQA data sources, all mapped onto one VQAv2-like schema."""

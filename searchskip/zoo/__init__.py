"""The embedded default model: a tiny LLaVA trained on easy-VQA, shipped with the package."""

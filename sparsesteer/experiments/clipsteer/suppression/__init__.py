"""Feature suppression (the CLIP-SAE paper's disentanglement claim), shared by `reproduce
disentangle` (CelebA, Waterbirds) and `reproduce typographic` (typographic attacks).

config.py    the settings (torch-free), task presets, parse_ns / parse_prompts
run.py       SuppressionRun, the run context (image sets, SAEs, classifier, input checks)
sweep.py     the selection pass (ranking) and the sweep (shared clean forward per block), torch
pipeline.py  the stages; `reproduce`
report.py    tables, best layer, plots, reference numbers
"""

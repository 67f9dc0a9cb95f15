"""Steering with SAE features: VS2 / VS2++ / PASS for zero-shot classification (`vs2`, `vs2pp`,
`retrieval`), classification of cached CLS vectors (`classify`) and tuning on validation splits
carved from train (`tuning`)."""

"""Steering with SAE features: the one SAE-edit primitive (`edits`), VS2 on cached CLS vectors and in
the forward pass (`vs2`, `inforward`), VS2++ with its neighbour sets, baselines and suite
(`neighbours`, `vs2pp`, `baselines`, `retrieval_suite`, `retrieval`), classification of cached CLS
vectors (`classify`) and tuning on validation splits carved from train (`tuning`)."""

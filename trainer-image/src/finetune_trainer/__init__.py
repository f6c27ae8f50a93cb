"""finetune-trainer: the training program that runs inside the operator's Pods."""

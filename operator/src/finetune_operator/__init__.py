"""finetune-operator: reconciles FineTuneJob resources into trainer Pods."""

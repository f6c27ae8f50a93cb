"""Export for serving, run by ``finetune-trainer export`` in a CPU pod after training.

============ ===================================================================================
``spec``     the ``export`` section of the trainer config and the typed report (``export.json``)
``merge``    base + adapter → merged 16-bit safetensors (peft ``merge_and_unload``)
``gguf``     llama.cpp's ``convert_hf_to_gguf.py`` + ``llama-quantize`` (built from source)
``oci``      the adapter as an OCI artifact pushed with ORAS; credentials only from a Secret
``run``      each requested export in turn; one failing does not stop the others or touch the
             trained adapter; the report says which worked
============ ===================================================================================
"""

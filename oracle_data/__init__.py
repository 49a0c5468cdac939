"""Oracle labels: per sample and scale, did the M3 model answer correctly (built in a later issue)."""

"""What runs the concepts: the flags and the papers' presets, the search and retraining loops,
run directories, data, figures, the layer monitor, and the runs of the attacks and of the
thesis's systems. `train.py` wires these; nothing here is meant to be copied alone."""

"""What runs the concepts: the flags (options.py) and the papers' settings (presets.py), the
search and retraining loops (search.py, retrain.py, quick.py), run directories (run_dir.py),
data (data.py), figures (plots.py), the layer monitor (monitor.py) and the attack runs
(attack_runs.py). `train.py` wires these; nothing here is meant to be copied alone, and
nothing here imports the experiments."""
